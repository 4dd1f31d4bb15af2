"""Rough cost estimates of the runs of :mod:`nclib.configs` (for ``python -m nclib run --list``).

Forward FLOPs per image (:func:`model_flops`: a table counted once by ``torch.utils.flop_counter``
for every network shape of the named runs, so that ``--list`` and ``--dry-run`` never import
torch; other shapes are counted on first use), an assumed throughput per device class
(:data:`THROUGHPUT`), then calibrated against what really happened (:func:`calibration`):
the wall times of the stored runs (per optimizer, on the CPU) and, when present,
``benchmarks/gpu_check.json`` (seconds per epoch measured on a GPU).  A run that is stored
is estimated by its own wall time.
"""
from __future__ import annotations

import functools
import json
import math
import os
import pathlib
import statistics

from . import configs as C

__all__ = ["THROUGHPUT", "FLOPS_TABLE", "model_flops", "dataset_sizes", "raw_estimate_seconds",
           "calibration", "estimate_seconds", "fmt_seconds"]

_FLOPS_CACHE: dict = {}

#: Sustained throughput assumed by :func:`raw_estimate_seconds` (FLOP/s of a training step,
#: counted as 3 x the forward FLOPs; eval counted as 1 x) and a fixed cost per optimizer step.
#: CPU: measured on one thread of a shared 2-core machine under load (ResNet18 32 x 32: ~12 ms
#: per image per training step, ~2 ms per image in eval).  GPU: not measured here; derived from
#: ~24k images/s for a CIFAR ResNet18 on an A100 (ANCHORS part 5) plus ~4 ms of kernel launches
#: per step.  :func:`estimate_seconds` corrects both by :func:`calibration`.
THROUGHPUT = {"cpu": dict(train=1.8e10, eval=2.5e10, step=2e-3), "gpu": dict(train=4e13, eval=8e13, step=4e-3)}

#: Forward FLOPs per 32 x 32 image, keyed by (model, width, depth, feature_dim, stem), for K = 10,
#: counted by ``torch.utils.flop_counter`` (tests/test_runner.py recounts every entry).
FLOPS_TABLE = {
    ('mlp', 1024, 4, None, 'imagenet'): 12603392.0,
    ('mlp', 128, 4, None, 'imagenet'): 887296.0,
    ('mlp', 16, 4, None, 'imagenet'): 100160.0,
    ('mlp', 2048, 4, None, 'imagenet'): 37789696.0,
    ('mlp', 32, 4, None, 'imagenet'): 203392.0,
    ('mlp', 4096, 4, None, 'imagenet'): 125911040.0,
    ('mlp', 512, 4, None, 'imagenet'): 4728832.0,
    ('mlp', 64, 4, None, 'imagenet'): 419072.0,
    ('mlp', 8, 4, None, 'imagenet'): 49696.0,
    ('resnet18', 0.03125, None, None, 'cifar'): 1192256.0,
    ('resnet18', 0.0625, None, 10, 'imagenet'): 559560.0,
    ('resnet18', 0.0625, None, None, 'cifar'): 4547200.0,
    ('resnet18', 0.0625, None, None, 'imagenet'): 572032.0,
    ('resnet18', 0.09375, None, None, 'cifar'): 10064832.0,
    ('resnet18', 0.125, None, None, 'cifar'): 17745152.0,
    ('resnet18', 0.25, None, 10, 'imagenet'): 5260488.0,
    ('resnet18', 0.25, None, None, 'cifar'): 70093312.0,
    ('resnet18', 0.25, None, None, 'imagenet'): 5532160.0,
    ('resnet18', 0.5, None, None, 'cifar'): 278598656.0,
    ('resnet18', 1.0, None, None, 'cifar'): 1110845440.0,
    ('resnet18', None, None, 10, 'cifar'): 1036976328.0,
    ('resnet18', None, None, 10, 'imagenet'): 69406920.0,
    ('resnet18', None, None, None, 'cifar'): 1110845440.0,
    ('resnet18', None, None, None, 'imagenet'): 74033152.0,
    ('resnet50', None, None, 10, 'cifar'): 2562883784.0,
    ('resnet50', None, None, None, 'cifar'): 2595659776.0,
}

_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _flops_key(config) -> tuple:
    return (config.model, config.width, config.depth, config.feature_dim, config.stem)


def model_flops(config, count: bool = True) -> float:
    """Forward FLOPs per 32 x 32 image of the configuration's network: from :data:`FLOPS_TABLE`,
    else counted once by ``torch.utils.flop_counter`` on a single image (cached; with
    ``count=False`` a shape not in the table raises KeyError instead)."""
    key = _flops_key(config)
    if key in FLOPS_TABLE:
        return FLOPS_TABLE[key]
    if key not in _FLOPS_CACHE:
        if not count:
            raise KeyError(key)
        _FLOPS_CACHE[key] = count_flops(config)
    return _FLOPS_CACHE[key]


def count_flops(config) -> float:
    """Count the forward FLOPs of one image with ``torch.utils.flop_counter`` (imports torch)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from . import models as M
    model = M.build(config.model, 10, feature_dim=config.feature_dim, width=config.width,
                    depth=config.depth, stem=config.stem).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(torch.zeros(1, 3, 32, 32))
    return float(fc.get_total_flops())


def dataset_sizes(config) -> tuple:
    """(training images, test images) of a configuration."""
    full = {"mnist": (60000, 10000), "cifar10": (50000, 10000), "cifar10-jpeg": (50000, 10000),
            "fashionmnist": (60000, 10000), "cifar100": (50000, 10000), "digits": (1430, 367),
            "gaussian": (1000, 1000)}[config.dataset]
    K = 100 if config.dataset == "cifar100" else 10
    n = full[0] if config.n_per_class is None else config.n_per_class * K
    if config.class_counts is not None:
        n = sum(config.class_counts)
    nt = full[1] if config.n_test_per_class is None else config.n_test_per_class * K
    return n, nt


def optimizer_steps(config, epochs: int | None = None) -> int:
    """Optimizer steps of a configuration in its first ``epochs`` epochs (default: all):
    ``ceil(n / batch_size)`` per epoch (Section 4.1's step counts; one ``LBFGS.step`` per batch)."""
    epochs = config.epochs if epochs is None else epochs
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an integer >= 0, got {epochs!r}")
    return batches_per_epoch(dataset_sizes(config)[0], config.batch_size) * epochs


def batches_per_epoch(n_train: int, batch_size: int) -> int:
    """``ceil(n_train / batch_size)``: the last batch of an epoch is partial, not dropped."""
    return math.ceil(n_train / batch_size)


def _device_class(config, device: str) -> str:
    dev = ("gpu" if config.profile == "full" else "cpu") if device == "auto" else device
    if dev not in THROUGHPUT:
        raise ValueError(f"unknown device class {device!r}; allowed: 'auto', 'cpu', 'gpu'")
    return dev


def raw_estimate_seconds(config, device: str = "auto", _count: bool = True) -> float:
    """The uncalibrated formula: training passes (3 x forward FLOPs per image and epoch;
    L-BFGS: 25 function evaluations per step, torch's max_iter=20 plus line search) plus one
    eval pass over train and test sets per logged epoch, at :data:`THROUGHPUT`."""
    t = THROUGHPUT[_device_class(config, device)]
    f = model_flops(config, _count)
    n, nt = dataset_sizes(config)
    evals = 25 if config.optimizer == "lbfgs" else 1
    steps = optimizer_steps(config)
    train = 3 * f * n * config.epochs * evals / t["train"] + steps * evals * t["step"]
    le = config.log_epochs
    n_logged = config.epochs if le in ("all", None) else len(le) if isinstance(le, (list, tuple)) else \
        (1 if le == "last" else 30 if le == "log" else config.epochs // int(le) + 1)
    return train + f * (n + nt) * n_logged / t["eval"]


def _stored_runs(results_dir) -> list:
    """(config, wall seconds, device) of the results files in ``results_dir`` (unreadable
    files are skipped here; ``python -m nclib results`` names them)."""
    out = []
    for p in sorted(pathlib.Path(results_dir).glob("*__*__*.json")):
        try:
            with open(p) as f:
                res = json.load(f)
            pv = res["provenance"]
            if pv.get("copied_from"):
                continue
            cfg = _old_config(res["config"])
            wall = float(pv["wall_time_s"])
            dev = "gpu" if str(pv.get("device", "cpu")).startswith("cuda") else "cpu"
            if wall > 0 and math.isfinite(wall):
                out.append((cfg, wall, dev))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def _old_config(d: dict):
    """A configuration from a stored dict, ignoring fields that older versions had (e.g. ``bf16``):
    the run's cost depends on the fields that remain."""
    import dataclasses
    names = {f.name for f in dataclasses.fields(C.ExperimentConfig)}
    return C.check_config({k: v for k, v in d.items() if k in names})


def _key(config) -> str:
    d = {k: v for k, v in config.to_dict().items() if k not in ("name", "figure", "label")}
    return json.dumps(d, sort_keys=True)


@functools.lru_cache(maxsize=8)
def calibration(results_dir=None, gpu_check=None) -> dict:
    """Correction factors of :func:`raw_estimate_seconds`, learnt from what ran:
    ``{"cpu": {optimizer: factor, "*": factor}, "gpu": {...}, "exact": {training: seconds},
    "gpu_exact": {name: seconds}, "sources": [...]}``.  CPU factors are the median of
    (stored wall time / raw estimate) over the stored CPU runs of each optimizer (``"*"``: all);
    GPU factors the same over the configurations of ``benchmarks/gpu_check.json`` (its
    ``projected_hours``) and stored GPU runs.  Defaults: the repository's ``book/results`` and
    ``benchmarks/gpu_check.json``; ``$NCLIB_NO_CALIBRATION=1`` turns calibration off."""
    out = {"cpu": {}, "gpu": {}, "exact": {}, "gpu_exact": {}, "sources": []}
    if os.environ.get("NCLIB_NO_CALIBRATION"):
        return out
    results_dir = pathlib.Path(results_dir) if results_dir else _ROOT / "book" / "results"
    gpu_check = pathlib.Path(gpu_check) if gpu_check else _ROOT / "benchmarks" / "gpu_check.json"
    ratios = {"cpu": {}, "gpu": {}}
    runs = _stored_runs(results_dir)
    for cfg, wall, dev in runs:
        out["exact"][(_key(cfg), dev)] = wall
        try:
            ratios[dev].setdefault(cfg.optimizer, []).append(wall / raw_estimate_seconds(cfg, dev, False))
        except (KeyError, ValueError, ZeroDivisionError):
            continue
    if runs:
        out["sources"].append(f"{len(runs)} stored run(s) in {results_dir}")
    try:
        with open(gpu_check) as f:
            gc = json.load(f)
        for name, rec in (gc.get("configs") or {}).items():
            hours = rec.get("projected_hours")
            if not isinstance(hours, (int, float)) or not hours > 0:
                continue
            out["gpu_exact"][name] = 3600.0 * hours
            try:
                cfg = C.get_config(name, "full")
                ratios["gpu"].setdefault(cfg.optimizer, []).append(3600.0 * hours / raw_estimate_seconds(cfg, "gpu", False))
            except (ValueError, KeyError, ZeroDivisionError):
                continue
        out["sources"].append(f"{gpu_check} ({gc.get('device', '?')}, {gc.get('date', '?')})")
    except (OSError, ValueError, AttributeError):
        pass
    for dev, per in ratios.items():
        every = [r for rs in per.values() for r in rs]
        if every:
            out[dev]["*"] = statistics.median(every)
        for opt, rs in per.items():
            out[dev][opt] = statistics.median(rs)
    return out


def estimate_seconds(config, device: str = "auto", calibrated: bool = True) -> float:
    """Wall time (s) of one run on ``"cpu"`` (one thread) or ``"gpu"`` (``"auto"``: gpu for
    the "full" profile, else cpu): the stored run's own wall time when the same training is
    stored, the GPU benchmark's projection when it measured this configuration, else
    :func:`raw_estimate_seconds` times the calibration factor of the optimizer
    (:func:`calibration`).  ``calibrated=False``: the raw formula."""
    dev = _device_class(config, device)
    raw = raw_estimate_seconds(config, dev)
    if not calibrated:
        return raw
    cal = calibration()
    exact = cal["exact"].get((_key(config), dev))
    if exact is not None:
        return exact
    if dev == "gpu" and config.profile == "full" and config.name in cal["gpu_exact"]:
        return cal["gpu_exact"][config.name]
    f = cal[dev].get(config.optimizer, cal[dev].get("*", 1.0))
    return raw * f


def fmt_seconds(s: float) -> str:
    """Seconds as "12 s", "3.4 min" or "2.1 h"."""
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"
