"""The simplex equiangular tight frame (paper, Appendix A, Definition A.1).

The book's chapter "Neural collapse" explains why the class means and the classifier
rows of a network in the terminal phase of training line up with one.
"""
from __future__ import annotations

import numpy as np

__all__ = ["simplex_etf", "etf_gram", "random_orthonormal", "etf_in_span", "noisy_etf_features",
           "expected_nc1_noisy_etf"]


def _check_K_d(K, d):
    if not isinstance(K, (int, np.integer)) or K < 2:
        raise ValueError(f"K must be an integer >= 2 (number of classes), got K={K!r}")
    if not isinstance(d, (int, np.integer)) or d < K:
        raise ValueError(
            f"a K-simplex ETF needs d >= K (Definition A.1: P in R^(d x K) with orthonormal "
            f"columns); got K={K}, d={d!r}"
        )


def etf_gram(K: int) -> np.ndarray:
    """The Gram matrix of a unit-norm K-simplex ETF: ``K/(K-1) (I_K - 11^T/K)``.

    This is ``M^T M`` of Definition A.1 and of eq. (6) of Theorem 3.1; its diagonal is 1
    and its off-diagonal entries are ``-1/(K-1)``.
    """
    if not isinstance(K, (int, np.integer)) or K < 2:
        raise ValueError(f"K must be an integer >= 2, got K={K!r}")
    return K / (K - 1) * (np.eye(K) - np.ones((K, K)) / K)


def random_orthonormal(d: int, k: int, seed=None) -> np.ndarray:
    """A (d, k) matrix with orthonormal columns, Haar-distributed (QR with sign fix)."""
    if k > d:
        raise ValueError(f"need k <= d for orthonormal columns, got d={d}, k={k}")
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((d, k)))
    return q * np.sign(np.diag(r))


def simplex_etf(K: int, d: int | None = None, *, rotation=None, seed=None) -> np.ndarray:
    """Rows of a K-simplex ETF in R^d as a (K, d) float64 matrix (Definition A.1).

    Returns ``W = M P^T`` with ``M = sqrt(K/(K-1)) (I_K - 11^T/K)`` (Definition A.1) and
    ``P`` a (d, K) matrix with orthonormal columns, so ``W W^T = K/(K-1) (I - 11^T/K)``:
    unit-norm rows with pairwise inner products ``-1/(K-1)``.  ``W`` can be used directly as
    a classifier weight (rows = classes), the convention of footnote 14 of the paper.

    Parameters
    ----------
    K : number of classes (vertices), ``K >= 2``.
    d : ambient dimension, ``d >= K``; defaults to ``K``.
    rotation : how to embed the K x K frame in R^d.
        ``None``     -> ``P`` = the first K columns of ``I_d`` (the authors' ``eye(K, d)``);
        ``"random"`` -> ``P`` Haar-random with orthonormal columns (use ``seed``);
        an array     -> a (d, d) orthogonal ``U``, and ``P = U[:, :K]``.
    """
    d = K if d is None else d
    _check_K_d(K, d)
    M = np.sqrt(K / (K - 1)) * (np.eye(K) - np.ones((K, K)) / K)
    if rotation is None:
        P = np.eye(d, K)
    elif isinstance(rotation, str):
        if rotation != "random":
            raise ValueError(f"rotation must be None, 'random' or a (d, d) orthogonal array, got {rotation!r}")
        P = random_orthonormal(d, K, seed)
    else:
        U = np.asarray(rotation, dtype=np.float64)
        if U.shape != (d, d):
            raise ValueError(f"rotation array must have shape (d, d)=({d}, {d}), got {U.shape}")
        if not np.allclose(U.T @ U, np.eye(d), atol=1e-8):
            raise ValueError("rotation array must be orthogonal (U^T U = I)")
        P = U[:, :K]
    return M @ P.T


def etf_in_span(K: int) -> np.ndarray:
    """The K-simplex ETF in its own (K-1)-dimensional span, as a (K, K-1) matrix.

    The rows of Definition A.1's ``M`` sum to zero, so they live in the hyperplane
    ``1^perp`` of R^K; this returns their coordinates in an orthonormal basis of it
    (K=3: an equilateral triangle in the plane; K=4: a regular tetrahedron in 3-D).
    """
    if not isinstance(K, (int, np.integer)) or K < 2:
        raise ValueError(f"K must be an integer >= 2, got K={K!r}")
    M = simplex_etf(K, K)
    # orthonormal basis of 1^perp: the first K-1 right singular vectors of the centring matrix
    _, _, Vt = np.linalg.svd(np.eye(K) - np.ones((K, K)) / K)
    return M @ Vt[: K - 1].T


def noisy_etf_features(K: int, n: int, d: int, sigma: float, *, scale: float = 1.0, mean=None,
                       rotation=None, seed=None, dtype=np.float64):
    """A collapsing configuration: class means at a simplex ETF plus Gaussian noise.

    Returns ``(H, y)`` with ``H`` (K n, d), ``y = repeat(arange(K), n)``; the class-k rows are
    ``scale * etf_k + mean + sigma * N(0, I_d)``, with ``etf = simplex_etf(K, d, rotation=rotation,
    seed=seed)`` (``rotation="random"`` spreads the means over all d coordinates).  With ``sigma -> 0`` this approaches
    perfect neural collapse (NC1 -> 0).  See :func:`expected_nc1_noisy_etf`.
    """
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    if n < 1:
        raise ValueError(f"n (samples per class) must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    M = scale * simplex_etf(K, d, rotation=rotation, seed=seed)
    y = np.repeat(np.arange(K), n)
    H = M[y] + sigma * rng.standard_normal((K * n, d))
    if mean is not None:
        H = H + np.asarray(mean, dtype=np.float64)
    return H.astype(dtype), y


def expected_nc1_noisy_etf(K: int, n: int, sigma: float, scale: float = 1.0) -> float:
    """E[NC1] of :func:`noisy_etf_features`, to leading order in ``sigma / scale``.

    Derivation (eq. 7, Zhu et al. convention): the centred class means are ``scale * etf``
    plus O(sigma), so Sigma_B has K-1 equal eigenvalues ``scale^2 / (K-1)`` and
    ``Sigma_B^+ = (K-1)/scale^2 * P`` with P the projector on their span.  The residuals
    about the empirical class means have ``E[Sigma_W] = (N-K)/N * sigma^2 I``.  Hence
    ``E[tr(Sigma_W Sigma_B^+)] / K = (1 - K/N) sigma^2 (K-1)^2 / (K scale^2)`` with N = Kn.
    """
    N = K * n
    return (1.0 - K / N) * sigma**2 * (K - 1) ** 2 / (K * scale**2)
