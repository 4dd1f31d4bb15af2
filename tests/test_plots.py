"""Tests of nclib.plots: the experiment-result helpers (plot_results, result_series)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from nclib import plots  # noqa: E402


def _res(nc1, acc, test_acc=None):
    n = len(nc1)
    return {"history": {"epoch": list(range(1, n + 1)), "nc1": list(nc1), "nc2": [0.5] * n,
                        "train_acc": list(acc), "test_acc": list(test_acc or acc)}}


def test_result_series_by_hand():
    r = _res([1.0, 0.1, 0.01], [0.5, 0.9, 1.0], [0.4, 0.8, 0.85])
    x, y = plots.result_series(r, "train_err")
    assert x.tolist() == [1, 2, 3] and y == pytest.approx([50.0, 10.0, 0.0])
    assert plots.result_series(r, "test_acc")[1] == pytest.approx([40.0, 80.0, 85.0])
    assert plots.result_series(r, "nc1")[1].tolist() == [1.0, 0.1, 0.01]
    with pytest.raises(ValueError, match="unknown history key 'nc9'"):
        plots.result_series(r, "nc9")


def test_plot_results_draws_the_history():
    runs = {"SGD": _res([1.0, 0.1, 0.0], [0.5, 0.9, 1.0]), "run b": _res([2.0, 0.2, 0.02], [0.1, 0.2, 0.3])}
    fig, axes = plt.subplots(1, 3)
    plots.plot_results(axes, runs, metrics=("nc1", "nc2", "train_err"), color_keys={"SGD": "sgd"}, title="t")
    assert axes[0].get_yscale() == "log" and axes[1].get_yscale() == "linear"
    lines = axes[0].get_lines()
    assert [ln.get_label() for ln in lines] == ["SGD", "run b"]
    assert lines[0].get_color() == plots.COLORS["sgd"]
    y0 = lines[0].get_ydata()
    assert y0[:2].tolist() == [1.0, 0.1] and np.isnan(y0[2])  # 0 cannot sit on a log axis
    assert axes[2].get_lines()[1].get_ydata() == pytest.approx([90.0, 80.0, 70.0])
    assert axes[2].get_ylabel() == "training error (%)" and axes[0].get_xlabel() == "epoch"
    assert axes[0].get_legend() is not None and axes[0].get_title(loc="left") == "t"
    plt.close(fig)
    with pytest.raises(ValueError, match="2 axes for 3 metrics"):
        plots.plot_results(plt.subplots(1, 2)[1], runs, metrics=("nc1", "nc2", "nc3"))
    plt.close("all")
    lb = dict(_res([1.0, 0.1], [0.5, 1.0]), config={"optimizer": "lbfgs"})  # an epoch of L-BFGS is one step
    fig, ax = plt.subplots(1, 1)
    plots.plot_results([ax], {"L-BFGS": lb}, metrics=("nc1",))
    assert ax.get_xlabel() == "epoch (L-BFGS: step)"
    plt.close(fig)


def test_experiment_grid():
    fig, rows = plots.experiment_grid(["row A", "row B"], 3, suptitle="Figure X")
    assert len(rows) == 2 and all(len(r) == 3 for r in rows)
    assert [sf.get_suptitle() for sf in fig.subfigs] == ["row A", "row B"]
    assert fig.get_suptitle() == "Figure X"
    assert len(fig.get_axes()) == 6
    plt.close(fig)
    with pytest.raises(ValueError):
        plots.experiment_grid([])


def test_experiment_grid_wraps_to_readable_rows():
    fig, rows = plots.experiment_grid(["a " * 80, "b"], 4)
    assert [len(r) for r in rows] == [4, 4] and len(fig.get_axes()) == 8
    assert plots.panel_columns(fig) == plots.MAX_COLS == 2          # 4 metrics -> 2 x 2 per block
    assert fig.get_size_inches()[0] == plots.FIG_WIDTH
    assert "\n" in fig.subfigs[0].get_suptitle()                     # the long title is wrapped
    plt.close(fig)
    fig, rows = plots.experiment_grid(["x"], 3, max_cols=3, width=9)
    assert plots.panel_columns(fig) == 3 and fig.get_size_inches()[0] == 9
    plt.close(fig)


def test_panel_grid_and_columns():
    fig, axes = plots.panel_grid(5)
    assert len(axes) == 5 and len(fig.get_axes()) == 5 and plots.panel_columns(fig) == 2
    plt.close(fig)
    fig, axes = plt.subplots(2, 3)
    fig.colorbar(axes[0, 0].imshow(np.eye(2)), ax=axes)              # a colour bar is not a panel
    assert plots.panel_columns(fig) == 3
    plt.close(fig)
    with pytest.raises(ValueError, match="n >= 1"):
        plots.panel_grid(0)


def test_html_table():
    t = plots.html_table([["a<b", "1.5"], ["c", "2e-3"]], ["name", "value"], caption="cap")
    h = t._repr_html_()
    assert "<th>name</th>" in h and '<th style="text-align:right">value</th>' in h
    assert "<td>a&lt;b</td>" in h and '<td style="text-align:right;white-space:nowrap">2e-3</td>' in h
    assert "<caption>cap</caption>" in h and "overflow-x:auto" in h
    assert repr(t).splitlines() == ["cap", "name  value", " a<b    1.5", "   c   2e-3"]
    with pytest.raises(ValueError, match="1 cells for 2 columns"):
        plots.html_table([["x"]], ["a", "b"])
