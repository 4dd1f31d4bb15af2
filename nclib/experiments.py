"""Running the named configurations of :mod:`nclib.configs` and storing their results (paper, Section 4).

:func:`run_experiment` trains one configuration (data from :mod:`nclib.data`, a model from
:mod:`nclib.models`, :func:`nclib.train.train`) and returns a results dict;
:func:`load_or_run` trains a configuration once and stores its results as JSON under
``book/results/`` (file name = name, profile and :func:`nclib.configs.config_hash`); later
calls load the file and never train.  See ``book/results/README.md``.

Results format 2 (one JSON object): ``format``, ``config``, ``config_hash``, ``history``
(:func:`nclib.train.train`'s lists over the logged epochs, training- and test-set NC
metrics), ``final`` (the last logged values), ``geometry`` (at the last logged epoch: the
classifier ``W`` (K x d) and ``b``, the class means of the training and test features, the
per-class accuracies), ``parameters``, ``data``, ``provenance`` and ``content_hash`` (the
SHA-256 of everything else, checked on load: it catches accidental edits and stale files,
not an adversary).

The configurations themselves live in :mod:`nclib.configs` (re-exported here).
"""
from __future__ import annotations

import base64
import datetime
import hashlib
import json
import math
import os
import pathlib
import platform
import subprocess
import time

import torch

from . import __version__
from .configs import (PROFILES, ExperimentConfig, check_config, config_hash, get_config, has_profile,
                      list_configs)

__all__ = [
    "PROFILES",
    "ExperimentConfig",
    "ResultsNotFound",
    "list_configs",
    "get_config",
    "has_profile",
    "config_hash",
    "content_hash",
    "results_path",
    "load_or_run",
    "run_experiment",
]

_RESULTS_FORMAT = 2


class ResultsNotFound(FileNotFoundError):
    """No stored results for a configuration and ``run=False``."""


# ----------------------------------------------------------------------------- the results store
def results_path(config: ExperimentConfig, results_dir="book/results") -> pathlib.Path:
    """``<results_dir>/<name>__<profile>__<hash>.json``."""
    config = check_config(config)
    return pathlib.Path(results_dir) / f"{config.name}__{config.profile}__{config_hash(config)}.json"


def _git_commit() -> str:
    here = pathlib.Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        if not commit:
            return "unknown"
        # changed or untracked files of the package itself make the commit not describe the code
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", "."], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _atomic_write_json(obj, path: pathlib.Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True, allow_nan=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _load_results(path: pathlib.Path, config: ExperimentConfig) -> dict:
    try:
        with open(path) as f:
            res = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"results file {path} is corrupt or unreadable ({exc}); delete it to rerun") from exc
    if not isinstance(res, dict) or res.get("format") != _RESULTS_FORMAT or "config" not in res \
            or "history" not in res:
        raise ValueError(f"results file {path} is corrupt (not a format-{_RESULTS_FORMAT} nclib results file); "
                         f"delete it to rerun")
    if res.get("content_hash") != content_hash(res):
        raise ValueError(f"results file {path} was changed after it was written (its content hash "
                         f"does not match); restore it from git or delete it to rerun")
    want = config.to_dict()
    if res["config"] != want or res.get("config_hash") != config_hash(config):
        keys = sorted(set(want) | set(res["config"]))
        diff = [f"{k}: file {res['config'].get(k)!r} vs config {want.get(k)!r}" for k in keys
                if res["config"].get(k) != want.get(k)]
        raise ValueError(f"results file {path} does not match its configuration "
                         f"({'; '.join(diff) or 'hash differs'}); delete it to rerun")
    return res


def load_or_run(config: ExperimentConfig, results_dir="book/results", *, run: bool = True, device=None,
                checkpoint_dir=None, progress: bool = True) -> dict:
    """The results of ``config``: loaded from ``results_dir`` if stored, else (``run=True``) trained.

    Loading never trains.  A stored file that is corrupt or was made with another
    configuration raises ValueError; with ``run=False`` a missing file raises
    :class:`ResultsNotFound`.  Training (:func:`run_experiment`) resumes from the checkpoint
    ``<checkpoint_dir>/<name>__<profile>__<hash>.pt`` when one exists (``checkpoint_dir``
    default: ``$NCLIB_CHECKPOINTS``, else ``<nclib.data.cache_root()>/checkpoints``); the
    checkpoint is removed once the results file has been written (atomically).

    Returns the results dict of the module docstring; ``provenance`` holds the nclib version,
    git commit, torch/torchvision/python versions, device and its name, TF32 flags,
    precision, torch.compile, torch's CPU thread count, wall time and UTC date.
    """
    config = check_config(config)
    path = results_path(config, results_dir)
    if path.exists():
        return _load_results(path, config)
    if not run:
        others = sorted(p.name for p in pathlib.Path(results_dir).glob(f"{config.name}__{config.profile}__*.json"))
        hint = f" (files of other configurations with this name: {', '.join(others)})" if others else ""
        raise ResultsNotFound(f"no stored results for {config.name!r} (profile {config.profile!r}) at {path}{hint}; "
                              f"call with run=True to train")
    if checkpoint_dir is None:
        from .data import cache_root
        checkpoint_dir = os.environ.get("NCLIB_CHECKPOINTS") or cache_root() / "checkpoints"
    ckpt = pathlib.Path(checkpoint_dir) / (path.stem + ".pt")
    res = run_experiment(config, device=device, checkpoint=ckpt, progress=progress)
    _atomic_write_json(res, path)
    if ckpt.exists():
        ckpt.unlink()
    return _load_results(path, config)


def run_experiment(config: ExperimentConfig, *, device=None, checkpoint=None, progress: bool = True) -> dict:
    """Train one configuration (no storing): data (:func:`nclib.data.load_dataset`), model
    (:func:`nclib.models.build`, seeded by ``config.seed``), :func:`nclib.train.train`.
    Returns the results dict described in the module docstring."""
    from . import models as M
    from . import train as T

    config = check_config(config)
    (X, y), (Xt, yt), data_info = _data(config)
    K = data_info["num_classes"]
    torch.manual_seed(config.seed)
    model = M.build(config.model, K, feature_dim=config.feature_dim, fixed_classifier=config.fixed_classifier,
                    width=config.width, depth=config.depth, stem=config.stem)
    fc = model.classifier
    params = dict(total=M.count_parameters(model), trainable=M.count_parameters(model, trainable_only=True),
                  classifier_weight=int(fc.weight.numel()), feature_dim=int(fc.in_features))
    log_epochs = list(config.log_epochs) if isinstance(config.log_epochs, (list, tuple)) else config.log_epochs
    t0 = time.perf_counter()
    history = T.train(
        model, (X, y), (Xt, yt), num_classes=K, optimizer=config.optimizer, epochs=config.epochs, lr=config.lr,
        batch_size=config.batch_size, lr_step=config.lr_step, lr_gamma=config.lr_gamma,
        lr_milestones=None if config.lr_milestones is None else list(config.lr_milestones),
        loss=config.loss, smoothing=config.smoothing, focal_gamma=config.focal_gamma,
        regularization=config.regularization, weight_decay=config.weight_decay, lambda_W=config.lambda_W,
        lambda_H=config.lambda_H, lambda_b=config.lambda_b, feature_decay_mode=config.feature_decay,
        augment=config.augment, augment_fill=data_info["augment_fill"] if config.augment else None,
        log_epochs=log_epochs, eval_batch_size=config.eval_batch_size, device=device, seed=config.seed,
        precision=config.precision, compile=config.compile, checkpoint=checkpoint, progress=progress,
        extra_settings=dict(config_hash=config_hash(config)),
    )
    elapsed = time.perf_counter() - t0
    return _results(config, history, params, data_info, elapsed)


def _data(config: ExperimentConfig) -> tuple:
    """The training and test sets of a configuration and a description of them (sizes,
    class counts, random-label seed and SHA-256, the padding value of the augmentation)."""
    from . import data as D
    K = D.num_classes(config.dataset)
    dkw = dict(normalization=config.normalization, seed=config.seed)
    n_train = config.n_per_class
    if config.class_counts is not None:
        if len(config.class_counts) != K:
            raise ValueError(f"class_counts must have {K} entries (one per class), got {len(config.class_counts)}")
        n_train = max(config.class_counts)
    X, y = D.load_dataset(config.dataset, "train", n_per_class=n_train, **dkw)
    if config.class_counts is not None:
        X, y = _take_counts(X, y, config.class_counts)
    Xt, yt = D.load_dataset(config.dataset, "test", n_per_class=config.n_test_per_class, **dkw)
    info = dict(n_train=int(X.shape[0]), n_test=int(Xt.shape[0]), num_classes=K, random_labels=None,
                class_counts=torch.bincount(y, minlength=K).tolist(),
                augment_fill=D.black_level(config.dataset, config.normalization))
    if config.random_labels:
        y = D.balanced_random_labels(int(X.shape[0]), K, config.seed)
        u8 = y.to(torch.uint8).numpy().tobytes()
        info["random_labels"] = dict(seed=config.seed, sha256=hashlib.sha256(u8).hexdigest(),
                                     uint8_base64=base64.b64encode(u8).decode())
    return (X, y), (Xt, yt), info


def _take_counts(X, y, counts) -> tuple:
    """The first ``counts[k]`` samples of each class k (in the subset's order), order kept."""
    keep = torch.zeros(y.shape[0], dtype=torch.bool)
    for k, c in enumerate(counts):
        idx = torch.nonzero(y == k).flatten()
        if idx.numel() < c:
            raise ValueError(f"class {k} has {idx.numel()} samples, fewer than class_counts[{k}] = {c}")
        keep[idx[:c]] = True
    return X[keep], y[keep]


def _results(config, history, params, data_info, elapsed) -> dict:
    """The results dict of a finished run (format 2, see the module docstring)."""
    import torchvision
    history = dict(history)
    geometry = history.pop("geometry", None)
    s = history["settings"]
    keys = ("epoch", "train_acc", "test_acc", "nc1", "nc2", "nc3", "nc4", "test_nc1", "test_nc2", "test_nc3",
            "test_nc4", "train_loss", "test_loss")
    final = {k: history[k][-1] for k in keys if history.get(k)}
    provenance = dict(
        nclib_version=__version__, git_commit=_git_commit(), torch_version=torch.__version__,
        torchvision_version=torchvision.__version__, python_version=platform.python_version(),
        device=s["device"], device_name=s["device_name"], tf32_matmul=s["tf32_matmul"],
        tf32_cudnn=s["tf32_cudnn"], precision=s["precision"], torch_compile=s["compile"],
        cpu_threads=torch.get_num_threads(), wall_time_s=history["wall_time"],
        wall_time_this_call_s=elapsed,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    res = _jsonable(dict(format=_RESULTS_FORMAT, config=config.to_dict(), config_hash=config_hash(config),
                         history=history, final=final, geometry=geometry, parameters=params, data=data_info,
                         provenance=provenance))
    res["content_hash"] = content_hash(res)
    return res


def content_hash(res: dict) -> str:
    """SHA-256 of a results dict's canonical JSON without its ``content_hash`` entry."""
    blob = json.dumps({k: v for k, v in res.items() if k != "content_hash"}, sort_keys=True,
                      separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _jsonable(x):
    """Plain JSON types (tuples -> lists, numpy/torch scalars -> Python numbers)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _jsonable(x.tolist())
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return x
    return x
