"""What ``score=`` costs per training step: taylor, movement and wanda against magnitude (CPU).

``MagnitudePruner(schedule, score=...)`` with ``"taylor"`` / ``"movement"`` adds ``|w·g|`` /
``-w·g`` of every pruned weight after each optimizer step (a step pre-hook that
``pruner.attach(optimizer)`` registers); ``"wanda"`` adds the squared norms of the pruned
layers' inputs in every training forward (forward pre-hooks that ``pruner.observe(model)``
registers); ``"magnitude"`` and ``"random"`` accumulate nothing. Two measurements, each as a
ratio to ``score="magnitude"`` timed in the same run, on a quiet machine and beside
``--busy`` processes spinning on the CPU (``benchmarks/load.py``):

* the plain loop: ``--steps`` training steps (zero_grad, forward, cross-entropy, backward,
  ``Adam.step()``) of the digits demo's CNN on its first batch of 64 and of a 5.8M-parameter
  MLP on a random batch of 64, the pruner attached as ``SparsityCallback`` attaches it
  (``pruner.attach(optimizer)``, then ``pruner.observe(model)``), two steps accumulated, then
  the masks of a first prune to 50% installed (``apply_masks``; they hold through every step,
  as in a fit). Every score holds the same masks, those ``score="magnitude"`` chooses, so
  only the hooks differ: on this CPU ``torch.sqrt`` runs many times slower on zeros
  scattered at random than on positive values, and Adam takes the square root of its second
  moments, zero wherever a weight is pruned, so a step's time depends on where its zeros
  lie (the row ``magnitude, random's masks``: score="magnitude" holding the masks
  ``"random"`` chooses). The variants (every score, that row, and the model without a
  pruner) run interleaved, ``--repeats`` times each, after one untimed run; medians. Each
  score's own hooks are also timed inside the steps: the precise figure. ``random``
  accumulates nothing: its distance from 1.00 is the noise of the whole-step ratio.
* a Lightning fit: ``--epochs`` epochs of ``DigitsCNN`` on ``DigitsDataModule`` with
  ``SparsityCallback(MagnitudePruner(schedule=Cubic(0.8, 0, 6), score=...),
  write_files=False)`` and a TensorBoard logger, seeded, ``--repeats`` fits per score
  interleaved (rotated each repeat): the median train epoch (validation in) against
  magnitude's, and the accumulation itself timed inside the fit (``Scores.accumulate`` for
  taylor, the forward pre-hooks for wanda) per epoch, against magnitude's median epoch.

Torch runs on ``--threads`` (default 1) intra-op threads, as ``bench_callback.py`` does: on 2
shared cores two OpenMP threads stall whenever another process holds a core. Usage::

    python benchmarks/bench_scores.py [--repeats 7] [--steps 20] [--epochs 8] [--busy 2]
        [--threads 1] [--quick]
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
from load import busy_beside_others
from torch import Tensor
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
    timing,
    wrap,
)

import lightning_sparsity as ls
from lightning_sparsity.pruning.scores import ScoreName
from lightning_sparsity.speed import medians

SCORES: tuple[ScoreName, ...] = ("magnitude", "random", "taylor", "movement", "wanda")
FIT_SCORES: tuple[ScoreName, ...] = ("magnitude", "taylor", "wanda")
NONE = "no pruner"
RANDOM_MASKS = "magnitude, random's masks"
SPARSITY = 0.5


def pruner(score: ScoreName) -> ls.MagnitudePruner:
    return ls.MagnitudePruner(
        schedule=ls.schedules.Cubic(0.8, start_epoch=0, end_epoch=6), score=score
    )


# ----------------------------------------------------------------------------- plain loop


def instrument(p: ls.MagnitudePruner, calls: Calls) -> None:
    """Time ``p``'s accumulation into ``calls``: ``Scores.accumulate`` (taylor, movement) and
    the input hooks ``observe`` registers (wanda). Before ``attach`` and ``observe``."""
    scorer = p._scorer
    wrap(scorer, "accumulate", calls.add)
    make_hook = scorer._input_hook

    def timed_hook(key: str) -> Callable[..., None]:
        return timing(make_hook(key), calls.add)

    scorer._input_hook = timed_hook  # type: ignore[method-assign]


def masks_of(name: str, score: ScoreName, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
    """The 50% masks ``score`` gives model ``name`` after two steps (a first prune)."""
    model, optimizer = model_and_optimizer(name)
    p = pruner(score)
    p.attach(optimizer)
    p.observe(model)
    steps(model, optimizer, batch, 2)()
    p.apply(model, SPARSITY)
    return p.masks(model)


def loop_runs(name: str, n: int) -> dict[str, tuple[Callable[[], None], Calls]]:
    """``n`` steps of model ``name`` per variant, and the calls that accumulated its score.

    Every pruned variant holds the same zeros, so that only the hooks differ: the masks
    ``score="magnitude"`` chooses (``RANDOM_MASKS``: those ``"random"`` chooses).
    """
    batch = MODELS[name][2]()
    masks = {s: masks_of(name, s, batch) for s in ("magnitude", "random")}
    variants: list[tuple[str, ScoreName | None, ScoreName]] = [
        (NONE, None, "magnitude"),
        *((s, s, "magnitude") for s in SCORES),
        (RANDOM_MASKS, "magnitude", "random"),
    ]
    runs: dict[str, tuple[Callable[[], None], Calls]] = {}
    for label, score, zeros in variants:
        model, optimizer = model_and_optimizer(name)
        calls = Calls()
        if score is not None:
            p = pruner(score)
            instrument(p, calls)
            p.attach(optimizer)  # what SparsityCallback.on_train_start does, in its order
            p.observe(model)
            steps(model, optimizer, batch, 2)()  # accumulated, as before a first prune
            p.apply_masks(model, masks[zeros])
        runs[label] = steps(model, optimizer, batch, n), calls
    return runs


def per_step(calls: Calls, n_steps: int) -> float:
    """Seconds of accumulation per step: the median call times the calls per step."""
    if not calls.seconds:
        return 0.0
    return statistics.median(calls.seconds) * len(calls.seconds) / n_steps


def plain_loop(models: list[str], n: int, repeats: int, spinners: int) -> list[list[str]]:
    rows = [
        [
            "model",
            "load",
            "score",
            "ms/step",
            "× magnitude",
            "accumulation ms/step",
            "accumulation %",
        ]
    ]
    for name in models:
        runs = loop_runs(name, n)
        for load, count in loads(spinners):
            for _, calls in runs.values():
                calls.seconds.clear()
                calls.ends.clear()
            with busy_beside_others(count) as others:
                t = medians({v: run for v, (run, _) in runs.items()}, repeats, warmup=1)
            load = f"{load} ({others})"
            base = t["magnitude"]
            for v in (*SCORES, RANDOM_MASKS, NONE):
                accumulation = per_step(runs[v][1], (repeats + 1) * n) * 1e3  # ms
                rows.append(
                    [
                        MODELS[name][0],
                        load,
                        v,
                        f"{t[v] / n:.2f}",
                        f"{t[v] / base:.3f}",
                        f"{accumulation:.3f}",
                        f"{accumulation / (base / n) * 100:.2f}%",
                    ]
                )
    return rows


# ----------------------------------------------------------------------------- Lightning fit


class TimeAccumulation(pl.Callback):
    """Times the accumulation of a pruner's score (``Scores.accumulate`` and the input hooks).

    Placed before ``SparsityCallback``: its ``on_train_start`` wraps the scorer the fit uses
    (the callback makes it anew when the fit starts) before the callback attaches it.
    """

    def __init__(self, pruner: ls.MagnitudePruner) -> None:
        self.pruner = pruner
        self.calls = Calls()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        instrument(self.pruner, self.calls)


def fit(score: ScoreName, epochs: int, root: Path) -> tuple[list[float], list[float]]:
    """One fit: its epochs' seconds, and the accumulation's seconds in each."""
    p = pruner(score)
    timer = TimeAccumulation(p)
    times = fit_digits([timer, ls.SparsityCallback(p, write_files=False)], epochs, root, score)
    return times.epochs, timer.calls.per_span(times.spans)


def fits(epochs: int, repeats: int, spinners: int, root: Path, warmup: bool) -> list[list[str]]:
    rows = [["load", "score", "epoch ms", "epoch ×", "accumulation ms/epoch", "accumulation %"]]
    for s in FIT_SCORES if warmup else ():  # warm-up: imports, the first trace and writer
        fit(s, 1, root)
    for load, count in loads(spinners):
        epoch_times: dict[str, list[float]] = {s: [] for s in FIT_SCORES}
        accumulation: dict[str, list[float]] = {s: [] for s in FIT_SCORES}
        with busy_beside_others(count) as others:
            for s in interleaved(FIT_SCORES, repeats):
                epochs_s, accumulated = fit(s, epochs, root)
                epoch_times[s] += epochs_s
                accumulation[s] += accumulated
        load = f"{load} ({others})"
        base = statistics.median(epoch_times["magnitude"])
        for s in FIT_SCORES:
            epoch = statistics.median(epoch_times[s])
            acc = statistics.median(accumulation[s])
            share = f"{acc / base * 100:.2f}%"
            rows.append(
                [load, s, f"{epoch * 1e3:.1f}", f"{epoch / base:.3f}", f"{acc * 1e3:.2f}", share]
            )
    return rows


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = arguments(__doc__, "2 repeats of 5 steps, 1-epoch fits, the first model only")
    parser.add_argument("--steps", type=int, default=20, help="training steps per timed run")
    parser.add_argument("--models", default=",".join(MODELS), help="plain-loop models")
    args = parser.parse_args()
    models = [m.strip() for m in args.models.split(",")]
    if unknown := [m for m in models if m not in MODELS]:
        parser.error(f"unknown models {unknown}; choose from {list(MODELS)}")
    repeats, n, epochs = (2, 5, 1) if args.quick else (args.repeats, args.steps, args.epochs)
    if args.quick:
        models = models[:1]
    start("bench_scores", args.threads, repeats)
    print(
        f"\nplain loop, {n} steps per run: ms/step = one training step (zero_grad, forward,"
        " loss, backward, Adam.step with the pruner's hooks) with that score, every score"
        " holding the 50% masks magnitude chooses (magnitude, random's masks: those random"
        " chooses; no pruner: the dense model, no hooks); × magnitude = its time for the same"
        " steps /"
        " score='magnitude' (whole step, noisy; random accumulates nothing: its distance"
        " from 1 is the noise); accumulation = the score's own hooks timed inside those steps"
        " (median call × calls per step), and as % of magnitude's step\n"
    )
    print(markdown(plain_loop(models, n, repeats, args.busy)))
    print(
        f"\nLightning fit of the digits demo, {epochs} epochs: epoch ms = median train epoch"
        " (validation in); epoch × = its ratio to magnitude's; accumulation = the score's"
        " hooks timed inside the fit per epoch (median), and as % of magnitude's epoch\n"
    )
    with tempfile.TemporaryDirectory(prefix="bench_scores_") as tmp:
        print(markdown(fits(epochs, repeats, args.busy, Path(tmp), not args.quick)))


if __name__ == "__main__":
    main()
