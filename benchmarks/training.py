"""Shared pieces of the training benchmarks (``bench_callback``, ``bench_scores``,
``bench_train_compute``): a timed Lightning fit of the digits demo, a plain PyTorch training
loop on the demo's CNN or a few-million-parameter MLP, wrappers that time a function's calls,
and the markdown table the newer scripts print.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import TensorBoardLogger
from torch import Tensor, nn

from lightning_sparsity.demo import DigitsCNN, DigitsDataModule

SEED = 0
T = TypeVar("T")
BATCH = 64  # DigitsDataModule's batch size, and the plain loop's


# ----------------------------------------------------------------------------- Lightning


def quiet() -> None:
    """Silence Lightning's info logs and the few-workers / few-batches warnings."""
    for name in ("pytorch_lightning", "lightning_fabric", "lightning_utilities", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("lightning_utilities.core.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # pytorch_lightning vs torch 2.13


class EpochTimer(pl.Callback):
    """Wall time of each train epoch (validation and earlier callbacks' epoch-end hooks in).

    ``spans`` keeps each epoch's (start, end) on ``time.perf_counter``'s clock, so that the
    calls a :class:`Calls` recorded can be split by epoch.
    """

    def __init__(self) -> None:
        self.times: list[float] = []
        self.spans: list[tuple[float, float]] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start the clock."""
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Stop the clock."""
        end = time.perf_counter()
        self.times.append(end - self._start)
        self.spans.append((self._start, end))


@dataclass
class FitTimes:
    """One timed fit: its wall time and each train epoch's (see :class:`EpochTimer`)."""

    seconds: float
    epochs: list[float]
    spans: list[tuple[float, float]]


def fit_digits(callbacks: list[pl.Callback], epochs: int, root: Path, name: str) -> FitTimes:
    """Fit the digits CNN once, seeded, with ``callbacks`` and a TensorBoard logger.

    The epoch timer comes after ``callbacks``, so their epoch ends are inside the epoch's time.
    """
    pl.seed_everything(SEED, verbose=False)
    timer = EpochTimer()
    callbacks = [*callbacks, timer]
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=TensorBoardLogger(str(root), name=name),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    order: list[pl.Callback] = trainer.callbacks  # type: ignore[attr-defined]
    assert order[-1] is timer  # its epoch end comes after the others'
    model, data = DigitsCNN(), DigitsDataModule()
    start = time.perf_counter()
    trainer.fit(model, data)
    return FitTimes(time.perf_counter() - start, timer.times, timer.spans)


def interleaved(variants: Sequence[T], repeats: int) -> Iterator[T]:
    """Every variant once per repeat, the order rotated each repeat (no variant always first)."""
    for repeat in range(repeats):
        shift = repeat % len(variants)
        yield from [*variants[shift:], *variants[:shift]]


# ----------------------------------------------------------------------------- timing calls


def timing(fn: Callable[..., Any], sink: Callable[[float], None]) -> Callable[..., Any]:
    """``fn``, giving the seconds of each call to ``sink``."""

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            sink(time.perf_counter() - start)

    return timed


def wrap(obj: Any, name: str, sink: Callable[[float], None]) -> None:
    """Replace ``obj.name`` by an instance attribute that times each call into ``sink``."""
    setattr(obj, name, timing(getattr(obj, name), sink))


@dataclass
class Calls:
    """The seconds of each call given to :meth:`add`, and when each ended."""

    ends: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def add(self, seconds: float) -> None:
        """Record a call that just ended (a ``sink`` for :func:`timing`)."""
        self.ends.append(time.perf_counter())
        self.seconds.append(seconds)

    def per_span(self, spans: list[tuple[float, float]]) -> list[float]:
        """Seconds of the calls that ended inside each span."""
        return [
            sum(s for e, s in zip(self.ends, self.seconds, strict=True) if start <= e <= end)
            for start, end in spans
        ]


# ----------------------------------------------------------------------------- plain loop


def mlp() -> nn.Module:
    """784 → 2048 → 2048 → 10 with ReLUs (5.8M parameters) on 1×28×28 inputs."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 2048),
        nn.ReLU(),
        nn.Linear(2048, 2048),
        nn.ReLU(),
        nn.Linear(2048, 10),
    )


def digits_batch() -> tuple[Tensor, Tensor]:
    """The digits demo's first training batch (``BATCH`` images and labels)."""
    data = DigitsDataModule(batch_size=BATCH, seed=SEED)
    images, labels = next(iter(data.train_dataloader()))
    return images, labels


def random_batch() -> tuple[Tensor, Tensor]:
    """``BATCH`` random 1×28×28 images and labels of 10 classes, for :func:`mlp`."""
    generator = torch.Generator().manual_seed(SEED)
    images = torch.rand(BATCH, 1, 28, 28, generator=generator)
    return images, torch.randint(0, 10, (BATCH,), generator=generator)


#: the plain loop's models: a title, a factory and its batch
MODELS: dict[str, tuple[str, Callable[[], nn.Module], Callable[[], tuple[Tensor, Tensor]]]] = {
    "digits": ("DigitsCNN, batch 64", DigitsCNN, digits_batch),
    "mlp": ("MLP 784-2048-2048-10 (5.8M), batch 64", mlp, random_batch),
}


def model_and_optimizer(name: str) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A seeded model of ``MODELS`` in training mode and its Adam (the demo's optimizer)."""
    torch.manual_seed(SEED)
    model = MODELS[name][1]().train()
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def steps(
    model: nn.Module, optimizer: torch.optim.Optimizer, batch: tuple[Tensor, Tensor], n: int
) -> Callable[[], None]:
    """``n`` training steps as a user's loop runs them: zero_grad, forward, loss, backward,
    ``optimizer.step()`` (its hooks included)."""
    x, y = batch

    def run() -> None:
        for _ in range(n):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()

    return run


# ----------------------------------------------------------------------------- reporting


def markdown(rows: list[list[str]]) -> str:
    """A markdown table: the first row is the header; the first column left-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    rule = ["-" * w if i == 0 else "-" * (w - 1) + ":" for i, w in enumerate(widths)]
    lines = []
    for row in [rows[0], rule, *rows[1:]]:
        cells = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine(threads: int) -> str:
    """The CPUs, torch and its threads, and the load average now (other work skews times)."""
    return (
        f"{os.cpu_count()} CPUs, torch {torch.__version__} ({threads} threads), load average"
        f" {os.getloadavg()[0]:.2f} at the start; 'others' = the cores other processes kept"
        " busy during a timed phase (/proc/stat, less this process and its spinners)"
    )


def loads(spinners: int) -> list[tuple[str, int]]:
    """The loads to time under: quiet, then ``spinners`` busy processes (if any)."""
    return [("quiet", 0)] + ([(f"{spinners} busy", spinners)] if spinners else [])


def arguments(doc: str, quick: str) -> argparse.ArgumentParser:
    """The options every training benchmark takes; ``quick`` says what ``--quick`` runs."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per variant")
    parser.add_argument("--epochs", type=int, default=8, help="epochs per Lightning fit")
    parser.add_argument("--busy", type=int, default=2, help="spinning processes (0: quiet only)")
    add_threads(parser)
    parser.add_argument("--quick", action="store_true", help=f"a smoke run: {quick}")
    return parser


def add_threads(parser: argparse.ArgumentParser) -> None:
    """``--threads``: torch's intra-op threads, 1 by default."""
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: with 2 threads, other work on the 2 cores"
        " stalls OpenMP and makes steps and epochs many times slower, up to 50x)",
    )


def start(name: str, threads: int, repeats: int) -> None:
    """Quiet Lightning, set torch's threads, print the first line."""
    quiet()
    torch.set_num_threads(threads)
    print(f"{name}: {machine(threads)}; medians of {repeats} repeats")
