"""The unconstrained feature model (UFM) of Zhu et al. (2021), Section 2.2, eq. (4)/(14).

    f(W, H, b) = (1/N) sum_{k,i} CE(W h_{k,i} + b, y_k)
                 + lambda_W/2 ||W||_F^2 + lambda_H/2 ||H||_F^2 + lambda_b/2 ||b||_2^2,

with N = nK samples, n per class.  Shapes (the book's convention): ``W`` is (K, d),
``H`` is (N, d) with the features as ROWS (the paper's H is d x N, its columns are our
rows), ``b`` is (K,), ``y`` is (N,) integer labels.  Inputs may be numpy arrays or torch
tensors; everything is computed in float64 numpy.

Contents

* :func:`balanced_labels`, :func:`objective`, :func:`gradients`: f of eq. (4) and its
  gradient, eqs. (17)-(18) (and the bias gradient);
* :func:`xi`, :func:`closed_form`: the global minimum value of (4) and the norms of a
  global minimiser from Theorem 3.1 and the function xi(rho) of Appendix B, including
  the regime ``K sqrt(n lambda_W lambda_H) >= 1`` where the origin is the only global
  minimiser;
* :func:`global_minimizer`: an explicit (W*, H*, b*) built from a simplex ETF;
* :func:`solve`: numerical minimisation of (4) with GD, SGD, Adam or L-BFGS; by default
  L-BFGS runs on an exactly equivalent class-wise reduced problem (see :func:`solve`
  and the book's chapter "Global optimality (Theorem 3.1)" for the proof).
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = [
    "balanced_labels",
    "objective",
    "gradients",
    "xi",
    "ClosedForm",
    "closed_form",
    "global_minimizer",
    "SolveResult",
    "solve",
    "OPTIMIZERS",
]

OPTIMIZERS = ("gd", "sgd", "adam", "lbfgs")


# ----------------------------------------------------------------------------- input checks
def _arr(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.ascontiguousarray(x, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf")
    return a


def _check_lambdas(lambda_W, lambda_H, lambda_b, *, strict_WH: bool = False):
    for name, v in (("lambda_W", lambda_W), ("lambda_H", lambda_H), ("lambda_b", lambda_b)):
        try:
            fv = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a real number >= 0, got {v!r}") from None
        if not math.isfinite(fv) or fv < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    if strict_WH and (float(lambda_W) <= 0 or float(lambda_H) <= 0):
        raise ValueError(
            "lambda_W and lambda_H must be > 0: with either one 0 the infimum of (4) is not "
            f"attained (no global minimiser); got lambda_W={lambda_W!r}, lambda_H={lambda_H!r}"
        )
    return float(lambda_W), float(lambda_H), float(lambda_b)


def _check_Kn(K, n, d=None):
    if not isinstance(K, (int, np.integer)) or isinstance(K, bool) or K < 2:
        raise ValueError(f"K must be an integer >= 2 (number of classes), got K={K!r}")
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be an integer >= 1 (samples per class), got n={n!r}")
    if d is not None and (not isinstance(d, (int, np.integer)) or isinstance(d, bool) or d < 1):
        raise ValueError(f"d must be an integer >= 1 (feature dimension), got d={d!r}")
    return int(K), int(n)


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


def _value(W, H, b, y, lW, lH, lb):
    t = torch.from_numpy
    return _t_val(t(W), t(H), t(b), t(y), lW, lH, lb, H.shape[0])


def _value_grads(W, H, b, y, lW, lH, lb):
    # torch on the numpy buffers (no copy): its matmuls are much faster than numpy's OpenBLAS
    # for these skinny (N x K)(K x d) shapes
    t = torch.from_numpy
    val, gW, gH, gb = _t_vg(t(W), t(H), t(b), t(y), lW, lH, lb, H.shape[0])
    return val, gW.numpy(), gH.numpy(), gb.numpy()


def objective(W, H, b, y, lambda_W, lambda_H, lambda_b) -> float:
    """f(W, H, b) of eq. (4) (= eq. (14)): MEAN cross-entropy over the N samples + weight decay.

    ``f = (1/N) sum_i CE(W h_i + b, y_i) + lambda_W/2 ||W||_F^2 + lambda_H/2 ||H||_F^2
    + lambda_b/2 ||b||^2`` with ``CE(z, k) = log sum_j exp(z_j) - z_k`` (eq. (3)), computed
    with a stable log-sum-exp in float64.  W (K, d), H (N, d) (features as rows), b (K,),
    y (N,) integer labels in [0, K).  Works for any labels, balanced or not.
    """
    lW, lH, lb = _check_lambdas(lambda_W, lambda_H, lambda_b)
    W, H, b, y = _check_WHby(W, H, b, y)
    return _value(W, H, b, y, lW, lH, lb)


def gradients(W, H, b, y, lambda_W, lambda_H, lambda_b):
    """(grad_W f, grad_H f, grad_b f) of eq. (4) by the explicit formulas (17)-(18).

    With ``G = (softmax(H W^T + b) - Y) / N`` (N, K) (softmax minus one-hot, divided by N;
    this is the paper's ``grad g(WH + b1^T)`` transposed):

    * ``grad_W = G^T H + lambda_W W``       (eq. 17, ``grad g H^T + lambda_W W``)
    * ``grad_H = G W + lambda_H H``         (eq. 18, ``W^T grad g + lambda_H H`` transposed)
    * ``grad_b = G^T 1 + lambda_b b``       (sum of the columns of ``grad g``, eq. 39)

    Returns numpy float64 arrays with the shapes of W (K, d), H (N, d), b (K,).
    """
    lW, lH, lb = _check_lambdas(lambda_W, lambda_H, lambda_b)
    W, H, b, y = _check_WHby(W, H, b, y)
    _, gW, gH, gb = _value_grads(W, H, b, y, lW, lH, lb)
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
    """The global minimum of (4) and the norms of a global minimiser (Theorem 3.1).

    Fields: ``value`` = min f; ``rho`` = ||W*||_F^2; ``w_norm`` = ||w*^k|| (every row);
    ``h_norm`` = ||h*_{k,i}|| (every feature); ``h_over_w`` = sqrt(lambda_W/(n lambda_H)),
    the factor in h*_{k,i} = h_over_w * w*^k (eq. 5); ``H_fro2`` = ||H*||_F^2
    = (lambda_W/lambda_H) rho (Lemma B.2); ``bias`` = the common entry of b* (0; when
    lambda_b = 0 any b*1 is optimal and 0 is reported); ``margin`` = z_k - z_j at the
    optimum, the gap between the true-class logit and every other logit;
    ``threshold`` = K sqrt(n lambda_W lambda_H); ``origin_only`` = threshold >= 1, the regime
    where the only global minimiser is W = H = 0 (value log K).
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

    @property
    def regime(self) -> str:
        """``"origin"`` when W = H = 0 is the only global minimiser, else ``"etf"``."""
        return "origin" if self.origin_only else "etf"


def closed_form(K: int, n: int, lambda_W, lambda_H, lambda_b) -> ClosedForm:
    """Global minimum value of (4) and the norms of its minimisers, in closed form.

    Derivation (written out in the chapter "Global optimality (Theorem 3.1)"): by Theorem 3.1
    and Lemma B.4 every global minimiser is a scaled simplex ETF with b* = 0 and
    h*_{k,i} = c w*^k, c = sqrt(lambda_W/(n lambda_H)); on that family f equals
    ``xi(rho) = log(1 + (K-1) exp(-t)) + lambda_W rho`` with ``t = c rho/(K-1)``, a strictly
    convex function of rho >= 0.  With ``q = sqrt(n lambda_W lambda_H)`` (= lambda_W/c),
    ``xi'(rho) = c/(K-1) [ -1/(1 + e^t/(K-1)) + (K-1) q ]``, so

    * if ``K q < 1`` (``xi'(0) < 0``): the unique minimiser has
      ``t* = log((1 - (K-1) q)/q)``, ``rho* = (K-1) t*/c`` and
      ``min f = -log(1 - (K-1) q) + (K-1) q t*``;
    * if ``K q >= 1``: ``xi`` is increasing, rho* = 0, the origin W = H = 0 is the only
      global minimiser (with b = 0; any b = beta 1 if lambda_b = 0) and ``min f = log K``.

    Needs lambda_W, lambda_H > 0 (otherwise no minimiser exists) and lambda_b >= 0.
    """
    K, n = _check_Kn(K, n)
    lW, lH, lb = _check_lambdas(lambda_W, lambda_H, lambda_b, strict_WH=True)
    q = math.sqrt(n * lW * lH)
    c = math.sqrt(lW / (n * lH))
    thr = K * q
    if thr < 1.0:
        t = math.log((1.0 - (K - 1) * q) / q)
        rho = (K - 1) * t / c
        value = -math.log1p(-(K - 1) * q) + (K - 1) * q * t
        origin = False
    else:
        t, rho, value, origin = 0.0, 0.0, math.log(K), True
    w = math.sqrt(rho / K)
    return ClosedForm(
        K=K, n=n, lambda_W=lW, lambda_H=lH, lambda_b=lb, value=value, rho=rho, w_norm=w,
        h_norm=c * w, h_over_w=c, H_fro2=lW / lH * rho, bias=0.0, margin=c * rho / (K - 1),
        threshold=thr, origin_only=origin,
    )


def global_minimizer(K: int, n: int, d: int, lambda_W, lambda_H, lambda_b, rotation=None, seed=None):
    """An explicit global minimiser (W*, H*, b*) of (4) (Theorem 3.1, eqs. (5)-(6)).

    ``W* = sqrt(rho*/K) E`` with E the unit simplex ETF of :func:`nclib.etf.simplex_etf`
    (``rotation`` and ``seed`` are passed on: None = first K coordinates, "random", or a
    (d, d) orthogonal matrix), ``h*_{k,i} = sqrt(lambda_W/(n lambda_H)) w*^k`` with the rows
    of H* in the order of :func:`balanced_labels`, and ``b* = 0``.  In the origin regime
    (``K sqrt(n lambda_W lambda_H) >= 1``) this is W = H = 0.  ValueError for d < K (no
    K-simplex ETF fits in R^d).  Returns numpy float64 arrays W (K, d), H (nK, d), b (K,).
    """
    from .etf import simplex_etf

    K, n = _check_Kn(K, n, d)
    if d < K:
        raise ValueError(f"global_minimizer needs d >= K for a K-simplex ETF (Theorem 3.1); got K={K}, d={d}")
    cf = closed_form(K, n, lambda_W, lambda_H, lambda_b)
    E = simplex_etf(K, d, rotation=rotation, seed=seed)
    W = cf.w_norm * E
    H = cf.h_over_w * W[balanced_labels(K, n)]
    return W, H, np.zeros(K)


# ----------------------------------------------------------------------------- numerical solution
@dataclass
class SolveResult:
    """What :func:`solve` returns.

    ``W`` (K, d), ``H`` (N, d), ``b`` (K,) numpy float64 (H in the order of ``y``);
    ``value`` = f(W, H, b) and ``grad_norm`` = the Euclidean norm of the full gradient
    (||grad_W||^2 + ||grad_H||^2 + ||grad_b||^2)^(1/2), both recomputed on the returned full
    (W, H, b) with :func:`objective` and :func:`gradients`; ``n_iter`` = iterations run;
    ``converged`` = grad_norm <= tol was reached; ``message``; ``history`` = dict of lists
    ``iter, value, grad_norm, nc1, nc2, nc3, nc4`` at the logged iterations (NC metrics from
    :func:`nclib.metrics.nc_metrics`; on the reduced path they are computed on the class
    features, which gives the same NC2-NC4 as the full H and NC1 = 0, because the reduced
    path keeps H collapsed by construction); ``reduced`` = whether the class-wise reduction
    was used; ``time_s`` = wall time.
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


_DEFAULTS = {  # optimizer: (max_iter, lr)
    "gd": (20000, None),       # lr None: Armijo backtracking with step growth
    "sgd": (20000, 0.05),
    "adam": (20000, 1e-2),
    "lbfgs": (5000, 1.0),
}


def _t_vg(W, H, b, y, lW, lH, lb, N):
    """Value and explicit gradients (17)-(18) in torch float64 (same formulas as :func:`gradients`)."""
    Z = H @ W.T + b
    lse = torch.logsumexp(Z, dim=1)
    val = (lse - Z.gather(1, y[:, None])[:, 0]).sum() / N
    val = val + 0.5 * lW * W.pow(2).sum() + 0.5 * lH * H.pow(2).sum() + 0.5 * lb * b.pow(2).sum()
    G = torch.softmax(Z, dim=1)
    G[torch.arange(G.shape[0]), y] -= 1.0
    G /= N
    return float(val), G.T @ H + lW * W, G @ W + lH * H, G.sum(0) + lb * b


def _t_val(W, H, b, y, lW, lH, lb, N):
    """Value only (for line searches)."""
    Z = H @ W.T + b
    val = (torch.logsumexp(Z, dim=1) - Z.gather(1, y[:, None])[:, 0]).sum() / N
    return float(val + 0.5 * lW * W.pow(2).sum() + 0.5 * lH * H.pow(2).sum() + 0.5 * lb * b.pow(2).sum())


class _Logger:
    """History of a run; ``gnorm`` weighs the blocks so that it is the FULL problem's gradient norm."""

    def __init__(self, y, wH, wW=1.0, lift=None):
        self.y = y
        self.wH = wH
        self.wW = wW
        self.lift = lift
        self.h = {k: [] for k in ("iter", "value", "grad_norm", "nc1", "nc2", "nc3", "nc4")}

    def gnorm(self, gW, gH, gb):
        return math.sqrt(float(self.wW * gW.pow(2).sum() + self.wH * gH.pow(2).sum() + gb.pow(2).sum()))

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


def _run_full(W, H, b, y, lams, optimizer, *, tol, max_iter, lr, batch_size, momentum,
              history_every, logger, progress, seed):
    """Minimise the full problem (4) in torch float64 from (W, H, b); returns (W, H, b, n_iter, msg)."""
    lW, lH, lb = lams
    N = H.shape[0]
    P = [W.clone(), H.clone(), b.clone()]
    good = [p.clone() for p in P]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_iter, desc=f"solve[{optimizer}]")
    it = 0
    msg = "iteration budget exhausted"

    def finite(val, gs):
        return math.isfinite(val) and all(bool(torch.isfinite(g).all()) for g in gs)

    def diverged(at):
        nonlocal msg
        for p, g0 in zip(P, good):
            p.copy_(g0)
        msg = f"diverged at iteration {at} (non-finite value or gradient); returned the last good iterate"
        warnings.warn(msg, RuntimeWarning, stacklevel=3)

    if optimizer == "lbfgs":
        for p in P:
            p.requires_grad_(False)
        params = [torch.nn.Parameter(p) for p in P]
        opt = torch.optim.LBFGS(params, lr=lr, max_iter=max(1, history_every), history_size=20,
                                line_search_fn="strong_wolfe", tolerance_grad=0.0, tolerance_change=0.0)
        def closure():
            val, gW, gH, gb = _t_vg(params[0].data, params[1].data, params[2].data, y, lW, lH, lb, N)
            for p, g in zip(params, (gW, gH, gb)):
                p.grad = g
            return torch.tensor(val, dtype=torch.float64)

        val, gW, gH, gb = _t_vg(*P, y, lW, lH, lb, N)
        gn = logger.gnorm(gW, gH, gb)
        logger.log(0, val, gn, *P)
        stalls = 0
        while it < max_iter:
            if gn <= tol:
                msg = "converged: gradient norm <= tol"
                break
            opt.param_groups[0]["max_iter"] = min(max(1, history_every), max_iter - it)
            before = opt.state[params[0]].get("n_iter", 0)
            opt.step(closure)
            after = opt.state[params[0]].get("n_iter", 0)
            val, gW, gH, gb = _t_vg(params[0].data, params[1].data, params[2].data, y, lW, lH, lb, N)
            if not finite(val, (gW, gH, gb)):
                P = [p.data for p in params]
                diverged(it)
                break
            good = [p.data.clone() for p in params]
            it += max(after - before, 1)
            gn_old, val_old = gn, logger.h["value"][-1]
            gn = logger.gnorm(gW, gH, gb)
            if gn >= gn_old and val >= val_old:   # no progress over a whole chunk
                stalls += 1
                opt.state.clear()                 # restart L-BFGS (drop its curvature pairs) once
                if stalls >= 2:
                    logger.log(it, val, gn, *[p.data for p in params])
                    msg = "L-BFGS stalled (no decrease of value or gradient norm at machine precision)"
                    break
            else:
                stalls = 0
            logger.log(it, val, gn, *[p.data for p in params])
            if bar is not None:
                bar.update(max(after - before, 1))
                bar.set_postfix(value=val, grad=gn)
            if after == before:
                msg = "L-BFGS made no progress (line search failed at machine precision)"
                break
        else:
            if gn <= tol:
                msg = "converged: gradient norm <= tol"
        P = [p.data for p in params]
        if bar is not None:
            bar.close()
        return P[0], P[1], P[2], it, msg

    rng = np.random.default_rng(seed)
    sched = (lambda t: lr * (0.1 ** ((t >= max_iter // 2) + (t >= (3 * max_iter) // 4))))
    if optimizer in ("sgd", "adam"):
        params = [torch.nn.Parameter(p) for p in P]
        if optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=lr, momentum=momentum)
        else:
            opt = torch.optim.Adam(params, lr=lr)
        P = [p.data for p in params]
        B = N if batch_size is None else int(batch_size)
        perm, pos = rng.permutation(N), 0
    step = 1.0  # gd with Armijo backtracking
    val, gW, gH, gb = _t_vg(*P, y, lW, lH, lb, N)
    gn = logger.gnorm(gW, gH, gb)
    logger.log(0, val, gn, *P)
    while True:
        if gn <= tol:
            msg = "converged: gradient norm <= tol"
            break
        if it >= max_iter:
            break
        if optimizer == "gd":
            if lr is not None:
                for p, g in zip(P, (gW, gH, gb)):
                    p.sub_(lr * g)
            else:
                g2 = float(gW.pow(2).sum() + gH.pow(2).sum() + gb.pow(2).sum())
                while True:
                    trial = [p - step * g for p, g in zip(P, (gW, gH, gb))]
                    tv = _t_val(*trial, y, lW, lH, lb, N)
                    if math.isfinite(tv) and tv <= val - 0.5 * step * g2:
                        break
                    step *= 0.5
                    if step < 1e-300:
                        break
                if step < 1e-300:
                    msg = "GD line search failed (step underflow)"
                    break
                for p, t_ in zip(P, trial):
                    p.copy_(t_)
                step *= 2.0
        else:
            for gp in opt.param_groups:
                gp["lr"] = sched(it)
            if B >= N:
                grads = (gW, gH, gb)
            else:
                if pos + B > N:
                    perm, pos = rng.permutation(N), 0
                idx = torch.as_tensor(perm[pos:pos + B])
                pos += B
                Hb = P[1][idx]
                Z = Hb @ P[0].T + P[2]
                G = torch.softmax(Z, dim=1)
                G[torch.arange(len(idx)), y[idx]] -= 1.0
                G /= len(idx)
                sgH = lH * P[1]
                sgH[idx] += G @ P[0]
                grads = (G.T @ Hb + lW * P[0], sgH, G.sum(0) + lb * P[2])
            for p, g in zip(params, grads):
                p.grad = g
            opt.step()
        it += 1
        val, gW, gH, gb = _t_vg(*P, y, lW, lH, lb, N)
        if not finite(val, (gW, gH, gb)):
            diverged(it)
            break
        if it % max(1, history_every) == 0 or it == max_iter:
            good = [p.clone() for p in P]
            gn = logger.gnorm(gW, gH, gb)
            logger.log(it, val, gn, *P)
            if bar is not None:
                bar.update(max(1, history_every))
                bar.set_postfix(value=val, grad=gn)
        else:
            gn = logger.gnorm(gW, gH, gb)
    if logger.h["iter"][-1] != it:
        logger.log(it, val, gn, *P)
    if bar is not None:
        bar.close()
    return P[0], P[1], P[2], it, msg


def _np_vg(W, H, b, y, lW, lH, lb):
    """Value and gradients (17)-(18) in numpy, for the small reduced problem (low call overhead)."""
    N = H.shape[0]
    Z = H @ W.T + b
    m = Z.max(axis=1, keepdims=True)
    E = np.exp(Z - m)
    s = E.sum(axis=1, keepdims=True)
    rows = np.arange(N)
    val = float(np.mean(m[:, 0] + np.log(s[:, 0]) - Z[rows, y])
                + 0.5 * (lW * np.sum(W * W) + lH * np.sum(H * H) + lb * np.sum(b * b)))
    G = E / s
    G[rows, y] -= 1.0
    G /= N
    return val, G.T @ H + lW * W, G @ W + lH * H, G.sum(axis=0) + lb * b


def _run_scipy_lbfgs(W, H, b, y, lams, *, tol, max_iter, history_every, logger):
    """L-BFGS (scipy's L-BFGS-B, no bounds, memory 20) on a small problem in numpy float64.

    Stops when the logger's (full-problem) gradient norm is <= tol, after ``max_iter``
    iterations, or when the line search cannot decrease f any more (machine precision).
    """
    from scipy.optimize import minimize

    lW, lH, lb = lams
    shapes = (W.shape, H.shape, b.shape)
    sizes = [int(np.prod(sh)) for sh in shapes]

    def unpack(x):
        out, i = [], 0
        for sh, sz in zip(shapes, sizes):
            out.append(x[i:i + sz].reshape(sh))
            i += sz
        return out

    def gnorm(gW, gH, gb):
        return math.sqrt(logger.wW * np.sum(gW * gW) + logger.wH * np.sum(gH * gH) + np.sum(gb * gb))

    cache = {}

    def fun(x):
        v, gW, gH, gb = _np_vg(*unpack(x), y, lW, lH, lb)
        cache.update(x=x.copy(), v=v, gn=gnorm(gW, gH, gb))
        return v, np.concatenate([gW.ravel(), gH.ravel(), gb.ravel()])

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


def solve(K: int, n: int, d: int, lambda_W, lambda_H, lambda_b, optimizer: str = "lbfgs", seed=0, *,
          init=None, init_scale: float = 1.0, tol: float = 1e-9, max_iter: int | None = None,
          lr: float | None = None, batch_size: int | None = None, momentum: float = 0.9,
          reduced: bool | None = None, history_every: int = 10, progress: bool = False) -> SolveResult:
    """Minimise f of eq. (4) numerically in float64 from a random (or given) initialisation.

    Parameters
    ----------
    K, n, d : classes, samples per class (balanced, labels :func:`balanced_labels`), feature dim.
    lambda_W, lambda_H, lambda_b : weight decays (>= 0).
    optimizer : ``"gd"`` (full gradient; ``lr=None`` = Armijo backtracking with step doubling,
        else a fixed step), ``"sgd"`` (mini-batches of ``batch_size`` samples drawn without
        replacement, reshuffled each epoch, heavy-ball ``momentum``; the CE gradient of the batch
        is averaged over the batch, the weight decay is applied to all of W, H, b), ``"adam"``
        (full batch unless ``batch_size``), ``"lbfgs"`` (on the full problem ``torch.optim.LBFGS``,
        history 20, strong Wolfe line search, lr 1; on the reduced problem scipy's L-BFGS-B without
        bounds, memory 20, which has less per-call overhead on a few hundred variables).  SGD and Adam divide their learning rate by 10 at 1/2 and 3/4
        of ``max_iter`` (the paper's step schedule, Section 4).
    seed : seeds the initialisation and the mini-batch order.
    init : optional ``(W0, H0, b0)`` starting point (shapes (K, d), (nK, d), (K,)); otherwise
        entries i.i.d. N(0, init_scale^2/d), so rows have norm about ``init_scale``.
    tol : stop when the full gradient norm is <= tol;  max_iter : iteration budget
        (L-BFGS: its iterations; SGD/Adam: steps).  history_every : log every so many iterations.
    reduced : use the exact class-wise reduction (default: True for ``"lbfgs"``, False
        otherwise; not allowed with ``"sgd"``, whose point is sampling).  The reduction: for
        fixed (W, b) the problem in H separates over samples into strictly convex problems whose
        minimiser depends only on the class, so (4) has the same minimum value and the same
        minimisers as the problem in K class features ``h_k`` with weight ``n lambda_H``
        (a UFM with n = 1); its gradient iterates stay in the span of the initial rows of
        [W; H_class], of dimension r <= min(d, 2K), so the problem is solved exactly in
        r coordinates and lifted back (W = W_r Q^T, h_{k,i} = Q h_k).  The start is the class
        mean of H0, which does not increase f (Jensen).  The chapter "Global optimality
        (Theorem 3.1)" proves this.  The returned value and gradient norm are always
        recomputed on the full (W, H, b).
    progress : show a tqdm bar.

    A run whose value or gradient becomes non-finite stops, warns (RuntimeWarning) and returns
    the last good iterate with that message.  Never uses the closed form.
    """
    t0 = time.perf_counter()
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; allowed: {OPTIMIZERS}")
    K, n = _check_Kn(K, n, d)
    lW, lH, lb = _check_lambdas(lambda_W, lambda_H, lambda_b)
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
    N = n * K
    if batch_size is not None and (int(batch_size) < 1 or int(batch_size) > N):
        raise ValueError(f"batch_size must be in [1, N={N}], got {batch_size}")
    y = balanced_labels(K, n)
    if init is None:
        rng = np.random.default_rng(seed)
        s = init_scale / math.sqrt(d)
        W0, H0, b0 = s * rng.standard_normal((K, d)), s * rng.standard_normal((N, d)), s * rng.standard_normal(K)
    else:
        if len(init) != 3:
            raise ValueError("init must be a tuple (W0, H0, b0)")
        W0, H0, b0, _ = _check_WHby(init[0], init[1], init[2], y)
        if W0.shape != (K, d):
            raise ValueError(f"init W0 must have shape (K, d)=({K}, {d}), got {W0.shape}")
    kw = dict(tol=tol, max_iter=max_iter, lr=lr, batch_size=batch_size, momentum=momentum,
              history_every=history_every, progress=progress, seed=seed)
    if not reduced:
        yt = torch.as_tensor(y)
        logger = _Logger(y, 1.0)
        W, H, b, it, msg = _run_full(*(torch.tensor(a) for a in (W0, H0, b0)), yt, (lW, lH, lb), optimizer,
                                     logger=logger, **kw)
        W, H, b = W.numpy(), H.numpy(), b.numpy()
    else:
        Hc0 = H0.reshape(K, n, d).mean(axis=1)                       # class means (y is class-major)
        Q, _ = np.linalg.qr(np.concatenate([W0, Hc0], axis=0).T)     # (d, r), r = min(d, 2K)
        # balance the two weight decays: W = a Wt, h_k = ht_k / a with a^4 = n lambda_H / lambda_W
        # turns lambda_W/2||W||^2 + n lambda_H/2 ||Hc||^2 into q/2 (||Wt||^2 + ||Ht||^2),
        # q = sqrt(n lambda_W lambda_H), and keeps W Hc^T: a UFM with n = 1, lambda_W = lambda_H = q.
        a = (n * lH / lW) ** 0.25 if lW > 0 and lH > 0 else 1.0
        lWr, lHr = lW * a * a, n * lH / (a * a)
        yk = np.arange(K)
        logger = _Logger(yk, a * a / n, 1.0 / (a * a), lift=lambda Wt, Ht: (a * Wt, Ht / a))
        if optimizer == "lbfgs":   # small problem: scipy's L-BFGS in numpy (less overhead than torch)
            Wr, Hr, b, it, msg = _run_scipy_lbfgs(W0 @ Q / a, Hc0 @ Q * a, b0, yk, (lWr, lHr, lb), tol=tol,
                                                  max_iter=max_iter, history_every=history_every, logger=logger)
        else:
            Wr, Hr, b, it, msg = _run_full(torch.tensor(W0 @ Q / a), torch.tensor(Hc0 @ Q * a), torch.tensor(b0),
                                           torch.as_tensor(yk), (lWr, lHr, lb), optimizer, logger=logger, **kw)
            Wr, Hr, b = Wr.numpy(), Hr.numpy(), b.numpy()
        W = a * Wr @ Q.T
        H = (Hr @ Q.T / a)[y]
    val, gW, gH, gb = _value_grads(W, H, b, y, lW, lH, lb)
    gn = math.sqrt(float(np.sum(gW * gW) + np.sum(gH * gH) + np.sum(gb * gb)))
    return SolveResult(W=W, H=H, b=b, y=y, value=val, grad_norm=gn, n_iter=it, converged=gn <= tol,
                       message=msg, optimizer=optimizer, reduced=bool(reduced), history=logger.h,
                       time_s=time.perf_counter() - t0)


# ----------------------------------------------------------------------------- landscape names
# The second-order tools and the convex counterpart of Theorem 3.2 live in nclib.landscape;
# ``nclib.ufm.hessian_min_eig`` etc. resolve there lazily (nclib.landscape imports this module).
def __getattr__(name):
    from . import landscape

    if name in landscape.__all__:
        return getattr(landscape, name)
    raise AttributeError(f"module 'nclib.ufm' has no attribute {name!r}")
