"""Tests of nclib.trial: every distinct code path of the ``full`` profile runs end to end.

The trial itself (:func:`nclib.trial.run_trial`) is run on one representative of every distinct
combination of model, stem, width, feature dimension, classifier, optimizer, regularisation,
feature decay, augmentation and random labels among the ``full`` configurations, with the data
capped at 2 images per class so that CI stays within about two minutes on one thread.  The cut
itself is checked against the rule "two batches of the configuration's batch size (L-BFGS: one)".
"""
from __future__ import annotations

import math
import pathlib

import pytest

from nclib import configs as C
from nclib import experiments as E
from nclib import trial

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _path_key(c):
    """What decides which code runs (not sizes or learning rates)."""
    return (c.model, c.stem, c.width is None, c.fixed_classifier, c.feature_dim is not None, c.optimizer,
            c.regularization, c.feature_decay if c.regularization == "whb" else None, c.augment, c.random_labels,
            c.dataset)


def representatives() -> list:
    seen, names = set(), []
    for n in C.list_configs(profile="full"):
        k = _path_key(C.get_config(n, "full"))
        if k not in seen:
            seen.add(k)
            names.append(n)
    return names


def test_representatives_cover_every_path():
    names = representatives()
    cs = [C.get_config(n, "full") for n in names]
    assert {c.optimizer for c in cs} == {"sgd", "adam", "lbfgs"}
    assert {c.model for c in cs} == {"resnet18", "resnet50", "mlp"}
    assert {(c.model, c.fixed_classifier, c.feature_dim) for c in cs if c.model == "resnet50"} == \
        {("resnet50", None, None), ("resnet50", "etf", None), ("resnet50", None, 10), ("resnet50", "etf", 10)}
    assert {c.feature_decay for c in cs if c.regularization == "whb"} == {"eq4", "batch_sum", "authors"}
    assert any(c.augment for c in cs) and any(c.random_labels for c in cs) and any(c.stem == "cifar" for c in cs)


@pytest.mark.parametrize("name, per_class, batches", [("fig3-mnist-sgd", 51, 2), ("fig3-cifar10-adam", 12, 2),
                                                      ("fig3-mnist-lbfgs", 204, 1), ("fig7-mnist-resnet18-etf", 25, 2)])
def test_cut_is_two_batches(name, per_class, batches):
    c = C.get_config(name, "full")
    cut, what = trial.trial_config(c)
    assert cut.n_per_class == per_class == (2 if c.optimizer != "lbfgs" else 1) * c.batch_size // 10
    assert math.ceil(cut.n_per_class * 10 / c.batch_size) == batches
    assert cut.epochs == 1 and cut.n_test_per_class == trial.TEST_PER_CLASS
    # everything else is the configuration's own
    same = {k: v for k, v in c.to_dict().items() if k not in ("n_per_class", "n_test_per_class", "epochs")}
    assert {k: cut.to_dict()[k] for k in same} == same
    assert f"{batches} batch" in what


def test_cut_with_a_stand_in_and_a_cap():
    c = C.get_config("fig3-mnist-lbfgs", "full")
    cut, what = trial.trial_config(c, "digits")
    assert cut.dataset == "digits" and cut.n_per_class == 139 and "capped" in what
    cut, what = trial.trial_config(c, None, max_per_class=2)
    assert (cut.n_per_class, cut.n_test_per_class) == (2, 2)


def test_scratch_dir_never_in_book_results():
    with pytest.raises(ValueError, match="book/results"):
        trial.run_trial(names=["fig3-mnist-sgd"], scratch_dir=ROOT / "book" / "results" / "x")


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown configuration"):
        trial.run_trial(names=["fig9-x"])


@pytest.mark.slow
def test_every_full_code_path_runs(tmp_path):
    """One configuration per distinct code path, through load_or_run, into a scratch folder."""
    before = sorted(p.name for p in (ROOT / "book" / "results").glob("*"))
    lines = []
    names = representatives()
    rc = trial.run_trial(names=names, scratch_dir=tmp_path, device="cpu", echo=lines.append, max_per_class=2)
    assert rc == 0, "\n".join(lines)
    ok = [ln for ln in lines if ln.startswith("ok ")]
    assert len(ok) == len(names)
    assert lines[-1].startswith(f"trial: all {len(names)} configurations ran")
    stored = sorted((tmp_path / "results").glob("*.json"))
    assert len(stored) == len(names)
    for p in stored:  # a real results file, loadable by the store
        name = p.name.split("__")[0]
        cut, _ = trial.trial_config(C.get_config(name, "full"), trial.stand_in(C.get_config(name, "full").dataset),
                                    max_per_class=2)
        res = E.load_or_run(cut, tmp_path / "results", run=False)
        assert res["config"]["epochs"] == 1 and res["final"]["epoch"] == 1
    assert not list((tmp_path / "checkpoints").glob("*.pt"))  # removed after the results were written
    assert sorted(p.name for p in (ROOT / "book" / "results").glob("*")) == before


def test_failures_are_named_and_stand_ins_said(tmp_path, monkeypatch):
    def boom(config, **kw):
        raise RuntimeError("boom")

    monkeypatch.setattr(trial, "dataset_on_machine",
                        lambda name, root=None: name in ("digits", "gaussian"))
    lines = []
    rc = trial.run_trial(names=["fig3-mnist-adam"], scratch_dir=tmp_path / "a", device="cpu", echo=lines.append,
                         max_per_class=1)
    assert rc == 0 and "MNIST not on this machine: stand-in scikit-learn digits" in lines[1]
    monkeypatch.setattr(E, "run_experiment", boom)
    lines = []
    rc = trial.run_trial(names=["fig3-mnist-adam", "fig5-mlp-w1"], scratch_dir=tmp_path / "b", device="cpu",
                         echo=lines.append, max_per_class=1)
    assert rc == 1
    assert lines[1].startswith("FAIL fig3-mnist-adam") and "RuntimeError: boom" in lines[1]
    assert lines[-1].endswith("fig3-mnist-adam, fig5-mlp-w1")
