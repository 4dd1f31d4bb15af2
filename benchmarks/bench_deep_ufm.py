"""Benchmark of nclib.deep_ufm, and the search behind the chapter "Deeper unconstrained features".

Default (timing): time to reach a given gradient norm on a deep UFM of a size that matters
(K = 10 classes, n = 20 samples per class, L = 3 layers of width 64, squared loss, linear or
ReLU), for ``deep_ufm.solve`` (scipy L-BFGS-B on hand-written back-propagation, float64) and for
plain ``torch.optim.LBFGS`` (history 20, strong Wolfe, autograd, float64) on the same objective
from the same start.  Both stop when the Euclidean gradient norm is <= ``--tol`` (torch: checked
after every outer step) or after ``--max-iter`` iterations.

``--search``: the crossover search of the chapter: for each K in ``--ks`` and the depth
``--L``, ``--starts`` random starts of the ReLU deep UFM (n = 1, widths K, lambda = 1e-3, no
bias); prints the seeds whose value ends below the deep-neural-collapse value.

    python benchmarks/bench_deep_ufm.py                       # timing (about a minute on one core)
    python benchmarks/bench_deep_ufm.py --search --L 3 --ks 8 9 10 11 12 --starts 40 \
        --out book/results/deep_ufm_search.jsonl

(bench_ufm.py is owned by another module's benchmark; this file is the deep UFM's.)
"""
from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from nclib import deep_ufm, threads


def torch_lbfgs(K, n, widths, lams, activation, seed, tol, max_iter):
    """Plain torch L-BFGS with autograd on the same objective and start as deep_ufm.solve."""
    H1, Ws, _ = deep_ufm._init(K, n, widths, seed, 1.0, False, False)
    P = [torch.tensor(H1, requires_grad=True)] + [torch.tensor(W, requires_grad=True) for W in Ws]
    y = torch.as_tensor(np.repeat(np.arange(K), n))
    Y = torch.nn.functional.one_hot(y, K).double()
    lW, lH, _ = lams
    opt = torch.optim.LBFGS(P, lr=1, history_size=20, max_iter=1, line_search_fn="strong_wolfe")

    def F():
        X = P[0]
        for W in P[1:-1]:
            X = X @ W.T
            if activation == "relu":
                X = torch.relu(X)
        Z = X @ P[-1].T
        return (0.5 * (Z - Y).pow(2).sum() / Z.shape[0] + lH / 2 * P[0].pow(2).sum()
                + sum(lW / 2 * W.pow(2).sum() for W in P[1:]))

    def closure():
        opt.zero_grad()
        v = F()
        v.backward()
        return v

    t0 = time.perf_counter()
    for it in range(1, max_iter + 1):
        opt.step(closure)
        opt.zero_grad()
        v = F()
        v.backward()
        gn = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in P))
        if gn <= tol:
            break
    return time.perf_counter() - t0, it, float(v.detach()), gn


def timing(args):
    K, n, widths, lams = 10, 20, [64, 64, 64], (1e-3, 1e-3, 0.0)
    print(f"deep UFM: K={K}, n={n}, widths={widths}, lambda={lams[0]}, squared loss, tol={args.tol}")
    print(f"{'activation':>10} {'solver':>28} {'time s':>8} {'iters':>6} {'value':>14} {'|grad|':>9}")
    for act in ("linear", "relu"):
        r = deep_ufm.solve(K, n, widths, lambdas=lams, loss="mse", activation=act, bias=False, seed=0,
                           tol=args.tol / 10, max_iter=args.max_iter)
        print(f"{act:>10} {'deep_ufm.solve (L-BFGS-B)':>28} {r.time_s:8.2f} {r.n_iter:6d} {r.value:14.10f} {r.grad_norm:9.1e}")
        t, it, v, gn = torch_lbfgs(K, n, widths, lams, act, 0, args.tol, args.max_iter)
        print(f"{act:>10} {'torch.optim.LBFGS (autograd)':>28} {t:8.2f} {it:6d} {v:14.10f} {gn:9.1e}")


def search(args):
    lams = (1e-3, 1e-3, 0.0)
    for K in args.ks:
        dnc, _ = deep_ufm.dnc_value(K, 1, args.L, lams)
        wins = []
        t0 = time.perf_counter()
        for s in range(args.starts):
            r = deep_ufm.solve(K, 1, [K] * args.L, lambdas=lams, loss="mse", activation="relu", bias=False,
                               seed=s, tol=1e-10, max_iter=3000)
            if r.value < dnc - 1e-9:
                wins.append((s, round(r.value - dnc, 8)))
        wall = time.perf_counter() - t0
        print(f"L={args.L} K={K}: DNC {dnc:.6f}; starts below DNC (seed, gap): {wins} [{wall:.0f} s]", flush=True)
        if args.out:
            rec = dict(L=args.L, K=K, starts=args.starts, lambda_=lams[0], dnc=dnc, below_dnc=wins, wall_s=round(wall, 1),
                       threads=torch.get_num_threads(), torch=torch.__version__, numpy=np.__version__,
                       date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            with open(args.out, "a") as f:
                f.write(json.dumps(rec) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--search", action="store_true")
    ap.add_argument("--L", type=int, default=3)
    ap.add_argument("--ks", type=int, nargs="+", default=[6, 8, 9, 10, 12])
    ap.add_argument("--starts", type=int, default=40)
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--max-iter", type=int, default=5000)
    ap.add_argument("--out", default=None, help="--search: append one JSON line per K to this file "
                    "(the book reads book/results/deep_ufm_search.jsonl)")
    args = ap.parse_args()
    threads.configure()
    search(args) if args.search else timing(args)


if __name__ == "__main__":
    main()
