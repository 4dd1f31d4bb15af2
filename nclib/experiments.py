"""Named configurations of the runs behind Figures 3-7 and a results store (paper, Section 4).

Every run of the paper's experiment section has a name, and every name has three profiles:

* ``"smoke"`` -- for CI: seconds, offline data (scikit-learn's digits, or the synthetic
  Gaussian mixture for the random-label runs), narrow or tiny models, 1-2 epochs.  Only
  checks that the pipeline runs; its numbers mean nothing.
* ``"cpu"``   -- for a laptop: minutes, *real* small data (balanced subsets of MNIST, or of
  the JPEG q75 copy of CIFAR-10, ``"cifar10-jpeg"``, whose results must be labelled
  "CIFAR-10 (JPEG q75 copy)"), the paper's networks at full width (ResNet18, ResNet50, the
  MLP of Figure 5; Figure 5's ResNet18 width sweep stops at x0.5).  Adapted so that 1,000
  training images reach the terminal phase in minutes: batch 32 (SGD, Adam), so that an
  epoch has 32 steps; SGD lr 0.01 (the paper's 0.05 is for batch 256; with batch 32 it left a
  1,000-image CIFAR run at 41% train accuracy after 30 epochs); 30 epochs in two stages
  (lr x 0.1 after epoch 15; the paper has five stages of 40 epochs); L-BFGS on 300 images,
  full batch, 4 epochs of one step (up to 20 iterations each; at lr 0.1 it reached 100% train
  accuracy after 2-3 steps and became unstable after 4-5: eval-mode accuracy fell to 73% on
  the MNIST subset at step 5).  Figure 5: 500 images with
  random labels, batch 16, 60 epochs (lr x 0.1 after 30).  Figure 7's ResNet50 (stride-1
  stem, ~30x a ResNet18 on the CPU): 200 images, batch 16, 20 epochs.  These are labelled
  adaptations, not the paper's protocol; use ``"full"`` for that.
* ``"full"``  -- the paper's settings for a GPU (Section 4 and ANCHORS.md part 1): full
  MNIST / CIFAR-10, 200 epochs, SGD lr 0.05 batch 256, Adam lr 1e-3 batch 64, L-BFGS lr 0.1
  batch 2048 history 10, weight decay 5e-4 on all parameters.

The names (:func:`list_configs`):

* ``fig3-{mnist,cifar10}-{sgd,adam,lbfgs}`` -- Section 4.1, Figures 3 (NC1-NC4) and 4
  (train/test accuracy of the same runs): ResNet18, three optimizers.
* ``fig5-mlp-w{1..4}``, ``fig5-resnet18-w{1..4}`` -- Section 4.2, Figure 5: CIFAR-10 with
  exactly balanced random labels, ImageNet normalisation, SGD lr 0.01, weight decay 1e-4,
  batch 64; a depth-4 MLP and a ResNet18 (width multiplier, footnote 13) at four widths,
  ``w1`` the narrowest.  The paper does not list its widths; ours are in each config.
* ``fig6-{mnist,cifar10}-{all,whb}`` -- Section 4.2, Figure 6: decay on all parameters
  (eq. (2), lambda = 5e-4) vs. on (W, H, b) only (eq. (4), lambda_W = lambda_b = 0.01,
  lambda_H = 1e-5; see :mod:`nclib.train` for the scaling of the H term).
* ``fig7-{mnist-resnet18,cifar10-resnet18,cifar10-resnet50}-{learned,etf,dk}`` -- Section
  4.3, Figure 7: a learned classifier, a fixed simplex-ETF classifier, and a learned
  classifier with feature dimension d = K; SGD; the ResNet50 runs use the 3x3 "cifar" stem
  and the pad-4 crop + flip augmentation (footnote 15).

:func:`load_or_run` trains a configuration once and stores its results as JSON under
``book/results/`` (file name = name, profile and a hash of the configuration); later calls
load the file and never train.  See ``book/results/README.md``.
"""
from __future__ import annotations

import base64
import dataclasses
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

__all__ = [
    "PROFILES",
    "ExperimentConfig",
    "ResultsNotFound",
    "list_configs",
    "get_config",
    "config_hash",
    "results_path",
    "load_or_run",
    "run_experiment",
]

PROFILES = ("smoke", "cpu", "full")
_RESULTS_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything that determines a run (hashed for the results file name).

    Data: ``dataset`` (a name of :data:`nclib.data.DATASETS`), ``n_per_class`` /
    ``n_test_per_class`` (balanced subsets; None = all), ``normalization`` (None = the
    dataset's), ``random_labels`` (exactly balanced, seeded by ``seed``; Section 4.2),
    ``augment`` (Section 4.3).  Model (:func:`nclib.models.build`): ``model``, ``width``,
    ``depth``, ``feature_dim``, ``fixed_classifier``, ``stem``.  Training
    (:func:`nclib.train.train`): the remaining fields.
    """

    name: str
    profile: str
    figure: str
    label: str
    dataset: str
    model: str
    optimizer: str
    epochs: int
    lr: float
    batch_size: int
    lr_step: int | None
    lr_gamma: float = 0.1
    regularization: str = "all"
    weight_decay: float = 5e-4
    lambda_W: float = 0.01
    lambda_H: float = 1e-5
    lambda_b: float = 0.01
    n_per_class: int | None = None
    n_test_per_class: int | None = None
    normalization: str | None = None
    random_labels: bool = False
    augment: bool = False
    width: float | None = None
    depth: int | None = None
    feature_dim: int | None = None
    fixed_classifier: str | None = None
    stem: str = "imagenet"
    log_epochs: object = "all"
    eval_batch_size: int = 1024
    seed: int = 0
    bf16: bool = False
    compile: bool = False

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if isinstance(d["log_epochs"], (tuple, list)):
            d["log_epochs"] = list(d["log_epochs"])
        return d

    def replace(self, **changes) -> "ExperimentConfig":
        """A copy with some fields changed (e.g. ``bf16=True`` for an ablation); the hash changes."""
        return dataclasses.replace(self, **changes)


class ResultsNotFound(FileNotFoundError):
    """No stored results for a configuration and ``run=False``."""


# ----------------------------------------------------------------------------- the configurations
def _base(profile: str, dataset_kind: str, optimizer: str) -> dict:
    """Data and optimizer settings of one profile (dataset_kind: 'mnist' or 'cifar10')."""
    if profile == "full":
        return dict(dataset=dataset_kind, epochs=200, lr_step=None if optimizer == "lbfgs" else 40,
                    log_epochs="all",
                    **{"sgd": dict(lr=0.05, batch_size=256), "adam": dict(lr=1e-3, batch_size=64),
                       "lbfgs": dict(lr=0.1, batch_size=2048)}[optimizer])
    if profile == "cpu":
        ds = "mnist" if dataset_kind == "mnist" else "cifar10-jpeg"
        n = 30 if optimizer == "lbfgs" else 100
        epochs = {"sgd": 30, "adam": 30, "lbfgs": 4}[optimizer]
        return dict(dataset=ds, n_per_class=n, n_test_per_class=100, epochs=epochs,
                    lr_step=None if optimizer == "lbfgs" else epochs // 2, log_epochs="all",
                    **{"sgd": dict(lr=0.01, batch_size=32), "adam": dict(lr=1e-3, batch_size=32),
                       "lbfgs": dict(lr=0.1, batch_size=n * 10)}[optimizer])
    # smoke: offline digits, a narrow ResNet18, 2 epochs
    return dict(dataset="digits", n_per_class=6, n_test_per_class=3, epochs=2,
                lr_step=None if optimizer == "lbfgs" else 1, log_epochs="all", eval_batch_size=256,
                **{"sgd": dict(lr=0.05, batch_size=16), "adam": dict(lr=1e-3, batch_size=16),
                   "lbfgs": dict(lr=0.1, batch_size=60)}[optimizer])


def _resnet18_width(profile: str):
    """Full width except in the smoke profile (a 1/16-width ResNet18: d = 32 >= K)."""
    return 0.0625 if profile == "smoke" else None


_FIG5_WIDTHS = {
    "mlp": {"full": (512, 1024, 2048, 4096), "cpu": (32, 128, 512, 2048), "smoke": (8, 16, 32, 64)},
    "resnet18": {"full": (0.125, 0.25, 0.5, 1.0), "cpu": (0.0625, 0.125, 0.25, 0.5),
                 "smoke": (0.03125, 0.0625, 0.09375, 0.125)},
}


def _fig3(name, profile, ds, opt):
    return ExperimentConfig(name=name, profile=profile, figure="fig3", label={"sgd": "SGD", "adam": "Adam", "lbfgs": "L-BFGS"}[opt],
                            model="resnet18", optimizer=opt, width=_resnet18_width(profile),
                            **_base(profile, ds, opt))


def _fig5(name, profile, model, i):
    width = _FIG5_WIDTHS[model][profile][i]
    if profile == "full":
        data = dict(dataset="cifar10", epochs=200, lr_step=40, batch_size=64)
    elif profile == "cpu":
        data = dict(dataset="cifar10-jpeg", n_per_class=50, n_test_per_class=50, epochs=60,
                    lr_step=30, batch_size=16)
    else:
        data = dict(dataset="gaussian", n_per_class=4, n_test_per_class=2, epochs=2, lr_step=1, batch_size=16,
                    eval_batch_size=256)
    extra = dict(depth=4) if model == "mlp" else {}
    label = f"width {width}" if model == "mlp" else f"width x{width:g}"
    return ExperimentConfig(name=name, profile=profile, figure="fig5", label=label, model=model,
                            optimizer="sgd", lr=0.01, weight_decay=1e-4, normalization="imagenet",
                            random_labels=True, width=width, log_epochs="all", **extra, **data)


def _fig6(name, profile, ds, reg):
    base = _base(profile, ds, "sgd")
    label = "decay on all parameters (eq. 2)" if reg == "all" else "decay on (W, H, b) (eq. 4)"
    return ExperimentConfig(name=name, profile=profile, figure="fig6", label=label, model="resnet18",
                            optimizer="sgd", regularization=reg, weight_decay=5e-4, lambda_W=0.01,
                            lambda_H=1e-5, lambda_b=0.01, width=_resnet18_width(profile), **base)


def _fig7(name, profile, ds, model, variant):
    base = _base(profile, ds, "sgd")
    K = 10
    kw = dict(fixed_classifier="etf") if variant == "etf" else dict(feature_dim=K) if variant == "dk" else {}
    if model == "resnet50":
        kw.update(stem="cifar", augment=True)
        if profile == "cpu":  # a ResNet50 with the stride-1 stem is ~30x a ResNet18 on CPU
            base.update(n_per_class=20, n_test_per_class=20, epochs=20, lr_step=10, batch_size=16)
        elif profile == "smoke":
            base.update(n_per_class=1, n_test_per_class=1, epochs=1, batch_size=10)
    else:
        kw["width"] = _resnet18_width(profile)
    label = {"learned": "learned classifier", "etf": "fixed ETF classifier", "dk": "learned, d = K"}[variant]
    return ExperimentConfig(name=name, profile=profile, figure="fig7", label=label, model=model,
                            optimizer="sgd", **kw, **base)


def _registry() -> dict:
    reg = {}
    for ds in ("mnist", "cifar10"):
        for opt in ("sgd", "adam", "lbfgs"):
            reg[f"fig3-{ds}-{opt}"] = (lambda p, n, ds=ds, opt=opt: _fig3(n, p, ds, opt))
    for model in ("mlp", "resnet18"):
        for i in range(4):
            reg[f"fig5-{model}-w{i + 1}"] = (lambda p, n, model=model, i=i: _fig5(n, p, model, i))
    for ds in ("mnist", "cifar10"):
        for r in ("all", "whb"):
            reg[f"fig6-{ds}-{r}"] = (lambda p, n, ds=ds, r=r: _fig6(n, p, ds, r))
    for ds, model in (("mnist", "resnet18"), ("cifar10", "resnet18"), ("cifar10", "resnet50")):
        for v in ("learned", "etf", "dk"):
            reg[f"fig7-{ds}-{model}-{v}"] = (lambda p, n, ds=ds, model=model, v=v: _fig7(n, p, ds, model, v))
    return reg


_REGISTRY = _registry()


def list_configs(figure: str | None = None) -> list:
    """Names of all configurations, or of one figure (``"fig3"``...``"fig7"``; ``"fig4"`` is
    the accuracy view of the ``fig3`` runs)."""
    if figure is None:
        return list(_REGISTRY)
    fig = "fig3" if figure == "fig4" else figure
    names = [n for n in _REGISTRY if n.startswith(fig + "-")]
    if not names:
        raise ValueError(f"unknown figure {figure!r}; allowed: fig3, fig4, fig5, fig6, fig7")
    return names


def get_config(name: str, profile: str = "cpu") -> ExperimentConfig:
    """The :class:`ExperimentConfig` of a named run in a profile (``"smoke"``, ``"cpu"``, ``"full"``)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown configuration {name!r}; allowed: {', '.join(_REGISTRY)}")
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; allowed: {PROFILES}")
    return _REGISTRY[name](profile, name)


# ----------------------------------------------------------------------------- the results store
def config_hash(config: ExperimentConfig) -> str:
    """First 12 hex digits of the SHA-256 of the configuration as canonical JSON."""
    blob = json.dumps(_check_config(config).to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def results_path(config: ExperimentConfig, results_dir="book/results") -> pathlib.Path:
    """``<results_dir>/<name>__<profile>__<hash>.json``."""
    config = _check_config(config)
    return pathlib.Path(results_dir) / f"{config.name}__{config.profile}__{config_hash(config)}.json"


def _check_config(config) -> ExperimentConfig:
    """An ExperimentConfig, or a dict of its fields (e.g. ``config.to_dict()`` read back from JSON)."""
    if isinstance(config, dict):
        fields = {f.name for f in dataclasses.fields(ExperimentConfig)}
        unknown, missing = set(config) - fields, {f.name for f in dataclasses.fields(ExperimentConfig)
                                                  if f.default is dataclasses.MISSING} - set(config)
        if unknown or missing:
            raise ValueError(f"a config dict must hold the fields of ExperimentConfig; unknown: {sorted(unknown)}, "
                             f"missing: {sorted(missing)}")
        lg = config.get("log_epochs", "all")
        return ExperimentConfig(**{**config, "log_epochs": tuple(lg) if isinstance(lg, list) else lg})
    if not isinstance(config, ExperimentConfig):
        raise ValueError(f"config must be an ExperimentConfig (see get_config) or a dict of its fields, "
                         f"got {type(config).__name__}")
    return config


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

    Returns a dict: ``config``, ``config_hash``, ``history`` (see :func:`nclib.train.train`),
    ``final`` (the last logged metrics), ``parameters`` (total, trainable, classifier),
    ``data`` (sizes, random-label seed and SHA-256), ``provenance`` (nclib version, git
    commit, torch/torchvision/python versions, device and its name, TF32 flags, bf16
    autocast, torch.compile, wall time, UTC date).
    """
    config = _check_config(config)
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
    Returns the results dict described in :func:`load_or_run`."""
    from . import data as D
    from . import models as M
    from . import train as T

    config = _check_config(config)
    K = D.num_classes(config.dataset)
    dkw = dict(normalization=config.normalization, seed=config.seed)
    X, y = D.load_dataset(config.dataset, "train", n_per_class=config.n_per_class, **dkw)
    Xt, yt = D.load_dataset(config.dataset, "test", n_per_class=config.n_test_per_class, **dkw)
    data_info = dict(n_train=int(X.shape[0]), n_test=int(Xt.shape[0]), num_classes=K, random_labels=None)
    if config.random_labels:
        y = D.balanced_random_labels(int(X.shape[0]), K, config.seed)
        u8 = y.to(torch.uint8).numpy().tobytes()
        data_info["random_labels"] = dict(seed=config.seed, sha256=hashlib.sha256(u8).hexdigest(),
                                          uint8_base64=base64.b64encode(u8).decode())
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
        regularization=config.regularization, weight_decay=config.weight_decay, lambda_W=config.lambda_W,
        lambda_H=config.lambda_H, lambda_b=config.lambda_b, augment=config.augment, log_epochs=log_epochs,
        eval_batch_size=config.eval_batch_size, device=device, seed=config.seed, bf16=config.bf16,
        compile=config.compile, checkpoint=checkpoint, progress=progress,
        extra_settings=dict(config_hash=config_hash(config)),
    )
    elapsed = time.perf_counter() - t0
    s = history["settings"]
    final = {k: history[k][-1] for k in ("epoch", "train_acc", "test_acc", "nc1", "nc2", "nc3", "nc4")
             if history.get(k)}
    import torchvision
    provenance = dict(
        nclib_version=__version__, git_commit=_git_commit(), torch_version=torch.__version__,
        torchvision_version=torchvision.__version__, python_version=platform.python_version(),
        device=s["device"], device_name=s["device_name"], tf32_matmul=s["tf32_matmul"],
        tf32_cudnn=s["tf32_cudnn"], bf16_autocast=s["bf16"], torch_compile=s["compile"],
        cpu_threads=torch.get_num_threads(), wall_time_s=history["wall_time"],
        wall_time_this_call_s=elapsed,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    return _jsonable(dict(format=_RESULTS_FORMAT, config=config.to_dict(), config_hash=config_hash(config),
                          history=history, final=final, parameters=params, data=data_info,
                          provenance=provenance))


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
