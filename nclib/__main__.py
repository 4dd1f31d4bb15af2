"""Command line of nclib: ``python -m nclib run ...`` (console script ``nclib``).

The batch runner of the experiment chapters (paper Section 4; :mod:`nclib.runner`)::

    python -m nclib run --list                       # chapters, configurations, estimated cost
    python -m nclib run exp_optimizers --profile cpu --dry-run
    python -m nclib run exp_optimizers --profile full -p DATASETS "['mnist']" --resume
    python -m nclib run --profile smoke              # all chapters, as CI does
    python -m nclib results --profile cpu            # a Markdown table of the stored results

Chapters are executed with papermill from their jupytext ``.md`` (cwd = ``book/``); executed
notebooks go to ``_build/executed/``, results to ``book/results/``, logs to ``_build/logs/``.
Configurations are trained first in worker processes, one per GPU slot (``--gpus``,
``--per-gpu``), so that the notebooks only load.
"""
from __future__ import annotations

import argparse
import json
import sys


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="nclib", description="nclib command line (the book's batch runner)")
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="execute experiment chapters with papermill",
                       description="Execute experiment chapters (default: all) with a profile and parameters.")
    r.add_argument("chapters", nargs="*", help="chapter names (file stems in book/); default: all")
    r.add_argument("--profile", default="auto", help="auto, smoke, cpu or full (default auto)")
    r.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"), default=[],
                   help="override a parameter of the chapters' parameters cell (VALUE: a Python literal)")
    r.add_argument("--list", action="store_true", help="list chapters, configurations and estimated costs")
    r.add_argument("--dry-run", action="store_true", help="show what would run and its estimated cost")
    r.add_argument("--resume", action="store_true",
                   help="skip runs whose results exist; continue interrupted ones from their checkpoint")
    r.add_argument("--book-dir", default="book")
    r.add_argument("--results-dir", default="results", help="relative to the book folder (default results)")
    r.add_argument("--output-dir", default="_build/executed")
    r.add_argument("--log-dir", default="_build/logs")
    r.add_argument("--gpus", default="auto", help="'auto', 'none' or a list like 0,1,3")
    r.add_argument("--per-gpu", type=int, default=1, help="concurrent runs per GPU (small runs fit several)")
    r.add_argument("--threads", type=int, default=None, help="torch threads of each worker (default 1 on the CPU)")
    r.add_argument("--workers", type=int, default=1, help="parallel CPU workers when there is no GPU (default 1)")
    r.add_argument("--no-execute", action="store_true", help="only train the configurations; no notebooks")
    t = sub.add_parser("results", help="print a Markdown table of the stored results (for the README)")
    t.add_argument("--results-dir", default="book/results")
    t.add_argument("--profile", default=None, help="only this profile")
    w = sub.add_parser("_worker", help=argparse.SUPPRESS)
    w.add_argument("--config", required=True)
    w.add_argument("--results-dir", required=True)
    w.add_argument("--fresh", action="store_true")
    return ap


def main(argv=None) -> int:
    """Entry point of ``python -m nclib`` and of the ``nclib`` console script."""
    args = _parser().parse_args(argv)
    from . import runner
    try:
        if args.command == "_worker":
            import os
            print(f"worker pid {os.getpid()} CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}", flush=True)
            res = runner.worker(args.config, args.results_dir, fresh=args.fresh)
            print(json.dumps(res.get("final", {})))
            return 0
        if args.command == "results":
            print(runner.results_table(args.results_dir, args.profile))
            return 0
        if args.list:
            print(runner.list_chapters(args.book_dir, args.results_dir))
            return 0
        params = {}
        for name, value in args.parameter:
            params[name] = runner.parse_value(value)
        runner.run_chapters(args.chapters, args.profile, params, book_dir=args.book_dir,
                            results_dir=args.results_dir, output_dir=args.output_dir, log_dir=args.log_dir,
                            resume=args.resume, dry_run=args.dry_run, gpus=args.gpus, per_gpu=args.per_gpu,
                            threads=args.threads, workers=args.workers, execute=not args.no_execute)
    except ValueError as exc:
        print(f"nclib: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"nclib: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
