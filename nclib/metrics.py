"""Neural-collapse metrics NC1-NC4 (paper, Section 4, eqs. (7)-(10)).

Shapes: features are rows, ``H`` is (N, d), ``y`` is (N,) integer labels in ``[0, K)``,
``W`` is (K, d), ``b`` is (K,).  The paper writes H as d x N.  Inputs may be numpy
arrays or torch tensors on any device (Apple ``mps``, which has no float64, is moved to
the CPU); float16 and bfloat16 features are widened to float32 (exactly).

Definitions (Zhu et al., Section 4, the book's default convention):

* ``h_G = (1/N) sum_i h_i`` (weighted by samples), ``mu_k`` the class means,
  ``Sigma_W = (1/N) sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T``,
  ``Sigma_B = (1/K) sum_k (mu_k - h_G)(mu_k - h_G)^T``;
* ``NC1 = tr(Sigma_W Sigma_B^+) / K``                                        (eq. 7)
* ``NC2 = || W W^T / ||W W^T||_F - (I_K - 11^T/K)/sqrt(K-1) ||_F``           (eq. 8)
* ``NC3 = || W Hbar / ||W Hbar||_F - (I_K - 11^T/K)/sqrt(K-1) ||_F``,
  ``Hbar = [mu_1 - h_G, ..., mu_K - h_G]`` (d x K)                           (eq. 9)
* ``NC4 = || b + W h_G ||_2``                                                (eq. 10)

How NC1 is computed.  ``Sigma_B`` has rank at most K-1 and lives on the span ``D`` of the
differences of the class means.  Two passes over H (never a d x d matrix, never an N x d
float64 copy):

1. class sums (float32 features: float32 sums over a chunk of 1,024 rows, added up in
   float64; float64 features: float64).  These means ``mu`` need only be close: they give the
   residuals their small size and ``Q`` its span (to about 1e-7);
2. per chunk, the residuals ``t_i = h_i - mu~_{y_i}`` against the class means rounded to the
   features' dtype (``mu~``; one broadcast subtraction for a chunk of one class), then
   ``Z = t [Q | W^T]`` with ``Q`` (d x q, q <= K-1) an
   orthonormal basis of ``D`` (the ``W^T`` columns for :func:`nc_metrics` and the
   accumulator: the logits less a per-class constant).  Then, in float64: the within-class
   scatter of ``Z`` is ``Q^T (N Sigma_W) Q`` whatever ``mu~`` is (summed as squares about the
   mean of each block of at most 8,192 samples of one class, plus the block means about the
   class mean: no cancellation, and exactly 0 when every sample equals its class mean); the class means of ``Z``
   turn ``mu~`` into the exact class means in the coordinates the metrics need (``Q`` for
   Sigma_B and Papyan's extras, ``W`` for NC3 and NC4); and
   ``NC1 = tr((Q^T Sigma_W Q)(Q^T Sigma_B Q)^+) / K``.

The work is one read of H plus one N x d scatter-add (pass 1) and one read of H plus one
N x d x (2K-1) product (pass 2); per sample only K-vectors are kept.  Precision: a difference
``h - mu~`` of two numbers of the features' dtype is exact or rounded relative to the
difference itself (Sterbenz), so the products of pass 2, done in float32 for float32
features, carry an error relative to the within-class spread, not to ``||h||``: NC1 of
float32 features agrees with a float64 computation on the same values to 3e-8 .. 4e-7
relative (measured, ``benchmarks/bench_metrics.py`` and the tests) from NC1 ~ 1e-3 down to
NC1 ~ 1e-14, where an O(N d^2) float32 scatter gives noise.  The float32 error grows only far
from collapse, where a direction of Sigma_B is tiny against the within-class spread: in the
near-degenerate K = 3 example below, with 2,000 samples per class in float32, 2e-8 relative at
NC1 = 17, 1e-5 at 1.7e5 and 1e-3 at 1.7e9.  Float64 features are processed in float64
throughout (agreement ~1e-15).

Scale.  NC1, NC2 and NC3 are scale-invariant; the implementation normalises by powers of
two (exact) so that features at any finite scale (tested 1e-300 .. 1e300) give the same
values: pass 1 is redone on rescaled chunks if a float64 sum overflows, and pass 2 works on
rescaled chunks when the class means are outside ``[2^-60, 2^60]``.

The Sigma_B rank cutoff.  ``Sigma_B^+`` is taken on the eigendirections of ``Sigma_B`` whose
eigenvalue is at least ``1e-12`` times the largest (``_EIG_RTOL``; at most ``min(K-1, d)``
of them).  Eq. (7) writes the Moore-Penrose pseudo-inverse, i.e. every nonzero eigenvalue:
on exactly represented class means eq. (7)'s value is what ``numpy.linalg.pinv`` /
``scipy.linalg.pinv`` give, whose cutoff is ``max(d, K) * eps * lambda_max`` (about 1e-13 of
the largest for d = 512 in float64).  The two agree unless the class means span a direction
with ``lambda < 1e-12 lambda_max``, i.e. a class-mean spread below ``1e-6`` of the largest.
There they differ enormously: K = 3, d = 4, means ``(+-1, s)``, ``(0, -2s)`` (s = 5e-7), unit
within-class noise 0.1: eq. (7) with the exact pseudo-inverse gives 6.6e9 (the noise along
the tiny direction divided by ``2 s^2``), this module 5.0e-3 (that direction treated as
absent).  We keep the cutoff on purpose: a between-class direction that small is below the
float32 resolution of the features that produced the means, and with it NC1 would measure
rounding, not collapse.  ``tests/test_metrics.py`` checks both sides of the edge.

Coinciding class means.  When the class means agree to within ``1e-10`` of their size for
float32 features, ``1e-13`` for float64 ones (``_MEAN_RTOL``; exactly equal means included),
Sigma_B is zero or rounding, and NC1 and NC3 are undefined: :class:`ClassMeansCoincide` (a
ValueError) is raised.  This is what a network whose features carry no class information
gives, e.g. a ResNet that L-BFGS under weight decay 1e-1 drove to features that no longer
differ between classes (after step 2: one vector for every image; ``tools/recipe_search.py``):
in float32 its pass-1 means differ by rounding (3e-6 relative), the exact means of pass 2 by
2e-13 and 1.2e-12 of their size (two such cases), and without the check NC1 came out as
-6.8e-4.  The float32 cutoff is about a thousandth of the float32 resolution of one feature
(1.2e-7) and 80 times the larger of those two (the float32 products of pass 2 bound that rounding
by about 4e-12).  Float64 features resolve far smaller differences: their cutoff is over 1,000
times the rounding of the exact means measured on constant float64 features (at most 6e-17).
In training this stops the run as diverged (:func:`nclib.train.train`).

Why the authors' float32 NC1 has a floor (checked in ``benchmarks/bench_metrics.py``, noise
sweep): their ``validate_NC.py`` adds the features of a class into its mean one sample at a
time in float32, so each class mean is off by about 1e-7 relative (7e-7 to 1e-5 in absolute
terms on unit-scale features), and ``Sigma_W`` formed with those means gains ``sum_k (n_k/N)
e_k e_k^T``: NC1 stops following the noise once the noise is below that error.  Their
``scipy.linalg.pinv`` (default cutoff since scipy 1.3) keeps rank K-1 at every noise level we
tried: the pseudo-inverse is not the cause.

Other conventions, as options (see :func:`nc1` and :func:`nc_metrics`):

* ``convention="papyan"`` (Papyan, Han & Donoho 2020): ``tr(Sigma_W Sigma_B^+)`` without
  the 1/K and with the unweighted global mean ``(1/K) sum_k mu_k``;
* :func:`equinorm` (std/mean of norms, unbiased std as in Papyan et al.'s code) and
  :func:`equiangularity` (mean over pairs of ``|cos + 1/(K-1)|``), Papyan et al.'s two halves
  of NC2; on the H side both use the class means centred on the unweighted mean of the class
  means, as Papyan et al. do;
* :func:`ncc_mismatch`: the fraction of samples on which the linear classifier and the
  nearest-class-centre rule disagree (Papyan et al.'s NC4).
"""
from __future__ import annotations

import math
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
    "ClassMeansCoincide",
]

_CONVENTIONS = ("zhu", "papyan")
_EIG_RTOL = 1e-12  # eigenvalues of Sigma_B below rtol * max are treated as zero (see module doc)
#: class means whose spread is below this fraction of their size coincide, by the features' dtype (module doc)
_MEAN_RTOL = {torch.float32: 1e-10, torch.float64: 1e-13}
_SPAN_RTOL = 1e-15  # basis Q of the class-mean span keeps directions above this (a superset)
_CHUNK = 1024  # rows per chunk (2 MiB of float32 at d = 512; 5% faster than 512 rows, measured)
_POST_BLOCK = 8192  # samples per block of pass 2's float64 post-processing (one class per block)
_SAFE = 2.0 ** 60  # pass 2 runs on unscaled features when the means' scale is in [1/_SAFE, _SAFE]
_MAX_LABEL = 2 ** 53


class ClassMeansCoincide(ValueError):
    """The class means coincide (exactly, or to rounding: their spread is below ``1e-10`` of
    their size for float32 features, ``1e-13`` for float64), so Sigma_B = 0 and NC1 and NC3 are
    undefined (module docstring)."""


def _check_spread(C: torch.Tensor, size: float, dtype=torch.float32) -> None:
    """Raise :class:`ClassMeansCoincide` unless the centred class means ``C`` spread beyond
    ``_MEAN_RTOL[dtype]`` (``dtype``: the features') times ``size`` (the largest magnitude of the
    class means)."""
    spread, rtol = _amax(C), _MEAN_RTOL[dtype]
    if spread == 0 or spread <= rtol * size:
        rel = f"{spread / size:.1e} of their size" if size else "zero"
        raise ClassMeansCoincide(f"the class means coincide (their spread is {rel}, at most {rtol:g}): "
                                 "Sigma_B = 0 and NC1, NC3 are undefined")


# ----------------------------------------------------------------------------- input checks
def _device_for(x: torch.Tensor) -> torch.device:
    return torch.device("cpu") if x.device.type == "mps" else x.device


def _as_tensor(x, name: str) -> torch.Tensor:
    """A numpy array or torch tensor as a detached torch tensor (no copy where possible)."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(x))
        except Exception as exc:
            raise ValueError(f"{name} must be a numpy array or torch tensor of real numbers, "
                             f"got {type(x).__name__}") from exc
    if t.dtype.is_complex:
        raise ValueError(f"{name} must be real, got dtype {t.dtype}")
    return t


def _check_finite(t: torch.Tensor, name: str) -> None:
    # one reduction instead of an N x d boolean mask; a sum that overflows is checked in full
    if t.numel() and not torch.isfinite(t.sum()) and not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf")


def _f64(x, name: str, device=None) -> torch.Tensor:
    """Any real array-like -> float64 torch tensor (no copy when already float64 on the device)."""
    t = _as_tensor(x, name)
    t = t.to(device=_device_for(t) if device is None else device, dtype=torch.float64)
    _check_finite(t, name)
    return t


def _labels(y, N: int, device) -> torch.Tensor:
    t = _as_tensor(y, "y")
    if t.ndim != 1:
        raise ValueError(f"y must be 1-D with shape (N,), got shape {tuple(t.shape)}")
    if t.shape[0] != N:
        raise ValueError(f"y has {t.shape[0]} labels but H has {N} rows")
    if t.dtype == torch.bool:
        raise ValueError("y must hold integer class labels, got dtype torch.bool")
    if N and t.dtype.is_floating_point:
        t64 = t.to(torch.float64)
        bad = ~torch.isfinite(t64) | (t64 != torch.round(t64))
        if bool(bad.any()):
            raise ValueError(f"y must hold integer class labels, found {float(t64[bad][0])!r}")
        lo, hi = float(t64.min()), float(t64.max())
        for v in (lo, hi):
            if not 0 <= v < _MAX_LABEL:
                raise ValueError(f"label {v:g} is not a class index: labels must be integers in [0, 2**53)")
    t = t.to(device=device, dtype=torch.long)
    if N and int(t.min()) < 0:
        raise ValueError(f"labels must be >= 0, found {int(t.min())}")
    return t


def _features(H, name="H", device=None) -> torch.Tensor:
    """Validated (N, d) real features as a torch tensor in float32 or float64 (no full copy
    except to widen float16/bfloat16 or integers).  Finiteness is checked by pass 1."""
    t = _as_tensor(H, name)
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.to(torch.float32)
    elif t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float64)
    t = t.to(device=_device_for(t) if device is None else device)
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D with features as rows, shape (N, d); got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} has no rows")
    return t


def _num_classes(y: torch.Tensor, num_classes) -> int:
    top = int(y.max())
    K = top + 1 if num_classes is None else int(num_classes)
    if K < 2:
        raise ValueError(f"need K >= 2 classes, got K={K}")
    if top >= K:
        raise ValueError(f"label {top} is out of range for K={K} classes")
    return K


def _check_counts(counts: torch.Tensor, K: int) -> None:
    empty = torch.nonzero(counts == 0).flatten()
    if empty.numel():
        shown = ", ".join(str(int(k)) for k in empty[:5])
        more = f", ... ({empty.numel():,} of K={K:,})" if empty.numel() > 5 else f" (K={K:,})"
        raise ValueError(f"class(es) {shown}{more} have no samples; every class needs at least one "
                         f"(K is the largest label + 1 unless given)")


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


# ----------------------------------------------------------------------------- scale helpers
def _pow2(x: float) -> float:
    """The power of two 2^-e with x * 2^-e in [0.5, 1) (1.0 for x = 0 or non-finite)."""
    if x == 0 or not math.isfinite(x):
        return 1.0
    return math.ldexp(1.0, -math.frexp(x)[1])


def _amax(t: torch.Tensor) -> float:
    return float(t.abs().max()) if t.numel() else 0.0


def _safe_norm(v: torch.Tensor) -> float:
    """Euclidean / Frobenius norm without overflow or underflow of the squares."""
    m = _amax(v)
    if m == 0 or not math.isfinite(m):
        return m
    s = _pow2(m)
    return float(torch.linalg.norm(v * s)) / s


# ----------------------------------------------------------------------------- feature sources
class _Source:
    """Features read chunk by chunk: one in-memory H, or the batches an NCAccumulator kept.

    ``scale`` (a power of two, set by pass 1) multiplies every chunk in pass 2.
    """

    def __init__(self, Hs, ys, preds=None):
        self.Hs, self.ys, self.preds = list(Hs), list(ys), preds
        self.dtype = torch.float64 if any(h.dtype == torch.float64 for h in self.Hs) else torch.float32
        self.N = sum(h.shape[0] for h in self.Hs)
        self.d = self.Hs[0].shape[1]
        self.device = self.Hs[0].device
        self.y = self.ys[0] if len(self.ys) == 1 else torch.cat(self.ys)
        self.scale = 1.0
        self._chunk_classes = None

    def blocks(self, with_pred=False):
        for i, (Hb, yb) in enumerate(zip(self.Hs, self.ys)):
            for start in range(0, Hb.shape[0], _CHUNK):
                sl = slice(start, start + _CHUNK)
                yield Hb[sl], yb[sl], (self.preds[i][sl] if with_pred else None)

    def chunk_classes(self) -> list:
        """Per chunk of :meth:`blocks`: its label when all its samples are of one class, else
        None (class-ordered data, such as this book's training subsets, is mostly such
        chunks).  Found for all chunks at once, on the CPU only (elsewhere reading labels back
        costs a synchronisation: all None)."""
        if self._chunk_classes is None:
            self._chunk_classes = self._find_chunk_classes()
        return self._chunk_classes

    def _find_chunk_classes(self) -> list:
        out = []
        for yb in self.ys:
            n = yb.shape[0]
            if yb.device.type != "cpu":
                out += [None] * -(-n // _CHUNK)
                continue
            full = n // _CHUNK if n > _CHUNK else 0  # a batch of one chunk: the three operations below
            if full:
                v = yb[:full * _CHUNK].reshape(full, _CHUNK)
                one = (v == v[:, :1]).all(1).tolist()
                out += [k if o else None for k, o in zip(v[:, 0].tolist(), one)]
            if n > full * _CHUNK:
                r = yb[full * _CHUNK:]
                k = int(r[0])
                out.append(k if bool((r == k).all()) else None)
        return out


# ----------------------------------------------------------------------------- pass 1
def _class_sums(src: _Source, K: int, scale: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """Float64 class sums (K, d) of ``scale * h`` (added to ``out`` when given).

    Unscaled float32 features are summed per chunk in float32 (at most 1,024 rows, so a
    chunk sum is good to about 1e-6 relative) and the chunk sums in float64:
    these means only need to be close (pass 2 measures the residuals against them and
    returns the exact correction).  Scaled or float64 features are summed in float64.
    """
    sums = torch.zeros(K, src.d, dtype=torch.float64, device=src.device) if out is None else out
    low = src.dtype == torch.float32 and scale == 1.0
    part = None
    for (Hc, yc, _), k in zip(src.blocks(), src.chunk_classes()):
        if low and Hc.dtype == torch.float32:
            if k is not None:  # one class (CPU): numpy's column sum reads the chunk once, 20% faster
                sums.numpy()[k] += Hc.numpy().sum(0)
                continue
            if part is None:
                part = torch.zeros(K, src.d, dtype=torch.float32, device=src.device)
            part.zero_().index_add_(0, yc, Hc)
            sums += part
            continue
        X = Hc.to(torch.float64)
        if scale != 1.0:
            X = X * scale
        sums.index_add_(0, yc, X)
    return sums


def _means_pass(src: _Source, K: int, counts: torch.Tensor, name="H", sums=None) -> torch.Tensor:
    """Pass 1: float64 class means of ``src.scale * h``; sets ``src.scale``.  ``sums``: the
    unscaled class sums when the caller already has them (the accumulator adds them up batch
    by batch, in the same order: the same numbers).

    A sum that is not finite means NaN/inf in H (raised here, so that no separate pass checks
    finiteness) or an overflow of float64 features near 1e308 (redone on rescaled chunks).
    Then the scale is set so that the means lie in [2^-60, 2^60] when they do not already
    (for float32 features: only then, since pass 2 is in float64 when rescaled).
    """
    sums = _class_sums(src, K, 1.0) if sums is None else sums
    scale = 1.0
    if not bool(torch.isfinite(sums).all()):
        big = 0.0
        for Hc, _, _ in src.blocks():
            if not bool(torch.isfinite(Hc).all()):
                raise ValueError(f"{name} contains NaN or inf")
            big = max(big, _amax(Hc))
        scale = _pow2(big)
        sums = _class_sums(src, K, scale)
    means = sums / counts[:, None]
    m = _amax(means)
    if m and not (1.0 / _SAFE <= m <= _SAFE):
        f = _pow2(m)
        means, scale = means * f, scale * f
    src.scale = scale
    return means


# ----------------------------------------------------------------------------- the span of the means
def _span_basis(C: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis Q (d x q) of the row span of C (K x d, centred means), q <= K-1."""
    a = _amax(C)
    if a == 0:
        _check_spread(C, 0.0)
    Cn = C / a
    lam, V = torch.linalg.eigh(Cn @ Cn.T)
    keep = lam > _SPAN_RTOL * lam[-1]
    Q = Cn.T @ (V[:, keep] / lam[keep].sqrt())
    return torch.linalg.qr(Q).Q


def _nc1_value(SWq: torch.Tensor, CQ: torch.Tensor, K: int, rank: int) -> float:
    """``tr(Sigma_W Sigma_B^+) / K`` in the coordinates of Q: ``SWq`` = Q^T Sigma_W Q,
    ``CQ`` = C Q (K x q); Sigma_B^+ on the top ``rank`` eigendirections whose eigenvalue is
    at least ``_EIG_RTOL`` times the largest (the cutoff discussed in the module docstring)."""
    a = _amax(CQ)
    if a == 0:
        _check_spread(CQ, 0.0)
    f = _pow2(a)
    lam, V = torch.linalg.eigh((CQ * f).T @ (CQ * f) / K)
    lam, V = lam.flip(0)[:rank], V.flip(1)[:, :rank]
    keep = lam >= _EIG_RTOL * lam[0]
    lam, V = lam[keep], V[:, keep]
    return float(((V.T @ (SWq * f * f) @ V).diagonal() / lam).sum() / K)


# ----------------------------------------------------------------------------- pass 2
def _class_order(y: torch.Tensor, counts: torch.Tensor):
    """The samples class by class: a stable order (None when ``y`` is already sorted) and the
    end of each class's run in it (``counts``: the class sizes)."""
    ends = counts.to(torch.long).cumsum(0).tolist()
    if y.numel() < 2 or bool((y[1:] >= y[:-1]).all()):
        return None, ends
    return torch.argsort(y, stable=True), ends


def _first_best(S: torch.Tensor, largest: bool) -> torch.Tensor:
    """Boolean K x n: True at the first largest (smallest) entry of each column of S, the
    entry ``argmax`` (``argmin``) picks; a reduction across rows is cheaper than ``argmax``
    along them, and ties (or NaN) go to ``argmax`` itself."""
    best = S.amax(0) if largest else S.amin(0)
    hit = S == best
    # without NaN every column has a hit, so n hits means one in each (a tie has two)
    if int(hit.count_nonzero()) != S.shape[1] or bool(best.isnan().any()):
        first = S.argmax(0) if largest else S.argmin(0)
        hit = torch.zeros_like(hit).scatter_(0, first[None], True)
    return hit


def _residual_pass(src: _Source, K, means, Q, Wn=None, bn=None, want_ncc=False, force64=False, counts=None):
    """Pass 2 (module docstring): ``Z = (s h - mu~_y) [Q | Wn^T]`` chunk by chunk.

    ``means`` are pass 1's (scaled) class means, ``mu~`` those rounded to the work dtype.
    Returns ``mu~`` (float64), ``Q^T (N Sigma_W) Q`` (scaled units), the class sums of ``Z``
    (K x p: they turn ``mu~`` into the exact means in the coordinates that are needed), the
    number of samples the classifier gets right (``Wn``, ``bn``: the classifier times a power
    of two, whose logits are those of ``mu~`` plus those of the residual) and the number on
    which it disagrees with the nearest class centre (``want_ncc``; the classifier's
    decisions are ``src.preds`` when the batches came with logits).
    """
    wd = torch.float32 if src.dtype == torch.float32 and src.scale == 1.0 and not force64 else torch.float64
    dev, d, q = means.device, means.shape[1], Q.shape[1]
    Pt = (Q if Wn is None else torch.cat([Q, Wn.T], 1)).T.contiguous().to(wd)  # p x d
    m_w = means.to(wd)
    m64 = m_w.to(torch.float64)
    p = Pt.shape[0]
    pad = -p % 4  # zero rows: a product with a multiple of 4 rows is up to 20% faster (MKL, p = 19 -> 20)
    if pad:
        Pt = torch.cat([Pt, Pt.new_zeros(pad, d)])
    if Wn is not None:
        L0 = m64 @ Wn.T + bn  # K x K: (scaled) logits of the rounded means
    if want_ncc:
        E2 = 2.0 * ((means - means[:1]) @ Q).T  # q x K: 2 (mu_k - mu_0) in Q coordinates
        D2 = torch.cdist(m64, means).pow(2)  # ||mu~_j - mu_k||^2
    use_pred = src.preds is not None and all(pr is not None for pr in src.preds)
    # the loop only forms residuals and their products; everything per sample is done after it,
    # class by class (in one stable sort of the columns unless the samples come class by class)
    Zt = torch.empty(p + pad, src.N, dtype=wd, device=dev)  # p x N: the fast layout for this product
    buf = torch.empty(_CHUNK, d, dtype=wd, device=dev)
    row = 0
    for (Hc, yc, _), k in zip(src.blocks(), src.chunk_classes()):
        c = Hc.shape[0]
        T = buf[:c] if c <= _CHUNK else torch.empty(c, d, dtype=wd, device=dev)
        X = Hc if Hc.dtype == wd else Hc.to(wd)
        if src.scale != 1.0:
            X = X * src.scale
        if k is None:
            torch.index_select(m_w, 0, yc, out=T)
        # exact residuals (Sterbenz) against the rounded means
        torch.sub(X, T if k is None else m_w[k], out=T)
        torch.mm(Pt, T.T, out=Zt[:, row:row + c])
        row += c
    y, N = src.y, src.N
    if counts is None:
        counts = torch.bincount(y, minlength=K).to(torch.float64)
    nets = torch.cat(src.preds) if use_pred else None
    order, ends = _class_order(y, counts)
    if order is not None:  # columns class by class: every per-sample step below is on one class
        Zt = Zt[:p].index_select(1, order)
        nets = nets[order] if use_pred else None
    zsum = torch.zeros(K, p, dtype=torch.float64, device=dev)
    G = torch.zeros(q, q, dtype=torch.float64, device=dev)
    correct = torch.zeros((), dtype=torch.long, device=dev)
    agree = torch.zeros((), dtype=torch.long, device=dev)
    zbuf = torch.empty(p, min(_POST_BLOCK, N), dtype=torch.float64, device=dev)
    cbuf = torch.empty(q, min(_POST_BLOCK, N), dtype=torch.float64, device=dev)
    start = 0
    for k, end in enumerate(ends):
        blocks = []  # (size, mean) of each block of class k, for the between-block term below
        for s in range(start, end, _POST_BLOCK):  # float64 blocks of one class that stay in cache
            e = min(end, s + _POST_BLOCK)
            z = zbuf[:, :e - s]
            z.copy_(Zt[:p, s:e])
            zs = z.sum(1)
            zsum[k] += zs
            # the scatter about the block's own mean: a sum of squares (no cancellation; exactly
            # zero for samples equal to their class mean)
            zb = zs[:q] / (e - s)
            c = torch.sub(z[:q], zb[:, None], out=cbuf[:, :e - s])
            G.addmm_(c, c.T)
            blocks.append((e - s, zb))
            top = None
            if use_pred:
                net = nets[s:e]
            elif Wn is not None:  # logits of the samples: those of mu~_k plus those of the residual
                top = _first_best(z[q:].add_(L0[k][:, None]), largest=True)
                correct += top[k].count_nonzero()
            if want_ncc and (use_pred or Wn is not None):
                near = _first_best(torch.addmm(D2[k][:, None], E2.T, z[:q], alpha=-1.0), largest=False)
                agree += (top & near).count_nonzero() if top is not None else \
                    near.gather(0, net[None]).count_nonzero()
        if len(blocks) > 1:  # + sum_b n_b (zbar_b - zbar_k)(...)^T: the blocks' means about the class mean
            B = torch.stack([zb for _, zb in blocks], 1) - (zsum[k, :q] / (end - start))[:, None]
            n_b = torch.tensor([n for n, _ in blocks], dtype=torch.float64, device=dev)
            G.addmm_(B * n_b, B.T)
        start = end
    # a float32 product that overflowed shows in these float64 sums (H itself was checked by pass 1)
    if wd == torch.float32 and not bool(torch.isfinite(zsum).all()):  # redo in float64
        return _residual_pass(src, K, means, Q, Wn, bn, want_ncc, force64=True, counts=counts)
    correct, mismatch = int(correct), (N - int(agree) if want_ncc else 0)
    return m64, G, zsum, correct, mismatch


def _refine_means(src: _Source, K, means, counts):
    """Exact class means in d dimensions: pass 1's means plus the class means of the
    residuals, both in float64, chunk by chunk (float32 features widen exactly; used by
    :func:`class_means`, :func:`nc3` and :meth:`NCAccumulator.class_means`)."""
    rsum = torch.zeros_like(means)
    for Hc, yc, _ in src.blocks():
        X = Hc.to(torch.float64, copy=True)
        if src.scale != 1.0:
            X.mul_(src.scale)
        rsum.index_add_(0, yc, X.sub_(means[yc]))
    return means + rsum / counts[:, None]


def _global_mean(means: torch.Tensor, counts: torch.Tensor, convention: str) -> torch.Tensor:
    if convention == "zhu":
        return (counts @ means) / counts.sum()
    return means.mean(0)


def _check_convention(convention):
    if convention not in _CONVENTIONS:
        raise ValueError(f"unknown NC1 convention {convention!r}; allowed: {_CONVENTIONS}")


@dataclass
class _Stats:
    """What the metrics need from the features, in any orthonormal coordinates of the span
    of the class means (``CQ``: centred means, Papyan's centring) and through the classifier
    (``WC``: ``W (mu_k - h_G)`` as columns, ``WhG``: ``W h_G``, original units)."""

    nc1: dict
    CQ_pap: torch.Tensor
    WC: torch.Tensor | None = None
    WhG: torch.Tensor | None = None
    accuracy: float | None = None
    ncc: float | None = None


def _nc1s(SWq, MQ, counts, K, rank) -> dict:
    out = {}
    for conv in _CONVENTIONS:
        v = _nc1_value(SWq, MQ - _global_mean(MQ, counts, conv), K, rank)
        out[conv] = v * K if conv == "papyan" else v
    return out


def _stats(src: _Source, K: int, *, W=None, b=None, want_ncc=False, name="H", sums=None) -> _Stats:
    """Both passes: NC1 (both conventions) and the class-mean summaries of :class:`_Stats`;
    with ``W``, ``b``: the classifier's accuracy and (``want_ncc``) its NCC mismatch.
    ``sums``: pass 1's class sums, when the caller has them."""
    counts = torch.bincount(src.y, minlength=K).to(torch.float64)
    _check_counts(counts, K)
    means = _means_pass(src, K, counts, name, sums)
    Q = _span_basis(means - means.mean(0))
    Wn = bn = None
    if W is not None:
        fw = _pow2(_amax(W))
        if fw == 1.0 and _amax(W) == 0:
            raise ValueError("W is zero; NC2 and NC3 are undefined")
        Wn, bn = W * fw, (src.scale * fw) * b  # logits * scale * fw: the same argmax
    m64, SW, zsum, correct, mismatch = _residual_pass(src, K, means, Q, Wn, bn, want_ncc, counts=counts)
    N, q = src.N, Q.shape[1]
    MQ = m64 @ Q + zsum[:, :q] / counts[:, None]  # exact class means, Q coordinates
    CQ = MQ - MQ.mean(0)
    _check_spread(CQ, _amax(m64), src.dtype)  # class means equal to rounding: NC1, NC3 undefined
    st = _Stats(_nc1s(SW / N, MQ, counts, K, min(K - 1, src.d)), CQ)
    if W is not None:
        MW = m64 @ Wn.T + zsum[:, q:] / counts[:, None]  # row k: Wn mu_k (exact, scaled)
        WhG = counts @ MW / N
        st.WC = (MW - WhG).T
        st.WhG = WhG / (fw * src.scale)
        st.accuracy = correct / N  # (0 when the decisions came with the batches: the caller counts)
        st.ncc = mismatch / N if want_ncc else None
    return st


def _stats_from_means(means, counts, nc1s, W) -> _Stats:
    """:class:`_Stats` from exact class means in d dimensions (streaming mode)."""
    hG = _global_mean(means, counts, "zhu")
    return _Stats(nc1s, means - means.mean(0), W @ (means - hG).T, W @ hG)


def _etf_target(K: int, like: torch.Tensor) -> torch.Tensor:
    return (torch.eye(K, dtype=like.dtype, device=like.device) - 1.0 / K) / np.sqrt(K - 1)


def _etf_distance(M: torch.Tensor) -> float:
    """``|| M / ||M||_F - ETF ||_F`` for a K x K matrix (rescaled first: no overflow)."""
    M = M * _pow2(_amax(M))
    nrm = torch.linalg.norm(M)
    if nrm == 0:
        raise ValueError("matrix is zero; its distance to a normalised simplex ETF is undefined")
    return float(torch.linalg.norm(M / nrm - _etf_target(M.shape[0], M)))


def _gram(W: torch.Tensor) -> torch.Tensor:
    Wn = W * _pow2(_amax(W))
    return Wn @ Wn.T


def _prepare(H, y, num_classes=None, W=None):
    Ht = _features(H)
    yt = _labels(y, Ht.shape[0], Ht.device)
    Wt = None
    if W is not None:
        Wt = _classifier(W, Ht.shape[1], Ht.device)
        num_classes = Wt.shape[0]
    K = _num_classes(yt, num_classes)
    return _Source([Ht], [yt]), K, Wt


def _exact_means(src: _Source, K: int):
    counts = torch.bincount(src.y, minlength=K).to(torch.float64)
    _check_counts(counts, K)
    means = _refine_means(src, K, _means_pass(src, K, counts), counts)
    return counts, means / src.scale


# ----------------------------------------------------------------------------- public API
def class_means(H, y, num_classes: int | None = None):
    """Class counts (K,) and class means (K, d) in float64 as torch tensors (Section 4)."""
    src, K, _ = _prepare(H, y, num_classes)
    return _exact_means(src, K)


def nc1(H, y, num_classes: int | None = None, *, convention: str = "zhu") -> float:
    """Within-class variability collapse NC1 = tr(Sigma_W Sigma_B^+)/K, eq. (7).

    ``convention="zhu"`` (default) is eq. (7) of the paper: 1/K and the sample-weighted
    global mean.  ``convention="papyan"`` is Papyan et al.'s version: no 1/K, unweighted
    global mean of the class means.  Sigma_B^+ is the pseudo-inverse on the eigendirections
    of Sigma_B above ``1e-12`` of the largest (at most ``min(K-1, d)``; see the module
    docstring for how this differs from an exact Moore-Penrose inverse).  Scale-invariant
    at any finite scale of ``H``.
    """
    _check_convention(convention)
    src, K, _ = _prepare(H, y, num_classes)
    return _stats(src, K).nc1[convention]


def nc2(W) -> float:
    """Convergence of the classifier to a simplex ETF, eq. (8): ||WW^T/||WW^T||_F - ETF||_F."""
    return _etf_distance(_gram(_classifier(W, None, None)))


def nc3(W, H, y) -> float:
    """Self-duality, eq. (9): ||W Hbar/||W Hbar||_F - ETF||_F with Hbar the centred class means."""
    src, K, Wt = _prepare(H, y, W=W)
    counts, means = _exact_means(src, K)
    _check_spread(means - means.mean(0), _amax(means), src.dtype)
    C = means - _global_mean(means, counts, "zhu")
    return _etf_distance((Wt * _pow2(_amax(Wt))) @ (C * _pow2(_amax(C))).T)


def nc4(W, b, H) -> float:
    """Collapse of the bias, eq. (10): ||b + W h_G||_2 with h_G the global feature mean."""
    Ht = _features(H)
    Wt = _classifier(W, Ht.shape[1], Ht.device)
    bt = _bias(b, Wt.shape[0], Ht.device)
    src = _Source([Ht], [torch.zeros(Ht.shape[0], dtype=torch.long, device=Ht.device)])
    hG = _exact_means(src, 1)[1][0]
    return _safe_norm(bt + Wt @ hG)


def equinorm(X) -> float:
    """Papyan et al.'s equinorm: std/mean of the row norms of X (class means or classifier rows).

    The standard deviation is the unbiased one (``torch.std``, divisor K-1), as in Papyan et
    al.'s code.  Pass class means centred on the mean of the class means, or ``W``.  0 for a
    simplex ETF up to scale.
    """
    Xt = _f64(X, "X")
    if Xt.ndim != 2 or Xt.shape[0] < 2:
        raise ValueError(f"X must be 2-D with K >= 2 rows, got shape {tuple(Xt.shape)}")
    n = torch.linalg.norm(Xt * _pow2(_amax(Xt)), dim=1)
    return float(n.std(unbiased=True) / n.mean())


def equiangularity(X) -> float:
    """Papyan et al.'s maximal-equiangularity: mean over pairs k != l of |cos(x_k, x_l) + 1/(K-1)|.

    0 exactly when the rows are equiangular at the simplex angle ``arccos(-1/(K-1))``.
    """
    Xt = _f64(X, "X")
    if Xt.ndim != 2 or Xt.shape[0] < 2:
        raise ValueError(f"X must be 2-D with K >= 2 rows, got shape {tuple(Xt.shape)}")
    K = Xt.shape[0]
    Xt = Xt * _pow2(_amax(Xt))
    U = Xt / torch.linalg.norm(Xt, dim=1, keepdim=True)
    cos = U @ U.T
    off = ~torch.eye(K, dtype=torch.bool, device=cos.device)
    return float((cos[off] + 1.0 / (K - 1)).abs().mean())


def ncc_mismatch(W, b, H, y) -> float:
    """Fraction of samples where ``argmax(W h + b)`` differs from the nearest class centre.

    Papyan et al.'s NC4 ("simplification to nearest class centre"); class centres are the
    class means of ``H`` under labels ``y``.
    """
    src, K, Wt = _prepare(H, y, W=W)
    bt = _bias(b, K, Wt.device)
    return _stats(src, K, W=Wt, b=bt, want_ncc=True).ncc


@dataclass
class NCMetrics:
    """NC1-NC4 (eqs. 7-10) and the train accuracy of the linear classifier.

    ``extras`` holds the other conventions: ``nc1_papyan``, ``equinorm_W``,
    ``equinorm_H``, ``equiangularity_W``, ``equiangularity_H`` (Papyan et al.'s: unbiased
    std, class means centred on their unweighted mean) and ``ncc_mismatch`` (``None``
    where the streaming accumulator cannot compute it).
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


def _assemble(W, b, st: _Stats, accuracy) -> NCMetrics:
    return NCMetrics(
        nc1=st.nc1["zhu"],
        nc2=_etf_distance(_gram(W)),
        nc3=_etf_distance(st.WC),
        nc4=_safe_norm(b + st.WhG),
        accuracy=accuracy,
        extras=dict(
            nc1_papyan=st.nc1["papyan"],
            equinorm_W=equinorm(W),
            equinorm_H=equinorm(st.CQ_pap),
            equiangularity_W=equiangularity(W),
            equiangularity_H=equiangularity(st.CQ_pap),
            ncc_mismatch=st.ncc,
        ),
    )


def nc_metrics(W, b, H, y) -> NCMetrics:
    """All of NC1-NC4 (eqs. 7-10), the classifier's accuracy on (H, y), and the extras.

    Two passes over ``H`` (module docstring); K is ``W.shape[0]``.
    """
    src, K, Wt = _prepare(H, y, W=W)
    bt = _bias(b, K, Wt.device)
    st = _stats(src, K, W=Wt, b=bt, want_ncc=True)
    return _assemble(Wt, bt, st, st.accuracy)


class _Streaming:
    """O(K d + d^2) statistics for data that does not fit in memory (d x d scatter).

    Class counts and sums, and the within-class scatter accumulated around a per-class shift
    (the mean of the first batch in which the class appears, so that nearly collapsed
    features do not cancel catastrophically), all in float64, of the features times a power
    of two fixed by the first batch (so that squares neither overflow nor underflow).
    """

    def __init__(self, K: int, d: int, device, first: torch.Tensor):
        self.K, self.d = K, d
        self.dtype = torch.float32  # the features' (float64 once any batch is), for the coincidence check
        self.scale = _pow2(_amax(first))
        z = dict(dtype=torch.float64, device=device)
        self.counts = torch.zeros(K, **z)
        self.sums = torch.zeros(K, d, **z)
        self.shift = torch.zeros(K, d, **z)
        self.seen = torch.zeros(K, dtype=torch.bool, device=device)
        self.scatter = torch.zeros(d, d, **z)

    def add(self, Ht: torch.Tensor, yt: torch.Tensor) -> None:
        if Ht.dtype == torch.float64:
            self.dtype = torch.float64
        X = Ht.to(torch.float64) * self.scale
        cnt = torch.bincount(yt, minlength=self.K).to(torch.float64)
        s = torch.zeros(self.K, self.d, dtype=torch.float64, device=X.device).index_add_(0, yt, X)
        new = (cnt > 0) & ~self.seen
        if bool(new.any()):
            self.shift[new] = s[new] / cnt[new, None]
            self.seen |= new
        R = X - self.shift[yt]
        self.scatter.addmm_(R.T, R)
        self.counts += cnt
        self.sums += s

    def stats(self, W: torch.Tensor) -> _Stats:
        _check_counts(self.counts, self.K)
        N = float(self.counts.sum())
        means = self.sums / self.counts[:, None]
        dm = means - self.shift
        # N Sigma_W = sum_i (h_i - s_y)(h_i - s_y)^T - sum_k n_k (mu_k - s_k)(mu_k - s_k)^T
        SW = self.scatter - (dm * self.counts[:, None]).T @ dm
        C = means - means.mean(0)
        _check_spread(C, _amax(means), self.dtype)
        Q = _span_basis(C)
        SWq = Q.T @ SW @ Q / N
        nc1s = _nc1s(SWq, means @ Q, self.counts, self.K, min(self.K - 1, self.d))
        return _stats_from_means(means / self.scale, self.counts, nc1s, W)


class NCAccumulator:
    """NC metrics of features fed batch by batch: :func:`nc_metrics`' numbers.

    While the batches fit in ``max_buffer_bytes`` (default 1 GiB: 60,000 x 512 float32
    features take 123 MB) they are kept (copied) and :meth:`compute` runs the two-pass
    in-memory method of :func:`nc_metrics` over them; pass 1 (the class sums, chunk by chunk
    in the order :func:`nc_metrics` uses) is done by :meth:`update` as each batch arrives, so
    the numbers are :func:`nc_metrics`' own floats when the batch sizes are multiples of 1,024
    and the logits are not given.  Beyond that the accumulator turns
    into a streaming one (float64 class sums and a d x d within-class scatter, O(N d^2)
    work, O(K d + d^2) memory); ``ncc_mismatch`` needs the final class means before the
    pass and is then reported as ``None``.  Accuracy is counted from the logits when they
    are given with every batch, otherwise computed from ``(W, b)`` (in-memory mode) or
    ``nan`` (streaming mode).  Kept batches are copied unless ``copy=False`` (then the caller
    promises not to modify a batch in place after passing it: fresh outputs of a forward pass,
    as :func:`nclib.train.evaluate` passes them; the copy costs what fresh memory costs, about
    as much as the metrics themselves).  A batch with NaN or inf raises ValueError in
    :meth:`update` and is not kept.

    Example::

        acc = NCAccumulator(K)
        for xb, yb in batches:
            h = model.features(xb)
            acc.update(h, yb, logits=model.fc(h))
        metrics = acc.compute(model.fc.weight, model.fc.bias)
    """

    def __init__(self, num_classes: int, device=None, *, max_buffer_bytes: int = 2 ** 30, copy: bool = True):
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        self.K = int(num_classes)
        self.device = None if device is None else torch.device(device)
        self.max_buffer_bytes = int(max_buffer_bytes)
        self.copy = bool(copy)
        self.d = None
        self.N = 0
        self._Hs, self._ys, self._preds = [], [], []
        self._bytes = 0
        self._sums = None  # pass 1's class sums of the kept batches, added up as they arrive
        self._stream = None
        self.correct = 0
        self.n_logits = 0

    @property
    def streaming(self) -> bool:
        """True once the batches exceeded ``max_buffer_bytes`` (d x d scatter mode)."""
        return self._stream is not None

    def update(self, H, y, logits=None) -> None:
        """Add a batch: features ``H`` (B, d), labels ``y`` (B,), optional logits (B, K)."""
        Ht = _features(H, device=self.device)
        dev = Ht.device
        yt = _labels(y, Ht.shape[0], dev)
        if int(yt.max()) >= self.K:
            raise ValueError(f"label {int(yt.max())} is out of range for K={self.K} classes")
        if self.d is not None and Ht.shape[1] != self.d:
            raise ValueError(f"batch has d={Ht.shape[1]} features, earlier batches had d={self.d}")
        B = Ht.shape[0]
        L = None
        if logits is not None:
            L = _f64(logits, "logits", dev)
            if L.shape != (B, self.K):
                raise ValueError(f"logits must have shape (B, K)=({B}, {self.K}), got {tuple(L.shape)}")
        if self._stream is not None:
            _check_finite(Ht, "H")
        else:
            self._add_sums(Ht, yt)  # pass 1 for this batch; raises on NaN / inf
        self.d = Ht.shape[1]
        pred = None
        if L is not None:
            pred = L.argmax(1)
            self.correct += int((pred == yt).sum())
            self.n_logits += B
        self.N += B
        if self._stream is not None:
            self._stream.add(Ht, yt)
            return
        keep = Ht.clone() if self.copy and _shares_memory(H, Ht) else Ht
        self._Hs.append(keep)
        self._ys.append(yt)
        self._preds.append(pred)
        self._bytes += keep.element_size() * keep.numel()
        if self._bytes > self.max_buffer_bytes:
            self._stream = _Streaming(self.K, self.d, dev, self._Hs[0])
            for Hb, yb in zip(self._Hs, self._ys):
                self._stream.add(Hb, yb)
            self._Hs, self._ys, self._preds, self._sums = [], [], [], None

    def _add_sums(self, Ht, yt) -> None:
        """Pass 1 on the batch while it is at hand: its class sums, chunk by chunk, into the
        running float64 sums (finiteness is checked on them: a NaN or inf raises here)."""
        if self._sums is False:  # an earlier overflow or refused batch: compute() redoes pass 1
            if Ht.numel() and not torch.isfinite(Ht.sum()):
                _check_finite(Ht, "H")
            return
        self._sums = _class_sums(_Source([Ht], [yt]), self.K, 1.0, out=self._sums)
        if not math.isfinite(float(self._sums.sum())):  # NaN / inf in H, or a float64 overflow
            self._sums = False  # from now on compute() redoes pass 1 over the kept batches
            _check_finite(Ht, "H")  # raises on NaN / inf (the batch is not kept)

    def class_means(self, *, allow_empty: bool = False) -> torch.Tensor:
        """Float64 class means (K, d) of everything fed so far: :func:`class_means`' numbers
        (in-memory mode: pass 1's sums corrected by the class means of the residuals;
        streaming mode: the float64 class sums over the counts).  A class without samples
        raises ValueError, or gets a zero row with ``allow_empty=True``."""
        if self.d is None:
            raise ValueError("no batch was added: call update() first")
        st = self._stream
        counts = st.counts if st is not None else torch.bincount(
            torch.cat(self._ys), minlength=self.K).to(torch.float64)
        if not allow_empty:
            _check_counts(counts, self.K)
        counts = counts.clamp_min(1.0)  # an empty class: zero sums, a zero row
        if st is not None:
            return st.sums / counts[:, None] / st.scale
        src = _Source(self._Hs, self._ys)
        sums = self._sums.clone() if isinstance(self._sums, torch.Tensor) else None
        means = _means_pass(src, self.K, counts, sums=sums)
        return _refine_means(src, self.K, means, counts) / src.scale

    def compute(self, W, b) -> NCMetrics:
        """NC1-NC4 (eqs. 7-10) of everything fed so far, with classifier (W, b)."""
        if self.d is None:
            raise ValueError("no batch was added: call update() first")
        if self.n_logits and self.n_logits != self.N:
            raise ValueError("logits were given for some batches but not others")
        dev = self._stream.sums.device if self._stream is not None else self._Hs[0].device
        Wt = _classifier(W, self.d, dev, self.K)
        bt = _bias(b, self.K, dev)
        if self._stream is not None:
            acc = self.correct / self.N if self.n_logits else float("nan")
            return _assemble(Wt, bt, self._stream.stats(Wt), acc)
        src = _Source(self._Hs, self._ys, self._preds if self.n_logits else None)
        sums = self._sums if isinstance(self._sums, torch.Tensor) else None
        st = _stats(src, self.K, W=Wt, b=bt, want_ncc=True, sums=None if sums is None else sums.clone())
        return _assemble(Wt, bt, st, self.correct / self.N if self.n_logits else st.accuracy)


def _shares_memory(H, Ht: torch.Tensor) -> bool:
    """Whether the tensor kept by the accumulator would alias the caller's array."""
    if isinstance(H, torch.Tensor):
        return H.untyped_storage().data_ptr() == Ht.untyped_storage().data_ptr()
    if isinstance(H, np.ndarray):
        return Ht.device.type == "cpu" and np.shares_memory(H, Ht.numpy())
    return False
