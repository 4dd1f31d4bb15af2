"""One plotting style for the whole book (figures of Sections 4.1-4.3 and the theory chapters).

Every figure in the book takes its colours from :data:`COLORS` so that an optimizer or a
setting has the same colour in every chapter, uses log scales where the paper does
(NC1 always; NC2-NC4 on request), and has labelled axes and a legend.

Readable at the book's column width (about 750 px): the default figure is
:data:`FIG_WIDTH` inches wide, the text 10 pt (9 pt for legends), and the multi-panel helpers put at
most :data:`MAX_COLS` panels side by side, wrapping the rest onto further rows. Figures shown in a
notebook carry their panel layout in the PNG (``nclib:panel_columns``), which the browser test
(``tests/test_browser.py``) uses to check each panel's rendered width.
"""
from __future__ import annotations

import math
import textwrap

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


#: Default width of a figure in inches: about the content column at the book's 110 dpi.
FIG_WIDTH = 7.5
#: At most this many panels side by side in the multi-panel helpers.
MAX_COLS = 2


def apply_style() -> None:
    """Matplotlib settings shared by all chapters (sized for the book's column), and, inside
    IPython, PNG output that records each figure's panel layout (see :func:`panel_columns`)."""
    plt.rcParams.update({
        "figure.dpi": 110,
        "savefig.dpi": 110,
        "figure.figsize": (FIG_WIDTH, 3.4),
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "legend.frameon": False,
        "legend.framealpha": 0.85,
        "font.size": 10,
        "axes.titlesize": 10,
        "axes.labelsize": 10,
        "legend.fontsize": 9,
        "xtick.labelsize": 9,
        "ytick.labelsize": 9,
        "figure.titlesize": 11,
        "axes.prop_cycle": plt.cycler(color=_CYCLE),
    })
    _record_layout_in_png()


def panel_columns(fig) -> int:
    """The largest number of panels (axes other than colour bars) side by side in ``fig``: axes
    whose vertical centres are within 5% of the figure height count as one row."""
    height = fig.bbox.height
    centres = sorted((ax.bbox.y0 + ax.bbox.y1) / 2 / height for ax in fig.get_axes()
                     if ax.get_visible() and ax.get_label() != "<colorbar>")
    best, row = 0, []
    for c in centres:
        row = [r for r in row if abs(r - c) < 0.05] + [c]
        best = max(best, len(row))
    return best


def _record_layout_in_png() -> None:
    """Inside IPython, render figures to PNG with ``nclib:panel_columns`` in the PNG metadata."""
    try:
        from IPython import get_ipython
        from IPython.core.pylabtools import print_figure
    except ImportError:
        return
    ip = get_ipython()
    if ip is None:
        return
    from matplotlib.figure import Figure

    def png(fig):
        return print_figure(fig, "png", bbox_inches="tight",
                            metadata={"nclib:panel_columns": str(panel_columns(fig))})

    ip.display_formatter.formatters["image/png"].for_type(Figure, png)


def panel_grid(n: int, *, max_cols: int = MAX_COLS, width: float = FIG_WIDTH, panel_height: float = 2.8,
               **kw):
    """``n`` panels, at most ``max_cols`` side by side: ``(fig, axes)`` with ``axes`` a flat array of
    ``n`` axes (unused grid cells removed)."""
    if n < 1:
        raise ValueError(f"panel_grid needs n >= 1 panels, got {n}")
    cols = min(n, max_cols)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(width, panel_height * nrows), layout="constrained",
                             squeeze=False, **kw)
    axes = axes.ravel()
    for ax in axes[n:]:
        ax.remove()
    return fig, axes[:n]


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
        _, axes = panel_grid(len(metrics))
    axes = np.atleast_1d(axes)
    for ax, m in zip(axes, metrics):
        series = {lab: (np.asarray(h[x_key]), np.asarray(h[m])) for lab, h in histories.items()}
        plot_curves(ax, None, series, xlabel=xlabel, ylabel=NC_LABELS.get(m, m), logy=m in log_metrics,
                    legend=ax is axes[0])
    if title:
        axes[0].figure.suptitle(title)
    return axes


def draw_simplex(ax, points: np.ndarray, *, labels=None, color_list=None, edges: bool = True,
                 annotate: bool = True, legend: bool = False):
    """Draw K points (rows) in 2-D or 3-D (``ax`` a 3-D axes for 3 columns) as vectors from 0.

    Each point is labelled next to its tip (``annotate``) or in a legend (``legend``; better
    in 3-D, where text placed next to a point can hide behind the panes or the ticks)."""
    P = np.asarray(points, dtype=float)
    K, dim = P.shape
    if dim not in (2, 3):
        raise ValueError(f"points must have 2 or 3 columns, got {dim}")
    cols = color_list or [_CYCLE[k % len(_CYCLE)] for k in range(K)]
    names = [labels[k] if labels else f"class {k + 1}" for k in range(K)]
    origin = np.zeros(dim)
    for k in range(K):
        seg = np.stack([origin, P[k]])
        ax.plot(*seg.T, color=cols[k], lw=2)
        ax.scatter(*P[k], color=cols[k], s=40, label=names[k])
        if annotate and not legend:
            ax.text(*(1.12 * P[k]), names[k], color=cols[k])
    if edges:
        for i in range(K):
            for j in range(i + 1, K):
                ax.plot(*np.stack([P[i], P[j]]).T, color="grey", lw=0.8, ls="--")
    if legend:
        ax.legend(loc="upper left", fontsize=9)
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
    itself, then the cycle).  Metrics in ``log_metrics`` get a log y axis (NC1 spans decades; the
    paper's Figure 3 is linear, its Figure 5 log).  The x axis counts epochs; an L-BFGS run's
    epoch is one optimizer step (its label says so).  Returns the axes."""
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
        lbfgs = any(r.get("config", {}).get("optimizer") == "lbfgs" for r in runs.values())
        ax.set_xlabel("epoch (L-BFGS: step)" if lbfgs else "epoch")
        ax.set_ylabel(RESULT_LABELS.get(m, m))
    if runs:
        axes[legend_axis].legend()
    if title:
        axes[0].set_title(title, loc="left")
    return axes


def experiment_grid(row_titles, n_cols: int = 4, *, suptitle: str | None = None, width: float = FIG_WIDTH,
                    row_height: float = 2.7, max_cols: int = MAX_COLS):
    """A figure with one block of ``n_cols`` panels per entry of ``row_titles`` (Figures 3-7:
    one block per dataset or model), each block titled (a subfigure, so that long captions do
    not squeeze the panels; titles are wrapped to the figure's width).  A block puts at most
    ``max_cols`` panels side by side and wraps the rest onto further lines of ``row_height``
    inches, so that every panel stays readable at the book's column width.  Returns
    ``(fig, rows)``, ``rows[i]`` a flat array of the ``n_cols`` axes of block ``i``."""
    row_titles = list(row_titles)
    if not row_titles:
        raise ValueError("experiment_grid needs at least one row")
    if n_cols < 1 or max_cols < 1:
        raise ValueError(f"n_cols and max_cols must be >= 1, got {n_cols} and {max_cols}")
    cols = min(n_cols, max_cols)
    lines = math.ceil(n_cols / cols)
    chars = max(30, int(width * 72 / 5.5))  # about 5.5 pt per character at 10 pt
    titles = [textwrap.fill(str(t), chars) for t in row_titles]
    heights = [row_height * lines + 0.2 * (t.count("\n") + 1) for t in titles]
    fig = plt.figure(figsize=(width, sum(heights) + (0.4 if suptitle else 0.0)), layout="constrained")
    subs = np.atleast_1d(fig.subfigures(len(titles), 1, height_ratios=heights))
    rows = []
    for sf, t in zip(subs, titles):
        axes = np.atleast_1d(sf.subplots(lines, cols, squeeze=False).ravel())
        for ax in axes[n_cols:]:
            ax.remove()
        rows.append(axes[:n_cols])
        sf.suptitle(t, fontsize=10, x=0.01, ha="left")
    if suptitle:
        fig.suptitle(textwrap.fill(suptitle, chars), fontsize=11)
    return fig, rows


__all__ += ["RESULT_LABELS", "RUN_COLOR_KEYS", "result_series", "plot_results", "experiment_grid",
            "FIG_WIDTH", "MAX_COLS", "panel_columns", "panel_grid", "html_table"]


# ----------------------------------------------------------------------------- tables
class Table:
    """A table for a book page: an HTML table in the rendered book (myst-nb shows Markdown output
    as plain text, without tables), aligned plain text elsewhere.  Build it with :func:`html_table`."""

    def __init__(self, rows, columns, caption=None):
        self.columns = [str(c) for c in columns]
        self.rows = [[str(v) for v in r] for r in rows]
        for r in self.rows:
            if len(r) != len(self.columns):
                raise ValueError(f"a row has {len(r)} cells for {len(self.columns)} columns: {r}")
        self.caption = caption

    @staticmethod
    def _numeric(v: str) -> bool:
        try:
            float(v.replace(",", "").rstrip("%x"))
            return True
        except ValueError:
            return False

    def _repr_html_(self) -> str:
        import html
        num = [bool(self.rows) and all(self._numeric(r[j]) for r in self.rows) for j in range(len(self.columns))]
        def cell(tag, v, j):
            # numbers right-aligned; no line breaks inside a cell except in the first column (names)
            css = (["text-align:right"] if num[j] else []) + (["white-space:nowrap"] if j > 0 and tag == "td" else [])
            style = f' style="{";".join(css)}"' if css else ""
            return f"<{tag}{style}>{html.escape(v)}</{tag}>"
        head = "".join(cell("th", c, j) for j, c in enumerate(self.columns))
        body = "".join("<tr>" + "".join(cell("td", v, j) for j, v in enumerate(r)) + "</tr>" for r in self.rows)
        cap = f"<caption>{html.escape(self.caption)}</caption>" if self.caption else ""
        return (f'<div class="nclib-table" style="overflow-x:auto"><table class="table" style="font-size:0.9em">{cap}'
                f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")

    def __repr__(self) -> str:
        widths = [max(len(c), *(len(r[j]) for r in self.rows)) if self.rows else len(c)
                  for j, c in enumerate(self.columns)]
        lines = ["  ".join(c.rjust(w) for c, w in zip(self.columns, widths))]
        lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in self.rows]
        return "\n".join(([self.caption] if self.caption else []) + lines)


def html_table(rows, columns, *, caption: str | None = None) -> Table:
    """A :class:`Table` of ``rows`` (sequences of already formatted cells) under ``columns``;
    ``display`` it (or leave it last in a cell).  Numeric columns are right-aligned, and a table
    wider than the page scrolls inside its own box."""
    return Table(rows, columns, caption)
