"""Per-epoch history files and the PNG plot, written so a crash keeps what was finished.

The CSV is appended and flushed once per point (a crashed process leaves every finished
row; no fsync, which costs more than the whole recount); the JSON is replaced atomically.
Both hold the same rows. Knows nothing of Lightning.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lightning_sparsity._files import write_json

if TYPE_CHECKING:
    from lightning_sparsity.control.controller import HistoryPoint

__all__ = ["HistoryWriter", "plot_history"]


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


def plot_history(points: Sequence[HistoryPoint], path: str | Path) -> Path:
    """A PNG of FLOPs (dense, sparse, budget if on FLOPs) and sparsity against the x axis.

    Args:
        points: the history.
        path: the PNG to write.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    x = [p.step for p in points]
    xlabel = "epochs completed" if all(p.step == p.epoch for p in points) else "global step"
    fig, (ax_flops, ax_sparsity) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    ax_flops.plot(x, [p.flops for p in points], "--", color="grey", label="dense")
    ax_flops.plot(x, [p.flops_sparse for p in points], "o-", label="sparse")
    budget = [p.budget_limit if p.budget_count in ("sparse", "effective") else None for p in points]
    if any(b is not None for b in budget):
        ax_flops.plot(x, budget, ":", color="red", label="budget")
    scheduled = [p.budget_scheduled for p in points]
    if any(s is not None for s in scheduled):
        ax_flops.plot(x, scheduled, "x:", color="darkred", label="budget schedule")
    ax_flops.set(xlabel=xlabel, ylabel=f"FLOPs per {points[0].per}")
    ax_flops.set_ylim(bottom=0)
    ax_flops.legend()
    ax_sparsity.plot(x, [p.param_sparsity for p in points], "o-", label="all parameters")
    pruned = [p.pruned_sparsity for p in points]
    if any(v is not None for v in pruned):
        ax_sparsity.plot(x, pruned, "^-", label="pruned weights")
    targets = [p.target_sparsity for p in points]
    if any(t is not None for t in targets):
        ax_sparsity.plot(x, targets, ":", label="schedule target")
    ax_sparsity.plot(x, [1 - p.flops_ratio for p in points], "s-", label="FLOPs removed (fraction)")
    ax_sparsity.set(xlabel=xlabel, ylabel="sparsity", ylim=(0, 1))
    ax_sparsity.legend()
    fig.suptitle("lightning_sparsity")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
