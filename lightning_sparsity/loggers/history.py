"""Per-epoch history files and the PNG plot, written so a crash keeps what was finished.

The CSV is appended and flushed once per point (a crashed process leaves every finished
row; no fsync, which costs more than the whole recount); the JSON is replaced atomically.
Both hold the same rows. Knows nothing of Lightning.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["HistoryWriter", "plot_history"]


class HistoryWriter:
    """Keeps ``history.csv`` / ``history.json`` in ``directory`` equal to the rows given.

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

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        """Bring both files up to ``rows`` (all rows so far, oldest first)."""
        if not rows:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        columns = list(rows[0])
        for row in rows[1:]:
            columns += [key for key in row if key not in columns]
        fresh = columns != self._columns or not self.csv_path.exists()
        start = 0 if fresh else self._written
        with self.csv_path.open("w" if fresh else "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
            if fresh:
                writer.writeheader()
            writer.writerows(rows[start:])
            f.flush()
        self._written, self._columns = len(rows), columns
        tmp = self.json_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(list(rows), indent=1) + "\n")
        os.replace(tmp, self.json_path)


def plot_history(
    rows: Sequence[dict[str, Any]], path: str | Path, *, budget_key: str = "budget_flops"
) -> Path:
    """A PNG of FLOPs (dense, sparse, budget if any) and sparsity against the epoch.

    Args:
        rows: history rows with ``epoch``, ``flops``, ``flops_sparse``, ``param_sparsity``
            and optionally ``target_sparsity`` and ``budget_key``.
        path: the PNG to write.
        budget_key: the row key of the FLOP budget line.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    x = [row["step"] for row in rows]
    fig, (ax_flops, ax_sparsity) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    ax_flops.plot(x, [row["flops"] for row in rows], "--", color="grey", label="dense")
    ax_flops.plot(x, [row["flops_sparse"] for row in rows], "o-", label="sparse")
    budget = [row.get(budget_key) for row in rows]
    if any(b is not None for b in budget):
        ax_flops.plot(x, budget, ":", color="red", label="budget")
    ax_flops.set(xlabel="epochs completed", ylabel=f"FLOPs per {rows[0].get('per', 'example')}")
    ax_flops.set_ylim(bottom=0)
    ax_flops.legend()
    ax_sparsity.plot(x, [row["param_sparsity"] for row in rows], "o-", label="all parameters")
    pruned = [row.get("pruned_sparsity") for row in rows]
    if any(p is not None for p in pruned):
        ax_sparsity.plot(x, pruned, "^-", label="pruned weights")
    targets = [row.get("target_sparsity") for row in rows]
    if any(t is not None for t in targets):
        ax_sparsity.plot(x, targets, ":", label="schedule target")
    ax_sparsity.plot(
        x, [1 - row["flops_ratio"] for row in rows], "s-", label="FLOPs removed (fraction)"
    )
    ax_sparsity.set(xlabel="epochs completed", ylabel="sparsity", ylim=(0, 1))
    ax_sparsity.legend()
    fig.suptitle("lightning_sparsity")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
