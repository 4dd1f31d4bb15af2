"""Tests of nclib.runner and the command line (nclib.__main__): the experiment chapters'
configurations, "auto" profile selection, equivalent runs, resume, parameter injection.

Training is replaced by a fake ``run_experiment`` (counted) wherever the test is about the
runner's logic rather than about training; the fake's results go through the real results
store (:func:`nclib.experiments.load_or_run`)."""
import json
import os
import pathlib

import jupytext
import pytest

from nclib import __main__ as cli
from nclib import costs as CO
from nclib import experiments as E
from nclib import models as M
from nclib import pages as P
from nclib import runner as R

ROOT = pathlib.Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- parameters, names
def test_parse_value():
    assert R.parse_value("10") == 10
    assert R.parse_value("None") is None and R.parse_value("null") is None
    assert R.parse_value("['mnist', 'cifar10']") == ["mnist", "cifar10"]
    assert R.parse_value('["sgd"]') == ["sgd"]
    assert R.parse_value("mnist") == "mnist"
    assert R.parse_value("1e-3") == 1e-3


def test_chapter_groups_names_and_overrides():
    g = P.chapter_groups("exp_optimizers", "cpu", DATASETS=["mnist"], OPTIMIZERS=["sgd", "lbfgs"])
    assert list(g) == ["mnist"] and list(g["mnist"]) == ["sgd", "lbfgs"]
    assert [c.name for c in g["mnist"].values()] == ["fig3-mnist-sgd", "fig3-mnist-lbfgs"]
    assert g["mnist"]["sgd"] == E.get_config("fig3-mnist-sgd", "cpu")
    # EPOCHS keeps the five-stage schedule (200 -> steps of 40) and changes the hash
    g10 = P.chapter_groups("exp_optimizers", "full", DATASETS=["mnist"], EPOCHS=10)
    c = g10["mnist"]["sgd"]
    assert c.epochs == 10 and c.lr_step == 2 and E.get_config("fig3-mnist-sgd", "full").lr_step == 40
    assert g10["mnist"]["lbfgs"].lr_step is None
    base = E.get_config("fig3-mnist-sgd", "cpu")  # the schedule's shape is kept in any profile
    assert P.apply_overrides(base, 3 * base.epochs).lr_milestones == tuple(3 * m for m in base.lr_milestones)
    assert P.apply_overrides(base, None) is base
    assert E.config_hash(c) != E.config_hash(E.get_config("fig3-mnist-sgd", "full"))
    ufm = P.chapter_groups("exp_ufm_validity", "smoke", FIG5_MODELS=["mlp"], FIG5_WIDTHS=[1, 4])
    v6 = list(P.CHAPTERS["exp_ufm_validity"]["params"]["FIG6_VARIANTS"][0])
    assert {k: list(v) for k, v in ufm.items()} == {"fig5-mlp": ["w1", "w4"], "fig6-mnist": v6, "fig6-cifar10": v6}
    design = P.chapter_configs("exp_design", "full", SETUPS=["cifar10-resnet50"], VARIANTS=["etf"])
    assert [c.name for c in design] == ["fig7-cifar10-resnet50-etf"] and design[0].fixed_classifier == "etf"


@pytest.mark.parametrize("call, match", [
    (lambda: P.chapter_groups("nope", "cpu"), "unknown chapter 'nope'"),
    (lambda: P.chapter_groups("exp_optimizers", "huge"), "unknown profile 'huge'"),
    (lambda: P.chapter_groups("exp_optimizers", "cpu", OPTIMIZER=["sgd"]), "unknown parameter.*OPTIMIZER"),
    (lambda: P.chapter_groups("exp_optimizers", "cpu", OPTIMIZERS=["rmsprop"]), "rmsprop"),
    (lambda: P.chapter_groups("exp_optimizers", "cpu", EPOCHS=0), "EPOCHS"),
    (lambda: P.chapter_groups("exp_design", "cpu", SETUPS=[]), "non-empty"),
    (lambda: P.load_chapter("exp_design", "gpu"), "unknown profile 'gpu'"),
])
def test_unknown_names_rejected(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_chapter_parameters_match_the_notebooks():
    """The runner's parameter names are exactly those of each chapter's parameters cell."""
    for ch in P.chapter_names():
        nb_params = R.notebook_parameters(ROOT / "book" / f"{ch}.md")
        if not set(P.COMMON_PARAMS) <= set(nb_params):  # not (yet) an experiment page (other_losses today)
            continue
        assert set(P.chapter_parameters(ch)) <= set(nb_params), ch
        for k, v in P.chapter_parameters(ch).items():
            if k != "PROFILE":
                assert nb_params[k] == v, (ch, k)


def test_training_key_finds_equivalent_runs():
    for p in ("smoke", "cpu", "full"):
        sgd = E.get_config("fig3-mnist-sgd", p)
        for other in ("fig6-mnist-all",) + (("fig7-mnist-resnet18-learned",) if p != "full" else ()):
            o = E.get_config(other, p)
            # independent check: the configurations differ only in name, figure and label
            diff = {k for k, v in sgd.to_dict().items() if o.to_dict()[k] != v}
            assert diff <= {"name", "figure", "label"}, (p, other, diff)
            assert P.training_key(o) == P.training_key(sgd)
        assert P.training_key(E.get_config("fig6-mnist-eq4", p)) != P.training_key(sgd)
        assert P.training_key(E.get_config("fig3-cifar10-sgd", p)) != P.training_key(sgd) or p == "smoke"


def test_copy_equivalent(tmp_path, fake_training):
    src = E.get_config("fig3-mnist-sgd", "cpu")
    E.load_or_run(src, tmp_path)
    dst = E.get_config("fig6-mnist-all", "cpu")
    assert P.find_equivalent(E.get_config("fig6-mnist-eq4", "cpu"), tmp_path) is None
    res = P.copy_equivalent(dst, tmp_path)
    assert fake_training == ["fig3-mnist-sgd"]  # nothing trained for the copy
    assert res["config"]["name"] == "fig6-mnist-all" and res["provenance"]["copied_from"].startswith("fig3-mnist-sgd__")
    assert res["history"] == E.load_or_run(src, tmp_path, run=False)["history"]
    assert E.results_path(dst, tmp_path).exists()


# ----------------------------------------------------------------------------- "auto"
def test_auto_prefers_stored_full_results_and_says_so(tmp_path, fake_training):
    # full results for the MNIST panel only, cpu results for the CIFAR-10 panel
    for c in P.chapter_groups("exp_optimizers", "full", DATASETS=["mnist"])["mnist"].values():
        E.load_or_run(c, tmp_path)
    for c in P.chapter_groups("exp_optimizers", "cpu", DATASETS=["cifar10"])["cifar10"].values():
        E.load_or_run(c, tmp_path)
    fake_training.clear()
    shown = P.load_chapter("exp_optimizers", "auto", tmp_path, auto_run_limit_s=0)
    assert fake_training == []  # only loaded
    assert shown.profiles == {"mnist": "full", "cifar10": "cpu"}
    assert shown.get("mnist", "sgd")["config"]["profile"] == "full"
    assert shown.get("cifar10", "adam")["config"]["profile"] == "cpu"
    assert "showing profile(s): cpu, full" in shown.note
    assert "FakeGPU 9000" in shown.note and "2026-01-02" in shown.note and "abc123def456" in shown.note
    assert "No full-profile" not in shown.note and not shown.missing


def test_auto_without_full_results_uses_cpu_and_respects_the_limit(tmp_path, fake_training):
    E.load_or_run(E.get_config("fig3-mnist-sgd", "cpu"), tmp_path)
    fake_training.clear()
    shown = P.load_chapter("exp_optimizers", "auto", tmp_path, auto_run_limit_s=0, DATASETS=["mnist"])
    assert fake_training == [] and shown.profiles == {"mnist": "cpu"}
    assert list(shown.groups["mnist"]) == ["sgd"]
    assert set(shown.missing) == {"fig3-mnist-adam", "fig3-mnist-lbfgs"}
    assert "No full-profile" in shown.note and "MISSING fig3-mnist-adam" in shown.note
    # with room in the limit, "auto" trains the missing cpu runs
    shown = P.load_chapter("exp_optimizers", "auto", tmp_path, auto_run_limit_s=1e9, DATASETS=["mnist"])
    assert sorted(fake_training) == ["fig3-mnist-adam", "fig3-mnist-lbfgs"] and not shown.missing
    assert shown.sources["fig3-mnist-adam"] == "trained now" and shown.sources["fig3-mnist-sgd"] == "stored"


def test_auto_names_runs_that_cannot_be_trained_here(tmp_path, monkeypatch):
    """Without its dataset a missing cpu run is left out with the reason, not a crash ("auto"
    only); an explicit profile raises."""
    def no_data(config, **kw):
        raise RuntimeError("mnist: files not found under /nowhere")

    monkeypatch.setattr(E, "run_experiment", no_data)
    monkeypatch.setenv("NCLIB_CHECKPOINTS", str(tmp_path / "ckpt"))
    shown = P.load_chapter("exp_optimizers", "auto", tmp_path, auto_run_limit_s=1e9, DATASETS=["mnist"],
                           OPTIMIZERS=["sgd"])
    assert shown.groups == {"mnist": {}} and "files not found under /nowhere" in shown.missing["fig3-mnist-sgd"]
    assert "MISSING fig3-mnist-sgd" in shown.note
    with pytest.raises(RuntimeError, match="/nowhere"):
        P.load_chapter("exp_optimizers", "cpu", tmp_path, DATASETS=["mnist"], OPTIMIZERS=["sgd"])


def test_smoke_results_never_go_to_the_book(tmp_path, fake_training):
    shown = P.load_chapter("exp_optimizers", "smoke", tmp_path / "book_results", DATASETS=["mnist"],
                           OPTIMIZERS=["sgd"])
    assert shown.profiles == {"mnist": "smoke"}
    assert not (tmp_path / "book_results").exists()
    assert list((tmp_path / "smoke").glob("fig3-mnist-sgd__smoke__*.json"))


# ----------------------------------------------------------------------------- plan and resume
def test_plan_resume_skips_finished_runs(tmp_path, fake_training):
    book = tmp_path / "book"
    book.mkdir()
    (book / "exp_optimizers.md").write_text((ROOT / "book" / "exp_optimizers.md").read_text())
    rdir = book / "results"
    E.load_or_run(E.get_config("fig3-mnist-sgd", "cpu"), rdir)
    ck = R._checkpoint_path(E.get_config("fig3-mnist-adam", "cpu"), rdir)
    ck.parent.mkdir(parents=True, exist_ok=True)
    ck.write_bytes(b"")
    runs, per = R.plan(["exp_optimizers"], "cpu", {"DATASETS": ["mnist"]}, book_dir=book)
    assert {r.config.name: r.status for r in runs} == {
        "fig3-mnist-sgd": "stored", "fig3-mnist-adam": "resume", "fig3-mnist-lbfgs": "train"}
    assert per == {"exp_optimizers": {"DATASETS": ["mnist"]}}
    assert runs[0].estimate_s == 0 and runs[2].estimate_s > 0
    # --fresh ignores checkpoints, --rerun replaces stored results; neither is the default
    runs, _ = R.plan(["exp_optimizers"], "cpu", {"DATASETS": ["mnist"]}, book_dir=book, fresh=True)
    assert [r.status for r in runs] == ["stored", "train", "train"]
    runs, _ = R.plan(["exp_optimizers"], "cpu", {"DATASETS": ["mnist"]}, book_dir=book, rerun=True)
    assert [r.status for r in runs] == ["rerun", "resume", "train"]
    # the runner trains only the unfinished ones (no notebook execution here), one log per attempt
    fake_training.clear()
    summary = R.run_chapters(["exp_optimizers"], "cpu", {"DATASETS": ["mnist"]}, book_dir=book,
                             execute=False, gpus="none", log_dir=tmp_path / "logs", echo=lambda *a: None)
    assert sorted(fake_training) == ["fig3-mnist-adam", "fig3-mnist-lbfgs"]
    assert sorted(summary["trained"]) == sorted(fake_training)
    assert len(list((tmp_path / "logs").glob("fig3-mnist-adam__cpu__*.log"))) == 1
    fake_training.clear()
    R.run_chapters(["exp_optimizers"], "cpu", {"DATASETS": ["mnist"]}, book_dir=book, execute=False,
                   gpus="none", log_dir=tmp_path / "logs", echo=lambda *a: None)
    assert fake_training == []  # everything finished: nothing runs
    R.run_chapters(["exp_optimizers"], "cpu", {"DATASETS": ["mnist"], "OPTIMIZERS": ["sgd"]}, book_dir=book,
                   execute=False, gpus="none", log_dir=tmp_path / "logs", rerun=True, echo=lambda *a: None)
    assert fake_training == ["fig3-mnist-sgd"]
    assert not list(rdir.glob("*.bak")) and not list(rdir.glob(".*.tmp*"))


def test_plan_auto_uses_complete_full_groups(tmp_path, fake_training):
    book = tmp_path / "book"
    book.mkdir()
    (book / "exp_optimizers.md").write_text((ROOT / "book" / "exp_optimizers.md").read_text())
    for c in P.chapter_groups("exp_optimizers", "full", DATASETS=["mnist"])["mnist"].values():
        E.load_or_run(c, book / "results")
    E.load_or_run(E.get_config("fig3-cifar10-sgd", "full"), book / "results")  # an incomplete full group
    runs, _ = R.plan(["exp_optimizers"], "auto", {}, book_dir=book, resume=True)
    got = {(r.config.name, r.config.profile): r.status for r in runs}
    assert got == {("fig3-mnist-sgd", "full"): "stored", ("fig3-mnist-adam", "full"): "stored",
                   ("fig3-mnist-lbfgs", "full"): "stored", ("fig3-cifar10-sgd", "cpu"): "train",
                   ("fig3-cifar10-adam", "cpu"): "train", ("fig3-cifar10-lbfgs", "cpu"): "train"}


def test_plan_rejects_unknown_parameters(tmp_path):
    with pytest.raises(ValueError, match="unknown parameter.*WIDTH"):
        R.plan(["exp_optimizers"], "cpu", {"WIDTH": 3}, book_dir=ROOT / "book")
    with pytest.raises(ValueError, match="--profile"):
        R.plan(["exp_optimizers"], "cpu", {"PROFILE": "full"}, book_dir=ROOT / "book")
    with pytest.raises(ValueError, match="unknown chapter 'exp_nope'"):
        R.plan(["exp_nope"], "cpu", {}, book_dir=ROOT / "book")


def test_local_executor_runs_real_subprocesses(tmp_path, monkeypatch):
    """``--executor local``: each run trains in a subprocess started by submitit's LocalExecutor
    (real pickling, real job folders); provenance names the executor, the job id and the node."""
    monkeypatch.setenv("NCLIB_CHECKPOINTS", str(tmp_path / "ckpt"))
    monkeypatch.setenv("NCLIB_SMOKE_RESULTS", str(tmp_path / "smoke"))
    lines = []
    summary = R.run_chapters(["exp_optimizers"], "smoke", {"DATASETS": ["mnist"], "EPOCHS": 1},
                             book_dir=ROOT / "book", execute=False, gpus="none", workers=2, threads=1,
                             executor="local", log_dir=tmp_path / "logs", echo=lines.append)
    assert sorted(summary["trained"]) == ["fig3-mnist-adam", "fig3-mnist-lbfgs", "fig3-mnist-sgd"]
    assert not summary["failed"]
    for cfg in P.chapter_configs("exp_optimizers", "smoke", DATASETS=["mnist"], EPOCHS=1):
        res = E.load_or_run(cfg, tmp_path / "smoke", run=False)
        job = res["provenance"]["job"]
        assert job["executor"] == "local" and job["job_id"].isdigit() and int(job["job_id"]) != os.getpid()
        assert job["node"] and res["final"]["epoch"] == 1
        log = (tmp_path / "logs" / job["log"]).read_text()
        assert "executor=local" in log and "epoch 1/1" in log
        assert "\r" not in log  # one line per logged epoch, no progress bar in a log
    assert list((tmp_path / "logs" / "submitit").glob("*_log.out"))
    assert not list((tmp_path / "ckpt").glob("*.pt"))


def test_submitit_job_requeues_without_fresh(tmp_path):
    """The checkpointing hook that submitit calls on preemption/timeout resubmits the same run,
    never with --fresh, so it resumes from its checkpoint."""
    cfg = E.get_config("fig3-mnist-sgd", "smoke")
    job = R.TrainJob(cfg.to_dict(), str(tmp_path), fresh=True, executor="slurm")
    again = job.checkpoint()
    assert again.function.kw == dict(job.kw, fresh=False)
    import pickle
    assert pickle.loads(pickle.dumps(job)).kw == job.kw


def test_gpu_slots():
    assert R._gpu_slots("none", 2) == [None]
    assert R._gpu_slots("0,1", 2) == ["0", "0", "1", "1"]
    assert R._slots("none", 1, 3) == [None, None, None]
    with pytest.raises(ValueError, match="'abc' is not a GPU index"):
        R.parse_gpus("0,abc")


# ----------------------------------------------------------------------------- parameter injection
_PROBE = """---
jupytext:
  text_representation: {extension: .md, format_name: myst}
kernelspec: {display_name: Python 3, language: python, name: python3}
---

```{code-cell} ipython3
:tags: [parameters]

import os
PROFILE = "auto"
RESULTS_DIR = "results"
DATASETS = ["mnist", "cifar10"]
OPTIMIZERS = ["sgd", "adam", "lbfgs"]
EPOCHS = None
DEVICE = None
AUTO_RUN_LIMIT_S = 300
```

```{code-cell} ipython3
import json
from nclib import pages
shown = pages.load_chapter("exp_optimizers", PROFILE, RESULTS_DIR, epochs=EPOCHS, DATASETS=DATASETS,
                            OPTIMIZERS=OPTIMIZERS)
json.dump(dict(PROFILE=PROFILE, DATASETS=DATASETS, EPOCHS=EPOCHS, cwd=os.getcwd(),
               shown={g: sorted(m) for g, m in shown.groups.items()}), open("probe.json", "w"))
```
"""


def test_run_injects_parameters_into_the_notebook(tmp_path, fake_training):
    """A probe chapter (named exp_optimizers) records what papermill injected; the runner's
    pre-run (fake training, in this process) leaves the notebook only loading."""
    book = tmp_path / "book"
    book.mkdir()
    (book / "exp_optimizers.md").write_text(_PROBE)
    out = tmp_path / "executed"
    summary = R.run_chapters(["exp_optimizers"], "smoke", {"DATASETS": ["mnist"], "OPTIMIZERS": ["sgd"], "EPOCHS": 1},
                             book_dir=book, output_dir=out, log_dir=tmp_path / "logs", gpus="none",
                             echo=lambda *a: None)
    assert fake_training == ["fig3-mnist-sgd"] and summary["executed"] == [str(out / "exp_optimizers.ipynb")]
    probe = json.loads((book / "probe.json").read_text())
    assert probe["PROFILE"] == "smoke" and probe["DATASETS"] == ["mnist"] and probe["EPOCHS"] == 1
    assert pathlib.Path(probe["cwd"]).resolve() == book.resolve()
    assert probe["shown"] == {"mnist": ["sgd"]}
    nb = jupytext.read(out / "exp_optimizers.ipynb")
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "PROFILE = \"smoke\"" in injected[0].source


# ----------------------------------------------------------------------------- command line
def test_cli_errors(capsys):
    assert cli.main(["run", "exp_nope", "--dry-run"]) == 2
    assert "unknown chapter 'exp_nope'" in capsys.readouterr().err
    assert cli.main(["run", "exp_optimizers", "--profile", "huge", "--dry-run"]) == 2
    assert "unknown profile 'huge'" in capsys.readouterr().err
    assert cli.main(["run", "exp_optimizers", "-p", "NOPE", "1", "--dry-run"]) == 2
    assert "unknown parameter(s) NOPE" in capsys.readouterr().err


def test_cli_dry_run_and_list(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert cli.main(["run", "exp_design", "--profile", "full", "--dry-run", "-p", "SETUPS", "['mnist-resnet18']",
                     "-p", "VARIANTS", "['etf']"]) == 0
    out = capsys.readouterr().out
    assert "fig7-mnist-resnet18-etf" in out and "fig7-mnist-resnet18-dk" not in out and "total estimated" in out
    assert cli.main(["run", "--list"]) == 0
    out = capsys.readouterr().out
    for ch in P.chapter_names():
        assert ch in out
    assert out.count("fig3-") == 6 and "full" in out and "cpu" in out


# ----------------------------------------------------------------------------- estimates, captions, tables
def test_model_flops_hand_count():
    cfg = E.get_config("fig5-mlp-w1", "smoke")  # MLP depth 4, width 8: Linear layers only (BN not counted)
    w = cfg.width
    assert CO.model_flops(cfg) == 2 * (3072 * w + 3 * w * w + w * 10)


def test_estimate_seconds_formula(monkeypatch):
    monkeypatch.setattr(CO, "model_flops", lambda config, count=True: 1e9)
    monkeypatch.setitem(CO.THROUGHPUT, "cpu", dict(train=3e9, eval=1e9, step=0.0))
    c = E.get_config("fig3-mnist-sgd", "cpu").replace(log_epochs="all")
    n, nt = CO.dataset_sizes(c)
    assert CO.estimate_seconds(c, "cpu", calibrated=False) == pytest.approx(n * c.epochs + (n + nt) * c.epochs)
    lb = E.get_config("fig3-mnist-lbfgs", "cpu").replace(log_epochs="all")  # 25 function evaluations per step
    assert CO.estimate_seconds(lb, "cpu", calibrated=False) == pytest.approx(25 * n * lb.epochs + (n + nt) * lb.epochs)
    with pytest.raises(ValueError, match="device class"):
        CO.estimate_seconds(c, "tpu")


def test_describe_data_is_honest_about_the_jpeg_copy():
    c = E.get_config("fig3-cifar10-sgd", "cpu")
    assert P.describe_data(c).startswith("CIFAR-10 (JPEG q75 copy), a balanced subset of 500 per class")
    assert "random labels" in P.describe_data(E.get_config("fig5-mlp-w1", "cpu").to_dict())
    assert P.describe_data(E.get_config("fig3-mnist-sgd", "full")).startswith("MNIST, all 60,000")
    assert P.describe_run(E.get_config("fig3-mnist-sgd", "full")) == \
        "ResNet18, SGD lr 0.05, batch 256, 200 epochs, lr x0.1 every 40 epochs, weight decay 0.0005 on all parameters"
    assert P.describe_run(E.get_config("fig3-mnist-lbfgs", "full")).split(", ")[4] == "no schedule"


def test_parameter_savings_match_the_paper():
    """Counted from the models; the paper's percentages (Section 4.3) and exact counts (ANCHORS)."""
    dk = M.dk_savings(("resnet18", "resnet50"))
    assert [(r["params"], r["params_dk"]) for r in dk] == [(11_181_642, 8_867_542), (23_528_522, 22_481_110)]
    assert [round(r["saving_percent"], 2) for r in dk] == [20.70, 4.45]
    fx = M.fixed_classifier_savings(("resnet50",))
    assert fx[0]["classifier_weight"] == 2048 * 1000 and round(fx[0]["saving_percent"], 2) == 8.01
    with pytest.raises(ValueError, match="unknown torchvision model"):
        M.fixed_classifier_savings(("shufflenet_v1",))


def test_results_table(tmp_path, fake_training):
    E.load_or_run(E.get_config("fig3-mnist-sgd", "cpu"), tmp_path)
    P.copy_equivalent(E.get_config("fig6-mnist-all", "cpu"), tmp_path)
    E.load_or_run(E.get_config("fig3-mnist-sgd", "full"), tmp_path)
    rows = P.results_table(tmp_path, profile="cpu").splitlines()
    assert len(rows) == 4 and rows[0].startswith("| run | profile")
    assert rows[2].startswith("| fig3-mnist-sgd | cpu | MNIST, a balanced subset of 500 per class")
    assert "| 42 s |" in rows[2] and "| 100.0% | 90.0% |" in rows[2]
    assert rows[3].startswith("| fig6-mnist-all (copy of fig3-mnist-sgd) | cpu")
    assert len(P.results_table(tmp_path).splitlines()) == 5


def test_cli_results(tmp_path, fake_training, capsys):
    E.load_or_run(E.get_config("fig5-mlp-w1", "cpu"), tmp_path)
    assert cli.main(["results", "--results-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and out[2].startswith("| fig5-mlp-w1 | cpu | CIFAR-10 (JPEG q75 copy)")
    assert out[2].endswith("| local |")


# ----------------------------------------------------------------------------- costs without torch
def test_flops_table_matches_the_counter():
    """Every entry of the FLOPs table (used so that --list never imports torch) recounted."""
    import dataclasses
    base = E.get_config("fig3-mnist-sgd", "smoke")
    for (model, width, depth, fd, stem), flops in CO.FLOPS_TABLE.items():
        cfg = dataclasses.replace(base, model=model, width=width, depth=depth, feature_dim=fd, stem=stem)
        assert CO.count_flops(cfg) == flops, (model, width, depth, fd, stem)
    for p in E.PROFILES:  # every named run is in the table
        for n in E.list_configs(profile=p):
            CO.model_flops(E.get_config(n, p), count=False)


def test_estimates_are_calibrated_by_stored_runs_and_the_gpu_check(tmp_path, fake_training, monkeypatch):
    c = E.get_config("fig3-mnist-sgd", "cpu")
    E.load_or_run(c, tmp_path / "r")  # the fake stores wall_time_s = 42
    f = E.get_config("fig3-mnist-adam", "full")
    (tmp_path / "gpu_check.json").write_text(json.dumps(dict(
        device="H200", date="2026-12-01", torch="2.x", total_hours=1.0,
        configs={f.name: dict(seconds_per_epoch=1.0, eval_seconds=1.0, projected_hours=0.5)})))
    cal = CO.calibration(str(tmp_path / "r"), str(tmp_path / "gpu_check.json"))
    raw = CO.raw_estimate_seconds(c, "cpu")
    assert cal["cpu"]["sgd"] == pytest.approx(42.0 / raw)
    assert cal["gpu"]["adam"] == pytest.approx(1800.0 / CO.raw_estimate_seconds(f, "gpu"))
    monkeypatch.setattr(CO, "calibration", lambda: cal)
    assert CO.estimate_seconds(c) == 42.0  # the stored run's own time
    assert CO.estimate_seconds(f) == 1800.0  # the benchmark's projection
    other = E.get_config("fig3-cifar10-sgd", "cpu")
    assert CO.estimate_seconds(other) == pytest.approx(CO.raw_estimate_seconds(other, "cpu") * 42.0 / raw)


def test_optimizer_steps_by_hand():
    """Section 4.1's step counts, worked by hand: ceil(60,000 / 256) = 235 steps an epoch on MNIST,
    ceil(50,000 / 256) = 196 on CIFAR-10; the cpu profile ceil(5,000 / 64) = 79."""
    mnist, cifar = E.get_config("fig3-mnist-sgd", "full"), E.get_config("fig3-cifar10-sgd", "full")
    assert (CO.optimizer_steps(mnist), CO.optimizer_steps(mnist, mnist.lr_step)) == (47_000, 9_400)
    assert (CO.optimizer_steps(cifar), CO.optimizer_steps(cifar, cifar.lr_step)) == (39_200, 7_840)
    c = E.get_config("fig3-mnist-sgd", "cpu")
    assert (CO.optimizer_steps(c), CO.optimizer_steps(c, 175)) == (79 * 375, 79 * 175)
    assert CO.optimizer_steps(E.get_config("fig3-mnist-lbfgs", "cpu")) == 12  # one full batch a step
    with pytest.raises(ValueError, match="epochs must be an integer >= 0, got -1"):
        CO.optimizer_steps(c, -1)
