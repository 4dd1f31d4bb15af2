"""The deep unconstrained feature model (deep UFM), and the UFM with nonnegative features.

Free features ``H_1`` (N, d_1) (rows are samples, as everywhere in nclib) pass through L
linear layers, optionally with a ReLU between consecutive layers (Tirer and Bruna, ICML 2022,
L = 2; Súkeník, Mondelli and Lampert, NeurIPS 2023 and NeurIPS 2024, any L):

    H_{l+1} = sigma(H_l W_l^T)   (l = 1 .. L-1),      Z = H_L W_L^T + 1 b^T,

    F = (1/N) sum_i loss(z_i, y_i) + lambda_H/2 ||H_1||_F^2
        + sum_l lambda_{W_l}/2 ||W_l||_F^2 + lambda_b/2 ||b||^2,

with ``W_l`` of shape (d_{l+1}, d_l), ``d_{L+1} = K``, ``sigma`` the identity
(``activation="linear"``) or the ReLU.  ``widths = (d_1, ..., d_L)``.  With L = 1 and the
cross-entropy this is exactly eq. (4) of Zhu et al. (2021) (:mod:`nclib.ufm`); the loss is
any loss of :mod:`nclib.losses` (``"mse"`` is ``1/2 ||z - e_y||^2`` per sample, the loss of
the deep-UFM papers, which use no bias: ``bias=False``).

``nonnegative=True`` in :func:`solve` constrains ``H_1 >= 0`` (entrywise) and solves the
bound-constrained problem directly (L-BFGS-B with bounds, or projected gradient / projected
Adam): with L = 1 this is the UFM with nonnegative features, a model of penultimate features
produced by a ReLU.

Contents: :func:`forward`, :func:`objective` (value through :func:`nclib.losses.loss`),
:func:`gradients` (explicit back-propagation), :func:`solve`, :func:`dnc_value` (the best
deep-neural-collapse configuration, a one-dimensional problem), :func:`layer_report`
(NC metrics and ranks at every layer) and :func:`frame_distances` (distance of class means
to a simplex ETF and to an orthogonal frame); for the UFM with fewer dimensions than classes,
:func:`code_value` (the best value of eq. (4) on a given symmetric configuration, e.g. a regular
polygon) and :func:`one_vs_rest_distance` (the margin that generalized neural collapse maximises).
Everything is float64.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from . import losses as _losses
from . import metrics as _metrics
from .ufm import _nonnegative

__all__ = [
    "ACTIVATIONS",
    "OPTIMIZERS",
    "forward",
    "objective",
    "gradients",
    "DeepSolveResult",
    "solve",
    "dnc_value",
    "frame_distances",
    "layer_report",
    "code_value",
    "one_vs_rest_distance",
]

ACTIVATIONS = ("linear", "relu")
OPTIMIZERS = ("lbfgs", "gd", "adam")


# ----------------------------------------------------------------------------- input checks
def _arr(x, name):
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.ascontiguousarray(x, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf")
    return a


def _check_activation(activation):
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; allowed: {ACTIVATIONS}")


def _check_params(H1, Ws, b, y):
    H1 = _arr(H1, "H1")
    if H1.ndim != 2:
        raise ValueError(f"H1 must be 2-D (N, d_1) with features as rows, got shape {H1.shape}")
    if isinstance(Ws, (np.ndarray, torch.Tensor)) and np.ndim(Ws) == 2:
        Ws = [Ws]
    Ws = [_arr(W, f"W_{i + 1}") for i, W in enumerate(Ws)]
    if len(Ws) < 1:
        raise ValueError("need at least one layer W_1")
    d = H1.shape[1]
    for i, W in enumerate(Ws):
        if W.ndim != 2 or W.shape[1] != d:
            raise ValueError(f"W_{i + 1} must have shape (d_{i + 2}, d_{i + 1}) with d_{i + 1}={d}, got {W.shape}")
        d = W.shape[0]
    K = d
    if K < 2:
        raise ValueError(f"the last layer must have K >= 2 rows (classes), got {K}")
    b = np.zeros(K) if b is None else _arr(b, "b")
    if b.shape != (K,):
        raise ValueError(f"b must have shape (K,)=({K},), got {b.shape}")
    yt = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if yt.ndim != 1 or yt.shape[0] != H1.shape[0] or yt.size == 0:
        raise ValueError(f"y must have shape (N,)=({H1.shape[0]},) with N >= 1, got {yt.shape}")
    if not np.issubdtype(yt.dtype, np.integer):
        raise ValueError(f"y must hold integer class labels, got dtype {yt.dtype}")
    if yt.min() < 0 or yt.max() >= K:
        raise ValueError(f"labels must lie in [0, K)=[0, {K}), found min {yt.min()} max {yt.max()}")
    return H1, Ws, b, yt.astype(np.int64)


def _check_lambdas(lambdas, L):
    """``lambdas = (lambda_W, lambda_H, lambda_b)``, lambda_W a number or a sequence of L numbers."""
    try:
        lW, lH, lb = lambdas
    except (TypeError, ValueError):
        raise ValueError(f"lambdas must be (lambda_W, lambda_H, lambda_b), got {lambdas!r}") from None
    lWs = list(lW) if isinstance(lW, (list, tuple, np.ndarray)) else [lW] * L
    if len(lWs) != L:
        raise ValueError(f"lambda_W must be one number or {L} numbers (one per layer), got {len(lWs)}")
    out = [_nonnegative(name, v)
           for name, v in [(f"lambda_W{i + 1}", x) for i, x in enumerate(lWs)] + [("lambda_H", lH), ("lambda_b", lb)]]
    return out[:L], out[L], out[L + 1]


# ----------------------------------------------------------------------------- the model
def _act(P, activation):
    return np.maximum(P, 0.0) if activation == "relu" else P


def _forward(H1, Ws, b, activation):
    feats, pres = [H1], []
    for W in Ws[:-1]:
        P = feats[-1] @ W.T
        pres.append(P)
        feats.append(_act(P, activation))
    Z = feats[-1] @ Ws[-1].T + b
    return feats, pres, Z


def forward(H1, Ws, b=None, *, activation: str = "linear"):
    """Features of every layer: ``(features, pre_activations, Z)``.

    ``features = [H_1, ..., H_L]`` (the input of each linear layer W_l; for l >= 2
    ``H_l = sigma(H_{l-1} W_{l-1}^T)``), ``pre_activations = [H_1 W_1^T, ..., H_{L-1} W_{L-1}^T]``
    and the logits ``Z = H_L W_L^T + b`` (N, K).  ``b=None`` means no bias.
    """
    _check_activation(activation)
    H1, Ws, b, _ = _check_params(H1, Ws, b, np.zeros(np.shape(H1)[0], dtype=np.int64))
    return _forward(H1, Ws, b, activation)


def _loss_value_grad(Z, y, loss, loss_kw):
    """Mean loss over the N rows of Z and its gradient dloss/dZ (N, K)."""
    N, K = Z.shape
    if loss == "ce":
        m = Z.max(axis=1, keepdims=True)
        E = np.exp(Z - m)
        s = E.sum(axis=1, keepdims=True)
        rows = np.arange(N)
        val = float(np.mean(m[:, 0] + np.log(s[:, 0]) - Z[rows, y]))
        G = E / s
        G[rows, y] -= 1.0
        return val, G / N
    if loss == "mse":
        R = Z.copy()
        R[np.arange(N), y] -= 1.0
        return 0.5 * float(np.sum(R * R)) / N, R / N
    Zt = torch.tensor(Z, requires_grad=True)
    v = _losses.loss(Zt, torch.as_tensor(y), loss, **loss_kw)
    v.backward()
    return float(v.detach()), Zt.grad.numpy()


def _value_grads(H1, Ws, b, y, lWs, lH, lb, activation, loss, loss_kw, bias=True):
    """F and (dF/dH1, [dF/dW_l], dF/db) by back-propagation through the layers."""
    feats, pres, Z = _forward(H1, Ws, b, activation)
    val, G = _loss_value_grad(Z, y, loss, loss_kw)
    val += 0.5 * (lH * float(np.sum(H1 * H1)) + sum(l * float(np.sum(W * W)) for l, W in zip(lWs, Ws))
                  + lb * float(np.sum(b * b)))
    gWs = [None] * len(Ws)
    gWs[-1] = G.T @ feats[-1] + lWs[-1] * Ws[-1]
    gb = G.sum(axis=0) + lb * b if bias else np.zeros_like(b)
    D = G @ Ws[-1]                                   # dF/dH_L (loss part)
    for l in range(len(Ws) - 2, -1, -1):             # layer l maps feats[l] -> pres[l]
        if activation == "relu":
            D = D * (pres[l] > 0)
        gWs[l] = D.T @ feats[l] + lWs[l] * Ws[l]
        D = D @ Ws[l]
    return val, D + lH * H1, gWs, gb


def objective(H1, Ws, b, y, lambdas, *, loss: str = "ce", activation: str = "linear", **loss_kw) -> float:
    """F(H_1, W_1..W_L, b) of the deep UFM (module docstring), the loss through :func:`nclib.losses.loss`.

    ``Ws`` is the list ``[W_1, ..., W_L]`` (a single (K, d) array means L = 1, eq. (4) of the
    paper for ``loss="ce"``); ``b=None`` means no bias; ``lambdas = (lambda_W, lambda_H,
    lambda_b)`` with ``lambda_W`` one number or one per layer.  Computed in torch float64.
    """
    _check_activation(activation)
    H1, Ws, b, y = _check_params(H1, Ws, b, y)
    lWs, lH, lb = _check_lambdas(lambdas, len(Ws))
    t = torch.from_numpy
    H = t(H1)
    for W in Ws[:-1]:
        H = H @ t(W).T
        if activation == "relu":
            H = torch.relu(H)
    Z = H @ t(Ws[-1]).T + t(b)
    val = _losses.loss(Z, t(y), loss, **loss_kw)
    reg = lH * H1.ravel() @ H1.ravel() + sum(l * W.ravel() @ W.ravel() for l, W in zip(lWs, Ws)) + lb * b @ b
    return float(val) + 0.5 * float(reg)


def gradients(H1, Ws, b, y, lambdas, *, loss: str = "ce", activation: str = "linear", **loss_kw):
    """``(dF/dH_1, [dF/dW_1, ..., dF/dW_L], dF/db)`` by explicit back-propagation.

    With ``G = dloss/dZ`` ((softmax(Z) - Y)/N for CE, (Z - Y)/N for MSE, autograd on Z for
    the other losses): ``dF/dW_L = G^T H_L + lambda_{W_L} W_L``, ``dF/db = G^T 1 + lambda_b b``,
    ``D_L = G W_L`` and for l = L-1, ..., 1: ``D <- D * sigma'(H_l W_l^T)``,
    ``dF/dW_l = D^T H_l + lambda_{W_l} W_l``, ``D <- D W_l``; finally
    ``dF/dH_1 = D + lambda_H H_1``.  For L = 1 these are eqs. (17)-(18) of the paper.
    The ReLU's derivative at 0 is taken as 0.
    """
    _check_activation(activation)
    kw = _losses.check_loss(loss, **loss_kw)
    H1, Ws, b, y = _check_params(H1, Ws, b, y)
    lWs, lH, lb = _check_lambdas(lambdas, len(Ws))
    _, gH, gWs, gb = _value_grads(H1, Ws, b, y, lWs, lH, lb, activation, loss, kw)
    return gH, gWs, gb


# ----------------------------------------------------------------------------- solver
@dataclass
class DeepSolveResult:
    """What :func:`solve` returns.

    ``H1`` (N, d_1), ``Ws`` list of (d_{l+1}, d_l), ``b`` (K,) (zeros when ``bias=False``),
    ``y`` labels; ``features = [H_1, ..., H_L]`` and ``pre_activations`` as in :func:`forward`,
    ``Z`` the logits; ``value`` = F; ``grad_norm`` = Euclidean norm of the (projected, when
    ``nonnegative``) gradient over all optimised variables; ``n_iter``, ``converged``
    (grad_norm <= tol), ``message``, ``time_s``; the settings it was run with.
    """

    H1: np.ndarray
    Ws: list
    b: np.ndarray
    y: np.ndarray
    features: list
    pre_activations: list
    Z: np.ndarray
    value: float
    grad_norm: float
    n_iter: int
    converged: bool
    message: str
    settings: dict = field(default_factory=dict)
    time_s: float = 0.0


def _projected_norm(x, g, nneg_mask):
    if nneg_mask is None:
        return float(np.linalg.norm(g))
    gp = g.copy()
    at_bound = nneg_mask & (x <= 0) & (g > 0)
    gp[at_bound] = 0.0
    return float(np.linalg.norm(gp))


class _Packer:
    def __init__(self, shapes):
        self.shapes = shapes
        self.sizes = [int(np.prod(s)) for s in shapes]

    def unpack(self, x):
        out, i = [], 0
        for sh, sz in zip(self.shapes, self.sizes):
            out.append(x[i:i + sz].reshape(sh))
            i += sz
        return out

    @staticmethod
    def pack(arrs):
        return np.concatenate([a.ravel() for a in arrs])


def _init(K, n, widths, seed, init_scale, nonnegative, bias):
    rng = np.random.default_rng(seed)
    dims = list(widths) + [K]
    H1 = init_scale / math.sqrt(dims[0]) * rng.standard_normal((n * K, dims[0]))
    if nonnegative:
        H1 = np.abs(H1)
    Ws = [init_scale / math.sqrt(dims[i]) * rng.standard_normal((dims[i + 1], dims[i])) for i in range(len(widths))]
    b = init_scale / math.sqrt(dims[0]) * rng.standard_normal(K) if bias else np.zeros(K)
    return H1, Ws, b


def _run_lbfgs(fg, x0, bounds, tol, max_iter):
    from scipy.optimize import minimize

    res = minimize(fg, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                   options=dict(maxiter=max_iter, maxcor=20, ftol=0.0, gtol=tol, maxls=50,
                                maxfun=20 * max_iter + 100))
    return res.x, int(res.nit), str(res.message)


def _run_gd(fg, x0, mask, tol, max_iter, lr):
    """(Projected) gradient descent; ``lr=None``: Armijo backtracking with step growth."""
    x = x0.copy()
    proj = (lambda z: np.where(mask, np.maximum(z, 0.0), z)) if mask is not None else (lambda z: z)
    v, g = fg(x)
    step = 1.0 if lr is None else lr
    for it in range(1, max_iter + 1):
        if _projected_norm(x, g, mask) <= tol:
            return x, it - 1, "converged: gradient norm <= tol"
        if lr is not None:
            x = proj(x - lr * g)
            v, g = fg(x)
            if not math.isfinite(v):
                return x, it, "diverged (non-finite value)"
            continue
        for _ in range(60):
            xn = proj(x - step * g)
            vn, gn = fg(xn)
            if vn <= v - 1e-4 * float(g @ (x - xn)):
                break
            step *= 0.5
        else:
            return x, it, "line search failed (machine precision)"
        x, v, g = xn, vn, gn
        step *= 2.0
    return x, max_iter, "iteration budget exhausted"


def _run_adam(fg, x0, mask, tol, max_iter, lr):
    """(Projected) Adam, full batch, lr divided by 10 at 1/2 and 3/4 of the budget."""
    x = x0.copy()
    m = np.zeros_like(x)
    s = np.zeros_like(x)
    b1, b2, eps = 0.9, 0.999, 1e-12
    for it in range(1, max_iter + 1):
        v, g = fg(x)
        if _projected_norm(x, g, mask) <= tol:
            return x, it - 1, "converged: gradient norm <= tol"
        a = lr * (0.1 if it > max_iter // 2 else 1.0) * (0.1 if it > 3 * max_iter // 4 else 1.0)
        m = b1 * m + (1 - b1) * g
        s = b2 * s + (1 - b2) * g * g
        x = x - a * (m / (1 - b1 ** it)) / (np.sqrt(s / (1 - b2 ** it)) + eps)
        if mask is not None:
            x = np.where(mask, np.maximum(x, 0.0), x)
    return x, max_iter, "iteration budget exhausted"


_DEFAULTS = {"lbfgs": (5000, None), "gd": (20000, None), "adam": (20000, 1e-2)}


def solve(K: int, n: int, widths, *, lambdas, loss: str = "mse", activation: str = "linear",
          optimizer: str = "lbfgs", seed=0, nonnegative: bool = False, bias: bool = True, init=None,
          init_scale: float = 1.0, tol: float = 1e-9, max_iter: int | None = None, lr: float | None = None,
          **loss_kw) -> DeepSolveResult:
    """Minimise the deep-UFM objective F (module docstring) from a random or given start, in float64.

    Parameters
    ----------
    K, n : classes and samples per class (labels ``np.repeat(arange(K), n)``, class-major).
    widths : ``(d_1, ..., d_L)``: d_1 is the feature dimension, W_l is (d_{l+1}, d_l), d_{L+1} = K.
    lambdas : ``(lambda_W, lambda_H, lambda_b)``, lambda_W one number or L numbers.
    loss : a loss of :mod:`nclib.losses` (keywords ``smoothing``/``gamma`` via ``loss_kw``).
    activation : ``"linear"`` or ``"relu"`` between consecutive layers (none after the last).
    optimizer : ``"lbfgs"`` (scipy L-BFGS-B, memory 20; with ``nonnegative`` the bounds
        ``H_1 >= 0``), ``"gd"`` ((projected) gradient descent, Armijo backtracking when
        ``lr=None``), ``"adam"`` ((projected) full-batch Adam).
    nonnegative : constrain ``H_1 >= 0`` entrywise (bound-constrained, not reparametrised);
        with L = 1 this is the UFM with nonnegative features.
    bias : optimise the last-layer bias b (else b = 0 throughout, as in the deep-UFM papers).
    init : optional ``(H1, [W_1..W_L], b)``; otherwise i.i.d. N(0, init_scale^2/fan_in) entries
        (|.| of them for H_1 when ``nonnegative``).
    tol : stop when the (projected) gradient is small: L-BFGS-B stops on its max-entry test
        ``max |proj g_i| <= tol``; GD and Adam on the Euclidean norm.

    The returned ``grad_norm`` is the Euclidean norm of the projected gradient, recomputed.
    """
    t0 = time.perf_counter()
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; allowed: {OPTIMIZERS}")
    _check_activation(activation)
    kw = _losses.check_loss(loss, **loss_kw)
    for name, v, lo in (("K", K, 2), ("n", n, 1)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    widths = [widths] if isinstance(widths, (int, np.integer)) else list(widths)
    if len(widths) < 1 or any(not isinstance(w, (int, np.integer)) or w < 1 for w in widths):
        raise ValueError(f"widths must be a non-empty sequence of integers >= 1, got {widths!r}")
    L = len(widths)
    lWs, lH, lb = _check_lambdas(lambdas, L)
    dmax, lr_default = _DEFAULTS[optimizer]
    max_iter = dmax if max_iter is None else int(max_iter)
    lr = lr_default if lr is None else float(lr)
    y = np.repeat(np.arange(K), n)
    if init is None:
        H1, Ws, b = _init(K, n, widths, seed, init_scale, nonnegative, bias)
    else:
        H1, Ws, b, _ = _check_params(init[0], init[1], init[2], y)
        if H1.shape != (n * K, widths[0]) or [W.shape[1] for W in Ws] != widths or Ws[-1].shape[0] != K:
            raise ValueError("init does not match K, n and widths")
        if nonnegative and H1.min() < 0:
            raise ValueError("init H1 must be >= 0 when nonnegative=True")
        if not bias:
            b = np.zeros(K)
    pk = _Packer([H1.shape] + [W.shape for W in Ws] + ([b.shape] if bias else []))
    zero_b = np.zeros(K)

    def split(x):
        parts = pk.unpack(x)
        return parts[0], parts[1:L + 1], (parts[L + 1] if bias else zero_b)

    def fg(x):
        H, W, bb = split(x)
        v, gH, gW, gb = _value_grads(H, W, bb, y, lWs, lH, lb, activation, loss, kw, bias)
        return v, pk.pack([gH] + gW + ([gb] if bias else []))

    x0 = pk.pack([H1] + Ws + ([b] if bias else []))
    mask = None
    bounds = None
    if nonnegative:
        mask = np.zeros(x0.size, dtype=bool)
        mask[:H1.size] = True
        bounds = [(0.0, None)] * H1.size + [(None, None)] * (x0.size - H1.size)
    if optimizer == "lbfgs":
        x, it, msg = _run_lbfgs(fg, x0, bounds, tol, max_iter)
    elif optimizer == "gd":
        x, it, msg = _run_gd(fg, x0, mask, tol, max_iter, lr)
    else:
        x, it, msg = _run_adam(fg, x0, mask, tol, max_iter, lr)
    H1, Ws, b = split(x)
    H1, Ws, b = H1.copy(), [W.copy() for W in Ws], b.copy()
    v, g = fg(x)
    gn = _projected_norm(x, g, mask)
    feats, pres, Z = _forward(H1, Ws, b, activation)
    settings = dict(K=K, n=n, widths=tuple(widths), lambdas=(tuple(lWs), lH, lb), loss=loss, loss_kw=kw,
                    activation=activation, optimizer=optimizer, seed=seed, nonnegative=nonnegative, bias=bias)
    return DeepSolveResult(H1=H1, Ws=Ws, b=b, y=y, features=feats, pre_activations=pres, Z=Z, value=v,
                           grad_norm=gn, n_iter=it, converged=gn <= tol, message=msg, settings=settings,
                           time_s=time.perf_counter() - t0)


# ----------------------------------------------------------------------------- deep neural collapse
def dnc_value(K: int, n: int, L: int, lambdas, *, loss: str = "mse"):
    """The lowest value of F over deep-neural-collapse (DNC) configurations without bias.

    A DNC configuration (Súkeník, Mondelli and Lampert, NeurIPS 2023) has collapsed features
    at every layer and class-mean matrices / weights that are scaled (partial) isometries, so
    the per-class logit matrix ``Z_c`` (K x K, row k = logits of class k) has all its nonzero
    singular values equal.  For a product of L+1 factors the smallest weight decay with a
    given product is ``(L+1)/2 * c * sum_i sigma_i(Z_c)^{2/(L+1)}`` with
    ``c = (n lambda_H prod_l lambda_{W_l})^{1/(L+1)}`` (balanced factors; the AM-GM
    inequality), so F reduces to a scalar problem in the common singular value s:

    * ``loss="mse"``: ``Z_c = s I_K``, ``F(s) = (s-1)^2/2 + (L+1)/2 c K s^{2/(L+1)}``.  All
      factors can be nonnegative scaled identities, so the value is attained both with and
      without ReLUs (the ReLUs then act as the identity).
    * ``loss="ce"``: ``Z_c = s (I - 11^T/K)`` (a simplex ETF, margin s, K-1 singular values s),
      ``F(s) = log(1 + (K-1) e^{-s}) + (L+1)/2 c (K-1) s^{2/(L+1)}``; with L = 1 this is the
      minimum of eq. (4) (Theorem 3.1).  This is the value of the LINEAR deep UFM's DNC.

    Solved by a bounded scalar search and compared with s = 0.  Returns ``(value, s)``.
    Needs lambda_H > 0 and every lambda_W > 0.
    """
    from scipy.optimize import minimize_scalar

    if loss not in ("mse", "ce"):
        raise ValueError(f"dnc_value supports loss 'mse' or 'ce', got {loss!r}")
    if not isinstance(L, (int, np.integer)) or L < 1:
        raise ValueError(f"L must be an integer >= 1, got {L!r}")
    lWs, lH, _ = _check_lambdas(lambdas, L)
    if lH <= 0 or min(lWs) <= 0:
        raise ValueError("dnc_value needs lambda_H > 0 and lambda_W > 0 for every layer")
    p = 2.0 / (L + 1)
    c = math.exp((math.log(n * lH) + sum(math.log(l) for l in lWs)) / (L + 1))
    r = K if loss == "mse" else K - 1

    def F(s):
        fit = 0.5 * (s - 1.0) ** 2 if loss == "mse" else float(np.logaddexp(0.0, math.log(K - 1) - s))
        return fit + (L + 1) / 2 * c * r * s ** p

    hi = 2.0 if loss == "mse" else 10.0 + 2 * math.log(K) + 2 * abs(math.log(c))
    best = minimize_scalar(F, bounds=(0.0, hi), method="bounded", options=dict(xatol=1e-13))
    # refine around the bounded optimum (the function is smooth away from 0)
    s = float(best.x)
    for _ in range(50):
        h = 1e-6 * max(s, 1e-3)
        g = (F(s + h) - F(s - h)) / (2 * h) if s > h else 0.0
        H2 = (F(s + h) - 2 * F(s) + F(s - h)) / h ** 2 if s > h else 0.0
        if H2 <= 0 or abs(g) < 1e-14:
            break
        s = max(s - g / H2, 0.0)
    cands = [(F(0.0), 0.0), (F(s), s), (float(best.fun), float(best.x))]
    return min(cands)


def frame_distances(M):
    """Distances of the class means ``M`` (K, d) to the two frames of neural collapse.

    Returns ``(etf, of)``: ``etf = ||G_c/||G_c|| - ETF||_F`` with ``G_c`` the Gram matrix of the
    globally centred means (unweighted centre) and ETF the normalised simplex ETF Gram
    ``(I - 11^T/K)/sqrt(K-1)`` (NC2 of eq. (8) applied to the means); ``of = ||G/||G|| -
    I/sqrt(K)||_F`` with ``G`` the Gram matrix of the UNcentred means (0 for an orthogonal frame
    of equal norms).  For an orthogonal frame both are 0 (centring an orthogonal frame of equal
    norms gives a simplex ETF); for a centred simplex ETF ``etf = 0`` and ``of > 0``.
    """
    M = _arr(M, "M")
    if M.ndim != 2 or M.shape[0] < 2:
        raise ValueError(f"M must be (K, d) with K >= 2, got shape {M.shape}")
    K = M.shape[0]
    Mc = M - M.mean(axis=0)
    G, Gc = M @ M.T, Mc @ Mc.T
    if np.linalg.norm(G) == 0 or np.linalg.norm(Gc) == 0:
        raise ValueError("class means are zero or all equal: frame distances undefined")
    etf = (np.eye(K) - 1.0 / K) / math.sqrt(K - 1)
    return (float(np.linalg.norm(Gc / np.linalg.norm(Gc) - etf)),
            float(np.linalg.norm(G / np.linalg.norm(G) - np.eye(K) / math.sqrt(K))))


def _rank(M, rel_tol):
    s = np.linalg.svd(M, compute_uv=False)
    return int(np.sum(s > rel_tol * s[0])) if s.size and s[0] > 0 else 0


def layer_report(res: DeepSolveResult, *, rank_tol: float = 1e-6) -> list:
    """NC metrics and ranks at every layer of a :func:`solve` result (deep neural collapse).

    One dict per layer l = 1..L with: ``nc1`` (eq. (7) on H_l; 0 when n = 1), ``etf``/``of``
    (:func:`frame_distances` of the class means of H_l), ``rank_means`` (numerical rank of the
    class-mean matrix, singular values > rank_tol * largest), ``rank_W`` (rank of W_l),
    ``nc3`` (eq. (9) for the last layer; for l < L the alignment
    ``||W_l^T W_l/||.|| - M_l^T M_l/||.|| ||_F`` of W_l's rows with the class means, 0 when
    the weights are aligned with the means as in DNC3) and ``mean_norm`` (average class-mean norm).
    """
    K, n = res.settings["K"], res.settings["n"]
    out = []
    for l, (H, W) in enumerate(zip(res.features, res.Ws)):
        M = H.reshape(K, n, -1).mean(axis=1)
        try:
            etf, of = frame_distances(M)
        except ValueError:
            etf, of = float("nan"), float("nan")
        nc1 = _metrics.nc1(H, res.y) if n > 1 and np.linalg.norm(M - M.mean(0)) > 0 else 0.0
        if l == len(res.Ws) - 1:
            try:
                nc3 = _metrics.nc3(W, H, res.y)
            except ValueError:
                nc3 = float("nan")
        else:
            A, B = W.T @ W, M.T @ M
            nA, nB = np.linalg.norm(A), np.linalg.norm(B)
            nc3 = float(np.linalg.norm(A / nA - B / nB)) if nA > 0 and nB > 0 else float("nan")
        out.append(dict(layer=l + 1, nc1=float(nc1), etf=etf, of=of, rank_means=_rank(M, rank_tol),
                        rank_W=_rank(W, rank_tol), nc3=nc3, mean_norm=float(np.linalg.norm(M, axis=1).mean())))
    return out


# ----------------------------------------------------------------------------- fewer dimensions than classes
def code_value(U, n: int, lambda_W, lambda_H):
    """Best value of eq. (4) with classifier rows and class features on a given unit code U (K, d).

    The candidate: ``w_k = a u_k``, ``h_{k,i} = h u_k``, ``b = 0``.  Its loss depends on
    ``m = a h`` only (logits ``m <u_j, u_k>``), and for a given m the weight decay
    ``lambda_W/2 K a^2 + n lambda_H/2 K h^2`` is smallest at ``K sqrt(n lambda_W lambda_H) m``
    (balanced), so

    ``F(m) = (1/K) sum_k log sum_j exp(m (G_kj - G_kk)) + K sqrt(n lambda_W lambda_H) m``,
    ``G = U U^T``,

    minimised over m >= 0 (a convex function of m).  With U a simplex ETF this is Theorem 3.1's
    minimum (a test checks it); for a regular K-gon (d = 2) or a spherical code it is the value
    of the symmetric candidate a reader would guess when d < K - 1.  The bias is 0: optimal when
    the rows of U sum to 0 and G has constant row sums (any vertex-transitive code).  Returns
    ``(value, m)``.  Rows of U are normalised first.
    """
    from scipy.optimize import minimize_scalar

    U = _arr(U, "U")
    if U.ndim != 2 or U.shape[0] < 2:
        raise ValueError(f"U must be (K, d) with K >= 2, got shape {U.shape}")
    norms = np.linalg.norm(U, axis=1)
    if np.any(norms == 0):
        raise ValueError("U has a zero row")
    U = U / norms[:, None]
    K = U.shape[0]
    lW, lH = float(lambda_W), float(lambda_H)
    if not (lW > 0 and lH > 0):
        raise ValueError(f"lambda_W and lambda_H must be > 0, got {lambda_W!r}, {lambda_H!r}")
    G = U @ U.T
    D = G - np.diag(G)[:, None]                       # D_kj = <u_k,u_j> - 1 <= 0
    q = math.sqrt(n * lW * lH)

    def F(m):
        X = m * D
        mx = X.max(axis=1, keepdims=True)
        return float(np.mean(mx[:, 0] + np.log(np.exp(X - mx).sum(axis=1)))) + K * q * m

    hi = 1.0
    while F(2 * hi) < F(hi) and hi < 1e6:
        hi *= 2
    best = minimize_scalar(F, bounds=(0.0, 2 * hi), method="bounded", options=dict(xatol=1e-12))
    return min((F(0.0), 0.0), (float(best.fun), float(best.x)))


def one_vs_rest_distance(W):
    """Smallest one-vs-rest distance of the normalised rows of W (K, d).

    For each class k, the Euclidean distance from ``w_k/||w_k||`` to the convex hull of the
    other normalised rows; the minimum over k.  Jiang et al. (2023, "Generalized neural collapse
    for a large number of classes") describe the classifier of generalized neural collapse as
    maximising the minimum one-vs-rest margin; this is that margin for the classifier alone
    (the distance from a point to the hull of the others), solved as a nonnegative least-squares
    problem with the simplex constraint enforced by a heavily weighted extra row.
    """
    from scipy.optimize import nnls

    W = _arr(W, "W")
    if W.ndim != 2 or W.shape[0] < 2:
        raise ValueError(f"W must be (K, d) with K >= 2, got shape {W.shape}")
    U = W / np.linalg.norm(W, axis=1, keepdims=True)
    K = U.shape[0]
    big = 1e4
    out = []
    for k in range(K):
        others = np.delete(U, k, axis=0)              # (K-1, d)
        A = np.vstack([others.T, big * np.ones((1, K - 1))])
        rhs = np.concatenate([U[k], [big]])
        alpha, _ = nnls(A, rhs, maxiter=50 * K)
        alpha = alpha / alpha.sum()
        out.append(float(np.linalg.norm(U[k] - alpha @ others)))
    return min(out)
