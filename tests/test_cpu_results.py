"""The stored cpu-profile results can be reproduced: retrain the first epochs of one run and match
the stored history (same code path, one thread, the CPU; the issue "Experiments whose own runs
show neural collapse")."""
from __future__ import annotations

import json
import pathlib

import pytest
import torch

from nclib import configs, experiments as E, threads

RESULTS = pathlib.Path(__file__).resolve().parents[1] / "book" / "results"


@pytest.mark.slow
def test_first_epochs_of_a_stored_cpu_run_are_reproduced(monkeypatch):
    cfg = configs.get_config("fig3-mnist-sgd", "cpu")
    path = E.results_path(cfg, RESULTS)
    if not path.exists():
        pytest.skip(f"no stored cpu result {path.name}")
    try:
        from nclib import data
        data.load_dataset("mnist", "test", n_per_class=1, download=False)
    except (RuntimeError, OSError) as exc:
        pytest.skip(f"MNIST is not available offline here ({exc})")
    stored = E.load_or_run(cfg, RESULTS, run=False)
    old = torch.get_num_threads()
    threads.configure(stored["provenance"]["cpu_threads"])
    try:
        short = cfg.replace(epochs=2, log_epochs=(1, 2))  # the milestones (70, 120) are not reached
        res = E.run_experiment(short, device="cpu", progress=False)
    finally:
        torch.set_num_threads(old)
    h, s = res["history"], stored["history"]
    p, q = stored["provenance"], res["provenance"]
    # a miss on another CPU need not be a bug: its kernels round differently (the results say which)
    where = (f"stored on {p.get('cpu_model', 'an unrecorded CPU')} ({p.get('cpu_capability', '?')} kernels), "
             f"retrained on {q['cpu_model']} ({q['cpu_capability']} kernels)")
    for i, ep in enumerate((1, 2)):
        j = s["epoch"].index(ep)
        assert h["train_acc"][i] == s["train_acc"][j] and h["test_acc"][i] == s["test_acc"][j], where
        assert res["history"]["per_epoch"]["loss"][i] == pytest.approx(s["per_epoch"]["loss"][i], rel=1e-6), where
        for k in ("nc1", "nc2", "nc3", "nc4", "test_nc1", "test_nc3"):
            assert h[k][i] == pytest.approx(s[k][j], rel=1e-6), (ep, k, where)
    json.dumps(res)  # the fresh results are plain JSON like the stored ones
