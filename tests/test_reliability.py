"""Issue 10: no finished run is lost, no diverged run is stored, every error names its cause.

Each test reproduces one case of the issue (kill, rerun, read-only folders, another TMPDIR,
absurd learning rates, edited results, two runners) and checks the new behaviour.  Training is
real (tiny smoke configurations on offline data) where the case is about training, and a fake
``run_experiment`` where it is about the runner's bookkeeping."""
from __future__ import annotations

import io
import json
import os
import pathlib
import socket
import sys
import tarfile
import time
import types

import numpy as np
import pytest

from nclib import __main__ as cli
from nclib import configs as C
from nclib import experiments as E
from nclib import runner as R

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _small(**kw):
    """A tiny real run: digits, ResNet18 at width 1/16, 20 images per class, 5 epochs, no schedule."""
    c = C.get_config("fig3-mnist-sgd", "smoke").replace(epochs=5, lr_step=None, n_per_class=20)
    return c.replace(**kw)


# ----------------------------------------------------------------------------- 1. data loss
def test_tmpdir_on_another_filesystem_does_not_matter(tmp_path, fake_training, monkeypatch):
    """Results are written next to their destination, never through $TMPDIR."""
    import tempfile
    monkeypatch.setenv("TMPDIR", str(tmp_path / "no-such-tmp"))
    monkeypatch.setattr(tempfile, "tempdir", None)
    c = C.get_config("fig3-mnist-sgd", "cpu")
    res = E.load_or_run(c, tmp_path / "results")
    assert res["final"]["epoch"] == c.epochs and E.results_path(c, tmp_path / "results").exists()


@pytest.mark.parametrize("which", ["results", "checkpoint"])
def test_unwritable_folder_is_refused_before_training(tmp_path, fake_training, monkeypatch, which):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    rdir, ckdir = tmp_path / "results", tmp_path / "ckpt"
    if which == "results":
        rdir = blocker / "results"
    else:
        ckdir = blocker / "ckpt"
    c = C.get_config("fig3-mnist-sgd", "cpu")
    with pytest.raises(E.StorageError, match=f"the {which} folder {blocker}.* is not writable"):
        E.load_or_run(c, rdir, checkpoint_dir=ckdir)
    assert fake_training == []  # refused in seconds, nothing trained
    monkeypatch.chdir(ROOT)
    assert cli.main(["run", "exp_optimizers", "--profile", "cpu", "-p", "DATASETS", "['mnist']", "--no-execute",
                     "--results-dir", str(blocker / "r")]) == 1
    assert fake_training == []


def test_checkpoint_survives_a_failed_store_and_the_rerun_finishes_at_once(tmp_path, monkeypatch):
    """A finished run whose results cannot be written keeps its checkpoint; the next call
    stores the results from it without training again."""
    c = _small(epochs=2, n_per_class=6)
    real = E._atomic_write_json

    def disk_full(obj, path):
        raise E.StorageError(f"cannot write results file {path} (No space left on device)")

    monkeypatch.setattr(E, "_atomic_write_json", disk_full)
    with pytest.raises(E.StorageError, match="No space left"):
        E.load_or_run(c, tmp_path, checkpoint_dir=tmp_path / "ck", device="cpu", progress=False)
    ck = E.checkpoint_path(c, tmp_path, tmp_path / "ck")
    assert ck.exists() and R.checkpoint_epoch(ck) == 2
    monkeypatch.setattr(E, "_atomic_write_json", real)
    import nclib.train as T

    def no_epoch(*a, **k):
        raise AssertionError("an epoch was trained although the checkpoint holds the finished run")

    monkeypatch.setattr(T, "_train_epoch", no_epoch)
    res = E.load_or_run(c, tmp_path, checkpoint_dir=tmp_path / "ck", device="cpu", progress=False)
    assert res["final"]["epoch"] == 2 and not ck.exists()
    assert res["history"]["wall_time"] <= res["provenance"]["wall_time_s"] + 1e-9


def test_resume_is_the_default_and_dry_run_says_from_which_epoch(tmp_path, monkeypatch, capsys, interrupt_after_epoch):
    monkeypatch.setenv("NCLIB_CHECKPOINTS", str(tmp_path / "ckpt"))
    monkeypatch.setenv("NCLIB_SMOKE_RESULTS", str(tmp_path / "smoke"))
    cfg = P_cfg = R.chapter_configs("exp_optimizers", "smoke", DATASETS=["mnist"], OPTIMIZERS=["sgd"], EPOCHS=3)[0]
    interrupt_after_epoch(2)
    monkeypatch.chdir(ROOT)
    args = ["run", "exp_optimizers", "--profile", "smoke", "-p", "DATASETS", "['mnist']", "-p", "OPTIMIZERS",
            "['sgd']", "-p", "EPOCHS", "3", "--no-execute", "--log-dir", str(tmp_path / "logs")]
    assert cli.main(args) == 130
    err = capsys.readouterr().err
    assert "interrupted: fig3-mnist-sgd (smoke) at epoch 2 of 3" in err and "resume with: python -m nclib run" in err
    assert "Traceback" not in err
    interrupt_after_epoch(None)
    assert cli.main(args + ["--dry-run"]) == 0
    assert "resume from epoch 2" in capsys.readouterr().out
    assert cli.main(args + ["--dry-run", "--fresh"]) == 0
    out = capsys.readouterr().out
    assert "resume" not in out.split("\n", 1)[1] and " train " in out
    ck = E.checkpoint_path(cfg, tmp_path / "smoke")
    assert ck.exists()  # a plan that did not finish a checkpoint never deletes it
    assert cli.main(args) == 0
    res = E.load_or_run(P_cfg, tmp_path / "smoke", run=False)
    assert res["history"]["per_epoch"]["epoch"] == [1, 2, 3] and not ck.exists()
    assert len(list((tmp_path / "logs").glob("fig3-mnist-sgd__smoke__*.log"))) == 2  # one log per attempt


def test_stored_results_are_skipped_and_rerun_keeps_a_bak_until_replaced(tmp_path, fake_training, monkeypatch):
    c = C.get_config("fig3-mnist-sgd", "cpu")
    E.load_or_run(c, tmp_path)
    assert E.load_or_run(c, tmp_path) and fake_training == ["fig3-mnist-sgd"]  # stored: skipped
    path = E.results_path(c, tmp_path)
    seen = []
    real = E._atomic_write_json

    def spy(obj, p):
        seen.append(pathlib.Path(str(p) + ".bak").exists())
        real(obj, p)

    monkeypatch.setattr(E, "_atomic_write_json", spy)
    E.load_or_run(c, tmp_path, rerun=True)
    assert seen == [True] and not pathlib.Path(str(path) + ".bak").exists()
    assert fake_training == ["fig3-mnist-sgd"] * 2


# ----------------------------------------------------------------------------- 2. divergence
@pytest.mark.parametrize("opt, lr", [("sgd", 3), ("sgd", 5), ("sgd", 8), ("sgd", 10), ("sgd", 15), ("sgd", 20),
                                     ("sgd", 30), ("sgd", 1000), ("adam", 1e6)])
def test_absurd_learning_rates_are_named_as_divergence(opt, lr, tmp_path):
    import nclib.train as T
    c = _small(optimizer=opt, lr=lr, batch_size=64 if opt == "lbfgs" else 16)
    with pytest.raises(T.TrainingDiverged, match=r"training diverged in epoch \d") as info:
        E.load_or_run(c, tmp_path, checkpoint_dir=tmp_path / "ck", device="cpu", progress=False)
    assert 1 <= info.value.epoch <= c.epochs and info.value.reason
    assert not E.results_path(c, tmp_path).exists()  # never stored


def test_lbfgs_line_search_survives_an_absurd_learning_rate(tmp_path):
    # L-BFGS with the strong Wolfe search only starts its search at lr: at lr 1e6 it still trains. (This
    # case used to be reported as diverged: the evaluation broke on BatchNorm statistics left by the
    # search's trial points, which are now re-estimated before every evaluation.)
    c = _small(optimizer="lbfgs", lr=1e6, batch_size=64)
    res = E.load_or_run(c, tmp_path, checkpoint_dir=tmp_path / "ck", device="cpu", progress=False)
    loss = res["history"]["per_epoch"]["loss"]
    assert res["final"]["epoch"] == c.epochs and all(np.isfinite(loss)) and loss[-1] < loss[0]


@pytest.mark.parametrize("kw", [dict(lr=0.05, weight_decay=1e-2), dict(loss="mse", lr=0.05),
                                dict(loss="focal", focal_gamma=2.0, lr=0.05)])
def test_legitimate_recipes_do_not_trip_the_rule(kw, tmp_path):
    c = _small(**kw)
    res = E.load_or_run(c, tmp_path, checkpoint_dir=tmp_path / "ck", device="cpu", progress=False)
    assert res["final"]["epoch"] == 5


def test_the_runner_names_a_diverged_run_and_stores_nothing(tmp_path, monkeypatch):
    import nclib.train as T

    def diverge(config, **kw):
        raise T.TrainingDiverged(3, {}, None, "the training loss became nan")

    monkeypatch.setattr(E, "run_experiment", diverge)
    monkeypatch.setenv("NCLIB_CHECKPOINTS", str(tmp_path / "ckpt"))
    monkeypatch.setenv("NCLIB_SMOKE_RESULTS", str(tmp_path / "smoke"))
    with pytest.raises(RuntimeError, match=r"fig3-mnist-sgd: diverged: training diverged in epoch 3"):
        R.run_chapters(["exp_optimizers"], "smoke", {"DATASETS": ["mnist"], "OPTIMIZERS": ["sgd"]},
                       book_dir=ROOT / "book", execute=False, gpus="none", log_dir=tmp_path / "logs",
                       echo=lambda *a: None)
    assert not list((tmp_path / "smoke").glob("*.json"))


# ----------------------------------------------------------------------------- 3. stored results
def _stored(tmp_path, fake_training, name="fig3-mnist-sgd"):
    c = C.get_config(name, "cpu")
    E.load_or_run(c, tmp_path)
    return c, E.results_path(c, tmp_path)


def test_manifest_committed_local_and_edited(tmp_path, fake_training):
    c, path = _stored(tmp_path, fake_training)
    assert E.load_or_run(c, tmp_path, run=False)["_source"]["status"] == "local"  # no manifest yet
    good, bad = E.write_manifest(tmp_path)
    assert good == [path.name] and not bad
    assert E.read_manifest(tmp_path) == {path.name: json.loads(path.read_text())["content_hash"]}
    assert E.load_or_run(c, tmp_path, run=False)["_source"]["status"] == "committed"
    c2, p2 = _stored(tmp_path, fake_training, "fig3-mnist-adam")  # trained after the manifest: local
    assert E.load_or_run(c2, tmp_path, run=False)["_source"]["status"] == "local"
    rerun = json.loads(path.read_text())  # a rerun here: same name, other (valid) content
    rerun["provenance"]["wall_time_s"] = 2.0
    rerun["content_hash"] = E.content_hash(rerun)
    path.write_text(json.dumps(rerun))
    assert E.load_or_run(c, tmp_path, run=False)["_source"]["status"] == "local (differs from the manifest)"
    obj = json.loads(path.read_text())
    obj["final"]["test_acc"] = 0.995  # an edited number
    path.write_text(json.dumps(obj))
    with pytest.raises(ValueError, match=f"{path.name} was changed after it was written"):
        E.load_or_run(c, tmp_path, run=False)


@pytest.mark.parametrize("edit, msg", [
    (lambda o: o.pop("final"), "key 'final' is missing"),
    (lambda o: o["history"].update(nc1=[1.0]), r"key 'history.nc1' has 1 entries, 'history.epoch' has"),
    (lambda o: o.update(config="x"), "key 'config' is a str, expected dict"),
    (lambda o: o.update(format=1), "has format 1, expected 2"),
])
def test_schema_is_checked_on_load_naming_file_and_key(tmp_path, fake_training, edit, msg):
    c, path = _stored(tmp_path, fake_training)
    obj = json.loads(path.read_text())
    edit(obj)
    obj["content_hash"] = E.content_hash(obj)
    path.write_text(json.dumps(obj))
    with pytest.raises(ValueError, match=f"{path.name}.*{msg}"):
        E.load_or_run(c, tmp_path, run=False)


def test_results_command_names_bad_files_skips_them_and_fails(tmp_path, fake_training, capsys):
    _stored(tmp_path, fake_training)
    (tmp_path / "fig3-mnist-adam__cpu__000000000000.json").write_text('{"format": 2, "hist')  # truncated
    (tmp_path / "fig3-mnist-lbfgs__cpu__111111111111.json").write_text('{"format": 2}')  # no config
    assert cli.main(["results", "--results-dir", str(tmp_path)]) == 1
    cap = capsys.readouterr()
    assert "| fig3-mnist-sgd | cpu |" in cap.out
    assert "skipped fig3-mnist-adam__cpu__000000000000.json" in cap.err and "corrupt" in cap.err
    assert "skipped fig3-mnist-lbfgs__cpu__111111111111.json" in cap.err and "'config' is missing" in cap.err
    assert "Traceback" not in cap.err


def test_results_command_profile_folder_and_empty(tmp_path, capsys):
    assert cli.main(["results", "--results-dir", str(tmp_path), "--profile", "huge"]) == 2
    assert "unknown profile 'huge'" in capsys.readouterr().err
    assert cli.main(["results", "--results-dir", str(tmp_path / "nope")]) == 2
    assert f"results folder {tmp_path / 'nope'} does not exist" in capsys.readouterr().err
    assert cli.main(["results", "--results-dir", str(tmp_path), "--profile", "full"]) == 0
    out = capsys.readouterr().out
    assert "no stored results for profile 'full'" in out and "python -m nclib run --profile full" in out


def test_write_manifest_command(tmp_path, fake_training, capsys):
    _stored(tmp_path, fake_training)
    assert cli.main(["results", "--results-dir", str(tmp_path), "--write-manifest"]) == 0
    assert (tmp_path / "MANIFEST").read_text().count("fig3-mnist-sgd__cpu__") == 1


# ----------------------------------------------------------------------------- 4. errors name their cause
@pytest.mark.parametrize("args, msg", [
    (["run", "exp_optimizers", "--dry-run", "--gpus", "0,abc"], "'abc' is not a GPU index"),
    (["run", "exp_optimizers", "--dry-run", "--book-dir", "/nonexistent"], "book folder /nonexistent does not exist"),
    (["run", "nosuchchapter"], "unknown chapter 'nosuchchapter'"),
    (["run", "--workers", "0"], "--workers must be >= 1"),
    (["run", "--partition", "gpu"], "only apply with --executor slurm"),
    (["run", "--fresh", "--resume"], "contradict"),
])
def test_usage_errors_are_one_line(args, msg, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1 and "Traceback" not in err


def test_cuda_device_without_cuda_is_refused(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(R, "_cuda_available", lambda: False)
    assert cli.main(["run", "exp_optimizers", "--profile", "smoke", "--dry-run", "-p", "DEVICE", "cuda"]) == 2
    assert "DEVICE 'cuda' was asked for but CUDA is not available" in capsys.readouterr().err


def test_usage_errors_do_not_import_torch():
    import subprocess
    code = ("import sys; from nclib import __main__ as m; rc = m.main(['run', 'nosuch']); "
            "print('torch' in sys.modules, rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "False 2", out.stderr
    code = ("import sys; from nclib import __main__ as m; m.main(['run', 'exp_optimizers', '--dry-run']); "
            "m.main(['run', '--list']); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip().endswith("False"), out.stderr


def test_help_has_no_hidden_worker_line():
    import contextlib
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "SUPPRESS" not in buf.getvalue() and "_worker" not in buf.getvalue()


def test_truncated_jpeg_archive_is_a_one_line_error(tmp_path, monkeypatch):
    from nclib import data as D
    root = tmp_path / "data"
    arch = root / D._JPEG_ARCHIVE
    arch.parent.mkdir(parents=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        payload = os.urandom(200_000)
        info = tarfile.TarInfo("train/airplane/0.jpg")
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
    arch.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    monkeypatch.setenv("NCLIB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(RuntimeError, match=f"archive {arch} is truncated or corrupt") as info:
        D._jpeg_dir(root)
    assert "\n" not in str(info.value)
    assert not list((tmp_path / "cache").glob(".extract-*"))


def test_trial_is_wired_to_nclib_trial(monkeypatch, capsys):
    seen = {}
    fake = types.ModuleType("nclib.trial")

    def run_trial(profile="full", names=None, scratch_dir=None, device=None, echo=print):
        seen.update(profile=profile, names=names, device=device)
        return 0

    fake.run_trial = run_trial
    import nclib
    monkeypatch.setitem(sys.modules, "nclib.trial", fake)
    monkeypatch.setattr(nclib, "trial", fake, raising=False)  # an earlier import left the real one there
    monkeypatch.chdir(ROOT)
    assert cli.main(["run", "--profile", "full", "--trial", "-p", "DEVICE", "cpu"]) == 0
    assert seen == dict(profile="full", names=None, device="cpu")
    monkeypatch.setitem(sys.modules, "nclib.trial", None)  # the module is not there
    monkeypatch.delattr(nclib, "trial", raising=False)
    assert cli.main(["run", "--profile", "full", "--trial"]) == 2
    assert "--trial needs nclib/trial.py" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 5. nothing half-written
def _dead_pid() -> int:
    import subprocess
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temporaries_of_dead_processes_are_cleaned(tmp_path):
    dead, old = _dead_pid(), time.time() - 3600
    stale = [tmp_path / f".x__cpu__abc.json.tmp{dead}", tmp_path / f"x__cpu__abc.pt.tmp{dead}",
             tmp_path / f".exp.partial{dead}.ipynb"]
    live = [tmp_path / f"y.pt.tmp{os.getpid()}", tmp_path / f".y.json.tmp{os.getppid()}"]
    for p in stale + live:
        p.write_bytes(b"partial")
        os.utime(p, (old, old))
    empty = tmp_path / "tmpabc123"
    empty.mkdir()
    keep = tmp_path / "fig3-mnist-sgd__cpu__abc.json"
    keep.write_text("{}")
    removed = R.clean_stale(tmp_path)
    assert sorted(removed) == sorted(stale + [empty])
    assert all(p.exists() for p in live) and keep.exists()


def test_stale_extraction_of_a_dead_process_is_cleaned(tmp_path):
    from nclib import data as D
    dead = tmp_path / f".extract-{_dead_pid()}-abcd"
    (dead / "train").mkdir(parents=True)
    mine = tmp_path / f".extract-{os.getpid()}-efgh"
    mine.mkdir()
    D._clean_stale_extractions(tmp_path)
    assert not dead.exists() and mine.exists()


def test_two_runners_never_train_the_same_run(tmp_path):
    lock = R.RunLock(tmp_path, "run-a").acquire()
    try:
        with pytest.raises(R.RunBusy, match=f"being trained by {socket.gethostname()} pid {os.getpid()}"):
            R.RunLock(tmp_path, "run-a").acquire()
    finally:
        lock.release()
    assert not lock.path.exists()
    # a lock of a dead process of this host is stale and taken over
    lock.path.parent.mkdir(parents=True, exist_ok=True)
    lock.path.write_text(json.dumps(dict(host=socket.gethostname(), pid=_dead_pid())))
    R.RunLock(tmp_path, "run-a").acquire().release()
    # another host: live while its heartbeat is fresh, stale once it is old
    lock.path.write_text(json.dumps(dict(host="node-17", pid=1)))
    with pytest.raises(R.RunBusy, match="node-17"):
        R.RunLock(tmp_path, "run-a").acquire()
    old = time.time() - R.STALE_AFTER_S - 10
    os.utime(lock.path, (old, old))
    R.RunLock(tmp_path, "run-a").acquire().release()


def test_a_second_runner_waits_and_then_finds_the_results(tmp_path, fake_training):
    """train_one waits for the holder of the lock and then loads what it stored."""
    import threading
    c = C.get_config("fig3-mnist-sgd", "cpu")
    rdir = tmp_path / "results"
    lock = R.RunLock(rdir, E.results_path(c, rdir).stem).acquire()

    def finish():
        time.sleep(1.0)
        E.load_or_run(c, rdir)  # the first runner stores its results, then lets go
        lock.release()

    t = threading.Thread(target=finish)
    t.start()
    monkey = R.RunLock.acquire

    def fast_poll(self, wait=False, poll_s=5.0, echo=None):
        return monkey(self, wait=wait, poll_s=0.2, echo=echo)

    R.RunLock.acquire = fast_poll
    try:
        out = R.train_one(c.to_dict(), str(rdir))
    finally:
        R.RunLock.acquire = monkey
        t.join()
    assert out["status"] == "stored" and fake_training == ["fig3-mnist-sgd"]
