"""Named configurations of the runs behind Figures 3-7 (paper, Section 4) and the book's own runs.

Every run has a name, and every name has three profiles:

* ``"full"``  -- the paper's protocol for a GPU, item by item as the authors ran it
  (Section 4, github:tding1/Neural-Collapse; the book's appendix "The protocol" lists every
  setting with its source): full MNIST / CIFAR-10, ResNet18 (ImageNet stem), 200 epochs,
  lr x 0.1 every 40 epochs, weight decay 5e-4 on all parameters, strict float32; SGD lr 0.05
  batch 256, Adam lr 1e-3 batch 64, L-BFGS lr 0.1 batch 2048 history 10 (the authors' README).
  Figure 5: ``ResNet18_adapt`` (3x3 stride-1 stem, no max-pool; footnote 13).  Figure 6's
  feature-decay runs: batch 64 (README).  Figure 7: SGD batch 128 (cmds.sh); CIFAR-10 rows
  with the 3x3 stem and pad-4 crop + flip augmentation (``--SOTA``).
* ``"cpu"``   -- a small-scale recipe that reaches the terminal phase on one CPU core in at
  most about 20 minutes per run, on *real* data (balanced subsets of MNIST, and of the JPEG
  q75 copy of CIFAR-10, ``"cifar10-jpeg"``, labelled "CIFAR-10 (JPEG q75 copy)" wherever
  shown): 500 training images per class (a tenth of the paper's CIFAR-10), 100 test images
  per class, ResNet18 at width 0.25, weight decay :data:`CPU_WEIGHT_DECAY` on all parameters,
  more steps at the first learning rate (:data:`CPU_MILESTONES`).  The recipe was chosen by
  a small search on training-set metrics only (``tools/recipe_search.py``; the results are in
  ``book/results/recipe_search.jsonl`` and the chapter "Neural collapse with any optimizer"
  tabulates them).  ResNet50 is not in this profile (a ResNet50 with the 3x3 stem does not
  reach the terminal phase on one core in 20 minutes).
* ``"smoke"`` -- for CI: seconds, offline data (scikit-learn's digits, or a Gaussian mixture
  for the random-label runs), tiny models, 1-2 epochs.  Its numbers mean nothing.

The names (:func:`list_configs`):

* ``fig3-{mnist,cifar10}-{sgd,adam,lbfgs}`` -- Section 4.1, Figures 3 and 4.
* ``fig5-{mlp,resnet18}-w{1..4}`` -- Section 4.2, Figure 5 (random labels, four widths).
* ``fig6-{mnist,cifar10}-{all,eq4,batch_sum,authors}`` -- Section 4.2, Figure 6: decay on all
  parameters (eq. (2); the same training as ``fig3-*-sgd``) vs. on (W, H, b) with the feature
  term scaled as eq. (4), as the authors' code scales it per batch, and as their code actually
  ran (on ``F.normalize(h)``: no feature decay at all); see :func:`nclib.train.feature_decay`.
* ``fig7-{mnist-resnet18,cifar10-resnet18,cifar10-resnet50}-{learned,etf,dk,etf-dk}`` --
  Section 4.3, Figure 7: learned / fixed simplex-ETF classifier, at the network's own feature
  dimension and at d = K.  ``learned`` trains what ``fig3-*-sgd`` trains in the cpu profile.
* ``loss-mnist-{ce,mse,ls}`` -- beyond the paper: the cpu recipe with CE, MSE and label
  smoothing 0.1 (chapter "Other losses").
* ``imb-mnist-r{1,10,50}`` -- beyond the paper: classes 0-4 at 500 images, classes 5-9 at
  500 / R (chapter "Imbalanced classes").

A configuration's hash (:func:`config_hash`) covers only the fields that differ from their
defaults, so that adding a field with a default never changes the hash of existing runs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json

__all__ = [
    "PROFILES",
    "CPU_WEIGHT_DECAY",
    "CPU_MILESTONES",
    "CPU_FLUSH_DENORMAL",
    "CPU_LR",
    "ExperimentConfig",
    "list_configs",
    "get_config",
    "config_hash",
    "check_config",
]

PROFILES = ("smoke", "cpu", "full")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything that determines a run (hashed for the results file name).

    Data: ``dataset`` (a name of :data:`nclib.data.DATASETS`), ``n_per_class`` /
    ``n_test_per_class`` (balanced subsets; None = all), ``class_counts`` (K training-set
    sizes, for class imbalance; replaces ``n_per_class``), ``normalization`` (None = the
    dataset's), ``random_labels`` (exactly balanced, seeded by ``seed``; Section 4.2),
    ``augment`` (Section 4.3).  Model (:func:`nclib.models.build`): ``model``, ``width``,
    ``depth``, ``feature_dim``, ``fixed_classifier``, ``stem``.  Training
    (:func:`nclib.train.train`): the remaining fields (``loss`` with ``smoothing`` /
    ``focal_gamma``; ``lr_milestones`` replaces ``lr_step``; ``feature_decay`` is the scaling
    of the H term when ``regularization="whb"``; ``precision`` "fp32" (strict), "tf32", "bf16").
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
    lr_milestones: tuple | None = None
    loss: str = "ce"
    smoothing: float | None = None
    focal_gamma: float | None = None
    regularization: str = "all"
    weight_decay: float = 5e-4
    lambda_W: float = 0.01
    lambda_H: float = 1e-5
    lambda_b: float = 0.01
    feature_decay: str = "eq4"
    n_per_class: int | None = None
    n_test_per_class: int | None = None
    class_counts: tuple | None = None
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
    precision: str = "fp32"
    compile: bool = False
    flush_denormal: bool = False

    def to_dict(self) -> dict:
        """All fields as plain JSON types (tuples become lists)."""
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    def replace(self, **changes) -> "ExperimentConfig":
        """A copy with some fields changed (e.g. ``precision="bf16"`` for an ablation); the hash changes."""
        return dataclasses.replace(self, **changes)


_TUPLE_FIELDS = ("lr_milestones", "class_counts", "log_epochs")
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ExperimentConfig)
             if f.default is not dataclasses.MISSING}


def check_config(config) -> ExperimentConfig:
    """An ExperimentConfig, or a dict of its fields (e.g. ``config.to_dict()`` read back from JSON)."""
    if isinstance(config, dict):
        fields = {f.name for f in dataclasses.fields(ExperimentConfig)}
        unknown = set(config) - fields
        missing = {f.name for f in dataclasses.fields(ExperimentConfig)
                   if f.default is dataclasses.MISSING} - set(config)
        if unknown or missing:
            raise ValueError(f"a config dict must hold the fields of ExperimentConfig; unknown: {sorted(unknown)}, "
                             f"missing: {sorted(missing)}")
        conv = {k: tuple(config[k]) for k in _TUPLE_FIELDS if isinstance(config.get(k), list)}
        return ExperimentConfig(**{**config, **conv})
    if not isinstance(config, ExperimentConfig):
        raise ValueError(f"config must be an ExperimentConfig (see get_config) or a dict of its fields, "
                         f"got {type(config).__name__}")
    return config


def config_hash(config) -> str:
    """First 12 hex digits of the SHA-256 of the configuration's canonical JSON, leaving out
    every field at its default value (so that a new field with a default changes no hash)."""
    d = check_config(config).to_dict()
    d = {k: v for k, v in d.items() if k not in _DEFAULTS or v != _json(_DEFAULTS[k])}
    blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _json(v):
    return list(v) if isinstance(v, tuple) else v


# ----------------------------------------------------------------------------- the cpu recipe
#: Weight decay of the cpu recipe (all parameters, eq. (2)); the paper's is 5e-4 (see module doc).
CPU_WEIGHT_DECAY = 1e-2
#: Epochs and learning-rate milestones (x 0.1) of the cpu recipe for SGD and Adam.  The search
#: chose 150 epochs with milestones 70 and 120 (what fitted the budget on the AMD EPYC the project
#: first ran on); the compute frontier (``tools/frontier.py``, training-set targets only) then
#: showed two more runs meeting every target with 1.5x that schedule and one more at 2.5x.  On the
#: Intel Xeon of later sessions 1.5x took 2.2 core-hours, so 2.5x (about 3.4) also fits the budget
#: of about 4: 375 epochs, steps after 175 and 300.
CPU_EPOCHS = 375
CPU_MILESTONES = (175, 300)
#: The cpu profile trains with subnormal floats taken as zero (``nclib.train.train``'s
#: ``flush_denormal``): weight decay drives most weights there, where some CPUs slow down ~7x.
CPU_FLUSH_DENORMAL = True
#: L-BFGS in the cpu recipe: all 5,000 images per step (one step per epoch), the standard
#: quasi-Newton step length 1 (the strong-Wolfe line search starts there), the SGD recipe's
#: weight decay, and as many steps as fit into about 20 minutes on one core (about 90 s each).
#: Chosen on training metrics (trials ``lbfgs-*`` of ``book/results/recipe_search.jsonl``).
CPU_LBFGS = dict(batch_size=5000, epochs=12, weight_decay=1e-2, lr=1.0)
#: Learning rates of the cpu recipe.  SGD at the paper's 0.05 under weight decay 1e-2 stays below
#: 50% CIFAR-10 train accuracy until its first step (trial ``cpu-batch-1-cifar``); at 0.01 the
#: trial ``c-lr1e-2-wd1e-2`` (training metrics only) ends with a far lower NC1 and met every target.
CPU_LR = {"sgd": 0.01, "adam": 1e-3}
_CPU_WIDTH = 0.25
_CPU_N, _CPU_NTEST = 500, 100


def _base(profile: str, dataset_kind: str, optimizer: str) -> dict:
    """Data, model width and optimizer settings of one profile (dataset_kind: 'mnist' or 'cifar10')."""
    if profile == "full":
        return dict(dataset=dataset_kind, epochs=200, lr_step=None if optimizer == "lbfgs" else 40,
                    **{"sgd": dict(lr=0.05, batch_size=256), "adam": dict(lr=1e-3, batch_size=64),
                       "lbfgs": dict(lr=0.1, batch_size=2048)}[optimizer])
    if profile == "cpu":
        ds = "mnist" if dataset_kind == "mnist" else "cifar10-jpeg"
        common = dict(dataset=ds, n_per_class=_CPU_N, n_test_per_class=_CPU_NTEST, width=_CPU_WIDTH,
                      log_epochs="log", flush_denormal=CPU_FLUSH_DENORMAL)
        if optimizer == "lbfgs":
            return dict(common, lr_step=None, **CPU_LBFGS)
        return dict(common, epochs=CPU_EPOCHS, lr_step=None, lr_milestones=CPU_MILESTONES,
                    weight_decay=CPU_WEIGHT_DECAY, batch_size=64, lr=CPU_LR[optimizer])
    # smoke: offline digits, a narrow ResNet18, 2 epochs
    return dict(dataset="digits", n_per_class=6, n_test_per_class=3, epochs=2, width=0.0625,
                lr_step=None if optimizer == "lbfgs" else 1, eval_batch_size=256,
                **{"sgd": dict(lr=0.05, batch_size=16), "adam": dict(lr=1e-3, batch_size=16),
                   "lbfgs": dict(lr=0.1, batch_size=60)}[optimizer])


_LABELS = {"sgd": "SGD", "adam": "Adam", "lbfgs": "L-BFGS"}


def _fig3(name, profile, ds, opt):
    return ExperimentConfig(name=name, profile=profile, figure="fig3", label=_LABELS[opt], model="resnet18",
                            optimizer=opt, **_base(profile, ds, opt))


_FIG5_WIDTHS = {
    "mlp": {"full": (512, 1024, 2048, 4096), "cpu": (32, 128, 512, 2048), "smoke": (8, 16, 32, 64)},
    "resnet18": {"full": (0.125, 0.25, 0.5, 1.0), "cpu": (0.03125, 0.0625, 0.125, 0.25),
                 "smoke": (0.03125, 0.0625, 0.09375, 0.125)},
}


def _fig5(name, profile, model, i):
    width = _FIG5_WIDTHS[model][profile][i]
    if profile == "full":
        data = dict(dataset="cifar10", epochs=200, lr_step=40, batch_size=64)
    elif profile == "cpu":
        data = dict(dataset="cifar10-jpeg", n_per_class=50, n_test_per_class=50, epochs=100, lr_step=None,
                    lr_milestones=(70, 90), batch_size=16, log_epochs="log", flush_denormal=CPU_FLUSH_DENORMAL)
    else:
        data = dict(dataset="gaussian", n_per_class=4, n_test_per_class=2, epochs=2, lr_step=1, batch_size=16,
                    eval_batch_size=256)
    extra = dict(depth=4) if model == "mlp" else dict(stem="cifar")  # ResNet18_adapt (footnote 13)
    label = f"width {width}" if model == "mlp" else f"width x{width:g}"
    return ExperimentConfig(name=name, profile=profile, figure="fig5", label=label, model=model,
                            optimizer="sgd", lr=0.01, weight_decay=1e-4, normalization="imagenet",
                            random_labels=True, width=width, **extra, **data)


FIG6_VARIANTS = ("all", "eq4", "batch_sum", "authors")
_FIG6_LABELS = {"all": "decay on all parameters (eq. 2)",
                "eq4": "decay on (W, H, b), H term as eq. (4)",
                "batch_sum": "decay on (W, H, b), H term per batch (authors' scaling)",
                "authors": "decay on (W, b) only (authors' code: H term on F.normalize(h))"}


def _fig6(name, profile, ds, variant):
    if profile == "cpu" and variant == "authors":
        raise ValueError(f"{name!r} has no cpu profile: at the cpu scale the per-batch H term "
                         f"('batch_sum', effective lambda_H B/N ~ 1e-7) is already almost no feature decay, "
                         f"which is what the authors' code ran; the variant is in 'full'")
    if variant == "all":  # the same training as fig3-<ds>-sgd
        return _fig3(name, profile, ds, "sgd").replace(figure="fig6", label=_FIG6_LABELS[variant])
    base = _base(profile, ds, "sgd")
    base.pop("weight_decay", None)
    if profile == "full":
        base["batch_size"] = 64  # the authors' README for --sep_decay
    return ExperimentConfig(name=name, profile=profile, figure="fig6", label=_FIG6_LABELS[variant],
                            model="resnet18", optimizer="sgd", regularization="whb", lambda_W=0.01,
                            lambda_H=1e-5, lambda_b=0.01, feature_decay=variant, **base)


FIG7_VARIANTS = ("learned", "etf", "dk", "etf-dk")
_FIG7_LABELS = {"learned": "learned classifier", "etf": "fixed ETF classifier", "dk": "learned, d = K",
                "etf-dk": "fixed ETF, d = K"}


def _fig7(name, profile, ds, model, variant):
    K = 10
    kw = {}
    if variant in ("etf", "etf-dk"):
        kw["fixed_classifier"] = "etf"
    if variant in ("dk", "etf-dk"):
        kw["feature_dim"] = K
    label = _FIG7_LABELS[variant]
    if profile == "cpu":
        if model == "resnet50":
            raise ValueError(f"{name!r} has no cpu profile: a ResNet50 does not reach the terminal phase on "
                             f"one CPU core within the cpu profile's budget (use 'full')")
        base = _fig3(name, profile, ds, "sgd")
        return base.replace(figure="fig7", label=label, **kw)
    base = _base(profile, ds, "sgd")
    if profile == "full":
        base["batch_size"] = 128  # the authors' cmds.sh / args.py default
        if ds == "cifar10":  # --SOTA: 3x3 stride-1 stem and crop + flip augmentation
            kw.update(stem="cifar", augment=True)
    elif model == "resnet50":
        base.update(n_per_class=1, n_test_per_class=1, epochs=1, batch_size=10)
        kw.update(stem="cifar", augment=True)
    if model == "resnet50":
        base.pop("width", None)
    return ExperimentConfig(name=name, profile=profile, figure="fig7", label=label, model=model,
                            optimizer="sgd", **kw, **base)


_LOSS_LABELS = {"ce": ("ce", None, "cross-entropy"), "mse": ("mse", None, "MSE"),
                "ls": ("label_smoothing", 0.1, "label smoothing 0.1")}


def _loss_run(name, profile, which):
    loss, smoothing, label = _LOSS_LABELS[which]
    if profile == "full":
        raise ValueError(f"{name!r} has no full profile (a book-only experiment; use 'cpu' or 'smoke')")
    base = _fig3(name, profile, "mnist", "sgd")
    return base.replace(figure="losses", label=label, loss=loss, smoothing=smoothing)


_IMB_RATIOS = (1, 10, 50)


def _imbalance(name, profile, R):
    if profile == "full":
        raise ValueError(f"{name!r} has no full profile (a book-only experiment; use 'cpu' or 'smoke')")
    base = _fig3(name, profile, "mnist", "sgd")
    n = base.n_per_class
    counts = None if R == 1 else tuple([n] * 5 + [max(1, n // R)] * 5)
    return base.replace(figure="imbalance", label=f"R = {R}", class_counts=counts)


def _registry() -> dict:
    reg = {}
    for ds in ("mnist", "cifar10"):
        for opt in ("sgd", "adam", "lbfgs"):
            reg[f"fig3-{ds}-{opt}"] = (lambda p, n, ds=ds, opt=opt: _fig3(n, p, ds, opt))
    for model in ("mlp", "resnet18"):
        for i in range(4):
            reg[f"fig5-{model}-w{i + 1}"] = (lambda p, n, model=model, i=i: _fig5(n, p, model, i))
    for ds in ("mnist", "cifar10"):
        for v in FIG6_VARIANTS:
            reg[f"fig6-{ds}-{v}"] = (lambda p, n, ds=ds, v=v: _fig6(n, p, ds, v))
    for ds, model in (("mnist", "resnet18"), ("cifar10", "resnet18"), ("cifar10", "resnet50")):
        for v in FIG7_VARIANTS:
            reg[f"fig7-{ds}-{model}-{v}"] = (lambda p, n, ds=ds, model=model, v=v: _fig7(n, p, ds, model, v))
    for which in _LOSS_LABELS:
        reg[f"loss-mnist-{which}"] = (lambda p, n, w=which: _loss_run(n, p, w))
    for R in _IMB_RATIOS:
        reg[f"imb-mnist-r{R}"] = (lambda p, n, R=R: _imbalance(n, p, R))
    return reg


_REGISTRY = _registry()
_FIGURES = ("fig3", "fig4", "fig5", "fig6", "fig7", "loss", "imb")


def list_configs(figure: str | None = None, profile: str | None = None) -> list:
    """Names of all configurations, or of one figure (``"fig3"``...``"fig7"``, ``"loss"``,
    ``"imb"``; ``"fig4"`` is the accuracy view of the ``fig3`` runs); with ``profile``, only the
    names that exist in that profile."""
    if figure is None:
        names = list(_REGISTRY)
    else:
        fig = "fig3" if figure == "fig4" else figure
        names = [n for n in _REGISTRY if n.startswith(fig + "-")]
        if not names:
            raise ValueError(f"unknown figure {figure!r}; allowed: {', '.join(_FIGURES)}")
    if profile is not None:
        names = [n for n in names if has_profile(n, profile)]
    return names


def has_profile(name: str, profile: str) -> bool:
    """Whether the named run exists in ``profile`` (e.g. no ResNet50 in "cpu")."""
    try:
        get_config(name, profile)
    except ValueError:
        return False
    return True


def get_config(name: str, profile: str = "cpu") -> ExperimentConfig:
    """The :class:`ExperimentConfig` of a named run in a profile (``"smoke"``, ``"cpu"``, ``"full"``)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown configuration {name!r}; allowed: {', '.join(_REGISTRY)}")
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; allowed: {', '.join(PROFILES)}")
    return _REGISTRY[name](profile, name)
