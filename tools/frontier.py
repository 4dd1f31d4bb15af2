"""The compute frontier of the ``cpu`` profile: a stored run retrained with its schedule stretched.

The ``cpu`` recipe (``nclib.configs.CPU_EPOCHS`` epochs, learning rate x 0.1 at ``CPU_MILESTONES``)
fills the profile's budget (about 4 core-hours for all runs, about 20 minutes a run).  For the runs that
miss a terminal-phase target (``nclib.pages.terminal_phase_checks``), this retrains the same
configuration with every epoch count of the schedule multiplied by ``--factor`` (epochs and both
milestones; same data, seed, width, batch, learning rates, weight decay) and records what the longer
run reaches, so that the issue note and the pages can say whether a target is a matter of compute.
Training-set targets only decide; the test metrics are recorded as every run records them.

Usage::

    python tools/frontier.py [--factor 1.5] NAME [NAME ...]
    python tools/frontier.py --from-results DIR --factor 2.5   # records of runs already trained into DIR
    python tools/frontier.py --milestones 175,275 NAME [NAME ...]   # the same epochs, other steps

``--milestones E1,E2`` keeps the epochs and moves the learning-rate steps instead (e.g. ``175,275``:
the whole last quarter at the final learning rate); its records say factor 1 and the milestones, and
go to a file of their own, ``book/results/frontier_schedules.jsonl``, apart from the stretched runs.

``--from-results`` records the ``cpu`` results files in DIR whose configuration is the stretched one
(e.g. a whole profile regenerated with a longer schedule into a scratch folder), instead of training.

Each run appends one JSON line to ``book/results/frontier.jsonl``: the name, factor, epochs,
milestones, wall time, threads, the CPU model, the logged history (epoch, train accuracy, NC1-NC4 train, test
accuracy, test NC1) and the target checks.
"""
import argparse
import json
import pathlib
import time

from nclib import configs, experiments, pages, threads

OUT = pathlib.Path(__file__).resolve().parents[1] / "book" / "results" / "frontier.jsonl"
OUT_MOVED = OUT.with_name("frontier_schedules.jsonl")  # the records of --milestones
KEEP = ("epoch", "train_acc", "nc1", "nc2", "nc3", "nc4", "test_acc", "test_nc1")


def stretched(name: str, factor: float) -> configs.ExperimentConfig:
    """The ``cpu`` configuration ``name`` with epochs and milestones multiplied by ``factor``."""
    cfg = configs.get_config(name, "cpu")
    if cfg.lr_milestones is None:
        raise ValueError(f"{name!r} has no learning-rate milestones (L-BFGS?): nothing to stretch")
    return cfg.replace(epochs=round(cfg.epochs * factor),
                       lr_milestones=tuple(round(m * factor) for m in cfg.lr_milestones))


def moved(name: str, milestones) -> configs.ExperimentConfig:
    """The ``cpu`` configuration ``name`` with its epochs kept and its learning-rate steps at ``milestones``."""
    cfg = configs.get_config(name, "cpu")
    if cfg.lr_milestones is None:
        raise ValueError(f"{name!r} has no learning-rate milestones (L-BFGS?): nothing to move")
    ms = tuple(int(m) for m in milestones)
    if list(ms) != sorted(set(ms)) or not 0 < ms[0] or not ms[-1] < cfg.epochs:
        raise ValueError(f"milestones must increase strictly within 1..{cfg.epochs - 1}, got {ms}")
    return cfg.replace(lr_milestones=ms)


def record(name: str, factor: float, cfg: configs.ExperimentConfig, res: dict, wall_s: float, n_threads) -> dict:
    """One line of ``frontier.jsonl``: the stretched run ``res`` of ``name``."""
    h = res["history"]
    return dict(name=name, factor=factor, epochs=cfg.epochs, lr_milestones=list(cfg.lr_milestones),
                wall_s=wall_s, threads=n_threads, commit=res["provenance"].get("git_commit"),
                cpu=res["provenance"].get("cpu_model"),
                history={k: h[k] for k in KEEP if k in h}, checks=pages.terminal_phase_checks(res))


def from_results(folder: pathlib.Path, factor: float) -> list:
    """Records of the results files in ``folder`` that trained a ``cpu`` configuration stretched by
    ``factor`` (other files are passed over); the wall time and threads are those the files record."""
    out = []
    for path in sorted(folder.glob("*__cpu__*.json")):
        res = experiments.load_results_file(path)
        name = res["config"]["name"]
        if res["provenance"].get("copied_from"):
            continue  # a copy of another run's result, recorded under that run's name
        try:
            cfg = stretched(name, factor)
        except ValueError:
            continue  # no milestones (L-BFGS): nothing was stretched
        if configs.config_hash(cfg) == res.get("config_hash"):
            out.append(record(name, factor, cfg, res, res["provenance"]["wall_time_s"],
                              res["provenance"].get("cpu_threads")))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*")
    ap.add_argument("--from-results", type=pathlib.Path, default=None,
                    help="record the stretched runs already trained into this folder instead of training")
    ap.add_argument("--factor", type=float, default=1.5)
    ap.add_argument("--milestones", default=None, metavar="E1,E2",
                    help="keep the epochs, step the learning rate at these epochs instead (factor recorded as 1)")
    ap.add_argument("--out", type=pathlib.Path, default=None,
                    help=f"default: {OUT.name}, or {OUT_MOVED.name} with --milestones (in book/results)")
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = OUT_MOVED if args.milestones is not None else OUT
    if not args.factor > 0:
        ap.error(f"--factor must be > 0, got {args.factor}")
    if args.from_results is not None:
        if args.names:
            ap.error("give names or --from-results, not both")
        recs = from_results(args.from_results, args.factor)
        if not recs:
            ap.error(f"no cpu results stretched {args.factor}x in {args.from_results}")
        with open(args.out, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in recs)
        for r in recs:
            missed = [c["target"] for c in r["checks"] if not c["met"]]
            print(r["name"], "all met" if not missed else f"missed: {missed}")
        return
    if not args.names:
        ap.error("give at least one NAME (or --from-results DIR)")
    try:  # every name checked before the first run trains
        if args.milestones is not None:
            args.factor = 1.0
            try:
                ms = [int(m) for m in args.milestones.split(",")]
            except ValueError:
                ap.error(f"--milestones takes epochs separated by commas, got {args.milestones!r}")
            cfgs = {name: moved(name, ms) for name in args.names}
        else:
            cfgs = {name: stretched(name, args.factor) for name in args.names}
    except ValueError as exc:
        ap.error(str(exc))
    n_threads = threads.configure(1)
    for name, cfg in cfgs.items():
        t0 = time.time()
        res = experiments.run_experiment(cfg, progress=True)  # a bar per run (stderr)
        rec = record(name, args.factor, cfg, res, time.time() - t0, n_threads)
        with open(args.out, "a") as f:
            f.write(json.dumps(rec) + "\n")
        missed = [c["target"] for c in rec["checks"] if not c["met"]]
        print(name, f"{rec['wall_s'] / 60:.1f} min", "all met" if not missed else f"missed: {missed}", flush=True)


if __name__ == "__main__":
    main()
