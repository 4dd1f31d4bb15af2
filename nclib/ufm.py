"""The unconstrained feature model (UFM) of Zhu et al. (2021), Section 2.2, eq. (4)/(14), and its
generalisation to other losses and to imbalanced classes.

    f(W, H, b) = (1/N) sum_{k,i} L(W h_{k,i} + b, y_k)
                 + lambda_W/2 ||W||_F^2 + lambda_H/2 ||H||_F^2 + lambda_b/2 ||b||_2^2,

with N = n_1 + ... + n_K samples and L a loss of :mod:`nclib.losses`: ``"ce"`` (the paper's
eq. (4), the default), ``"mse"`` (one-hot targets, Zhou et al. ICML 2022; Tirer and Bruna 2022),
``"label_smoothing"`` (keyword ``smoothing``) and ``"focal"`` (keyword ``gamma``) (Zhou et al.,
NeurIPS 2022).  ``n`` is an int (balanced classes, the paper's setting) or a sequence of the K
class sizes (imbalanced classes, Fang et al. PNAS 2021).  Shapes (the book's convention): ``W``
is (K, d), ``H`` is (N, d) with the features as ROWS (the paper's H is d x N, its columns are our
rows), ``b`` is (K,), ``y`` is (N,) integer labels.  Inputs may be numpy arrays or torch tensors
(any float dtype, bfloat16 included); everything is computed in float64.

Contents

* :func:`balanced_labels`, :func:`class_labels`, :func:`objective`, :func:`gradients`: f and its
  gradient, eqs. (17)-(18) (and the bias gradient), for every loss;
* :func:`xi`, :func:`closed_form`: the global minimum value of (4) and the norms of a
  global minimiser from Theorem 3.1 and the function xi(rho) of Appendix B, including
  the regime ``K sqrt(n lambda_W lambda_H) >= 1`` where the origin is the only global
  minimiser; ``loss="mse"`` gives the MSE closed form (with or without bias), and
  ``"label_smoothing"`` / ``"focal"`` the minimum over the scaled simplex ETFs, which is the
  global minimum by Zhou et al. (NeurIPS 2022, Theorem 3.1);
* :func:`global_minimizer`: an explicit (W*, H*, b*) built from a simplex ETF (CE);
* :func:`solve`: numerical minimisation of f with GD, SGD, Adam or L-BFGS, for any loss and any
  class sizes; by default L-BFGS runs on an exactly equivalent class-wise reduced problem (see
  :func:`solve` and the book's chapters "Global optimality (Theorem 3.1)" and "Other losses").

This module does not import :mod:`nclib.landscape` (which imports this one).
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from . import losses as _losses

__all__ = [
    "balanced_labels",
    "class_labels",
    "objective",
    "gradients",
    "xi",
    "ClosedForm",
    "closed_form",
    "global_minimizer",
    "SolveResult",
    "solve",
    "OPTIMIZERS",
    "LOSSES",
]

OPTIMIZERS = ("gd", "sgd", "adam", "lbfgs")
#: the losses of :mod:`nclib.losses` that the UFM accepts
LOSSES = tuple(_losses.LOSSES)


# ----------------------------------------------------------------------------- input checks
def _arr(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()   # any dtype, bfloat16 included
    a = np.ascontiguousarray(x, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf")
    return a


def _nonnegative(name: str, v) -> float:
    """``float(v)`` when it is a finite number >= 0, else a ValueError naming ``name`` and ``v``."""
    try:
        fv = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number >= 0, got {v!r}") from None
    if not math.isfinite(fv) or fv < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    return fv


def _check_lambdas(lambda_W, lambda_H, lambda_b, *, strict_WH: bool = False):
    for name, v in (("lambda_W", lambda_W), ("lambda_H", lambda_H), ("lambda_b", lambda_b)):
        _nonnegative(name, v)
    if strict_WH and (float(lambda_W) <= 0 or float(lambda_H) <= 0):
        raise ValueError(
            "lambda_W and lambda_H must be > 0: with either one 0 the infimum of (4) is not "
            f"attained (no global minimiser); got lambda_W={lambda_W!r}, lambda_H={lambda_H!r}"
        )
    return float(lambda_W), float(lambda_H), float(lambda_b)


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check_Kn(K, n, d=None):
    """K, n for the BALANCED model (n an int); ValueError naming the assumption otherwise."""
    if not _is_int(K) or K < 2:
        raise ValueError(f"K must be an integer >= 2 (number of classes), got K={K!r}")
    if not _is_int(n) or n < 1:
        if not _is_int(n) and np.ndim(n) == 1:
            raise ValueError(f"this function assumes balanced classes (n an integer, n_1 = ... = n_K = n); "
                             f"got class sizes n={list(n)!r}")
        raise ValueError(f"n must be an integer >= 1 (samples per class), got n={n!r}")
    if d is not None and (not _is_int(d) or d < 1):
        raise ValueError(f"d must be an integer >= 1 (feature dimension), got d={d!r}")
    return int(K), int(n)


def _check_sizes(K, n, d=None) -> np.ndarray:
    """Class sizes (K,) int64 from an int n (balanced) or a sequence of K sizes >= 1."""
    if not _is_int(K) or K < 2:
        raise ValueError(f"K must be an integer >= 2 (number of classes), got K={K!r}")
    if d is not None and (not _is_int(d) or d < 1):
        raise ValueError(f"d must be an integer >= 1 (feature dimension), got d={d!r}")
    if _is_int(n):
        if n < 1:
            raise ValueError(f"n must be an integer >= 1 (samples per class), got n={n!r}")
        return np.full(int(K), int(n), dtype=np.int64)
    try:
        s = list(n)
    except TypeError:
        raise ValueError(f"n must be an integer or a sequence of K={K} class sizes, got n={n!r}") from None
    if len(s) != K or not all(_is_int(v) and v >= 1 for v in s):
        raise ValueError(f"n must be an integer or a sequence of K={K} integer class sizes >= 1, got n={n!r}")
    return np.asarray(s, dtype=np.int64)


def _check_loss(loss, loss_kw) -> dict:
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; allowed: {', '.join(LOSSES)}")
    return _losses.check_loss(loss, **loss_kw)


def _check_WHby(W, H, b, y):
    W = _arr(W, "W")
    H = _arr(H, "H")
    b = _arr(b, "b")
    if W.ndim != 2:
        raise ValueError(f"W must be 2-D with shape (K, d), got shape {W.shape}")
    K, d = W.shape
    if K < 2:
        raise ValueError(f"W must have K >= 2 rows (one per class), got K={K}")
    if H.ndim != 2 or H.shape[1] != d:
        raise ValueError(f"H must have shape (N, d) with d={d} (features as rows), got shape {H.shape}")
    if b.shape != (K,):
        raise ValueError(f"b must have shape (K,)=({K},), got shape {b.shape}")
    yt = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if yt.ndim != 1 or yt.shape[0] != H.shape[0]:
        raise ValueError(f"y must have shape (N,)=({H.shape[0]},), got shape {yt.shape}")
    if yt.size == 0:
        raise ValueError("H and y have no samples (N = 0)")
    if not np.issubdtype(yt.dtype, np.integer):
        if np.issubdtype(yt.dtype, np.floating) and np.all(yt == np.round(yt)):
            yt = yt.astype(np.int64)
        else:
            raise ValueError(f"y must hold integer class labels, got dtype {yt.dtype}")
    if yt.min() < 0 or yt.max() >= K:
        raise ValueError(f"labels must lie in [0, K)=[0, {K}), found min {yt.min()} max {yt.max()}")
    return W, H, b, yt.astype(np.int64)


# ----------------------------------------------------------------------------- f and its gradient
def balanced_labels(K: int, n: int) -> np.ndarray:
    """Labels of the balanced UFM (Section 2.2, n = n_1 = ... = n_K): ``np.repeat(arange(K), n)``.

    Class-major order: rows ``k*n ... k*n + n - 1`` of H are the features ``h_{k,1..n}`` of
    class k, the column order of the paper's ``H = [h_{1,1} ... h_{K,n}]``.
    """
    K, n = _check_Kn(K, n)
    return np.repeat(np.arange(K), n)


def class_labels(K: int, n) -> np.ndarray:
    """Labels for class sizes ``n`` (an int: :func:`balanced_labels`; or K sizes n_1..n_K):
    ``np.repeat(arange(K), n)``, class-major (the first n_1 rows of H are class 0, ...)."""
    sizes = _check_sizes(K, n)
    return np.repeat(np.arange(len(sizes)), sizes)


def _dlogits(Z, y, loss: str = "ce", kw=None):
    """Per-sample loss ``L(z_i, y_i)`` (shape Z.shape[:-1]) and its gradient in the logits (shape of Z).

    torch float64, any leading batch dimensions (``y`` broadcasts against ``Z.shape[:-1]``).
    Analytic for the convex losses: CE ``p - e_y``; label smoothing ``p - t`` with
    ``t = (1 - alpha) e_y + alpha/K 1``; MSE ``z - e_y``; the focal loss by autograd through
    :func:`nclib.losses.loss` (the values of all four are those of :func:`nclib.losses.loss`).
    """
    kw = kw or {}
    K = Z.shape[-1]
    Z2 = Z.reshape(-1, K)
    y2 = torch.broadcast_to(y, Z.shape[:-1]).reshape(-1)
    rows = torch.arange(Z2.shape[0])
    if loss == "ce" or (loss == "focal" and kw.get("gamma", 2.0) == 0.0):
        lse = torch.logsumexp(Z2, dim=1)
        per = lse - Z2[rows, y2]
        G = torch.exp(Z2 - lse[:, None])
        G[rows, y2] -= 1.0
    elif loss == "label_smoothing":
        a = kw.get("smoothing", 0.1)
        lse = torch.logsumexp(Z2, dim=1)
        logp = Z2 - lse[:, None]
        per = -(1.0 - a) * logp[rows, y2] - (a / K) * logp.sum(1)
        G = torch.exp(logp) - a / K
        G[rows, y2] -= 1.0 - a
    elif loss == "mse":
        G = Z2.clone()
        G[rows, y2] -= 1.0
        per = 0.5 * (G * G).sum(1)
    elif loss == "focal":
        with torch.enable_grad():
            Zr = Z2.detach().clone().requires_grad_(True)
            p = _losses.loss(Zr, y2, "focal", reduction="none", gamma=kw.get("gamma", 2.0))
            G, = torch.autograd.grad(p.sum(), Zr)
        per = p.detach()
    else:
        raise ValueError(f"unknown loss {loss!r}; allowed: {', '.join(LOSSES)}")
    return per.reshape(Z.shape[:-1]), G.reshape(Z.shape)


def _t_vg(W, H, b, y, lW, lH, lb, N, loss="ce", kw=None, w=None, grad=True, bias=True):
    """Value and gradients of the (weighted) objective in torch float64.

    ``f = sum_i w_i L(W h_i + b, y_i) + lW/2 ||W||^2 + sum_i lH_i/2 ||h_i||^2 + lb/2 ||b||^2`` with
    ``w_i = 1/N`` unless ``w`` (N,) is given, and ``lH`` a number or an (N,) tensor (per-row decay;
    the reduced problem of :func:`solve`).  With ``G = w * dL/dZ``: ``grad_W = G^T H + lW W``,
    ``grad_H = G W + lH H``, ``grad_b = G^T 1 + lb b`` (eqs. (17)-(18)); ``bias=False`` zeroes grad_b.
    """
    Z = H @ W.T + b
    per, G = _dlogits(Z, y, loss, kw)
    if w is None:
        val = per.sum() / N
        G = G / N
    else:
        val = (per * w).sum()
        G = G * w[:, None]
    if torch.is_tensor(lH):
        regH = 0.5 * (lH * H.pow(2).sum(1)).sum()
        lHc = lH[:, None]
    else:
        regH = 0.5 * lH * H.pow(2).sum()
        lHc = lH
    val = float(val + 0.5 * lW * W.pow(2).sum() + regH + 0.5 * lb * b.pow(2).sum())
    if not grad:
        return val
    gb = G.sum(0) + lb * b if bias else torch.zeros_like(b)
    return val, G.T @ H + lW * W, G @ W + lHc * H, gb


def _t_val(W, H, b, y, lW, lH, lb, N, loss="ce", kw=None, w=None, bias=True):
    """Value only (for line searches)."""
    return _t_vg(W, H, b, y, lW, lH, lb, N, loss, kw, w, grad=False, bias=bias)


def _value(W, H, b, y, lW, lH, lb, loss="ce", kw=None):
    t = torch.from_numpy
    return _t_val(t(W), t(H), t(b), t(y), lW, lH, lb, H.shape[0], loss, kw)


def _value_grads(W, H, b, y, lW, lH, lb, loss="ce", kw=None):
    # torch on the numpy buffers (no copy): its matmuls are much faster than numpy's OpenBLAS
    # for these skinny (N x K)(K x d) shapes
    t = torch.from_numpy
    val, gW, gH, gb = _t_vg(t(W), t(H), t(b), t(y), lW, lH, lb, H.shape[0], loss, kw)
    return val, gW.numpy(), gH.numpy(), gb.numpy()


def objective(W, H, b, y, lambda_W, lambda_H, lambda_b, *, loss: str = "ce", **loss_kw) -> float:
    """f(W, H, b) of eq. (4) (= eq. (14)): the MEAN loss over the N samples + weight decay.

    ``f = (1/N) sum_i L(W h_i + b, y_i) + lambda_W/2 ||W||_F^2 + lambda_H/2 ||H||_F^2
    + lambda_b/2 ||b||^2``.  ``loss="ce"`` (default, the paper's): ``L(z, k) = log sum_j exp(z_j)
    - z_k`` (eq. (3)), computed with a stable log-sum-exp in float64; ``"mse"``:
    ``||z - e_k||^2 / 2``; ``"label_smoothing"`` (``smoothing=alpha``): cross-entropy against
    ``(1 - alpha) e_k + alpha/K 1``; ``"focal"`` (``gamma``): ``-(1 - p_k)^gamma log p_k``
    (definitions of :func:`nclib.losses.loss`).  W (K, d), H (N, d) (features as rows), b (K,),
    y (N,) integer labels in [0, K).  Works for any labels, balanced or not.
    """
    kw = _check_loss(loss, loss_kw)
    lW, lH, lb = _check_lambdas(lambda_W, lambda_H, lambda_b)
    W, H, b, y = _check_WHby(W, H, b, y)
    return _value(W, H, b, y, lW, lH, lb, loss, kw)


def gradients(W, H, b, y, lambda_W, lambda_H, lambda_b, *, loss: str = "ce", **loss_kw):
    """(grad_W f, grad_H f, grad_b f) of eq. (4) by the explicit formulas (17)-(18).

    With ``G = dL/dZ / N`` (N, K), the gradient of the mean loss in the logits ``Z = H W^T + b``
    (for CE ``(softmax(Z) - Y)/N``, the paper's ``grad g(WH + b1^T)`` transposed; for MSE
    ``(Z - Y)/N``; for label smoothing ``(softmax(Z) - T)/N`` with the smoothed targets T; for the
    focal loss by autograd):

    * ``grad_W = G^T H + lambda_W W``       (eq. 17, ``grad g H^T + lambda_W W``)
    * ``grad_H = G W + lambda_H H``         (eq. 18, ``W^T grad g + lambda_H H`` transposed)
    * ``grad_b = G^T 1 + lambda_b b``       (sum of the columns of ``grad g``, eq. 39)

    Returns numpy float64 arrays with the shapes of W (K, d), H (N, d), b (K,).
    """
    kw = _check_loss(loss, loss_kw)
    lW, lH, lb = _check_lambdas(lambda_W, lambda_H, lambda_b)
    W, H, b, y = _check_WHby(W, H, b, y)
    _, gW, gH, gb = _value_grads(W, H, b, y, lW, lH, lb, loss, kw)
    return gW, gH, gb


# ----------------------------------------------------------------------------- Theorem 3.1 in closed form
def _xi_simple(rho, K, n, lW, lH):
    """f along the ETF family of Lemma B.4: log(1 + (K-1) exp(-c rho/(K-1))) + lambda_W rho."""
    c = math.sqrt(lW / (n * lH))
    t = c * np.asarray(rho, dtype=np.float64) / (K - 1)
    return np.logaddexp(0.0, math.log(K - 1) - t) + lW * np.asarray(rho, dtype=np.float64)


def xi(rho, K: int, n: int, lambda_W, lambda_H):
    """The function xi(rho; lambda_W, lambda_H) of the proof of Theorem B.1 (Appendix B, Figure 8).

    ``xi(rho) = -rho/((1+c_1)(K-1)) sqrt(lambda_W/(lambda_H n)) + c_2 + lambda_W rho`` with
    ``c_1 = [(K-1) exp(-rho/(K-1) sqrt(lambda_W/(lambda_H n)))]^{-1}`` (condition (e) of the
    proof) and ``c_2 = log((1+c_1)(K-1))/(1+c_1) + c_1/(1+c_1) log((1+c_1)/c_1)`` (Lemma B.3).
    It is the lower bound of f over critical points with ``||W||_F^2 = rho``, attained exactly
    by the scaled simplex ETFs of Lemma B.4.  Evaluated here literally from these formulas
    (in log space: ``log c_1 = c rho/(K-1) - log(K-1)``, so no overflow at large rho).
    ``rho`` may be a scalar or an array (>= 0).
    """
    K, n = _check_Kn(K, n)
    lW, lH, _ = _check_lambdas(lambda_W, lambda_H, 0.0, strict_WH=True)
    r = np.asarray(rho, dtype=np.float64)
    if np.any(~np.isfinite(r)) or np.any(r < 0):
        raise ValueError("rho must be finite and >= 0 (it is ||W||_F^2)")
    c = math.sqrt(lW / (lH * n))
    log_c1 = c * r / (K - 1) - math.log(K - 1)
    inv_1pc1 = 1.0 / (1.0 + np.exp(log_c1))            # 1/(1+c_1) = sigmoid(-log c_1)
    c1_over = 1.0 - inv_1pc1                            # c_1/(1+c_1)
    c2 = inv_1pc1 * (math.log(K - 1) + np.logaddexp(0.0, log_c1)) + c1_over * np.logaddexp(0.0, -log_c1)
    out = -r * c * inv_1pc1 / (K - 1) + c2 + lW * r
    return float(out) if np.ndim(out) == 0 else out


@dataclass(frozen=True)
class ClosedForm:
    """The global minimum of f and the norms of a global minimiser (Theorem 3.1 and its analogues).

    Fields: ``value`` = min f; ``rho`` = ||W*||_F^2; ``w_norm`` = ||w*^k|| (every row);
    ``h_norm`` = ||h*_{k,i}|| (every feature); ``h_over_w`` = sqrt(lambda_W/(n lambda_H)),
    the factor in h*_{k,i} = h_over_w * w*^k (eq. 5); ``H_fro2`` = ||H*||_F^2
    = (lambda_W/lambda_H) rho (Lemma B.2); ``bias`` = the common entry of b* (0 for the
    shift-invariant losses; when lambda_b = 0 any b*1 is optimal and 0 is reported; for MSE
    see :func:`closed_form`); ``margin`` = z_k - z_j at the optimum, the gap between the
    true-class logit and every other logit; ``threshold`` = K sqrt(n lambda_W lambda_H);
    ``origin_only`` = True in the regime where W = H = 0 is the only global minimiser;
    ``origin_at`` = the value of ``threshold`` from which on that happens (1 for CE and MSE,
    1 - alpha for label smoothing); ``loss``; ``rank`` = rank of W* (the d a minimiser needs).
    """

    K: int
    n: int
    lambda_W: float
    lambda_H: float
    lambda_b: float
    value: float
    rho: float
    w_norm: float
    h_norm: float
    h_over_w: float
    H_fro2: float
    bias: float
    margin: float
    threshold: float
    origin_only: bool
    loss: str = "ce"
    origin_at: float = 1.0
    rank: int = 0

    @property
    def regime(self) -> str:
        """``"origin"`` when W = H = 0 is the only global minimiser, else ``"etf"``."""
        return "origin" if self.origin_only else "etf"


def _phi(t, K, loss, kw):
    """Per-sample loss at logits with margin t (true logit t above all others equal): the loss
    along the scaled simplex-ETF family (shift-invariant losses: ce, label_smoothing, focal)."""
    t = np.asarray(t, dtype=np.float64)
    ce = np.logaddexp(0.0, math.log(K - 1) - t)          # log(1 + (K-1) e^{-t}) = -log p_y
    if loss == "ce":
        return ce
    if loss == "label_smoothing":                          # -log p_y + alpha (K-1)/K t
        return ce + kw["smoothing"] * (K - 1) / K * t
    return (-np.expm1(-ce)) ** kw["gamma"] * ce           # focal: (1 - p_y)^gamma (-log p_y)


def _etf_scale(K, q, loss, kw):
    """argmin_{t >= 0} phi(t) + (K-1) q t and the threshold of K q where the origin becomes optimal."""
    if loss == "ce":
        at = 1.0
        t = math.log1p(-(K - 1) * q) - math.log(q) if K * q < 1.0 else 0.0
    elif loss == "label_smoothing":
        a = kw["smoothing"]
        at = 1.0 - a
        # phi'(t) = -(K-1)/(e^t + K - 1) + a (K-1)/K; stationary: e^t = 1/(q + a/K) - (K - 1)
        t = math.log(1.0 / (q + a / K) - (K - 1)) if K * q < at else 0.0
    else:                                                  # focal: 1-D global minimisation
        from scipy.optimize import minimize_scalar

        g = kw["gamma"]
        p = 1.0 / K
        at = K / (K - 1) * (1 - p) ** g * ((1 - p) - g * p * math.log(p))   # -phi'(0) K/(K-1)
        F = lambda s: float(_phi(s, K, loss, kw)) + (K - 1) * q * s
        tmax = float(_phi(0.0, K, loss, kw)) / ((K - 1) * q)               # beyond: F > F(0)
        grid = np.linspace(0.0, tmax, 4001)
        vals = _phi(grid, K, loss, kw) + (K - 1) * q * grid
        j = int(np.argmin(vals))
        t = 0.0
        if j > 0:
            lo, hi = grid[max(j - 1, 0)], grid[min(j + 1, grid.size - 1)]
            r = minimize_scalar(F, bounds=(lo, hi), method="bounded", options={"xatol": 1e-13})
            t = float(r.x) if r.fun < F(0.0) else 0.0
    return t, at


def _closed_form_mse(K, n, lW, lH, lb, q, bias, d):
    """MSE: f = (1/(2K)) ||M + 1 b^T - I||^2 + q ||M||_* after collapsing H (M = Hc W^T, Lemma A.3);
    minimising over b and using the symmetry of the problem, M = alpha C + beta 11^T/K with
    C = I - 11^T/K, alpha = (1 - K q)_+, beta = (1 - K q/mu)_+, mu = lambda_b/(1 + lambda_b)
    (mu = 1 without bias, mu = 0 for an unregularised bias)."""
    mu = (lb / (1.0 + lb)) if bias else 1.0
    alpha = max(1.0 - K * q, 0.0)
    beta = max(1.0 - K * q / mu, 0.0) if mu > 0 else 0.0
    value = ((K - 1) * (1 - alpha) ** 2 + mu * (1 - beta) ** 2) / (2 * K) + q * ((K - 1) * alpha + beta)
    nuc = (K - 1) * alpha + beta
    rank = (K - 1) * (alpha > 0) + (beta > 0)
    if d is not None and d < rank:
        raise ValueError(f"the MSE closed form needs d >= rank(W*) = {rank} (here K={K}, "
                         f"{'with' if bias else 'without'} bias); got d={d}")
    b = (1.0 - beta) / (K * (1.0 + lb)) if bias else 0.0
    return value, q * nuc / lW, alpha, b, rank


def closed_form(K: int, n, lambda_W, lambda_H, lambda_b, *, loss: str = "ce", d: int | None = None,
                bias: bool = True, **loss_kw) -> ClosedForm:
    """Global minimum value of f and the norms of its minimisers, in closed form (balanced classes).

    **Cross-entropy** (``loss="ce"``, the default; derivation in the chapter "Global optimality
    (Theorem 3.1)"): by Theorem 3.1 and Lemma B.4 every global minimiser is a scaled simplex ETF
    with b* = 0 and h*_{k,i} = c w*^k, c = sqrt(lambda_W/(n lambda_H)); on that family f equals
    ``xi(rho) = log(1 + (K-1) exp(-t)) + lambda_W rho`` with ``t = c rho/(K-1)``, a strictly
    convex function of rho >= 0.  With ``q = sqrt(n lambda_W lambda_H)`` (= lambda_W/c),
    ``xi'(rho) = c/(K-1) [ -1/(1 + e^t/(K-1)) + (K-1) q ]``, so

    * if ``K q < 1`` (``xi'(0) < 0``): the unique minimiser has
      ``t* = log((1 - (K-1) q)/q)``, ``rho* = (K-1) t*/c`` and
      ``min f = -log(1 - (K-1) q) + (K-1) q t*``;
    * if ``K q >= 1``: ``xi`` is increasing, rho* = 0, the origin W = H = 0 is the only
      global minimiser (with b = 0; any b = beta 1 if lambda_b = 0) and ``min f = log K``.

    A simplex ETF needs d >= K - 1; with ``d`` given and ``d < K - 1`` in the first regime this
    raises ValueError (the minimum over d-dimensional features is then larger: no ETF fits; use
    :func:`solve`).  Without ``d`` nothing is checked.

    **Label smoothing / focal**: Zhou et al. (NeurIPS 2022, Theorem 3.1) prove that for these
    losses too every global minimiser is a scaled simplex ETF with collapsed features (d >= K-1),
    so min f is the minimum of ``phi(t) + (K-1) q t`` over the margin ``t >= 0``, with phi the
    loss at margin t (rho = (K-1) t/c as above).  Label smoothing (alpha): ``phi(t) =
    log(1 + (K-1)e^{-t}) + alpha (K-1) t/K``, minimiser ``e^{t*} = 1/(q + alpha/K) - (K-1)`` if
    ``K q < 1 - alpha``, else the origin.  Focal: phi(t) = (1 - p)^gamma (-log p) with
    ``p = 1/(1 + (K-1)e^{-t})``, minimised numerically in t (grid + bounded Brent).

    **MSE** (``loss="mse"``, Zhou et al. ICML 2022; Tirer and Bruna 2022; derivation in the chapter
    "Other losses"): with collapsed features and ``M = H_c W^T`` (K x K), Lemma A.3 turns f into
    ``(1/(2K)) ||M + 1 b^T - I||_F^2 + q ||M||_* + lambda_b/2 ||b||^2``; minimising over b and M
    gives ``M* = alpha C + beta 11^T/K`` (C = I - 11^T/K) with ``alpha = (1 - K q)_+``,
    ``beta = (1 - K q/mu)_+``, ``mu = lambda_b/(1 + lambda_b)`` (``bias=False``: b = 0 fixed and
    mu = 1), ``b* = (1 - beta)/(K (1 + lambda_b)) 1`` and
    ``min f = [(K-1)(1-alpha)^2 + mu (1-beta)^2]/(2K) + q [(K-1) alpha + beta]``;
    ``||W*||_F^2 = q ||M*||_*/lambda_W``, ``margin = alpha``.  The origin W = H = 0 is the
    minimiser iff K q >= 1 (the same threshold as CE).  rank W* = (K-1)[alpha>0] + [beta>0]:
    ValueError if ``d`` is given and smaller.

    ``n`` must be an int (balanced classes; a sequence of sizes raises ValueError).  Needs
    lambda_W, lambda_H > 0 (otherwise no minimiser exists) and lambda_b >= 0.
    """
    K, n = _check_Kn(K, n, d)
    kw = _check_loss(loss, loss_kw)
    lW, lH, lb = _check_lambdas(lambda_W, lambda_H, lambda_b, strict_WH=True)
    q = math.sqrt(n) * math.sqrt(lW) * math.sqrt(lH)     # no underflow of lW*lH for tiny lambdas
    c = math.sqrt(lW) / math.sqrt(n * lH)
    if q == 0.0 or c == 0.0 or not math.isfinite(c):
        raise ValueError(f"lambda_W={lW!r}, lambda_H={lH!r} too small: sqrt(n lambda_W lambda_H) underflows")
    thr = K * q
    if loss == "mse":
        value, rho, margin, bstar, rank = _closed_form_mse(K, n, lW, lH, lb, q, bias, d)
        w = math.sqrt(rho / K)
        return ClosedForm(K=K, n=n, lambda_W=lW, lambda_H=lH, lambda_b=lb, value=value, rho=rho, w_norm=w,
                          h_norm=c * w, h_over_w=c, H_fro2=lW / lH * rho, bias=bstar, margin=margin,
                          threshold=thr, origin_only=rank == 0, loss=loss, origin_at=1.0, rank=int(rank))
    if not bias:
        pass  # shift-invariant losses: b* = 0 anyway, the same minimum with or without bias
    if loss == "ce":
        at = 1.0
        if thr < 1.0:
            t = math.log1p(-(K - 1) * q) - math.log(q)
            value = -math.log1p(-(K - 1) * q) + (K - 1) * q * t
        else:
            t, value = 0.0, math.log(K)
    else:
        t, at = _etf_scale(K, q, loss, kw)
        value = float(_phi(t, K, loss, kw)) + (K - 1) * q * t
    origin = t <= 0.0
    if d is not None and d < K - 1 and not origin:
        raise ValueError(f"closed_form assumes d >= K-1 (a K-simplex ETF must fit in R^d); got K={K}, d={d}: "
                         "the minimum over d-dimensional features is larger (use solve)")
    rho = (K - 1) * t / c
    w = math.sqrt(rho / K)
    return ClosedForm(
        K=K, n=n, lambda_W=lW, lambda_H=lH, lambda_b=lb, value=value, rho=rho, w_norm=w,
        h_norm=c * w, h_over_w=c, H_fro2=lW / lH * rho, bias=0.0, margin=t,
        threshold=thr, origin_only=origin, loss=loss, origin_at=at, rank=0 if origin else K - 1,
    )


def _etf_rows(K, d, rotation, seed):
    """A unit simplex ETF (K, d) for d >= K-1 (:func:`nclib.etf.simplex_etf` for d >= K; for
    d = K-1 the frame written in an orthonormal basis of the complement of the all-ones vector)."""
    from .etf import random_orthonormal, simplex_etf

    if d >= K:
        return simplex_etf(K, d, rotation=rotation, seed=seed)
    M = math.sqrt(K / (K - 1)) * (np.eye(K) - np.ones((K, K)) / K)
    V = np.linalg.svd(np.eye(K) - np.ones((K, K)) / K)[0][:, : K - 1]    # basis of 1-perp
    E = M @ V                                                          # (K, K-1), same Gram as M
    if rotation is None:
        return E
    if isinstance(rotation, str):
        if rotation != "random":
            raise ValueError(f"rotation must be None, 'random' or a (d, d) orthogonal array, got {rotation!r}")
        U = random_orthonormal(d, d, seed)
    else:
        U = np.asarray(rotation, dtype=np.float64)
        if U.shape != (d, d) or not np.allclose(U.T @ U, np.eye(d), atol=1e-8):
            raise ValueError(f"rotation array must be a (d, d)=({d}, {d}) orthogonal matrix")
    return E @ U.T


def global_minimizer(K: int, n: int, d: int, lambda_W, lambda_H, lambda_b, rotation=None, seed=None, *,
                     loss: str = "ce", **loss_kw):
    """An explicit global minimiser (W*, H*, b*) of (4) (Theorem 3.1, eqs. (5)-(6)).

    ``W* = sqrt(rho*/K) E`` with E a unit simplex ETF (:func:`nclib.etf.simplex_etf` for d >= K,
    ``rotation`` and ``seed`` passed on: None = first K coordinates, "random", or a (d, d)
    orthogonal matrix; for d = K - 1 the ETF written in a basis of the complement of the all-ones
    vector, then rotated), ``h*_{k,i} = sqrt(lambda_W/(n lambda_H)) w*^k`` with the rows of H* in
    the order of :func:`balanced_labels`, and ``b* = 0``.  In the origin regime
    (``K sqrt(n lambda_W lambda_H) >= 1``) this is W = H = 0.  Needs d >= K - 1 (a K-simplex ETF
    spans K - 1 dimensions); ValueError for d < K - 1 outside the origin regime.  ``loss`` may also be
    "label_smoothing" or "focal" (scale from :func:`closed_form`); not "mse" (its minimiser is
    not an ETF when lambda_b > 0).  Returns numpy float64 arrays W (K, d), H (nK, d), b (K,).
    """
    K, n = _check_Kn(K, n, d)
    if loss == "mse":
        raise ValueError("global_minimizer builds the ETF minimisers of the shift-invariant losses "
                         "(ce, label_smoothing, focal); for loss='mse' use closed_form and solve")
    cf = closed_form(K, n, lambda_W, lambda_H, lambda_b, loss=loss, **loss_kw)
    if cf.origin_only:
        return np.zeros((K, d)), np.zeros((n * K, d)), np.zeros(K)
    if d < K - 1:
        raise ValueError(f"global_minimizer needs d >= K-1 for a K-simplex ETF (Theorem 3.1); got K={K}, d={d}")
    E = _etf_rows(K, d, rotation, seed)
    W = cf.w_norm * E
    H = cf.h_over_w * W[balanced_labels(K, n)]
    return W, H, np.zeros(K)


# ----------------------------------------------------------------------------- numerical solution
@dataclass
class SolveResult:
    """What :func:`solve` returns.

    ``W`` (K, d), ``H`` (N, d), ``b`` (K,) numpy float64 (H in the order of ``y``);
    ``value`` = f(W, H, b) and ``grad_norm`` = the Euclidean norm of the full gradient
    (||grad_W||^2 + ||grad_H||^2 + ||grad_b||^2)^(1/2), both recomputed on the returned
    (W, H, b) by the formulas of :func:`objective` and :func:`gradients` (on the reduced path,
    where all rows of a class of H are equal by construction, evaluated once per class and
    weighted by n_k, which is the same number); ``n_iter`` = iterations run;
    ``converged`` = grad_norm <= tol was reached; ``message``; ``history`` = dict of lists
    ``iter, value, grad_norm, nc1, nc2, nc3, nc4`` at the logged iterations (NC metrics from
    :func:`nclib.metrics.nc_metrics`; on the reduced path they are computed on the K class
    features, which gives the same NC2-NC4 as the full H for balanced classes and NC1 = 0);
    ``reduced`` = whether the class-wise reduction was used; ``time_s`` = wall time;
    ``loss``; ``restart_values`` = the final value of every restart (the best one is returned).
    """

    W: np.ndarray
    H: np.ndarray
    b: np.ndarray
    y: np.ndarray
    value: float
    grad_norm: float
    n_iter: int
    converged: bool
    message: str
    optimizer: str
    reduced: bool
    history: dict = field(default_factory=dict)
    time_s: float = 0.0
    loss: str = "ce"
    restart_values: list = field(default_factory=list)


_DEFAULTS = {  # optimizer: (max_iter, lr)
    "gd": (20000, None),       # lr None: Armijo backtracking with step growth
    "sgd": (20000, 0.05),
    "adam": (20000, 1e-2),
    "lbfgs": (5000, 1.0),
}


@dataclass
class _Problem:
    """One instance of the (weighted) objective of :func:`_t_vg` in torch float64."""

    y: torch.Tensor
    lW: float
    lH: object          # float, or (N,) tensor of per-row decays (reduced problem)
    lb: float
    loss: str = "ce"
    kw: dict = field(default_factory=dict)
    w: object = None    # None (1/N) or (N,) tensor of sample weights
    bias: bool = True

    @property
    def N(self):
        return self.y.shape[0]

    def vg(self, W, H, b):
        return _t_vg(W, H, b, self.y, self.lW, self.lH, self.lb, self.N, self.loss, self.kw, self.w, bias=self.bias)

    def val(self, W, H, b):
        return _t_val(W, H, b, self.y, self.lW, self.lH, self.lb, self.N, self.loss, self.kw, self.w, bias=self.bias)

    def batch_grads(self, W, H, b, idx):
        """Mini-batch gradient: the batch-mean loss gradient plus the full weight decay."""
        Hb = H[idx]
        _, G = _dlogits(Hb @ W.T + b, self.y[idx], self.loss, self.kw)
        G = G / len(idx)
        gH = self.lH * H
        gH[idx] += G @ W
        gb = G.sum(0) + self.lb * b if self.bias else torch.zeros_like(b)
        return G.T @ Hb + self.lW * W, gH, gb


class _Logger:
    """History of a run; ``gnorm`` weighs the blocks so that it is the FULL problem's gradient norm
    (``wH`` a number or a per-row array: the reduced path's rows stand for n_k samples each)."""

    def __init__(self, y, wH, wW=1.0, lift=None):
        self.y = y
        self.wH = wH if np.ndim(wH) == 0 else torch.as_tensor(np.asarray(wH, dtype=np.float64))
        self.wW = wW
        self.lift = lift
        self.h = {k: [] for k in ("iter", "value", "grad_norm", "nc1", "nc2", "nc3", "nc4")}

    def gnorm(self, gW, gH, gb):
        gW, gH, gb = (torch.as_tensor(g) for g in (gW, gH, gb))
        sH = (self.wH * gH.pow(2).sum(1)).sum() if torch.is_tensor(self.wH) else self.wH * gH.pow(2).sum()
        return math.sqrt(float(self.wW * gW.pow(2).sum() + sH + gb.pow(2).sum()))

    def log(self, it, val, gn, W, H, b):
        from .metrics import nc_metrics

        self.h["iter"].append(int(it))
        self.h["value"].append(float(val))
        self.h["grad_norm"].append(float(gn))
        if self.lift is not None:
            W, H = self.lift(W, H)
        try:
            m = nc_metrics(W, b, H, self.y)
            vals = (m.nc1, m.nc2, m.nc3, m.nc4)
        except ValueError:  # e.g. W = 0 or all class means equal: metrics undefined
            vals = (float("nan"),) * 4
        for k, v in zip(("nc1", "nc2", "nc3", "nc4"), vals):
            self.h[k].append(float(v))


def _finite(val, gs) -> bool:
    return math.isfinite(val) and all(bool(torch.isfinite(g).all()) for g in gs)


def _progress_bar(progress, total, optimizer):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"solve[{optimizer}]")


def _run_lbfgs_torch(P, prob, *, tol, max_iter, lr, history_every, logger, bar):
    """torch.optim.LBFGS (history 20, strong Wolfe) in chunks of ``history_every`` iterations;
    restarts its memory once when a chunk makes no progress, stops at the second stall."""
    params = [torch.nn.Parameter(p.clone()) for p in P]
    chunk = max(1, history_every)
    opt = torch.optim.LBFGS(params, lr=lr, max_iter=chunk, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=0.0, tolerance_change=0.0)

    def closure():
        val, *gs = prob.vg(*(p.data for p in params))
        for p, g in zip(params, gs):
            p.grad = g
        return torch.tensor(val, dtype=torch.float64)

    data = lambda: [p.data for p in params]
    val, *gs = prob.vg(*data())
    gn = logger.gnorm(*gs)
    logger.log(0, val, gn, *data())
    it, stalls, msg = 0, 0, "iteration budget exhausted"
    while it < max_iter:
        if gn <= tol:
            break
        opt.param_groups[0]["max_iter"] = min(chunk, max_iter - it)
        before = opt.state[params[0]].get("n_iter", 0)
        good = [p.data.clone() for p in params]
        opt.step(closure)
        after = opt.state[params[0]].get("n_iter", 0)
        val, *gs = prob.vg(*data())
        if not _finite(val, gs):
            for p, g0 in zip(params, good):
                p.data.copy_(g0)
            msg = f"diverged at iteration {it} (non-finite value or gradient); returned the last good iterate"
            warnings.warn(msg, RuntimeWarning, stacklevel=4)
            return data(), it, msg
        it += max(after - before, 1)
        gn_old, val_old = gn, logger.h["value"][-1]
        gn = logger.gnorm(*gs)
        if gn >= gn_old and val >= val_old:   # no progress over a whole chunk
            stalls += 1
            opt.state.clear()                 # restart L-BFGS (drop its curvature pairs) once
            if stalls >= 2:
                logger.log(it, val, gn, *data())
                return data(), it, "L-BFGS stalled (no decrease of value or gradient norm at machine precision)"
        else:
            stalls = 0
        logger.log(it, val, gn, *data())
        if bar is not None:
            bar.update(max(after - before, 1))
            bar.set_postfix(value=val, grad=gn)
        if after == before:
            return data(), it, "L-BFGS made no progress (line search failed at machine precision)"
    if gn <= tol:
        msg = "converged: gradient norm <= tol"
    return data(), it, msg


def _armijo_step(P, grads, val, prob, step):
    """One GD step with Armijo backtracking (sufficient decrease 1/2); returns (trial, step) or (None, 0)."""
    g2 = float(sum(g.pow(2).sum() for g in grads))
    while step >= 1e-300:
        trial = [p - step * g for p, g in zip(P, grads)]
        tv = prob.val(*trial)
        if math.isfinite(tv) and tv <= val - 0.5 * step * g2:
            return trial, step
        step *= 0.5
    return None, 0.0


def _run_first_order(P, prob, optimizer, *, tol, max_iter, lr, batch_size, momentum, history_every,
                     logger, bar, seed):
    """GD (fixed step or Armijo), SGD (mini-batches, momentum) or Adam, with the step schedule
    lr/10 at 1/2 and 3/4 of ``max_iter`` for SGD and Adam."""
    N = prob.N
    P = [p.clone() for p in P]
    rng = np.random.default_rng(seed)
    sched = (lambda t: lr * (0.1 ** ((t >= max_iter // 2) + (t >= (3 * max_iter) // 4))))
    if optimizer in ("sgd", "adam"):
        params = [torch.nn.Parameter(p) for p in P]
        opt = (torch.optim.SGD(params, lr=lr, momentum=momentum) if optimizer == "sgd"
               else torch.optim.Adam(params, lr=lr))
        P = [p.data for p in params]
        B = N if batch_size is None else int(batch_size)
        perm, pos = rng.permutation(N), 0
    good = [p.clone() for p in P]
    step, it, msg = 1.0, 0, "iteration budget exhausted"
    val, *gs = prob.vg(*P)
    gn = logger.gnorm(*gs)
    logger.log(0, val, gn, *P)
    while True:
        if gn <= tol:
            msg = "converged: gradient norm <= tol"
            break
        if it >= max_iter:
            break
        if optimizer == "gd":
            if lr is not None:
                for p, g in zip(P, gs):
                    p.sub_(lr * g)
            else:
                trial, step = _armijo_step(P, gs, val, prob, step)
                if trial is None:
                    msg = "GD line search failed (step underflow)"
                    break
                for p, t_ in zip(P, trial):
                    p.copy_(t_)
                step *= 2.0
        else:
            for gp in opt.param_groups:
                gp["lr"] = sched(it)
            if B >= N:
                grads = gs
            else:
                if pos + B > N:
                    perm, pos = rng.permutation(N), 0
                grads = prob.batch_grads(*P, torch.as_tensor(perm[pos:pos + B]))
                pos += B
            for p, g in zip(params, grads):
                p.grad = g
            opt.step()
        it += 1
        val, *gs = prob.vg(*P)
        if not _finite(val, gs):
            for p, g0 in zip(P, good):
                p.copy_(g0)
            msg = f"diverged at iteration {it} (non-finite value or gradient); returned the last good iterate"
            warnings.warn(msg, RuntimeWarning, stacklevel=4)
            break
        if it % max(1, history_every) == 0 or it == max_iter:
            good = [p.clone() for p in P]
            gn = logger.gnorm(*gs)
            logger.log(it, val, gn, *P)
            if bar is not None:
                bar.update(max(1, history_every))
                bar.set_postfix(value=val, grad=gn)
        else:
            gn = logger.gnorm(*gs)
    if logger.h["iter"][-1] != it:
        logger.log(it, val, gn, *P)
    return P, it, msg


def _run_full(W, H, b, prob, optimizer, *, tol, max_iter, lr, batch_size, momentum,
              history_every, logger, progress, seed):
    """Minimise the problem ``prob`` in torch float64 from (W, H, b); returns (W, H, b, n_iter, msg)."""
    bar = _progress_bar(progress, max_iter, optimizer)
    try:
        if optimizer == "lbfgs":
            P, it, msg = _run_lbfgs_torch([W, H, b], prob, tol=tol, max_iter=max_iter, lr=lr,
                                          history_every=history_every, logger=logger, bar=bar)
        else:
            P, it, msg = _run_first_order([W, H, b], prob, optimizer, tol=tol, max_iter=max_iter, lr=lr,
                                          batch_size=batch_size, momentum=momentum, history_every=history_every,
                                          logger=logger, bar=bar, seed=seed)
    finally:
        if bar is not None:
            bar.close()
    return P[0], P[1], P[2], it, msg


def _run_scipy_lbfgs(W, H, b, prob, *, tol, max_iter, history_every, logger):
    """L-BFGS (scipy's L-BFGS-B, no bounds, memory 20) on a small problem (numpy in, numpy out).

    Stops when the logger's (full-problem) gradient norm is <= tol, after ``max_iter``
    iterations, or when the line search cannot decrease f any more (machine precision).
    """
    from scipy.optimize import minimize

    shapes = (W.shape, H.shape, b.shape)
    sizes = [int(np.prod(sh)) for sh in shapes]

    def unpack(x):
        out, i = [], 0
        for sh, sz in zip(shapes, sizes):
            out.append(x[i:i + sz].reshape(sh))
            i += sz
        return out

    cache = {}

    def fun(x):
        v, gW, gH, gb = prob.vg(*(torch.from_numpy(a) for a in unpack(x)))
        cache.update(x=x.copy(), v=v, gn=logger.gnorm(gW, gH, gb))
        return v, np.concatenate([gW.numpy().ravel(), gH.numpy().ravel(), gb.numpy().ravel()])

    state = {"it": 0, "msg": "iteration budget exhausted"}
    x0 = np.concatenate([W.ravel(), H.ravel(), b.ravel()])
    v0, _ = fun(x0)
    logger.log(0, v0, cache["gn"], W, H, b)
    if cache["gn"] <= tol or max_iter == 0:
        state["msg"] = "converged: gradient norm <= tol" if cache["gn"] <= tol else state["msg"]
        return W, H, b, 0, state["msg"]

    def callback(intermediate_result):
        x = intermediate_result.x
        state["it"] += 1
        if "x" not in cache or not np.array_equal(x, cache["x"]):
            fun(x)
        if state["it"] % max(1, history_every) == 0 or cache["gn"] <= tol:
            logger.log(state["it"], cache["v"], cache["gn"], *unpack(x))
        if cache["gn"] <= tol:
            state["msg"] = "converged: gradient norm <= tol"
            raise StopIteration

    res = minimize(fun, x0, jac=True, method="L-BFGS-B", callback=callback,
                   options=dict(maxiter=max_iter, maxcor=20, ftol=0.0, gtol=0.0, maxls=50, maxfun=20 * max_iter + 100))
    x = res.x
    if not np.array_equal(x, cache.get("x")):
        fun(x)
    if not state["msg"].startswith("converged"):
        state["msg"] = ("iteration budget exhausted" if state["it"] >= max_iter else
                        f"L-BFGS stopped: {res.message} (at machine precision)")
    if logger.h["iter"][-1] != state["it"]:
        logger.log(state["it"], cache["v"], cache["gn"], *unpack(x))
    return (*unpack(x), state["it"], state["msg"])


def _check_solve_args(optimizer, reduced, max_iter, lr, tol, batch_size, N):
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; allowed: {OPTIMIZERS}")
    if reduced is None:
        reduced = optimizer == "lbfgs"
    if reduced and optimizer == "sgd":
        raise ValueError("reduced=True is not available with optimizer='sgd' (it samples the N samples)")
    dmax, lr_default = _DEFAULTS[optimizer]
    max_iter = dmax if max_iter is None else int(max_iter)
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}")
    lr = lr_default if lr is None else float(lr)
    if lr is not None and not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    if batch_size is not None and (int(batch_size) < 1 or int(batch_size) > N):
        raise ValueError(f"batch_size must be in [1, N={N}], got {batch_size}")
    return bool(reduced), max_iter, lr


def _restart_rng(seed, j):
    """Restart 0 uses ``default_rng(seed)`` (the single-start stream); restart j > 0 ``default_rng([seed, j])``."""
    if j == 0 or seed is None:
        return np.random.default_rng(seed)
    return np.random.default_rng([int(seed), j])


def _initial_point(rng, K, sizes, d, init_scale, full: bool, bias: bool):
    """Random start, entries i.i.d. N(0, init_scale^2/d), drawn W, H, b.  With ``full=False`` only the
    class means of H are drawn (the mean of n_k i.i.d. rows is N(0, init_scale^2/(d n_k)) per entry:
    the same distribution as the class means of a full draw, at O(K d) instead of O(N d) cost)."""
    s = init_scale / math.sqrt(d)
    W0 = s * rng.standard_normal((K, d))
    if full:
        H0 = s * rng.standard_normal((int(sizes.sum()), d))
    else:
        H0 = s / np.sqrt(sizes)[:, None] * rng.standard_normal((K, d))
    b0 = s * rng.standard_normal(K)
    return W0, H0, (b0 if bias else np.zeros(K))


def _class_means(H, sizes):
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return np.add.reduceat(H, starts, axis=0) / sizes[:, None]


def _reduce(W0, Hc0, sizes, lams, loss, kw, bias):
    """The class-wise reduced problem: coordinates, balancing scale and the problem object.

    Rows of [W0; Hc0] span r <= min(d, 2K) dimensions (orthonormal basis Q, d x r); the weight
    decays are balanced by ``W = a Wt``, ``h_k = ht_k / a`` with ``a^4 = nbar lambda_H/lambda_W``
    (nbar = N/K); class k's loss has weight n_k/N and its feature decay n_k lambda_H / a^2."""
    lW, lH, lb = lams
    K = W0.shape[0]
    N = int(sizes.sum())
    Q, _ = np.linalg.qr(np.concatenate([W0, Hc0], axis=0).T)
    a = (N / K * lH / lW) ** 0.25 if lW > 0 and lH > 0 else 1.0
    prob = _Problem(torch.arange(K), lW * a * a, torch.as_tensor(sizes * lH / (a * a), dtype=torch.float64), lb,
                    loss, kw, w=torch.as_tensor(sizes / N, dtype=torch.float64), bias=bias)
    return Q, a, prob


def _solve_once(K, sizes, d, lams, optimizer, rng, *, loss, kw, bias, init, init_scale, reduced, kw_run):
    """One start: draw (or take) the initial point, run the chosen path, return (W, Hc-or-H, b, it, msg, logger)."""
    y = class_labels(K, sizes.tolist())
    lW, lH, lb = lams
    if init is None:
        W0, H0, b0 = _initial_point(rng, K, sizes, d, init_scale, full=not reduced, bias=bias)
        Hc0 = H0 if reduced else None
    else:
        W0, H0, b0, _ = _check_WHby(init[0], init[1], init[2], y)
        if W0.shape != (K, d):
            raise ValueError(f"init W0 must have shape (K, d)=({K}, {d}), got {W0.shape}")
        if not bias:
            b0 = np.zeros(K)
        Hc0 = _class_means(H0, sizes) if reduced else None
    if not reduced:
        prob = _Problem(torch.as_tensor(y), lW, lH, lb, loss, kw, bias=bias)
        logger = _Logger(y, 1.0)
        W, H, b, it, msg = _run_full(*(torch.tensor(a) for a in (W0, H0, b0)), prob, optimizer,
                                     logger=logger, **kw_run)
        return W.numpy(), H.numpy(), b.numpy(), it, msg, logger
    Q, a, prob = _reduce(W0, Hc0, sizes, lams, loss, kw, bias)
    logger = _Logger(np.arange(K), a * a / sizes, 1.0 / (a * a), lift=lambda Wt, Ht: (a * Wt, Ht / a))
    if optimizer == "lbfgs":   # small problem: scipy's L-BFGS (less overhead than torch's)
        Wr, Hr, b, it, msg = _run_scipy_lbfgs(W0 @ Q / a, Hc0 @ Q * a, b0, prob, tol=kw_run["tol"],
                                              max_iter=kw_run["max_iter"], history_every=kw_run["history_every"],
                                              logger=logger)
    else:
        Wr, Hr, b, it, msg = _run_full(torch.tensor(W0 @ Q / a), torch.tensor(Hc0 @ Q * a), torch.tensor(b0),
                                       prob, optimizer, logger=logger, **kw_run)
        Wr, Hr, b = Wr.numpy(), Hr.numpy(), b.numpy()
    return a * Wr @ Q.T, Hr @ Q.T / a, b, it, msg, logger


def _final_value_grad(W, H, b, sizes, lams, loss, kw, bias, collapsed: bool):
    """f and the full gradient norm at (W, H, b); with ``collapsed`` H holds the K class features
    (every sample of class k equals h_k), so each class's rows contribute n_k identical terms."""
    lW, lH, lb = lams
    t = torch.from_numpy
    if collapsed:
        N = int(sizes.sum())
        val, gW, gH, gb = _t_vg(t(W), t(H), t(b), torch.arange(len(sizes)), lW, t(sizes * lH), lb, N, loss, kw,
                                w=t(sizes / N), bias=bias)
        gH2 = float(((gH / t(sizes.astype(np.float64))[:, None]).pow(2).sum(1) * t(sizes.astype(np.float64))).sum())
    else:
        y = class_labels(len(sizes), sizes.tolist())
        val, gW, gH, gb = _t_vg(t(W), t(H), t(b), t(y), lW, lH, lb, H.shape[0], loss, kw, bias=bias)
        gH2 = float(gH.pow(2).sum())
    return val, math.sqrt(float(gW.pow(2).sum()) + gH2 + float(gb.pow(2).sum()))


def solve(K: int, n, d: int, lambda_W, lambda_H, lambda_b, optimizer: str = "lbfgs", seed=0, *,
          loss: str = "ce", init=None, init_scale: float = 1.0, tol: float = 1e-9, max_iter: int | None = None,
          lr: float | None = None, batch_size: int | None = None, momentum: float = 0.9,
          reduced: bool | None = None, history_every: int = 10, progress: bool = False,
          restarts: int | None = None, bias: bool = True, **loss_kw) -> SolveResult:
    """Minimise f of eq. (4) numerically in float64 from a random (or given) initialisation.

    Parameters
    ----------
    K, n, d : classes, samples per class (an int: balanced, labels :func:`balanced_labels`; or a
        sequence of the K class sizes, labels :func:`class_labels`), feature dimension (any d >= 1).
    lambda_W, lambda_H, lambda_b : weight decays (>= 0).
    optimizer : ``"gd"`` (full gradient; ``lr=None`` = Armijo backtracking with step doubling,
        else a fixed step), ``"sgd"`` (mini-batches of ``batch_size`` samples drawn without
        replacement, reshuffled each epoch, heavy-ball ``momentum``; the loss gradient of the batch
        is averaged over the batch, the weight decay is applied to all of W, H, b), ``"adam"``
        (full batch unless ``batch_size``), ``"lbfgs"`` (on the full problem ``torch.optim.LBFGS``,
        history 20, strong Wolfe line search, lr 1; on the reduced problem scipy's L-BFGS-B without
        bounds, memory 20, which has less per-call overhead on a few hundred variables).  SGD and
        Adam divide their learning rate by 10 at 1/2 and 3/4 of ``max_iter`` (a schedule chosen
        for the book; the paper's networks divide it by 10 every 40 of 200 epochs, Section 4).
    seed : seeds the initialisation and the mini-batch order.
    loss, **loss_kw : ``"ce"`` (default), ``"mse"``, ``"label_smoothing"`` (``smoothing``),
        ``"focal"`` (``gamma``), as in :func:`objective`.
    bias : False fixes b = 0 (the bias-free UFM).
    init : optional ``(W0, H0, b0)`` starting point (shapes (K, d), (N, d), (K,)); otherwise
        entries i.i.d. N(0, init_scale^2/d), so rows have norm about ``init_scale`` (on the reduced
        path only the class means of H are drawn, from their distribution N(0, init_scale^2/(d n_k))).
    tol : stop when the full gradient norm is <= tol;  max_iter : iteration budget
        (L-BFGS: its iterations; SGD/Adam: steps).  history_every : log every so many iterations.
    restarts : number of random starts, the best final value is returned (default 1 if d >= K,
        10 if d < K, where no theorem excludes spurious local minima; restart 0 is the
        single-start run of ``seed``).  Only without ``init``.
    reduced : use the exact class-wise reduction (default: True for ``"lbfgs"``, False
        otherwise; not allowed with ``"sgd"``, whose point is sampling).  The reduction: for
        fixed (W, b) the problem in H separates over samples, and all samples of class k face
        the same problem ``min_h L(W h + b, k) + (N lambda_H/2) ||h||^2``; replacing every
        h_{k,i} by the best one of its class does not increase f, so f has the same minimum value
        as the problem in K class features ``h_k`` with loss weight n_k/N and decay n_k lambda_H,
        and its minimisers lift to minimisers of f (h_{k,i} = h_k).  This needs no convexity.  For
        a loss convex in the logits (CE, MSE, label smoothing) the per-sample problem is strictly
        convex, so EVERY minimiser of f is collapsed, and the class mean of H0 is a start that does
        not increase f (Jensen).  The gradient iterates stay in the span of the initial rows of
        [W; H_class], of dimension r <= min(d, 2K), and the minimum over (W, H_class) in d
        dimensions is attained in any 2K-dimensional subspace, so the problem is solved exactly in
        r coordinates and lifted back (W = W_r Q^T, h_{k,i} = Q h_k).  The chapters "Global
        optimality (Theorem 3.1)" and "Other losses" prove this.
    progress : show a tqdm bar.

    A run whose value or gradient becomes non-finite stops, warns (RuntimeWarning) and returns
    the last good iterate with that message.  Never uses the closed form.
    """
    t0 = time.perf_counter()
    sizes = _check_sizes(K, n, d)
    K = int(K)
    kw = _check_loss(loss, loss_kw)
    lams = _check_lambdas(lambda_W, lambda_H, lambda_b)
    N = int(sizes.sum())
    reduced, max_iter, lr = _check_solve_args(optimizer, reduced, max_iter, lr, tol, batch_size, N)
    if init is not None and len(init) != 3:
        raise ValueError("init must be a tuple (W0, H0, b0)")
    if restarts is None:
        restarts = 1 if (d >= K or init is not None) else 10
    if not _is_int(restarts) or restarts < 1:
        raise ValueError(f"restarts must be an integer >= 1, got {restarts!r}")
    if init is not None and restarts > 1:
        raise ValueError("restarts > 1 needs random starts (init=None)")
    kw_run = dict(tol=tol, max_iter=max_iter, lr=lr, batch_size=batch_size, momentum=momentum,
                  history_every=history_every, progress=progress, seed=seed)
    best, values = None, []
    for j in range(int(restarts)):
        W, H, b, it, msg, logger = _solve_once(K, sizes, d, lams, optimizer, _restart_rng(seed, j), loss=loss,
                                               kw=kw, bias=bias, init=init, init_scale=init_scale,
                                               reduced=reduced, kw_run=kw_run)
        val, gn = _final_value_grad(W, H, b, sizes, lams, loss, kw, bias, collapsed=reduced)
        values.append(val)
        if best is None or val < best[0]:
            best = (val, gn, W, H, b, it, msg, logger)
    val, gn, W, H, b, it, msg, logger = best
    y = class_labels(K, sizes.tolist())
    if reduced:
        H = H[y]                                                   # lift: h_{k,i} = h_k
    return SolveResult(W=W, H=H, b=b, y=y, value=val, grad_norm=gn, n_iter=it, converged=gn <= tol,
                       message=msg, optimizer=optimizer, reduced=reduced, history=logger.h,
                       time_s=time.perf_counter() - t0, loss=loss, restart_values=values)
