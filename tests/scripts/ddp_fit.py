"""A real DDP fit (gloo, 2 CPU processes) with a pruner and a FLOP budget.

Run as ``python ddp_fit.py OUT_DIR``; Lightning's ``ddp`` launcher re-runs this script for
rank 1. Each rank writes ``rank<N>.json`` with what it saw.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.loggers import CSVLogger

import lightning_sparsity as ls
from tests.fits import Wide, two_rank_trainer


class LocalMetric(pl.Callback):
    """Each rank's own val_acc at each epoch end (logged without sync_dist: rank-local)."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.values.append(float(trainer.callback_metrics["val_acc"]))


def main(out: Path) -> None:
    warnings.filterwarnings("ignore")
    pl.seed_everything(0, verbose=False)
    pruner = ls.MagnitudePruner(
        schedule=ls.schedules.Linear(0.9, start_epoch=0, end_epoch=9), allocation="uniform"
    )
    # a guard that never trips (accuracy >= 0) reads each rank's own val_acc
    guard = ls.MetricGuard("val_acc", threshold=0.0)
    callback = ls.SparsityCallback(pruner, ls.FlopBudget("60%", finetune_epochs=1), guard=guard)
    local = LocalMetric()
    trainer = two_rank_trainer(
        out, [local, callback], 20, logger=CSVLogger(out, name="csv", version=0)
    )
    model = Wide()
    trainer.fit(model)
    masks = torch.cat([m.flatten() for m in pruner.masks(model).values()]).to(torch.uint8)
    result = {
        "rank": trainer.global_rank,
        "global_step": trainer.global_step,
        "current_epoch": trainer.current_epoch,
        "stopping_reason": callback.stopping_reason,
        "history": [point.to_dict() for point in callback.history],
        "local_val_acc": local.values,
        "masks_sha": hashlib.sha256(masks.numpy().tobytes()).hexdigest(),
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))
    # both files written, then out without the interpreter's teardown: under load, c10d's
    # threads sometimes abort a gloo process at exit ("terminate called without an active
    # exception", seen in CI after a complete fit, with or without destroy_process_group)
    dist.barrier()
    os._exit(0)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
