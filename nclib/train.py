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

  ``feature_decay`` chooses how the H term is scaled on a batch (Figure 6 is shown all ways):
  ``"eq4"`` (above: eq. (4) in expectation), ``"batch_sum"`` (the authors' code's per-batch
  ``(lambda_H/2) sum_{i in B} ||h_i||^2`` on the raw features: in expectation eq. (4) with
  ``lambda_H B / N``, so its effective decay shrinks as N grows) and ``"authors"`` (what their
  code ran: the same sum on ``F.normalize(h)``, a constant ``lambda_H B / 2`` with zero
  gradient; see ANCHORS.md part 2).

* **Loss**: ``loss`` is any loss of :mod:`nclib.losses` (``"ce"``, the paper's; ``"mse"``,
  ``"label_smoothing"`` with ``smoothing``, ``"focal"`` with ``focal_gamma``), averaged over
  the batch as eq. (4) averages over samples.
* **Schedule**: StepLR every ``lr_step`` epochs (the paper), or MultiStepLR at the epochs
  ``lr_milestones`` (used by the small-scale recipes, whose first step comes later).
* **Tracking**: at every logged epoch (``log_epochs``: every epoch, log-spaced, or a list),
  one eval-mode pass over the training set keeps its features in memory and computes
  NC1-NC4 of eqs. (7)-(10) in float64 with :class:`nclib.metrics.NCAccumulator` (the numbers
  of :func:`nclib.metrics.nc_metrics`; streaming when the features would not fit), and one pass over
  the test set gives the same metrics on held-out data (``test_nc1``...: the test set's own
  class means and global mean; NC2 depends on W only and equals the training value).  For
  L-BFGS the BatchNorm running statistics are first re-estimated at the current parameters
  (:func:`recalibrate_batchnorm`: its line search leaves those of trial points).  There
  is no extra forward per training step: the running loss and accuracy of an epoch come from
  the training forward's logits, accumulated on the device (no per-step ``.item()``).
* **Robustness**: a checkpoint of the latest state (model, optimizer, scheduler, the global
  torch/CUDA/numpy/python RNG states, the data-order generator, history, epoch) is written
  atomically (temporary file + ``os.replace``) after every epoch; calling :func:`train` again
  with the same checkpoint path and settings continues from it, and on the CPU reproduces
  the uninterrupted run bit for bit.  A NaN or inf loss (checked once per epoch, on a tensor
  accumulated on the device) raises :class:`TrainingDiverged` naming the epoch; the model is
  put back to the last good state and the checkpoint on disk is left untouched.
  Divergence is detected once, in the training loop (:func:`check_divergence`): a
  non-finite loss, parameter or feature, a finite epoch loss above ``EXPLOSION_FACTOR``
  times ``max(first epoch's loss, 1)``, or an evaluation that finds degenerate features.
  A checkpoint also stores a fingerprint of the data, and a resume on other data is refused.

Options recorded in the history: ``precision`` (``"fp32"``: strict float32, TF32 off, as the
authors ran; ``"tf32"``: TF32 matmuls/convolutions on CUDA; ``"bf16"``: bf16 autocast of the
training forward with fp32 weights; metrics always come from an fp32 forward), ``compile``
(``torch.compile`` of the training forward), the TF32 flags, the device.
"""
from __future__ import annotations

import copy
import hashlib
import math
import os
import random
import time

import numpy as np
import torch
import torch.nn.functional as F

from . import losses as _losses
from .metrics import NCAccumulator

__all__ = [
    "PAPER_DEFAULTS",
    "OPTIMIZERS",
    "REGULARIZATIONS",
    "PRECISIONS",
    "FEATURE_DECAYS",
    "EXPLOSION_FACTOR",
    "TrainingDiverged",
    "data_fingerprint",
    "check_divergence",
    "resolve_device",
    "log_spaced_epochs",
    "feature_decay",
    "make_optimizer",
    "make_scheduler",
    "evaluate",
    "recalibrate_batchnorm",
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
PRECISIONS = ("fp32", "tf32", "bf16")
FEATURE_DECAYS = ("eq4", "batch_sum", "authors")
#: An epoch whose mean training loss exceeds this factor times max(first epoch's loss, 1) has diverged.
EXPLOSION_FACTOR = 100.0
#: Features are kept in memory for the metrics when N x d stays below this many numbers.
IN_MEMORY_LIMIT = 2**27
_CHECKPOINT_FORMAT = 2
_RUN_INFO = ("device", "device_name", "tf32_matmul", "tf32_cudnn")  # recorded, not compared on resume


class TrainingDiverged(RuntimeError):
    """Training diverged (see :func:`check_divergence`).  ``epoch`` is the epoch (1-based) where
    it happened; ``reason`` what was found; ``history`` holds the records of the epochs before
    it; ``checkpoint`` the last good one (None without a checkpoint)."""

    def __init__(self, epoch: int, history: dict, checkpoint=None, reason: str = "the loss became NaN/inf"):
        self.epoch = epoch
        self.history = history
        self.checkpoint = checkpoint
        self.reason = reason
        where = f"; the last good state (epoch {epoch - 1}) is in {checkpoint}" if checkpoint else ""
        super().__init__(
            f"training diverged in epoch {epoch}: {reason}{where}. Lower the learning rate or check the data."
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


def feature_decay(h: torch.Tensor, lambda_H: float, n_train: int, mode: str = "eq4") -> torch.Tensor:
    """The H term of eq. (4) on a batch ``h`` (B, d) of penultimate features, scaled by ``mode``:

    * ``"eq4"``: ``(lambda_H/2) (N/B) sum_i ||h_i||^2``, whose expectation over uniformly drawn
      batches is ``lambda_H/2 ||H||_F^2`` of eq. (4) over all N training samples.  Gradient
      ``N lambda_H / B * h``.
    * ``"batch_sum"``: ``(lambda_H/2) sum_i ||h_i||^2`` (the authors' per-batch scaling on the raw
      features): eq. (4) with ``lambda_H B / N`` in expectation.  Gradient ``lambda_H h``.
    * ``"authors"``: ``(lambda_H/2) sum_i ||h_i / ||h_i|| ||^2`` (their code: ``F.normalize``
      first), a constant with zero gradient.
    """
    if mode == "eq4":
        return 0.5 * float(lambda_H) * float(n_train) * h.float().pow(2).sum(1).mean()
    if mode == "batch_sum":
        return 0.5 * float(lambda_H) * h.float().pow(2).sum()
    if mode == "authors":
        return 0.5 * float(lambda_H) * F.normalize(h.float(), dim=1).pow(2).sum()
    raise ValueError(f"unknown feature_decay {mode!r}; allowed: {', '.join(FEATURE_DECAYS)}")


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


def make_scheduler(optimizer, lr_step, lr_gamma: float = 0.1, milestones=None):
    """StepLR: learning rate x ``lr_gamma`` every ``lr_step`` epochs (Section 4), or MultiStepLR
    at the epochs ``milestones``; None for no schedule."""
    if milestones:
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[int(m) for m in milestones],
                                                    gamma=lr_gamma)
    if lr_step is None:
        return None
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(lr_step), gamma=lr_gamma)


@torch.no_grad()
def evaluate(model, X, y, *, num_classes: int, batch_size: int = 1024, nc: bool = True, loss: str = "ce",
             loss_kw: dict | None = None, geometry: bool = False) -> dict:
    """One eval-mode fp32 pass over ``(X, y)``: accuracy, mean loss and, if ``nc``, NC1-NC4
    (eqs. (7)-(10)) and the extras of :func:`nclib.metrics.nc_metrics`.

    The features go into :class:`nclib.metrics.NCAccumulator` batch by batch: kept in memory
    without a copy (float32, N x d; pass 1 of the metrics done as each batch arrives) when
    ``N d`` is below :data:`IN_MEMORY_LIMIT`, giving exactly :func:`nclib.metrics.nc_metrics`'
    numbers (``batch_size`` a multiple of 512); beyond it streamed (d x d scatter: the same
    numbers to rounding, no ``ncc_mismatch``).  Non-finite features raise ValueError
    ("... contains NaN or inf").  The class means of ``geometry`` come from the same
    accumulator (:meth:`~nclib.metrics.NCAccumulator.class_means`: no second copy of the
    features, no second forward pass); a class without samples gets a zero mean.

    Returns a flat dict (``accuracy``, ``loss``, ``nc1``...``nc4``, extras, ``feature_norm``:
    the mean ``||h_i||``, ``W_norm``: ``||W||_F``); with ``geometry=True`` also
    ``class_means`` (K x d), ``acc_per_class`` (K,).  The model's train/eval mode is restored.
    """
    fc = _classifier(model)
    K = int(num_classes)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=X.device)
    correct = torch.zeros(K, dtype=torch.long, device=X.device)
    hnorm = torch.zeros((), dtype=torch.float64, device=X.device)
    in_memory = X.shape[0] * int(fc.weight.shape[1]) <= IN_MEMORY_LIMIT
    # fresh forward outputs are never modified afterwards: kept without a copy (copy=False);
    # the accumulator also gives the class means of `geometry` and refuses non-finite features
    acc = (NCAccumulator(K, copy=False, max_buffer_bytes=4 * IN_MEMORY_LIMIT if in_memory else 0)
           if nc or geometry else None)
    try:
        for i in range(0, X.shape[0], batch_size):
            xb, yb = X[i:i + batch_size], y[i:i + batch_size]
            h, logits = _forward(model, xb)
            h, logits = h.float(), logits.float()
            if acc is not None:
                acc.update(h, yb)  # raises on NaN / inf; decisions from (W, b) in float64, as nc_metrics
            elif not bool(torch.isfinite(h.sum())) and not bool(torch.isfinite(h).all()):  # one cheap pass
                raise ValueError("the features contain NaN or inf")
            loss_sum += _losses.loss(logits, yb, loss, reduction="sum", **(loss_kw or {})).double()
            correct += torch.bincount(yb[logits.argmax(1) == yb], minlength=K)
            hnorm += h.double().norm(dim=1).sum()
    finally:
        model.train(was_training)
    n = X.shape[0]
    out = {"accuracy": int(correct.sum()) / n, "loss": float(loss_sum) / n, "feature_norm": float(hnorm) / n,
           "W_norm": float(fc.weight.detach().double().norm())}
    W = fc.weight.detach()
    b = fc.bias.detach() if fc.bias is not None else torch.zeros(W.shape[0], device=W.device)
    if nc:
        m = acc.compute(W, b).to_dict()
        m.pop("accuracy")  # the same count as `correct`
        out.update(m)
    if geometry:
        counts = torch.bincount(y, minlength=K).clamp_min(1)
        out["class_means"] = acc.class_means(allow_empty=True).cpu().tolist()  # a class without samples: 0
        out["acc_per_class"] = (correct.double() / counts).cpu().tolist()
    return out


@torch.no_grad()
def recalibrate_batchnorm(model, X, batch_size: int = 1024) -> bool:
    """Re-estimate the BatchNorm running statistics at the current parameters: one train-mode
    pass over ``X`` without gradients, cumulative averages over its batches
    (``torch.optim.swa_utils.update_bn``, the re-estimation of SWA, Izmailov et al. 2018).

    :func:`train` does this before every evaluation of an L-BFGS run: each function evaluation
    of its line search, trial points included, moves the running statistics that eval mode uses,
    while L-BFGS itself only ever sees batch statistics.  Measured here (ResNet18 x0.25, 5,000
    MNIST images, full-batch L-BFGS lr 0.1, after 5 steps): eval-mode training accuracy 10.0%
    with the statistics left by the line search, 95.3% with re-estimated ones, 95.3% in train
    mode.  The training trajectory does not change (train mode never reads these statistics).
    Returns whether the model has BatchNorm layers.
    """
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return False
    torch.optim.swa_utils.update_bn((X[i:i + batch_size] for i in range(0, X.shape[0], batch_size)), model)
    return True


def data_fingerprint(X: torch.Tensor, y: torch.Tensor) -> str:
    """SHA-256 (16 hex digits) of the labels, the shape of ``X`` and every 97th value of ``X``:
    stored in a checkpoint so that a resume on other data is refused."""
    h = hashlib.sha256()
    h.update(str(tuple(X.shape)).encode())
    h.update(y.detach().cpu().to(torch.int64).numpy().tobytes())
    h.update(X.detach().reshape(-1)[::97].cpu().float().numpy().tobytes())
    return h.hexdigest()[:16]


def check_divergence(epoch_loss: float, first_loss: float | None, params,
                     num_classes: int | None = None) -> str | None:
    """The divergence rule, applied once per epoch: the reason the run has diverged, or None.

    Diverged when the epoch's mean training loss is NaN/inf, a parameter is NaN/inf, or the
    loss is finite but above ``EXPLOSION_FACTOR * max(first_loss, 1)`` (``first_loss``: the
    mean loss of the first epoch; None during the first epoch).  During the first epoch the
    reference is the chance-level cross-entropy ``log K`` instead (``num_classes`` = K, when
    given): a loss above ``EXPLOSION_FACTOR * max(log K, 1)`` in epoch 1 has exploded already
    (no loss of the book starts near that at initialisation).  Non-finite features are caught
    by the evaluation (:func:`evaluate`).
    """
    if not math.isfinite(epoch_loss):
        return f"the training loss became {epoch_loss}"
    bad = [i for i, p in enumerate(params) if not bool(torch.isfinite(p).all())]
    if bad:
        return f"{len(bad)} parameter tensor(s) contain NaN or inf"
    if first_loss is not None and epoch_loss > EXPLOSION_FACTOR * max(first_loss, 1.0):
        return (f"the training loss exploded to {epoch_loss:.3g} (over {EXPLOSION_FACTOR:g} x "
                f"max(first epoch's {first_loss:.3g}, 1))")
    if first_loss is None and num_classes and epoch_loss > EXPLOSION_FACTOR * max(math.log(num_classes), 1.0):
        return (f"the training loss exploded to {epoch_loss:.3g} in the first epoch (over {EXPLOSION_FACTOR:g} x "
                f"max(log K = {math.log(num_classes):.3g}, 1))")
    return None


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
          lr_step: int | None | str = "default", lr_gamma: float = 0.1, lr_milestones=None,
          momentum: float = 0.9, betas=(0.9, 0.999), history_size: int = 10, max_iter: int = 20,
          loss: str = "ce", smoothing: float | None = None, focal_gamma: float | None = None,
          regularization: str = "all", weight_decay: float = 5e-4,
          lambda_W: float = 0.01, lambda_H: float = 1e-5, lambda_b: float = 0.01, feature_decay_mode: str = "eq4",
          augment: bool = False, augment_fill=None, log_epochs="all", eval_batch_size: int = 1024, test_nc: bool = True,
          device=None, seed: int = 0, precision: str = "fp32", compile: bool = False,
          flush_denormal: bool = False, checkpoint=None, progress: bool = True,
          extra_settings: dict | None = None) -> dict:
    """Train ``model`` on ``train_data = (X, y)`` with the paper's protocol (Section 4) and track NC.

    The steps, each a function of this module: check the arguments and record the settings
    (:func:`_settings`), build the optimizer and schedule (:func:`make_optimizer`,
    :func:`make_scheduler`), resume from the checkpoint or seed (:func:`_start`), then per epoch
    one pass of training steps (:func:`_train_epoch`), the divergence check
    (:func:`check_divergence`), the evaluation and log at logged epochs (:func:`_log`) and the
    checkpoint (:func:`_save`).

    Parameters
    ----------
    model : an ``nn.Module`` with ``model.features(x) -> (B, d)`` and ``model.classifier``
        (``nn.Linear(d, K)``), e.g. from :func:`nclib.models.build`.  Initialise it (seeded)
        before calling; it is moved to ``device`` and trained in place.
    train_data, test_data : ``(X, y)`` tensors, preprocessed (:func:`nclib.data.load_dataset`);
        moved to ``device`` once.  ``test_data`` may be None.
    optimizer : ``"sgd"``, ``"adam"`` or ``"lbfgs"``; ``lr``, ``batch_size`` and ``lr_step``
        default to :data:`PAPER_DEFAULTS` (``lr_step=None``: no schedule); ``lr_milestones``
        (epochs) replaces ``lr_step`` by a MultiStepLR.
    loss, smoothing, focal_gamma : the loss (:mod:`nclib.losses`); CE is the paper's.
    regularization : ``"all"`` (eq. (2), ``weight_decay`` on every trainable parameter) or
        ``"whb"`` (eq. (4): ``lambda_W``, ``lambda_H``, ``lambda_b``, the H term scaled by
        ``feature_decay_mode``, see :func:`feature_decay`).
    augment : the Section 4.3 augmentation (pad-4 crop + flip) on the device, per batch;
        ``augment_fill``: the padding value per channel (:func:`nclib.data.black_level` for the
        authors' black padding; None = 0).
    log_epochs : ``"all"`` (default), ``"log"`` (about 30 log-spaced), ``"last"``, an int step,
        or a list of epochs (0 = before training) at which NC metrics and accuracies are taken.
    test_nc : also NC1-NC4 of the test set's features at each logged epoch (``test_nc1``...;
        skipped when a class is missing from the test set).
    device : ``None``/``"auto"`` (cuda, mps, cpu) or a name.
    seed : seeds python, numpy, torch (all devices) and the data-order/augmentation generator.
    precision : ``"fp32"`` (strict, TF32 off), ``"tf32"`` or ``"bf16"`` (autocast) for training.
    compile : ``torch.compile`` of the training forward (off by default).
    flush_denormal : on the CPU, compute with subnormal floats (below 1.2e-38 in float32) taken as
        zero while training (``torch.set_flush_denormal``, for the calling thread; switched off after).
        Weight decay drives many weights there (at epoch 126 of the cpu profile's Adam run on
        MNIST with a 225-epoch schedule, 606,007 of its 705,786 parameters), and some CPUs compute
        with them far more slowly: on an Intel Xeon (family 6, model 167) 40 training steps from
        that point took 5.6 s, against 0.85 s with this flag or from a fresh initialisation; an AMD
        EPYC (family 25, model 1) showed no such slowdown in the stored runs.  Off by default: it
        changes the numbers wherever subnormals occur, so runs made without it retrain bitwise only
        without it.
    checkpoint : path of the checkpoint file; if it exists the run continues from it (the
        settings and the data must match, except ``epochs`` and ``log_epochs``, so that a run
        can be extended), and it is rewritten atomically after every epoch.
    extra_settings : a dict stored with the settings (and compared on resume), e.g. the
        experiment's configuration.

    Returns
    -------
    history : dict of lists over the logged epochs -- ``epoch``, ``lr`` (the learning rate
        the epoch was trained with), ``train_acc``, ``train_loss`` (eval-mode pass),
        ``test_acc``, ``test_loss``, ``nc1``..``nc4``, the extras of
        :class:`nclib.metrics.NCMetrics`, ``feature_norm``, ``W_norm``, and the same metrics of
        the test set prefixed ``test_`` -- plus ``per_epoch`` (every epoch: ``epoch``, ``lr``,
        ``loss`` and ``accuracy`` running over the training forward passes, ``seconds``),
        ``geometry`` (at the last logged epoch: ``W``, ``b``, class means and per-class
        accuracies of the training and test sets), ``settings`` and ``wall_time`` (seconds of
        training and evaluation, summed over resumed segments).

    Raises
    ------
    ValueError on bad arguments or a checkpoint made with other settings or data;
    :class:`TrainingDiverged` (a RuntimeError) when the run diverges (:func:`check_divergence`).
    """
    fc = _classifier(model)
    settings = _settings(model, fc, train_data, test_data, locals())
    dev = resolve_device(device)
    run = _Run(model, fc, settings, dev, train_data, test_data, checkpoint)
    flags = _set_precision(settings["precision"], dev)
    flush = settings["flush_denormal"] and dev.type == "cpu" and torch.set_flush_denormal(True)
    try:
        return _loop(run, progress, compile)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
        if flush:
            torch.set_flush_denormal(False)


def _settings(model, fc, train_data, test_data, a: dict) -> dict:
    """Check the arguments of :func:`train` (``a``: its locals) and return the settings dict."""
    optimizer, regularization = a["optimizer"], a["regularization"]
    if optimizer not in PAPER_DEFAULTS:
        raise ValueError(f"unknown optimizer {optimizer!r}; allowed: {OPTIMIZERS}")
    if regularization not in REGULARIZATIONS:
        raise ValueError(f"unknown regularization {regularization!r}; allowed: {REGULARIZATIONS}")
    if a["precision"] not in PRECISIONS:
        raise ValueError(f"unknown precision {a['precision']!r}; allowed: {', '.join(PRECISIONS)}")
    if a["feature_decay_mode"] not in FEATURE_DECAYS:
        raise ValueError(f"unknown feature_decay_mode {a['feature_decay_mode']!r}; allowed: {', '.join(FEATURE_DECAYS)}")
    loss_kw = _losses.check_loss(a["loss"], smoothing=a["smoothing"], gamma=a["focal_gamma"])
    defaults = PAPER_DEFAULTS[optimizer]
    lr = defaults["lr"] if a["lr"] is None else a["lr"]
    batch_size = defaults["batch_size"] if a["batch_size"] is None else a["batch_size"]
    lr_step = a["lr_step"]
    lr_step = defaults["lr_step"] if isinstance(lr_step, str) and lr_step == "default" else lr_step
    epochs, eval_batch_size = a["epochs"], a["eval_batch_size"]
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if isinstance(eval_batch_size, bool) or not isinstance(eval_batch_size, (int, np.integer)) or eval_batch_size < 1:
        raise ValueError(f"eval_batch_size must be an integer >= 1, got {eval_batch_size!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if lr_step is not None and (not isinstance(lr_step, (int, np.integer)) or lr_step < 1):
        raise ValueError(f"lr_step must be None or an integer >= 1, got {lr_step!r}")
    milestones = a["lr_milestones"]
    if milestones is not None:
        if not isinstance(milestones, (list, tuple)) or not all(
                isinstance(m, (int, np.integer)) and not isinstance(m, bool) and m >= 1 for m in milestones):
            raise ValueError(f"lr_milestones must be None or a list of epochs >= 1, got {milestones!r}")
        milestones = sorted(int(m) for m in milestones)
    for nm in ("weight_decay", "lambda_W", "lambda_H", "lambda_b", "lr_gamma", "momentum"):
        v = a[nm]
        if isinstance(v, bool) or not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{nm} must be a finite number >= 0, got {v!r}")
    if not isinstance(a["flush_denormal"], (bool, np.bool_)):
        raise ValueError(f"flush_denormal must be True or False, got {a['flush_denormal']!r}")
    X, y = train_data
    _check_data(X, y, "train_data")
    if test_data is not None:
        _check_data(*test_data, "test_data")
    K = int(a["num_classes"]) if a["num_classes"] is not None else int(fc.weight.shape[0])
    if fc.weight.shape[0] != K:
        raise ValueError(f"num_classes={K} but the classifier has {fc.weight.shape[0]} outputs")
    for nm, lab in (("train", y), ("test", None if test_data is None else test_data[1])):
        if lab is not None and (int(lab.min()) < 0 or int(lab.max()) >= K):
            raise ValueError(f"{nm} labels must lie in 0..{K - 1}, got {int(lab.min())}..{int(lab.max())}")
    return dict(
        optimizer=optimizer, epochs=int(epochs), lr=float(lr), batch_size=int(batch_size),
        lr_step=None if lr_step is None else int(lr_step), lr_gamma=float(a["lr_gamma"]), lr_milestones=milestones,
        momentum=float(a["momentum"]), betas=[float(v) for v in a["betas"]], history_size=int(a["history_size"]),
        max_iter=int(a["max_iter"]), loss=a["loss"], loss_kw=loss_kw, regularization=regularization,
        weight_decay=float(a["weight_decay"]), lambda_W=float(a["lambda_W"]), lambda_H=float(a["lambda_H"]),
        lambda_b=float(a["lambda_b"]), feature_decay=a["feature_decay_mode"], augment=bool(a["augment"]),
        augment_fill=None if a["augment_fill"] is None else [float(v) for v in a["augment_fill"]],
        log_epochs=_log_epoch_list(a["log_epochs"], int(epochs)), eval_batch_size=int(eval_batch_size),
        test_nc=bool(a["test_nc"]), seed=int(a["seed"]), precision=a["precision"], compile=bool(a["compile"]),
        flush_denormal=bool(a["flush_denormal"]),
        n_train=int(X.shape[0]), num_classes=K, n_test=None if test_data is None else int(test_data[0].shape[0]),
        n_parameters=sum(p.numel() for p in model.parameters()),
        n_trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        data_fingerprint=data_fingerprint(X, y), extra=a["extra_settings"] or {},
    )


def _set_precision(precision: str, dev: torch.device) -> tuple:
    """Set the TF32 flags for ``precision`` ("fp32": off; "tf32"/"bf16": on); return the old flags."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    on = precision != "fp32"
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on
    return old


class _Run:
    """The state of one training run: model, data on the device, optimizer, schedule, the
    data-order generator, the history and where the run starts (after a resume)."""

    def __init__(self, model, fc, settings, dev, train_data, test_data, checkpoint):
        s = settings
        self.model, self.fc, self.s, self.dev, self.checkpoint = model, fc, s, dev, checkpoint
        model.to(dev)
        self.X, self.y = train_data[0].to(dev), train_data[1].to(dev)
        self.test = None if test_data is None else (test_data[0].to(dev), test_data[1].to(dev))
        # NC of the test set needs every class in it
        self.test_nc = bool(s["test_nc"] and self.test is not None
                            and int(torch.bincount(self.test[1], minlength=s["num_classes"]).min()) > 0)
        self.params = [p for p in model.parameters() if p.requires_grad]
        decay_in_opt = s["weight_decay"] if (s["regularization"] == "all" and s["optimizer"] != "lbfgs") else 0.0
        self.opt = make_optimizer(s["optimizer"], self.params, lr=s["lr"], weight_decay=decay_in_opt,
                                  momentum=s["momentum"], betas=s["betas"], history_size=s["history_size"],
                                  max_iter=s["max_iter"])
        self.sched = make_scheduler(self.opt, s["lr_step"], s["lr_gamma"], s["lr_milestones"])
        self.gen = torch.Generator(device=dev)
        self.history = {"per_epoch": {"epoch": [], "lr": [], "loss": [], "accuracy": [], "train_seconds": [],
                                      "seconds": []}}
        self.start_epoch = 0
        _start(self)
        s["device"] = str(dev)
        s["device_name"] = _device_name(dev)
        s["tf32_matmul"] = s["precision"] != "fp32"
        s["tf32_cudnn"] = s["precision"] != "fp32"
        self.history["settings"] = dict(s)


def _start(run: _Run) -> None:
    """Continue from ``run.checkpoint`` when it exists (same settings and data, else ValueError),
    else seed every generator from the settings' seed."""
    s, ck_path = run.s, run.checkpoint
    wall = 0.0
    if ck_path is not None and os.path.exists(ck_path):
        ck = _load_checkpoint(ck_path)
        if ck.get("format") != _CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint {ck_path} has format {ck.get('format')!r}, expected {_CHECKPOINT_FORMAT}; "
                             f"delete it to start afresh")
        # a run may be extended (more epochs, another logging schedule): neither changes the training
        free = _RUN_INFO + (("epochs", "log_epochs") if int(ck["epoch"]) <= s["epochs"] else ())
        if ck["settings"].get("data_fingerprint") != s["data_fingerprint"]:
            raise ValueError(f"checkpoint {ck_path} was made with other data (fingerprint "
                             f"{ck['settings'].get('data_fingerprint')} vs {s['data_fingerprint']}); "
                             f"delete it or use another path")
        old = {"flush_denormal": False, **ck["settings"]}  # checkpoints made before the setting existed: off
        diff = _settings_diff({k: v for k, v in old.items() if k not in free},
                              {k: v for k, v in s.items() if k not in free})
        if diff:
            raise ValueError(f"checkpoint {ck_path} was made with other settings ({'; '.join(diff)}); "
                             f"delete it or use another path")
        run.model.load_state_dict(ck["model"])
        run.opt.load_state_dict(ck["optimizer"])
        if run.sched is not None:
            run.sched.load_state_dict(ck["scheduler"])
        _set_rng_state(ck["rng"], run.gen)
        run.history, run.start_epoch, wall = ck["history"], int(ck["epoch"]), float(ck["wall_time"])
    else:
        random.seed(s["seed"])
        np.random.seed(s["seed"] % 2**32)
        torch.manual_seed(s["seed"])
        run.gen.manual_seed(s["seed"])
    run.history["wall_time"] = wall


def _objective(run: _Run, fwd, xb, yb):
    """The minibatch objective: the loss plus the regularisation of eq. (2) (L-BFGS only: the
    others take it as the optimizer's weight decay) or of eq. (4).  Returns (total, loss, logits)."""
    s, fc = run.s, run.fc
    with torch.autocast(device_type=run.dev.type, dtype=torch.bfloat16, enabled=s["precision"] == "bf16"):
        h, logits = fwd(run.model, xb)
    loss = _losses.loss(logits.float(), yb, s["loss"], **s["loss_kw"])
    total = loss
    if s["regularization"] == "whb":
        total = total + feature_decay(h, s["lambda_H"], s["n_train"], s["feature_decay"])
        if fc.weight.requires_grad and s["lambda_W"]:
            total = total + 0.5 * s["lambda_W"] * fc.weight.pow(2).sum()
        if fc.bias is not None and fc.bias.requires_grad and s["lambda_b"]:
            total = total + 0.5 * s["lambda_b"] * fc.bias.pow(2).sum()
    elif s["optimizer"] == "lbfgs" and s["weight_decay"]:
        total = total + 0.5 * s["weight_decay"] * sum(p.pow(2).sum() for p in run.params)
    return total, loss, logits


def _train_epoch(run: _Run, fwd) -> tuple:
    """One pass over the shuffled training set (one optimizer step per batch); returns the
    running (loss sum, correct count) as device tensors (no synchronisation per step)."""
    from . import data as _data  # the batch iterator and the augmentation live in nclib.data
    run.model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=run.dev)
    correct = torch.zeros((), dtype=torch.long, device=run.dev)
    for xb, yb in _data.iterate_batches(run.X, run.y, run.s["batch_size"], shuffle=True, generator=run.gen,
                                        augment=run.s["augment"], drop_last=False,
                                        fill=run.s["augment_fill"]):
        if run.s["optimizer"] == "lbfgs":
            first = []

            def closure():
                run.opt.zero_grad(set_to_none=True)
                total, loss, logits = _objective(run, fwd, xb, yb)
                total.backward()
                if not first:
                    first.append((loss.detach(), logits.detach()))
                return total

            run.opt.step(closure)
            loss, logits = first[0]
        else:
            run.opt.zero_grad(set_to_none=True)
            total, loss, logits = _objective(run, fwd, xb, yb)
            total.backward()
            run.opt.step()
        loss_sum += loss.detach().double() * yb.shape[0]
        correct += (logits.detach().argmax(1) == yb).sum()
    if run.sched is not None:
        run.sched.step()
    return loss_sum, correct


def _log(run: _Run, epoch: int, lr_used: float) -> None:
    """Evaluate on the training set (and the test set) and append a record to the history;
    the geometry (W, b, class means, per-class accuracies) is kept for the last logged epoch."""
    s = run.s
    kw = dict(num_classes=s["num_classes"], batch_size=s["eval_batch_size"], loss=s["loss"], loss_kw=s["loss_kw"])
    if s["optimizer"] == "lbfgs":  # its line search leaves BatchNorm statistics of trial points behind
        recalibrate_batchnorm(run.model, run.X, s["eval_batch_size"])
    ev = evaluate(run.model, run.X, run.y, nc=True, geometry=True, **kw)
    geo = {"epoch": epoch, "W": run.fc.weight.detach().cpu().double().tolist(),
           "b": None if run.fc.bias is None else run.fc.bias.detach().cpu().double().tolist(),
           "class_means_train": ev.pop("class_means"), "train_acc_per_class": ev.pop("acc_per_class")}
    rec = {"epoch": epoch, "lr": lr_used, "train_acc": ev.pop("accuracy"), "train_loss": ev.pop("loss")}
    rec.update(ev)
    if run.test is not None:
        te = evaluate(run.model, *run.test, nc=run.test_nc, geometry=True, **kw)
        geo["class_means_test"], geo["test_acc_per_class"] = te.pop("class_means"), te.pop("acc_per_class")
        rec["test_acc"], rec["test_loss"] = te.pop("accuracy"), te.pop("loss")
        rec.update({f"test_{k}": v for k, v in te.items()})
    for k, v in rec.items():
        run.history.setdefault(k, []).append(v)
    run.history["geometry"] = geo


def _save(run: _Run, epoch: int) -> None:
    """Write the checkpoint of the state after ``epoch`` atomically (nothing without a path)."""
    if run.checkpoint is None:
        return
    _atomic_save({
        "format": _CHECKPOINT_FORMAT, "settings": run.s, "epoch": epoch,
        "model": run.model.state_dict(), "optimizer": run.opt.state_dict(),
        "scheduler": None if run.sched is None else run.sched.state_dict(),
        "rng": _rng_state(run.gen), "history": run.history, "wall_time": run.history["wall_time"],
    }, run.checkpoint)


def _diverged(run: _Run, epoch: int, good_state, reason: str):
    run.model.load_state_dict(good_state)
    ck = run.checkpoint if run.checkpoint and os.path.exists(run.checkpoint) else None
    return TrainingDiverged(epoch, run.history, ck, reason)


def _loop(run: _Run, progress: bool, compile: bool) -> dict:
    """The epochs of :func:`train` from ``run.start_epoch``; returns the history."""
    s, h = run.s, run.history
    fwd = torch.compile(_forward) if compile else _forward
    if run.start_epoch == 0 and 0 in s["log_epochs"] and not h.get("epoch"):
        t0 = time.perf_counter()
        _log(run, 0, run.opt.param_groups[0]["lr"])
        h["wall_time"] += time.perf_counter() - t0
    bar = _progress(s, run.start_epoch, progress)
    try:
        for epoch in range(run.start_epoch + 1, s["epochs"] + 1):
            t0 = time.perf_counter()
            good_state = copy.deepcopy(run.model.state_dict())
            lr_now = run.opt.param_groups[0]["lr"]
            loss_sum, correct = _train_epoch(run, fwd)
            pe = h["per_epoch"]
            epoch_loss = float(loss_sum) / s["n_train"]  # one synchronisation per epoch
            reason = check_divergence(epoch_loss, pe["loss"][0] if pe["loss"] else None, run.params,
                                      num_classes=s["num_classes"])
            if reason:
                raise _diverged(run, epoch, good_state, reason)
            t_train = time.perf_counter() - t0
            if epoch in s["log_epochs"]:
                try:
                    _log(run, epoch, lr_now)
                except ValueError as exc:  # non-finite or degenerate features: the model broke down
                    raise _diverged(run, epoch, good_state, f"the evaluation failed ({exc})") from exc
            if run.dev.type == "cuda":
                torch.cuda.synchronize(run.dev)
            dt = time.perf_counter() - t0
            for k, v in (("epoch", epoch), ("lr", lr_now), ("loss", epoch_loss),
                         ("accuracy", int(correct) / s["n_train"]), ("train_seconds", t_train), ("seconds", dt)):
                pe[k].append(v)
            h["wall_time"] += dt
            _save(run, epoch)
            bar(epoch, pe, h)
    finally:
        bar(None, None, None)
    return h


def _progress(s: dict, start: int, enabled: bool):
    """A progress reporter ``report(epoch, per_epoch, history)``; ``report(None, ...)`` closes it.
    A tqdm bar on a terminal; one line per logged epoch when the output is not a terminal (logs)."""
    import sys
    if not enabled:
        return lambda *a: None
    total = s["epochs"]
    if sys.stderr.isatty() or "ipykernel" in sys.modules:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, initial=start, desc=s["optimizer"], unit="epoch")

        def report(epoch, pe, h):
            if epoch is None:
                bar.close()
                return
            bar.update(1)
            post = {"loss": f"{pe['loss'][-1]:.3g}", "acc": f"{pe['accuracy'][-1]:.3f}"}
            if h.get("epoch") and h["epoch"][-1] == epoch:
                post["nc1"] = f"{h['nc1'][-1]:.2e}"
            bar.set_postfix(post)
        return report

    def line(epoch, pe, h):
        if epoch is not None and h.get("epoch") and h["epoch"][-1] == epoch:
            print(f"epoch {epoch}/{total} loss {pe['loss'][-1]:.4g} train acc {h['train_acc'][-1]:.4f} "
                  f"nc1 {h['nc1'][-1]:.3e} ({h['wall_time']:.0f} s)", file=sys.stderr, flush=True)
    return line


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    if dev.type == "mps":
        return "Apple MPS"
    import platform
    return platform.processor() or platform.machine() or "cpu"
