"""``lightning-sparsity demo``: prune a small CNN on the embedded digits data.

Real data that ships inside scikit-learn (no download), a real ``Trainer`` fit with
:class:`~lightning_sparsity.SparsityCallback`, a cubic (AGP) pruning schedule, TensorBoard
logs, the history files, the final report and a PNG of the curves.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger

from lightning_sparsity.callback import SparsityCallback
from lightning_sparsity.demo.data import DigitsDataModule
from lightning_sparsity.demo.model import DigitsCNN
from lightning_sparsity.pruning import MagnitudePruner
from lightning_sparsity.pruning.schedules import Cubic

__all__ = ["run_demo"]


def run_demo(
    output: Path,
    *,
    epochs: int = 12,
    final_sparsity: float = 0.8,
    limit_batches: int | None = None,
    seed: int = 0,
) -> SparsityCallback:
    """Fit the digits CNN while pruning it along a cubic schedule; print where things are.

    Args:
        output: the TensorBoard root directory (the run goes to ``output/demo/version_N``).
        epochs: training epochs; pruning ramps over the first two thirds.
        final_sparsity: the schedule's final sparsity of conv and linear weights.
        limit_batches: batches per epoch (``None``: all) for a quick check.
        seed: the seed of everything.

    Returns:
        The callback (its ``history`` and ``report``).

    Raises:
        ValueError: if ``epochs`` < 1 (the schedule validates ``final_sparsity``).
    """
    if epochs < 1:
        raise ValueError(f"`epochs` must be >= 1, got {epochs}")
    pl.seed_everything(seed, verbose=False)
    end = max(1, (2 * epochs) // 3)
    pruner = MagnitudePruner(
        schedule=Cubic(final_sparsity=final_sparsity, start_epoch=0, end_epoch=end)
    )
    callback = SparsityCallback(pruning=pruner, per_layer=True)
    logger = TensorBoardLogger(str(output), name="demo")
    limit = limit_batches if limit_batches is not None else 1.0
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=[callback],
        limit_train_batches=limit,
        limit_val_batches=limit,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        deterministic=True,
    )
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(DigitsCNN(), DigitsDataModule())
    report = callback.report
    directory = callback.directory
    out = sys.stdout
    if report is not None:
        out.write(report.to_markdown() + "\n\n")
    out.write("epoch  sparse/dense FLOPs  parameter sparsity  target\n")
    for row in callback.history:
        target = "" if row["target_sparsity"] is None else f"{row['target_sparsity']:.3f}"
        out.write(
            f"{row['epoch']:>5}  {row['flops_ratio']:>18.3f}  {row['param_sparsity']:>18.3f}"
            f"  {target:>6}\n"
        )
    acc = trainer.callback_metrics.get("val_acc")
    if acc is not None:
        out.write(f"\nfinal val_acc: {float(acc):.3f}\n")
    out.write(f"TensorBoard logs, history, report and plot: {directory}\n")
    out.write(f"see them with:  tensorboard --logdir {output}\n")
    return callback
