"""Passes over weights in chunks, so that on CPU no op waits at an OpenMP barrier.

Chunks, threads and memory: every pass over the weights (a selection's histograms and masks,
nonzero counts, row scores, zeroing pruned entries) reads them in slices of at most
:func:`chunk_size` entries: on CPU ``2**15 - 64``, strictly below ATen's
``at::internal::GRAIN_SIZE`` (``2**15``), under which an op runs on the calling thread
without an OpenMP fork/join. Strictly: a reduction over exactly ``2**15`` entries forks (a
row sum of a 32 x 1024 block took 7.8 ms with two busy processes on 2 cores, 8-24 us at
32,767 or 32,704 entries). Under load that matters more than a second core: a parallel
region waits at its barrier for a scheduler time slice whenever another process (a
DataLoader worker) holds a core. Elsewhere ``2**22``, to bound temporaries.

Extra memory of a selection (:mod:`.select`), whatever the model: two chunk buffers (0.4 MiB
on CPU) and the histograms with their running sums, about 1 MiB per group (2 MiB weighted;
16 groups measured at 15.9 and 32.0 MiB peak), at most 16 groups at a time in one process
(every group at once when sharded: one all-reduce per level).

:func:`as_factor` makes a keep mask cheap to multiply by; :func:`count_nonzero` counts in
chunks without a host sync.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["as_factor", "chunk_size", "count_nonzero"]

# devices whose ops run in chunks of _HOST_CHUNK entries: ATen runs an op of fewer than
# at::internal::GRAIN_SIZE (2**15) elements on the calling thread, with no OpenMP region to
# join; a multiple of 64 for the vectorized loops
_HOST_DEVICES = ("cpu",)
_HOST_CHUNK = (1 << 15) - 64
_DEVICE_CHUNK = 1 << 22


def chunk_size(device: torch.device) -> int:
    """Entries per op for passes over weights on ``device``.

    On CPU ``2**15 - 64``, below ``at::internal::GRAIN_SIZE``: ATen runs an op of that size
    on the calling thread, so a pass in such chunks never waits at an OpenMP barrier, which
    costs a scheduler time slice whenever another process holds a core. Elsewhere ``2**22``,
    to bound temporaries.
    """
    return _HOST_CHUNK if device.type in _HOST_DEVICES else _DEVICE_CHUNK


def as_factor(keep: Tensor) -> Tensor:
    """A keep mask to multiply values by: a bool mask viewed as ``uint8`` (no copy).

    ``values * mask.view(torch.uint8)`` takes ATen's vectorized path, about 3x faster on
    CPU than ``values * mask`` or ``torch.where(mask, values, 0)`` with a bool mask.
    """
    return keep.view(torch.uint8) if keep.dtype == torch.bool else keep


def count_nonzero(t: Tensor, keep: Tensor | None = None) -> Tensor:
    """Nonzeros of ``t`` (where ``keep`` is not 0), chunk by chunk (0-d int64, no sync)."""
    flat, chunk = t.detach().reshape(-1), chunk_size(t.device)
    keeps = None if keep is None else as_factor(keep).reshape(-1)
    parts = [
        (
            flat[a : a + chunk] if keeps is None else flat[a : a + chunk] * keeps[a : a + chunk]
        ).count_nonzero()
        for a in range(0, flat.numel(), chunk)
    ]
    return (
        torch.stack(parts).sum() if parts else torch.zeros((), dtype=torch.int64, device=t.device)
    )
