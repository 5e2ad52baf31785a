"""The accuracy–FLOPs frontier of a sweep, from its runs' results: rows, table, plot, files.

Per label (dense, each budget or sparsity): the mean ± sample std over seeds of the
monitored metric, the means of the sparse FLOPs, FLOP ratio and nonzero parameters, the
difference to the dense baseline, and the Pareto front; written as ``frontier.csv`` /
``.json`` / ``.md`` / ``.png``, each atomically.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_sparsity._files import write_json, write_text
from lightning_sparsity._text import count, number
from lightning_sparsity.sweeps.runs import Mode

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "frontier_figure",
    "frontier_markdown",
    "frontier_rows",
    "plot_frontier",
    "write_frontier",
]


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def frontier_rows(results: Sequence[dict[str, Any]], mode: Mode = "max") -> list[dict[str, Any]]:
    """One row per label (dense, each budget or sparsity) over its seeds.

    Per row: runs done and failed; mean ± sample std (n-1) of the monitored metric; the
    means of sparse FLOPs, FLOP ratio and nonzero parameters; the dense baseline's mean
    metric and the difference to it; whether the row is on the Pareto front (no other row
    has at most its sparse FLOPs and a metric at least as good, one of the two strictly).
    """
    labels = list(dict.fromkeys(r["label"] for r in results))
    rows = []
    for label in labels:
        group = [r for r in results if r["label"] == label]
        done = [r for r in group if r["status"] == "done"]
        metric_mean, metric_std = _mean_std(
            [r["metric"] for r in done if r.get("metric") is not None]
        )
        flops = [r["flops_sparse"] for r in done]
        rows.append(
            {
                "label": label,
                "budget": group[0].get("budget"),
                "sparsity": group[0].get("sparsity"),
                "runs": len(done),
                "failed": sum(r["status"] == "failed" for r in group),
                "pending": sum(r["status"] == "missing" for r in group),
                "metric_mean": metric_mean,
                "metric_std": metric_std,
                "flops_sparse": statistics.fmean(flops) if flops else None,
                "flops_ratio": statistics.fmean(r["flops_ratio"] for r in done) if done else None,
                "params_nonzero": statistics.fmean(r["params_nonzero"] for r in done)
                if done
                else None,
            }
        )
    dense = next((r for r in rows if r["label"] == "dense"), None)
    base = None if dense is None else dense["metric_mean"]
    sign = 1.0 if mode == "max" else -1.0
    for row in rows:
        row["baseline_metric"] = base
        row["delta"] = (
            None if base is None or row["metric_mean"] is None else row["metric_mean"] - base
        )
        row["pareto"] = row["metric_mean"] is not None and not any(
            other is not row
            and other["metric_mean"] is not None
            and other["flops_sparse"] <= row["flops_sparse"]
            and sign * other["metric_mean"] >= sign * row["metric_mean"]
            and (
                other["flops_sparse"] < row["flops_sparse"]
                or sign * other["metric_mean"] > sign * row["metric_mean"]
            )
            for other in rows
        )
    return rows


def frontier_markdown(
    rows: Sequence[dict[str, Any]], failed: Sequence[dict[str, Any]], monitor: str | None
) -> str:
    """The frontier as a markdown table, failed runs listed after it."""
    name = monitor or "metric"
    head = ["run", "done", f"{name} (mean ± std)", "Δ vs dense", "sparse FLOPs", "sparse/dense"]
    lines = [
        "| " + " | ".join([*head, "nonzero params", "Pareto"]) + " |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        metric = (
            "—" if r["metric_mean"] is None else f"{r['metric_mean']:.4f} ± {r['metric_std']:.4f}"
        )
        delta = "—" if r["delta"] is None else f"{r['delta']:+.4f}"
        lines.append(
            f"| {r['label']} | {r['runs']}/{r['runs'] + r['failed'] + r['pending']} | {metric} |"
            f" {delta} |"
            f" {count(r['flops_sparse'], none='—')} | {number(r['flops_ratio'], '.4g', none='—')} |"
            f" {count(r['params_nonzero'], none='—')} | {'yes' if r['pareto'] else ''} |"
        )
    for r in failed:
        lines.append("")
        if r["status"] == "missing":
            lines.append(f"Not run yet: {r['name']}")
        else:
            lines.append(f"Failed: {r['name']}: {r.get('error', '?')}")
    return "\n".join(lines) + "\n"


def _bounds(rows: Sequence[dict[str, Any]]) -> tuple[float, float]:
    """The metric's range: ``[0, 1]`` sides for a metric all of whose means are fractions."""
    means = [r["metric_mean"] for r in rows if r["metric_mean"] is not None]
    low = 0.0 if means and min(means) >= 0 else -math.inf
    high = 1.0 if means and max(means) <= 1 else math.inf
    return low, high


def _clipped(rows: Sequence[dict[str, Any]], low: float, high: float) -> list[list[float]]:
    """Error bars (below, above) of mean ± std that stay in ``[low, high]``."""
    below = [min(r["metric_std"], r["metric_mean"] - low) for r in rows]
    above = [min(r["metric_std"], high - r["metric_mean"]) for r in rows]
    return [below, above]


def frontier_figure(rows: Sequence[dict[str, Any]], monitor: str | None, mode: Mode) -> Figure:
    """The figure of :func:`plot_frontier` (matplotlib objects, to read back in tests)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), constrained_layout=True)
    name = monitor or "metric"
    done = [r for r in rows if r["metric_mean"] is not None and r["flops_sparse"]]
    low, high = _bounds(done)
    pruned = [r for r in done if r["label"] != "dense"]
    ax.errorbar(
        [r["flops_sparse"] for r in pruned],
        [r["metric_mean"] for r in pruned],
        yerr=_clipped(pruned, low, high),
        fmt="o",
        capsize=3,
        label="budgets (mean ± std over seeds)",
    )
    for r in pruned:
        ax.annotate(
            r["label"],
            (r["flops_sparse"], r["metric_mean"]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
        )
    dense = [r for r in done if r["label"] == "dense"]
    if dense:
        ax.axhline(
            dense[0]["metric_mean"], linestyle=":", color="black", linewidth=1,
            label=f"dense reference ({name} {dense[0]['metric_mean']:.4f})",
        )  # fmt: skip
        ax.errorbar(
            [dense[0]["flops_sparse"]], [dense[0]["metric_mean"]],
            yerr=_clipped(dense[:1], low, high), fmt="s", color="black", capsize=3,
            label="dense baseline",
        )  # fmt: skip
    front = sorted((r for r in done if r["pareto"]), key=lambda r: r["flops_sparse"])
    if len(front) > 1:
        ax.plot(
            [r["flops_sparse"] for r in front],
            [r["metric_mean"] for r in front],
            "--",
            color="tab:red",
            label="Pareto front",
        )
    ax.set_xscale("log")
    better = "higher" if mode == "max" else "lower"
    ax.set(xlabel="sparse FLOPs per example (log)", ylabel=f"{name} ({better} is better)")
    ax.set_title("accuracy–FLOPs frontier")
    ax.legend(fontsize=8)
    return fig


def plot_frontier(
    rows: Sequence[dict[str, Any]], path: Path, monitor: str | None, mode: Mode
) -> None:
    """Metric against sparse FLOPs (log x), the dense point and reference line, the front.

    Error bars are mean ± std over seeds, clipped to the metric's range (see ``_bounds``).
    """
    import matplotlib.pyplot as plt

    fig = frontier_figure(rows, monitor, mode)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def write_frontier(
    root: str | Path, results: Sequence[dict[str, Any]], monitor: str | None, mode: Mode
) -> list[dict[str, Any]]:
    """``frontier.csv`` / ``.json`` / ``.md`` / ``.png`` in ``root``, each written atomically."""
    import csv
    import io

    root = Path(root)
    rows = frontier_rows(results, mode)
    failed = [r for r in results if r["status"] != "done"]
    write_json(
        root / "frontier.json",
        {"monitor": monitor, "mode": mode, "rows": rows, "runs": list(results)},
    )
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=list(rows[0]) if rows else ["label"], lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows(rows)
    for name, text in (
        ("frontier.csv", buffer.getvalue()),
        ("frontier.md", frontier_markdown(rows, failed, monitor)),
    ):
        write_text(root / name, text)
    if any(r["metric_mean"] is not None for r in rows):
        plot_frontier(rows, root / "frontier.png", monitor, mode)
    return rows
