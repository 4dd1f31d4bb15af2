"""Benchmark: nclib.metrics against the two peer methods, in one process, on one thread.

Features N = 50,000, d = 512, K = 10, float32 (a ResNet's penultimate layer), on the CPU.

Peers (written here from reading their code; no code is copied from either):

* ``authors``: the formulas of ``validate_NC.py`` in github:tding1/Neural-Collapse
  (Zhu et al.'s code), batched in torch float32: global and class sums in float32 (their
  code adds one sample at a time; here per batch, which is faster and more accurate), then
  ``Sigma_W`` as a float32 d x d sum of ``R^T R`` over batches, ``Sigma_B`` from the class
  means, ``NC1 = trace(Sigma_W @ scipy.linalg.pinv(Sigma_B)) / K``, NC2-NC4 by their formulas.
* ``rhubarbwu``: the method of github:rhubarbwu/neural-collapse (a maintained NC library, not
  on the package registry): batched float32 accumulation of class means (one-hot matmul) and
  of the within-class covariance (``diff^T diff`` with ``diff = X - M[Y]``), then
  ``trace(pinv(V_inter) @ V_intra) / K`` with ``torch.linalg.pinv`` ("pinv" mode), the ETF
  and self-duality errors.
  Neither peer is asked for the accuracy or the NCC mismatch (nclib computes both): the
  ratios are conservative.

Accuracy at NC1 ~ 1e-14: unit-norm simplex-ETF class means plus Gaussian noise, stored in
float32; the reference is an independent float64 computation on the same float32 values
(``float64_reference``: class means by float64 sums, the d x d scatter in float64, the
pseudo-inverse on the top K-1 eigendirections of Sigma_B).

The noise sweep (N = 10,000) looks for the cause of the authors' float32 NC1 floor: class means
added one sample at a time in float32 (as ``validate_NC.py`` does) versus exact class means,
and the rank that ``scipy.linalg.pinv`` keeps.

Timings are best-of-``--repeats`` in one process; the ratios are what to read (the machine
may be loaded).  Run:  python benchmarks/bench_metrics.py [--repeats 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import scipy
import scipy.linalg
import torch
from threadpoolctl import threadpool_limits

from nclib import etf, metrics

BATCH = 1024


# ----------------------------------------------------------------------------- peers
def etf_error(A, B):
    K = A.shape[0]
    M = A @ B.T
    M = M / torch.linalg.norm(M)
    return float(torch.linalg.norm(M - (torch.eye(K) - 1.0 / K) / np.sqrt(K - 1)))


def authors_batched(W, b, H, y, K):
    """Zhu et al.'s validate_NC.py formulas, batched, torch float32 (see the module doc)."""
    N, d = H.shape
    mu_G = torch.zeros(d)
    sums = torch.zeros(K, d)
    for i in range(0, N, BATCH):
        Hb, yb = H[i:i + BATCH], y[i:i + BATCH]
        mu_G += Hb.sum(0)
        sums.index_add_(0, yb, Hb)
    mu_G /= N
    mu = sums / torch.bincount(y, minlength=K).float()[:, None]
    Sigma_W = torch.zeros(d, d)
    for i in range(0, N, BATCH):
        R = H[i:i + BATCH] - mu[y[i:i + BATCH]]
        Sigma_W += R.T @ R
    Sigma_W /= N
    C = mu - mu_G
    Sigma_B = C.T @ C / K
    nc1 = float(np.trace(Sigma_W.numpy() @ scipy.linalg.pinv(Sigma_B.numpy())) / K)
    return nc1, etf_error(W, W), etf_error(W, C), float(torch.linalg.norm(W @ mu_G + b))


def rhubarbwu_method(W, b, H, y, K):
    """rhubarbwu/neural-collapse's method: batched float32 mean and covariance accumulators,
    covariance_ratio in "pinv" mode, ETF and self-duality errors (see the module doc)."""
    N, d = H.shape
    counts = torch.zeros(K, dtype=torch.int32)
    totals = torch.zeros(K, d)
    classes = torch.arange(K)
    for i in range(0, N, BATCH):
        Hb, yb = H[i:i + BATCH], y[i:i + BATCH]
        onehot = (yb[:, None] == classes)
        counts += onehot.sum(0, dtype=torch.int32)
        totals += onehot.T.float() @ Hb
    eps = torch.finfo(torch.float32).eps
    M = totals / (counts[:, None].float() + eps)
    m_G = M.mean(0)
    V = torch.zeros(d, d)
    for i in range(0, N, BATCH):
        diff = H[i:i + BATCH] - M[y[i:i + BATCH]]
        V += diff.T @ diff
    V /= N + eps
    Mc = M - m_G
    V_inter = Mc.T @ Mc / K
    nc1 = float(torch.trace(torch.linalg.pinv(V_inter) @ V)) / K
    return nc1, etf_error(W, W), etf_error(W, Mc), float(torch.linalg.norm(W @ m_G + b))


# ----------------------------------------------------------------------------- references
def float64_reference(H, y, K):
    """NC1 (eq. 7) of the given values in float64: d x d scatter, top K-1 eigendirections."""
    H = np.asarray(H, dtype=np.float64)
    N, d = H.shape
    counts = np.bincount(y, minlength=K)
    means = np.zeros((K, d))
    np.add.at(means, y, H)
    means /= counts[:, None]
    R = H - means[y]
    SW = R.T @ R / N
    C = means - counts @ means / N
    lam, U = np.linalg.eigh(C.T @ C / K)
    lam, U = lam[::-1][:K - 1], U[:, ::-1][:, :K - 1]
    return float(np.sum((U.T @ SW @ U).diagonal() / lam) / K)


def timed(fn, repeats):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def streamed(W, b, H, y, K, **kw):
    acc = metrics.NCAccumulator(K, **kw)
    for i in range(0, H.shape[0], BATCH):
        hb = H[i:i + BATCH]
        acc.update(hb, y[i:i + BATCH], logits=hb @ W.T + b)
    return acc.compute(W, b)


# ----------------------------------------------------------------------------- the authors' floor
def running_float32_means(H, y, K):
    """Class means as validate_NC.py forms them: one sample at a time, in float32."""
    return np.stack([np.cumsum(H[y == k], axis=0, dtype=np.float32)[-1] / np.float32((y == k).sum())
                     for k in range(K)]).astype(np.float32)


def float32_pinv_nc1(H, y, K, means32):
    """The rest of validate_NC.py in float32: Sigma_W from the given means, scipy pinv of Sigma_B.
    Returns NC1 and the rank scipy's pinv keeps (its default cutoff, max(M, N) * eps * s_max)."""
    N, d = H.shape
    mu_G = H.sum(0, dtype=np.float32) / np.float32(N)
    R = H - means32[y]
    SW = (R.T @ R) / np.float32(N)
    C = means32 - mu_G
    SB = (C.T @ C) / np.float32(K)
    s = scipy.linalg.svdvals(SB)
    rank = int(np.sum(s > max(SB.shape) * np.finfo(np.float32).eps * s[0]))
    return float(np.trace(SW @ scipy.linalg.pinv(SB)) / K), rank


def noise_sweep(K, n, d, W):
    print(f"\nNoise sweep (N = {K * n:,}, d = {d}, float32 features, unit-norm simplex-ETF means): where does "
          "the authors' float32 NC1 stop following the noise, and why?")
    print("| noise sigma*sqrt(d) | float64 reference | nclib | authors (running f32 means) | authors with exact "
          "means | max error of running means | scipy pinv rank |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rows = []
    for level in (1e-2, 1e-3, 1e-4, 1e-5, 1e-6):
        H, y = etf.noisy_etf_features(K, n, d, level / np.sqrt(d), seed=1, dtype=np.float32)
        ref = float64_reference(H, y, K)
        ours = metrics.nc1(torch.from_numpy(H), torch.from_numpy(y))
        exact = np.stack([H[y == k].astype(np.float64).mean(0) for k in range(K)])
        run = running_float32_means(H, y, K)
        a_run, rank = float32_pinv_nc1(H, y, K, run)
        a_exact, _ = float32_pinv_nc1(H, y, K, exact.astype(np.float32))
        err = float(np.abs(run - exact).max())
        rows.append((level, ref, ours, a_run, a_exact, err, rank))
        print(f"| {level:.0e} | {ref:.3e} | {ours:.3e} | {a_run:.3e} | {a_exact:.3e} | {err:.1e} | {rank} |")
    return rows


# ----------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-per-class", type=int, default=5000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--K", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5, help="timing rounds (best of; methods interleaved)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sweep-n-per-class", type=int, default=1000, help="0 skips the noise sweep")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    K, n, d = args.K, args.n_per_class, args.d
    N = K * n
    sigma = 1e-4 / np.sqrt(d)
    H, y = etf.noisy_etf_features(K, n, d, sigma, seed=0, dtype=np.float32)
    Ht, yt = torch.from_numpy(H), torch.from_numpy(y).long()
    W = torch.from_numpy(etf.simplex_etf(K, d).astype(np.float32))
    b = torch.zeros(K)
    logits = [Ht[i:i + BATCH] @ W.T + b for i in range(0, N, BATCH)]  # the caller's forward pass

    def accumulated(with_logits=True, **kw):
        acc = metrics.NCAccumulator(K, **kw)
        for j, i in enumerate(range(0, N, BATCH)):
            acc.update(Ht[i:i + BATCH], yt[i:i + BATCH], logits=logits[j] if with_logits else None)
        return acc.compute(W, b)

    perm = torch.randperm(N, generator=torch.Generator().manual_seed(0))
    Hp, yp = Ht[perm].contiguous(), yt[perm]  # the same samples in random class order
    src = metrics._Source([Ht], [yt])
    counts = torch.bincount(yt, minlength=K).double()
    means = metrics._means_pass(src, K, counts)
    Q = metrics._span_basis(means - means.mean(0))
    W64 = W.double()
    onehot = torch.nn.functional.one_hot(yt, K).float()
    P20 = torch.randn(2 * K, d)  # pass 2's row count for K = 10: K-1 span directions, K rows of W, one pad row
    Z20 = torch.empty(2 * K, N)

    def product_alone():  # pass 2's float32 product, chunk by chunk, without forming the residuals
        for i in range(0, N, metrics._CHUNK):
            torch.mm(P20, Ht[i:i + metrics._CHUNK].T, out=Z20[:, i:i + metrics._CHUNK])
    methods = {
        "nclib nc_metrics": lambda: metrics.nc_metrics(W, b, Ht, yt),
        "nclib NCAccumulator, copy=False (the training path: nclib.train.evaluate)":
            lambda: accumulated(with_logits=False, copy=False),
        "nclib NCAccumulator, default copy (fresh memory per batch), logits given": accumulated,
        "authors' formulas, batched torch f32": lambda: authors_batched(W, b, Ht, yt, K),
        "rhubarbwu/neural-collapse method": lambda: rhubarbwu_method(W, b, Ht, yt, K),
        "nclib nc1 only": lambda: metrics.nc1(Ht, yt),
        "nclib nc_metrics, samples in random class order": lambda: metrics.nc_metrics(W, b, Hp, yp),
        "authors' formulas, random class order": lambda: authors_batched(W, b, Hp, yp, K),
        "rhubarbwu method, random class order": lambda: rhubarbwu_method(W, b, Hp, yp, K),
        "nclib NCAccumulator (streaming, d x d)": lambda: accumulated(max_buffer_bytes=0),
        # where the time goes
        "floor: one read of H (H.sum())": lambda: Ht.sum(),
        "memory: H copied into fresh memory (H.clone())": lambda: Ht.clone(),
        "floor: one N x d x K product (onehot^T H)": lambda: onehot.T @ Ht,
        "nclib pass 1 (class sums)": lambda: metrics._means_pass(src, K, counts),
        "nclib pass 2, NC1 columns only": lambda: metrics._residual_pass(src, K, means, Q),
        "nclib pass 2, + W columns, NCC": lambda: metrics._residual_pass(src, K, means, Q, W64, b.double(), True),
        "pass 2's float32 product alone (2K rows times H, chunk by chunk)": product_alone,
    }
    best = {k: float("inf") for k in methods}
    out = {}
    for _ in range(args.repeats):
        for k, fn in methods.items():
            t0 = time.perf_counter()
            out[k] = fn()
            best[k] = min(best[k], time.perf_counter() - t0)

    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}, "
          f"numpy {np.__version__}, scipy {scipy.__version__}")
    print(f"features: N={N:,}, d={d}, K={K}, float32; best of {args.repeats} interleaved rounds, one process "
          "(on a loaded machine absolute times vary; the ratios are what to read)")
    ours = best["nclib nc_metrics"]
    accum = best["nclib NCAccumulator, copy=False (the training path: nclib.train.evaluate)"]
    pa, pr = best["authors' formulas, batched torch f32"], best["rhubarbwu/neural-collapse method"]
    print("\n| method | time (ms) | authors' / this | rhubarbwu / this |")
    print("| --- | ---: | ---: | ---: |")
    for k in list(methods)[:7]:
        print(f"| {k} | {1e3 * best[k]:.1f} | {pa / best[k]:.1f}x | {pr / best[k]:.1f}x |")
    shuf = best["nclib nc_metrics, samples in random class order"]
    pa_s, pr_s = best["authors' formulas, random class order"], best["rhubarbwu method, random class order"]
    print("\nThe same samples in random class order (each sample's own batch of classes; the rows above are class by"
          " class, as etf.noisy_etf_features gives them and as this book's training subsets are):\n")
    print("| method | time (ms) | authors' / this | rhubarbwu / this |")
    print("| --- | ---: | ---: | ---: |")
    for k, v in (("nclib nc_metrics", shuf), ("authors' formulas, batched f32", pa_s), ("rhubarbwu method", pr_s)):
        print(f"| {k} | {1e3 * v:.1f} | {pa_s / v:.1f}x | {pr_s / v:.1f}x |")
    floor = best["floor: one read of H (H.sum())"] + best["floor: one N x d x K product (onehot^T H)"]
    print("\nWhere the time goes (ms):")
    for k in list(methods)[10:]:
        print(f"  {k}: {1e3 * best[k]:.1f}")
    print(f"  floor (read + product) = {1e3 * floor:.1f}; nc_metrics / floor = {ours / floor:.1f}; "
          f"the rest of nc_metrics (checks, eigen-solves, extras) = "
          f"{1e3 * (ours - best['nclib pass 1 (class sums)'] - best['nclib pass 2, + W columns, NCC']):.1f}")
    own = best["nclib pass 1 (class sums)"] + best["pass 2's float32 product alone (2K rows times H, chunk by chunk)"]
    print(f"  this method's floor (pass 1 + pass 2's product alone) = {1e3 * own:.1f}; "
          f"10x against the faster peer needs <= {1e3 * min(pa, pr) / 10:.1f}")
    goal = min(pa, pr) / ours >= 10 and min(pa, pr) / accum >= 10
    print(f"goal >= 10x against both peers (nc_metrics and the training path, class-ordered samples): "
          f"{'met' if goal else 'NOT met'} (nc_metrics {pa / ours:.1f}x / {pr / ours:.1f}x, training path "
          f"{pa / accum:.1f}x / {pr / accum:.1f}x); random class order: "
          f"{'met' if min(pa_s, pr_s) / shuf >= 10 else 'NOT met'} ({pa_s / shuf:.1f}x / {pr_s / shuf:.1f}x)")

    # ------------------------------------------------------------------ accuracy
    print("\nAccuracy (relative error of NC1 against float64 on the same float32 values):")
    print("| noise sigma*sqrt(d) | float64 NC1 | nclib nc_metrics | NCAccumulator | authors batched f32 | rhubarbwu f32 |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for level in (1e-4, 8e-7):
        if level == 1e-4:
            Hs, ys = H, y
        else:
            Hs, ys = etf.noisy_etf_features(K, n, d, level / np.sqrt(d), seed=0, dtype=np.float32)
        Hst, yst = torch.from_numpy(Hs), torch.from_numpy(ys).long()
        ref = float64_reference(Hs, ys, K)
        acc = metrics.NCAccumulator(K)
        for i in range(0, N, BATCH):
            acc.update(Hst[i:i + BATCH], yst[i:i + BATCH])
        vals = [metrics.nc_metrics(W, b, Hst, yst).nc1, acc.compute(W, b).nc1,
                authors_batched(W, b, Hst, yst, K)[0], rhubarbwu_method(W, b, Hst, yst, K)[0]]
        # rhubarbwu centres on the unweighted mean of the means: equal to eq. (7)'s here (balanced classes)
        print(f"| {level:.0e} | {ref:.4e} | " + " | ".join(f"{v / ref - 1:+.1e}" for v in vals) + " |")

    if args.sweep_n_per_class:
        noise_sweep(K, args.sweep_n_per_class, d, W)


if __name__ == "__main__":
    main()
