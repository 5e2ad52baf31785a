"""A deterministic pruned fit for kill-and-resume tests (imported by tests and the script).

The learning rate is 0, so weights never move: the masks, the curve and the budget's
decisions depend only on the schedule, never on which batches a resumed epoch sees again.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

import lightning_sparsity as ls
from tests.fits import Wide

EPOCHS = 6
BATCHES = 4  # per epoch: 64 examples, batch 16


class Frozen(Wide):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(64, 3, 16, 16, generator=g), torch.arange(64) % 10)
        return DataLoader(data, batch_size=16)


class Killer(pl.Callback):
    """SIGKILL this process at one hook: ("batch_end", global_step) or ("epoch_end", epoch)."""

    def __init__(self, hook: str, at: int) -> None:
        self.hook, self.at = hook, at

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        if self.hook == "batch_end" and trainer.global_step == self.at:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_epoch_end(self, trainer: Any, *args: Any) -> None:
        if self.hook == "epoch_end" and trainer.current_epoch == self.at:
            os.kill(os.getpid(), signal.SIGKILL)


def sparsity_callback() -> ls.SparsityCallback:
    schedule = ls.schedules.Linear(0.9, start_epoch=0, end_epoch=5)
    pruner = ls.MagnitudePruner(schedule=schedule, allocation="uniform")
    return ls.SparsityCallback(pruner, ls.FlopBudget("40%", finetune_epochs=1))


def fit(out: Path, every: int, kill: tuple[str, int, bool] | None = None, resume: bool = False):
    """One fit into ``out``; ``kill = (hook, at, after_sparsity_callback)``.

    A checkpoint every ``every`` optimizer steps, or with ``every=0`` at the end of each
    epoch's validation.

    Returns:
        The trainer, the model and the callback.
    """
    pl.seed_everything(0, verbose=False)
    callback = sparsity_callback()
    callbacks: list[Any] = [callback]
    if kill is not None:
        killer = Killer(kill[0], kill[1])
        callbacks = [callback, killer] if kill[2] else [killer, callback]
    if every:
        checkpoint = ModelCheckpoint(out / "ckpt", every_n_train_steps=every, save_last=True)
    else:  # every epoch, at the end of validation: before the epoch's end hooks
        checkpoint = ModelCheckpoint(out / "ckpt", save_on_train_epoch_end=False, save_last=True)
    callbacks.append(checkpoint)
    trainer = pl.Trainer(
        default_root_dir=out,
        max_epochs=EPOCHS,
        accelerator="cpu",
        logger=TensorBoardLogger(out, name="tb", version=0),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1,
        deterministic=True,
    )
    model = Frozen()
    ckpt = str(out / "ckpt" / "last.ckpt") if resume else None
    trainer.fit(model, ckpt_path=ckpt)
    return trainer, model, callback
