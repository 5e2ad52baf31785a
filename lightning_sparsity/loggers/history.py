"""Per-epoch history files and the PNG plot, written so a crash keeps what was finished.

The CSV is appended and flushed once per point (a crashed process leaves every finished
row; no fsync, which costs more than the whole recount); the JSON is replaced atomically.
Both hold the same rows. Knows nothing of Lightning.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_sparsity._files import write_json
from lightning_sparsity._text import si

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from lightning_sparsity.control.controller import HistoryPoint

__all__ = [
    "HistoryWriter",
    "history_figure",
    "metric_series",
    "plot_history",
    "training_line",
    "training_ratio",
]


class HistoryWriter:
    """Keeps ``history.csv`` / ``history.json`` in ``directory`` equal to the points given.

    Args:
        directory: where the files go (created when first written).
        stem: file name stem.
    """

    def __init__(self, directory: str | Path, stem: str = "sparsity_history") -> None:
        self.directory = Path(directory)
        self.csv_path = self.directory / f"{stem}.csv"
        self.json_path = self.directory / f"{stem}.json"
        self._written = 0
        self._columns: list[str] | None = None

    def write(self, points: Sequence[HistoryPoint]) -> None:
        """Bring both files up to ``points`` (all points so far, oldest first)."""
        if not points:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        rows = [point.to_dict() for point in points]
        columns = list(rows[0])
        fresh = columns != self._columns or not self.csv_path.exists()
        start = 0 if fresh else self._written
        with self.csv_path.open("w" if fresh else "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
            if fresh:
                writer.writeheader()
            writer.writerows(rows[start:])
            f.flush()
        self._written, self._columns = len(rows), columns
        write_json(self.json_path, rows)


def metric_series(
    directory: str | Path, names: Sequence[str] | None = None
) -> dict[str, list[tuple[int, float]]]:
    """Scalars a run logged to TensorBoard in ``directory``: name -> ``(step, value)``.

    Args:
        directory: the run's log directory (its own event files, not its subdirectories).
        names: the tags to read; ``None``: every tag that starts with ``val`` (the metrics
            a fit monitors), for a run read back from its files alone.

    Returns:
        The series found (none where tensorboard is not installed or nothing was logged).
    """
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:  # pragma: no cover - tensorboard comes with the Lightning loggers
        return {}
    accumulator = EventAccumulator(str(directory), size_guidance={"scalars": 0})
    accumulator.Reload()
    tags = accumulator.Tags().get("scalars", [])
    wanted = [t for t in tags if t.startswith("val")] if names is None else list(names)
    return {
        tag: [(int(e.step), float(e.value)) for e in accumulator.Scalars(tag)]
        for tag in wanted
        if tag in tags
    }


def _on_axis(points: Sequence[HistoryPoint], series: Sequence[tuple[int, float]]) -> list[float]:
    """The global steps of ``series`` as the points' x values (interpolated between points)."""
    import numpy as np

    known = [(p.global_step, p.step) for p in points if p.global_step is not None]
    if len(known) < 2:
        return [float(s) for s, _ in series]
    steps, xs = zip(*sorted(known), strict=True)
    return [float(x) for x in np.interp([s for s, _ in series], steps, xs)]


def _deadline_x(points: Sequence[HistoryPoint], deadline: int | None) -> float | None:
    """The budget's deadline on the x axis: given (in epochs), or where the schedule lands."""
    if deadline is not None:
        at = [p.step for p in points if p.epoch == deadline]
        if at:
            return float(at[0])
        return float(deadline) if all(p.step == p.epoch for p in points) else None
    landed = (
        p.step
        for p in points
        if p.budget_scheduled is not None
        and p.budget_limit is not None
        and p.budget_scheduled <= p.budget_limit * (1 + 1e-9)
    )
    at_limit = next(landed, None)
    return None if at_limit is None else float(at_limit)


def _training_panel(ax: Any, points: Sequence[HistoryPoint], x: list[int], xlabel: str) -> None:
    """The training FLOPs spent since the fit began, sparse and dense, and their budget."""
    ax.plot(x, [p.train_flops_dense_total for p in points], "--", color="grey", label="dense")
    ax.plot(x, [p.train_flops_total for p in points], "o-", color="tab:blue", label="sparse")
    limit = [p.budget_limit if p.budget_count == "train" else None for p in points]
    if any(v is not None for v in limit):
        ax.plot(x, limit, ":", color="red", label="budget")
    ax.set(xlabel=xlabel, ylabel="FLOPs, all examples", title="training FLOPs spent")
    ax.set_ylim(bottom=0)


def history_figure(
    points: Sequence[HistoryPoint],
    *,
    title: str,
    deadline: int | None = None,
    metrics: Mapping[str, Sequence[tuple[int, float]]] | None = None,
) -> Figure:
    """The figure of :func:`plot_history` (matplotlib objects: labels and lines to read back).

    Panels: FLOPs (dense, sparse, realizable, the budget and its schedule), the training
    FLOPs spent so far (sparse and dense, and a budget on them) where they were counted,
    sparsity, and the monitored metrics (``metrics``, or the guard's value) where there are
    any; the budget's deadline and the point the masks froze are marked on each panel.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    x = [p.step for p in points]
    xlabel = "epochs completed" if all(p.step == p.epoch for p in points) else "global step"
    series = dict(metrics or {})
    guarded = [(p.step, p.guard_value) for p in points if p.guard_value is not None]
    trained = any(p.train_flops_total for p in points)
    panels = 2 + trained + bool(series or guarded)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), constrained_layout=True)
    ax_flops, ax_sparsity = axes[0], axes[1 + trained]
    # dense over realizable: they are one line until a kernel realizes a pattern
    ax_flops.plot(x, [p.flops for p in points], "--", color="grey", label="dense", zorder=3)
    ax_flops.plot(x, [p.flops_sparse for p in points], "o-", color="tab:blue", label="sparse")
    realizable = [p.flops_realizable for p in points]
    if any(r is not None for r in realizable):
        ax_flops.plot(
            x, realizable, "s-", color="tab:green", markerfacecolor="none", label="realizable"
        )
    budget = [p.budget_limit if p.budget_count in ("sparse", "effective") else None for p in points]
    if any(b is not None for b in budget):
        ax_flops.plot(x, budget, ":", color="red", label="budget")
    scheduled = [p.budget_scheduled for p in points]
    if any(s is not None for s in scheduled):
        ax_flops.plot(x, scheduled, "x:", color="darkred", label="budget schedule")
    ax_flops.set(xlabel=xlabel, ylabel=f"FLOPs per {points[0].per}", title="FLOPs")
    ax_flops.set_ylim(bottom=0)
    if trained:
        _training_panel(axes[1], points, x, xlabel)
    ax_sparsity.plot(x, [p.param_sparsity for p in points], "o-", label="all parameters")
    pruned = [p.pruned_sparsity for p in points]
    if any(v is not None for v in pruned):
        ax_sparsity.plot(x, pruned, "^-", label="pruned weights")
    targets = [p.target_sparsity for p in points]
    if any(t is not None for t in targets):
        ax_sparsity.plot(x, targets, ":", label="schedule target")
    ax_sparsity.plot(x, [1 - p.flops_ratio for p in points], "s-", label="FLOPs removed (fraction)")
    ax_sparsity.set(xlabel=xlabel, ylabel="sparsity", ylim=(0, 1), title="sparsity")
    if series or guarded:
        ax_metric = axes[-1]
        for name, values in series.items():
            ax_metric.plot(_on_axis(points, values), [v for _, v in values], "o-", label=name)
        if not series:
            ax_metric.plot(*zip(*guarded, strict=True), "o-", label="guarded metric")
        ax_metric.set(xlabel=xlabel, ylabel="metric", title="monitored metric")
    marks = []
    at = _deadline_x(points, deadline)
    if at is not None:
        marks.append((at, "budget deadline", "red"))
    frozen = next((p.step for p in points if p.pruning == "frozen"), None)
    if frozen is not None:
        marks.append((float(frozen), "masks frozen", "purple"))
    for ax in axes:
        for where, label, color in marks:
            ax.axvline(where, linestyle="-.", linewidth=1, color=color, alpha=0.6, label=label)
        ax.legend(fontsize=8)
    last = points[-1]
    fig.suptitle(
        f"{title}: sparse/dense FLOPs {last.flops_ratio:.3f}, parameter sparsity"
        f" {last.param_sparsity:.3f} after {last.epoch} epochs"
    )
    return fig


def plot_history(
    points: Sequence[HistoryPoint],
    path: str | Path,
    *,
    title: str | None = None,
    deadline: int | None = None,
    metrics: Mapping[str, Sequence[tuple[int, float]]] | None = None,
) -> Path:
    """A PNG of the run's FLOPs, sparsity and monitored metrics against the x axis.

    Args:
        points: the history.
        path: the PNG to write.
        title: the run's name (``None``: the last two folders of ``path``, e.g.
            ``demo/version_0``).
        deadline: the budget's ``by_epoch`` (``None``: where its schedule reaches the limit).
        metrics: monitored metrics, name -> ``(global_step, value)`` (see
            :func:`metric_series`), drawn on a third panel.

    Returns:
        The path written.
    """
    import matplotlib.pyplot as plt

    path = Path(path)
    name = title or "/".join(path.resolve().parent.parts[-2:])
    fig = history_figure(points, title=name, deadline=deadline, metrics=metrics)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def training_ratio(last: HistoryPoint) -> float | None:
    """The fit's sparse training FLOPs over its dense ones (``None``: not counted, or none)."""
    sparse, dense = last.train_flops_total, last.train_flops_dense_total
    return None if sparse is None or not dense else sparse / dense


def training_line(last: HistoryPoint) -> str:
    """The fit's training FLOPs, a paragraph under the report's table ("" if not counted)."""
    if last.train_flops_total is None:
        return ""
    ratio = training_ratio(last)
    of_dense = "" if ratio is None else f" ({ratio:.3f} of dense)"
    return (
        f"\n\nTraining FLOPs of the fit (every training example's forward and backward, over"
        f" {last.epoch} epochs): sparse {si(last.train_flops_total)},"
        f" dense {si(last.train_flops_dense_total)}{of_dense}."
    )
