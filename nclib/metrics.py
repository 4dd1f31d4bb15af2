"""Neural-collapse metrics NC1-NC4 (paper, Section 4, eqs. (7)-(10)).

Shapes: features are rows, ``H`` is (N, d), ``y`` is (N,) integer labels in ``[0, K)``,
``W`` is (K, d), ``b`` is (K,).  The paper writes H as d x N.  Inputs may be numpy
arrays or torch tensors on any device (Apple ``mps``, which has no float64, is moved to
the CPU).  Every statistic is accumulated and every metric is formed in float64.  The only
O(N d) products done in the input's precision are those of exactly centred residuals
(``h - c`` with ``c`` a nearby feature or class mean), whose rounding error is relative
to the residual, not to the feature, so that float32 features near collapse give NC1
to about 1e-6 relative accuracy without an N x d float64 copy (tested down to NC1 ~ 1e-14).

Definitions (Zhu et al., Section 4, the book's default convention):

* ``h_G = (1/N) sum_i h_i`` (weighted by samples), ``mu_k`` the class means,
  ``Sigma_W = (1/N) sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T``,
  ``Sigma_B = (1/K) sum_k (mu_k - h_G)(mu_k - h_G)^T``;
* ``NC1 = tr(Sigma_W Sigma_B^+) / K``                                        (eq. 7)
* ``NC2 = || W W^T / ||W W^T||_F - (I_K - 11^T/K)/sqrt(K-1) ||_F``           (eq. 8)
* ``NC3 = || W Hbar / ||W Hbar||_F - (I_K - 11^T/K)/sqrt(K-1) ||_F``,
  ``Hbar = [mu_1 - h_G, ..., mu_K - h_G]`` (d x K)                           (eq. 9)
* ``NC4 = || b + W h_G ||_2``                                                (eq. 10)

How NC1 is computed (and why the anchors' value is wrong at small NC1): ``Sigma_B`` has
rank at most K-1.  Its pseudo-inverse is taken on its top ``K-1`` eigendirections only,
found from the K x K Gram of the centred class means (never a d x d pinv, whose default
cutoff keeps noise directions and floors NC1 near 5e-5 in float32).  With
``C = [mu_k - h_G]_k`` (K x d), ``C C^T = V diag(lam) V^T`` and ``A = C^T V_r diag(1/lam_r)``
(d x r), one has ``NC1 = (1/N) ||R A||_F^2`` where ``R`` holds the within-class residuals
``h_i - mu_{y_i}`` as rows.  No d x d matrix is formed by the in-memory functions.

Other conventions, as options (see :func:`nc1` and :func:`nc_metrics`):

* ``convention="papyan"`` (Papyan, Han & Donoho 2020): ``tr(Sigma_W Sigma_B^+)`` without
  the 1/K and with the unweighted global mean ``(1/K) sum_k mu_k``;
* :func:`equinorm` (std/mean of norms) and :func:`equiangularity`
  (mean over pairs of ``|cos + 1/(K-1)|``), Papyan et al.'s two halves of NC2;
* :func:`ncc_mismatch`: the fraction of samples on which the linear classifier and the
  nearest-class-centre rule disagree (Papyan et al.'s NC4).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

__all__ = [
    "nc1",
    "nc2",
    "nc3",
    "nc4",
    "nc_metrics",
    "equinorm",
    "equiangularity",
    "ncc_mismatch",
    "class_means",
    "NCMetrics",
    "NCAccumulator",
]

_CONVENTIONS = ("zhu", "papyan")
_EIG_RTOL = 1e-12  # eigenvalues of the class-mean Gram below rtol * max are treated as zero


# ----------------------------------------------------------------------------- input checks
def _device_for(x: torch.Tensor) -> torch.device:
    return torch.device("cpu") if x.device.type == "mps" else x.device


def _as_tensor(x, name: str) -> torch.Tensor:
    """A numpy array or torch tensor as a detached torch tensor (no copy where possible)."""
    if isinstance(x, torch.Tensor):
        return x.detach()
    try:
        return torch.as_tensor(np.asarray(x))
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise ValueError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}") from exc


def _check_finite(t: torch.Tensor, name: str) -> None:
    # one reduction instead of an N x d boolean mask; a sum that overflows is checked in full
    if t.numel() and not torch.isfinite(t.sum()) and not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf")


def _f64(x, name: str, device=None) -> torch.Tensor:
    """Any array-like -> float64 torch tensor (no copy when already float64 on the device)."""
    t = _as_tensor(x, name)
    t = t.to(device=_device_for(t) if device is None else device, dtype=torch.float64)
    _check_finite(t, name)
    return t


def _labels(y, N: int, device) -> torch.Tensor:
    t = y.detach() if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))
    if t.ndim != 1:
        raise ValueError(f"y must be 1-D with shape (N,), got shape {tuple(t.shape)}")
    if t.shape[0] != N:
        raise ValueError(f"y has {t.shape[0]} labels but H has {N} rows")
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.dtype.is_complex:
        if t.dtype.is_floating_point and torch.all(t == torch.round(t)):
            t = t.long()
        else:
            raise ValueError(f"y must hold integer class labels, got dtype {t.dtype}")
    t = t.to(device=device, dtype=torch.long)
    if N and t.min() < 0:
        raise ValueError(f"labels must be >= 0, found {int(t.min())}")
    return t


def _features(H, name="H", device=None) -> torch.Tensor:
    """Validated (N, d) features as a torch tensor in their own float dtype (no full copy).

    The in-memory metrics read them chunk by chunk (:func:`_chunks`) and never make an N x d
    float64 copy (see :func:`_class_stats` and :func:`_second_pass` for the precision); the
    streaming accumulator converts each batch to float64.
    """
    t = _as_tensor(H, name)
    if not t.dtype.is_floating_point or t.dtype in (torch.float16, torch.bfloat16):
        t = t.to(torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else torch.float64)
    t = t.to(device=_device_for(t) if device is None else device)
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D with features as rows, shape (N, d); got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} has no rows")
    _check_finite(t, name)
    return t


_CHUNK = 4096  # rows processed at a time by the in-memory metrics


def _chunks(H: torch.Tensor):
    for start in range(0, H.shape[0], _CHUNK):
        yield start, H[start:start + _CHUNK]


def _num_classes(y: torch.Tensor, num_classes) -> int:
    K = int(y.max()) + 1 if num_classes is None else int(num_classes)
    if K < 2:
        raise ValueError(f"need K >= 2 classes, got K={K}")
    if int(y.max()) >= K:
        raise ValueError(f"label {int(y.max())} is out of range for K={K} classes")
    return K


def _classifier(W, d: int | None, device, K: int | None = None) -> torch.Tensor:
    Wt = _f64(W, "W", device)
    if Wt.ndim != 2:
        raise ValueError(f"W must be 2-D with shape (K, d), got shape {tuple(Wt.shape)}")
    if Wt.shape[0] < 2:
        raise ValueError(f"W must have K >= 2 rows (one per class), got K={Wt.shape[0]}")
    if d is not None and Wt.shape[1] != d:
        raise ValueError(f"W has shape {tuple(Wt.shape)} but features have d={d} columns")
    if K is not None and Wt.shape[0] != K:
        raise ValueError(f"W has {Wt.shape[0]} rows but the labels imply K={K} classes")
    return Wt


def _bias(b, K: int, device) -> torch.Tensor:
    bt = _f64(b, "b", device)
    if bt.shape != (K,):
        raise ValueError(f"b must have shape (K,)=({K},), got shape {tuple(bt.shape)}")
    return bt


# ----------------------------------------------------------------------------- core pieces
def _class_stats(H: torch.Tensor, y: torch.Tensor, K: int):
    """Counts (K,) and float64 class means (K, d), accumulated chunk by chunk.

    Each class is summed around a shift ``c_k`` (its first sample), so the sums are of
    residuals ``h - c_k``: in the features' own precision their rounding error is relative
    to the (small, near collapse) within-class spread, not to ``||h||``.  The partial sums
    are accumulated in float64 and ``mu_k = c_k + sum_k / n_k`` is formed in float64.
    """
    counts = torch.bincount(y, minlength=K).to(torch.float64)
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if empty:
        raise ValueError(f"class(es) {empty} have no samples (K={K}); every class needs at least one")
    N = H.shape[0]
    first = torch.full((K,), N, dtype=torch.long, device=H.device)
    first.scatter_reduce_(0, y, torch.arange(N, device=H.device), reduce="amin")
    shift = H[first]
    sums = torch.zeros(K, H.shape[1], dtype=torch.float64, device=H.device)
    for start, Hc in _chunks(H):
        yc = y[start:start + Hc.shape[0]]
        onehot = torch.nn.functional.one_hot(yc, K).to(H.dtype)
        sums += (onehot.T @ (Hc - shift[yc])).to(torch.float64)
    return counts, shift.to(torch.float64) + sums / counts[:, None]


def _second_pass(H, y, K, means, As=(), W=None, b=None):
    """One pass over H: squared projected residuals per projector, correct and NCC-mismatch counts.

    The residuals ``r_i = h_i - mu_{y_i}`` are formed in the features' precision against the
    means rounded to it (``mu~``); a subtraction of nearby numbers is exact in floating point
    (Sterbenz), so ``r`` carries an error relative to ``||r||``, not to ``||h||``.  The
    products ``r A`` (d x r, r ~ 2K) are taken in that precision, converted to float64, and
    corrected by ``(mu - mu~) A``; squares and sums are float64.  For float64 input every step
    is float64.  No N x d float64 copy and no d x d matrix is formed.
    """
    wd = H.dtype
    widths = [A.shape[1] for A in As]
    r = sum(widths)
    means_w = means.to(wd)
    sq = torch.zeros(r, dtype=torch.float64, device=H.device)
    if r:
        A64 = torch.cat(list(As), 1)
        Aw = A64.to(wd)
        corr = (means - means_w.to(torch.float64)) @ A64  # K x r, rounding of the means
    if W is not None:
        S64 = torch.cat([W, means]).T  # d x 2K: logits and nearest-class-centre scores
        Sw = S64.to(wd)
        msq = means.pow(2).sum(1)
    correct = mismatch = 0
    for start, Hc in _chunks(H):
        yc = y[start:start + Hc.shape[0]]
        if r:
            P = ((Hc - means_w[yc]) @ Aw).to(torch.float64) - corr[yc]
            sq += P.pow(2).sum(0)
        if W is not None:
            Q = (Hc @ Sw).to(torch.float64)
            net = (Q[:, :K] + b).argmax(1)
            ncc = (msq - 2.0 * Q[:, K:]).argmin(1)
            correct += int((net == yc).sum())
            mismatch += int((net != ncc).sum())
    N = H.shape[0]
    out, start = [], 0
    for w in widths:
        out.append(float(sq[start:start + w].sum() / N))
        start += w
    return out, correct / N, mismatch / N


def _global_mean(means: torch.Tensor, counts: torch.Tensor, convention: str) -> torch.Tensor:
    if convention == "zhu":
        return (counts @ means) / counts.sum()
    return means.mean(0)


def _nc1_projector(C: torch.Tensor, rank: int) -> torch.Tensor:
    """``A = C^T V_r diag(1/lam_r)`` (d x r) from the Gram of the centred means ``C`` (K x d).

    Then ``tr(Sigma_W Sigma_B^+) / K = (1/N) ||R A||_F^2`` for ``Sigma_B = C^T C / K``
    restricted to its top ``rank`` eigendirections.
    """
    G = C @ C.T
    lam, V = torch.linalg.eigh(G)  # ascending
    lam, V = lam.flip(0)[:rank], V.flip(1)[:, :rank]
    keep = lam > _EIG_RTOL * lam[0].clamp_min(torch.finfo(lam.dtype).tiny)
    if not bool(keep.any()):
        raise ValueError("the class means coincide (Sigma_B = 0): NC1 is undefined")
    lam, V = lam[keep], V[:, keep]
    return C.T @ (V / lam)


def _check_convention(convention):
    if convention not in _CONVENTIONS:
        raise ValueError(f"unknown NC1 convention {convention!r}; allowed: {_CONVENTIONS}")


def _nc1_from(H, y, K, counts, means, conventions=("zhu",)) -> list:
    """NC1 under each convention, sharing one pass over the features."""
    As = [_nc1_projector(means - _global_mean(means, counts, c), min(K - 1, H.shape[1])) for c in conventions]
    vals, _, _ = _second_pass(H, y, K, means, As)
    return [v * K if c == "papyan" else v for c, v in zip(conventions, vals)]


def _etf_target(K: int, like: torch.Tensor) -> torch.Tensor:
    return (torch.eye(K, dtype=like.dtype, device=like.device) - 1.0 / K) / np.sqrt(K - 1)


def _etf_distance(M: torch.Tensor) -> float:
    nrm = torch.linalg.norm(M)
    if nrm == 0:
        raise ValueError("matrix is zero; its distance to a normalised simplex ETF is undefined")
    return float(torch.linalg.norm(M / nrm - _etf_target(M.shape[0], M)))


# ----------------------------------------------------------------------------- public API
def class_means(H, y, num_classes: int | None = None):
    """Class counts (K,) and class means (K, d) in float64 as torch tensors (Section 4)."""
    Ht = _features(H)
    yt = _labels(y, Ht.shape[0], Ht.device)
    return _class_stats(Ht, yt, _num_classes(yt, num_classes))


def nc1(H, y, num_classes: int | None = None, *, convention: str = "zhu") -> float:
    """Within-class variability collapse NC1 = tr(Sigma_W Sigma_B^+)/K, eq. (7).

    ``convention="zhu"`` (default) is eq. (7) of the paper: 1/K and the sample-weighted
    global mean.  ``convention="papyan"`` is Papyan et al.'s version: no 1/K, unweighted
    global mean of the class means.  Sigma_B^+ is the pseudo-inverse on the top
    ``min(K-1, d)`` eigendirections of Sigma_B (see the module docstring).
    """
    _check_convention(convention)
    Ht = _features(H)
    yt = _labels(y, Ht.shape[0], Ht.device)
    K = _num_classes(yt, num_classes)
    counts, means = _class_stats(Ht, yt, K)
    return _nc1_from(Ht, yt, K, counts, means, (convention,))[0]


def nc2(W) -> float:
    """Convergence of the classifier to a simplex ETF, eq. (8): ||WW^T/||WW^T||_F - ETF||_F."""
    Wt = _classifier(W, None, None)
    return _etf_distance(Wt @ Wt.T)


def nc3(W, H, y) -> float:
    """Self-duality, eq. (9): ||W Hbar/||W Hbar||_F - ETF||_F with Hbar the centred class means."""
    Ht = _features(H)
    yt = _labels(y, Ht.shape[0], Ht.device)
    Wt = _classifier(W, Ht.shape[1], Ht.device)
    K = Wt.shape[0]
    _num_classes(yt, K)
    counts, means = _class_stats(Ht, yt, K)
    hG = _global_mean(means, counts, "zhu")
    return _etf_distance(Wt @ (means - hG).T)


def nc4(W, b, H) -> float:
    """Collapse of the bias, eq. (10): ||b + W h_G||_2 with h_G the global feature mean."""
    Ht = _features(H)
    Wt = _classifier(W, Ht.shape[1], Ht.device)
    bt = _bias(b, Wt.shape[0], Ht.device)
    hG = sum(Hc.to(torch.float64).sum(0) for _, Hc in _chunks(Ht)) / Ht.shape[0]
    return float(torch.linalg.norm(bt + Wt @ hG))


def equinorm(X) -> float:
    """Papyan et al.'s equinorm: std/mean of the row norms of X (class means or classifier rows).

    Pass centred class means (``means - h_G``) or ``W``.  0 for a simplex ETF up to scale.
    """
    n = torch.linalg.norm(_f64(X, "X"), dim=1)
    return float(n.std(unbiased=False) / n.mean())


def equiangularity(X) -> float:
    """Papyan et al.'s maximal-equiangularity: mean over pairs k != l of |cos(x_k, x_l) + 1/(K-1)|.

    0 exactly when the rows are equiangular at the simplex angle ``arccos(-1/(K-1))``.
    """
    Xt = _f64(X, "X")
    K = Xt.shape[0]
    if K < 2:
        raise ValueError(f"need K >= 2 rows, got {K}")
    U = Xt / torch.linalg.norm(Xt, dim=1, keepdim=True)
    cos = U @ U.T
    off = ~torch.eye(K, dtype=torch.bool, device=cos.device)
    return float((cos[off] + 1.0 / (K - 1)).abs().mean())


def ncc_mismatch(W, b, H, y) -> float:
    """Fraction of samples where ``argmax(W h + b)`` differs from the nearest class centre.

    Papyan et al.'s NC4 ("simplification to nearest class centre"); class centres are the
    class means of ``H`` under labels ``y``.
    """
    Ht = _features(H)
    yt = _labels(y, Ht.shape[0], Ht.device)
    Wt = _classifier(W, Ht.shape[1], Ht.device)
    bt = _bias(b, Wt.shape[0], Ht.device)
    K = Wt.shape[0]
    _num_classes(yt, K)
    _, means = _class_stats(Ht, yt, K)
    return _second_pass(Ht, yt, K, means, (), Wt, bt)[2]


@dataclass
class NCMetrics:
    """NC1-NC4 (eqs. 7-10) and the train accuracy of the linear classifier.

    ``extras`` holds the other conventions: ``nc1_papyan``, ``equinorm_W``,
    ``equinorm_H``, ``equiangularity_W``, ``equiangularity_H`` and ``ncc_mismatch``
    (``None`` where the streaming accumulator cannot compute it).
    """

    nc1: float
    nc2: float
    nc3: float
    nc4: float
    accuracy: float
    extras: dict

    def to_dict(self) -> dict:
        d = asdict(self)
        extras = d.pop("extras")
        d.update(extras)
        return d


def _assemble(H, y, W, b, K, counts, means, nc1_zhu, nc1_pap, correct, ncc) -> NCMetrics:
    hG = _global_mean(means, counts, "zhu")
    C = means - hG
    return NCMetrics(
        nc1=nc1_zhu,
        nc2=_etf_distance(W @ W.T),
        nc3=_etf_distance(W @ C.T),
        nc4=float(torch.linalg.norm(b + W @ hG)),
        accuracy=correct,
        extras=dict(
            nc1_papyan=nc1_pap,
            equinorm_W=equinorm(W),
            equinorm_H=equinorm(C),
            equiangularity_W=equiangularity(W),
            equiangularity_H=equiangularity(C),
            ncc_mismatch=ncc,
        ),
    )


def nc_metrics(W, b, H, y) -> NCMetrics:
    """All of NC1-NC4 (eqs. 7-10), the classifier's accuracy on (H, y), and the extras.

    One pass over ``H`` for the class means and one for the residuals; K is ``W.shape[0]``.
    """
    Ht = _features(H)
    yt = _labels(y, Ht.shape[0], Ht.device)
    Wt = _classifier(W, Ht.shape[1], Ht.device)
    K = Wt.shape[0]
    _num_classes(yt, K)
    bt = _bias(b, K, Ht.device)
    counts, means = _class_stats(Ht, yt, K)
    As = [_nc1_projector(means - _global_mean(means, counts, c), min(K - 1, Ht.shape[1])) for c in _CONVENTIONS]
    (nc1_zhu, nc1_pap), acc, mismatch = _second_pass(Ht, yt, K, means, As, Wt, bt)
    return _assemble(Ht, yt, Wt, bt, K, counts, means, nc1_zhu, nc1_pap * K, acc, mismatch)


class NCAccumulator:
    """Streaming NC metrics: feed features batch by batch, get :func:`nc_metrics`' numbers.

    Keeps, in float64 on the features' device: class counts (K,), class sums (K, d), one
    d x d within-class scatter accumulated around a per-class shift (the mean of the
    first batch in which the class appears, so that nearly collapsed features do not
    cancel catastrophically) and the number of correct predictions.  Memory: O(K d + d^2), independent of N.  ``ncc_mismatch`` needs the final class
    means before the pass and is reported as ``None``.

    Example::

        acc = NCAccumulator(K)
        for xb, yb in batches:
            h = model.features(xb)
            acc.update(h, yb, logits=model.fc(h))
        metrics = acc.compute(model.fc.weight, model.fc.bias)
    """

    def __init__(self, num_classes: int, device=None):
        if not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        self.K = int(num_classes)
        self.device = None if device is None else torch.device(device)
        self.d = None
        self.counts = self.sums = self.scatter = self.shift = self.seen = None
        self.correct = 0
        self.n_logits = 0

    def update(self, H, y, logits=None) -> None:
        """Add a batch: features ``H`` (B, d), labels ``y`` (B,), optional logits (B, K)."""
        Ht = _features(H, device=self.device).to(torch.float64)
        dev = Ht.device
        yt = _labels(y, Ht.shape[0], dev)
        if int(yt.max()) >= self.K:
            raise ValueError(f"label {int(yt.max())} is out of range for K={self.K} classes")
        if self.d is None:
            self.d = Ht.shape[1]
            self.counts = torch.zeros(self.K, dtype=torch.float64, device=dev)
            self.sums = torch.zeros(self.K, self.d, dtype=torch.float64, device=dev)
            self.shift = torch.zeros(self.K, self.d, dtype=torch.float64, device=dev)
            self.seen = torch.zeros(self.K, dtype=torch.bool, device=dev)
            self.scatter = torch.zeros(self.d, self.d, dtype=torch.float64, device=dev)
        elif Ht.shape[1] != self.d:
            raise ValueError(f"batch has d={Ht.shape[1]} features, earlier batches had d={self.d}")
        B = Ht.shape[0]
        onehot = torch.zeros(self.K, B, dtype=torch.float64, device=dev)
        onehot[yt, torch.arange(B, device=dev)] = 1.0
        cnt = onehot.sum(1)
        s = onehot @ Ht
        new = (cnt > 0) & ~self.seen
        if bool(new.any()):
            self.shift[new] = s[new] / cnt[new, None]
            self.seen |= new
        R = Ht - self.shift[yt]
        self.scatter += R.T @ R
        self.counts += cnt
        self.sums += s
        if logits is not None:
            L = _f64(logits, "logits", dev)
            if L.shape != (B, self.K):
                raise ValueError(f"logits must have shape (B, K)=({B}, {self.K}), got {tuple(L.shape)}")
            self.correct += int((L.argmax(1) == yt).sum())
            self.n_logits += B

    def compute(self, W, b) -> NCMetrics:
        """NC1-NC4 (eqs. 7-10) of everything fed so far, with classifier (W, b)."""
        if self.d is None:
            raise ValueError("no batch was added: call update() first")
        empty = torch.nonzero(self.counts == 0).flatten().tolist()
        if empty:
            raise ValueError(f"class(es) {empty} have no samples (K={self.K}); every class needs at least one")
        dev = self.sums.device
        Wt = _classifier(W, self.d, dev, self.K)
        bt = _bias(b, self.K, dev)
        N = self.counts.sum()
        means = self.sums / self.counts[:, None]
        dm = means - self.shift
        # N Sigma_W = sum_i (h_i - s_y)(h_i - s_y)^T - sum_k n_k (mu_k - s_k)(mu_k - s_k)^T
        SW = self.scatter - (dm * self.counts[:, None]).T @ dm
        vals = {}
        for conv in _CONVENTIONS:
            C = means - _global_mean(means, self.counts, conv)
            A = _nc1_projector(C, min(self.K - 1, self.d))
            v = float(torch.sum(A * (SW @ A)) / N)
            vals[conv] = v * self.K if conv == "papyan" else v
        acc = self.correct / self.n_logits if self.n_logits else float("nan")
        if self.n_logits and self.n_logits != int(N):
            raise ValueError("logits were given for some batches but not others")
        return _assemble(None, None, Wt, bt, self.K, self.counts, means, vals["zhu"], vals["papyan"], acc, None)
