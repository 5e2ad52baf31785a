"""The accuracy–FLOPs frontier of a sweep, from its runs' results: rows, table, plot, files.

Per label (dense, each budget or sparsity; in a sweep across criteria each (criterion,
budget)): the mean ± sample std over seeds of the monitored metric, the means of the sparse
FLOPs, FLOP ratio, nonzero parameters and total training FLOPs (and those over the dense
baseline run's), the difference to the dense baseline, and the Pareto front; written as
``frontier.csv`` / ``.json`` / ``.md`` / ``.png``, each atomically.
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


def _mean(done: Sequence[dict[str, Any]], key: str) -> float | None:
    """The mean of ``key`` over runs that recorded it (``None``: none did)."""
    values = [r[key] for r in done if r.get(key) is not None]
    return statistics.fmean(values) if values else None


def _method(row: dict[str, Any]) -> str | None:
    """A row's (or run's) pruning criterion in a sweep across criteria; ``None``: not one."""
    score = row.get("score")
    return None if score in (None, "none") else str(score)


def frontier_rows(results: Sequence[dict[str, Any]], mode: Mode = "max") -> list[dict[str, Any]]:
    """One row per label (dense, each budget or sparsity) over its seeds.

    Per row: runs done and failed; mean ± sample std (n-1) of the monitored metric; the
    means of sparse FLOPs, FLOP ratio, nonzero parameters and total training FLOPs (the
    fit's, sparse), that over the dense baseline run's total (``train_flops_ratio``); the
    dense baseline's mean metric and the difference to it; whether the row is on the Pareto
    front (no other row has at most its sparse FLOPs and a metric at least as good, one of the
    two strictly). In a sweep across criteria (runs with a ``score``) each row's ``score``
    follows its label (``"none"`` for the dense row).
    """
    labels = list(dict.fromkeys(r["label"] for r in results))
    scored = any("score" in r for r in results)
    rows = []
    for label in labels:
        group = [r for r in results if r["label"] == label]
        done = [r for r in group if r["status"] == "done"]
        metric_mean, metric_std = _mean_std(
            [r["metric"] for r in done if r.get("metric") is not None]
        )
        row: dict[str, Any] = {"label": label}
        if scored:
            row["score"] = group[0].get("score")
        rows.append(
            {
                **row,
                "budget": group[0].get("budget"),
                "sparsity": group[0].get("sparsity"),
                "runs": len(done),
                "failed": sum(r["status"] == "failed" for r in group),
                "pending": sum(r["status"] == "missing" for r in group),
                "metric_mean": metric_mean,
                "metric_std": metric_std,
                "flops_sparse": _mean(done, "flops_sparse"),
                "flops_ratio": _mean(done, "flops_ratio"),
                "params_nonzero": _mean(done, "params_nonzero"),
                "train_flops_total": _mean(done, "train_flops_total"),
            }
        )
    dense = next((r for r in rows if r["label"] == "dense"), None)
    base = None if dense is None else dense["metric_mean"]
    base_train = None if dense is None else dense["train_flops_total"]
    sign = 1.0 if mode == "max" else -1.0
    for row in rows:
        train = row["train_flops_total"]
        row["train_flops_ratio"] = None if train is None or not base_train else train / base_train
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
    head += ["nonzero params", "training FLOPs", "training/dense", "Pareto"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        metric = (
            "—" if r["metric_mean"] is None else f"{r['metric_mean']:.4f} ± {r['metric_std']:.4f}"
        )
        delta = "—" if r["delta"] is None else f"{r['delta']:+.4f}"
        lines.append(
            f"| {r['label']} | {r['runs']}/{r['runs'] + r['failed'] + r['pending']} | {metric} |"
            f" {delta} |"
            f" {count(r['flops_sparse'], none='—')} | {number(r['flops_ratio'], '.4g', none='—')} |"
            f" {count(r['params_nonzero'], none='—')} |"
            f" {count(r.get('train_flops_total'), none='—')} |"
            f" {number(r.get('train_flops_ratio'), '.4g', none='—')} |"
            f" {'yes' if r['pareto'] else ''} |"
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


#: one colour per criterion: the default cycle without tab:red (the Pareto front's)
_COLOURS = ("C0", "C1", "C2", "C4", "C5", "C6", "C8", "C9")


def _series(pruned: Sequence[dict[str, Any]]) -> list[tuple[str | None, list[dict[str, Any]]]]:
    """The pruned rows per criterion, in order of first appearance (one ``None``: no axis)."""
    methods = list(dict.fromkeys(_method(r) for r in pruned))
    return [(m, [r for r in pruned if _method(r) == m]) for m in methods]


def _panel(ax: Any, done: Sequence[dict[str, Any]], x: str, name: str, *, front: bool) -> None:
    """Metric against ``x`` (a row key, log axis): one series per criterion, dense, front."""
    low, high = _bounds(done)
    pruned = [r for r in done if r["label"] != "dense"]
    for i, (criterion, rows) in enumerate(_series(pruned)):
        rows = sorted(rows, key=lambda r: r[x]) if criterion is not None else rows
        ax.errorbar(
            [r[x] for r in rows],
            [r["metric_mean"] for r in rows],
            yerr=_clipped(rows, low, high),
            fmt="o" if criterion is None else "o-",  # a line per criterion
            color=None if criterion is None else _COLOURS[i % len(_COLOURS)],
            capsize=3,
            label=f"{criterion or 'budgets'} (mean ± std over seeds)",
        )
        for r in rows:
            ax.annotate(
                r["label"].removeprefix(f"{criterion} ") if criterion else r["label"],
                (r[x], r["metric_mean"]),
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
            [dense[0][x]], [dense[0]["metric_mean"]],
            yerr=_clipped(dense[:1], low, high), fmt="s", color="black", capsize=3,
            label="dense baseline",
        )  # fmt: skip
    on_front = sorted((r for r in done if r["pareto"]), key=lambda r: r[x])
    if front and len(on_front) > 1:
        ax.plot(
            [r[x] for r in on_front],
            [r["metric_mean"] for r in on_front],
            "--",
            color="tab:red",
            label="Pareto front",
        )
    ax.set_xscale("log")
    ax.legend(fontsize=8)


def frontier_figure(rows: Sequence[dict[str, Any]], monitor: str | None, mode: Mode) -> Figure:
    """The figure of :func:`plot_frontier` (matplotlib objects, to read back in tests).

    The first panel: the metric against sparse FLOPs per example; the second, when the runs
    recorded their training FLOPs: against each run's total training FLOPs.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    name = monitor or "metric"
    done = [r for r in rows if r["metric_mean"] is not None and r["flops_sparse"]]
    trained = [r for r in done if r.get("train_flops_total")]
    size = (12.0, 4.4) if trained else (6.4, 4.4)
    fig, axes = plt.subplots(1, 2 if trained else 1, figsize=size, constrained_layout=True)
    axes = list(axes) if trained else [axes]
    better = "higher" if mode == "max" else "lower"
    _panel(axes[0], done, "flops_sparse", name, front=True)
    axes[0].set(xlabel="sparse FLOPs per example (log)", ylabel=f"{name} ({better} is better)")
    axes[0].set_title("accuracy–FLOPs frontier")
    if trained:
        _panel(axes[1], trained, "train_flops_total", name, front=False)
        axes[1].set(
            xlabel="total training FLOPs of the run (log)", ylabel=f"{name} ({better} is better)"
        )
        axes[1].set_title("accuracy against training compute")
    return fig


def plot_frontier(
    rows: Sequence[dict[str, Any]], path: Path, monitor: str | None, mode: Mode
) -> None:
    """Metric against sparse FLOPs (log x), the dense point and reference line, the front.

    Beside it (runs that recorded training FLOPs) the metric against total training FLOPs.
    One series per pruning criterion in a sweep across criteria (a line through its
    budgets, its own colour). Error bars are mean ± std over seeds, clipped to the metric's
    range (see ``_bounds``).
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
