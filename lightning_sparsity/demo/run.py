"""``lightning-sparsity demo``: prune a small CNN on the embedded digits data.

Real data that ships inside scikit-learn (no download), a real ``Trainer`` fit with
:class:`~lightning_sparsity.SparsityCallback`, a FLOP budget that steers the pruner along a
cubic curve in FLOP space (or, without a budget, a cubic sparsity schedule), TensorBoard
logs, the history files, the final report and a PNG of the curves.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

from lightning_sparsity._lightning import pl, submodule
from lightning_sparsity.callback import SparsityCallback
from lightning_sparsity.control.budget import FlopBudget
from lightning_sparsity.control.controller import HistoryPoint
from lightning_sparsity.demo.data import DigitsDataModule
from lightning_sparsity.demo.model import DigitsCNN
from lightning_sparsity.patterns import parse_pattern
from lightning_sparsity.pruning import MagnitudePruner
from lightning_sparsity.pruning.schedules import Cubic

__all__ = ["run_demo"]


def demo_callback(
    *,
    epochs: int = 12,
    budget: str | None = "20%",
    final_sparsity: float = 0.8,
    pattern: str | None = None,
) -> SparsityCallback:
    """The demo's callback: a FLOP budget steering the pruner, or a cubic schedule.

    With a ``pattern`` (``"2:4"``) a cubic schedule prunes every group it can (the budget
    and final sparsity do not apply: the pattern sets the sparsity, 50% for 2:4).

    Raises:
        ValueError: for ``epochs`` < 1, a bad budget, final sparsity or pattern, or a
            pattern beside a budget.
    """
    if epochs < 1:
        raise ValueError(f"`epochs` must be >= 1, got {epochs}")
    end = max(1, (2 * epochs) // 3)  # both curves land after `end` completed epochs
    if pattern is not None:
        if budget is not None:
            raise ValueError(
                f"a pattern ({pattern!r}) prunes by a schedule; give it without a budget"
                f" (got budget {budget!r})"
            )
        n, m = parse_pattern(pattern)
        schedule = Cubic(final_sparsity=(m - n) / m, start_epoch=0, end_epoch=end)
        return SparsityCallback(pruning=MagnitudePruner(schedule=schedule, pattern=pattern))
    if budget is None:
        schedule = Cubic(final_sparsity=final_sparsity, start_epoch=0, end_epoch=end)
        return SparsityCallback(pruning=MagnitudePruner(schedule=schedule))
    flop_budget = FlopBudget(budget, by_epoch=end, action="adjust")
    return SparsityCallback(pruning=MagnitudePruner(), budget=flop_budget)


def run_demo(
    output: Path,
    *,
    epochs: int = 12,
    budget: str | None = "20%",
    final_sparsity: float = 0.8,
    pattern: str | None = None,
    limit_batches: int | None = None,
    seed: int = 0,
) -> SparsityCallback:
    """Fit the digits CNN while pruning it; print the curves and where the files are.

    Args:
        output: the TensorBoard root directory (the run goes to ``output/demo/version_N``).
        epochs: training epochs; pruning ramps over the first two thirds.
        budget: sparse FLOPs per example to land on by then (``"20%"`` of dense, ``"250K"``),
            steering the pruner in FLOP space; ``None`` prunes by a cubic sparsity schedule.
        final_sparsity: without a budget, the schedule's final sparsity of the weights.
        pattern: prune N:M (``"2:4"``) by a cubic schedule instead (no budget).
        limit_batches: batches per epoch (``None``: all) for a quick check.
        seed: the seed of everything.

    Returns:
        The callback (its ``history`` and ``report``).

    Raises:
        ValueError: see :func:`demo_callback`.
    """
    callback = demo_callback(
        epochs=epochs, budget=budget, final_sparsity=final_sparsity, pattern=pattern
    )
    pl.seed_everything(seed, verbose=False)
    logging.getLogger(pl.__name__).setLevel(logging.WARNING)  # before the Trainer's notes
    logger = submodule("loggers").TensorBoardLogger(str(output), name="demo")
    # None, not 1.0, for all batches, and a logging interval within an epoch (23 batches):
    # Lightning's notices about those settings are not news to a demo's user
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=[callback],
        limit_train_batches=limit_batches,
        limit_val_batches=limit_batches,
        log_every_n_steps=min(10, limit_batches or 10),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        deterministic=True,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(DigitsCNN(), DigitsDataModule())
    report = callback.report
    directory = callback.directory
    out = sys.stdout
    if report is not None:
        out.write(report.to_markdown() + "\n\n")
    out.write(_curve_table(callback.history))
    acc = trainer.callback_metrics.get("val_acc")
    if acc is not None:
        out.write(f"\nfinal val_acc: {float(acc):.3f}\n")
    out.write(f"TensorBoard logs, history, report and plot: {directory}\n")
    out.write(f"see them with:  tensorboard --logdir {output}\n")
    return callback


def _curve_table(history: list[HistoryPoint]) -> str:
    """Epoch by epoch: sparse FLOPs against the budget's schedule (or the sparsity target)."""
    budget = history[0].budget_limit is not None
    head = "scheduled FLOPs" if budget else "target sparsity"
    lines = [
        f"epochs done  sparse FLOPs  {head:>15}  sparse/dense  realizable FLOPs  param sparsity"
    ]
    for point in history:
        planned = point.budget_scheduled if budget else point.target_sparsity
        text = "" if planned is None else (f"{planned:,.0f}" if budget else f"{planned:.3f}")
        realizable = "" if point.flops_realizable is None else f"{point.flops_realizable:,}"
        lines.append(
            f"{point.epoch:>11}  {point.flops_sparse:>12,}  {text:>15}"
            f"  {point.flops_ratio:>12.3f}  {realizable:>16}  {point.param_sparsity:>14.3f}"
        )
    if budget:
        lines.append(f"budget: {history[-1].budget_limit:,.0f} sparse FLOPs per example")
    return "\n".join(lines) + "\n"
