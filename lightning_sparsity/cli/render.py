"""``lightning-sparsity report LOGDIR``: the files of a sweep or a run, rendered again from disk.

Two kinds of LOGDIR:

* a sweep's output (``sweep.json`` and ``runs/*/sweep_run.json``): ``frontier.csv`` /
  ``.json`` / ``.md`` / ``.png`` are written again from the runs' results, exactly as the sweep
  writes them (:func:`lightning_sparsity.sweeps.frontier.write_frontier`);
* one run's log directory (``sparsity_history.json``, written after every epoch, and
  ``sparsity_report.json`` once the fit ended): ``sparsity_curves.png`` from the history (and
  the ``val*`` metrics of its TensorBoard files) and
  ``sparsity_report.md`` from the report, as the callback writes them at fit end; a run that
  crashed has only the history, and its ``sparsity_report.md`` is a table of the finished
  points instead.

Only files are read: no model, no Lightning, no training.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_sparsity._text import count, number, one_line, si
from lightning_sparsity.control.controller import HistoryPoint
from lightning_sparsity.counting.report import SparsityReport
from lightning_sparsity.loggers.history import metric_series, plot_history, training_line
from lightning_sparsity.sweeps.frontier import write_frontier
from lightning_sparsity.sweeps.runs import RunSpec, collect_results

__all__ = ["ReportError", "render", "render_run", "render_sweep"]

SWEEP = "sweep.json"
HISTORY = "sparsity_history.json"
REPORT = "sparsity_report.json"


class ReportError(ValueError):
    """A LOGDIR that holds nothing to render, or files that cannot be read."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ReportError(f"cannot read {path}: {one_line(err)}") from err


def render_sweep(root: str | Path) -> list[Path]:
    """Write a sweep's frontier files again from ``sweep.json`` and the runs' results.

    Returns:
        The frontier files in ``root``.

    Raises:
        ReportError: if ``sweep.json`` cannot be read.
    """
    root = Path(root)
    manifest = _read_json(root / SWEEP)
    try:
        specs = [RunSpec(**run) for run in manifest["runs"]]
        monitor, mode = manifest["monitor"], manifest["mode"]
    except (KeyError, TypeError) as err:
        raise ReportError(f"{root / SWEEP} is not a sweep's manifest: {err!r}") from err
    write_frontier(root, collect_results(root, specs), monitor, mode)
    names = ("frontier.md", "frontier.csv", "frontier.json", "frontier.png")
    return [root / name for name in names if (root / name).is_file()]


def history_markdown(points: Sequence[Any], directory: Path) -> str:
    """The history as a table, for a run without a final report (it crashed or was killed)."""
    last = points[-1]
    lines = [
        f"# lightning_sparsity: {directory}",
        "",
        f"No final report ({REPORT}): the fit did not finish. The history holds {len(points)}"
        f" points, the last after {last.epoch} completed epochs: sparse/dense FLOPs"
        f" {last.flops_ratio:.4f} ({si(last.flops_sparse)} of"
        f" {si(last.flops)} per {last.per}), parameter sparsity"
        f" {last.param_sparsity:.4f}.",
        "",
        "| epoch | step | sparse FLOPs | dense FLOPs | sparse/dense | nonzero params | params"
        " | param sparsity | pruned sparsity | target sparsity | pruning | budget |",
        "|" + "---|" * 12,
    ]
    for p in points:
        budget = "—" if p.budget_status is None else f"{p.budget_status} ({p.budget_count})"
        cells = [
            str(p.epoch),
            str(p.step),
            count(p.flops_sparse, none="—"),
            count(p.flops, none="—"),
            number(p.flops_ratio, ".4f", none="—"),
            count(p.params_nonzero, none="—"),
            count(p.params, none="—"),
            number(p.param_sparsity, ".4f", none="—"),
            number(p.pruned_sparsity, ".4f", none="—"),
            number(p.target_sparsity, ".4f", none="—"),
            p.pruning or "—",
            budget,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"FLOPs per {last.per} (2 FLOPs = 1 MAC); epoch t: after t completed epochs."]
    return "\n".join(lines) + "\n"


def render_run(directory: str | Path) -> list[Path]:
    """Write a run's ``sparsity_curves.png`` and ``sparsity_report.md`` again from its files.

    Returns:
        The two files.

    Raises:
        ReportError: if the history (or the report) cannot be read or holds no points.
    """
    directory = Path(directory)
    rows = _read_json(directory / HISTORY)
    try:
        points = [HistoryPoint.from_dict(row) for row in rows]
    except (TypeError, AttributeError) as err:
        raise ReportError(f"{directory / HISTORY} is not a sparsity history: {err}") from err
    if not points:
        raise ReportError(f"{directory / HISTORY} holds no points")
    png = plot_history(points, directory / "sparsity_curves.png", metrics=metric_series(directory))
    if (directory / REPORT).is_file():
        data = _read_json(directory / REPORT)
        try:
            table = SparsityReport.from_dict(data).to_markdown()  # as the callback writes it
            text = table + training_line(points[-1]) + "\n"
        except (KeyError, TypeError, IndexError) as err:
            raise ReportError(f"{directory / REPORT} is not a sparsity report: {err!r}") from err
    else:
        text = history_markdown(points, directory)
    markdown = directory / "sparsity_report.md"
    markdown.write_text(text)
    return [png, markdown]


def render(logdir: str | Path) -> list[Path]:
    """Render a sweep's frontier or a run's curves and report again (see the module docstring).

    Returns:
        The files written.

    Raises:
        ReportError: if ``logdir`` holds neither a sweep nor a run's history (naming the
            subdirectories that do), or their files cannot be read.
    """
    logdir = Path(logdir)
    if not logdir.is_dir():
        raise ReportError(f"{str(logdir)!r} is not a directory")
    if (logdir / SWEEP).is_file():
        return render_sweep(logdir)
    if (logdir / HISTORY).is_file():
        return render_run(logdir)
    below = sorted(
        str(path.parent.relative_to(logdir))
        for pattern in (f"*/{SWEEP}", f"*/{HISTORY}", f"*/*/{HISTORY}")
        for path in logdir.glob(pattern)
    )
    more = f" and {len(below) - 5} more" if len(below) > 5 else ""
    hint = f"; these subdirectories do: {', '.join(below[:5])}{more}" if below else ""
    raise ReportError(
        f"{str(logdir)!r} holds neither a sweep ({SWEEP}) nor a run's history ({HISTORY}){hint}"
    )
