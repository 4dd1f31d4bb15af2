"""Second-order analysis of the UFM and its convex counterpart (paper, Theorem 3.2, Appendix C).

Everything here is float64 and uses the book's shapes: ``W`` (K, d), ``H`` (N, d) with the
features as ROWS (the paper's H is d x N), ``b`` (K,), ``y`` (N,) integer labels, and
``f`` the objective of eq. (4)/(14) with the MEAN cross-entropy (:func:`nclib.ufm.objective`).
The logits are the (N, K) matrix ``Z = H W^T + 1 b^T``, the TRANSPOSE of the paper's
``W H + b 1^T`` (K x N), and ``G = grad g`` is (N, K): ``G = (softmax(Z) - Y)/N``.
Transposing changes no singular value, so ``||G||_2`` and ``||Z||_*`` are the paper's.

Contents

* Hessian of f: :func:`hvp` (analytic, or by autograd double backward), :func:`hessian`
  (dense, small problems), :func:`hessian_min_eig` (Lanczos / ARPACK on a LinearOperator),
  :func:`curvature` (the Rayleigh quotient along a direction);
* the origin W = H = 0 in closed form: :func:`origin_hessian_spectrum`, :func:`origin_min_eig`;
* the proof of Theorem 3.2: :func:`grad_g`, :func:`certificate_c4` (Lemma C.4, eq. (43)),
  :func:`proof_direction` (the negative-curvature direction of Appendix C.1);
* lemma checks: :func:`balance_residual` (Lemma B.2), :func:`nuclear_norm_variational`
  (Lemma A.3), :func:`ce_lower_bound` and :func:`lemma_b5_c1` (Lemma B.5);
* the convex counterpart (37): :func:`convex_objective`, :func:`convex_dual`,
  :func:`convex_kkt` (conditions (41)), :func:`solve_convex` (FISTA with singular value
  thresholding and a duality-gap certificate), :func:`factorize` (Lemma A.3's balanced
  factorisation back to (W, H, b));
* critical points that are not minimisers: :func:`origin_critical_point`,
  :func:`tied_critical_point` (classes merged into groups: a lower-rank solution),
  :func:`dropped_classes_critical_point` (only m < K classes get features),
  :func:`subspace_critical_point` (the best point with all rows in an r-dim subspace);
* :func:`perturbed_gd`: gradient descent with random perturbations near saddles
  (Jin et al. 2017), which escapes the strict saddles above;
* :func:`multistart`: many random initialisations of GD, SGD or Adam on (4) run at once
  (a batch of independent problems), for the "benign landscape" experiment.

Other losses (:mod:`nclib.losses`: ``loss="mse"``, ``"label_smoothing"``, ``"focal"``) are accepted
by :func:`hvp`, :func:`hessian`, :func:`hessian_min_eig`, :func:`curvature`,
:func:`origin_hessian_spectrum`, :func:`origin_min_eig` and :func:`multistart` (Hessians by torch
double backward, gradients by :func:`nclib.ufm.gradients`' formulas); the proof tools of Theorem 3.2,
the convex counterpart and the constructed critical points are for the cross-entropy only.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

from . import losses as _losses
from . import ufm as _ufm          # one way: nclib.ufm does not import this module

__all__ = [
    "pack",
    "unpack",
    "hvp",
    "hessian",
    "hessian_min_eig",
    "MinEig",
    "curvature",
    "origin_hessian_spectrum",
    "origin_min_eig",
    "origin_value",
    "grad_g",
    "certificate_c4",
    "ProofDirection",
    "proof_direction",
    "balance_residual",
    "nuclear_norm_variational",
    "ce_lower_bound",
    "lemma_b5_c1",
    "convex_objective",
    "convex_dual",
    "convex_kkt",
    "ConvexResult",
    "solve_convex",
    "factorize",
    "origin_critical_point",
    "tied_critical_point",
    "dropped_classes_critical_point",
    "subspace_critical_point",
    "PGDResult",
    "perturbed_gd",
    "MultiStartResult",
    "multistart",
]


# ----------------------------------------------------------------------------- helpers
def _arr(x, name):
    return _ufm._arr(x, name)


def _lams(lambda_W, lambda_H, lambda_b, strict_WH=False):
    return _ufm._check_lambdas(lambda_W, lambda_H, lambda_b, strict_WH=strict_WH)


def _check(W, H, b, y):
    return _ufm._check_WHby(W, H, b, y)


def _softmax(Z):
    E = np.exp(Z - Z.max(axis=1, keepdims=True))
    return E / E.sum(axis=1, keepdims=True)


def _G(W, H, b, y):
    """grad g w.r.t. the (N, K) logits: (softmax(H W^T + b) - Y)/N, and the softmax P."""
    N = H.shape[0]
    P = _softmax(H @ W.T + b)
    G = P.copy()
    G[np.arange(N), y] -= 1.0
    return G / N, P


def pack(W, H, b) -> np.ndarray:
    """Flatten (W, H, b) into one float64 vector: W row-major, then H row-major, then b."""
    return np.concatenate([_arr(W, "W").ravel(), _arr(H, "H").ravel(), _arr(b, "b").ravel()])


def unpack(x, K: int, N: int, d: int):
    """Inverse of :func:`pack`: a vector of length ``Kd + Nd + K`` -> (W (K,d), H (N,d), b (K,))."""
    x = _arr(x, "x").ravel()
    if x.size != K * d + N * d + K:
        raise ValueError(f"vector has length {x.size}, expected K*d + N*d + K = {K * d + N * d + K}")
    return x[: K * d].reshape(K, d), x[K * d: K * d + N * d].reshape(N, d), x[K * d + N * d:]


# ----------------------------------------------------------------------------- Hessian of f
def _hvp_analytic(W, H, b, y, lW, lH, lb, A, B, c, G=None, P=None):
    if G is None:
        G, P = _G(W, H, b, y)
    N = H.shape[0]
    dZ = B @ W.T + H @ A.T + c                                  # first-order change of the logits
    PdZ = P * dZ
    dG = (PdZ - P * PdZ.sum(axis=1, keepdims=True)) / N         # softmax Jacobian applied to dZ
    return (dG.T @ H + G.T @ B + lW * A,                        # d(G^T H + lW W)
            dG @ W + G @ A + lH * B,                            # d(G W + lH H)
            dG.sum(axis=0) + lb * c)                            # d(G^T 1 + lb b)


def _f_torch(W, H, b, y, lW, lH, lb, loss="ce", kw=None):
    Z = H @ W.T + b
    L = _losses.loss(Z, y, loss, reduction="mean", **(kw or {}))
    return L + 0.5 * lW * (W * W).sum() + 0.5 * lH * (H * H).sum() + 0.5 * lb * (b * b).sum()


class _AutogradHvp:
    """Hessian-vector products of f by torch double backward; the gradient graph is built once."""

    def __init__(self, W, H, b, y, lW, lH, lb, loss="ce", kw=None):
        self.t = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (W, H, b)]
        yt = torch.as_tensor(y, dtype=torch.long)
        self.g = torch.autograd.grad(_f_torch(*self.t, yt, lW, lH, lb, loss, kw), self.t, create_graph=True)

    def __call__(self, A, B, c):
        v = [torch.as_tensor(a, dtype=torch.float64) for a in (A, B, c)]
        dot = sum((gi * vi).sum() for gi, vi in zip(self.g, v))
        return tuple(h.detach().numpy() for h in torch.autograd.grad(dot, self.t, retain_graph=True))


def _hvp_autograd(W, H, b, y, lW, lH, lb, A, B, c, loss="ce", kw=None):
    return _AutogradHvp(W, H, b, y, lW, lH, lb, loss, kw)(A, B, c)


def _method(method, loss):
    if method is None:
        return "analytic" if loss == "ce" else "autograd"
    if method not in ("analytic", "autograd"):
        raise ValueError(f"unknown method {method!r}; allowed: 'analytic', 'autograd'")
    if method == "analytic" and loss != "ce":
        raise ValueError(f"method='analytic' is the cross-entropy formula; for loss={loss!r} use 'autograd'")
    return method


def _mv_factory(W, H, b, y, lW, lH, lb, loss, kw):
    """A function (A, B, c) -> nabla^2 f [A, B, c] (analytic for CE, autograd otherwise)."""
    if loss == "ce":
        G, P = _G(W, H, b, y)
        return lambda A, B, c: _hvp_analytic(W, H, b, y, lW, lH, lb, A, B, c, G, P)
    return _AutogradHvp(W, H, b, y, lW, lH, lb, loss, kw)


def hvp(W, H, b, y, lambda_W, lambda_H, lambda_b, direction, *, method: str | None = None, loss: str = "ce",
        **loss_kw):
    """Hessian-vector product ``nabla^2 f(W, H, b) [Delta]`` of f in eq. (14).

    ``direction`` is a tuple ``(A, B, c)`` shaped like (W, H, b), or a flat vector as made
    by :func:`pack`; the result has the same form.  ``method="analytic"`` differentiates the
    gradient formulas (17)-(18) once more (with ``dZ = B W^T + H A^T + 1 c^T`` and ``dG`` the
    softmax Jacobian applied to ``dZ``):

    * ``H_W = dG^T H + G^T B + lambda_W A``, ``H_H = dG W + G A + lambda_H B``,
      ``H_b = dG^T 1 + lambda_b c``,

    whose quadratic form is eq. (40): ``nabla^2 g[dZ, dZ] + 2<G, B A^T> + lambda_W ||A||^2
    + lambda_H ||B||^2 + lambda_b ||c||^2``.  ``method="autograd"`` is torch double backward
    (an independent computation, slower).  Cost O(N K d) per product.  Default (None): analytic for
    ``loss="ce"``, autograd for the other losses of :func:`nclib.ufm.objective`.
    """
    kw = _ufm._check_loss(loss, loss_kw)
    method = _method(method, loss)
    lW, lH, lb = _lams(lambda_W, lambda_H, lambda_b)
    W, H, b, y = _check(W, H, b, y)
    K, d = W.shape
    N = H.shape[0]
    flat = not isinstance(direction, (tuple, list))
    if flat:
        A, B, c = unpack(direction, K, N, d)
    else:
        if len(direction) != 3:
            raise ValueError("direction must be a flat vector or a tuple (A, B, c) shaped like (W, H, b)")
        A, B, c = (_arr(v, nm) for v, nm in zip(direction, ("A", "B", "c")))
        if A.shape != W.shape or B.shape != H.shape or c.shape != b.shape:
            raise ValueError(f"direction shapes {A.shape, B.shape, c.shape} do not match "
                             f"(W, H, b) shapes {W.shape, H.shape, b.shape}")
    if method == "analytic":
        out = _hvp_analytic(W, H, b, y, lW, lH, lb, A, B, c)
    else:
        out = _hvp_autograd(W, H, b, y, lW, lH, lb, A, B, c, loss, kw)
    return np.concatenate([o.ravel() for o in out]) if flat else out


def hessian(W, H, b, y, lambda_W, lambda_H, lambda_b, *, max_params: int = 4000, loss: str = "ce",
            **loss_kw) -> np.ndarray:
    """The dense Hessian of f (eq. 14) in the coordinates of :func:`pack`, for small problems.

    Built column by column from the analytic :func:`hvp` (P = Kd + Nd + K products) and
    symmetrised.  ValueError when P exceeds ``max_params`` (use :func:`hessian_min_eig`).
    Other losses: the products are torch double backward.
    """
    kw = _ufm._check_loss(loss, loss_kw)
    lW, lH, lb = _lams(lambda_W, lambda_H, lambda_b)
    W, H, b, y = _check(W, H, b, y)
    K, d = W.shape
    N = H.shape[0]
    P_ = K * d + N * d + K
    if P_ > max_params:
        raise ValueError(f"the Hessian would be {P_} x {P_} (> max_params={max_params}); "
                         "use hessian_min_eig (Lanczos) for large problems")
    mv = _mv_factory(W, H, b, y, lW, lH, lb, loss, kw)
    M = np.empty((P_, P_))
    e = np.zeros(P_)
    for j in range(P_):
        e[j] = 1.0
        A, B, c = unpack(e, K, N, d)
        M[:, j] = np.concatenate([o.ravel() for o in mv(A, B, c)])
        e[j] = 0.0
    return 0.5 * (M + M.T)


@dataclass(frozen=True)
class MinEig:
    """Result of :func:`hessian_min_eig`: the eigenvalue, a unit eigenvector (flat, as
    :func:`pack`), the residual ``||nabla^2 f v - value v||`` (an eigenvalue of the Hessian
    lies within this distance of ``value``), the shift used and the number of products."""

    value: float
    vector: np.ndarray
    residual: float
    shift: float
    n_matvec: int


def hessian_min_eig(W, H, b, y, lambda_W, lambda_H, lambda_b, *, tol: float = 1e-10,
                    maxiter: int | None = None, seed: int = 0, return_vector: bool = False,
                    ncv: int | None = None, memory_bytes: float = 2 * 2 ** 30, loss: str = "ce", **loss_kw):
    """Smallest eigenvalue of the Hessian of f (eq. 14) by Lanczos, matrix-free.

    ARPACK's Lanczos (:func:`scipy.sparse.linalg.eigsh`) runs on a LinearOperator whose
    products are the analytic :func:`hvp` (O(NKd) each, no P x P matrix).  It is run on the
    shifted operator ``s I - nabla^2 f`` with ``which="LA"``, which is the same Krylov
    iteration as ``which="SA"`` on ``nabla^2 f`` (same eigenvectors), but with a stopping
    test that makes sense at eigenvalue 0: ARPACK stops when a Ritz pair's residual is
    ``<= tol * max(eps^(2/3), |Ritz value|)``, and at a global minimiser the smallest eigenvalues are 0
    (the rotations (W Q, H Q) leave f unchanged), so with ``which="SA"`` the test cannot be
    met.  The shift ``s = 1.01 theta_max + tiny`` uses a rough Lanczos estimate
    ``theta_max`` of the largest eigenvalue (``s >= (lambda_max + lambda_min)/2`` suffices).

    Tolerance: the returned value ``mu`` satisfies ``|mu - lambda| <= residual <= tol *
    (s - mu)`` for an eigenvalue ``lambda`` of the Hessian (residual bound for symmetric
    matrices), i.e. an ABSOLUTE accuracy of about ``tol * ||nabla^2 f||_2``.  The residual
    is recomputed and returned with ``return_vector=True`` (a :class:`MinEig`).  ARPACK finds
    the smallest eigenvalue in practice, not provably (Krylov methods can miss an
    eigenvector orthogonal to the start vector, a probability-zero event for the random
    start used here, seeded by ``seed``).

    Memory: ARPACK keeps ``ncv`` Lanczos vectors of length P = Kd + Nd + K, i.e. ``8 P ncv``
    bytes; by default ``ncv = min(20, P - 1)``, reduced so that this stays below
    ``memory_bytes`` (2 GiB), but never below 6 (fewer vectors mean more restarts: on a random
    point with P = 33,000, ncv = 12 / 20 / 40 took 1101 / 583 / 403 products, measured).
    Problems with P <= 60 are solved densely (``numpy.linalg.eigh``; ``shift`` is then nan).
    ``loss``: any loss of :func:`nclib.ufm.objective` (products by autograd for the non-CE ones).
    """
    kw = _ufm._check_loss(loss, loss_kw)
    lW, lH, lb = _lams(lambda_W, lambda_H, lambda_b)
    W, H, b, y = _check(W, H, b, y)
    if not (tol > 0):
        raise ValueError(f"tol must be > 0, got {tol!r}")
    K, d = W.shape
    N = H.shape[0]
    P_ = K * d + N * d + K
    prod = _mv_factory(W, H, b, y, lW, lH, lb, loss, kw)
    count = [0]

    def mv(x):
        count[0] += 1
        A, B, c = unpack(np.asarray(x, dtype=np.float64).ravel(), K, N, d)
        out = prod(A, B, c)
        return np.concatenate([o.ravel() for o in out])

    rng = np.random.default_rng(seed)
    v0 = rng.standard_normal(P_)
    if ncv is None:
        ncv = max(6, min(20, int(memory_bytes // (8 * P_))))
    ncv = int(min(P_ - 1, ncv))
    if P_ <= 60:                                   # tiny: dense is exact and cheaper
        Hd = hessian(W, H, b, y, lW, lH, lb, max_params=60, loss=loss, **kw)
        ev, V = np.linalg.eigh(Hd)
        vec = V[:, 0]
        res = float(np.linalg.norm(Hd @ vec - ev[0] * vec))
        r = MinEig(float(ev[0]), vec, res, float("nan"), P_)
        return r if return_vector else r.value
    op = LinearOperator((P_, P_), matvec=mv, dtype=np.float64)
    theta = eigsh(op, k=1, which="LA", tol=1e-3, v0=v0, ncv=ncv, return_eigenvectors=False)[0]
    s = 1.01 * abs(float(theta)) + 1e-12 + max(lW, lH, lb)
    shifted = LinearOperator((P_, P_), matvec=lambda x: s * np.asarray(x).ravel() - mv(x), dtype=np.float64)
    try:
        mu, vec = eigsh(shifted, k=1, which="LA", tol=tol, v0=v0, ncv=ncv,
                        maxiter=maxiter if maxiter is not None else max(1000, 10 * P_ // ncv))
    except ArpackNoConvergence as exc:  # pragma: no cover - reported, not hidden
        raise RuntimeError(f"Lanczos did not converge to tol={tol} after {count[0]} products; "
                           "raise maxiter or tol") from exc
    value = s - float(mu[0])
    vec = vec[:, 0] / np.linalg.norm(vec[:, 0])
    res = float(np.linalg.norm(mv(vec) - value * vec))
    r = MinEig(value, vec, res, s, count[0])
    return r if return_vector else r.value


def curvature(W, H, b, y, lambda_W, lambda_H, lambda_b, direction, *, normalize: bool = True, loss: str = "ce",
              **loss_kw) -> float:
    """``<Delta, nabla^2 f Delta>`` (eq. (40)), divided by ``||Delta||^2`` if ``normalize``.

    ``direction`` is a tuple (A, B, c) or a flat vector.  Negative means a strict descent
    direction of second order at a critical point.
    """
    if isinstance(direction, (tuple, list)):
        v = pack(*direction)
    else:
        v = _arr(direction, "direction").ravel()
    Hv = hvp(W, H, b, y, lambda_W, lambda_H, lambda_b, v, loss=loss, **loss_kw)
    nrm2 = float(v @ v)
    if nrm2 == 0:
        raise ValueError("direction is zero")
    q = float(v @ Hv)
    return q / nrm2 if normalize else q


# ----------------------------------------------------------------------------- the origin
def origin_hessian_spectrum(K: int, n, d: int, lambda_W, lambda_H, lambda_b, *, loss: str = "ce", **loss_kw):
    """All eigenvalues of the Hessian of f at the critical point W = 0, H = 0, b = 0 (balanced).

    Derivation.  At W = H = 0 the logits are ``1 b^T`` = 0, so the softmax is uniform and
    ``G = (11^T/K - Y)/N`` (N x K).  In eq. (40) the term ``nabla^2 g[dZ, dZ]`` only sees
    ``dZ = 1 c^T`` (the W and H parts of dZ are multiplied by H = 0 or W = 0), so

    * the b-block is ``lambda_b I + (1/K)(I - 11^T/K)`` (the mean CE Hessian in b at the
      uniform softmax): eigenvalues ``lambda_b`` (x1, direction 1) and ``lambda_b + 1/K``
      (x K-1);
    * the (W, H) block is ``lambda_W ||A||^2 + lambda_H ||B||^2 + 2 <G, B A^T>``; it splits
      over the d feature coordinates into d copies of ``[[lambda_W I_K, G^T], [G, lambda_H I_N]]``.
      Since ``Y^T Y = n I`` and ``Y^T 1 = n 1``, ``G^T G = (1/(K N))(I - 11^T/K)``: G has
      the singular value ``sigma = 1/(K sqrt(n))`` (x K-1) and 0 (x1).  Each sigma gives
      ``(lambda_W + lambda_H)/2 +- sqrt(((lambda_W - lambda_H)/2)^2 + sigma^2)``; the rest
      are ``lambda_W`` (x1) and ``lambda_H`` (x N-K+1), all times d.

    So the origin is a strict saddle iff ``sigma^2 > lambda_W lambda_H``, i.e.
    ``K sqrt(n lambda_W lambda_H) < 1``: exactly when Lemma C.4's certificate
    ``||G||_2 = sigma <= sqrt(lambda_W lambda_H)`` fails, and exactly the regime where the
    global minimiser is not the origin (:func:`nclib.ufm.closed_form`).

    Other losses and class sizes (``loss`` != "ce" or ``n`` a sequence of K sizes): the critical
    point is W = H = 0 with the bias b0 that minimises the (strictly convex) function
    ``mean_i L(b, y_i) + lambda_b/2 ||b||^2`` (b0 = 0 for a shift-invariant loss on balanced
    classes; ``1/(K(1 + lambda_b)) 1`` for MSE).  The same argument gives the (W, H) block from
    the singular values sigma_1..sigma_K of ``G = dL/dZ / N`` at ``Z = 1 b0^T`` (computed numerically):
    ``(lambda_W + lambda_H)/2 +- sqrt(((lambda_W - lambda_H)/2)^2 + sigma_i^2)`` (x d each) and
    ``lambda_H`` (x d (N - K)); the b block is ``lambda_b I`` plus the Hessian of the mean loss in b
    (eigenvalues computed numerically by autograd).

    Returns a list of ``(eigenvalue, multiplicity)`` pairs (multiplicities sum to Kd+Nd+K).
    """
    if loss != "ce" or not _ufm._is_int(n):
        return _origin_spectrum_general(K, n, d, lambda_W, lambda_H, lambda_b, loss, loss_kw)
    K, n = _ufm._check_Kn(K, n, d)
    lW, lH, lb = _lams(lambda_W, lambda_H, lambda_b)
    N = K * n
    s2 = 1.0 / (K * K * n)
    m, r = 0.5 * (lW + lH), math.sqrt(0.25 * (lW - lH) ** 2 + s2)
    return [(m - r, d * (K - 1)), (m + r, d * (K - 1)), (lW, d), (lH, d * (N - K + 1)),
            (lb, 1), (lb + 1.0 / K, K - 1)]


def origin_min_eig(K: int, n, d: int, lambda_W, lambda_H, lambda_b, *, loss: str = "ce", **loss_kw) -> float:
    """Smallest Hessian eigenvalue of f at the origin in closed form (balanced classes):

    ``min( (lambda_W + lambda_H)/2 - sqrt(((lambda_W - lambda_H)/2)^2 + 1/(K^2 n)), lambda_b )``

    (see :func:`origin_hessian_spectrum` for the derivation).  Negative iff
    ``K sqrt(n lambda_W lambda_H) < 1`` (the first term; ``lambda_b >= 0``).  Other losses and
    class sizes: the minimum of :func:`origin_hessian_spectrum` (same keywords).
    """
    spec = origin_hessian_spectrum(K, n, d, lambda_W, lambda_H, lambda_b, loss=loss, **loss_kw)
    return min(v for v, mult in spec if mult > 0)


def origin_value(K: int, n, d: int, lambda_W, lambda_H, lambda_b, *, loss: str = "ce", **loss_kw) -> float:
    """f of eq. (4) at the origin W = 0, H = 0 with the best bias (the critical point of
    Section 3.2's landscape analysis, the global minimiser when K sqrt(n lambda_W lambda_H) is large
    enough): mean_i L(b0, y_i) + lambda_b/2 ||b0||^2.  ``n``: per-class count or class sizes."""
    sizes = _ufm._check_sizes(K, n, d)
    kw = _ufm._check_loss(loss, loss_kw)
    lb = _lams(lambda_W, lambda_H, lambda_b)[2]
    y = np.repeat(np.arange(K), sizes)
    b0 = _origin_bias(y, K, lb, loss, kw)
    return _ufm.objective(np.zeros((K, d)), np.zeros((len(y), d)), b0, y, lambda_W, lambda_H, lambda_b,
                          loss=loss, **kw)


def _origin_bias(y, K, lb, loss, kw):
    """The bias b0 minimising mean_i L(b, y_i) + lb/2 ||b||^2 (Newton's method; strictly convex
    for lb > 0, and for lb = 0 the minimiser of smallest norm along the shift direction)."""
    from scipy.optimize import minimize

    yt = torch.as_tensor(y)
    N = len(y)

    def fg(bv):
        bt = torch.tensor(bv, requires_grad=True)
        v = _losses.loss(bt.expand(N, K), yt, loss, **kw) + 0.5 * lb * (bt * bt).sum()
        g, = torch.autograd.grad(v, bt)
        return float(v.detach()), g.numpy()

    r = minimize(fg, np.zeros(K), jac=True, method="BFGS", options={"gtol": 1e-14, "maxiter": 1000})
    b0 = r.x
    if loss != "mse" and lb == 0:          # shift-invariant: b0 + c1 is as good; pick the mean-zero one
        b0 = b0 - b0.mean()
    return b0


def _origin_spectrum_general(K, n, d, lambda_W, lambda_H, lambda_b, loss, loss_kw):
    sizes = _ufm._check_sizes(K, n, d)
    kw = _ufm._check_loss(loss, loss_kw)
    lW, lH, lb = _lams(lambda_W, lambda_H, lambda_b)
    y = _ufm.class_labels(K, sizes.tolist())
    N = len(y)
    b0 = _origin_bias(y, K, lb, loss, kw)
    Z = torch.tensor(np.tile(b0, (N, 1)))
    _, G = _ufm._dlogits(Z, torch.as_tensor(y), loss, kw)
    sig = np.linalg.svd(G.numpy() / N, compute_uv=False)
    m = 0.5 * (lW + lH)
    out = []
    for s_ in sig:
        r = math.sqrt(0.25 * (lW - lH) ** 2 + s_ * s_)
        out += [(m - r, d), (m + r, d)]
    out.append((lH, d * (N - K)))
    fb = lambda bt: _losses.loss(bt.expand(N, K), torch.as_tensor(y), loss, **kw)
    Hb = torch.autograd.functional.hessian(fb, torch.tensor(b0)).numpy() + lb * np.eye(K)
    out += [(float(e), 1) for e in np.linalg.eigvalsh(0.5 * (Hb + Hb.T))]
    return out


# ----------------------------------------------------------------------------- Lemma C.4 and the proof's direction
def grad_g(W, H, b, y) -> np.ndarray:
    """``grad g`` at the logits ``H W^T + 1 b^T``: the (N, K) matrix ``(softmax - Y)/N``,
    the transpose of the paper's ``nabla g(WH + b1^T)`` (K x N) of eqs. (17)-(18), (41)."""
    W, H, b, y = _check(W, H, b, y)
    return _G(W, H, b, y)[0]


def certificate_c4(W, H, b, y, lambda_W, lambda_H) -> float:
    """``||grad g(W H + b 1^T)||_2 / sqrt(lambda_W lambda_H)``: Lemma C.4, eq. (43).

    At a critical point, a value ``<= 1`` proves global optimality (Lemma C.4); at a global
    minimiser it equals 1 exactly (from (41), ``G V = -sqrt(lambda_W lambda_H) U``) unless the
    minimiser is the origin; a critical point with a value ``> 1`` is in the set C_2 of
    Appendix C.1 and is a strict saddle (when W has a null space, see :func:`proof_direction`).
    """
    lW, lH, _ = _lams(lambda_W, lambda_H, 0.0, strict_WH=True)
    G = grad_g(W, H, b, y)
    return float(np.linalg.norm(G, 2) / math.sqrt(lW * lH))


@dataclass(frozen=True)
class ProofDirection:
    """The negative-curvature direction of the proof of Theorem 3.2 (Appendix C.1).

    ``dW = alpha^{1/4} u a^T`` (K, d), ``dH = -alpha^{-1/4} v a^T`` (N, d; the paper's
    ``-alpha^{-1/4} a v^T`` transposed), ``db = 0``, with ``alpha = lambda_H/lambda_W``,
    ``(u, v)`` the top singular pair of the paper's ``nabla g`` (u in R^K, v in R^N), ``a`` a
    unit vector with ``W a = 0``.  ``predicted`` is the proof's value of the quadratic form,
    ``-2 ||a||^2 (sigma_1 - sqrt(lambda_W lambda_H))``; ``predicted_rayleigh`` divides it by
    ``||Delta||^2 = (alpha^{1/2} + alpha^{-1/2}) ||a||^2``.  ``Ha`` is ``||H a||`` (0 at a
    critical point by Lemma B.2; the proof needs it).
    """

    dW: np.ndarray
    dH: np.ndarray
    db: np.ndarray
    a: np.ndarray
    sigma1: float
    predicted: float
    predicted_rayleigh: float
    Ha: float

    @property
    def direction(self):
        return (self.dW, self.dH, self.db)


def proof_direction(W, H, b, y, lambda_W, lambda_H, *, a=None, null_tol: float = 1e-8) -> ProofDirection:
    """Build the direction of Appendix C.1 at a (critical) point (W, H, b).

    ``a`` defaults to the right singular vector of W for its smallest singular value, which
    must be ``<= null_tol * max(1, ||W||_2)`` (a null vector of W); a given ``a`` is normalised
    and must satisfy ``||W a|| <= null_tol * max(1, ||W||_2)``.  W (K x d) always has one when
    d > K (the theorem's assumption); when d <= K only a rank-deficient W has one, and
    ValueError says so.  The proof's curvature value is computed from the singular value
    ``sigma_1 = ||grad g||_2``; check it against :func:`curvature`.
    """
    lW, lH, _ = _lams(lambda_W, lambda_H, 0.0, strict_WH=True)
    W, H, b, y = _check(W, H, b, y)
    K, d = W.shape
    scale = max(1.0, float(np.linalg.norm(W, 2)))
    if a is None:
        _, s, Vt = np.linalg.svd(W, full_matrices=True)
        s_full = np.zeros(d)
        s_full[: s.size] = s
        j = int(np.argmin(s_full))
        if s_full[j] > null_tol * scale:
            raise ValueError(f"W (K={K}, d={d}) has no null space (smallest singular value "
                             f"{s_full[j]:.3e}); the proof's direction needs W a = 0, e.g. d > K")
        a = Vt[j]
    else:
        a = _arr(a, "a").ravel()
        if a.shape != (d,) or not np.linalg.norm(a) > 0:
            raise ValueError(f"a must be a nonzero vector of length d={d}")
        a = a / np.linalg.norm(a)
        if np.linalg.norm(W @ a) > null_tol * scale:
            raise ValueError(f"a is not in the null space of W: ||W a|| = {np.linalg.norm(W @ a):.3e}")
    G, _ = _G(W, H, b, y)                                 # (N, K) = paper's grad g transposed
    Ug, sg, Vgt = np.linalg.svd(G, full_matrices=False)   # G = Ug diag(sg) Vgt
    v = Ug[:, 0]                                          # paper's right vector (in R^N)
    u = Vgt[0]                                            # paper's left vector (in R^K)
    al = lH / lW
    dW = al ** 0.25 * np.outer(u, a)
    dH = -(al ** -0.25) * np.outer(v, a)
    mu = math.sqrt(lW * lH)
    pred = -2.0 * (float(sg[0]) - mu)
    return ProofDirection(dW, dH, np.zeros(K), a, float(sg[0]), pred,
                          pred / (math.sqrt(al) + 1.0 / math.sqrt(al)), float(np.linalg.norm(H @ a)))


# ----------------------------------------------------------------------------- lemma checks
def balance_residual(W, H, lambda_W, lambda_H, *, relative: bool = True) -> float:
    """Lemma B.2, eq. (16), in the book's rows convention: ``W^T W - (lambda_H/lambda_W) H^T H`` (d x d).

    (The paper writes ``W^T W = (lambda_H/lambda_W) H H^T`` with its d x N H.)  Returns the
    Frobenius norm of the difference, divided by ``||W^T W||_F + (lambda_H/lambda_W)||H^T H||_F``
    when ``relative`` (0/0 -> 0).  It vanishes at every critical point of (14).
    """
    lW, lH, _ = _lams(lambda_W, lambda_H, 0.0, strict_WH=True)
    W = _arr(W, "W")
    H = _arr(H, "H")
    if W.ndim != 2 or H.ndim != 2 or W.shape[1] != H.shape[1]:
        raise ValueError(f"need W (K, d) and H (N, d) with the same d, got {W.shape} and {H.shape}")
    A, B = W.T @ W, (lH / lW) * (H.T @ H)
    r = float(np.linalg.norm(A - B))
    if not relative:
        return r
    den = float(np.linalg.norm(A) + np.linalg.norm(B))
    return 0.0 if den == 0 else r / den


def nuclear_norm_variational(W, H, alpha: float):
    """Lemma A.3, eq. (11): returns ``(bound, nuclear)`` with
    ``bound = (||W||_F^2 + alpha ||H||_F^2) / (2 sqrt(alpha))`` and ``nuclear = ||H W^T||_*``
    (= the paper's ``||W H||_*``).  Always ``bound >= nuclear``, with equality iff the
    factorisation is balanced as in the lemma's proof (``W^T W = alpha H^T H`` and both
    built from the same SVD), e.g. the output of :func:`factorize`.
    """
    if not (alpha > 0):
        raise ValueError(f"alpha must be > 0, got {alpha!r}")
    W = _arr(W, "W")
    H = _arr(H, "H")
    if W.ndim != 2 or H.ndim != 2 or W.shape[1] != H.shape[1]:
        raise ValueError(f"need W (K, d) and H (N, d) with the same d, got {W.shape} and {H.shape}")
    bound = (np.sum(W * W) + alpha * np.sum(H * H)) / (2 * math.sqrt(alpha))
    return float(bound), float(np.linalg.svd(H @ W.T, compute_uv=False).sum())


def lemma_b5_c1(z, k: int) -> float:
    """The ``c_1`` of Lemma B.5's equality condition (35):
    ``c_1 = [(K-1) exp((sum_i z_i - K z_k)/(K-1))]^{-1}``."""
    z = _arr(z, "z").ravel()
    K = z.size
    if K < 2 or not (0 <= k < K):
        raise ValueError(f"need z of length K >= 2 and 0 <= k < K, got K={K}, k={k}")
    return float(1.0 / ((K - 1) * math.exp((z.sum() - K * z[k]) / (K - 1))))


def ce_lower_bound(z, k: int, c1: float | None = None) -> float:
    """The lower bound (34) of Lemma B.5 on ``CE(z, y_k)``:
    ``(sum_i z_i - K z_k) / ((1 + c_1)(K-1)) + c_2`` with
    ``c_2 = log((1+c_1)(K-1))/(1+c_1) + c_1/(1+c_1) log((1+c_1)/c_1)``.

    Valid for every ``c_1 > 0``; ``c1=None`` uses the c_1 of (35) (:func:`lemma_b5_c1`), for
    which the bound is tight exactly when all ``z_i, i != k`` are equal.
    """
    z = _arr(z, "z").ravel()
    K = z.size
    if c1 is None:
        c1 = lemma_b5_c1(z, k)
    if K < 2 or not (0 <= k < K):
        raise ValueError(f"need z of length K >= 2 and 0 <= k < K, got K={K}, k={k}")
    if not (c1 > 0) or not math.isfinite(c1):
        raise ValueError(f"c1 must be a finite number > 0, got {c1!r}")
    c2 = math.log((1 + c1) * (K - 1)) / (1 + c1) + c1 / (1 + c1) * math.log((1 + c1) / c1)
    return float((z.sum() - K * z[k]) / ((1 + c1) * (K - 1)) + c2)


# ----------------------------------------------------------------------------- the convex counterpart (37)
def _labels_only(y, num_classes=None):
    yt = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if yt.ndim != 1 or yt.size == 0:
        raise ValueError(f"y must be a non-empty 1-D array of labels, got shape {yt.shape}")
    if not np.issubdtype(yt.dtype, np.integer):
        raise ValueError(f"y must hold integer class labels, got dtype {yt.dtype}")
    K = int(yt.max()) + 1 if num_classes is None else int(num_classes)
    if K < 2 or yt.min() < 0 or yt.max() >= K:
        raise ValueError(f"labels must lie in [0, K) with K >= 2, got K={K}, range [{yt.min()}, {yt.max()}]")
    return yt.astype(np.int64), K


def _ce_rows(X, y):
    m = X.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(X - m).sum(axis=1, keepdims=True)))[:, 0]
    return lse - X[np.arange(X.shape[0]), y]


def _check_Zb(Z, b, y):
    Z = _arr(Z, "Z")
    b = _arr(b, "b")
    if Z.ndim != 2 or Z.shape[0] != len(y) or Z.shape[1] <= y.max():
        raise ValueError(f"Z must be (N, K) = ({len(y)}, K >= {y.max() + 1}) (the transpose of the paper's "
                         f"K x N Z), got {Z.shape}")
    if b.shape != (Z.shape[1],):
        raise ValueError(f"b must have shape (K,)=({Z.shape[1]},), got {b.shape}")
    return Z, b


def convex_objective(Z, b, y, lambda_W, lambda_H, lambda_b) -> float:
    """The convex counterpart (37): ``g(Z + 1 b^T) + sqrt(lambda_W lambda_H) ||Z||_* +
    lambda_b/2 ||b||^2``, with our ``Z = H W^T`` (N, K), the transpose of the paper's
    ``Z = W H`` (K x N); g is the mean cross-entropy of eq. (15)."""
    lW, lH, lb = _lams(lambda_W, lambda_H, lambda_b)
    y, K = _labels_only(y)
    Z, b = _check_Zb(Z, b, y)
    nuc = np.linalg.svd(Z, compute_uv=False).sum()
    return float(_ce_rows(Z + b, y).mean() + math.sqrt(lW * lH) * nuc + 0.5 * lb * b @ b)


def convex_dual(Lam, y, lambda_W, lambda_H, lambda_b) -> float:
    """The Fenchel dual of (37) at a dual point ``Lam`` (N, K) (a candidate for grad g):

    ``D(Lam) = -g*(Lam) - ||Lam^T 1||^2 / (2 lambda_b)``, feasible iff
    ``||Lam||_2 <= sqrt(lambda_W lambda_H)`` and every row ``q_i = N Lam_i + e_{y_i}`` is a
    probability vector; ``g*(Lam) = (1/N) sum_i sum_j q_ij log q_ij``.  Weak duality:
    ``D(Lam) <= min (37)`` for every feasible Lam, so ``F(Z, b) - D(Lam)`` bounds the
    suboptimality of (Z, b).  Needs ``lambda_b > 0`` (with ``lambda_b = 0`` the dual has the
    constraint ``Lam^T 1 = 0`` instead).  Infeasible Lam -> ``-inf``.
    """
    lW, lH, lb = _lams(lambda_W, lambda_H, lambda_b)
    if lb <= 0:
        raise ValueError("convex_dual needs lambda_b > 0 (the b-term of the dual is -||Lam^T 1||^2/(2 lambda_b))")
    y, K = _labels_only(y)
    Lam = _arr(Lam, "Lam")
    N = len(y)
    Q = N * Lam
    Q[np.arange(N), y] += 1.0
    mu = math.sqrt(lW * lH)
    if np.linalg.norm(Lam, 2) > mu * (1 + 1e-12) or Q.min() < -1e-15 or np.abs(Q.sum(1) - 1).max() > 1e-10:
        return -math.inf
    Q = np.clip(Q, 0.0, None)
    ent = np.where(Q > 0, Q * np.log(np.where(Q > 0, Q, 1.0)), 0.0).sum() / N
    s = Lam.sum(axis=0)
    return float(-ent - s @ s / (2 * lb))


def convex_kkt(Z, b, y, lambda_W, lambda_H, lambda_b, *, rank_tol: float = 1e-9) -> dict:
    """Residuals of the optimality conditions (41) of Lemma C.3 at (Z, b), our transposes.

    With ``Z = U S V^T`` (compact, singular values above ``rank_tol * max(1, s_max)``),
    ``G = grad g(Z + 1 b^T)`` (N, K) and ``mu = sqrt(lambda_W lambda_H)``, the paper's
    conditions read ``G V = -mu U``, ``G^T U = -mu V``, ``||G||_2 <= mu``,
    ``G^T 1 + lambda_b b = 0``.  Returns a dict with ``GV``, ``GtU`` (Frobenius norms of the
    residuals), ``spectral_excess`` = ``max(0, ||G||_2 - mu)``, ``bias`` (norm), their
    maximum ``max``, and ``rank``.
    """
    lW, lH, lb = _lams(lambda_W, lambda_H, lambda_b)
    y, K = _labels_only(y)
    Z, b = _check_Zb(Z, b, y)
    N = len(y)
    mu = math.sqrt(lW * lH)
    G = _softmax(Z + b)
    G[np.arange(N), y] -= 1.0
    G /= N
    U, s, Vt = np.linalg.svd(Z, full_matrices=False)
    r = int((s > rank_tol * max(1.0, s[0] if s.size else 0.0)).sum())
    U, V = U[:, :r], Vt[:r].T
    out = {
        "GV": float(np.linalg.norm(G @ V + mu * U)),
        "GtU": float(np.linalg.norm(G.T @ U + mu * V)),
        "spectral_excess": float(max(0.0, np.linalg.norm(G, 2) - mu)),
        "bias": float(np.linalg.norm(G.sum(axis=0) + lb * b)),
        "rank": r,
    }
    out["max"] = max(out["GV"], out["GtU"], out["spectral_excess"], out["bias"])
    return out


@dataclass
class ConvexResult:
    """Result of :func:`solve_convex`: the solution ``Z`` (N, K) (our transpose of the paper's
    Z), ``b``, ``value`` of (37), ``gap`` (a certified upper bound on ``value - min (37)``
    when lambda_b > 0, else nan), ``kkt`` (see :func:`convex_kkt`), ``rank`` (exact rank of
    the last singular value thresholding), ``n_iter``, ``converged``, ``message`` and
    ``history`` (dict of lists: value, gap)."""

    Z: np.ndarray
    b: np.ndarray
    value: float
    gap: float
    kkt: dict
    rank: int
    n_iter: int
    converged: bool
    message: str
    history: dict = field(default_factory=dict)


def solve_convex(y, lambda_W, lambda_H, lambda_b, *, num_classes: int | None = None, tol: float = 1e-10,
                 max_iter: int = 20000, Z0=None, b0=None, check_every: int = 10) -> ConvexResult:
    """Solve the convex counterpart (37) by FISTA with singular value thresholding.

    Problem: ``min_{Z, b} g(Z + 1 b^T) + mu ||Z||_* + lambda_b/2 ||b||^2``, ``mu =
    sqrt(lambda_W lambda_H)``, our ``Z`` (N, K) = the paper's Z transposed.

    Method (accelerated proximal gradient, Beck & Teboulle 2009; SVT, Cai et al. 2010): the
    smooth part ``s(Z, b) = g(Z + 1b^T) + lambda_b/2 ||b||^2`` has Hessian below the block
    metric ``D = diag(1/N I, (1 + lambda_b) I)`` (the CE Hessian per row is ``<= 1/2``,
    ``g`` averages N rows, and ``||dZ + 1 db^T||^2 <= 2||dZ||^2 + 2N||db||^2``), so the
    steps are ``N`` for Z and ``1/(1 + lambda_b)`` for b, and the prox of the nuclear norm in
    this metric is singular value thresholding of Z at ``N mu``.  Momentum is restarted
    when the step opposes it (gradient restart, O'Donoghue & Candes 2015).

    Certificate: every ``check_every`` iterations the dual point ``t G`` (G = grad g at the
    iterate, ``t = min(1, mu/||G||_2)``, feasible by construction) gives the duality gap
    ``F(Z, b) - D(t G) >= F(Z, b) - min (37)`` (:func:`convex_dual`); the run stops when the
    gap is ``<= tol``.  With ``lambda_b = 0`` it stops on the KKT residual (41) instead.
    Does not raise on non-convergence: ``converged`` is False and ``message`` says why.
    """
    lW, lH, lb = _lams(lambda_W, lambda_H, lambda_b)
    y, K = _labels_only(y, num_classes)
    N = len(y)
    mu = math.sqrt(lW * lH)
    Z = np.zeros((N, K)) if Z0 is None else _arr(Z0, "Z0").copy()
    b = np.zeros(K) if b0 is None else _arr(b0, "b0").copy()
    Z, b = _check_Zb(Z, b, y)
    stepZ, stepb = float(N), 1.0 / (1.0 + lb)
    rows = np.arange(N)

    def smooth(Zc, bc):
        X = Zc + bc
        P = _softmax(X)
        val = _ce_rows(X, y).mean() + 0.5 * lb * bc @ bc
        P[rows, y] -= 1.0
        P /= N
        return val, P, P.sum(axis=0) + lb * bc

    def prox(Zc):
        U, s, Vt = np.linalg.svd(Zc, full_matrices=False)
        s = np.maximum(s - stepZ * mu, 0.0)
        r = int((s > 0).sum())
        return (U[:, :r] * s[:r]) @ Vt[:r], s, r

    def full_value(Zc, bc, s):
        return float(_ce_rows(Zc + bc, y).mean() + mu * s.sum() + 0.5 * lb * bc @ bc)

    s_cur = np.linalg.svd(Z, compute_uv=False)
    F = full_value(Z, b, s_cur)
    Zy, by, t = Z.copy(), b.copy(), 1.0
    hist = {"value": [F], "gap": []}
    gap, rank, converged, msg = math.inf, int((s_cur > 0).sum()), False, "iteration budget reached"
    it = 0
    for it in range(1, max_iter + 1):
        _, Gy, gby = smooth(Zy, by)
        Zn, s_n, rank = prox(Zy - stepZ * Gy)
        bn = by - stepb * gby
        Fn = full_value(Zn, bn, s_n)
        if not math.isfinite(Fn):
            msg = f"diverged at iteration {it} (non-finite objective); returning the last finite iterate"
            warnings.warn(msg, RuntimeWarning)
            break
        # gradient-based adaptive restart (O'Donoghue & Candes 2015): drop the momentum when
        # the prox-gradient step points against it, <y - x_new, x_new - x_old> > 0 (metric D)
        if (np.sum((Zy - Zn) * (Zn - Z)) / stepZ + np.sum((by - bn) * (bn - b)) / stepb) > 0:
            Zy, by, t = Zn.copy(), bn.copy(), 1.0
        else:
            tn = 0.5 * (1 + math.sqrt(1 + 4 * t * t))
            Zy = Zn + ((t - 1) / tn) * (Zn - Z)
            by = bn + ((t - 1) / tn) * (bn - b)
            t = tn
        Z, b, F = Zn, bn, Fn
        hist["value"].append(F)
        if it % check_every == 0:
            if lb > 0:
                _, G, _ = smooth(Z, b)
                gnorm = np.linalg.norm(G, 2)
                Lam = G * min(1.0, mu / gnorm) if gnorm > 0 else G
                gap = F - convex_dual(Lam, y, lW, lH, lb)
                hist["gap"].append(gap)
                if gap <= tol:
                    converged, msg = True, f"duality gap {gap:.3e} <= tol={tol}"
                    break
            else:
                k = convex_kkt(Z, b, y, lW, lH, lb)["max"]
                hist["gap"].append(k)
                if k <= tol:
                    converged, msg = True, f"KKT residual (41) {k:.3e} <= tol={tol}"
                    break
    if lb == 0:
        gap = math.nan
    kkt = convex_kkt(Z, b, y, lW, lH, lb)
    return ConvexResult(Z, b, F, float(gap), kkt, rank, it, converged, msg, hist)


def factorize(Z, b, d: int, lambda_W, lambda_H, *, rotation=None, seed=None, rank_tol: float = 1e-9):
    """Map a solution (Z, b) of (37) back to (W, H, b) by the balanced factorisation of Lemma A.3.

    With our ``Z = H W^T = U S V^T`` (N x K, rank r) and ``alpha = lambda_H/lambda_W``:
    ``W = alpha^{1/4} V S^{1/2} P^T`` (K, d), ``H = alpha^{-1/4} U S^{1/2} P^T`` (N, d), where
    ``P`` (d, r) has orthonormal columns (first r coordinates if ``rotation`` is None,
    Haar-random with ``rotation="random"``).  (The paper's ``W = alpha^{1/4} U Sigma^{1/2}``,
    ``H = alpha^{-1/4} Sigma^{1/2} V^T`` for its K x N Z.)  Then ``H W^T = Z``,
    ``W^T W = alpha H^T H`` (Lemma B.2) and ``lambda_W/2 ||W||^2 + lambda_H/2 ||H||^2 =
    sqrt(lambda_W lambda_H) ||Z||_*``, so ``f(W, H, b) = (37)(Z, b)``.  Singular values
    ``<= rank_tol * max(1, s_max)`` are dropped.  ValueError if ``d < r``.
    """
    lW, lH, _ = _lams(lambda_W, lambda_H, 0.0, strict_WH=True)
    Z = _arr(Z, "Z")
    b = _arr(b, "b")
    if Z.ndim != 2 or b.shape != (Z.shape[1],):
        raise ValueError(f"need Z (N, K) and b (K,), got {Z.shape} and {b.shape}")
    U, s, Vt = np.linalg.svd(Z, full_matrices=False)
    r = int((s > rank_tol * max(1.0, s[0] if s.size else 0.0)).sum())
    if not isinstance(d, (int, np.integer)) or d < max(r, 1):
        raise ValueError(f"d={d!r} is smaller than rank(Z)={r}: no factorisation Z = H W^T with d columns")
    if rotation is None:
        P = np.eye(d, r)
    elif isinstance(rotation, str) and rotation == "random":
        from .etf import random_orthonormal
        P = random_orthonormal(d, r, seed) if r > 0 else np.zeros((d, 0))
    else:
        raise ValueError(f"rotation must be None or 'random', got {rotation!r}")
    al = lH / lW
    sq = np.sqrt(s[:r])
    W = al ** 0.25 * (Vt[:r].T * sq) @ P.T
    H = al ** -0.25 * (U[:, :r] * sq) @ P.T
    return W, H, b.copy()


# ----------------------------------------------------------------------------- critical points that are not minimisers
def origin_critical_point(K: int, n: int, d: int):
    """The origin W = 0, H = 0, b = 0: a critical point of (4) for balanced labels
    (softmax(0) = 1/K makes ``grad_b = 0``), a strict saddle iff ``K sqrt(n lambda_W lambda_H) < 1``
    (:func:`origin_min_eig`).  Returns (W (K,d), H (nK,d), b (K,)) zeros."""
    K, n = _ufm._check_Kn(K, n, d)
    return np.zeros((K, d)), np.zeros((K * n, d)), np.zeros(K)


def tied_critical_point(K: int, n: int, d: int, lambda_W, lambda_H, lambda_b, groups, *, rotation=None, seed=None):
    """A critical point of (4) where the K classes are merged into G equal-sized groups.

    ``groups`` is a list of G >= 2 disjoint lists of class indices covering range(K), all of
    the same size q = K/G.  Classes in one group share their classifier row, their feature
    (all samples) and their bias.  Why this is a critical point: swapping two classes of a
    group (their rows of W, their samples, their biases) leaves f unchanged, and the tied
    parameters are exactly the points these swaps fix; for an invariant function the
    gradient at a fixed point is itself fixed (principle of symmetric criticality, Palais
    1979), so a critical point of f restricted to the tied subspace is one of f.  On that
    subspace ``CE = log q + CE_G`` (q identical copies of each group's logit), so f restricted
    is ``log q`` + the UFM with G classes, ``nq`` samples per class and
    ``(q lambda_W, lambda_H, q lambda_b)``; its global minimiser is a G-simplex ETF
    (:func:`nclib.ufm.global_minimizer`) and ``f = log q + closed_form(G, nq, q lambda_W,
    lambda_H, q lambda_b).value``.  The result has rank G - 1 < K - 1 (or is the origin, when the
    G-class problem is in its origin regime), so it is not a global minimiser of (4) in the
    regime ``K sqrt(n lambda_W lambda_H) < 1``; Theorem 3.2 then says it is a strict saddle.  Needs d >= G.

    Returns (W (K,d), H (nK,d), b (K,)) with labels :func:`nclib.ufm.balanced_labels`.
    """
    K, n = _ufm._check_Kn(K, n, d)
    lW, lH, lb = _lams(lambda_W, lambda_H, lambda_b, strict_WH=True)
    try:
        groups = [sorted(int(k) for k in g) for g in groups]
    except TypeError:
        raise ValueError("groups must be a list of lists of class indices") from None
    flat = sorted(k for g in groups for k in g)
    if flat != list(range(K)):
        raise ValueError(f"groups must partition range(K)=range({K}) exactly, got {groups}")
    G = len(groups)
    q = K // G
    if G < 2 or any(len(g) != q for g in groups):
        raise ValueError(f"need G >= 2 groups of equal size, got sizes {[len(g) for g in groups]}")
    if d < G:
        raise ValueError(f"need d >= G={G} for a G-simplex ETF, got d={d}")
    Wg, Hg, bg = _ufm.global_minimizer(G, n * q, d, q * lW, lH, q * lb, rotation=rotation, seed=seed)
    feat = Hg[:: n * q]                                   # one feature per group
    W = np.empty((K, d))
    b = np.empty(K)
    Fk = np.empty((K, d))
    for gi, g in enumerate(groups):
        for k in g:
            W[k], b[k], Fk[k] = Wg[gi], bg[gi], feat[gi]
    H = Fk[_ufm.balanced_labels(K, n)]
    return W, H, b


def dropped_classes_critical_point(K: int, n: int, d: int, lambda_W, lambda_H, lambda_b, m: int, *,
                                   rotation=None, seed=None, tol: float = 1e-14):
    """A critical point of (4) where only the first m classes (2 <= m < K) have features.

    Ansatz: ``w^k = s e_k``, ``h_{k,i} = t e_k`` for k < m (e_k a unit m-simplex ETF in R^d),
    ``w^k = 0``, ``h_{k,i} = 0`` for k >= m, and ``b = beta`` on the first m classes,
    ``beta'`` on the others.  By the symmetry among the m active classes (and among the
    others) the gradient of f in every other direction vanishes when (i) the active rows
    sum to 0 and (ii) every active class sees the same probability for each dropped class;
    both hold in the ansatz (see the chapter).  So it suffices to make the 3 remaining
    partial derivatives (in ``u = s t``, ``beta``, ``beta'``; s and t balanced,
    ``lambda_W s^2 = n lambda_H t^2``, Lemma B.2) vanish: solved here by Newton's method in
    float64 to ``tol``.  If the best u is 0 the point degenerates to the origin family.
    The gradient norm of the full problem should be checked (tests do, with autograd).
    Needs d >= m.  Returns (W (K,d), H (nK,d), b (K,)).
    """
    from .etf import simplex_etf

    K, n = _ufm._check_Kn(K, n, d)
    lW, lH, lb = _lams(lambda_W, lambda_H, lambda_b, strict_WH=True)
    if not isinstance(m, (int, np.integer)) or not (2 <= m < K):
        raise ValueError(f"m must be an integer with 2 <= m < K={K}, got {m!r}")
    if d < m:
        raise ValueError(f"need d >= m={m} for an m-simplex ETF, got d={d}")
    kappa = math.sqrt(lW / (n * lH))          # t = kappa s
    reg = math.sqrt(n * lW * lH)              # lambda_W/2 s^2 + n lambda_H/2 t^2 = reg * u per class

    def F(x):
        u, be, bp = x[0], x[1], x[2]
        # active class: own logit u + be, other active -u/(m-1) + be, dropped bp
        za = torch.stack([u + be, -u / (m - 1) + be, bp])
        wa = torch.tensor([0.0, math.log(m - 1), math.log(K - m)], dtype=torch.float64)
        ce_a = torch.logsumexp(za + wa, 0) - (u + be)
        zd = torch.stack([be, bp])
        wd = torch.tensor([math.log(m), math.log(K - m)], dtype=torch.float64)
        ce_d = torch.logsumexp(zd + wd, 0) - bp
        return (m * ce_a + (K - m) * ce_d) / K + m * reg * u + 0.5 * lb * (m * be ** 2 + (K - m) * bp ** 2)

    x = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    for _ in range(200):
        xg = x.clone().requires_grad_(True)
        g = torch.autograd.grad(F(xg), xg)[0]
        Hm = torch.autograd.functional.hessian(F, x)
        if lb == 0:                            # shift invariance in (beta, beta'): fix beta' = 0
            g, Hm = g[:2], Hm[:2, :2]
        step = torch.linalg.lstsq(Hm, g.unsqueeze(1)).solution[:, 0]
        if lb == 0:
            step = torch.cat([step, torch.zeros(1, dtype=torch.float64)])
        # damped Newton on the 3-variable function (it is convex in u > 0 here); keep u >= 0
        lam = 1.0
        f0 = float(F(x))
        while lam > 1e-12:
            xn = x - lam * step
            if xn[0] >= 0 and float(F(xn)) <= f0 + 1e-16:
                break
            lam *= 0.5
        x = xn if lam > 1e-12 else x
        if float(g.abs().max()) < tol:
            break
    u, be, bp = (float(v) for v in x)
    s = math.sqrt(u / kappa) if u > 0 else 0.0
    t = kappa * s
    E = simplex_etf(m, d, rotation=rotation, seed=seed)
    W = np.zeros((K, d))
    Fk = np.zeros((K, d))
    W[:m] = s * E
    Fk[:m] = t * E
    b = np.full(K, bp)
    b[:m] = be
    return W, Fk[_ufm.balanced_labels(K, n)], b


def subspace_critical_point(K: int, n: int, d: int, lambda_W, lambda_H, lambda_b, r: int, *, seed=0,
                            lr: float = 3.0, max_iter: int = 5000, rotation=None):
    """A critical point of (4) whose classifier rows and features all lie in an r-dim subspace.

    Gradient descent keeps the rows of W and H in the span S of their initial rows (the
    gradients ``G^T H + lambda_W W`` and ``G W + lambda_H H`` have their rows in S), so the
    problem restricted to ``{rows in S}`` is the UFM with d = r, and a critical point of it is
    one of (4): the components of the gradient outside S vanish identically.  It is solved by
    :func:`multistart` GD (fixed step ``lr``, one start from ``seed``) in dimension r and
    embedded by ``P`` (d, r) with orthonormal columns (the first r coordinates, or Haar-random
    with ``rotation="random"``).  For r >= K - 1 this is a global minimiser; for r < K - 1 its
    rank is at most r < K - 1, so it is not (Theorem 3.1) and, by Theorem 3.2, a strict
    saddle when d > K.  The gradient norm of the result is not zero by construction but to
    the accuracy of the GD run: check it (``nclib.ufm.gradients``).
    Returns (W (K,d), H (nK,d), b (K,)).
    """
    K, n = _ufm._check_Kn(K, n, d)
    if not isinstance(r, (int, np.integer)) or not (1 <= r <= d):
        raise ValueError(f"r must be an integer with 1 <= r <= d={d}, got {r!r}")
    res = multistart(K, n, int(r), lambda_W, lambda_H, lambda_b, "gd", [seed], lr=lr, max_iter=max_iter)
    if res.diverged[0]:
        raise RuntimeError(f"gradient descent diverged with lr={lr}; use a smaller lr")
    if rotation is None:
        P = np.eye(d, r)
    elif isinstance(rotation, str) and rotation == "random":
        from .etf import random_orthonormal
        P = random_orthonormal(d, r, seed)
    else:
        raise ValueError(f"rotation must be None or 'random', got {rotation!r}")
    return res.W[0] @ P.T, res.H[0] @ P.T, res.b[0].copy()


# ----------------------------------------------------------------------------- perturbed gradient descent
@dataclass
class PGDResult:
    """Result of :func:`perturbed_gd`: final (W, H, b), ``value``, ``grad_norm``, ``n_iter``,
    ``perturbations`` (iterations where noise was added), ``history`` (dict of lists:
    value, grad_norm), ``converged`` and ``message``."""

    W: np.ndarray
    H: np.ndarray
    b: np.ndarray
    value: float
    grad_norm: float
    n_iter: int
    perturbations: list
    history: dict
    converged: bool
    message: str


def perturbed_gd(W, H, b, y, lambda_W, lambda_H, lambda_b, *, lr: float, radius: float = 1e-3,
                 g_thres: float = 1e-8, t_thres: int = 300, f_thres: float | None = None,
                 max_iter: int = 20000, perturb: bool = True, tol: float = 0.0, seed=None) -> PGDResult:
    """Perturbed gradient descent (Jin, Ge, Netrapalli, Kakade & Jordan 2017, Algorithm 2).

    Gradient descent ``x <- x - lr grad f(x)`` on (4), x = (W, H, b); whenever
    ``||grad f|| <= g_thres`` and no perturbation happened in the last ``t_thres`` steps, the
    current point is saved and a point drawn uniformly from the ball of radius ``radius`` is
    added.  If ``t_thres`` steps after a perturbation f has not decreased by ``f_thres``
    (default ``1e-3 radius^2``) below its value at the saved point, the saved point is
    returned (``converged``): noise found no descent, so it is an approximate second-order
    critical point (at a strict saddle the negative curvature amplifies the noise and f
    drops by far more).  Plain gradient descent (``perturb=False``) started at a critical
    point never moves; it stops when ``||grad f|| <= tol`` (default 0: exactly 0) or after
    ``max_iter``.  A
    non-finite value stops the run with a RuntimeWarning and returns the last finite state.
    """
    lW, lH, lb = _lams(lambda_W, lambda_H, lambda_b)
    W, H, b, y = _check(W, H, b, y)
    if not (lr > 0) or not (radius >= 0) or not (t_thres >= 1):
        raise ValueError(f"need lr > 0, radius >= 0, t_thres >= 1; got lr={lr!r}, radius={radius!r}, "
                         f"t_thres={t_thres!r}")
    if f_thres is None:
        f_thres = 1e-3 * radius ** 2
    rng = np.random.default_rng(seed)
    W, H, b = W.copy(), H.copy(), b.copy()
    K, d = W.shape
    N = H.shape[0]
    P_ = W.size + H.size + b.size
    hist = {"value": [], "grad_norm": []}
    perts = []
    saved = None
    last_pert = None
    converged, msg = False, "iteration budget reached"
    it = 0
    val, gW, gH, gb = _ufm._value_grads(W, H, b, y, lW, lH, lb)
    for it in range(max_iter):
        gn = math.sqrt(np.sum(gW * gW) + np.sum(gH * gH) + np.sum(gb * gb))
        hist["value"].append(val)
        hist["grad_norm"].append(gn)
        if perturb and last_pert is not None and it - last_pert == t_thres and saved[0] - val < f_thres:
            val, gn, (W, H, b) = saved[0], saved[1], saved[2]
            converged, msg = True, (f"noise of radius {radius} found no descent within {t_thres} steps: "
                                    f"returning the point before the last perturbation (||grad f|| = {gn:.2e})")
            break
        if not perturb and gn <= tol:
            converged, msg = True, (f"||grad f|| = {gn:.2e} <= tol={tol}" if gn > 0 else
                                    "gradient is exactly 0: plain gradient descent cannot move")
            break
        if perturb and gn <= g_thres and (last_pert is None or it - last_pert >= t_thres):
            saved = (val, gn, (W.copy(), H.copy(), b.copy()))
            xi = rng.standard_normal(P_)
            xi *= radius * rng.random() ** (1.0 / P_) / np.linalg.norm(xi)
            A, B, c = unpack(xi, K, N, d)
            W, H, b = W + A, H + B, b + c
            last_pert = it
            perts.append(it)
            val, gW, gH, gb = _ufm._value_grads(W, H, b, y, lW, lH, lb)
        Wn, Hn, bn = W - lr * gW, H - lr * gH, b - lr * gb
        with np.errstate(over="ignore", invalid="ignore"):
            out = _ufm._value_grads(Wn, Hn, bn, y, lW, lH, lb)
        if not math.isfinite(out[0]):
            msg = f"diverged at iteration {it} (non-finite f, lr={lr} too large?); returning the last finite state"
            warnings.warn(msg, RuntimeWarning)
            break
        W, H, b = Wn, Hn, bn
        val, gW, gH, gb = out
    if not converged:
        gn = math.sqrt(np.sum(gW * gW) + np.sum(gH * gH) + np.sum(gb * gb))
    return PGDResult(W, H, b, val, gn, it, perts, hist, converged, msg)


# ----------------------------------------------------------------------------- many random starts at once
@dataclass
class MultiStartResult:
    """Result of :func:`multistart` for R runs: final ``W`` (R, K, d), ``H`` (R, N, d),
    ``b`` (R, K), ``values`` (R,) of f, ``grad_norms`` (R,), ``seeds``, ``n_iter`` and
    ``history`` (dict: ``iter`` list and ``value`` array (T, R)), ``diverged`` (R,) bools."""

    W: np.ndarray
    H: np.ndarray
    b: np.ndarray
    values: np.ndarray
    grad_norms: np.ndarray
    seeds: list
    n_iter: int
    history: dict
    diverged: np.ndarray


def _batched_vg(W, H, b, y1h, lW, lH, lb, y=None, loss="ce", kw=None):
    """Values (R,) and gradients of f for R independent problems (torch, float64)."""
    N = H.shape[1]
    Z = H @ W.transpose(1, 2) + b[:, None, :]
    if loss == "ce":
        lse = torch.logsumexp(Z, dim=2)
        per = lse - (Z * y1h).sum(2)
        G = (torch.exp(Z - lse[..., None]) - y1h) / N
    else:
        per, G = _ufm._dlogits(Z, y, loss, kw)
        G = G / N
    val = per.mean(1) + 0.5 * (lW * (W * W).sum((1, 2)) + lH * (H * H).sum((1, 2)) + lb * (b * b).sum(1))
    return val, G.transpose(1, 2) @ H + lW * W, G @ W + lH * H, G.sum(1) + lb * b


def multistart(K: int, n, d: int, lambda_W, lambda_H, lambda_b, optimizer: str, seeds, *,
               lr: float, max_iter: int, batch_size: int | None = None, momentum: float = 0.9,
               betas=(0.9, 0.999), eps: float = 1e-8, init_scale: float = 1.0, schedule: bool = True,
               history_every: int = 50, loss: str = "ce", **loss_kw) -> MultiStartResult:
    """Run ``optimizer`` in {"gd", "sgd", "adam"} on (4) from one random start per seed, all at once.

    The R = len(seeds) problems are independent: the parameters are stacked into (R, K, d),
    (R, N, d), (R, K) tensors and every update is elementwise or per problem, so this is
    exactly R separate runs (the test checks it against :func:`nclib.ufm.solve`).  The
    initialisation is the one of :func:`nclib.ufm.solve` for the same seed: entries i.i.d.
    ``N(0, init_scale^2/d)`` drawn as W, then H, then b from ``numpy.random.default_rng(seed)``.

    * ``"gd"``: ``x <- x - lr grad f`` (fixed step);
    * ``"sgd"``: mini-batches of ``batch_size`` samples (without replacement, a new
      permutation per epoch and per run, seeded), the batch-mean CE gradient plus the full
      weight decay, heavy-ball momentum as ``torch.optim.SGD`` (``v <- m v + g``, ``x <- x - lr v``);
    * ``"adam"``: ``torch.optim.Adam``'s update (bias-corrected, ``betas``, ``eps``), full batch
      unless ``batch_size``.

    With ``schedule`` the learning rate of SGD and Adam is divided by 10 at 1/2 and 3/4 of
    ``max_iter`` (as in :func:`nclib.ufm.solve`; a schedule chosen for the book, not the paper's).  A run whose value
    becomes non-finite is frozen at its last finite state and flagged in ``diverged`` (with a
    RuntimeWarning).  For L-BFGS use :func:`nclib.ufm.solve` per seed (its line search and
    memory are per problem).  Runs with one torch thread (restored afterwards): the tensors are
    small and thread synchronisation dominates otherwise.  ``n`` may be a sequence of K class
    sizes (labels :func:`nclib.ufm.class_labels`); ``loss`` any loss of :func:`nclib.ufm.objective`.
    """
    if optimizer not in ("gd", "sgd", "adam"):
        raise ValueError(f"unknown optimizer {optimizer!r} for multistart; allowed: 'gd', 'sgd', 'adam' "
                         "(L-BFGS: call nclib.ufm.solve per seed)")
    sizes = _ufm._check_sizes(K, n, d)
    kw = _ufm._check_loss(loss, loss_kw)
    lW, lH, lb = _lams(lambda_W, lambda_H, lambda_b)
    seeds = list(seeds)
    if len(seeds) == 0:
        raise ValueError("seeds is empty")
    if not (lr > 0) or not isinstance(max_iter, (int, np.integer)) or max_iter < 0:
        raise ValueError(f"need lr > 0 and an integer max_iter >= 0, got lr={lr!r}, max_iter={max_iter!r}")
    N = int(sizes.sum())
    B = N if batch_size is None else int(batch_size)
    if not (1 <= B <= N):
        raise ValueError(f"batch_size must be in [1, N={N}], got {batch_size!r}")
    R = len(seeds)
    s = init_scale / math.sqrt(d)
    W0, H0, b0 = [], [], []
    for sd in seeds:
        rng = np.random.default_rng(sd)
        W0.append(s * rng.standard_normal((K, d)))
        H0.append(s * rng.standard_normal((N, d)))
        b0.append(s * rng.standard_normal(K))
    P = [torch.tensor(np.stack(a)) for a in (W0, H0, b0)]
    y = torch.as_tensor(_ufm.class_labels(K, sizes.tolist()))
    y1h = torch.nn.functional.one_hot(y, K).to(torch.float64).expand(R, N, K)
    gen = torch.Generator().manual_seed(int(np.random.default_rng(seeds[0]).integers(2 ** 62)))
    nthreads = torch.get_num_threads()
    torch.set_num_threads(1)          # many tiny ops: one thread is much faster (restored below)
    try:
        return _multistart_loop(P, y, y1h, K, N, B, R, lW, lH, lb, optimizer, lr, max_iter, momentum, betas, eps,
                                schedule, history_every, gen, seeds, loss, kw)
    finally:
        torch.set_num_threads(nthreads)


def _multistart_loop(P, y, y1h, K, N, B, R, lW, lH, lb, optimizer, lr, max_iter, momentum, betas, eps,
                     schedule, history_every, gen, seeds, loss="ce", kw=None):
    state = [torch.zeros_like(p) for p in P]
    state2 = [torch.zeros_like(p) for p in P]
    good = [p.clone() for p in P]
    dead = torch.zeros(R, dtype=torch.bool)
    hist = {"iter": [], "value": []}
    perm, pos = None, N
    ar = torch.arange(R)[:, None]

    def lr_at(t):
        if optimizer == "gd" or not schedule:
            return lr
        return lr * 0.1 ** ((t >= max_iter // 2) + (t >= (3 * max_iter) // 4))

    val, gW, gH, gb = _batched_vg(*P, y1h, lW, lH, lb, y, loss, kw)
    for it in range(max_iter + 1):
        bad = ~torch.isfinite(val) | ~torch.isfinite(gH).all(2).all(1) | ~torch.isfinite(gW).all(2).all(1)
        if bad.any():
            newly = bad & ~dead
            if newly.any():
                warnings.warn(f"{int(newly.sum())} run(s) diverged at iteration {it} (lr={lr} too large?); "
                              "they are frozen at their last finite state", RuntimeWarning)
            dead |= bad
            for p, g0 in zip(P, good):
                p[dead] = g0[dead]
            val, gW, gH, gb = _batched_vg(*P, y1h, lW, lH, lb, y, loss, kw)
        good = [p.clone() for p in P]
        if it % history_every == 0 or it == max_iter:
            hist["iter"].append(it)
            hist["value"].append(val.numpy().copy())
        if it == max_iter:
            break
        if optimizer == "sgd" and B < N:
            if pos + B > N:
                perm, pos = torch.argsort(torch.rand(R, N, generator=gen), dim=1), 0
            idx = perm[:, pos:pos + B]
            pos += B
            Hb = P[1][ar, idx]
            Z = Hb @ P[0].transpose(1, 2) + P[2][:, None, :]
            Gb = _ufm._dlogits(Z, y[idx], loss, kw)[1] / B
            gW = Gb.transpose(1, 2) @ Hb + lW * P[0]
            gH = lH * P[1]
            gH[ar, idx] += Gb @ P[0]
            gb = Gb.sum(1) + lb * P[2]
        elif optimizer == "adam" and B < N:
            raise ValueError("multistart: mini-batch Adam is not implemented; use batch_size=None")
        grads = (gW, gH, gb)
        a = lr_at(it)
        live = (~dead).to(torch.float64)
        for j, (p, g) in enumerate(zip(P, grads)):
            m_ = live.view(-1, *([1] * (p.dim() - 1)))
            if optimizer == "gd":
                p.sub_(a * g * m_)
            elif optimizer == "sgd":
                state[j] = momentum * state[j] + g if it > 0 else g.clone()
                p.sub_(a * state[j] * m_)
            else:
                state[j] = betas[0] * state[j] + (1 - betas[0]) * g
                state2[j] = betas[1] * state2[j] + (1 - betas[1]) * g * g
                mh = state[j] / (1 - betas[0] ** (it + 1))
                vh = state2[j] / (1 - betas[1] ** (it + 1))
                p.sub_(a * mh / (vh.sqrt() + eps) * m_)
        val, gW, gH, gb = _batched_vg(*P, y1h, lW, lH, lb, y, loss, kw)
    gn = torch.sqrt((gW ** 2).sum((1, 2)) + (gH ** 2).sum((1, 2)) + (gb ** 2).sum(1))
    hist["value"] = np.stack(hist["value"])
    return MultiStartResult(P[0].numpy(), P[1].numpy(), P[2].numpy(), val.numpy(), gn.numpy(), seeds,
                            max_iter, hist, dead.numpy())
