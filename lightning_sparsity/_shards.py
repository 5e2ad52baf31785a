"""Sharded parameters (``DTensor``: FSDP2, tensor parallelism), read shard by shard.

Counting and pruning work on the part of each weight this process holds and combine the
ranks with one all-reduce; no weight is ever gathered. Lightning-free; plain tensors pass
through unchanged (one process, DDP).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["is_sharded", "local", "nonfinite", "reduce_counts", "replicas", "shard_group"]


def _dtensor_type() -> type | None:
    try:  # torch >= 2.4
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch 2.3, or a build without distributed
        try:
            from torch.distributed._tensor import DTensor
        except ImportError:
            return None
    return DTensor


_DTENSOR = _dtensor_type()


def is_sharded(t: object) -> bool:
    """Whether ``t`` is a ``DTensor`` (a parameter sharded by FSDP2 / tensor parallelism)."""
    return _DTENSOR is not None and isinstance(t, _DTENSOR)


def local(t: Tensor) -> Tensor:
    """The part of ``t`` this process holds: a ``DTensor``'s local shard, else ``t``."""
    return t.to_local() if is_sharded(t) else t  # type: ignore[attr-defined]


def replicas(t: Tensor) -> int:
    """How many processes of its mesh hold each entry of ``t`` (1 for a plain tensor)."""
    if not is_sharded(t):
        return 1
    mesh, placements = t.device_mesh, t.placements  # type: ignore[attr-defined]
    out = 1
    for dim, placement in enumerate(placements):
        if placement.is_replicate():
            out *= mesh.size(dim)
    return out


def shard_group(tensors: Iterable[Any]) -> Any:
    """The process group over which the sharded ones among ``tensors`` are split, or ``None``.

    Supported: ``Shard(0)`` on one 1-D device mesh (FSDP2's layout).

    Raises:
        ValueError: For other placements, or sharded tensors on several meshes.
    """
    meshes: list[Any] = []
    for t in tensors:
        if not is_sharded(t):
            continue
        mesh, placements = t.device_mesh, t.placements
        if mesh.ndim != 1 or not (placements[0].is_shard() and placements[0].dim == 0):
            raise ValueError(
                "lightning_sparsity handles sharded weights in FSDP2's layout, Shard(0) on a"
                f" 1-D device mesh; got {tuple(placements)} on a {mesh.ndim}-D mesh"
            )
        if all(mesh != m for m in meshes):
            meshes.append(mesh)
    if len(meshes) > 1:
        raise ValueError("lightning_sparsity needs every sharded weight on one device mesh")
    return meshes[0].get_group() if meshes else None


def reduce_counts(counts: Tensor, tensors: Sequence[Tensor]) -> Tensor:
    """Whole-tensor counts from per-shard ``counts`` (one per tensor): one all-reduce.

    Plain tensors (held whole by every rank) and replicated ones are counted once.

    Args:
        counts: Per tensor, a count over what this process holds (a 1-D integer tensor).
        tensors: The tensors counted (``DTensor`` or plain).

    Returns:
        The counts over the whole tensors (``counts`` itself when nothing is sharded).
    """
    group = shard_group(tensors)
    if group is None:
        return counts
    dist.all_reduce(counts, group=group)
    size = dist.get_world_size(group)
    holders = [replicas(t) if is_sharded(t) else size for t in tensors]
    return counts // torch.tensor(holders, dtype=counts.dtype, device=counts.device)


def nonfinite(named: Sequence[tuple[str, Tensor]]) -> dict[str, int]:
    """How many inf/NaN entries each named floating tensor holds, where any (one host sync).

    Sharded tensors count on every shard, summed over the ranks. Meta and empty tensors
    are skipped.
    """
    kept = [(n, t) for n, t in named if t.is_floating_point() and not t.is_meta and t.numel()]
    if not kept:
        return {}
    with torch.no_grad():
        counts = torch.stack([(~torch.isfinite(local(t))).sum() for _, t in kept])
        bad = reduce_counts(counts, [t for _, t in kept]).tolist()
    return {name: int(c) for (name, _), c in zip(kept, bad, strict=True) if c}
