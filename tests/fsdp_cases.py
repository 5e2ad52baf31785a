"""The fits compared between FSDP2 (tests/scripts/fsdp_fit.py) and one process."""

from __future__ import annotations

import hashlib

import torch

import lightning_sparsity as ls
from tests.fits import Wide


class Frozen(Wide):
    """Wide with a zero learning rate: the masks depend only on the initial weights. The
    momentum builds state on every entry, which each prune must clear on the pruned ones."""

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0, momentum=0.9)

    def val_dataloader(self) -> None:  # type: ignore[override]
        return None


def schedule() -> ls.SparsityCallback:
    pruner = ls.MagnitudePruner(schedule=ls.schedules.Cubic(0.8, start_epoch=0, end_epoch=3))
    return ls.SparsityCallback(pruner, write_files=False, verbose=False)


def uniform() -> ls.SparsityCallback:
    pruner = ls.MagnitudePruner(
        schedule=ls.schedules.Linear(0.7, start_epoch=0, end_epoch=2), allocation="uniform"
    )
    return ls.SparsityCallback(pruner, write_files=False, verbose=False)


def adjust() -> ls.SparsityCallback:
    budget = ls.FlopBudget("30%", by_epoch=3, action="adjust")
    return ls.SparsityCallback(ls.MagnitudePruner(), budget, write_files=False, verbose=False)


def pattern() -> ls.SparsityCallback:
    # fc1 along its in_features; conv2 (16 -> 16) along its input channels at each of its 9
    # kernel positions, on each rank's Shard(0) rows
    schedule = ls.schedules.Cubic(0.5, start_epoch=0, end_epoch=3)
    pruner = ls.MagnitudePruner(schedule=schedule, pattern="2:4", include=["fc1", "conv2"])
    return ls.SparsityCallback(pruner, write_files=False, verbose=False)


def pattern_budget() -> ls.SparsityCallback:
    # fc1 at 2:4 saves half its 131,072 FLOPs: the floor is ~90% of the 648,448 dense
    budget = ls.FlopBudget("93%", by_epoch=3, action="adjust")
    pruner = ls.MagnitudePruner(pattern="2:4", include=["fc1"])
    return ls.SparsityCallback(pruner, budget, write_files=False, verbose=False)


def scored(score: str):
    """The schedule case ranking by ``score``: random draws per parameter name and seed
    (each rank its rows of the same draw); wanda's input norms summed over the ranks equal
    one process's over all the data."""

    def case() -> ls.SparsityCallback:
        schedule = ls.schedules.Cubic(0.8, start_epoch=0, end_epoch=3)
        pruner = ls.MagnitudePruner(schedule=schedule, score=score, seed=4)
        return ls.SparsityCallback(pruner, write_files=False, verbose=False)

    return case


def rigl() -> ls.SparsityCallback:
    """RigL, an update every step until step 3 (each rank's batch: one step an epoch)."""
    pruner = ls.RigL(0.8, allocation="uniform", delta_t=1, end_step=3, seed=4)
    return ls.SparsityCallback(pruner, write_files=False, verbose=False)


CASES = {
    "schedule": schedule,
    "uniform": uniform,
    "adjust": adjust,
    "pattern": pattern,
    "pattern_budget": pattern_budget,
    "random": scored("random"),
    "wanda": scored("wanda"),
    "rigl": rigl,
}
#: cases whose sharded fit equals one process (RigL's steps see other batches there)
SAME_AS_ONE_PROCESS = [c for c in CASES if c != "rigl"]


def masks_digest(masks: dict[str, torch.Tensor]) -> str:
    """One hash of the whole masks, in name order."""
    digest = hashlib.sha256()
    for name in sorted(masks):
        digest.update(name.encode())
        digest.update(masks[name].to(torch.uint8).flatten().numpy().tobytes())
    return digest.hexdigest()


def state_on_pruned(optimizer: torch.optim.Optimizer, pruner: ls.MagnitudePruner, model) -> int:
    """Nonzero momentum entries on pruned entries, this process's shards (brute force)."""
    from lightning_sparsity.pruning import masks

    total = 0
    for name, keep in pruner.masks(model).items():
        module, attr = masks.locate(model, [name])[name]  # type: ignore[misc]
        buffer = optimizer.state[masks.trained(module, attr)]["momentum_buffer"]
        local = buffer.to_local() if hasattr(buffer, "to_local") else buffer
        total += int((local[~keep.bool()] != 0).sum())
    return total
