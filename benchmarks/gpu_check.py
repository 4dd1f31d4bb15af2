"""One-epoch timing of the ``full`` profile on a GPU, and the projected GPU-hours of all of it.

Run on the rented GPU, from the repository root, with ``NCLIB_DATA`` pointing at the datasets::

    python benchmarks/gpu_check.py                 # about 5-8 minutes on one recent GPU
    python benchmarks/gpu_check.py --budget-s 300  # stop measuring after 300 s, estimate the rest

For each *distinct* ``full`` configuration (configurations that differ only in what does not change
the cost, e.g. a fixed vs a learned classifier, share one measurement) it trains one epoch on the
whole training set through the runner's own path (:func:`nclib.experiments.load_or_run` into a
temporary folder, never ``book/results``), with its own batch size, optimizer, model, augmentation
and precision, and times the epoch (``seconds_per_epoch``, from the run's ``train_seconds``) and
the metrics pass over the training and test sets that follows it (``eval_seconds``).  A warm-up
run on a two-batch cut comes first, so that CUDA's start-up is not counted.  The projection of a
configuration is ``epochs x seconds_per_epoch + (logged epochs) x eval_seconds``; the total sums
every ``full`` configuration.  Data loading and preprocessing (once per run) are not counted.
Where the original CIFAR-10 is not on the machine its JPEG copy stands in (same size; said in the
output).  When the measurements pass ``--budget-s``, the remaining configurations are estimated
from the measured ones by their forward FLOPs per image (:func:`nclib.costs.model_flops`),
images per epoch and optimizer, and marked ``"estimated": true``.

Without CUDA it prints one line and exits with status 2.  Written without access to a GPU: it has
not been run on CUDA yet.

Output: a table on stdout and ``benchmarks/gpu_check.json`` (``--out``), read by
``python -m nclib run --list`` for its cost column when present::

    {"device": "NVIDIA H100 80GB HBM3",          # torch.cuda.get_device_name
     "date": "2026-12-01T07:00:00+00:00",        # UTC, ISO 8601
     "torch": "2.5.1",                           # torch.__version__
     "configs": {"fig3-mnist-sgd": {"seconds_per_epoch": 4.1,   # one training epoch, whole set
                                    "eval_seconds": 1.2,        # one metrics pass (train + test)
                                    "projected_hours": 0.29,    # the whole run of the full profile
                                    "measured_as": "fig3-mnist-sgd",  # the configuration timed
                                    "estimated": false},        # true: scaled, not timed
                 ...},                                          # every full configuration
     "total_hours": 7.9}                         # sum of projected_hours
"""
from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cost_key(c) -> tuple:
    """The fields that decide the time of an epoch (not the classifier being fixed, the decay, the seed)."""
    return (c.dataset, c.n_per_class, c.model, c.stem, c.width, c.depth, c.feature_dim, c.optimizer, c.batch_size,
            c.augment, c.precision, c.compile, c.regularization == "whb")


def logged_epochs(c) -> int:
    from nclib import train as T
    if c.log_epochs in ("all", None):
        return c.epochs
    if c.log_epochs == "log":
        return len(T.log_spaced_epochs(c.epochs))
    if c.log_epochs == "last":
        return 1
    if isinstance(c.log_epochs, int):
        return len(range(c.log_epochs, c.epochs + 1, c.log_epochs))
    return len(c.log_epochs)


def measure(config, dataset, scratch) -> tuple:
    """(seconds of one training epoch, seconds of the metrics pass) of ``config`` on ``dataset``."""
    from nclib import experiments as E
    one = config.replace(dataset=dataset, epochs=1, log_epochs="all")
    res = E.load_or_run(one, scratch / "results", checkpoint_dir=scratch / "checkpoints", progress=False)
    pe = res["history"]["per_epoch"]
    train_s = float(pe["train_seconds"][0])
    return train_s, max(0.0, float(pe["seconds"][0]) - train_s)


def estimate(config, measured: dict) -> tuple:
    """Scale a measured configuration (the same optimizer if any) by forward FLOPs x images."""
    from nclib import costs
    from nclib import configs as C

    def work(c):
        n, nt = costs.dataset_sizes(c)
        return costs.model_flops(c) * n, costs.model_flops(c) * (n + nt)

    same = [k for k in measured if C.get_config(k, "full").optimizer == config.optimizer] or list(measured)
    ref = same[0]
    rc = C.get_config(ref, "full")
    (wt, we), (rt, re_) = work(config), work(rc)
    t, e = measured[ref]
    return t * wt / rt, e * we / re_, ref


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "gpu_check.json"))
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="stop timing after this many seconds and estimate the rest (default 420)")
    ap.add_argument("--names", nargs="*", default=None, help="only these full configurations")
    args = ap.parse_args(argv)

    import torch
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); run it on a GPU machine")
        return 2

    from nclib import configs as C
    from nclib import trial

    names = args.names or C.list_configs(profile="full")
    cfgs = {n: C.get_config(n, "full") for n in names}
    groups: dict = {}
    for n, c in cfgs.items():
        groups.setdefault(cost_key(c), []).append(n)
    device = torch.cuda.get_device_name(0)
    print(f"gpu_check on {device}, torch {torch.__version__}: {len(names)} full configurations, "
          f"{len(groups)} distinct to time")
    t_start = time.perf_counter()
    measured, notes = {}, {}
    with tempfile.TemporaryDirectory(prefix="nclib-gpucheck-") as tmp:
        scratch = pathlib.Path(tmp)
        warm = trial.trial_config(cfgs[names[0]], trial.stand_in(cfgs[names[0]].dataset))[0]
        from nclib import experiments as E
        E.load_or_run(warm.replace(name="warmup"), scratch / "warm", checkpoint_dir=scratch / "wck", progress=False)
        for key, members in groups.items():
            rep = members[0]
            if time.perf_counter() - t_start > args.budget_s:
                break
            c = cfgs[rep]
            ds = trial.stand_in(c.dataset)
            if ds is None:
                print(f"  {rep}: {c.dataset} not on this machine, skipped (estimated below)")
                continue
            if ds != c.dataset:
                notes[rep] = f"measured on the stand-in {ds}"
            try:
                measured[rep] = measure(c, ds, scratch)
            except Exception as exc:  # noqa: BLE001 -- report, estimate, go on
                print(f"  {rep}: FAILED ({type(exc).__name__}: {exc}); estimated below")
                continue
            t, e = measured[rep]
            print(f"  {rep:<34} {t:8.2f} s/epoch  eval {e:6.2f} s  {notes.get(rep, '')}", flush=True)
    if not measured:
        print("gpu_check: nothing could be measured")
        return 1
    out = {}
    for key, members in groups.items():
        rep = members[0]
        if rep in measured:
            (t, e), ref, est = measured[rep], rep, False
        else:
            t, e, ref = estimate(cfgs[rep], measured)
            est = True
        for n in members:
            c = cfgs[n]
            hours = (c.epochs * t + logged_epochs(c) * e) / 3600
            out[n] = dict(seconds_per_epoch=round(t, 4), eval_seconds=round(e, 4), projected_hours=round(hours, 4),
                          measured_as=ref, estimated=est)
    total = sum(v["projected_hours"] for v in out.values())
    result = dict(device=device, date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  torch=torch.__version__, configs=out, total_hours=round(total, 3))
    print(f"\n{'configuration':<34} {'s/epoch':>8} {'eval s':>7} {'hours':>7}")
    for n, v in out.items():
        flag = " (estimated)" if v["estimated"] else ""
        print(f"{n:<34} {v['seconds_per_epoch']:8.2f} {v['eval_seconds']:7.2f} {v['projected_hours']:7.2f}{flag}")
    print(f"projected GPU-hours of the whole full profile: {total:.2f} "
          f"(measured in {time.perf_counter() - t_start:.0f} s)")
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
