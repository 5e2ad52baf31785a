"""The PNG plots read back as matplotlib objects: titles, named lines, marks, error bars."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest

from lightning_sparsity.control.controller import HistoryPoint
from lightning_sparsity.loggers.history import history_figure
from lightning_sparsity.sweeps.frontier import frontier_figure

DENSE = 1000


def point(epoch: int, sparse: int, realizable: int, **budget: object) -> HistoryPoint:
    return HistoryPoint(
        epoch=epoch, step=epoch, global_step=10 * epoch, per="example", flops=DENSE,
        flops_sparse=sparse, params=100, params_nonzero=100 - epoch * 10,
        flops_realizable=realizable, **budget,  # type: ignore[arg-type]
    )  # fmt: skip


# a budget run: the schedule lands on the limit (200) at epoch 2, the masks freeze at 3
HISTORY = [
    point(0, 1000, 1000, budget_count="sparse", budget_limit=200, budget_scheduled=1000),
    point(1, 500, 1000, budget_count="sparse", budget_limit=200, budget_scheduled=500),
    point(2, 200, 600, budget_count="sparse", budget_limit=200, budget_scheduled=200),
    point(3, 200, 600, budget_count="sparse", budget_limit=200, pruning="frozen"),
]


def labels(ax: plt.Axes) -> dict[str, plt.Line2D]:
    return {line.get_label(): line for line in ax.get_lines()}


def test_sparsity_curves_name_the_run_and_draw_realizable_flops_deadline_and_metric() -> None:
    val_acc = [(10, 0.5), (20, 0.8), (30, 0.9)]  # logged at global steps 10, 20, 30
    fig = history_figure(HISTORY, title="runs/budget20%_seed0", metrics={"val_acc": val_acc})
    try:
        assert fig.get_suptitle().startswith("runs/budget20%_seed0: sparse/dense FLOPs 0.200")
        flops, sparsity, metric = fig.axes
        lines = labels(flops)
        # realizable was invisible: a 2:4 run's main result
        assert list(lines["realizable"].get_ydata()) == [1000, 1000, 600, 600]
        assert list(lines["sparse"].get_ydata()) == [1000, 500, 200, 200]
        # the deadline where the schedule reaches the limit, the freeze where the masks froze
        assert lines["budget deadline"].get_xdata()[0] == 2
        assert lines["masks frozen"].get_xdata()[0] == 3
        assert "budget deadline" in labels(sparsity)
        # the metric on the same axis as the curves: global steps 10, 20, 30 are epochs 1-3
        assert metric.get_title() == "monitored metric"
        line = labels(metric)["val_acc"]
        assert list(line.get_xdata()) == [1.0, 2.0, 3.0]
        assert list(line.get_ydata()) == [0.5, 0.8, 0.9]
        assert {t.get_text() for t in flops.get_legend().get_texts()} >= {"dense", "realizable"}
    finally:
        plt.close(fig)


def test_a_given_deadline_is_marked_and_no_metric_means_two_panels() -> None:
    fig = history_figure(HISTORY[:2], title="demo/version_0", deadline=7)
    try:
        assert len(fig.axes) == 2
        assert labels(fig.axes[0])["budget deadline"].get_xdata()[0] == 7
        assert "masks frozen" not in labels(fig.axes[0])
    finally:
        plt.close(fig)


def test_training_flops_spent_get_a_panel_with_their_budget() -> None:
    """A training-compute budget of 5,000: the running totals and the limit on the second
    panel; the sparsity panel moves to third."""
    spent = [(0, 0), (2000, 2000), (3600, 4000), (4800, 6000)]
    budget = {"budget_count": "train", "budget_limit": 5000}
    points = [
        point(e, DENSE, DENSE, train_flops_total=sparse, train_flops_dense_total=dense, **budget)
        for e, (sparse, dense) in enumerate(spent)
    ]
    fig = history_figure(points, title="demo/version_0")
    try:
        flops, training, sparsity = fig.axes
        assert training.get_title() == "training FLOPs spent"
        lines = labels(training)
        assert list(lines["sparse"].get_ydata()) == [s for s, _ in spent]
        assert list(lines["dense"].get_ydata()) == [d for _, d in spent]
        assert list(lines["budget"].get_ydata()) == [5000] * 4
        assert "budget" not in labels(flops)  # not a budget on a forward's FLOPs
        assert sparsity.get_title() == "sparsity"
    finally:
        plt.close(fig)


def row(label: str, flops: float, mean: float, std: float, pareto: bool = True) -> dict:
    return {"label": label, "flops_sparse": flops, "metric_mean": mean, "metric_std": std,
            "pareto": pareto}  # fmt: skip


def test_frontier_has_a_dense_reference_line_and_error_bars_inside_the_metric_range() -> None:
    rows = [row("dense", 1000, 0.98, 0.0, False), row("50%", 500, 0.99, 0.004),
            row("5%", 50, 0.9792, 0.0216)]  # fmt: skip
    fig = frontier_figure(rows, "val_acc", "max")
    try:
        (ax,) = fig.axes
        reference = labels(ax)["dense reference (val_acc 0.9800)"]
        assert list(reference.get_ydata()) == [0.98, 0.98]
        assert list(reference.get_xdata()) == [0, 1]  # across the axis
        # 0.9792 + 0.0216 = 1.0008 > 1: the bar stops at 1; the lower side stays 0.9576
        bars = ax.containers[0]
        (segments,) = bars.lines[2]
        ends = np.array([s[:, 1] for s in segments.get_segments()])
        assert ends[:, 1].max() == pytest.approx(1.0)
        assert ends[1, 0] == pytest.approx(0.9792 - 0.0216)
    finally:
        plt.close(fig)
