"""Stored results against regenerated ones: are the numbers the same? (Markdown, stdout)

Usage::

    python -m nclib run --profile cpu --no-execute --workers 2 --threads 1 --rerun --results-dir /tmp/regen
    python tools/compare_results.py book/results /tmp/regen [--profile cpu]

One row per stored result of the profile: how many of the numbers in its ``history``, ``final``
and ``geometry`` (every logged metric, the class means, W and b; not the per-epoch timings) are
bitwise equal in the regenerated file of the same name (same configuration hash), the largest
relative difference of the others and where it is, both wall times, and the provenance fields of the
environment that differ (``ENVIRONMENT``: the same code can train differently on another CPU, whose
kernels round differently; a field the stored file did not record shows as ``?``).  Exit status 1
when a stored result has no regenerated counterpart.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys

PARTS = ("history", "final", "geometry")
TIMINGS = ("seconds", "train_seconds", "wall_time")  # measured, not computed: left out
ENVIRONMENT = ("host", "cpu_model", "cpu_capability", "kernel_env", "cpu_threads", "torch_version", "device_name")


def leaves(x, where=""):
    """(path, value) of every number or string in nested dicts and lists."""
    if isinstance(x, dict):
        for k, v in x.items():
            yield from leaves(v, f"{where}.{k}" if where else k)
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from leaves(v, f"{where}[{i}]")
    else:
        yield where, x


def same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def compare(old: dict, new: dict):
    """(equal, total, largest relative difference, its path); differing keys count as unequal."""
    equal = total = 0
    worst, at = 0.0, ""
    for part in PARTS:
        a, b = (dict(kv for kv in leaves(r[part], part) if kv[0].split("[")[0].split(".")[-1] not in TIMINGS)
                for r in (old, new))
        for k in a.keys() | b.keys():
            total += 1
            x, y = a.get(k), b.get(k)
            if same(x, y):
                equal += 1
                continue
            num = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (x, y))
            r = abs(x - y) / max(abs(x), abs(y)) if num else math.inf
            if r > worst:
                worst, at = r, k
    return equal, total, worst, at


def minutes(res: dict) -> str:
    s = res.get("provenance", {}).get("wall_time_s")
    return "-" if s is None else f"{s / 60:.1f} min"


def environment_diff(old: dict, new: dict) -> str:
    """The ENVIRONMENT fields of the two provenances that differ, ``field: stored -> regenerated``."""
    a, b = old.get("provenance", {}), new.get("provenance", {})
    out = [f"{k}: {a.get(k, '?')} -> {b.get(k, '?')}" for k in ENVIRONMENT if a.get(k, "?") != b.get(k, "?")]
    return "; ".join(out) or "-"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stored", type=pathlib.Path)
    ap.add_argument("regenerated", type=pathlib.Path)
    ap.add_argument("--profile", default="cpu")
    args = ap.parse_args(argv)
    for folder in (args.stored, args.regenerated):
        if not folder.is_dir():
            ap.error(f"{folder} is not a folder of results")
    missing = 0
    print("| run | numbers bitwise equal | largest relative difference (where) | wall time stored / regenerated "
          "| environment that differs |")
    print("|---|---:|---|---|---|")
    for p in sorted(args.stored.glob(f"*__{args.profile}__*.json")):
        old, name = json.loads(p.read_text()), p.name.split("__")[0]
        q = args.regenerated / p.name
        if not q.exists():
            missing += 1
            print(f"| {name} | not regenerated | | {minutes(old)} / - | |")
            continue
        new = json.loads(q.read_text())
        eq, n, worst, at = compare(old, new)
        diff = "-" if eq == n else f"{worst:.1e} ({at})"
        print(f"| {name} | {eq:,} of {n:,} | {diff} | {minutes(old)} / {minutes(new)} | {environment_diff(old, new)} |")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
