"""Command line of nclib: ``python -m nclib run ...`` (console script ``nclib``).

The batch runner of the experiment chapters (paper Section 4; :mod:`nclib.runner`)::

    python -m nclib run --list                       # chapters, configurations, estimated cost
    python -m nclib run exp_optimizers --profile cpu --dry-run
    python -m nclib run exp_optimizers --profile full -p DATASETS "['mnist']"
    python -m nclib run --profile smoke              # all chapters, as CI does
    python -m nclib run exp_optimizers --profile full --executor slurm --partition gpu --time-min 720
    python -m nclib run --profile full --trial       # a short trial of every full run (nclib.trial)
    python -m nclib results --profile cpu            # a Markdown table of the stored results
    python -m nclib results --write-manifest         # record the committed results' content hashes

Arguments are checked before torch is imported, so that help, ``--list``, ``--dry-run`` and
usage errors answer in about a second.  Exit status: 0 done, 1 a run failed (named), 2 a
usage error, 130 interrupted (checkpoints kept; the message says how to resume).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

_EPILOG = """Runs whose results exist are skipped (--rerun replaces them; the old file is kept as .bak
until the new one is written). Interrupted runs resume from their checkpoint (--fresh starts over).
Executors: inline (this process; default with one CPU worker), local (submitit subprocesses, one per
slot: --workers CPU processes of --threads threads, or --per-gpu per GPU), slurm (a submitit job
array; see --partition, --time-min, --gpus-per-job, --account, --slurm-config)."""


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="nclib", description="nclib command line (the book's batch runner)")
    sub = ap.add_subparsers(dest="command", required=True, metavar="{run,results}")
    r = sub.add_parser("run", help="train what experiment chapters need, then execute them with papermill",
                       description="Train the runs of experiment chapters (default: all) with a profile and "
                                   "parameters, then execute the chapters.", epilog=_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("chapters", nargs="*", help="chapter names (file stems in book/); default: all")
    r.add_argument("--profile", default="auto", help="auto, smoke, cpu or full (default auto)")
    r.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"), default=[],
                   help="override a parameter of the chapters' parameters cell (VALUE: a Python literal)")
    r.add_argument("--list", action="store_true", help="list chapters, configurations and estimated costs")
    r.add_argument("--dry-run", action="store_true", help="show what would run (resume from epoch N...) and its cost")
    r.add_argument("--resume", action="store_true", help="(the default) continue interrupted runs from their checkpoint")
    r.add_argument("--fresh", action="store_true", help="start interrupted runs over (deletes their checkpoints)")
    r.add_argument("--rerun", action="store_true", help="train again runs whose results are stored, replacing them")
    r.add_argument("--trial", action="store_true", help="a short trial of every run of the profile (nclib.trial)")
    r.add_argument("--book-dir", default="book")
    r.add_argument("--results-dir", default="results", help="relative to the book folder (default results)")
    r.add_argument("--output-dir", default="_build/executed")
    r.add_argument("--log-dir", default="_build/logs")
    r.add_argument("--executor", choices=("inline", "local", "slurm"), default=None,
                   help="where runs train (default: inline with one CPU worker, else local)")
    r.add_argument("--gpus", default="auto", help="'auto', 'none' or a list like 0,1,3")
    r.add_argument("--per-gpu", type=int, default=1, help="concurrent runs per GPU (small runs fit several)")
    r.add_argument("--threads", type=int, default=None, help="torch threads of each run (default 1 on the CPU)")
    r.add_argument("--workers", type=int, default=1, help="parallel CPU runs (local executor; default 1)")
    r.add_argument("--partition", help="slurm: partition")
    r.add_argument("--time-min", type=int, help="slurm: time limit per job in minutes (default 1440)")
    r.add_argument("--gpus-per-job", type=int, help="slurm: GPUs per job (default 1)")
    r.add_argument("--account", help="slurm: account")
    r.add_argument("--slurm-config", help="slurm: a JSON file with any of partition, time_min, gpus_per_job, "
                                          "account, cpus_per_job, mem_gb, array_parallelism, additional")
    r.add_argument("--no-execute", action="store_true", help="only train the configurations; no notebooks")
    t = sub.add_parser("results", help="print a Markdown table of the stored results (checked)",
                       description="Print a Markdown table of the stored results; files that are corrupt, edited "
                                   "or of an older format are named and skipped (exit 1).")
    t.add_argument("--results-dir", default="book/results")
    t.add_argument("--profile", default=None, help="only this profile (smoke, cpu, full)")
    t.add_argument("--write-manifest", action="store_true",
                   help="rewrite <results-dir>/MANIFEST from the intact files (before committing results)")
    return ap


def _slurm_options(args) -> dict:
    opts = {}
    if args.slurm_config:
        try:
            opts = json.loads(pathlib.Path(args.slurm_config).read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"--slurm-config {args.slurm_config}: cannot read it as JSON ({exc})") from None
        if not isinstance(opts, dict):
            raise ValueError(f"--slurm-config {args.slurm_config}: expected a JSON object")
        allowed = {"partition", "time_min", "gpus_per_job", "account", "cpus_per_job", "mem_gb",
                   "array_parallelism", "additional"}
        unknown = sorted(set(opts) - allowed)
        if unknown:
            raise ValueError(f"--slurm-config {args.slurm_config}: unknown key(s) {', '.join(unknown)}; "
                             f"allowed: {', '.join(sorted(allowed))}")
    for k in ("partition", "time_min", "gpus_per_job", "account"):
        v = getattr(args, k)
        if v is not None:
            opts[k] = v
    return opts


def _check_run_args(args) -> None:
    """Usage errors of ``run`` that need no torch: numbers, GPUs, folders, executor options."""
    from .runner import parse_gpus
    for name in ("per_gpu", "workers", "threads", "time_min", "gpus_per_job"):
        v = getattr(args, name)
        if v is not None and v < (0 if name == "gpus_per_job" else 1):
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    parse_gpus(args.gpus)
    if args.fresh and args.resume:
        raise ValueError("--fresh and --resume contradict each other (resuming is the default)")
    if not pathlib.Path(args.book_dir).is_dir():
        raise ValueError(f"book folder {args.book_dir} does not exist (give --book-dir the folder holding the "
                         f"chapters' .md files)")
    slurm_only = [f"--{k.replace('_', '-')}" for k in ("partition", "time_min", "gpus_per_job", "account",
                                                       "slurm_config") if getattr(args, k) is not None]
    if slurm_only and args.executor != "slurm":
        raise ValueError(f"{', '.join(slurm_only)} only apply with --executor slurm")


def _trial(args) -> int:
    try:
        from . import trial
    except ImportError as exc:
        if getattr(exc, "name", "") in ("nclib.trial", "trial") or "nclib.trial" in str(exc):
            raise ValueError("--trial needs nclib/trial.py (nclib.trial.run_trial), which this checkout does "
                             "not have") from None
        raise
    names = args.chapters or None
    device = None
    for name, value in args.parameter:
        if name == "DEVICE":
            from .runner import parse_value
            device = parse_value(value)
        else:
            raise ValueError(f"--trial takes only -p DEVICE, got -p {name}")
    return int(trial.run_trial(profile=args.profile, names=names, device=device) or 0)


def main(argv=None) -> int:
    """Entry point of ``python -m nclib`` and of the ``nclib`` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    from . import runner
    try:
        if args.command == "results":
            if args.write_manifest:
                from .experiments import write_manifest
                good, bad = write_manifest(args.results_dir)
                print(f"wrote {pathlib.Path(args.results_dir) / 'MANIFEST'}: {len(good)} file(s)")
                for name, why in bad.items():
                    print(f"nclib: skipped {name}: {why}", file=sys.stderr)
                return 1 if bad else 0
            text, bad = runner.results_report(args.results_dir, args.profile)
            print(text)
            for name, why in bad.items():
                print(f"nclib: skipped {name}: {why}", file=sys.stderr)
            return 1 if bad else 0
        _check_run_args(args)
        if args.trial:
            return _trial(args)
        if args.list:
            print(runner.list_chapters(args.book_dir, args.results_dir))
            return 0
        params = {name: runner.parse_value(value) for name, value in args.parameter}
        runner.run_chapters(args.chapters, args.profile, params, book_dir=args.book_dir,
                            results_dir=args.results_dir, output_dir=args.output_dir, log_dir=args.log_dir,
                            fresh=args.fresh, rerun=args.rerun, dry_run=args.dry_run, gpus=args.gpus,
                            per_gpu=args.per_gpu, threads=args.threads, workers=args.workers,
                            executor=args.executor, slurm=_slurm_options(args), execute=not args.no_execute)
    except KeyboardInterrupt:
        print(f"nclib: {runner.interrupted_message(argv)}", file=sys.stderr)
        return 130
    except ValueError as exc:
        print(f"nclib: error: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError) as exc:
        print(f"nclib: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
