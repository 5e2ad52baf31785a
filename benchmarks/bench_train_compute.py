"""What counting training compute and RigL's updates cost, against the same run without them.

(a) Training-FLOP accounting per epoch: fits of ``DigitsCNN`` on ``DigitsDataModule`` for
``--epochs`` epochs with ``SparsityCallback(pruner, write_files=False, train_flops=True)``
against the same with ``train_flops=False``, same pruner and seed, a TensorBoard logger,
``--repeats`` fits per variant interleaved (rotated each repeat). Two pruners:
``MagnitudePruner(schedule=Cubic(0.8, 0, 6))`` (masks change at 6 of 8 epoch ends) and
``RigL(0.9, delta_t=20)`` (as ``examples/digits_training_compute.py``: connections move about
once an epoch). Two figures: the median train epoch with the count against without it (the
whole cost, noisy), and the ledger itself timed inside the fit (``TrainCompute.begin_batch``,
``end_batch`` and ``close_epoch``, where all of its work happens) per epoch, against the
median epoch without it: the first epoch apart (it traces the training step), the median of
the others, and the whole fit (the median fit's ledger against the median fit's epochs
without it). Where that is over 1 % of an epoch, the recount (``TrainCompute._measure``:
``pruner.masks(model)`` and ``meter.count_training(masks)``) is profiled.

(b) RigL against magnitude pruning on the same model at 90 % (the digits CNN at batch 64,
and a 5.8M-parameter MLP at batch 64), Adam attached:

* one update: ``RigL(0.9).update(t)`` (drop and grow in every layer: what its optimizer step
  pre-hook runs every ``delta_t`` steps) after a forward and backward with whole gradients,
  against one pruning step ``MagnitudePruner().apply(model, 0.9)`` from 0.85 (what the
  callback runs at a pruning epoch; a fresh copy of the model at 0.85 each time, untimed),
  with the default floors and without (``min_density=0``);
* per training step: blocks of ``delta_t`` plain training steps (one update in each) with
  ``RigL(0.9, delta_t=...)`` attached, against as many steps of the same model holding
  RigL's first masks (``MagnitudePruner().apply_masks``, attached). The same zeros matter:
  on this CPU ``torch.sqrt`` runs many times slower on zeros scattered at random than on
  positive values, and Adam takes the square root of its second moments, which are zero
  wherever a weight is pruned, so a step's time depends on where its zeros lie.

Every figure is a median of ``--repeats`` (the single calls of (b): 3 × ``--repeats``, as a
call of a few milliseconds is now and then preempted whole), the variants interleaved, on a
quiet machine and beside ``--busy`` processes spinning on the CPU (``benchmarks/load.py``).
Torch runs on ``--threads`` (default 1) intra-op threads, as ``bench_callback.py`` does.
Usage::

    python benchmarks/bench_train_compute.py [--repeats 7] [--epochs 8] [--busy 2]
        [--threads 1] [--quick]
"""

from __future__ import annotations

import copy
import cProfile
import io
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from load import busy_beside_others
from training import (
    MODELS,
    Calls,
    arguments,
    fit_digits,
    interleaved,
    loads,
    markdown,
    model_and_optimizer,
    start,
    steps,
    wrap,
)

import lightning_sparsity as ls
from lightning_sparsity.speed import medians

SPARSITY = 0.9
NEVER = 10**9  # RigL's end_step: every update in the timed steps moves weights


# ----------------------------------------------------------------------------- (a) the ledger


def magnitude() -> ls.MagnitudePruner:
    return ls.MagnitudePruner(schedule=ls.schedules.Cubic(0.8, start_epoch=0, end_epoch=6))


def rigl() -> ls.MagnitudePruner:
    return ls.RigL(SPARSITY, delta_t=20)


PRUNERS: dict[str, Callable[[], ls.MagnitudePruner]] = {
    "MagnitudePruner, Cubic(0.8, 0, 6)": magnitude,
    "RigL(0.9, delta_t=20)": rigl,
}


@dataclass
class Ledger:
    """What the fits of one variant gave."""

    epochs: list[float] = field(default_factory=list)  # every epoch of every fit
    first: list[float] = field(default_factory=list)  # the ledger's seconds in epoch 1
    later: list[float] = field(default_factory=list)  # ... in each later epoch
    recounts: list[int] = field(default_factory=list)  # recounts in each later epoch
    fits: list[float] = field(default_factory=list)  # the ledger's seconds in each fit
    fit_epochs: list[float] = field(default_factory=list)  # each fit's epochs, summed
    last: ls.SparsityCallback | None = None


def fit(
    make: Callable[[], ls.MagnitudePruner], on: bool, epochs: int, root: Path, out: Ledger
) -> None:
    callback = ls.SparsityCallback(make(), write_files=False, train_flops=on)
    ledger, recounts = Calls(), Calls()
    compute = callback.controller.compute  # the same object through the fit's reset
    for name in ("begin_batch", "end_batch", "close_epoch"):
        wrap(compute, name, ledger.add)
    wrap(compute, "_measure", recounts.add)
    times = fit_digits([callback], epochs, root, f"train_flops={on}")
    per_epoch = ledger.per_span(times.spans)
    out.epochs += times.epochs
    out.first.append(per_epoch[0])
    out.later += per_epoch[1:]
    out.fits.append(sum(per_epoch))
    out.fit_epochs.append(sum(times.epochs))
    out.recounts += [
        sum(start <= e <= end for e in recounts.ends) for start, end in times.spans[1:]
    ]
    out.last = callback


def ledger_rows(
    epochs: int, repeats: int, spinners: int, root: Path, warmup: bool
) -> tuple[list[list[str]], list[ls.SparsityCallback]]:
    rows = [
        [
            "pruner",
            "load",
            "epoch ms, off",
            "epoch × (on / off)",
            "ledger ms, epoch 1",
            "ledger %, epoch 1",
            "ledger ms, later epochs",
            "ledger %, later epochs",
            "ledger %, whole fit",
            "recounts / later epoch",
        ]
    ]
    over: list[ls.SparsityCallback] = []
    variants = [(title, on) for title in PRUNERS for on in (True, False)]
    for title, on in variants if warmup else []:  # imports, the first trace and writer
        fit(PRUNERS[title], on, 1, root, Ledger())
    for load, count in loads(spinners):
        runs = {v: Ledger() for v in variants}
        with busy_beside_others(count) as others:
            for title, on in interleaved(variants, repeats):
                fit(PRUNERS[title], on, epochs, root, runs[(title, on)])
        load = f"{load} ({others})"
        for title in PRUNERS:
            on, off = runs[(title, True)], runs[(title, False)]
            base = statistics.median(off.epochs)
            first, later = statistics.median(on.first), statistics.median(on.later)
            rows.append(
                [
                    title,
                    load,
                    f"{base * 1e3:.1f}",
                    f"{statistics.median(on.epochs) / base:.3f}",
                    f"{first * 1e3:.2f}",
                    f"{first / base * 100:.2f}%",
                    f"{later * 1e3:.2f}",
                    f"{later / base * 100:.2f}%",
                    f"{statistics.median(on.fits) / statistics.median(off.fit_epochs) * 100:.2f}%",
                    f"{statistics.mean(on.recounts):.2f}",
                ]
            )
            if later / base > 0.01 and on.last is not None:
                over.append(on.last)
    return rows, over


def profile(callback: ls.SparsityCallback, repeats: int) -> str:
    """Where a recount's time goes: its two parts timed, then cProfile's top entries."""
    controller = callback.controller
    meter, pruner = controller.meter, controller.pruning
    assert meter is not None
    assert pruner is not None
    model = meter.model
    masks = pruner.masks(model)
    parts: dict[str, Callable[[], object]] = {
        "TrainCompute._measure (a recount)": lambda: controller.compute._measure(
            meter, pruner, model
        ),
        "  pruner.masks(model)": lambda: pruner.masks(model),
        "  meter.count_training(masks)": lambda: meter.count_training(masks),
        "  meter.measure_training(trainable=masks) (with realizable)": lambda: (
            meter.measure_training(trainable=masks)
        ),
        "  meter.measure_training() (no masks)": meter.measure_training,
        "  meter.measure() (the epoch-end recount)": meter.measure,
    }
    t = medians(parts, max(repeats, 20), warmup=2)
    lines = [markdown([["call", "ms"], *([name, f"{ms:.3f}"] for name, ms in t.items())])]
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(50):
        controller.compute._measure(meter, pruner, model)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(18)
    keep = [line for line in text.getvalue().splitlines() if line.strip()]
    lines += ["", "cProfile of 50 recounts, by cumulative time:", *keep[3:]]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- (b) RigL


def with_rigl(name: str, delta_t: int) -> tuple[torch.nn.Module, torch.optim.Optimizer, ls.RigL]:
    model, optimizer = model_and_optimizer(name)
    pruner = ls.RigL(SPARSITY, delta_t=delta_t, end_step=NEVER)
    pruner.attach(optimizer)  # as SparsityCallback.on_train_start: attach, then observe
    pruner.observe(model)
    return model, optimizer, pruner


def with_masks(name: str, sparsity: float) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The model pruned to ``sparsity`` by magnitude, the pruner attached, Adam stepped."""
    model, optimizer = model_and_optimizer(name)
    pruner = ls.MagnitudePruner()
    pruner.attach(optimizer)
    pruner.apply(model, sparsity)
    steps(model, optimizer, MODELS[name][2](), 2)()  # Adam's moments exist
    return model, optimizer


def update_vs_prune(name: str, repeats: int, spinners: int) -> list[list[str]]:
    batch = MODELS[name][2]()
    model, optimizer, pruner = with_rigl(name, delta_t=1)  # every step's gradients whole
    steps(model, optimizer, batch, 2)()  # two updates: Adam's moments exist
    base = with_masks(name, 0.85)

    def update() -> Callable[[], object]:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(batch[0]), batch[1]).backward()
        return lambda: pruner.update(pruner.step_count + 1)

    def prune(**options: float) -> Callable[[], Callable[[], object]]:
        def ready() -> Callable[[], object]:
            copy_model, copy_optimizer = copy.deepcopy(base)
            fresh = ls.MagnitudePruner(**options)
            fresh.attach(copy_optimizer)
            return lambda: fresh.apply(copy_model, SPARSITY)

        return ready

    variants = {"update": update, "prune": prune(), "bare": prune(min_density=0.0)}
    rows = []
    for load, count in loads(spinners):
        times: dict[str, list[float]] = {v: [] for v in variants}
        with busy_beside_others(count) as others:
            for repeat in range(repeats + 1):  # interleaved; the first of each untimed
                for v, ready in variants.items():
                    call = ready()
                    start = time.perf_counter()
                    call()
                    if repeat:
                        times[v].append(time.perf_counter() - start)
        load = f"{load} ({others})"
        t = {v: statistics.median(times[v]) for v in variants}
        rows.append(
            [MODELS[name][0], load]
            + [f"{t[v] * 1e3:.2f}" for v in variants]
            + [f"{t['update'] / t['prune']:.2f}", f"{t['update'] / t['bare']:.2f}"]
        )
    return rows


def per_step(name: str, delta_t: int, repeats: int, spinners: int) -> list[list[str]]:
    batch = MODELS[name][2]()
    model, optimizer, rigl = with_rigl(name, delta_t)
    # the baseline holds RigL's first masks: the same zeros (Adam's step on CPU runs at a
    # speed that depends on where its zero moments lie), only never moved
    static_model, static_optimizer = model_and_optimizer(name)
    static = ls.MagnitudePruner()
    static.attach(static_optimizer)
    static.apply_masks(static_model, rigl.masks(model))
    runs = {
        "rigl": steps(model, optimizer, batch, delta_t),  # one update per run
        "static": steps(static_model, static_optimizer, batch, delta_t),
    }
    rows = []
    for load, count in loads(spinners):
        with busy_beside_others(count) as others:
            t = medians(runs, repeats, warmup=1)
        load = f"{load} ({others})"
        rows.append(
            [
                MODELS[name][0],
                str(delta_t),
                load,
                f"{t['static'] / delta_t:.2f}",
                f"{t['rigl'] / delta_t:.2f}",
                f"{t['rigl'] / t['static']:.3f}",
            ]
        )
    return rows


# ----------------------------------------------------------------------------- main


def main() -> None:
    args = arguments(__doc__, "2 repeats, 2-epoch fits, the digits CNN only").parse_args()
    quick = args.quick
    repeats, epochs = (2, 2) if quick else (args.repeats, args.epochs)
    models = ["digits"] if quick else list(MODELS)
    blocks = [("digits", 5)] if quick else [("digits", 100), ("digits", 20), ("mlp", 20)]
    start("bench_train_compute", args.threads, repeats)

    print(
        f"\n(a) training-FLOP accounting, Lightning fits of the digits demo, {epochs} epochs:"
        " epoch ms, off = median train epoch (validation in) with train_flops=False; epoch ×"
        " = median epoch with train_flops=True / that; ledger = TrainCompute's begin_batch +"
        " end_batch + close_epoch timed inside the fit per epoch (epoch 1 traces the training"
        " step; later epochs: median), and as % of the off epoch; whole fit = the median"
        " fit's ledger / the median fit's epochs, off; recounts = meter recounts per later"
        " epoch (mean)\n"
    )
    with tempfile.TemporaryDirectory(prefix="bench_train_compute_") as tmp:
        rows, over = ledger_rows(epochs, repeats, args.busy, Path(tmp), not quick)
    print(markdown(rows))
    if over:
        print(
            "\nthe ledger is over 1% of a later epoch; one recount after the fit, quiet, medians"
            f" of {max(repeats, 20)}:\n"
        )
        print(profile(over[0], repeats))

    print(
        f"\n(b) RigL(0.9) against magnitude pruning to 0.9, single calls, medians of"
        f" {3 * repeats}: update ms ="
        " RigL.update(t) (drop + grow in every layer, Adam attached) after a backward with"
        " whole gradients; prune ms = MagnitudePruner().apply(model, 0.9) from 0.85 on a fresh"
        " copy (default floors: every row keeps its largest weight, 1% of each layer); prune"
        " ms, no floors = the same with min_density=0 (one cut, torch's rule); × = update /"
        " prune\n"
    )
    table = [
        [
            "model",
            "load",
            "update ms",
            "prune ms",
            "prune ms, no floors",
            "update / prune ×",
            "update / prune, no floors ×",
        ]
    ]
    for name in models:
        table += update_vs_prune(name, 3 * repeats, args.busy)
    print(markdown(table))

    print(
        "\nper training step, averaged over delta_t steps (one update among them): static ms ="
        " a step (zero_grad, forward, loss, backward, Adam.step) with RigL's first masks held"
        " (MagnitudePruner.apply_masks); RigL ms = the same with RigL(0.9, delta_t) attached;"
        " × = RigL / static\n"
    )
    table = [["model", "delta_t", "load", "static ms/step", "RigL ms/step", "RigL / static ×"]]
    for name, delta_t in blocks:
        table += per_step(name, delta_t, repeats, args.busy)
    print(markdown(table))


if __name__ == "__main__":
    main()
