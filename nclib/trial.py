"""A trial of every configuration of a profile before anyone rents a GPU (paper, Section 4).

:func:`run_trial` runs each configuration of a profile (default ``"full"``: the paper's runs of
Figures 3-7, :mod:`nclib.configs`) through the runner's own path,
:func:`nclib.experiments.load_or_run` -> :func:`nclib.experiments.run_experiment`: data loading
and preprocessing, random labels, the model with its stem, width, feature dimension and
classifier, the optimizer, schedule, weight decay and feature decay, augmentation, the
evaluation (NC1-NC4 of training and test set), the checkpoint and the results file, which is
then loaded back and checked.  Only three things change:

* the data are cut to **two batches** of the configuration's own batch size (L-BFGS: **one**
  batch): a balanced subset of ``floor(2 B / K)`` (L-BFGS: ``floor(B / K)``) training images per
  class, at least one per class, and 10 test images per class;
* **one epoch**;
* where the dataset is not on this machine, a **stand-in** (the original CIFAR-10 -> its JPEG
  copy ``"cifar10-jpeg"``, else scikit-learn's ``"digits"``; MNIST -> ``"digits"``), named on the
  configuration's line.  Nothing is downloaded.

Results and checkpoints go to a scratch folder (a temporary one, removed afterwards, unless
``scratch_dir`` is given), never to ``book/results``.  The run is on whatever device is present
(``device=None``: CUDA, else MPS, else the CPU).  It prints one line per configuration and
returns 0, or 1 when any configuration failed (they are named at the end).  The command line
``python -m nclib run --profile full --trial`` calls it.

Without CUDA the default ``max_per_class="auto"`` cuts the configurations that would take more
than :data:`CPU_SECONDS_PER_CONFIG` on one CPU core further (two batches of 2048 images through
L-BFGS's 25 function evaluations, or of 128 through a ResNet50 with the 3x3 stem, take minutes
each), below two batches; their lines say so, and the code path is the same.  An integer caps every
configuration (a test uses 2 to keep every code path alive in CI within a couple of minutes).
"""
from __future__ import annotations

import math
import os
import pathlib
import shutil
import tempfile
import time
import traceback

__all__ = ["STAND_INS", "TEST_PER_CLASS", "CPU_SECONDS_PER_CONFIG", "dataset_on_machine", "stand_in", "trial_config", "run_trial"]

#: Stand-ins, in order of preference, for a dataset that is not on the machine.
STAND_INS = {"cifar10": ("cifar10-jpeg", "digits"), "mnist": ("digits",), "fashionmnist": ("digits",),
             "cifar10-jpeg": ("digits",)}
#: Test images per class in a trial (test-set NC needs every class).
TEST_PER_CLASS = 10
#: The smallest class of scikit-learn's digits after nclib.data's fixed 80/20 split (train, test).
_DIGITS_MIN = (139, 35)
_LABELS = {"cifar10-jpeg": "CIFAR-10 JPEG q75 copy", "digits": "scikit-learn digits", "mnist": "MNIST",
           "cifar10": "CIFAR-10"}


def dataset_on_machine(name: str, root=None) -> bool:
    """Whether the files of dataset ``name`` are under :func:`nclib.data.data_root` (no download)."""
    from . import data as D
    r = D.data_root(root)
    if name in ("mnist", "fashionmnist"):
        folder = {"mnist": "MNIST", "fashionmnist": "FashionMNIST"}[name]
        return all((r / folder / "raw" / f).is_file() for f in
                   ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                    "t10k-labels-idx1-ubyte"))
    if name == "cifar10":
        return all((r / "cifar-10-batches-py" / f).is_file()
                   for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"])
    if name == "cifar10-jpeg":
        return (r / "CIFAR10-JPEG" / "cifar10-jpeg-q75.tar.gz").is_file()
    if name in ("digits", "gaussian"):
        return True
    return False


def stand_in(name: str, root=None) -> str | None:
    """The dataset to use for ``name``: itself when on the machine, else the first stand-in present."""
    if dataset_on_machine(name, root):
        return name
    for s in STAND_INS.get(name, ()):
        if dataset_on_machine(s, root):
            return s
    return None


#: On a machine without CUDA, ``max_per_class="auto"`` cuts a configuration further when the two-batch
#: cut would take longer than this (estimated by :func:`nclib.costs.model_flops` and
#: :data:`nclib.costs.THROUGHPUT`), so that the whole trial takes minutes on one CPU core.
CPU_SECONDS_PER_CONFIG = 20.0


def _cpu_cap(config, per_class: int) -> int:
    """The largest count per class <= ``per_class`` whose estimated one-thread CPU time of one
    epoch (training pass, L-BFGS: 25 function evaluations; metrics pass over train and test set)
    stays within :data:`CPU_SECONDS_PER_CONFIG`; at least 1."""
    from . import costs
    thr = costs.THROUGHPUT["cpu"]
    f = costs.model_flops(config)
    evals = 25 if config.optimizer == "lbfgs" else 1

    def cost(p):
        return 10 * p * (3 * f * evals / thr["train"] + f / thr["eval"]) + 10 * min(TEST_PER_CLASS, p) * f / thr["eval"]

    p = per_class
    while p > 1 and cost(p) > CPU_SECONDS_PER_CONFIG:
        p = max(1, int(p * 0.8))
    return p


def trial_config(config, dataset: str | None = None, max_per_class=None):
    """The trial version of ``config``: its data cut to two batches (L-BFGS: one), one epoch, and
    ``dataset`` (a stand-in) when given.  Returns (config, description of the cut)."""
    from . import data as D
    from .configs import check_config
    config = check_config(config)
    ds = dataset or config.dataset
    K = D.num_classes(ds)
    batches = 1 if config.optimizer == "lbfgs" else 2
    per_class = max(1, (batches * config.batch_size) // K)
    if config.n_per_class is not None:
        per_class = min(per_class, config.n_per_class)
    n_test = TEST_PER_CLASS if config.n_test_per_class is None else min(TEST_PER_CLASS, config.n_test_per_class)
    capped = False
    if ds == "digits":
        capped = per_class > _DIGITS_MIN[0]
        per_class, n_test = min(per_class, _DIGITS_MIN[0]), min(n_test, _DIGITS_MIN[1])
    auto = max_per_class == "auto"
    if auto:
        max_per_class = _cpu_cap(config.replace(dataset=ds), per_class)
        if max_per_class >= per_class:
            max_per_class = None
    if max_per_class is not None:
        n_test = min(n_test, int(max_per_class))
        if per_class > max_per_class:
            per_class, capped = int(max_per_class), True
    n = per_class * K
    n_batches = math.ceil(n / config.batch_size)
    log_epochs = config.log_epochs if not isinstance(config.log_epochs, (list, tuple)) else "last"
    cut = config.replace(dataset=ds, n_per_class=per_class, n_test_per_class=n_test, class_counts=None, epochs=1,
                         log_epochs=log_epochs)
    what = f"{n} train images = {n_batches} batch{'es' if n_batches > 1 else ''} of <= {config.batch_size}"
    if capped:
        what += (f" (capped at {per_class}/class{' to fit a CPU' if auto else ''}, below {batches} full "
                 f"batch{'es' if batches > 1 else ''})")
    return cut, what + f", {n_test * K} test, 1 epoch"


def _device_label(dev) -> str:
    if dev.type == "cuda":
        import torch
        return f"{dev} ({torch.cuda.get_device_name(dev)})"
    return str(dev)


def _scratch(scratch_dir):
    if scratch_dir is None:
        return pathlib.Path(tempfile.mkdtemp(prefix="nclib-trial-")), True
    p = pathlib.Path(scratch_dir).resolve()
    book_results = (pathlib.Path(__file__).resolve().parents[1] / "book" / "results").resolve()
    if p == book_results or book_results in p.parents:
        raise ValueError(f"scratch_dir {scratch_dir!r} is inside book/results; a trial never writes there")
    p.mkdir(parents=True, exist_ok=True)
    return p, False


def _check_results(res: dict) -> str:
    """A short summary of a trial's results; ValueError when something the chapters need is missing."""
    final = res.get("final", {})
    for k in ("train_acc", "nc1", "nc2", "nc3", "nc4", "test_acc"):
        if k not in final:
            raise ValueError(f"the results lack final[{k!r}]")
    if not math.isfinite(final["train_acc"]) or not res.get("geometry"):
        raise ValueError("the results hold no geometry or a non-finite accuracy")
    nc1 = final["nc1"]
    return f"train acc {final['train_acc']:.2f}, NC1 {nc1:.2e}" if math.isfinite(nc1) else \
        f"train acc {final['train_acc']:.2f}, NC1 {nc1}"


def run_trial(profile: str = "full", names=None, scratch_dir=None, device=None, echo=print, *,
              max_per_class="auto", keep: bool = False) -> int:
    """Run every configuration of ``profile`` (or only ``names``) once, cut to two batches (L-BFGS:
    one) and one epoch, through :func:`nclib.experiments.load_or_run` into a scratch folder (see the
    module docstring).  ``echo`` gets one line per configuration and a summary.  Returns 0 when all
    ran, 1 when any failed (named in the summary).  The scratch folder is removed afterwards unless
    ``scratch_dir`` was given or ``keep`` is true.

    ``max_per_class``: ``"auto"`` (default) keeps the two-batch cut on CUDA and, elsewhere, cuts a
    configuration further when its estimated CPU time exceeds :data:`CPU_SECONDS_PER_CONFIG` (the
    L-BFGS runs, the ResNet50s, the 3x3-stem ResNet18s), saying so on its line; an integer caps
    every configuration (training and test images per class); None never caps."""
    from . import experiments as E
    from . import train as T
    from .configs import get_config, list_configs

    if names is None:
        names = list_configs(profile=profile)
    else:
        names = list(names)
        for n in names:
            get_config(n, profile)  # ValueError for an unknown name or a name without this profile
    if not names:
        raise ValueError(f"no configurations to try in profile {profile!r}")
    dev = T.resolve_device(device)
    scratch, temporary = _scratch(scratch_dir)
    results_dir, ckpt_dir = scratch / "results", scratch / "checkpoints"
    width = max(len(n) for n in names)
    echo(f"trial of {len(names)} '{profile}' configurations on {_device_label(dev)}; scratch folder {scratch}")
    failed, t_all = [], time.perf_counter()
    try:
        for name in names:
            t0 = time.perf_counter()
            config = get_config(name, profile)
            ds = stand_in(config.dataset)
            note = ""
            if ds is None:
                failed.append(name)
                echo(f"FAIL {name:<{width}}  {config.dataset} is not on this machine and has no stand-in here "
                     f"(data root {os.environ.get('NCLIB_DATA') or 'data'})")
                continue
            if ds != config.dataset:
                note = (f"{_LABELS.get(config.dataset, config.dataset)} not on this machine: stand-in "
                        f"{_LABELS.get(ds, ds)}; ")
            try:
                cap = max_per_class if (max_per_class != "auto" or dev.type != "cuda") else None
                cut, what = trial_config(config, ds, cap)
                res = E.load_or_run(cut, results_dir, device=dev, checkpoint_dir=ckpt_dir, progress=False)
                summary = _check_results(res)
            except Exception as exc:  # noqa: BLE001 -- every failure is reported, none stops the trial
                failed.append(name)
                last = traceback.extract_tb(exc.__traceback__)[-1]
                echo(f"FAIL {name:<{width}}  {note}{type(exc).__name__}: {exc} "
                     f"(at {pathlib.Path(last.filename).name}:{last.lineno})")
                continue
            echo(f"ok   {name:<{width}}  {note}{what}; {summary} ({time.perf_counter() - t0:.1f} s)")
    finally:
        if temporary and not keep and not failed:
            shutil.rmtree(scratch, ignore_errors=True)
    total = time.perf_counter() - t_all
    if failed:
        echo(f"trial: {len(failed)} of {len(names)} configurations FAILED ({total:.0f} s): {', '.join(failed)}"
             + (f"; files kept in {scratch}" if temporary else ""))
        return 1
    echo(f"trial: all {len(names)} configurations ran ({total:.0f} s)")
    return 0
