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
import socket
import subprocess
import time

from . import __version__
from .threads import AVX2_KERNELS
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
    "checkpoint_path",
    "load_results_file",
    "StorageError",
    "check_writable",
    "store_results",
    "validate_results",
    "read_manifest",
    "write_manifest",
    "MANIFEST_NAME",
    "load_or_run",
    "run_experiment",
    "config_data",
]

_RESULTS_FORMAT = 2


class ResultsNotFound(FileNotFoundError):
    """No stored results for a configuration and ``run=False``."""


class StorageError(RuntimeError):
    """A results or checkpoint folder cannot be written (the message names the path)."""


#: The manifest of committed results files in a results folder: one line per file,
#: ``<content_hash> <file name>`` (written by :func:`write_manifest`).
MANIFEST_NAME = "MANIFEST"


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


def _cpu_model(cpuinfo="/proc/cpuinfo") -> str:
    """The CPU's model name with its family and model numbers (Linux), else ``platform.processor()``:
    the same code can train differently on another CPU (other kernels: other roundings)."""
    info = {}
    try:
        for line in pathlib.Path(cpuinfo).read_text().splitlines():
            key, colon, value = line.partition(":")
            if colon:
                info.setdefault(key.strip(), value.strip())  # the first processor's
    except OSError:
        pass
    if info.get("model name"):
        return f"{info['model name']} (family {info.get('cpu family', '?')}, model {info.get('model', '?')})"
    return platform.processor() or platform.machine() or "unknown"


def _fsync_dir(d: pathlib.Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_writable(folder, what: str = "results") -> pathlib.Path:
    """Create ``folder`` if needed and check that a file can be written, synced and removed in
    it (before hours of training, not after); raises :class:`StorageError` naming the path."""
    folder = pathlib.Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".nclib-write-test-{socket.gethostname()}-{os.getpid()}"
        with open(probe, "w") as f:
            f.write("ok\n")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as exc:
        raise StorageError(f"the {what} folder {folder} is not writable ({exc.strerror or exc}); "
                           f"fix its permissions or choose another folder") from None
    return folder


def _atomic_write_json(obj, path: pathlib.Path) -> None:
    """Write ``obj`` (without its ``_``-prefixed keys) as JSON next to ``path`` (same folder,
    so the same filesystem), fsync it, ``os.replace`` it into place and fsync the folder."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    obj = {k: v for k, v in obj.items() if not str(k).startswith("_")}
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True, allow_nan=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        raise StorageError(f"cannot write results file {path} ({exc.strerror or exc})") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def store_results(res: dict, path) -> pathlib.Path:
    """Store a results dict durably at ``path``: an existing file is kept as ``<path>.bak``
    until the new one is written (then removed); the write is atomic and fsynced
    (:func:`_atomic_write_json`)."""
    path = pathlib.Path(path)
    bak = path.with_name(path.name + ".bak")
    had_old = path.exists()
    if had_old:
        if bak.exists():
            bak.unlink()
        os.link(path, bak)
    _atomic_write_json(res, path)
    if had_old and bak.exists():
        bak.unlink()
    return path


# ----------------------------------------------------------------------------- schema and manifest
_REQUIRED = {"format": int, "config": dict, "config_hash": str, "history": dict, "final": dict,
             "provenance": dict, "content_hash": str}
_PER_LOGGED_EPOCH = ("lr", "train_acc", "train_loss", "test_acc", "test_loss", "nc1", "nc2", "nc3", "nc4")


def validate_results(res, path="<results>") -> dict:
    """Check the schema of a results dict (format 2, see the module docstring); ValueError
    naming the file and the key that is missing or malformed."""
    if not isinstance(res, dict):
        raise ValueError(f"results file {path} is corrupt: the top level is a {type(res).__name__}, not an object")
    if res.get("format") != _RESULTS_FORMAT:
        raise ValueError(f"results file {path} has format {res.get('format')!r}, expected {_RESULTS_FORMAT} "
                         f"(made by an older nclib?); delete it to rerun")
    for key, typ in _REQUIRED.items():
        if key not in res:
            raise ValueError(f"results file {path} is corrupt: key {key!r} is missing")
        if not isinstance(res[key], typ):
            raise ValueError(f"results file {path} is corrupt: key {key!r} is a {type(res[key]).__name__}, "
                             f"expected {typ.__name__}")
    h = res["history"]
    ep = h.get("epoch")
    if not isinstance(ep, list) or not ep:
        raise ValueError(f"results file {path} is corrupt: key 'history.epoch' is missing or empty")
    for k in _PER_LOGGED_EPOCH:
        if k in h and (not isinstance(h[k], list) or len(h[k]) != len(ep)):
            n = len(h[k]) if isinstance(h[k], list) else type(h[k]).__name__
            raise ValueError(f"results file {path} is corrupt: key 'history.{k}' has {n} entries, "
                             f"'history.epoch' has {len(ep)}")
    if "epoch" not in res["final"]:
        raise ValueError(f"results file {path} is corrupt: key 'final.epoch' is missing")
    return res


def read_manifest(results_dir) -> dict | None:
    """``{file name: content hash}`` of ``<results_dir>/MANIFEST``, or None without one."""
    p = pathlib.Path(results_dir) / MANIFEST_NAME
    if not p.is_file():
        return None
    out = {}
    for i, line in enumerate(p.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or len(parts[0]) != 64:
            raise ValueError(f"manifest {p} line {i} is malformed ({line[:60]!r}); expected '<sha256> <file name>'")
        out[parts[1]] = parts[0]
    return out


def write_manifest(results_dir="book/results") -> tuple:
    """Rewrite ``<results_dir>/MANIFEST`` from the results files there whose content hash
    checks out; returns ``(listed names, {bad name: reason})``.  Run it before committing
    results (``python -m nclib results --write-manifest``).  The manifest and the content
    hashes catch accidental edits and stale files, not an adversary."""
    d = pathlib.Path(results_dir)
    if not d.is_dir():
        raise ValueError(f"results folder {d} does not exist")
    good, bad = {}, {}
    for p in sorted(d.glob("*__*__*.json")):
        try:
            res = _read_checked(p)
            good[p.name] = res["content_hash"]
        except ValueError as exc:
            bad[p.name] = str(exc)
    lines = ["# nclib results manifest: <content_hash> <file name> of the committed results files.",
             "# Rewrite with: python -m nclib results --write-manifest (checks accidents, not an adversary)."]
    lines += [f"{h} {n}" for n, h in good.items()]
    tmp = d / f".{MANIFEST_NAME}.tmp{os.getpid()}"
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, d / MANIFEST_NAME)
    return list(good), bad


def _read_checked(path: pathlib.Path) -> dict:
    """Read a results file and check its schema and its own content hash (not the manifest)."""
    try:
        with open(path) as f:
            res = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"results file {path} is corrupt or unreadable ({exc}); delete it to rerun") from None
    validate_results(res, path)
    if res["content_hash"] != content_hash(res):
        raise ValueError(f"results file {path} was changed after it was written (its content hash "
                         f"does not match); restore it from git or delete it to rerun")
    return res


def load_results_file(path) -> dict:
    """A results file, checked (schema, content hash, and the folder's manifest when there is
    one), with ``res["_source"] = {"path", "status"}``: status "committed" (listed in the
    manifest with this hash), "local" (not listed: a run made here) or "local (differs from
    the manifest)" (rerun here)."""
    path = pathlib.Path(path)
    res = _read_checked(path)
    man = read_manifest(path.parent)
    status = "local"
    if man is not None and path.name in man:
        status = "committed" if man[path.name] == res["content_hash"] else "local (differs from the manifest)"
    res["_source"] = {"path": str(path), "status": status}
    return res


def _load_results(path: pathlib.Path, config: ExperimentConfig) -> dict:
    if not path.is_file():
        raise ValueError(f"results file {path} is not a regular file")
    res = load_results_file(path)
    want = config.to_dict()
    if res["config"] != want or res.get("config_hash") != config_hash(config):
        keys = sorted(set(want) | set(res["config"]))
        diff = [f"{k}: file {res['config'].get(k)!r} vs config {want.get(k)!r}" for k in keys
                if res["config"].get(k) != want.get(k)]
        raise ValueError(f"results file {path} does not match its configuration "
                         f"({'; '.join(diff) or 'hash differs'}); delete it to rerun")
    return res


def checkpoint_path(config: ExperimentConfig, results_dir="book/results", checkpoint_dir=None) -> pathlib.Path:
    """``<checkpoint_dir>/<name>__<profile>__<hash>.pt`` (default folder: ``$NCLIB_CHECKPOINTS``,
    else ``<nclib.data.cache_root()>/checkpoints``)."""
    if checkpoint_dir is None:
        # nclib.data.cache_root(), without importing torch (keeps the command line fast)
        cache = pathlib.Path(os.environ.get("NCLIB_CACHE") or pathlib.Path.home() / ".cache" / "nclib").expanduser()
        checkpoint_dir = os.environ.get("NCLIB_CHECKPOINTS") or cache / "checkpoints"
    return pathlib.Path(checkpoint_dir) / (results_path(config, results_dir).stem + ".pt")


def load_or_run(config: ExperimentConfig, results_dir="book/results", *, run: bool = True, device=None,
                checkpoint_dir=None, progress: bool = True, rerun: bool = False,
                provenance_extra: dict | None = None) -> dict:
    """The results of ``config``: loaded from ``results_dir`` if stored, else (``run=True``) trained.

    Loading never trains.  A stored file that is corrupt or was made with another
    configuration raises ValueError; with ``run=False`` a missing file raises
    :class:`ResultsNotFound`.  Training (:func:`run_experiment`) resumes from the checkpoint
    ``<checkpoint_dir>/<name>__<profile>__<hash>.pt`` when one exists (``checkpoint_dir``
    default: ``$NCLIB_CHECKPOINTS``, else ``<nclib.data.cache_root()>/checkpoints``); the
    checkpoint is removed only once the results file has been written (atomically, fsynced).
    Both folders are checked for writability before training (:class:`StorageError`).
    ``rerun``: train even if results are stored (the old file stays as ``.bak`` until the
    new one is written).  ``provenance_extra``: entries added to ``provenance`` (e.g. the
    job id and node of a cluster job).  A diverged run (:class:`nclib.train.TrainingDiverged`)
    raises and stores nothing.

    Returns the results dict of the module docstring; ``provenance`` holds the nclib version,
    git commit, torch/torchvision/python versions, device and its name, TF32 flags,
    precision, torch.compile, torch's CPU thread count, wall time and UTC date.
    """
    config = check_config(config)
    path = results_path(config, results_dir)
    if path.exists() and not rerun:
        return _load_results(path, config)
    if not run:
        others = sorted(p.name for p in pathlib.Path(results_dir).glob(f"{config.name}__{config.profile}__*.json"))
        hint = f" (files of other configurations with this name: {', '.join(others)})" if others else ""
        raise ResultsNotFound(f"no stored results for {config.name!r} (profile {config.profile!r}) at {path}{hint}; "
                              f"call with run=True to train")
    ckpt = checkpoint_path(config, results_dir, checkpoint_dir)
    check_writable(path.parent, "results")
    check_writable(ckpt.parent, "checkpoint")
    res = run_experiment(config, device=device, checkpoint=ckpt, progress=progress,
                         provenance_extra=provenance_extra)
    store_results(res, path)
    out = _load_results(path, config)  # read back: what is on disk is what was meant
    if ckpt.exists():
        ckpt.unlink()
    return out


def run_experiment(config: ExperimentConfig, *, device=None, checkpoint=None, progress: bool = True,
                   provenance_extra: dict | None = None) -> dict:
    """Train one configuration (no storing): data (:func:`nclib.data.load_dataset`), model
    (:func:`nclib.models.build`, seeded by ``config.seed``), :func:`nclib.train.train`.
    Returns the results dict described in the module docstring."""
    import torch

    from . import models as M
    from . import train as T

    config = check_config(config)
    (X, y), (Xt, yt), data_info = config_data(config)
    K = data_info["num_classes"]
    torch.manual_seed(config.seed)
    model = M.build(config.model, K, feature_dim=config.feature_dim, fixed_classifier=config.fixed_classifier,
                    width=config.width, depth=config.depth, stem=config.stem)
    fc = model.classifier
    params = dict(total=M.count_parameters(model), trainable=M.count_parameters(model, trainable_only=True),
                  classifier_weight=int(fc.weight.numel()), feature_dim=int(fc.in_features))
    log_epochs = list(config.log_epochs) if isinstance(config.log_epochs, (list, tuple)) else config.log_epochs
    commit = _git_commit()  # the code that runs: read now, not when the run ends
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
        precision=config.precision, compile=config.compile, flush_denormal=config.flush_denormal,
        checkpoint=checkpoint, progress=progress,
        extra_settings=dict(config_hash=config_hash(config)),
    )
    elapsed = time.perf_counter() - t0
    return _results(config, history, params, data_info, elapsed, provenance_extra, commit)


def config_data(config: ExperimentConfig) -> tuple:
    """The training and test sets of a configuration, as :func:`run_experiment` trains and
    evaluates on them, and a description of them (sizes, class counts, random-label seed and
    SHA-256, the padding value of the augmentation): ``((X, y), (X_test, y_test), info)``."""
    import torch

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
    import torch
    keep = torch.zeros(y.shape[0], dtype=torch.bool)
    for k, c in enumerate(counts):
        idx = torch.nonzero(y == k).flatten()
        if idx.numel() < c:
            raise ValueError(f"class {k} has {idx.numel()} samples, fewer than class_counts[{k}] = {c}")
        keep[idx[:c]] = True
    return X[keep], y[keep]


def _results(config, history, params, data_info, elapsed, provenance_extra, commit) -> dict:
    """The results dict of a finished run (format 2, see the module docstring); ``commit``: the
    git commit read when the run started (a commit made while it trains does not describe it)."""
    import torch
    import torchvision
    history = dict(history)
    geometry = history.pop("geometry", None)
    s = history["settings"]
    keys = ("epoch", "train_acc", "test_acc", "nc1", "nc2", "nc3", "nc4", "test_nc1", "test_nc2", "test_nc3",
            "test_nc4", "train_loss", "test_loss")
    final = {k: history[k][-1] for k in keys if history.get(k)}
    provenance = dict(
        nclib_version=__version__, git_commit=commit, torch_version=torch.__version__,
        torchvision_version=torchvision.__version__, python_version=platform.python_version(),
        device=s["device"], device_name=s["device_name"], tf32_matmul=s["tf32_matmul"],
        tf32_cudnn=s["tf32_cudnn"], precision=s["precision"], torch_compile=s["compile"],
        flush_denormal=s["flush_denormal"],
        cpu_threads=torch.get_num_threads(), wall_time_s=history["wall_time"],
        wall_time_this_call_s=elapsed,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        host=socket.gethostname(), cpu_model=_cpu_model(),
        cpu_capability=torch.backends.cpu.get_cpu_capability(),  # the vector kernels torch chose (AVX2, AVX512...)
        kernel_env={k: os.environ[k] for k in AVX2_KERNELS if k in os.environ},  # kernel pinning, when set
    )
    provenance.update(provenance_extra or {})
    res = _jsonable(dict(format=_RESULTS_FORMAT, config=config.to_dict(), config_hash=config_hash(config),
                         history=history, final=final, geometry=geometry, parameters=params, data=data_info,
                         provenance=provenance))
    res["content_hash"] = content_hash(res)
    return res


def content_hash(res: dict) -> str:
    """SHA-256 of a results dict's canonical JSON without its ``content_hash`` entry (and
    without ``_``-prefixed entries, which describe where a loaded file came from)."""
    blob = json.dumps({k: v for k, v in res.items() if k != "content_hash" and not str(k).startswith("_")},
                      sort_keys=True,
                      separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _jsonable(x):
    """Plain JSON types (tuples -> lists, numpy/torch scalars -> Python numbers)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if type(x).__module__.startswith("torch") and hasattr(x, "tolist"):
        return _jsonable(x.tolist())
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return x
    return x
