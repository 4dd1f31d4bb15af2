"""Classification losses on logits: cross-entropy (the paper's, eq. (4)) and the losses studied after it.

One function, :func:`loss`, gives the *mean over samples* of a per-sample loss of the logits
``Z`` (N, K) (rows are samples, ``Z = H W^T + b``) and integer labels ``y`` (N,), as eq. (4)
averages the cross-entropy:

* ``"ce"``: :math:`-\\log p_{y}` with :math:`p = \\mathrm{softmax}(z)` (Zhu et al. 2021, eq. (4)).
* ``"mse"``: :math:`\\tfrac12 \\|z - e_{y}\\|_2^2` with one-hot targets, so the mean is
  :math:`\\frac{1}{2N}\\sum_i \\|W h_i + b - e_{y_i}\\|^2` (Zhou et al., ICML 2022; Tirer and
  Bruna 2022; Han, Papyan and Donoho, ICLR 2022).
* ``"label_smoothing"`` (``smoothing`` = alpha in [0, 1)): cross-entropy against the target
  :math:`(1-\\alpha) e_y + \\frac{\\alpha}{K} \\mathbf 1` (Szegedy et al. 2016; Zhou et al.,
  NeurIPS 2022, "Are all losses created equal").
* ``"focal"`` (``gamma`` >= 0): :math:`-(1 - p_y)^\\gamma \\log p_y` (Lin et al. 2017); gamma = 0
  is the cross-entropy.

Everything is plain torch, differentiable, in the dtype of ``Z`` (the theory modules call it in
float64).  This module knows nothing of data, models or training.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["LOSSES", "check_loss", "loss"]

#: The losses of :func:`loss` and the keyword each one takes.
LOSSES = {"ce": (), "mse": (), "label_smoothing": ("smoothing",), "focal": ("gamma",)}


def check_loss(name: str, **kw) -> dict:
    """Validate a loss name and its keywords; return the keywords it uses (with defaults:
    ``smoothing=0.1``, ``gamma=2.0``).  Unknown names or keywords raise ValueError."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; allowed: {', '.join(LOSSES)}")
    allowed = LOSSES[name]
    extra = sorted(k for k, v in kw.items() if v is not None and k not in allowed)
    if extra:
        raise ValueError(f"loss {name!r} takes {'only ' + ', '.join(allowed) if allowed else 'no keyword'}; "
                         f"got {', '.join(extra)}")
    out = {}
    if name == "label_smoothing":
        a = 0.1 if kw.get("smoothing") is None else kw["smoothing"]
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not (0 <= a < 1):
            raise ValueError(f"smoothing must be a number in [0, 1), got {a!r}")
        out["smoothing"] = float(a)
    if name == "focal":
        g = 2.0 if kw.get("gamma") is None else kw["gamma"]
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not (g >= 0 and math.isfinite(g)):
            raise ValueError(f"gamma must be a finite number >= 0, got {g!r}")
        out["gamma"] = float(g)
    return out


def loss(Z: torch.Tensor, y: torch.Tensor, name: str = "ce", *, reduction: str = "mean", **kw) -> torch.Tensor:
    """The mean (``reduction="mean"``), sum or per-sample (``"none"``) loss of logits ``Z`` (N, K)
    against integer labels ``y`` (N,); ``name`` and keywords as in the module docstring."""
    kw = check_loss(name, **kw)
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if Z.ndim != 2 or y.ndim != 1 or Z.shape[0] != y.shape[0]:
        raise ValueError(f"Z must be (N, K) and y (N,) with the same N; got {tuple(Z.shape)} and {tuple(y.shape)}")
    if name == "ce":
        per = F.cross_entropy(Z, y, reduction="none")
    elif name == "label_smoothing":
        per = F.cross_entropy(Z, y, reduction="none", label_smoothing=kw["smoothing"])
    elif name == "mse":
        target = F.one_hot(y, Z.shape[1]).to(Z.dtype)
        per = 0.5 * (Z - target).pow(2).sum(1)
    else:  # focal
        logp = F.log_softmax(Z, dim=1).gather(1, y[:, None]).squeeze(1)
        per = -(1 - logp.exp()).pow(kw["gamma"]) * logp
    if reduction == "none":
        return per
    return per.mean() if reduction == "mean" else per.sum()
