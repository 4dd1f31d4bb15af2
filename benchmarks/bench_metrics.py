"""Benchmark: nclib.metrics.nc_metrics against a naive reference in the style of the anchors.

Features N = 50,000, d = 512, K = 10, float32 (like a ResNet's penultimate layer), on the CPU,
in one process.  The naive reference forms Sigma_W by a per-sample loop of d x d outer
products and inverts Sigma_B with a full ``scipy.linalg.pinv`` in float32 (the authors' code).

Accuracy is measured on nearly collapsed features: unit-norm simplex-ETF class means plus
Gaussian noise of standard deviation ``1e-4/sqrt(d)`` per coordinate, whose expected NC1 is
``(1 - K/N) sigma^2 (K-1)^2 / K`` to leading order (``nclib.etf.expected_nc1_noisy_etf``).

Run:  python benchmarks/bench_metrics.py [--n-per-class 5000] [--d 512] [--repeats 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import scipy.linalg
import torch
from threadpoolctl import threadpool_limits

from nclib import etf, metrics


def naive_nc_metrics(W, b, H, y, K):
    """The anchors' way: float32, per-sample d x d outer products, full pinv of Sigma_B."""
    H = np.asarray(H, dtype=np.float32)
    N, d = H.shape
    means = np.stack([H[y == k].mean(0) for k in range(K)])
    hG = H.mean(0)
    SW = np.zeros((d, d), dtype=np.float32)
    for i in range(N):
        r = (H[i] - means[y[i]])[:, None]
        SW += r @ r.T
    SW /= N
    C = means - hG
    SB = (C.T @ C) / K
    nc1 = float(np.trace(SW @ scipy.linalg.pinv(SB)) / K)
    target = (np.eye(K) - 1.0 / K) / np.sqrt(K - 1)
    WW = W @ W.T
    nc2 = float(np.linalg.norm(WW / np.linalg.norm(WW) - target))
    WH = W @ C.T
    nc3 = float(np.linalg.norm(WH / np.linalg.norm(WH) - target))
    nc4 = float(np.linalg.norm(b + W @ hG))
    acc = float(np.mean(np.argmax(H @ W.T + b, 1) == y))
    return nc1, nc2, nc3, nc4, acc


def timed(fn, repeats):
    best = float("inf")
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-per-class", type=int, default=5000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--K", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--naive-repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch and BLAS threads for both methods (1: robust on a shared machine)")
    ap.add_argument("--sweep-n-per-class", type=int, default=1000,
                    help="samples per class for the noise sweep (0 to skip it)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    K, n, d = args.K, args.n_per_class, args.d
    sigma = 1e-4 / np.sqrt(d)
    H, y = etf.noisy_etf_features(K, n, d, sigma, seed=0, dtype=np.float32)
    W = etf.simplex_etf(K, d).astype(np.float32)
    b = np.zeros(K, dtype=np.float32)
    Ht, yt = torch.from_numpy(H), torch.from_numpy(y)
    expected = etf.expected_nc1_noisy_etf(K, n, sigma)

    t_fast, m = timed(lambda: metrics.nc_metrics(W, b, Ht, yt), args.repeats)

    def streamed():
        acc = metrics.NCAccumulator(K)
        for i in range(0, len(y), 1024):
            hb = Ht[i:i + 1024]
            acc.update(hb, yt[i:i + 1024], logits=hb @ torch.from_numpy(W).T)
        return acc.compute(W, b)

    t_stream, ms = timed(streamed, args.repeats)
    t_naive, ref = timed(lambda: naive_nc_metrics(W, b, H, y, K), args.naive_repeats)

    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, numpy {np.__version__}, scipy {scipy.__version__}")
    print(f"features: N={K * n:,}, d={d}, K={K}, float32; noise sigma = 1e-4/sqrt(d) = {sigma:.3e}")
    print()
    print(f"| method | time (s) | speed-up vs naive | NC1 | NC1 / expected |")
    print(f"| --- | ---: | ---: | ---: | ---: |")
    print(f"| naive (per-sample outer products, float32 full pinv) | {t_naive:.3f} | 1.0x | {ref[0]:.3e} | {ref[0] / expected:.3g} |")
    print(f"| nclib nc_metrics (float64, top K-1 eigendirections) | {t_fast:.3f} | {t_naive / t_fast:.0f}x | {m.nc1:.3e} | {m.nc1 / expected:.4f} |")
    print(f"| nclib NCAccumulator (batches of 1024) | {t_stream:.3f} | {t_naive / t_stream:.0f}x | {ms.nc1:.3e} | {ms.nc1 / expected:.4f} |")
    print()
    print(f"expected NC1 (leading order) = {expected:.4e}")
    print(f"NC2..NC4 nclib: {m.nc2:.2e} {m.nc3:.2e} {m.nc4:.2e}; naive: {ref[1]:.2e} {ref[2]:.2e} {ref[3]:.2e}")
    ok_speed = t_naive / t_fast >= 50
    ok_acc = abs(m.nc1 / expected - 1) < 0.05
    print(f"goal >= 50x faster: {'met' if ok_speed else 'NOT met'}; "
          f"NC1 within 5% of expected: {'met' if ok_acc else 'NOT met'}; "
          f"naive / expected = {ref[0] / expected:.3g}")

    if args.sweep_n_per_class:
        ns = args.sweep_n_per_class
        print()
        print(f"noise sweep (N={K * ns:,}, d={d}, float32 features): does NC1 follow sigma^2 or hit a floor?")
        print("| sigma * sqrt(d) | expected NC1 | nclib NC1 | naive NC1 | naive / expected |")
        print("| ---: | ---: | ---: | ---: | ---: |")
        for s_ in (1e-2, 1e-3, 1e-4, 1e-5, 1e-6):
            sg = s_ / np.sqrt(d)
            Hs, ys = etf.noisy_etf_features(K, ns, d, sg, seed=1, dtype=np.float32)
            e = etf.expected_nc1_noisy_etf(K, ns, sg)
            fast = metrics.nc1(torch.from_numpy(Hs), torch.from_numpy(ys))
            slow = naive_nc_metrics(W, b, Hs, ys, K)[0]
            print(f"| {s_:.0e} | {e:.3e} | {fast:.3e} | {slow:.3e} | {slow / e:.3g} |")


if __name__ == "__main__":
    main()
