"""How many CPU threads torch uses, chosen in one place.

Every chapter calls :func:`configure` once, right after its imports; the batch runner's workers
pin their own count.  The default is one thread; ``$NCLIB_THREADS`` overrides it (e.g. on an
idle many-core workstation).  On a GPU the CPU thread count barely matters.

Why one: the book's workloads are many small tensor operations (the UFM solvers, the digits MLP,
small ResNets at batch 64), where a second thread buys little and, on a machine that runs
anything else, costs a lot (oversubscription: threads spin waiting for a core).  Measured on the
project's 2-core machine while both cores were busy with other training runs (load average about
6; every command under ``nice -n 15``), executing the whole ``neural_collapse`` chapter with
papermill (600 epochs of the digits MLP, the chapter's default):

=================  ==========  ==============================
NCLIB_THREADS      wall time   CPU time (user)
=================  ==========  ==============================
1                  42 s        39 s (training: 33 s wall)
2                  843 s       435 s
=================  ==========  ==============================

Twenty times slower with two threads on a loaded machine (an earlier measurement of a 60-epoch
training: 14.7 s with one thread, 155 s with two).  The one-thread run did not compete with other
work of ours; the two-thread run overlapped with other chapters we executed, so part of its
slowdown is that load, which is the point: a book build shares the machine.
"""
from __future__ import annotations

import os

__all__ = ["default_threads", "configure", "AVX2_KERNELS"]

#: Environment that pins torch's CPU kernels to their AVX2 versions: aten's vectorised kernels,
#: MKL's (conditional numerical reproducibility, AVX2 code path) and oneDNN's (convolutions). It
#: must be set before torch starts (a fresh process).  The same code and settings train
#: differently when the kernels differ, because their roundings differ and training amplifies
#: them (measured on an AMD EPYC, family 25, model 1: 2 epochs of the ``fig3-mnist-sgd`` run then
#: stored end at 92.68% training accuracy after epoch 1 with its default AVX2 kernels, 90.54% with
#: ``ATEN_CPU_CAPABILITY=default``, 93.62% with oneDNN capped at SSE4.1).  This environment leaves
#: that machine's numbers unchanged (checked), but it does not make another CPU agree: on an Intel
#: Xeon (family 6, model 167) the first epoch ends at 92.78% with it and at 94.74% with that CPU's
#: own AVX-512 kernels (oneDNN, the convolutions, still chooses its loops by CPU; without oneDNN the
#: result differs again).  Results record which of these variables were set (``kernel_env``).
AVX2_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def default_threads() -> int:
    """``$NCLIB_THREADS`` if set (an integer >= 1), else 1."""
    v = os.environ.get("NCLIB_THREADS")
    if v is None or v.strip() == "":
        return 1
    try:
        n = int(v)
    except ValueError:
        raise ValueError(f"NCLIB_THREADS must be an integer >= 1, got {v!r}") from None
    if n < 1:
        raise ValueError(f"NCLIB_THREADS must be an integer >= 1, got {v!r}")
    return n


def configure(n: int | None = None) -> int:
    """Set torch's intra-op threads (and the BLAS pools of numpy/scipy, through threadpoolctl)
    to ``n`` (default :func:`default_threads`); returns the number set."""
    import torch
    n = default_threads() if n is None else n
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads must be an integer >= 1, got {n!r}")
    torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(n)
    except ImportError:  # optional
        pass
    return n
