"""A real DDP fit (gloo, 2 CPU processes) counting training FLOPs, resumed from a checkpoint
taken on an epoch's last batch (before its end hook).

Run as ``python train_ddp.py OUT_DIR [step]`` (``step``: ``train_flops="step"``, the step
recorded as it runs on each rank); Lightning's ``ddp`` launcher re-runs this script for
rank 1. The ranks run different examples (no DistributedSampler): rank 0 24 in batches of 8,
rank 1 20 in batches of 7 (7, 7, 6): 3 steps each an epoch. First an uninterrupted 4-epoch
fit that saves a checkpoint at step 9 (the third epoch's last batch), then a fit resumed
from it; each rank writes ``rank<N>.json`` with both histories.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from tests.fits import Learning, stepped_callback, two_rank_trainer


class Net(Learning):
    def train_dataloader(self) -> DataLoader:
        rank = self.trainer.global_rank
        g = torch.Generator().manual_seed(rank)
        n, batch = (24, 8) if rank == 0 else (20, 7)
        data = TensorDataset(torch.randn(n, 16, generator=g), torch.arange(n) % 4)
        return DataLoader(data, batch_size=batch)


def fit(out: Path, ckpt: str | None, train_flops: Any) -> tuple[Any, list[dict]]:
    pl.seed_everything(0, verbose=False)
    callback = stepped_callback(train_flops=train_flops)
    saver = ModelCheckpoint(dirpath=out / "ckpt", every_n_train_steps=9, save_top_k=-1)
    trainer = two_rank_trainer(
        out,
        [callback, saver],
        4,
        enable_checkpointing=True,
        use_distributed_sampler=False,
        limit_val_batches=0,
    )
    trainer.fit(Net(), ckpt_path=ckpt)
    return trainer, [point.to_dict() for point in callback.history]


def main(out: Path, train_flops: Any) -> None:
    warnings.filterwarnings("ignore")
    trainer, whole = fit(out, None, train_flops)
    dist.barrier()
    (saved,) = (out / "ckpt").glob("*step=9.ckpt")
    _, resumed = fit(out / "resumed", str(saved), train_flops)
    result = {"rank": trainer.global_rank, "whole": whole, "resumed": resumed}
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))
    dist.barrier()
    os._exit(0)  # as ddp_fit.py: no interpreter teardown under load


if __name__ == "__main__":
    main(Path(sys.argv[1]), "step" if sys.argv[2:] == ["step"] else True)
