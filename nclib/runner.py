"""The batch runner: ``python -m nclib run`` executes experiment chapters with papermill.

Plans which configurations the chosen chapters need (:func:`plan`, from
:func:`nclib.pages.chapter_groups`), trains the missing ones first in worker processes (one per
GPU slot, or ``workers`` CPU processes pinned to ``threads`` threads each), then executes each
chapter with papermill from its jupytext ``.md`` (cwd = ``book/``), so that the notebooks only
load stored results.  Executed notebooks go to ``_build/executed/``, results to
``book/results/``, logs to ``_build/logs/``.
"""
from __future__ import annotations

import ast
import dataclasses
import datetime
import json
import os
import pathlib
import subprocess
import sys
import time

from . import configs as C
from . import experiments as E
from .costs import estimate_seconds, fmt_seconds
from .pages import (CHAPTERS, COMMON_PARAMS, _check_chapter, _check_profile, chapter_configs,
                    chapter_groups, chapter_names, chapter_parameters, copy_equivalent, find_equivalent,
                    results_dir_for, training_key)

__all__ = ["parse_value", "notebook_parameters", "PlannedRun", "plan", "describe_plan", "list_chapters",
           "worker", "run_chapters"]

# ----------------------------------------------------------------------------- the batch runner
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


def notebook_parameters(path) -> dict:
    """Names assigned in the cell tagged ``parameters`` of a notebook (``.md`` or ``.ipynb``),
    with their literal values where they are literals (else the source text)."""
    import jupytext
    nb = jupytext.read(str(path))
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if not cells:
        raise ValueError(f"{path} has no cell tagged 'parameters'")
    out = {}
    for node in ast.parse(cells[0].source).body:
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    try:
                        out[t.id] = ast.literal_eval(node.value)
                    except ValueError:
                        out[t.id] = ast.get_source_segment(cells[0].source, node.value)
    return out


@dataclasses.dataclass
class PlannedRun:
    chapter: str
    config: E.ExperimentConfig
    results_dir: pathlib.Path
    status: str          # "stored", "copy", "checkpoint", "train"
    estimate_s: float


def _checkpoint_path(config, results_dir) -> pathlib.Path:
    from .data import cache_root
    d = os.environ.get("NCLIB_CHECKPOINTS") or cache_root() / "checkpoints"
    return pathlib.Path(d) / (E.results_path(config, results_dir).stem + ".pt")


def plan(chapters, profile: str, params: dict | None = None, *, book_dir="book", results_dir="results",
         resume: bool = True) -> tuple:
    """What :func:`run_chapters` would do: ``(runs, chapter_params)``.  ``runs``: one
    :class:`PlannedRun` per distinct configuration (status "stored": results exist and
    ``resume``; "copy": an equivalent run is stored or planned; "checkpoint": an interrupted
    run continues; "train").  ``chapter_params``: the ``-p`` values each chapter receives.
    ``"auto"`` plans the "cpu" profile for groups without complete stored "full" results.
    Unknown chapters, profiles or parameters raise ValueError."""
    _check_profile(profile)
    chapters = list(chapters) or chapter_names()
    for ch in chapters:
        _check_chapter(ch)
    params = dict(params or {})
    book_dir = pathlib.Path(book_dir)
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
    runs, seen_keys, seen = [], set(), set()
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
            if resume and E.results_path(c, rdir).exists():
                status = "stored"
            elif key in seen_keys or (resume and find_equivalent(c, rdir) is not None):
                status = "copy"
            elif resume and _checkpoint_path(c, rdir).exists():
                status = "checkpoint"
            else:
                status = "train"
            seen_keys.add(key)
            est = estimate_seconds(c) if status in ("train", "checkpoint") else 0.0
            runs.append(PlannedRun(ch, c, rdir, status, est))
    return runs, per_chapter


def describe_plan(runs) -> str:
    """A table of planned runs with status and estimated cost, and the total."""
    lines = [f"{'chapter':18} {'configuration':34} {'profile':7} {'status':10} {'estimate':>10}"]
    for r in runs:
        lines.append(f"{r.chapter:18} {r.config.name:34} {r.config.profile:7} {r.status:10} {fmt_seconds(r.estimate_s):>10}")
    tot = sum(r.estimate_s for r in runs)
    lines.append(f"total estimated training: {fmt_seconds(tot)} (rough: cpu = one thread, gpu = one GPU; see "
                 f"nclib.runner.THROUGHPUT)")
    return "\n".join(lines)


def list_chapters(book_dir="book", results_dir="results") -> str:
    """``--list``: every chapter, its configurations, their estimated cost per profile and
    whether results are stored ("-" where a run has no such profile)."""
    book_dir = pathlib.Path(book_dir)
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
    lines.append("Estimates: smoke and cpu on one CPU thread, full on one GPU; rough (+-2x).")
    return "\n".join(lines)


def _gpu_slots(gpus, per_gpu: int) -> list:
    """Device slots for parallel pre-runs: a list of CUDA_VISIBLE_DEVICES values (None = CPU)."""
    if gpus in (None, "none", 0, "0"):
        return [None]
    if gpus == "auto":
        try:
            import torch
            n = torch.cuda.device_count()
        except Exception:  # noqa: BLE001 - no CUDA build
            n = 0
        ids = list(range(n))
    else:
        ids = [int(x) for x in str(gpus).split(",")]
    if not ids:
        return [None]
    return [str(i) for i in ids for _ in range(max(1, int(per_gpu)))]


def _run_one(run: PlannedRun, slot, log_dir: pathlib.Path, resume: bool, threads: int | None) -> tuple:
    """Train one configuration in a worker process (``python -m nclib _worker``), logging to a
    file; the worker sets torch's thread count to ``threads`` (:func:`nclib.threads.configure`)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{run.config.name}__{run.config.profile}.log"
    env = dict(os.environ)
    if slot is not None:
        env["CUDA_VISIBLE_DEVICES"] = slot
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
        env["NCLIB_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "nclib", "_worker", "--config", json.dumps(run.config.to_dict()),
           "--results-dir", str(run.results_dir)] + ([] if resume else ["--fresh"])
    t0 = time.time()
    with open(log, "w") as f:
        f.write(f"# {datetime.datetime.now().isoformat(timespec='seconds')} slot={slot} {run.config.name}\n")
        f.flush()
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    return rc, time.time() - t0, log


def worker(config_json: str, results_dir: str, fresh: bool = False) -> dict:
    """Body of ``python -m nclib _worker``: train (or continue) one configuration and store it.
    ``fresh``: ignore a stored result and a checkpoint (the new result replaces the old
    file only once it is complete)."""
    import tempfile
    from .threads import configure
    configure()  # $NCLIB_THREADS (set by the runner from --threads), else one thread
    cfg = C.check_config(json.loads(config_json))
    rdir = pathlib.Path(results_dir)
    if not fresh:
        res = _stored_results(cfg, rdir) or copy_equivalent(cfg, rdir)
        if res is not None:
            return res
        return E.load_or_run(cfg, rdir, progress=True)
    ck = _checkpoint_path(cfg, rdir)
    if ck.exists():
        ck.unlink()
    with tempfile.TemporaryDirectory(dir=rdir.parent if rdir.parent.exists() else None) as tmp:
        E.load_or_run(cfg, tmp, progress=True, checkpoint_dir=ck.parent)
        src = E.results_path(cfg, tmp)
        rdir.mkdir(parents=True, exist_ok=True)
        os.replace(src, E.results_path(cfg, rdir))
    return E.load_or_run(cfg, rdir, run=False)


def run_chapters(chapters=(), profile: str = "auto", params: dict | None = None, *, book_dir="book",
                 results_dir="results", output_dir="_build/executed", log_dir="_build/logs",
                 resume: bool = False, dry_run: bool = False, gpus="auto", per_gpu: int = 1,
                 threads: int | None = None, workers: int = 1, execute: bool = True, echo=print) -> dict:
    """``python -m nclib run``: plan, pre-run the configurations in worker processes (in
    parallel, one per device slot: ``per_gpu`` per GPU, or ``workers`` CPU processes of
    ``threads`` threads each on a CPU-only machine), then
    execute each chapter with papermill (cwd = ``book_dir``; the notebook only loads), writing
    ``<output_dir>/<chapter>.ipynb`` and logs under ``log_dir``.  Returns a summary dict."""
    from concurrent.futures import ThreadPoolExecutor

    runs, per_chapter = plan(chapters, profile, params, book_dir=book_dir, results_dir=results_dir,
                             resume=resume)
    chapters = list(per_chapter)
    echo(describe_plan(runs))
    summary = dict(planned=[(r.config.name, r.config.profile, r.status) for r in runs], trained=[], failed=[],
                   executed=[])
    if dry_run:
        return summary
    log_dir = pathlib.Path(log_dir)
    todo = [r for r in runs if r.status in ("train", "checkpoint")]
    # distinct trainings first (longest first), copies after them
    todo.sort(key=lambda r: -r.estimate_s)
    copies = [r for r in runs if r.status == "copy"]
    slots = _gpu_slots(gpus, per_gpu)
    if slots == [None] and workers > 1:
        slots = [None] * int(workers)  # CPU workers, each pinned to `threads` (default 1) threads
        threads = threads or 1
    if todo and slots == [None]:
        # no GPU: one configuration after the other, in this process (no start-up cost per run)
        import contextlib
        echo(f"pre-running {len(todo)} configuration(s) one after the other on the CPU")
        log_dir.mkdir(parents=True, exist_ok=True)
        for r in todo:
            log = log_dir / f"{r.config.name}__{r.config.profile}.log"
            t0 = time.time()
            try:
                with open(log, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                    worker(json.dumps(r.config.to_dict()), str(r.results_dir), fresh=not resume)
                ok = True
            except Exception as exc:  # noqa: BLE001 - reported, and the run is named as failed
                with open(log, "a") as f:
                    f.write(f"\nFAILED: {type(exc).__name__}: {exc}\n")
                ok = False
            echo(f"  {'done' if ok else 'FAILED'} {r.config.name} ({r.config.profile}) in {time.time() - t0:.0f} s; "
                 f"log {log}")
            (summary["trained"] if ok else summary["failed"]).append(r.config.name)
    elif todo:
        echo(f"pre-running {len(todo)} configuration(s) on {len(slots)} slot(s): {slots}")
        free = list(slots)
        import threading
        lock = threading.Lock()

        def job(r):
            with lock:
                slot = free.pop(0)
            try:
                rc, dt, log = _run_one(r, slot, log_dir, resume, threads)
            finally:
                with lock:
                    free.append(slot)
            echo(f"  {'done' if rc == 0 else 'FAILED'} {r.config.name} ({r.config.profile}) in {dt:.0f} s; log {log}")
            return r, rc

        with ThreadPoolExecutor(max_workers=len(slots)) as ex:
            for r, rc in ex.map(job, todo):
                (summary["trained"] if rc == 0 else summary["failed"]).append(r.config.name)
    for r in copies:
        if r.config.name in summary["failed"]:
            continue
        if copy_equivalent(r.config, r.results_dir) is None:
            summary["failed"].append(r.config.name)
            echo(f"  FAILED {r.config.name}: its equivalent run is not stored")
    if summary["failed"]:
        raise RuntimeError(f"{len(summary['failed'])} run(s) failed: {', '.join(summary['failed'])}; "
                           f"see the logs in {log_dir}")
    if not execute:
        return summary
    import jupytext
    import papermill as pm
    out_dir = pathlib.Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for ch in chapters:
        nb = jupytext.read(str(pathlib.Path(book_dir) / f"{ch}.md"))
        prm = dict(per_chapter[ch], PROFILE=profile)
        prm.setdefault("RESULTS_DIR", str(results_dir))
        out = out_dir / f"{ch}.ipynb"
        echo(f"executing {ch} with {prm} -> {out}")
        t0 = time.time()
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / f"{ch}.notebook.log", "w") as f:
            pm.execute_notebook(nb, str(out), parameters=prm, kernel_name="python3", cwd=str(book_dir),
                                progress_bar=False, log_output=True, stdout_file=f, stderr_file=f)
        echo(f"  executed {ch} in {time.time() - t0:.0f} s")
        summary["executed"].append(str(out))
    return summary


def _stored_results(config, results_dir):
    try:
        return E.load_or_run(config, results_dir, run=False)
    except E.ResultsNotFound:
        return None
