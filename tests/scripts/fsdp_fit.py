"""A real FSDP2 fit (Lightning's ModelParallelStrategy, fully_shard, gloo, 2 CPU ranks).

Run as ``python fsdp_fit.py OUT_DIR CASE``; Lightning's launcher re-runs this script for rank
1. Each rank writes ``rank<N>.json``: its history and the hash of the whole masks, gathered
from the shards (for the test only: the library never gathers a weight).
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from pytorch_lightning.strategies import ModelParallelStrategy
from torch.distributed.fsdp import fully_shard

from tests.fits import two_rank_trainer
from tests.fsdp_cases import CASES, Frozen, masks_digest, state_on_pruned


class Sharded(Frozen):
    def configure_model(self) -> None:
        for layer in (self.conv1, self.conv2, self.fc1, self.fc2):
            fully_shard(layer)
        fully_shard(self)


def whole_masks(pruner, model) -> dict[str, torch.Tensor]:
    """Every rank's Shard(0) mask, gathered in rank order (test only)."""
    out = {}
    for name, local in pruner.masks(model).items():
        parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, local.contiguous())
        out[name] = torch.cat(parts)
    return out


def main(out: Path, case: str) -> None:
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    model = Sharded()
    callback = CASES[case]()
    trainer = two_rank_trainer(
        out,
        [callback],
        4,
        strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
        limit_val_batches=0,
    )
    trainer.fit(model)
    whole = whole_masks(callback.pruning, model)
    result = {
        "rank": trainer.global_rank,
        "history": [p.to_dict() for p in callback.history],
        "masks": masks_digest(whole),
        "live": [int(whole[name].sum()) for name in sorted(whole, key=list(whole).index)],
        "updates": getattr(callback.pruning, "updates", None),
        "state_on_pruned": state_on_pruned(trainer.optimizers[0], callback.pruning, model),
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))
    # both files written, then out without the interpreter's teardown: under load, c10d's
    # threads sometimes abort a gloo process at exit ("terminate called without an active
    # exception", seen in CI after a complete fit, with or without destroy_process_group)
    dist.barrier()
    os._exit(0)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
