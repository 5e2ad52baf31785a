"""Overhead of ``SparsityCallback`` per train epoch, on the embedded digits data and CNN.

Fits ``DigitsCNN`` on ``DigitsDataModule`` (scikit-learn's ``load_digits``, no download) for
``--epochs`` epochs, ``--repeats`` times per variant, the variants interleaved round-robin
(rotated each repeat) so that drift and other load on the cores hit them alike:

* ``none``: no callback, the baseline;
* ``measure``: ``SparsityCallback(per_layer=False, write_files=False)``, measurement only
  (no pruner, so it trains the same model as the baseline);
* ``per_layer``: the same with ``per_layer=True`` (per-layer scalars);
* ``write_files``: the same with ``write_files=True`` (history CSV/JSON every epoch; report
  and PNG at fit end);
* ``defaults``: ``SparsityCallback()`` (``per_layer=True, write_files=True``);
* ``pruner``: ``measure`` plus ``MagnitudePruner(schedule=Cubic(0.8, 0, 6))``.

Every fit uses the same seed and a ``TensorBoardLogger`` in a temp dir, so logging costs the
same except for our scalars. Two figures per variant, as fractions of the baseline's median
epoch time (goal for ``measure``: < 1 %):

* hook: the callback's ``on_train_epoch_end`` timed directly (perf_counter wrappers around
  its hooks), median per epoch: the precise figure. ``on_fit_start`` (the trace) and
  ``on_fit_end`` run once per fit and are shown apart (``once``), and ``all/ep`` spreads every
  hook call of a fit (batch hooks too) over its epochs;
* fit diff: (fit time − the same repeat's baseline fit time) / epochs, median over repeats:
  the whole cost, noisy.

Epoch time runs from ``on_train_epoch_start`` to ``on_train_epoch_end`` of a timing callback
placed after ``SparsityCallback`` (validation and our epoch-end hook included). For the
pruner, ``MagnitudePruner.apply`` is timed too, splitting the hook into pruning and measuring.
Torch runs on ``--threads`` (default 1) intra-op threads: on 2 shared cores, two OpenMP
threads stall whenever other work takes a core (epochs up to 50x slower). No timed
assertions. Usage::

    python benchmarks/bench_callback.py [--repeats 5] [--epochs 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from training import add_threads, fit_digits, interleaved, quiet, wrap

import lightning_sparsity as ls

HOOKS = ("setup", "on_fit_start", "on_train_batch_start", "on_train_epoch_end", "on_fit_end")
ONCE_HOOKS = ("setup", "on_fit_start", "on_fit_end")


# ----------------------------------------------------------------------------- variants


def _pruner() -> ls.MagnitudePruner:
    return ls.MagnitudePruner(schedule=ls.schedules.Cubic(0.8, start_epoch=0, end_epoch=6))


VARIANTS: dict[str, Callable[[], ls.SparsityCallback | None]] = {
    "none": lambda: None,
    "measure": lambda: ls.SparsityCallback(per_layer=False, write_files=False),
    "per_layer": lambda: ls.SparsityCallback(per_layer=True, write_files=False),
    "write_files": lambda: ls.SparsityCallback(per_layer=False, write_files=True),
    "defaults": lambda: ls.SparsityCallback(),
    "pruner": lambda: ls.SparsityCallback(_pruner(), per_layer=False, write_files=False),
}


# ----------------------------------------------------------------------------- timing


@dataclass
class HookTimes:
    """Seconds spent in each wrapped hook (one entry per call) and in ``pruner.apply``."""

    calls: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    # per on_train_epoch_end call: seconds of pruner.apply inside it
    prune: list[float] = field(default_factory=list)
    _prune_acc: float = 0.0


def instrument(callback: ls.SparsityCallback) -> HookTimes:
    """Time the callback's hooks (and its pruner's ``apply``) from now on."""
    times = HookTimes()
    for hook in HOOKS:
        wrap(callback, hook, times.calls[hook].append)
    if callback.pruning is not None:

        def add_prune(seconds: float) -> None:
            times._prune_acc += seconds

        wrap(callback.pruning, "apply", add_prune)
        inner_end = callback.on_train_epoch_end

        def epoch_end(*args: Any, **kwargs: Any) -> Any:
            times._prune_acc = 0.0
            try:
                return inner_end(*args, **kwargs)
            finally:
                times.prune.append(times._prune_acc)

        setattr(callback, "on_train_epoch_end", epoch_end)  # noqa: B010
    return times


@dataclass
class Fit:
    """One timed fit."""

    seconds: float
    epochs: list[float]
    hooks: HookTimes | None
    traces: int


def run_fit(variant: str, epochs: int, root: Path) -> Fit:
    """Fit the digits CNN once with ``variant``'s callback (or none)."""
    callback = VARIANTS[variant]()
    hooks = instrument(callback) if callback is not None else None
    times = fit_digits([] if callback is None else [callback], epochs, root, variant)
    meter = None if callback is None else callback.controller.meter
    traces = meter.traces if meter is not None else 0
    return Fit(times.seconds, times.epochs, hooks, traces)


# ----------------------------------------------------------------------------- report


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def _pct(fraction: float) -> str:
    return f"{fraction * 100:.2f}%"


def _table(rows: list[list[str]], left: int) -> str:
    """Align columns: the first ``left`` left-aligned, the rest right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.ljust(w) if i < left else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def report(fits: dict[str, list[Fit]], epochs: int) -> str:
    """The results table and, for the pruner, the split of its hook."""
    base_epoch = statistics.median(t for f in fits["none"] for t in f.epochs)
    rows = [
        [
            "variant",
            "epoch ms",
            "hook ms",
            "hook %",
            "once ms",
            "all/ep %",
            "fit diff ms/ep",
            "fit diff %",
            "traces",
        ]
    ]
    for name, runs in fits.items():
        epoch = statistics.median(t for f in runs for t in f.epochs)
        diff = statistics.median(
            (f.seconds - b.seconds) / epochs for f, b in zip(runs, fits["none"], strict=True)
        )
        if name == "none":
            rows.append([name, _ms(epoch), "-", "-", "-", "-", "-", "-", "-"])
            continue
        hook_runs = [f.hooks for f in runs if f.hooks is not None]
        hook = statistics.median(t for h in hook_runs for t in h.calls["on_train_epoch_end"])
        once = statistics.median(sum(sum(h.calls[k]) for k in ONCE_HOOKS) for h in hook_runs)
        per_epoch = statistics.median(
            sum(sum(v) for v in h.calls.values()) / epochs for h in hook_runs
        )
        rows.append(
            [
                name,
                _ms(epoch),
                _ms(hook),
                _pct(hook / base_epoch),
                _ms(once),
                _pct(per_epoch / base_epoch),
                _ms(diff),
                _pct(diff / base_epoch),
                str(statistics.median(f.traces for f in runs)),
            ]
        )
    out = [_table(rows, left=1)]
    if "pruner" in fits:
        hook_runs = [f.hooks for f in fits["pruner"] if f.hooks is not None]
        ends = [
            (end, prune)
            for h in hook_runs
            for end, prune in zip(h.calls["on_train_epoch_end"], h.prune, strict=True)
        ]
        pruning = [p for _, p in ends if p > 0]
        measuring = [end - p for end, p in ends]
        first = statistics.median(
            h.calls["on_train_epoch_end"][0] - h.prune[0] for h in hook_runs if h.prune
        )
        n_pruning = len(pruning) // max(len(hook_runs), 1)
        prune_ms = _ms(statistics.median(pruning)) if pruning else "-"
        out.append(
            f"pruner hook split, median per epoch-end call: pruning (MagnitudePruner.apply, on"
            f" {n_pruning} of {epochs} epoch ends) {prune_ms} ms, measuring + logging"
            f" {_ms(statistics.median(measuring))} ms (first call, re-trace after the masks"
            f" appear: {_ms(first)} ms)"
        )
    return "\n".join(out)


def legend(epochs: int, repeats: int) -> str:
    """What the columns mean."""
    return (
        f"medians over {repeats} interleaved repeats of {epochs}-epoch fits;"
        " % = of the baseline's (none) median epoch time\n"
        "  epoch ms: train epoch, validation included | hook: on_train_epoch_end per call |"
        " once: setup + on_fit_start (trace) + on_fit_end per fit\n"
        "  all/ep: every hook call of a fit / epochs | fit diff: (fit - the same repeat's"
        " baseline fit) / epochs, noisy | traces: meter traces per fit"
    )


# ----------------------------------------------------------------------------- main


def main() -> None:
    """Parse the arguments, run the interleaved fits, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="fits per variant (default 5)")
    parser.add_argument("--epochs", type=int, default=8, help="epochs per fit (default 8)")
    add_threads(parser)
    args = parser.parse_args()
    if min(args.repeats, args.epochs, args.threads) < 1:
        parser.error("--repeats, --epochs and --threads must be >= 1")
    quiet()
    torch.set_num_threads(args.threads)
    lightning_version = version("pytorch-lightning")
    print(
        f"bench_callback: {os.cpu_count()} CPUs, torch {torch.__version__}"
        f" (threads: {torch.get_num_threads()}), pytorch_lightning {lightning_version},"
        f" lightning_sparsity {ls.__version__}; DigitsCNN on load_digits, {args.epochs} epochs"
    )
    names = list(VARIANTS)
    fits: dict[str, list[Fit]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="bench_callback_") as tmp:
        root = Path(tmp)
        for name in names:  # warm-up: imports, first trace, first TensorBoard writer
            run_fit(name, min(args.epochs, 2), root / "warmup")
        for name in interleaved(names, args.repeats):
            fits[name].append(run_fit(name, args.epochs, root))
    print(legend(args.epochs, args.repeats))
    print(report(fits, args.epochs))


if __name__ == "__main__":
    main()
