"""A real DDP fit (gloo, 2 CPU processes) pruning by ``score=`` (argv[2]), or RigL / SET.

Run as ``python scores_ddp.py OUT_DIR SCORE``; Lightning's ``ddp`` launcher re-runs this
script for rank 1. The ranks see different halves of the data (DistributedSampler), so
their layer inputs differ; each writes ``rank<N>.json`` with a digest of its masks.
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
from torch.utils.data import DataLoader, TensorDataset

import lightning_sparsity as ls
from tests.fits import Learning, two_rank_trainer


class Net(Learning):
    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(0)
        # the second half of the examples 5x larger in the last 8 features: each rank's
        # half gives other input norms
        x = torch.randn(64, 16, generator=g)
        x[1::2, 8:] *= 5.0
        return DataLoader(TensorDataset(x, torch.arange(64) % 4), batch_size=8)


def main(out: Path, score: str) -> None:
    warnings.filterwarnings("ignore")
    pl.seed_everything(0, verbose=False)
    pruner: ls.MagnitudePruner
    if score in ("rigl", "set"):  # 4 steps an epoch per rank: updates at 2, 4, 6
        cls = ls.RigL if score == "rigl" else ls.SET
        pruner = cls(0.7, allocation="uniform", delta_t=2, end_step=7, seed=5)
    else:
        schedule = ls.schedules.Step(milestones=[1, 2], sparsities=[0.4, 0.7])
        pruner = ls.MagnitudePruner(schedule=schedule, score=score, seed=5)
    callback = ls.SparsityCallback(pruner, write_files=False, verbose=False)
    trainer = two_rank_trainer(out, [callback], 2)
    model = Net()
    trainer.fit(model)
    masks = torch.cat([m.flatten() for m in pruner.masks(model).values()]).to(torch.uint8)
    result = {
        "rank": trainer.global_rank,
        "masks_sha": hashlib.sha256(masks.numpy().tobytes()).hexdigest(),
        "pruned": int((masks == 0).sum()),
        "updates": getattr(pruner, "updates", None),
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))
    dist.barrier()
    os._exit(0)  # see ddp_fit.py: no interpreter teardown under gloo


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
