"""Rough cost estimates of the runs of :mod:`nclib.configs` (for ``python -m nclib run --list``).

Forward FLOPs per image counted once per network shape by ``torch.utils.flop_counter``, and an
assumed throughput per device class (:data:`THROUGHPUT`).  Rough: see the numbers' sources.
"""
from __future__ import annotations

import math

from . import experiments as E

__all__ = ["THROUGHPUT", "model_flops", "dataset_sizes", "estimate_seconds", "fmt_seconds"]

_FLOPS_CACHE: dict = {}

#: Sustained throughput assumed by :func:`estimate_seconds` (FLOP/s of a training step, counted
#: as 3 x the forward FLOPs; eval counted as 1 x) and a fixed cost per optimizer step.  CPU:
#: measured on one thread of a shared 2-core machine under load (ResNet18 32 x 32: ~12 ms per
#: image per training step, ~2 ms per image in eval).  GPU: not measured here; derived from
#: ~24k images/s for a CIFAR ResNet18 on an A100 (ANCHORS part 5) plus ~4 ms of kernel launches
#: per step for these small 32 x 32 networks.  Rough: take them as +-2x.
THROUGHPUT = {"cpu": dict(train=1.8e10, eval=2.5e10, step=2e-3), "gpu": dict(train=4e13, eval=8e13, step=4e-3)}


def model_flops(config: E.ExperimentConfig) -> float:
    """Forward FLOPs per 32 x 32 image of the configuration's network (counted once by
    ``torch.utils.flop_counter`` on a single image; cached)."""
    key = (config.model, config.width, config.depth, config.feature_dim, config.stem)
    if key not in _FLOPS_CACHE:
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        from . import models as M
        model = M.build(config.model, 10, feature_dim=config.feature_dim, width=config.width,
                        depth=config.depth, stem=config.stem).eval()
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(torch.zeros(1, 3, 32, 32))
        _FLOPS_CACHE[key] = float(fc.get_total_flops())
    return _FLOPS_CACHE[key]


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


def estimate_seconds(config: E.ExperimentConfig, device: str = "auto") -> float:
    """Rough wall time (s) of one run on ``"cpu"`` (one thread) or ``"gpu"`` (``"auto"``: gpu
    for the "full" profile, else cpu): training passes (3 x forward FLOPs per image and
    epoch; L-BFGS: 25 function evaluations per step, torch's max_iter=20 plus line search)
    plus one eval pass over train and test sets per logged epoch, at :data:`THROUGHPUT`."""
    dev = ("gpu" if config.profile == "full" else "cpu") if device == "auto" else device
    if dev not in THROUGHPUT:
        raise ValueError(f"unknown device class {device!r}; allowed: 'auto', 'cpu', 'gpu'")
    t = THROUGHPUT[dev]
    f = model_flops(config)
    n, nt = dataset_sizes(config)
    evals = 25 if config.optimizer == "lbfgs" else 1
    steps = math.ceil(n / config.batch_size) * config.epochs
    train = 3 * f * n * config.epochs * evals / t["train"] + steps * evals * t["step"]
    le = config.log_epochs
    n_logged = config.epochs if le in ("all", None) else len(le) if isinstance(le, (list, tuple)) else \
        (1 if le == "last" else 30 if le == "log" else config.epochs // int(le) + 1)
    return train + f * (n + nt) * n_logged / t["eval"]


def fmt_seconds(s: float) -> str:
    """Seconds as "12 s", "3.4 min" or "2.1 h"."""
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"
