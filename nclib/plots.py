"""One plotting style for the whole book (figures of Sections 4.1-4.3 and the theory chapters).

Every figure in the book takes its colours from :data:`COLORS` so that an optimizer or a
setting has the same colour in every chapter, uses log scales where the paper does
(NC1 always; NC2-NC4 on request), and has labelled axes and a legend.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

__all__ = ["COLORS", "color", "apply_style", "plot_curves", "plot_nc_panels", "draw_simplex",
           "NC_LABELS"]

# One colour per optimizer / setting, across the whole book (colour-blind safe: Okabe-Ito).
COLORS = {
    "sgd": "#0072B2",
    "adam": "#D55E00",
    "lbfgs": "#009E73",
    "gd": "#CC79A7",
    "learned": "#0072B2",
    "fixed": "#D55E00",
    "d=K": "#009E73",
    "all": "#0072B2",      # weight decay on all parameters (eq. 2)
    "uf": "#E69F00",       # decay on (W, H, b) only (eq. 4)
    "train": "#0072B2",
    "test": "#D55E00",
    "theory": "#000000",
}
_CYCLE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]

NC_LABELS = {
    "nc1": r"$\mathcal{NC}_1$ (eq. 7)",
    "nc2": r"$\mathcal{NC}_2$ (eq. 8)",
    "nc3": r"$\mathcal{NC}_3$ (eq. 9)",
    "nc4": r"$\mathcal{NC}_4$ (eq. 10)",
}


def color(key, i: int = 0) -> str:
    """The book's colour for ``key`` (an optimizer or setting name), else the i-th cycle colour."""
    return COLORS.get(str(key).lower(), _CYCLE[i % len(_CYCLE)])


def apply_style() -> None:
    """Matplotlib settings shared by all chapters."""
    plt.rcParams.update({
        "figure.dpi": 110,
        "savefig.dpi": 110,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "legend.frameon": False,
        "font.size": 10,
        "axes.prop_cycle": plt.cycler(color=_CYCLE),
    })


def plot_curves(ax, x, series: dict, *, xlabel: str, ylabel: str, logy: bool = False,
                logx: bool = False, title: str | None = None, legend: bool = True, **kw):
    """Plot ``series`` (label -> y values against ``x``, or label -> (x, y)) on ``ax``."""
    for i, (label, ys) in enumerate(series.items()):
        if isinstance(ys, tuple):
            xs, ys = ys
        else:
            xs = x
        ax.plot(xs, ys, label=str(label), color=color(label, i), **kw)
    if logy:
        ax.set_yscale("log")
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if legend and len(series) > 0:
        ax.legend()
    return ax


def plot_nc_panels(histories: dict, *, x_key: str = "epoch", metrics=("nc1", "nc2", "nc3", "nc4"),
                   log_metrics=("nc1",), xlabel: str = "epoch", axes=None, title: str | None = None):
    """One panel per metric (Figure 3 layout): ``histories`` maps a label to a dict of lists.

    Each history needs ``x_key`` and the metric keys.  Returns the axes.
    """
    if axes is None:
        _, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics), 3.0), constrained_layout=True)
    axes = np.atleast_1d(axes)
    for ax, m in zip(axes, metrics):
        series = {lab: (np.asarray(h[x_key]), np.asarray(h[m])) for lab, h in histories.items()}
        plot_curves(ax, None, series, xlabel=xlabel, ylabel=NC_LABELS.get(m, m), logy=m in log_metrics,
                    legend=ax is axes[0])
    if title:
        axes[0].figure.suptitle(title)
    return axes


def draw_simplex(ax, points: np.ndarray, *, labels=None, color_list=None, edges: bool = True,
                 annotate: bool = True):
    """Draw K points (rows) in 2-D or 3-D (``ax`` a 3-D axes for 3 columns) as vectors from 0."""
    P = np.asarray(points, dtype=float)
    K, dim = P.shape
    if dim not in (2, 3):
        raise ValueError(f"points must have 2 or 3 columns, got {dim}")
    cols = color_list or [_CYCLE[k % len(_CYCLE)] for k in range(K)]
    origin = np.zeros(dim)
    for k in range(K):
        seg = np.stack([origin, P[k]])
        ax.plot(*seg.T, color=cols[k], lw=2)
        ax.scatter(*P[k], color=cols[k], s=40)
        if annotate:
            ax.text(*(1.12 * P[k]), labels[k] if labels else f"class {k + 1}", color=cols[k])
    if edges:
        for i in range(K):
            for j in range(i + 1, K):
                ax.plot(*np.stack([P[i], P[j]]).T, color="grey", lw=0.8, ls="--")
    return ax


# ----------------------------------------------------------------------------- experiment results
#: Labels of the history keys that :func:`plot_results` understands (Figures 3-7).
RESULT_LABELS = dict(NC_LABELS, train_acc="train accuracy (%)", test_acc="test accuracy (%)",
                     train_err="training error (%)", test_err="test error (%)")

#: Colour keys of the experiment runs (member names of :func:`nclib.runner.chapter_groups`).
RUN_COLOR_KEYS = {"sgd": "sgd", "adam": "adam", "lbfgs": "lbfgs", "all": "all", "whb": "uf",
                  "learned": "learned", "etf": "fixed", "dk": "d=K"}


def result_series(result: dict, key: str):
    """``(epochs, values)`` of one run's history (a results dict of
    :func:`nclib.experiments.load_or_run`): ``nc1``..``nc4`` as stored; ``train_acc`` /
    ``test_acc`` in percent; ``train_err`` / ``test_err`` = 100 - accuracy (Figure 5's
    misclassification percentage)."""
    h = result["history"]
    x = np.asarray(h["epoch"], dtype=float)
    if key in ("train_err", "test_err"):
        acc = key.replace("err", "acc")
        return x, 100.0 * (1.0 - np.asarray(h[acc], dtype=float))
    if key in ("train_acc", "test_acc"):
        return x, 100.0 * np.asarray(h[key], dtype=float)
    if key not in h:
        raise ValueError(f"unknown history key {key!r}; allowed: {', '.join(RESULT_LABELS)}")
    return x, np.asarray(h[key], dtype=float)


def plot_results(axes, runs: dict, metrics=("nc1", "nc2", "nc3", "nc4"), *, log_metrics=("nc1",),
                 color_keys: dict | None = None, title: str | None = None, legend_axis: int = 0):
    """One panel per metric for several runs (Figures 3-7): ``runs`` maps a legend label to a
    results dict; ``color_keys`` maps a label to a key of :data:`COLORS` (default: the label
    itself, then the cycle).  Metrics in ``log_metrics`` get a log y axis (the paper plots
    NC1 on a log scale).  Returns the axes."""
    axes = np.atleast_1d(axes)
    if len(axes) != len(metrics):
        raise ValueError(f"got {len(axes)} axes for {len(metrics)} metrics")
    color_keys = color_keys or {}
    for ax, m in zip(axes, metrics):
        for i, (label, res) in enumerate(runs.items()):
            x, y = result_series(res, m)
            if m in log_metrics:
                y = np.where(y > 0, y, np.nan)  # a log axis cannot show 0
            ax.plot(x, y, label=str(label), color=color(color_keys.get(label, label), i),
                    marker="o" if len(x) < 4 else None, ms=3)
        if m in log_metrics:
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(RESULT_LABELS.get(m, m))
    if runs:
        axes[legend_axis].legend(fontsize=8)
    if title:
        axes[0].set_title(title, loc="left", fontsize=9)
    return axes


def experiment_grid(row_titles, n_cols: int = 4, *, suptitle: str | None = None, width: float = 14.0,
                    row_height: float = 3.3):
    """A figure with one row of ``n_cols`` panels per entry of ``row_titles`` (Figures 3-7:
    one row per dataset or model), each row titled (a subfigure, so that long captions do
    not squeeze the panels).  Returns ``(fig, rows)``, ``rows[i]`` an array of ``n_cols`` axes."""
    row_titles = list(row_titles)
    if not row_titles:
        raise ValueError("experiment_grid needs at least one row")
    fig = plt.figure(figsize=(width, row_height * len(row_titles)), layout="constrained")
    subs = np.atleast_1d(fig.subfigures(len(row_titles), 1))
    rows = []
    for sf, t in zip(subs, row_titles):
        rows.append(np.atleast_1d(sf.subplots(1, n_cols)))
        sf.suptitle(t, fontsize=9, x=0.01, ha="left")
    if suptitle:
        fig.suptitle(suptitle)
    return fig, rows


__all__ += ["RESULT_LABELS", "RUN_COLOR_KEYS", "result_series", "plot_results", "experiment_grid"]
