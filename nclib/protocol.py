"""The protocol tables of the book's appendix: the paper, the authors' code and our profiles, side by side.

For each experiment of Section 4 (Figures 3-4, 5, 6, 7) :func:`protocol_table` returns one
pandas DataFrame whose rows are the settings of a run (:data:`ROWS`: data and preprocessing,
augmentation, model and stem, width, feature dimension, classifier, bias, initialisation, loss,
optimizer, batch size, epochs, schedule, weight decay, feature decay, seed, precision, NC
evaluation) and whose columns are

* ``paper`` -- what Zhu et al. (2021) state, with section / figure / footnote (by hand);
* ``authors' code`` -- what github:tding1/Neural-Collapse (commit 04ef586) does, with file and
  line (by hand);
* ``ours: full`` and ``ours: cpu`` -- **generated** from :func:`nclib.configs.get_config` and the
  defaults of :func:`nclib.train.train` each time the table is built (:func:`describe`), so
  the page cannot drift from the code;
* ``why they differ`` -- the reason wherever two columns differ (by hand).

Where the configurations of a figure differ in a setting, the generated cell lists the values
by what they depend on (e.g. "SGD: 256; Adam: 64; L-BFGS: 2048").
"""
from __future__ import annotations

import inspect
import itertools

from . import configs as C

__all__ = ["FIGURES", "ROWS", "AUTHORS_COMMIT", "describe", "generated_column", "protocol_table",
           "feature_decay_scales"]

#: The authors' repository at the commit the line numbers refer to.
AUTHORS_COMMIT = "04ef5860d4a8dd54aa159d2c800dce83f30490e6"
FIGURES = ("fig3", "fig5", "fig6", "fig7")
ROWS = ("data and preprocessing", "augmentation (where padding happens)", "model and stem", "width",
        "feature dimension d", "classifier", "bias", "initialisation", "loss", "optimizer and hyperparameters",
        "batch size", "epochs", "learning-rate schedule", "weight decay (on what)", "feature decay (scaling)",
        "seed", "precision", "NC evaluation")

_DATA = {"mnist": "MNIST", "cifar10": "CIFAR-10", "cifar10-jpeg": "CIFAR-10 (JPEG q75 copy)", "digits": "digits",
         "gaussian": "Gaussian mixture", "fashionmnist": "Fashion-MNIST", "cifar100": "CIFAR-100"}
_SIZES = {"mnist": (60000, 10000), "cifar10": (50000, 10000), "cifar10-jpeg": (50000, 10000)}
_KEY_LABELS = {"mnist": "MNIST", "cifar10": "CIFAR-10", "sgd": "SGD", "adam": "Adam", "lbfgs": "L-BFGS",
               "mlp": "MLP", "resnet18": "ResNet18", "mnist-resnet18": "MNIST ResNet18",
               "cifar10-resnet18": "CIFAR-10 ResNet18", "cifar10-resnet50": "CIFAR-10 ResNet50"}
_ABSENT = "(not in this profile)"
#: The normalisation each dataset gets when a configuration names none (nclib.data's defaults).
_DEFAULT_NORM = {"mnist": "mnist", "fashionmnist": "mnist", "cifar10": "cifar10", "cifar10-jpeg": "cifar10",
                 "cifar100": "cifar10", "digits": "digits"}


# ----------------------------------------------------------------------------- generated columns
def _train_defaults() -> dict:
    """The optimizer settings that are not configuration fields: :func:`nclib.train.train`'s defaults."""
    from . import train as T
    sig = inspect.signature(T.train)
    return {k: sig.parameters[k].default for k in ("momentum", "betas", "history_size", "max_iter")}


def _sizes(c) -> tuple:
    K = 10
    full = _SIZES.get(c.dataset, (None, None))
    n = full[0] if c.n_per_class is None else c.n_per_class * K
    nt = full[1] if c.n_test_per_class is None else c.n_test_per_class * K
    return n, nt


def _fmt_norm(name) -> str:
    from . import data as D
    mean, std = D.NORMALIZATIONS[name]
    return f"Normalize({', '.join(f'{m:g}' for m in mean)} / {', '.join(f'{s:g}' for s in std)})"


def _data(c) -> str:
    from . import data as D
    n, nt = _sizes(c)
    if c.n_per_class is None:
        size = f"all {n:,} train / {nt:,} test images"
    else:
        size = f"{c.n_per_class}/class train ({n:,}), {c.n_test_per_class}/class test ({nt:,})"
    norm = c.normalization or _DEFAULT_NORM[c.dataset]
    prep = ("Grayscale(3), PIL Resize(32), " if c.dataset in ("mnist", "fashionmnist") else "") + _fmt_norm(norm)
    text = f"{_DATA.get(c.dataset, c.dataset)}, {size}; {prep}"
    if c.random_labels:
        text += f"; exactly balanced random training labels (seed {c.seed}), true test labels"
    return text


def _augment(c) -> str:
    from . import data as D
    if not c.augment:
        return "none"
    fill = D.black_level(c.dataset, c.normalization)
    return ("RandomCrop(32, padding 4) + horizontal flip p 0.5, per batch on the device; the border is black: "
            f"({', '.join(f'{v:.3f}' for v in fill)}) = -mean/std after Normalize, the same as padding the raw "
            "image before Normalize")


def _model(c) -> str:
    if c.model == "mlp":
        return f"MLP: {c.depth} x [Linear, BatchNorm1d, ReLU], then the linear classifier"
    stem = ("3x3 stride-1 conv, no max-pool" if c.stem == "cifar"
            else "7x7 stride-2 conv + 3x3 max-pool (ImageNet stem)")
    return f"{'ResNet18' if c.model == 'resnet18' else 'ResNet50'} (torchvision's blocks); stem: {stem}"


def _channels(c) -> list:
    base = (64, 128, 256, 512)
    if c.model == "resnet18" and c.width not in (None, 1, 1.0):
        return [max(1, int(round(ch * c.width))) for ch in base]
    return list(base)


def _width(c) -> str:
    if c.model == "mlp":
        return f"{c.width} units per layer"
    ch = "-".join(str(x) for x in _channels(c))
    if c.model == "resnet50":
        return f"standard ({ch} bottleneck channels, x4 expansion)"
    return f"standard ({ch} channels)" if c.width in (None, 1, 1.0) else f"x{c.width:g}: {ch} channels"


def _feature_dim(c) -> int:
    if c.feature_dim is not None:
        return int(c.feature_dim)
    if c.model == "mlp":
        return int(c.width)
    return 2048 if c.model == "resnet50" else _channels(c)[-1]


def _classifier(c) -> str:
    if c.fixed_classifier == "etf":
        return "fixed simplex ETF sqrt(K/(K-1)) (I - 11^T/K) in the first K columns (eye(K, d)), frozen"
    return "learned (nn.Linear)"


def _init(c) -> str:
    if c.model == "mlp":
        return "PyTorch defaults"
    return "torchvision's: Kaiming-normal (fan-out) convs, BN weight 1 / bias 0, PyTorch default Linear"


def _loss(c) -> str:
    if c.loss == "ce":
        return "cross-entropy, mean over the batch"
    extra = f", smoothing {c.smoothing:g}" if c.smoothing else ""
    return f"{c.loss}{extra}, mean over the batch"


def _optimizer(c) -> str:
    d = _train_defaults()
    if c.optimizer == "sgd":
        return f"SGD lr {c.lr:g}, momentum {d['momentum']:g}"
    if c.optimizer == "adam":
        return f"Adam lr {c.lr:g}, betas ({d['betas'][0]:g}, {d['betas'][1]:g}), eps 1e-8"
    return (f"L-BFGS lr {c.lr:g}, history {d['history_size']}, max_iter {d['max_iter']} per batch, "
            f"strong-Wolfe line search")


def _schedule(c) -> str:
    if c.lr_milestones:
        return f"x{c.lr_gamma:g} at epochs {', '.join(str(m) for m in c.lr_milestones)}"
    if c.lr_step is None:
        return "none (constant)"
    return f"x{c.lr_gamma:g} every {c.lr_step} epochs (StepLR, per epoch)"


def _weight_decay(c) -> str:
    if c.regularization == "whb":
        return (f"none on the backbone; lambda_W = {c.lambda_W:g} on W, lambda_b = {c.lambda_b:g} on b "
                f"(terms of the loss)")
    how = "in the L-BFGS closure, 0.5 wd sum ||p||^2" if c.optimizer == "lbfgs" else "as the optimizer's L2 decay"
    return f"{c.weight_decay:g} on all trainable parameters (convs, BN, biases), {how}"


def feature_decay_scales(config) -> float:
    """The lambda_H that a configuration's feature term amounts to in eq. (4) (H term summed over
    all N samples), in expectation over batches: ``lambda_H`` ("eq4"), ``lambda_H B / N``
    ("batch_sum"), 0 ("authors": the term has zero gradient) and 0 without feature decay."""
    c = C.check_config(config)
    if c.regularization != "whb" or c.feature_decay == "authors":
        return 0.0
    if c.feature_decay == "eq4":
        return float(c.lambda_H)
    n, _ = _sizes(c)
    return float(c.lambda_H) * c.batch_size / n


def _feature_decay(c) -> str:
    if c.regularization != "whb":
        return "none"
    lh = f"lambda_H = {c.lambda_H:g}"
    if c.feature_decay == "eq4":
        return f"{lh}: (lambda_H/2)(N/B) sum_batch ||h_i||^2 on the raw features = eq. (4) in expectation"
    if c.feature_decay == "batch_sum":
        return (f"{lh}: (lambda_H/2) sum_batch ||h_i||^2 on the raw features = eq. (4) with lambda_H B/N "
                f"= {feature_decay_scales(c):.2g}")
    return f"{lh} on F.normalize(h): the constant lambda_H B/2, zero gradient (no feature decay)"


def _precision(c) -> str:
    return {"fp32": "float32, TF32 off", "tf32": "TF32 matmuls and convolutions",
            "bf16": "bf16 autocast of the training forward, fp32 weights and metrics"}[c.precision]


def _nc_eval(c) -> str:
    from . import train as T
    n, nt = _sizes(c)
    le = c.log_epochs
    if le == "all":
        when = f"every epoch 1-{c.epochs}"
    elif le == "log":
        when = f"{len(T.log_spaced_epochs(c.epochs))} log-spaced epochs in 1-{c.epochs}"
    elif le == "last":
        when = f"epoch {c.epochs}"
    else:
        when = f"epochs {le}"
    return (f"training set ({n:,}) and test set ({nt:,}); eval mode, no augmentation, fp32 forward, metrics in "
            f"float64; {when}")


_DESCRIBE = {
    "data and preprocessing": _data, "augmentation (where padding happens)": _augment, "model and stem": _model,
    "width": _width, "feature dimension d": lambda c: str(_feature_dim(c)), "classifier": _classifier,
    "bias": lambda c: "learned", "initialisation": _init, "loss": _loss,
    "optimizer and hyperparameters": _optimizer, "batch size": lambda c: str(c.batch_size),
    "epochs": lambda c: str(c.epochs), "learning-rate schedule": _schedule, "weight decay (on what)": _weight_decay,
    "feature decay (scaling)": _feature_decay, "seed": lambda c: str(c.seed), "precision": _precision,
    "NC evaluation": _nc_eval,
}


def describe(config) -> dict:
    """Every setting of :data:`ROWS` of one configuration, as text, from its fields and the
    defaults of :func:`nclib.train.train`."""
    c = C.check_config(config)
    return {row: _DESCRIBE[row](c) for row in ROWS}


def _keys(name: str) -> dict:
    """What a configuration name varies over within its figure."""
    parts = name.split("-")
    if parts[0] == "fig3":
        return {"dataset": parts[1], "optimizer": parts[2]}
    if parts[0] == "fig5":
        return {"model": parts[1], "width": parts[2]}
    if parts[0] == "fig6":
        return {"dataset": parts[1], "variant": "-".join(parts[2:])}
    if parts[0] == "fig7":
        return {"setup": f"{parts[1]}-{parts[2]}", "variant": "-".join(parts[3:])}
    raise ValueError(f"no protocol table for {name!r}; figures: {', '.join(FIGURES)}")


def _label(values: tuple) -> str:
    return " ".join(_KEY_LABELS.get(v, v) for v in values)


def _grouping(names: list, keys: dict, value) -> dict | None:
    """Value -> labels, grouping ``names`` by the fewest name parts that determine ``value(name)``."""
    dims = list(keys[names[0]])
    for r in range(0, len(dims) + 1):
        for sub in itertools.combinations(dims, r):
            by: dict = {}
            if all(by.setdefault(tuple(keys[n][d] for d in sub), value(n)) == value(n) for n in names):
                groups: dict = {}
                for k, v in by.items():
                    groups.setdefault(v, []).append(_label(k))
                return groups
    return None  # unreachable: the full name determines the value


def _summarise(values: dict, keys: dict) -> str:
    """One cell from the values of several configurations (None: not in the profile): the common
    value, or the values by the fewest name parts (dataset, optimizer, variant...) that determine
    them; configurations absent from the profile are named at the end."""
    present = [n for n, v in values.items() if v is not None]
    absent = [n for n, v in values.items() if v is None]
    if not present:
        return _ABSENT
    groups = _grouping(present, keys, values.get)
    if len(groups) == 1:
        text = next(iter(groups))
    else:
        text = "; ".join(f"{', '.join(labels)}: {v}" for v, labels in groups.items())
    if absent:
        missing = _grouping(list(values), keys, lambda n: values[n] is None)[True]
        text += f" [not in this profile: {', '.join(missing)}]"
    return text


def generated_column(figure: str, profile: str) -> dict:
    """Row -> text of one profile's column for a figure (``"fig3"``, ``"fig5"``, ``"fig6"``, ``"fig7"``),
    from the configurations themselves (configurations absent from the profile are marked)."""
    if figure not in FIGURES:
        raise ValueError(f"unknown figure {figure!r}; allowed: {', '.join(FIGURES)}")
    names = C.list_configs(figure)
    descs = {n: (describe(C.get_config(n, profile)) if C.has_profile(n, profile) else None) for n in names}
    keys = {n: _keys(n) for n in names}
    return {row: _summarise({n: (d[row] if d else None) for n, d in descs.items()}, keys) for row in ROWS}


# ----------------------------------------------------------------------------- hand-written columns
# (paper, authors' code, why they differ); file:line refer to AUTHORS_COMMIT.  The cpu column's
# numbers are not repeated here (they are generated); these say why it differs.
_CPU_SIZE = "cpu: narrower networks and balanced subsets, so that a run fits one CPU core"
_CPU_RECIPE = "cpu: the cpu recipe, chosen so that the small runs reach the terminal phase"
_SAME_FIG3_EVAL = (
    "NC1-NC4, eqs. (7)-(10), of the training features (Sec. 4, 'Metrics'); Fig. 4: train and test accuracy",
    "validate_NC.py: every epoch 1-200 reloaded from its checkpoint (l.191-194), model.eval(), the un-augmented "
    "training set (l.162), features = input of fc (pre-hook, l.172), float32 sums, scipy pinv (l.209)",
    "same set, mode and epochs; our metrics are float64 with a rank-(K-1) pseudo-inverse (no false floor), and we "
    "add the test set's NC. cpu: log-spaced epochs of shorter runs")
_PRECISION = (
    "not stated",
    "torch 1.6, CUDA 11.0 (README l.13-20): float32; TF32 came with torch 1.7",
    "full = the authors (strict float32); precision='tf32' or 'bf16' are opt-in switches used by no "
    "configuration; what they change in NC1-NC4 has not been measured (no GPU in this project)")
_SEED = (
    "not stated",
    "6 (args.py:27), set with cudnn.deterministic (utils.py:9-17, train_1st_order.py:92); "
    "train_2nd_order.py sets no seed at all",
    "ours 0 everywhere; the paper shows one run per setting, any seed will do")
_INIT_TV = (
    "not stated",
    "models/resnet.py:206-211: Kaiming-normal (fan-out) convs, BN 1 / 0, default Linear (= torchvision)",
    "")
_BIAS = ("learned (eq. (1); fn. 16)", "fc bias=True unless --no-bias (args.py:16; not used for these runs)", "")
_LOSS = ("cross-entropy, eq. (2)", "nn.CrossEntropyLoss, batch mean (utils.py:71-73)", "")
_NONE_FD = ("none", "none (no --sep_decay)", "")
_STEP = ("lr x 0.1 every 40 epochs (Sec. 4, 'Setup')",
         "StepLR(40, 0.1) stepped per epoch (args.py:44-46, utils.py:51-57, train_1st_order.py:67)", "")
_EPOCHS = ("200 (Sec. 4, 'Setup')", "200 (args.py:37)", "")
_WD = ("5e-4 on all parameters Theta, eq. (2) (Sec. 4, 'Setup')",
       "optimizer weight_decay 5e-4 on every trainable parameter (args.py:48, utils.py:20-31)", "")
_NO_AUG = ("none in Secs. 4.1-4.2 (Sec. 4, 'Setup')", "none without --SOTA (datasets.py:39-42, 49-63)", "")

HAND = {
    "fig3": {
        "data and preprocessing": (
            "MNIST and CIFAR-10, normalised channel-wise by mean and std (Sec. 4, 'Setup')",
            "datasets.py:39-63: CIFAR-10 ToTensor + Normalize((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)); "
            "MNIST Grayscale(3), Resize(32), Normalize(0.1307, 0.3081); whole training sets",
            "full = the authors (the original CIFAR-10 is needed: the trial uses its JPEG copy when it is absent). "
            "cpu: balanced subsets, and the JPEG q75 copy of CIFAR-10 (the original is not on the build machine)"),
        "augmentation (where padding happens)": _NO_AUG,
        "model and stem": ("ResNet18 [18] 'without modification' (Sec. 4.1)",
                           "models/resnet.py:182-187, 273-274: 7x7 stride-2 conv + max-pool (no --SOTA)", ""),
        "width": ("standard", "64-128-256-512 (models/resnet.py:189-196)", _CPU_SIZE),
        "feature dimension d": ("512", "512 (models/resnet.py:198)", _CPU_SIZE),
        "classifier": ("learned", "nn.Linear (models/resnet.py:198)", ""),
        "bias": _BIAS, "initialisation": _INIT_TV, "loss": _LOSS,
        "optimizer and hyperparameters": (
            "SGD momentum 0.9, lr 0.05; Adam betas (0.9, 0.999), lr 0.001; L-BFGS memory 10, lr 0.1, strong-Wolfe "
            "line search (Sec. 4, 'Setup')",
            "utils.py:27-46 (Adam eps 1e-8; L-BFGS torch's default max_iter 20); README l.31, 37, 43: lr 0.05 / "
            "0.001 / 0.1, history 10; but cmds.sh l.19, 23 run Adam with lr 0.0001",
            "Adam lr: the paper and the README say 1e-3, cmds.sh 1e-4; we follow the two that agree"),
        "batch size": (
            "not stated",
            "README l.31, 37, 43: SGD 256, Adam 64, L-BFGS 2048; cmds.sh: SGD without --batch_size, i.e. args.py:38's "
            "128 (l.8, 12, run names 'batchsize_128'), Adam 64, L-BFGS 2048",
            "SGD: we follow the README (256), the repository's documented way to reproduce; cmds.sh (128) is a "
            "file of commented-out commands; either could be the figure's. " + _CPU_RECIPE),
        "epochs": ("200 (Sec. 4, 'Setup')", "200 (args.py:37)",
                   _CPU_RECIPE),
        "learning-rate schedule": (
            "SGD, Adam: lr x 0.1 every 40 epochs; L-BFGS: none stated (Sec. 4, 'Setup')",
            "StepLR(40, 0.1) per epoch (utils.py:51-57, train_1st_order.py:67); train_2nd_order.py has no scheduler",
            _CPU_RECIPE),
        "weight decay (on what)": (
            "5e-4 on all parameters Theta, eq. (2) (Sec. 4, 'Setup')",
            "5e-4 (args.py:48): optimizer weight_decay on every trainable parameter (utils.py:20-31); L-BFGS: "
            "0.5 wd sum ||p||^2 in the closure (train_2nd_order.py:11-18, 38)",
            _CPU_RECIPE),
        "feature decay (scaling)": _NONE_FD, "seed": _SEED, "precision": _PRECISION, "NC evaluation": _SAME_FIG3_EVAL,
    },
    "fig5": {
        "data and preprocessing": (
            "CIFAR-10 with every training label replaced by a random one (Sec. 4.2)",
            "datasets.py:65-75: ImageNet mean/std; labels from generate_random_label.py:12-14: a permutation of "
            "exactly 5,000 per class (unseeded np.random); test labels random too",
            "ours: the same balanced labels from seed 0, stored with the results; test labels stay true (Fig. 5 "
            "shows training metrics only). " + _CPU_SIZE),
        "augmentation (where padding happens)": ("none", "none (datasets.py:67-70)", ""),
        "model and stem": (
            "MLP of depth 4; ResNet18 with its width changed as in [15] (fn. 13)",
            "README l.71: --model MLP | ResNet18_adapt; models/mlp.py:11-16 ([Linear, BN1d, ReLU] x depth; "
            "args.py:23 default depth 6); models/res_adapt.py:75, 93, 98: 3x3 stride-1 conv, no max-pool",
            ""),
        "width": (
            "'various feature width' (values only in the figure's legend, not in the text)",
            "--width k: MLP units; ResNet18_adapt channels k-2k-4k-8k (models/res_adapt.py:73-81; args.py:22 "
            "default 1024)",
            "ResNet18: our multiplier x w is k = 64 w (x0.125 -> k = 8 ... x1 -> k = 64); the paper's legend "
            "values were not checked here. cpu: narrower networks"),
        "feature dimension d": ("the width", "MLP: k; ResNet18_adapt: 8k (models/res_adapt.py:81)", ""),
        "classifier": ("learned", "nn.Linear", ""),
        "bias": _BIAS,
        "initialisation": (
            "not stated",
            "no init code in models/res_adapt.py or models/mlp.py: PyTorch defaults (Kaiming-uniform, a = sqrt(5))",
            "OPEN: our ResNet18 uses torchvision's conv init, ResNet18_adapt PyTorch's default; requested "
            "(notes/requests-H5.md). The MLPs agree"),
        "loss": _LOSS,
        "optimizer and hyperparameters": ("SGD lr 0.01 (Sec. 4.2)", "README l.71: SGD lr 0.01; momentum 0.9 "
                                          "(utils.py:29)", ""),
        "batch size": ("not stated", "64 (README l.71)", _CPU_RECIPE),
        "epochs": ("not stated", "200 (args.py:37)", _CPU_RECIPE),
        "learning-rate schedule": ("not stated", "StepLR(40, 0.1) (args.py:44-46, utils.py:51-57)",
                                   _CPU_RECIPE),
        "weight decay (on what)": ("1e-4 (Sec. 4.2)", "--weight_decay 1e-4 on every parameter (README l.71)", ""),
        "feature decay (scaling)": _NONE_FD, "seed": (
            _SEED[0], "6 for training (args.py:27); the random labels unseeded (generate_random_label.py:12)",
            _SEED[2]),
        "precision": _PRECISION,
        "NC evaluation": (
            "NC1 (log scale), NC2, NC3 and the training error (Fig. 5 caption)",
            "validate_NC.py with --dataset cifar10_random (README l.73): every epoch, eval mode, training set",
            "same; we add NC4 and the test set. cpu: log-spaced epochs"),
    },
    "fig6": {
        "data and preprocessing": (
            "MNIST and CIFAR-10 (Sec. 4.2)", "as for Fig. 3 (datasets.py:39-63)",
            "cpu: balanced subsets and the JPEG copy of CIFAR-10"),
        "augmentation (where padding happens)": _NO_AUG,
        "model and stem": ("ResNet18 (Sec. 4.2)", "README l.79 --model; args.py:15 default resnet18 (ImageNet stem)",
                           ""),
        "width": ("standard", "64-128-256-512", _CPU_SIZE),
        "feature dimension d": ("512", "512", _CPU_SIZE),
        "classifier": ("learned W", "nn.Linear", ""),
        "bias": _BIAS, "initialisation": _INIT_TV, "loss": _LOSS,
        "optimizer and hyperparameters": ("SGD, as in Sec. 4.1", "README l.79: SGD lr 0.05", ""),
        "batch size": (
            "not stated",
            "README l.79: 64 for --sep_decay runs; the decay-on-Theta curve is Fig. 3's SGD run (Sec. 4.2 quotes "
            "Fig. 4's accuracies for it)",
            "full = the README for both. " + _CPU_RECIPE),
        "epochs": _EPOCHS[:2] + (_CPU_RECIPE,),
        "learning-rate schedule": _STEP[:2] + (_CPU_RECIPE,),
        "weight decay (on what)": (
            "on Theta: 5e-4, eq. (2); on (H, W): lambda_W = lambda_b = 0.01 and nothing on the backbone, eq. (4) "
            "(Fig. 6 caption)",
            "--sep_decay: optimizer weight_decay 0 (utils.py:22-23); loss += wd/2 (||W||^2 + ||b||^2), --weight_decay "
            "as lambda_W = lambda_b (train_1st_order.py:18-25)",
            _CPU_RECIPE),
        "feature decay (scaling)": (
            "lambda_H = 1e-5 (Fig. 6 caption) on ||H||_F^2 summed over all N samples, the cross-entropy averaged "
            "over N (eq. (4))",
            "train_1st_order.py:24-25: (lambda_H/2) sum_batch ||features||^2 with features = F.normalize(x) "
            "(models/resnet.py:283): every row has norm 1, so the term is the constant lambda_H B/2 with zero "
            "gradient",
            "three variants: 'eq4' is the paper's equation, 'batch_sum' the code's scaling on raw features, "
            "'authors' what the code ran, i.e. what the paper's Figure 6 shows. cpu: no 'authors' run (its "
            "'batch_sum' is already ~1e-7 effective)"),
        "seed": _SEED, "precision": _PRECISION,
        "NC evaluation": ("NC1-NC4 and test accuracy (Fig. 6; Sec. 4.2: 99.57% / 77.92%)",
                          _SAME_FIG3_EVAL[1], _SAME_FIG3_EVAL[2]),
    },
    "fig7": {
        "data and preprocessing": (
            "MNIST (ResNet18), CIFAR-10 (ResNet18, ResNet50) (Sec. 4.3)", "as for Fig. 3 (datasets.py:28-63)",
            "cpu: balanced subsets and the JPEG copy of CIFAR-10; no ResNet50"),
        "augmentation (where padding happens)": (
            "only for CIFAR-10 ResNet50 (Fig. 7 caption; Sec. 4.3); fn. 15: pad 4 pixels 'for the color-normalized "
            "images', random 32x32 crop, flip p 0.5",
            "--SOTA: RandomCrop(32, padding=4) + flip on the PIL image before ToTensor / Normalize, so the border "
            "is black (datasets.py:30-37); cmds.sh l.100-108 run CIFAR-10 ResNet18 and ResNet50 with --SOTA",
            "CIFAR-10 ResNet18: the caption says no augmentation, the code's Fig. 7 runs (cmds.sh l.100-103, "
            "validated at l.110-113) use --SOTA; ours follows the code (OPEN: cmds.sh also has non-SOTA ResNet18 "
            "rows, l.12, 46, 81, 94). Padding: the code's black, not a literal reading of fn. 15 (zero = mean colour)"),
        "model and stem": (
            "ResNet18; 'a modified version of ResNet50 [106]' for CIFAR-10 (Sec. 4, fn. 10)",
            "--SOTA: 3x3 stride-1 conv1, no max-pool (models/resnet.py:178-180, 273-274); otherwise the ImageNet stem",
            "as the code (stem with --SOTA)"),
        "width": ("standard", "standard", _CPU_SIZE),
        "feature dimension d": (
            "the network's own and d = K = 10 (20.70% / 4.45% fewer parameters, Sec. 4.3)",
            "--fixdim 10: the last block of layer4 outputs K channels, its shortcut a 1x1 conv + BN, fc Linear(K, K) "
            "(models/resnet.py:194-203, 255-264)",
            _CPU_SIZE),
        "classifier": (
            "learned, or fixed W^T = sqrt(K/(K-1)) P (I - 11^T/K), P the first K columns of I_d (fn. 14)",
            "--ETF_fc: that matrix, requires_grad False (models/resnet.py:212-220); BUG: cmds.sh l.76-78, 81-83 "
            "(run names 'ETFfc_false ... fixdim_true') also pass --ETF_fc",
            "ours: the learned d = K runs are learned, as the paper's text says; see the note on cmds.sh below"),
        "bias": _BIAS, "initialisation": _INIT_TV, "loss": _LOSS,
        "optimizer and hyperparameters": ("SGD 'with the same settings as before' (Sec. 4.3)",
                                          "SGD lr 0.05 (cmds.sh l.8, 42, 76, 89, 100-108; README l.87-97)", ""),
        "batch size": ("not stated", "128: no --batch_size in cmds.sh or README l.87-97, so args.py:38's default",
                       _CPU_RECIPE),
        "epochs": _EPOCHS[:2] + (_CPU_RECIPE,),
        "learning-rate schedule": _STEP[:2] + (_CPU_RECIPE,),
        "weight decay (on what)": _WD[:2] + (_CPU_RECIPE,),
        "feature decay (scaling)": _NONE_FD, "seed": _SEED, "precision": _PRECISION,
        "NC evaluation": (
            "NC1, NC3, train and test accuracy (Fig. 7 caption)",
            "validate_NC.py: the un-augmented training set also for --SOTA runs (l.162 calls make_dataset without "
            "SOTA), eval mode, every epoch",
            _SAME_FIG3_EVAL[2]),
    },
}


def protocol_table(figure: str):
    """The protocol table of one experiment (``"fig3"`` = Figures 3-4, ``"fig5"``, ``"fig6"``,
    ``"fig7"``) as a pandas DataFrame indexed by setting (:data:`ROWS`), with the columns
    ``paper``, ``authors' code``, ``ours: full``, ``ours: cpu``, ``why they differ``."""
    import pandas as pd
    if figure not in FIGURES:
        raise ValueError(f"unknown figure {figure!r}; allowed: {', '.join(FIGURES)}")
    full, cpu = generated_column(figure, "full"), generated_column(figure, "cpu")
    hand = HAND[figure]
    rows = [dict(setting=r, paper=hand[r][0], **{"authors' code": hand[r][1]}, **{"ours: full": full[r]},
                 **{"ours: cpu": cpu[r]}, **{"why they differ": hand[r][2]}) for r in ROWS]
    return pd.DataFrame(rows).set_index("setting")
