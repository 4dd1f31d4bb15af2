"""The paper's training protocol with neural-collapse tracking (Section 4, eqs. (2), (4), (7)-(10)).

One function, :func:`train`, runs the experiments of Section 4 of Zhu et al. (2021):

* **Optimizers** (Section 4, "Setup"): SGD with momentum 0.9, Adam with betas (0.9, 0.999),
  L-BFGS with history 10, a strong-Wolfe line search and torch's ``max_iter=20`` iterations per
  step.  Default learning rates and batch sizes are the authors' (:data:`PAPER_DEFAULTS`:
  SGD lr 0.05 batch 256, Adam lr 1e-3 batch 64, L-BFGS lr 0.1 batch 2048).  SGD and Adam
  multiply the learning rate by 0.1 every 40 epochs (StepLR, stepped once per epoch);
  L-BFGS has no schedule.  Only trainable parameters are handed to the optimizer, so a
  frozen ETF classifier is neither updated nor decayed.
* **Regularisation**, two modes:

  - ``"all"``: weight decay on all trainable parameters, the ``lambda/2 ||Theta||^2`` of
    eq. (2).  SGD and Adam get it as the optimizer's (coupled, L2) ``weight_decay``, whose
    gradient ``wd * p`` is that of ``0.5 * wd * ||p||^2``; L-BFGS gets the term
    ``0.5 * wd * sum_p ||p||^2`` inside its closure, so that the line search sees it.
  - ``"whb"``: decay on the last layer and the features only, eq. (4) with the network's
    penultimate features as H (Figure 6): no decay on the backbone and the minibatch loss

    .. math::

       \\frac1B\\sum_{i\\in\\mathcal B} \\mathcal L_{CE}(W h_i + b, y_i)
       + \\frac{\\lambda_W}{2}\\|W\\|_F^2 + \\frac{\\lambda_b}{2}\\|b\\|_2^2
       + \\frac{\\lambda_H}{2}\\,\\frac{N}{B}\\sum_{i\\in\\mathcal B}\\|h_i\\|_2^2 .

    **Scaling of the H term.** Eq. (4) averages the cross-entropy over the N training samples
    but *sums* ``||h_i||^2`` over them: ``f = (1/N) sum_i CE_i + lambda_H/2 ||H||_F^2 + ...``
    (the paper's H is d x N; here H is N x d, features are rows).  A uniformly drawn batch of
    size B gives the unbiased estimate above, ``N lambda_H / 2`` times the batch *mean* of
    ``||h_i||^2`` (:func:`feature_decay`): its expectation over batches is exactly eq. (4),
    so lambda_H means what it means in the theory (e.g. the condition
    ``K sqrt(n lambda_W lambda_H) < 1`` for a nonzero minimiser, ANCHORS.md part 4).
    ``lambda_H/2 * mean_i ||h_i||^2`` alone would be eq. (4) with ``lambda_H / N``;
    to get that, pass ``lambda_H / N``.  The H term penalises the raw features ``h_i``.
    (The authors' run penalised ``F.normalize(h)``, whose rows all have norm 1: a constant
    with zero gradient.  Ours has gradient ``N lambda_H / B * h_i``; the tests check it.)
    With a frozen classifier the W term is a constant and is left out.

* **Tracking**: at every logged epoch (``log_epochs``: every epoch, log-spaced, or a list),
  one eval-mode pass over the training set feeds the features and logits to
  :class:`nclib.metrics.NCAccumulator` (NC1-NC4 of eqs. (7)-(10), train accuracy, in
  float64), and one pass over the test set gives the test accuracy and loss.  There is no
  extra forward per training step: the running loss and accuracy of an epoch come from the
  training forward's logits, accumulated on the device (no per-step ``.item()``).
* **Robustness**: a checkpoint of the latest state (model, optimizer, scheduler, the global
  torch/CUDA/numpy/python RNG states, the data-order generator, history, epoch) is written
  atomically (temporary file + ``os.replace``) after every epoch; calling :func:`train` again
  with the same checkpoint path and settings continues from it, and on the CPU reproduces
  the uninterrupted run bit for bit.  A NaN or inf loss (checked once per epoch, on a tensor
  accumulated on the device) raises :class:`TrainingDiverged` naming the epoch; the model is
  put back to the last good state and the checkpoint on disk is left untouched.

Options recorded in the history: ``bf16`` (bf16 autocast of the training forward with fp32
weights; metrics always come from an fp32 forward), ``compile`` (``torch.compile`` of the
training forward), the TF32 flags, the device.  Both ``bf16`` and ``compile`` are off by
default.
"""
from __future__ import annotations

import copy
import math
import os
import random
import time

import numpy as np
import torch
import torch.nn.functional as F

from .metrics import NCAccumulator

__all__ = [
    "PAPER_DEFAULTS",
    "OPTIMIZERS",
    "REGULARIZATIONS",
    "TrainingDiverged",
    "resolve_device",
    "log_spaced_epochs",
    "feature_decay",
    "make_optimizer",
    "make_scheduler",
    "evaluate",
    "train",
]

#: The authors' learning rates, batch sizes and schedules (paper Section 4; ANCHORS.md part 1).
PAPER_DEFAULTS = {
    "sgd": dict(lr=0.05, batch_size=256, lr_step=40),
    "adam": dict(lr=1e-3, batch_size=64, lr_step=40),
    "lbfgs": dict(lr=0.1, batch_size=2048, lr_step=None),
}
OPTIMIZERS = tuple(PAPER_DEFAULTS)
REGULARIZATIONS = ("all", "whb")
_CHECKPOINT_FORMAT = 1
_RUN_INFO = ("device", "device_name", "tf32_matmul", "tf32_cudnn")  # recorded, not compared on resume


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or inf.  ``epoch`` is the epoch (1-based) where it happened;
    ``history`` holds the records of the epochs before it; ``checkpoint`` the last good one."""

    def __init__(self, epoch: int, history: dict, checkpoint=None):
        self.epoch = epoch
        self.history = history
        self.checkpoint = checkpoint
        where = f"; the last good state (epoch {epoch - 1}) is in {checkpoint}" if checkpoint else ""
        super().__init__(
            f"training diverged: the loss became NaN/inf during epoch {epoch}{where}. "
            f"Lower the learning rate or check the data."
        )


# ----------------------------------------------------------------------------- small helpers
def resolve_device(device=None) -> torch.device:
    """``None``/``"auto"`` -> cuda if available, else mps, else cpu; or a name like ``"cuda:1"``."""
    if isinstance(device, torch.device):
        dev = device
    elif device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"unknown device {device!r}; allowed: 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r} was asked for but MPS is not available")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {device!r}; allowed: 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'")
    return dev


def log_spaced_epochs(epochs: int, num: int = 30) -> list:
    """About ``num`` epochs in ``1..epochs``, evenly spaced on a log scale, always with 1 and ``epochs``."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    pts = np.unique(np.round(np.geomspace(1, epochs, max(int(num), 2))).astype(int))
    return sorted(set(int(p) for p in pts) | {1, int(epochs)})


def _log_epoch_list(log_epochs, epochs: int) -> list:
    if log_epochs is None or (isinstance(log_epochs, str) and log_epochs == "all"):
        return list(range(1, epochs + 1))
    if isinstance(log_epochs, str):
        if log_epochs == "log":
            return log_spaced_epochs(epochs)
        if log_epochs == "last":
            return [epochs]
        raise ValueError(f"log_epochs={log_epochs!r}; allowed: 'all', 'log', 'last', an int step or a list of epochs")
    if isinstance(log_epochs, (int, np.integer)):
        if log_epochs < 1:
            raise ValueError(f"log_epochs as a step must be >= 1, got {log_epochs}")
        return sorted(set(range(int(log_epochs), epochs + 1, int(log_epochs))) | {epochs})
    out = sorted(set(int(e) for e in log_epochs))
    if not out or out[0] < 0 or out[-1] > epochs:
        raise ValueError(f"log_epochs must lie in 0..{epochs} (0 = before training), got {list(log_epochs)}")
    return out


def feature_decay(h: torch.Tensor, lambda_H: float, n_train: int) -> torch.Tensor:
    """The H term of eq. (4) estimated on a batch: ``(lambda_H/2) (N/B) sum_i ||h_i||^2``.

    ``h`` is the batch of raw penultimate features, (B, d).  Its expectation over uniformly
    drawn batches is ``lambda_H/2 ||H||_F^2`` of eq. (4) over all N training samples (see the
    module docstring for why this scaling).  Gradient: ``N lambda_H / B * h``.
    """
    return 0.5 * float(lambda_H) * float(n_train) * h.float().pow(2).sum(1).mean()


def _classifier(model):
    fc = getattr(model, "classifier", None)
    if fc is None or not hasattr(fc, "weight"):
        raise ValueError("the model must expose its last layer as `model.classifier` (an nn.Linear(d, K))")
    if not callable(getattr(model, "features", None)):
        raise ValueError("the model must expose its penultimate features as `model.features(x) -> (B, d)`")
    return fc


def _forward(model, x):
    h = model.features(x)
    return h, model.classifier(h)


def make_optimizer(name: str, params, *, lr: float, weight_decay: float = 0.0, momentum: float = 0.9,
                   betas=(0.9, 0.999), history_size: int = 10, max_iter: int = 20):
    """The paper's optimizers (Section 4, "Setup"): ``"sgd"``, ``"adam"`` or ``"lbfgs"``.

    ``weight_decay`` goes to SGD/Adam as coupled L2 decay; L-BFGS takes none here (its decay
    is the ``0.5 wd ||p||^2`` term of the closure, eq. (2)).
    """
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=1e-8, weight_decay=weight_decay)
    if name == "lbfgs":
        return torch.optim.LBFGS(params, lr=lr, history_size=history_size, max_iter=max_iter,
                                 line_search_fn="strong_wolfe")
    raise ValueError(f"unknown optimizer {name!r}; allowed: {OPTIMIZERS}")


def make_scheduler(optimizer, lr_step, lr_gamma: float = 0.1):
    """StepLR: learning rate x ``lr_gamma`` every ``lr_step`` epochs (Section 4); None for no schedule."""
    if lr_step is None:
        return None
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(lr_step), gamma=lr_gamma)


@torch.no_grad()
def evaluate(model, X, y, *, num_classes: int, batch_size: int = 1024, nc: bool = True) -> dict:
    """One eval-mode fp32 pass over ``(X, y)``: accuracy, mean cross-entropy and, if ``nc``,
    NC1-NC4 (eqs. (7)-(10)) and the extras through :class:`nclib.metrics.NCAccumulator`.

    Returns a flat dict (``accuracy``, ``loss``, ``nc1``...``nc4``, extras, ``feature_norm``:
    the mean ``||h_i||``, ``W_norm``: ``||W||_F``).  The model's train/eval mode is restored.
    """
    fc = _classifier(model)
    was_training = model.training
    model.eval()
    acc = NCAccumulator(num_classes) if nc else None
    loss_sum = torch.zeros((), dtype=torch.float64, device=X.device)
    correct = torch.zeros((), dtype=torch.long, device=X.device)
    hnorm = torch.zeros((), dtype=torch.float64, device=X.device)
    try:
        for i in range(0, X.shape[0], batch_size):
            xb, yb = X[i:i + batch_size], y[i:i + batch_size]
            h, logits = _forward(model, xb)
            h, logits = h.float(), logits.float()
            loss_sum += F.cross_entropy(logits, yb, reduction="sum").double()
            correct += (logits.argmax(1) == yb).sum()
            hnorm += h.double().norm(dim=1).sum()
            if acc is not None:
                acc.update(h, yb, logits=logits)
    finally:
        model.train(was_training)
    n = X.shape[0]
    out = {"accuracy": int(correct) / n, "loss": float(loss_sum) / n, "feature_norm": float(hnorm) / n,
           "W_norm": float(fc.weight.detach().double().norm())}
    if acc is not None:
        b = fc.bias if fc.bias is not None else torch.zeros(fc.weight.shape[0], device=fc.weight.device)
        m = acc.compute(fc.weight.detach(), b.detach()).to_dict()
        m.pop("accuracy")  # the same count as `correct`
        out.update(m)
    return out


# ----------------------------------------------------------------------------- RNG and checkpoints
def _rng_state(gen: torch.Generator) -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])),
        "python": random.getstate(),
        "data": gen.get_state(),
    }


def _set_rng_state(state: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy(), n[2], n[3], n[4]))
    random.setstate(_tuplify(state["python"]))
    gen.set_state(state["data"])


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x


def _atomic_save(obj, path) -> None:
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _load_checkpoint(path):
    # on the CPU: RNG states must stay CPU ByteTensors; load_state_dict moves the rest to the device
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"checkpoint {path} cannot be read ({exc}); delete it to start afresh") from exc


def _settings_diff(a: dict, b: dict) -> list:
    keys = sorted(set(a) | set(b))
    return [f"{k}: checkpoint {a.get(k)!r} vs now {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


def _check_data(X, y, name):
    if not isinstance(X, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ValueError(f"{name} must be a pair of torch tensors (X, y)")
    if X.ndim < 2 or y.ndim != 1 or X.shape[0] != y.shape[0]:
        raise ValueError(f"{name}: X must be (N, ...) and y (N,) with the same N; got {tuple(X.shape)} and {tuple(y.shape)}")
    if X.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if y.dtype.is_floating_point:
        raise ValueError(f"{name}: labels must be integers, got {y.dtype}")


# ----------------------------------------------------------------------------- the engine
def train(model, train_data, test_data=None, *, num_classes: int | None = None, optimizer: str = "sgd",
          epochs: int = 200, lr: float | None = None, batch_size: int | None = None,
          lr_step: int | None | str = "default", lr_gamma: float = 0.1, momentum: float = 0.9,
          betas=(0.9, 0.999), history_size: int = 10, max_iter: int = 20,
          regularization: str = "all", weight_decay: float = 5e-4,
          lambda_W: float = 0.01, lambda_H: float = 1e-5, lambda_b: float = 0.01,
          augment: bool = False, log_epochs="all", eval_batch_size: int = 1024,
          device=None, seed: int = 0, bf16: bool = False, compile: bool = False,
          checkpoint=None, progress: bool = True, extra_settings: dict | None = None) -> dict:
    """Train ``model`` on ``train_data = (X, y)`` with the paper's protocol (Section 4) and track NC.

    Parameters
    ----------
    model : an ``nn.Module`` with ``model.features(x) -> (B, d)`` and ``model.classifier``
        (``nn.Linear(d, K)``), e.g. from :func:`nclib.models.build`.  Initialise it (seeded)
        before calling; it is moved to ``device`` and trained in place.
    train_data, test_data : ``(X, y)`` tensors, preprocessed (:func:`nclib.data.load_dataset`);
        moved to ``device`` once.  ``test_data`` may be None.
    optimizer : ``"sgd"``, ``"adam"`` or ``"lbfgs"``; ``lr``, ``batch_size`` and ``lr_step``
        default to :data:`PAPER_DEFAULTS` (``lr_step=None``: no schedule).
    regularization : ``"all"`` (eq. (2), ``weight_decay`` on every trainable parameter) or
        ``"whb"`` (eq. (4): ``lambda_W``, ``lambda_H``, ``lambda_b``; see the module docstring).
    augment : the Section 4.3 augmentation (pad-4 crop + flip) on the device, per batch.
    log_epochs : ``"all"`` (default), ``"log"`` (about 30 log-spaced), ``"last"``, an int step,
        or a list of epochs (0 = before training) at which NC metrics and accuracies are taken.
    device : ``None``/``"auto"`` (cuda, mps, cpu) or a name.
    seed : seeds python, numpy, torch (all devices) and the data-order/augmentation generator.
    bf16, compile : bf16 autocast / ``torch.compile`` of the training forward (off by default).
    checkpoint : path of the checkpoint file; if it exists the run continues from it (the
        settings must match, except ``epochs`` and ``log_epochs``, so that a run can be
        extended), and it is rewritten atomically after every epoch.
    extra_settings : a dict stored with the settings (and compared on resume), e.g. the
        experiment's configuration.

    Returns
    -------
    history : dict of lists over the logged epochs -- ``epoch``, ``lr`` (the learning rate
        the epoch was trained with), ``train_acc``,
        ``train_loss`` (eval-mode pass), ``test_acc``, ``test_loss``, ``nc1``..``nc4``, the
        extras of :class:`nclib.metrics.NCMetrics`, ``feature_norm``, ``W_norm`` -- plus
        ``per_epoch`` (every epoch: ``epoch``, ``lr``, ``loss`` and ``accuracy`` running over
        the training forward passes, ``seconds``), ``settings`` and ``wall_time`` (seconds of
        training and evaluation, summed over resumed segments).

    Raises
    ------
    ValueError on bad arguments or a checkpoint made with other settings;
    :class:`TrainingDiverged` (a RuntimeError) when the loss becomes NaN or inf.
    """
    # ---------------------------------------------------------------- arguments
    if optimizer not in PAPER_DEFAULTS:
        raise ValueError(f"unknown optimizer {optimizer!r}; allowed: {OPTIMIZERS}")
    if regularization not in REGULARIZATIONS:
        raise ValueError(f"unknown regularization {regularization!r}; allowed: {REGULARIZATIONS}")
    defaults = PAPER_DEFAULTS[optimizer]
    lr = defaults["lr"] if lr is None else float(lr)
    batch_size = defaults["batch_size"] if batch_size is None else batch_size
    lr_step = defaults["lr_step"] if isinstance(lr_step, str) and lr_step == "default" else lr_step
    if not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not isinstance(eval_batch_size, (int, np.integer)) or eval_batch_size < 1:
        raise ValueError(f"eval_batch_size must be an integer >= 1, got {eval_batch_size!r}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if lr_step is not None and (not isinstance(lr_step, (int, np.integer)) or lr_step < 1):
        raise ValueError(f"lr_step must be None or an integer >= 1, got {lr_step!r}")
    for nm, v in (("weight_decay", weight_decay), ("lambda_W", lambda_W), ("lambda_H", lambda_H),
                  ("lambda_b", lambda_b), ("lr_gamma", lr_gamma), ("momentum", momentum)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{nm} must be a finite number >= 0, got {v!r}")
    fc = _classifier(model)
    X, y = train_data
    _check_data(X, y, "train_data")
    if test_data is not None:
        _check_data(*test_data, "test_data")
    K = int(num_classes) if num_classes is not None else int(fc.weight.shape[0])
    if fc.weight.shape[0] != K:
        raise ValueError(f"num_classes={K} but the classifier has {fc.weight.shape[0]} outputs")
    for nm, lab in (("train", y), ("test", None if test_data is None else test_data[1])):
        if lab is not None and (int(lab.min()) < 0 or int(lab.max()) >= K):
            raise ValueError(f"{nm} labels must lie in 0..{K - 1}, got {int(lab.min())}..{int(lab.max())}")
    log_list = _log_epoch_list(log_epochs, int(epochs))

    from . import data as _data  # the batch iterator and the augmentation live in nclib.data

    dev = resolve_device(device)
    model.to(dev)
    X, y = X.to(dev), y.to(dev)
    if test_data is not None:
        Xt, yt = test_data[0].to(dev), test_data[1].to(dev)
    N = int(X.shape[0])

    settings = dict(
        optimizer=optimizer, epochs=int(epochs), lr=lr, batch_size=int(batch_size),
        lr_step=None if lr_step is None else int(lr_step), lr_gamma=float(lr_gamma),
        momentum=float(momentum), betas=[float(b) for b in betas], history_size=int(history_size),
        max_iter=int(max_iter), regularization=regularization, weight_decay=float(weight_decay),
        lambda_W=float(lambda_W), lambda_H=float(lambda_H), lambda_b=float(lambda_b),
        augment=bool(augment), log_epochs=log_list, eval_batch_size=int(eval_batch_size),
        seed=int(seed), bf16=bool(bf16), compile=bool(compile), n_train=N, num_classes=K,
        n_test=None if test_data is None else int(test_data[0].shape[0]),
        n_parameters=sum(p.numel() for p in model.parameters()),
        n_trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        extra=extra_settings or {},
    )

    params = [p for p in model.parameters() if p.requires_grad]
    decay_in_opt = weight_decay if (regularization == "all" and optimizer != "lbfgs") else 0.0
    opt = make_optimizer(optimizer, params, lr=lr, weight_decay=decay_in_opt, momentum=momentum,
                         betas=betas, history_size=history_size, max_iter=max_iter)
    sched = make_scheduler(opt, lr_step, lr_gamma)
    gen = torch.Generator(device=dev)

    history = {"per_epoch": {"epoch": [], "lr": [], "loss": [], "accuracy": [], "train_seconds": [],
                             "seconds": []}}
    start_epoch, wall = 0, 0.0
    if checkpoint is not None and os.path.exists(checkpoint):
        ck = _load_checkpoint(checkpoint)
        if ck.get("format") != _CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint {checkpoint} has format {ck.get('format')!r}, expected {_CHECKPOINT_FORMAT}")
        # a run may be extended (more epochs, another logging schedule): neither changes the training
        free = _RUN_INFO + (("epochs", "log_epochs") if int(ck["epoch"]) <= epochs else ())
        diff = _settings_diff({k: v for k, v in ck["settings"].items() if k not in free},
                              {k: v for k, v in settings.items() if k not in free})
        if diff:
            raise ValueError(f"checkpoint {checkpoint} was made with other settings ({'; '.join(diff)}); "
                             f"delete it or use another path")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        if sched is not None:
            sched.load_state_dict(ck["scheduler"])
        _set_rng_state(ck["rng"], gen)
        history, start_epoch, wall = ck["history"], int(ck["epoch"]), float(ck["wall_time"])
    else:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        gen.manual_seed(seed)

    settings["device"] = str(dev)
    settings["device_name"] = _device_name(dev)
    settings["tf32_matmul"] = bool(torch.backends.cuda.matmul.allow_tf32)
    settings["tf32_cudnn"] = bool(torch.backends.cudnn.allow_tf32)
    history["settings"] = {k: v for k, v in settings.items()}
    history["wall_time"] = wall

    fwd = torch.compile(_forward) if compile else _forward
    amp = dict(device_type=dev.type, dtype=torch.bfloat16, enabled=bool(bf16))
    wh_mode = regularization == "whb"
    w_trainable = fc.weight.requires_grad
    b_param = fc.bias

    def objective(xb, yb):
        with torch.autocast(**amp):
            h, logits = fwd(model, xb)
            loss = F.cross_entropy(logits.float(), yb)
        total = loss
        if wh_mode:
            total = total + feature_decay(h, lambda_H, N)
            if w_trainable and lambda_W:
                total = total + 0.5 * lambda_W * fc.weight.pow(2).sum()
            if b_param is not None and b_param.requires_grad and lambda_b:
                total = total + 0.5 * lambda_b * b_param.pow(2).sum()
        elif optimizer == "lbfgs" and weight_decay:
            total = total + 0.5 * weight_decay * sum(p.pow(2).sum() for p in params)
        return total, loss, logits

    def log_metrics(epoch, lr_used):
        ev = evaluate(model, X, y, num_classes=K, batch_size=eval_batch_size, nc=True)
        rec = {"epoch": epoch, "lr": lr_used, "train_acc": ev.pop("accuracy"),
               "train_loss": ev.pop("loss")}
        rec.update(ev)
        if test_data is not None:
            te = evaluate(model, Xt, yt, num_classes=K, batch_size=eval_batch_size, nc=False)
            rec["test_acc"], rec["test_loss"] = te["accuracy"], te["loss"]
        for k, v in rec.items():
            history.setdefault(k, []).append(v)

    def save(epoch):
        if checkpoint is None:
            return
        _atomic_save({
            "format": _CHECKPOINT_FORMAT, "settings": settings, "epoch": epoch,
            "model": model.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": None if sched is None else sched.state_dict(),
            "rng": _rng_state(gen), "history": history, "wall_time": history["wall_time"],
        }, checkpoint)

    if start_epoch == 0 and 0 in log_list and not history.get("epoch"):
        t0 = time.perf_counter()
        log_metrics(0, opt.param_groups[0]["lr"])
        history["wall_time"] += time.perf_counter() - t0

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=int(epochs), initial=start_epoch, desc=f"{optimizer}", unit="epoch")
    try:
        for epoch in range(start_epoch + 1, int(epochs) + 1):
            t0 = time.perf_counter()
            good_state = copy.deepcopy(model.state_dict())
            model.train()
            lr_now = opt.param_groups[0]["lr"]
            loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
            correct = torch.zeros((), dtype=torch.long, device=dev)
            for xb, yb in _data.iterate_batches(X, y, batch_size, shuffle=True, generator=gen,
                                                augment=augment, drop_last=False):
                if optimizer == "lbfgs":
                    first = []

                    def closure():
                        opt.zero_grad(set_to_none=True)
                        total, loss, logits = objective(xb, yb)
                        total.backward()
                        if not first:
                            first.append((loss.detach(), logits.detach()))
                        return total

                    opt.step(closure)
                    loss, logits = first[0]
                else:
                    opt.zero_grad(set_to_none=True)
                    total, loss, logits = objective(xb, yb)
                    total.backward()
                    opt.step()
                loss_sum += loss.detach().double() * yb.shape[0]
                correct += (logits.detach().argmax(1) == yb).sum()
            if sched is not None:
                sched.step()
            # one synchronisation per epoch: the divergence check
            finite = torch.isfinite(loss_sum) & torch.stack([torch.isfinite(p).all() for p in params]).all()
            if not bool(finite):
                model.load_state_dict(good_state)
                raise TrainingDiverged(epoch, history, checkpoint if checkpoint and os.path.exists(checkpoint) else None)
            t_train = time.perf_counter() - t0  # bool(finite) above synchronised the device
            pe = history["per_epoch"]
            pe["epoch"].append(epoch)
            pe["lr"].append(lr_now)
            pe["loss"].append(float(loss_sum) / N)
            pe["accuracy"].append(int(correct) / N)
            if epoch in log_list:
                log_metrics(epoch, lr_now)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            dt = time.perf_counter() - t0
            pe["train_seconds"].append(t_train)
            pe["seconds"].append(dt)
            history["wall_time"] += dt
            save(epoch)
            if bar is not None:
                bar.update(1)
                post = {"loss": f"{pe['loss'][-1]:.3g}", "acc": f"{pe['accuracy'][-1]:.3f}"}
                if history.get("epoch") and history["epoch"][-1] == epoch:
                    post["nc1"] = f"{history['nc1'][-1]:.2e}"
                bar.set_postfix(post)
    finally:
        if bar is not None:
            bar.close()
    return history


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    if dev.type == "mps":
        return "Apple MPS"
    import platform
    return platform.processor() or platform.machine() or "cpu"
