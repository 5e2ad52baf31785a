"""A small learning fit pruned by ``score=`` at epochs 2 and 4, for resume and kill tests."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

import lightning_sparsity as ls
from tests.fits import Learning, run_killed
from tests.resume_fit import Killer


class Net(Learning):
    def train_dataloader(self) -> DataLoader:
        """Other data each epoch (reloaded every epoch): a resume that lost what earlier
        epochs accumulated ranks differently, also for wanda's input norms."""
        g = torch.Generator().manual_seed(self.current_epoch)
        x = torch.randn(48, 16, generator=g) * torch.rand(16, generator=g) * 3
        return DataLoader(TensorDataset(x, torch.arange(48) % 4), batch_size=16)


def fit(
    root: Path, score: str, epochs: int, ckpt: str | None = None, kill_at: int | None = None
) -> Net:
    """3 steps an epoch; a checkpoint (``root/ckpt/last.ckpt``) at every epoch end;
    ``kill_at``: SIGKILL this process after that global step. ``score`` ``"rigl"`` or
    ``"set"``: that method at 70% instead, updating every 2 steps until step 10."""
    pruner: ls.MagnitudePruner
    if score in ("rigl", "set"):
        cls = ls.RigL if score == "rigl" else ls.SET
        pruner = cls(0.7, allocation="uniform", delta_t=2, end_step=10, seed=3)
    else:
        schedule = ls.schedules.Step(milestones=[2, 4], sparsities=[0.4, 0.7])
        pruner = ls.MagnitudePruner(schedule=schedule, score=score, seed=3)
    callbacks: list[pl.Callback] = [ls.SparsityCallback(pruner, write_files=False, verbose=False)]
    callbacks.append(ModelCheckpoint(dirpath=root / "ckpt", save_last=True))
    if kill_at is not None:
        callbacks.append(Killer("batch_end", kill_at))
    trainer = pl.Trainer(
        default_root_dir=root,
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        reload_dataloaders_every_n_epochs=1,
    )
    model = Net()
    trainer.fit(model, ckpt_path=ckpt)
    return model


def killed_and_resumed(root: Path, score: str, kill_at: int = 10) -> tuple[Net, Net]:
    """The fit SIGKILLed after global step ``kill_at`` (a real subprocess), resumed from its
    last epoch-end checkpoint to 5 epochs; and the same fit never interrupted."""
    run_killed("kill_scores.py", str(root / "cut"), score, str(kill_at))
    whole = fit(root / "whole", score, 5)
    resumed = fit(root / "cut", score, 5, ckpt=str(root / "cut" / "ckpt" / "last.ckpt"))
    return whole, resumed
