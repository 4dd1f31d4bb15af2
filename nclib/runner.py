"""How runs are executed: ``python -m nclib run`` trains what the chapters need, then executes them.

The steps of :func:`run_chapters`:

1. :func:`plan`: per configuration of the chosen chapters (from :func:`nclib.pages.chapter_groups`)
   a status -- "stored" (results exist: skipped; ``rerun`` replaces them), "copy" (an equivalent
   run is stored or planned), "resume" (a checkpoint of the same configuration hash exists:
   training continues from its epoch; ``fresh`` starts over), "train".
2. Training, one job per run, through one function, :class:`TrainJob` (-> :func:`train_one`),
   on an *executor*: ``"inline"`` (in this process, one after the other: the default on a
   CPU-only machine with one worker), ``"local"`` (submitit's LocalExecutor: real subprocesses,
   one per device slot -- ``workers`` CPU processes of ``threads`` threads, or ``per_gpu`` per
   GPU) or ``"slurm"`` (submitit's SLURM executor: a job array, requeued on preemption and
   resumed from its checkpoint by submitit's checkpointing hook).
3. Each chapter executed with papermill from its jupytext ``.md`` (cwd = ``book/``), so that
   the notebooks only load stored results.  Executed notebooks are written atomically.

Reliability (what :func:`train_one` guarantees): results and checkpoint folders are checked
for writability before training; results are written next to their destination, fsynced and
atomically replaced, and the checkpoint is deleted only after that; a lock per run
(:class:`RunLock`: host, pid, heartbeat) keeps two runners from training the same run; stale
temporaries of dead processes are removed on the next start (:func:`clean_stale`); a diverged
run (:class:`nclib.train.TrainingDiverged`) is named and never stored; each attempt has its own
log file.
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import datetime
import json
import os
import pathlib
import pickle
import re
import socket
import sys
import threading
import time
import zipfile

from . import configs as C
from . import experiments as E
from .costs import estimate_seconds, fmt_seconds
from .pages import (CHAPTERS, COMMON_PARAMS, _check_chapter, _check_profile, chapter_configs,
                    chapter_groups, chapter_names, chapter_parameters, copy_equivalent, describe_data,
                    results_dir_for, training_key)

__all__ = ["EXECUTORS", "parse_value", "parse_gpus", "notebook_parameters", "checkpoint_epoch", "PlannedRun",
           "plan", "describe_plan", "list_chapters", "RunLock", "RunBusy", "clean_stale", "TrainJob",
           "train_one", "run_chapters", "results_report", "interrupted_message"]

EXECUTORS = ("inline", "local", "slurm")
#: A lock whose heartbeat is older than this (seconds) is stale when its host is another one.
STALE_AFTER_S = 600.0
HEARTBEAT_S = 30.0
#: Temporary files of a process that is gone are removed when older than this (seconds).
_TMP_GRACE_S = 60.0

#: Runs being trained in this process: (config, checkpoint path), for the SIGINT message.
_ACTIVE: list = []


# ----------------------------------------------------------------------------- arguments
def parse_value(text: str):
    """A ``-p NAME VALUE`` value: a Python/JSON literal (``10``, ``None``, ``['mnist']``) when
    it parses as one, else the string itself."""
    for conv in (ast.literal_eval, json.loads):
        try:
            return conv(text)
        except (ValueError, SyntaxError, TypeError):
            pass
    low = text.strip().lower()
    if low in ("null", "none"):
        return None
    return text


def parse_gpus(gpus):
    """``--gpus``: "auto", "none" or a comma-separated list of GPU indices; ValueError naming
    the bad item otherwise.  Returns "auto", [] (none) or a list of ints."""
    if gpus is None or str(gpus).strip().lower() in ("none", ""):
        return []
    if gpus == "auto":
        return "auto"
    items = [x.strip() for x in str(gpus).split(",")]
    bad = [x for x in items if not x.isdigit()]
    if bad:
        raise ValueError(f"--gpus {gpus!r}: {', '.join(repr(b) for b in bad)} is not a GPU index; "
                         f"give 'auto', 'none' or indices like 0,1,3")
    return [int(x) for x in items]


def _cuda_available() -> bool:
    """Whether CUDA can be used, without importing torch when there is no NVIDIA driver."""
    if not (os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")):
        return False
    import torch
    return torch.cuda.is_available()


def check_device(device) -> None:
    """Refuse a CUDA device on a machine without CUDA (as :func:`nclib.train.resolve_device` does)."""
    if device is None or device in ("auto", "cpu"):
        return
    if not isinstance(device, str) or not re.fullmatch(r"(cpu|cuda(:\d+)?|mps)", device):
        raise ValueError(f"DEVICE {device!r} is not a device; allowed: None, 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'")
    if device.startswith("cuda") and not _cuda_available():
        raise ValueError(f"DEVICE {device!r} was asked for but CUDA is not available on {socket.gethostname()}")


def notebook_parameters(path) -> dict:
    """Names assigned in the cell tagged ``parameters`` of a notebook (``.md`` or ``.ipynb``),
    with their literal values where they are literals (else the source text).  A MyST ``.md``
    is read directly (fast); an ``.ipynb`` through jupytext."""
    path = pathlib.Path(path)
    source = None
    if path.suffix == ".md":
        text = path.read_text()
        for m in re.finditer(r"^```\{code-cell\}[^\n]*\n(.*?)^```", text, re.S | re.M):
            body = m.group(1)
            head = body.split("\n\n", 1)
            if head[0].lstrip().startswith(":tags:") and "parameters" in head[0]:
                source = head[1] if len(head) > 1 else ""
                break
    else:
        import jupytext
        nb = jupytext.read(str(path))
        cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
        source = cells[0].source if cells else None
    if source is None:
        raise ValueError(f"{path} has no cell tagged 'parameters'")
    out = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    try:
                        out[t.id] = ast.literal_eval(node.value)
                    except ValueError:
                        out[t.id] = ast.get_source_segment(source, node.value)
    return out


# ----------------------------------------------------------------------------- checkpoints
class _Stub:
    def __init__(self, *a, **k):
        pass

    def __setstate__(self, state):
        pass


class _PeekUnpickler(pickle.Unpickler):
    """Reads the dict pickled by ``torch.save`` without torch: tensors become stubs."""

    def find_class(self, module, name):
        if module in ("collections", "builtins") and name in ("OrderedDict", "dict", "list", "tuple", "set"):
            return super().find_class(module, name)
        return _Stub

    def persistent_load(self, pid):
        return None


def checkpoint_epoch(path) -> int | None:
    """The last finished epoch stored in a checkpoint of :func:`nclib.train.train`, read without
    importing torch; None when there is no readable checkpoint."""
    try:
        with zipfile.ZipFile(path) as z:
            name = next(n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl")
            obj = _PeekUnpickler(z.open(name)).load()
        return int(obj["epoch"])
    except Exception:  # noqa: BLE001 - unreadable: the training will say why
        return None


def _checkpoint_path(config, results_dir) -> pathlib.Path:
    return E.checkpoint_path(config, results_dir)


# ----------------------------------------------------------------------------- the plan
@dataclasses.dataclass
class PlannedRun:
    chapter: str
    config: E.ExperimentConfig
    results_dir: pathlib.Path
    status: str          # "stored", "copy", "resume", "train", "rerun"
    estimate_s: float
    resume_epoch: int | None = None
    device: str | None = None

    def describe(self) -> str:
        if self.status in ("resume", "rerun") and self.resume_epoch is not None:
            return f"{self.status} from epoch {self.resume_epoch}" if self.status == "resume" else \
                f"rerun (resume from epoch {self.resume_epoch})"
        return {"stored": "stored (skip)"}.get(self.status, self.status)


def _check_book_dir(book_dir) -> pathlib.Path:
    book_dir = pathlib.Path(book_dir)
    if not book_dir.is_dir():
        raise ValueError(f"book folder {book_dir} does not exist (give --book-dir the folder holding the "
                         f"chapters' .md files)")
    return book_dir


def plan(chapters, profile: str, params: dict | None = None, *, book_dir="book", results_dir="results",
         resume: bool = True, fresh: bool = False, rerun: bool = False) -> tuple:
    """What :func:`run_chapters` would do: ``(runs, chapter_params)``.  ``runs``: one
    :class:`PlannedRun` per distinct configuration (status "stored": results exist, skipped;
    "rerun": they exist and ``rerun`` replaces them; "copy": an equivalent run is stored or
    planned; "resume": a checkpoint of this configuration hash continues from its epoch;
    "train").  ``fresh``: checkpoints are ignored (and deleted when training starts).
    ``resume`` is accepted for compatibility (resuming is the default).  ``chapter_params``:
    the ``-p`` values each chapter receives.  ``"auto"`` plans the "cpu" profile for groups
    without complete stored "full" results.  Unknown chapters, profiles or parameters raise
    ValueError."""
    _check_profile(profile)
    chapters = list(chapters) or chapter_names()
    for ch in chapters:
        _check_chapter(ch)
    params = dict(params or {})
    book_dir = _check_book_dir(book_dir)
    per_chapter = {}
    known = set()
    for ch in chapters:
        path = book_dir / f"{ch}.md"
        nb_params = notebook_parameters(path) if path.exists() else chapter_parameters(ch)
        known |= set(nb_params)
        per_chapter[ch] = {k: v for k, v in params.items() if k in nb_params}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)}; the chosen chapters "
                         f"({', '.join(chapters)}) take: {', '.join(sorted(known))}")
    if "PROFILE" in params:
        raise ValueError("give the profile with --profile, not -p PROFILE")
    check_device(params.get("DEVICE"))
    runs, seen_keys, seen, index = [], set(), set(), {}
    for ch in chapters:
        p = per_chapter[ch]
        rdir_base = book_dir / p.get("RESULTS_DIR", results_dir)
        own = {k: v for k, v in p.items() if k not in COMMON_PARAMS}
        epochs = p.get("EPOCHS")
        if profile == "auto":
            full = chapter_groups(ch, "full", EPOCHS=epochs, **own)
            cpu = chapter_groups(ch, "cpu", EPOCHS=epochs, **own)
            cfgs = []
            for g in full:
                done = all(E.results_path(c, rdir_base).exists() for c in full[g].values())
                cfgs += list((full if done else cpu)[g].values())
        else:
            cfgs = chapter_configs(ch, profile, EPOCHS=epochs, **own)
        for c in cfgs:
            rdir = rdir_base if c.profile != "smoke" else results_dir_for("smoke")
            if not rdir.is_absolute() and c.profile == "smoke":
                rdir = book_dir / rdir
            ident = (c.name, E.config_hash(c))
            if ident in seen:
                continue
            seen.add(ident)
            key = (training_key(c), str(rdir))
            ck = _checkpoint_path(c, rdir)
            ck_epoch = None if fresh or not ck.exists() else checkpoint_epoch(ck)
            stored = E.results_path(c, rdir).exists()
            if stored and not rerun:
                status = "stored"
            elif key in seen_keys or (not rerun and _equivalent_stored(c, rdir, index)):
                status = "copy"
            elif stored:
                status = "rerun"
            elif not fresh and ck.exists():
                status = "resume"
            else:
                status = "train"
            seen_keys.add(key)
            est = estimate_seconds(c) if status in ("train", "resume", "rerun") else 0.0
            if status in ("resume", "rerun") and ck_epoch and c.epochs:
                est *= max(0.0, 1 - ck_epoch / c.epochs)
            runs.append(PlannedRun(ch, c, rdir, status, est, ck_epoch if status in ("resume", "rerun") else None,
                                   p.get("DEVICE")))
    return runs, per_chapter


def _equivalent_stored(config, rdir, index: dict) -> bool:
    """Whether another run with the same training is stored in ``rdir`` (what
    :func:`nclib.pages.find_equivalent` finds), reading each results file once per plan."""
    rdir = pathlib.Path(rdir)
    if rdir not in index:
        keys = {}
        for path in sorted(rdir.glob("*__*__*.json")):
            try:
                with open(path) as f:
                    keys.setdefault(training_key(C.check_config(json.load(f)["config"])), []).append(path.name)
            except (OSError, ValueError, TypeError, KeyError):
                continue
        index[rdir] = keys
    return any(not n.startswith(config.name + "__") for n in index[rdir].get(training_key(config), []))


def describe_plan(runs) -> str:
    """A table of planned runs with status and estimated cost, and the total."""
    lines = [f"{'chapter':18} {'configuration':34} {'profile':7} {'status':26} {'estimate':>10}"]
    for r in runs:
        lines.append(f"{r.chapter:18} {r.config.name:34} {r.config.profile:7} {r.describe():26} "
                     f"{fmt_seconds(r.estimate_s):>10}")
    tot = sum(r.estimate_s for r in runs)
    lines.append(f"total estimated training: {fmt_seconds(tot)} (cpu = one thread, gpu = one GPU; calibrated "
                 f"from stored runs, see nclib.costs)")
    return "\n".join(lines)


def list_chapters(book_dir="book", results_dir="results") -> str:
    """``--list``: every chapter, its configurations, their estimated cost per profile and
    whether results are stored ("-" where a run has no such profile)."""
    book_dir = _check_book_dir(book_dir)
    lines = []
    for ch, spec in CHAPTERS.items():
        lines.append(f"{ch}: {spec['title']} -- figures {', '.join(spec['figures'])}")
        lines.append(f"  parameters: {', '.join(f'{k}={v!r}' for k, v in chapter_parameters(ch).items())}")
        tot = {p: 0.0 for p in E.PROFILES}
        cfgs = {p: {c.name: c for c in chapter_configs(ch, p)} for p in E.PROFILES}
        names = list(dict.fromkeys(n for p in E.PROFILES for n in cfgs[p]))
        for name in names:
            cells = []
            for p in E.PROFILES:
                cp = cfgs[p].get(name)
                if cp is None:
                    cells.append(f"{p} -")
                    continue
                est = estimate_seconds(cp)
                tot[p] += est
                stored = E.results_path(cp, results_dir_for(p, book_dir / results_dir)).exists() \
                    if p != "smoke" else False
                cells.append(f"{p} {fmt_seconds(est)}{' (stored)' if stored else ''}")
            lines.append(f"  {name:34} {' | '.join(cells)}")
        lines.append(f"  total: {' | '.join(f'{p} {fmt_seconds(t)}' for p, t in tot.items())}")
    lines.append("Estimates: smoke and cpu on one CPU thread, full on one GPU; calibrated from the stored runs' "
                 "wall times (and benchmarks/gpu_check.json when present); a stored run shows its own time.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- locks and temporaries
class RunBusy(RuntimeError):
    """Another live runner holds the lock of this run."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """A lock file per run, ``<results_dir>/.locks/<run>.lock``, holding host, pid and start
    time; its mtime is the heartbeat (touched every :data:`HEARTBEAT_S` s by a thread).  A
    lock of this host is stale when its process is gone; one of another host (a cluster with
    a shared filesystem) when its heartbeat is older than :data:`STALE_AFTER_S`.  A stale lock
    is taken over; a live one raises :class:`RunBusy` (or is waited for, ``wait=True``)."""

    def __init__(self, results_dir, stem: str):
        self.path = pathlib.Path(results_dir) / ".locks" / f"{stem}.lock"
        self._stop = threading.Event()
        self._thread = None

    def holder(self) -> dict | None:
        """The holder's record, or None when the lock is free or stale."""
        try:
            info = json.loads(self.path.read_text())
            age = time.time() - self.path.stat().st_mtime
        except (OSError, ValueError):
            return None
        if info.get("host") == socket.gethostname():
            return info if _pid_alive(int(info.get("pid", -1))) else None
        return info if age < STALE_AFTER_S else None

    def acquire(self, wait: bool = False, poll_s: float = 5.0, echo=None) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = dict(host=socket.gethostname(), pid=os.getpid(),
                  started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        said = False
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                info = self.holder()
                if info is None:  # stale: take it over (rename is atomic; one taker wins)
                    with contextlib.suppress(OSError):
                        stale = self.path.with_name(self.path.name + f".stale{os.getpid()}")
                        os.replace(self.path, stale)
                        stale.unlink()
                    continue
                if not wait:
                    raise RunBusy(f"run {self.path.stem} is being trained by {info.get('host')} pid "
                                  f"{info.get('pid')} (since {info.get('started')}; lock {self.path})") from None
                if echo and not said:
                    echo(f"  waiting for {self.path.stem}: trained by {info.get('host')} pid {info.get('pid')}")
                    said = True
                time.sleep(poll_s)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            break
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()
        return self

    def _beat(self):
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        self._stop.set()
        try:
            info = json.loads(self.path.read_text())
            if info.get("host") == socket.gethostname() and info.get("pid") == os.getpid():
                self.path.unlink()
        except (OSError, ValueError):
            pass

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


_TMP_PID = re.compile(r"\.tmp(\d+)$|\.partial(\d+)\.ipynb$|^\.extract-(\d+)-|^\.nclib-write-test-.*-(\d+)$")


def clean_stale(*folders) -> list:
    """Remove temporaries left by processes that are gone: ``*.tmpPID`` (results, checkpoints
    ``*.pt.tmpPID``), ``*.partialPID.ipynb`` (executed notebooks), ``.extract-PID-*`` (dataset
    extraction), write probes -- when PID is not a live process of this host and the file is
    older than a minute, or when older than a day in any case (another host's) -- and
    empty ``tmp*`` folders of older versions.  Returns the removed paths."""
    import shutil
    removed = []
    now = time.time()
    for folder in folders:
        folder = pathlib.Path(folder)
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            try:
                age = now - p.lstat().st_mtime
            except OSError:
                continue
            m = _TMP_PID.search(p.name)
            stale = False
            if m:
                pid = int(next(g for g in m.groups() if g))
                stale = (pid != os.getpid() and not _pid_alive(pid) and age > _TMP_GRACE_S) or age > 86400
            elif p.name.startswith(".extract-") or (p.name.startswith("tmp") and p.is_dir()):
                stale = age > 3600 if p.name.startswith(".extract-") else (not any(p.iterdir()) or age > 86400)
            if stale:
                with contextlib.suppress(OSError):
                    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
                    removed.append(p)
    return removed


# ----------------------------------------------------------------------------- one run
def _stamp() -> str:
    return datetime.datetime.now().strftime("%Y%m%dT%H%M%S%f") + f"-{os.getpid()}"


def _job_info(executor: str) -> dict:
    info = dict(executor=executor, node=socket.gethostname(), job_id=None)
    if executor in ("local", "slurm"):
        try:
            import submitit
            env = submitit.JobEnvironment()
            info.update(job_id=str(env.job_id), node=env.hostname)
        except (ImportError, RuntimeError):
            pass
    return info


def train_one(config: dict, results_dir: str, *, fresh: bool = False, rerun: bool = False, device=None,
              threads: int | None = None, log_dir=None, executor: str = "inline", wait: bool = True,
              echo=None) -> dict:
    """Train (or continue) one configuration and store its results; the body of every executor.

    Order: clean stale temporaries; take the run's :class:`RunLock` (waiting for a live
    holder); if the results appeared meanwhile and not ``rerun``, return them; check that the
    results and checkpoint folders are writable; ``fresh``: delete the checkpoint; copy an
    equivalent stored run, else train (resuming from the checkpoint) and store the results
    (:func:`nclib.experiments.load_or_run`: atomic, fsynced, the checkpoint deleted only
    afterwards), with the executor, job id and node in ``provenance["job"]``.  The output
    goes to a log file of its own for this attempt under ``log_dir``.  Returns
    ``{"name", "status", "log", "final"}``; a diverged run raises
    :class:`nclib.train.TrainingDiverged` and stores nothing."""
    cfg = C.check_config(config)
    rdir = pathlib.Path(results_dir)
    if threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["NCLIB_THREADS"] = str(threads)
    path = E.results_path(cfg, rdir)
    ck = E.checkpoint_path(cfg, rdir)
    log = None
    if log_dir is not None:
        log = pathlib.Path(log_dir) / f"{cfg.name}__{cfg.profile}__{_stamp()}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
    job = _job_info(executor)
    job["log"] = None if log is None else log.name
    E.check_writable(rdir, "results")
    E.check_writable(ck.parent, "checkpoint")
    clean_stale(rdir, ck.parent)
    lock = RunLock(rdir, path.stem)
    lock.acquire(wait=wait, echo=echo)
    _HELD.append(lock)
    _ACTIVE.append((cfg, ck))
    try:
        if path.exists() and not rerun:
            return dict(name=cfg.name, status="stored", log=None, final=E.load_or_run(cfg, rdir, run=False)["final"])
        if fresh and ck.exists():
            ck.unlink()
        if not rerun:
            res = copy_equivalent(cfg, rdir)
            if res is not None:
                return dict(name=cfg.name, status="copied", log=None, final=res["final"])
        with contextlib.ExitStack() as stack:
            if log is not None:
                f = stack.enter_context(open(log, "w", buffering=1))
                f.write(f"# {datetime.datetime.now().isoformat(timespec='seconds')} {cfg.name} ({cfg.profile}) "
                        f"executor={executor} job={job['job_id']} node={job['node']} pid={os.getpid()} "
                        f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')} "
                        f"resume_from_epoch={checkpoint_epoch(ck) if ck.exists() else None}\n")
                stack.enter_context(contextlib.redirect_stdout(f))
                stack.enter_context(contextlib.redirect_stderr(f))
            from .threads import configure
            configure(threads)
            try:
                res = E.load_or_run(cfg, rdir, device=device, progress=True, rerun=rerun,
                                    provenance_extra=dict(job=job))
            except BaseException as exc:
                print(f"FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                raise
            print(f"stored {path}", file=sys.stderr, flush=True)
        return dict(name=cfg.name, status="trained", log=None if log is None else str(log), final=res["final"])
    except KeyboardInterrupt:
        _INTERRUPTED.append((cfg, ck))
        raise
    finally:
        _ACTIVE.remove((cfg, ck))
        _HELD.remove(lock)
        lock.release()


_HELD: list = []
_INTERRUPTED: list = []


class TrainJob:
    """One run as a picklable job for submitit (``local`` and ``slurm`` executors): calls
    :func:`train_one`.  On a timeout or preemption submitit calls :meth:`checkpoint`, which
    releases the run's lock and requeues the same job (never ``fresh``): it resumes from the
    checkpoint that training writes after every epoch."""

    def __init__(self, config: dict, results_dir: str, *, fresh=False, rerun=False, device=None, threads=None,
                 log_dir=None, executor="local"):
        self.kw = dict(config=config, results_dir=str(results_dir), fresh=fresh, rerun=rerun, device=device,
                       threads=threads, log_dir=None if log_dir is None else str(log_dir), executor=executor)

    def __call__(self) -> dict:
        try:
            return train_one(**self.kw)
        except Exception as exc:
            # a picklable one-line error for the submitting process
            raise RuntimeError(_one_line(exc)) from None

    def checkpoint(self, *args, **kwargs):
        import submitit
        for lock in list(_HELD):
            lock.release()
        kw = dict(self.kw, fresh=False)
        return submitit.helpers.DelayedSubmission(TrainJob(**kw))


def _one_line(exc: BaseException) -> str:
    from .train import TrainingDiverged
    if isinstance(exc, TrainingDiverged):
        return f"diverged: {exc}"
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


# ----------------------------------------------------------------------------- executors
def _slots(gpus, per_gpu: int, workers: int) -> list:
    """Device slots: a list of GPU indices (``per_gpu`` slots per GPU) or ``workers`` CPU slots (None)."""
    ids = parse_gpus(gpus)
    if ids == "auto":
        ids = []
        if _cuda_available():
            import torch
            ids = list(range(torch.cuda.device_count()))
    if ids:
        return [i for i in ids for _ in range(max(1, int(per_gpu)))]
    return [None] * max(1, int(workers))


def _gpu_slots(gpus, per_gpu: int) -> list:
    """CUDA_VISIBLE_DEVICES values of the GPU slots ([None] = CPU only)."""
    s = _slots(gpus, per_gpu, 1)
    return [None if x is None else str(x) for x in s]


def _make_executor(kind: str, folder: pathlib.Path, *, slurm: dict | None = None, threads=None, gpus_per_job=0):
    import submitit
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "local":
        ex = submitit.LocalExecutor(folder=str(folder))
        ex.update_parameters(timeout_min=int((slurm or {}).get("time_min") or 7 * 24 * 60),
                             gpus_per_node=gpus_per_job)
        return ex
    o = dict(slurm or {})
    ex = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
    upd = dict(timeout_min=int(o.get("time_min") or 24 * 60), gpus_per_node=int(o.get("gpus_per_job", 1)),
               cpus_per_task=int(o.get("cpus_per_job") or threads or 4), name="nclib",
               slurm_array_parallelism=int(o.get("array_parallelism") or 64))
    if o.get("partition"):
        upd["slurm_partition"] = o["partition"]
    if o.get("account"):
        upd["slurm_account"] = o["account"]
    if o.get("mem_gb"):
        upd["mem_gb"] = int(o["mem_gb"])
    if o.get("additional"):
        upd["slurm_additional_parameters"] = dict(o["additional"])
    ex.update_parameters(**upd)
    return ex


def _run_inline(todo, *, fresh, rerun, threads, log_dir, echo, summary):
    echo(f"training {len(todo)} configuration(s) one after the other in this process")
    for r in todo:
        t0 = time.time()
        try:
            out = train_one(r.config.to_dict(), str(r.results_dir), fresh=fresh, rerun=rerun, device=r.device,
                            threads=threads or 1, log_dir=log_dir, executor="inline", echo=echo)
            _report(summary, r, True, out.get("log"), time.time() - t0, echo, out["status"])
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - named, and the run counted as failed
            _report(summary, r, False, None, time.time() - t0, echo, _one_line(exc))


def _report(summary, r, ok, log, dt, echo, what):
    name = f"{r.config.name} ({r.config.profile})"
    if ok:
        summary["trained"].append(r.config.name)
        echo(f"  {what} {name} in {dt:.0f} s" + (f"; log {log}" if log else ""))
    else:
        summary["failed"].append(r.config.name)
        summary["errors"][r.config.name] = what
        echo(f"  FAILED {name} after {dt:.0f} s: {what}" + (f"; log {log}" if log else ""))


def _run_submitit(todo, kind, *, fresh, rerun, threads, log_dir, slots, slurm, echo, summary, poll_s=1.0):
    """Run the jobs on submitit's local executor (one subprocess per slot at a time) or on
    SLURM (one job array).  Returns when all jobs have finished."""
    folder = pathlib.Path(log_dir) / "submitit"
    jobs = {}
    try:
        if kind == "slurm":
            ex = _make_executor("slurm", folder, slurm=slurm, threads=threads)
            with ex.batch():
                for r in todo:
                    jobs[ex.submit(TrainJob(r.config.to_dict(), str(pathlib.Path(r.results_dir).resolve()),
                                            fresh=fresh, rerun=rerun, device=r.device, threads=threads,
                                            log_dir=str(pathlib.Path(log_dir).resolve()), executor="slurm"))] = \
                        (r, time.time())
            echo(f"submitted {len(jobs)} job(s) to SLURM: {', '.join(j.job_id for j in jobs)}; submitit folder {folder}")
            for j, (r, t0) in jobs.items():
                _collect(j, r, t0, echo, summary)
            return
        pending, free, running = list(todo), list(slots), {}
        echo(f"training {len(todo)} configuration(s) with submitit's local executor on {len(slots)} slot(s): "
             f"{['cpu' if s is None else f'gpu {s}' for s in slots]}")
        while pending or running:
            while pending and free:
                r, slot = pending.pop(0), free.pop(0)
                ex = _make_executor("local", folder, slurm=slurm, gpus_per_job=0 if slot is None else 1)
                if slot is not None:
                    ex.update_parameters(visible_gpus=[slot])
                j = ex.submit(TrainJob(r.config.to_dict(), str(pathlib.Path(r.results_dir).resolve()), fresh=fresh,
                                       rerun=rerun, device=r.device, threads=threads or 1,
                                       log_dir=str(pathlib.Path(log_dir).resolve()), executor="local"))
                running[j] = (r, slot, time.time())
                jobs[j] = running[j]
                echo(f"  started {r.config.name} ({r.config.profile}) as job {j.job_id} on "
                     f"{'cpu' if slot is None else f'gpu {slot}'}")
            done = [j for j in running if j.done()]
            for j in done:
                r, slot, t0 = running.pop(j)
                free.append(slot)
                _collect(j, r, t0, echo, summary)
            if not done:
                time.sleep(poll_s)
    except KeyboardInterrupt:
        for j in jobs:
            with contextlib.suppress(Exception):
                j.cancel(check=False)
        _INTERRUPTED.extend((r[0].config, E.checkpoint_path(r[0].config, r[0].results_dir))
                            for j, r in jobs.items())
        raise


def _collect(job, r, t0, echo, summary):
    try:
        out = job.result()
        _report(summary, r, True, out.get("log"), time.time() - t0, echo, f"{out['status']} (job {job.job_id})")
    except Exception as exc:  # noqa: BLE001 - submitit wraps the job's error
        msg = str(exc).strip().splitlines()
        last = next((ln for ln in reversed(msg) if ln.startswith(("RuntimeError:", "diverged"))), msg[-1] if msg else "")
        last = last.replace("RuntimeError: ", "", 1)
        _report(summary, r, False, None, time.time() - t0, echo, f"{last} (job {job.job_id}; "
                f"submitit logs in {job.paths.stdout.parent})")


# ----------------------------------------------------------------------------- the batch runner
def _execute_chapter(ch, prm, book_dir, out, log_dir, echo):
    """Execute one chapter with papermill into a partial file, renamed to ``out`` only when
    the whole notebook ran (a failed run leaves ``<out>.failed.ipynb``, never a finished-looking one)."""
    import jupytext
    import papermill as pm
    nb = jupytext.read(str(pathlib.Path(book_dir) / f"{ch}.md"))
    partial = out.with_name(f".{out.stem}.partial{os.getpid()}.ipynb")
    log = pathlib.Path(log_dir) / f"{ch}.notebook.{_stamp()}.log"
    echo(f"executing {ch} with {prm} -> {out} (log {log})")
    t0 = time.time()
    try:
        with open(log, "w") as f:
            pm.execute_notebook(nb, str(partial), parameters=prm, kernel_name="python3", cwd=str(book_dir),
                                progress_bar=False, log_output=True, stdout_file=f, stderr_file=f)
        os.replace(partial, out)
    except BaseException:
        if partial.exists():
            os.replace(partial, out.with_name(out.stem + ".failed.ipynb"))
        raise
    echo(f"  executed {ch} in {time.time() - t0:.0f} s")


def run_chapters(chapters=(), profile: str = "auto", params: dict | None = None, *, book_dir="book",
                 results_dir="results", output_dir="_build/executed", log_dir="_build/logs",
                 resume: bool = True, fresh: bool = False, rerun: bool = False, dry_run: bool = False,
                 gpus="auto", per_gpu: int = 1, threads: int | None = None, workers: int = 1,
                 executor: str | None = None, slurm: dict | None = None, execute: bool = True,
                 echo=print) -> dict:
    """``python -m nclib run``: :func:`plan`, train the runs that need it on ``executor``
    (None: "inline" for one CPU worker, else "local"; see the module docstring), then execute
    each chapter with papermill (cwd = ``book_dir``; the notebook only loads), writing
    ``<output_dir>/<chapter>.ipynb`` and one log per attempt under ``log_dir``.  ``slurm``:
    options of the SLURM executor (``partition``, ``time_min``, ``gpus_per_job``, ``account``,
    ``cpus_per_job``, ``mem_gb``, ``array_parallelism``, ``additional``).  Returns a summary
    dict; failed runs (named, with their reason) raise RuntimeError after the others finished."""
    if executor is not None and executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; allowed: {', '.join(EXECUTORS)}")
    parse_gpus(gpus)
    runs, per_chapter = plan(chapters, profile, params, book_dir=book_dir, results_dir=results_dir,
                             fresh=fresh, rerun=rerun)
    chapters = list(per_chapter)
    echo(describe_plan(runs))
    summary = dict(planned=[(r.config.name, r.config.profile, r.status) for r in runs], trained=[], failed=[],
                   errors={}, executed=[])
    if dry_run:
        return summary
    log_dir = pathlib.Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    todo = sorted([r for r in runs if r.status in ("train", "resume", "rerun")], key=lambda r: -r.estimate_s)
    copies = [r for r in runs if r.status == "copy"]
    for r in todo:  # fail in seconds, not after hours
        E.check_writable(r.results_dir, "results")
        E.check_writable(E.checkpoint_path(r.config, r.results_dir).parent, "checkpoint")
    if todo:
        slots = [None] if executor == "slurm" else _slots(gpus, per_gpu, workers)
        kind = executor or ("inline" if slots == [None] else "local")
        if kind == "inline":
            _run_inline(todo, fresh=fresh, rerun=rerun, threads=threads, log_dir=log_dir, echo=echo, summary=summary)
        else:
            _run_submitit(todo, kind, fresh=fresh, rerun=rerun, threads=threads, log_dir=log_dir, slots=slots,
                          slurm=slurm, echo=echo, summary=summary)
    for r in copies:
        if r.config.name in summary["failed"]:
            continue
        if copy_equivalent(r.config, r.results_dir) is None:
            summary["failed"].append(r.config.name)
            summary["errors"][r.config.name] = "its equivalent run is not stored"
            echo(f"  FAILED {r.config.name}: its equivalent run is not stored")
    if summary["failed"]:
        raise RuntimeError(f"{len(summary['failed'])} run(s) failed: "
                           + "; ".join(f"{n}: {summary['errors'].get(n, '?')}" for n in summary["failed"])
                           + f" (logs in {log_dir}); nothing of them was stored")
    if not execute:
        return summary
    out_dir = pathlib.Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clean_stale(out_dir)
    for ch in chapters:
        prm = dict(per_chapter[ch], PROFILE=profile)
        prm.setdefault("RESULTS_DIR", str(results_dir))
        out = out_dir / f"{ch}.ipynb"
        _execute_chapter(ch, prm, book_dir, out, log_dir, echo)
        summary["executed"].append(str(out))
    return summary


def interrupted_message(argv) -> str:
    """What to print on Ctrl-C: the epoch each active run had reached (from its checkpoint)
    and the command that resumes (the same one, without ``--fresh``/``--rerun``)."""
    parts = []
    for cfg, ck in dict.fromkeys(list(_INTERRUPTED) + list(_ACTIVE)):
        ep = checkpoint_epoch(ck) if pathlib.Path(ck).exists() else None
        parts.append(f"{cfg.name} ({cfg.profile}) at epoch {ep or 0} of {cfg.epochs}")
    cmd = " ".join(["python -m nclib"] + [a for a in argv if a not in ("--fresh", "--rerun")])
    where = "; ".join(parts) if parts else "before training started"
    return f"interrupted: {where}; checkpoints are kept; resume with: {cmd}"


# ----------------------------------------------------------------------------- stored results
def results_report(results_dir="book/results", profile: str | None = None) -> tuple:
    """``python -m nclib results``: ``(text, bad)`` -- a Markdown table of the results files
    that load intact (schema, content hash, manifest: see :func:`nclib.experiments.load_results_file`),
    one row per file sorted by name, with "committed" or "local" in the last column; ``bad``
    maps each file that does not load to the reason.  A missing folder or an unknown profile
    raise ValueError; no results for the profile gives a sentence saying what would make them."""
    rdir = pathlib.Path(results_dir)
    if profile is not None:
        _check_profile(profile, E.PROFILES)
    if not rdir.is_dir():
        raise ValueError(f"results folder {rdir} does not exist (give --results-dir the folder with the "
                         f"*.json results, e.g. book/results)")
    rows = ["| run | profile | data | device | wall time | epochs | train acc | test acc | NC1 | date | commit | file |",
            "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |"]
    bad = {}
    for path in sorted(rdir.glob("*__*__*.json")):
        if profile is not None and f"__{profile}__" not in path.name:
            continue
        try:
            res = E.load_results_file(path)
            c = C.check_config(res["config"])
        except ValueError as exc:
            bad[path.name] = str(exc)
            continue
        pv, fin = res["provenance"], res["final"]
        wall = pv.get("wall_time_s")
        same = f" (copy of {pv['copied_from'].split('__')[0]})" if pv.get("copied_from") else ""

        def pct(v):
            return f"{100 * v:.1f}%" if isinstance(v, (int, float)) else "?"
        nc1 = fin.get("nc1")
        rows.append(f"| {c.name}{same} | {c.profile} | {describe_data(c)} | {pv.get('device', '?')} "
                    f"({pv.get('device_name', '?')}, {pv.get('cpu_threads', '?')} threads) | "
                    f"{fmt_seconds(wall) if isinstance(wall, (int, float)) else '?'} | {fin.get('epoch', '?')} | "
                    f"{pct(fin.get('train_acc'))} | {pct(fin.get('test_acc'))} | "
                    f"{f'{nc1:.3g}' if isinstance(nc1, (int, float)) else '?'} | {str(pv.get('date', '?'))[:10]} | "
                    f"{str(pv.get('git_commit', '?'))[:12]} | {res['_source']['status']} |")
    if len(rows) == 2:
        which = f"profile {profile!r}" if profile else "any profile"
        prof = profile or "cpu"
        text = (f"no stored results for {which} in {rdir}"
                + (f" ({len(bad)} file(s) could not be read)" if bad else "")
                + f"; to produce them: python -m nclib run --profile {prof}"
                + (" on a GPU machine or a cluster (--executor slurm)" if prof == "full" else ""))
        return text, bad
    return "\n".join(rows), bad
