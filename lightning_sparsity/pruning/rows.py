"""Structured pruning by rows (dim 0: output channels / features), for sparsity and FLOPs.

A row scores by the ``p``-norm of its effective entries. Rows of different layers compare
by the normalized norm ``||row||_p / row_numel ** (1 / p)`` (:func:`row_scales`). A row mask
becomes an entry mask with :func:`expand_rows`.

Every op runs on blocks of whole rows of about one chunk
(:func:`~lightning_sparsity.pruning.chunks.chunk_size`): on CPU, on the calling thread. A
sharded weight (FSDP2's ``Shard(0)``) holds whole rows, so its local rows score and mask on
their own; an empty shard has no rows. No host sync.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_sparsity.pruning.chunks import as_factor, chunk_size
from lightning_sparsity.pruning.masks import mask_dtype

__all__ = ["expand_rows", "row_maxima", "row_scales", "row_scores"]


def _rows(t: Tensor) -> tuple[int, int, list[tuple[int, int]]]:
    """Rows, entries per row, and ``(first, end)`` blocks of rows of about one chunk."""
    rows = t.shape[0] if t.dim() else 1
    size = math.prod(t.shape[1:]) if t.dim() else 1
    step = max(1, chunk_size(t.device) // max(size, 1))
    return rows, size, [(a, min(a + step, rows)) for a in range(0, rows, step)]


def row_scores(
    trained: Sequence[Tensor], masks: Sequence[Tensor | None], norm: float
) -> tuple[list[Tensor], list[Tensor | None], list[int]]:
    """Per layer: the ``norm``-norms of the effective rows, the live rows, the row size.

    Args:
        trained: The trained weights (this process's part, when sharded).
        masks: Their current keep masks (``None``: not masked).
        norm: The ``p`` of the row norm, > 0 (``inf`` allowed).

    Returns:
        Per layer: the row norms (one per row), the rows with any entry kept (``None`` when
        not masked), and the entries per row.
    """
    scores: list[Tensor] = []
    row_keeps: list[Tensor | None] = []
    sizes: list[int] = []
    for orig, mask in zip(trained, masks, strict=True):
        rows, size, blocks = _rows(orig)
        x = orig.detach().reshape(rows, size)
        m = None if mask is None else mask.reshape(rows, size)
        score = torch.empty(rows, dtype=orig.dtype, device=orig.device)
        live = None if m is None else torch.empty(rows, dtype=torch.bool, device=orig.device)
        for a, b in blocks:
            block = x[a:b]
            if m is not None and live is not None:
                block = block * as_factor(m[a:b])
                torch.any(m[a:b] if m.dtype == torch.bool else m[a:b] != 0, dim=1, out=live[a:b])
            torch.linalg.vector_norm(block, ord=norm, dim=1, out=score[a:b])
        scores.append(score)
        row_keeps.append(live)
        sizes.append(size)
    return scores, row_keeps, sizes


def row_scales(row_sizes: Sequence[int], norm: float) -> list[float]:
    """Per layer: the factor ``1 / row_numel ** (1 / p)`` that normalizes its row norms."""
    return [1.0 / n ** (1.0 / norm) for n in row_sizes]


def expand_rows(
    trained: Sequence[Tensor], masks: Sequence[Tensor | None], row_masks: Sequence[Tensor]
) -> list[Tensor]:
    """Entry masks (in :func:`~lightning_sparsity.pruning.masks.mask_dtype`) from row masks.

    Args:
        trained: The trained weights.
        masks: Their current keep masks, combined with the row masks.
        row_masks: One keep mask per layer, one entry per row.

    Returns:
        One keep mask per layer, of its weight's shape.
    """
    keeps = []
    for orig, mask, row_mask in zip(trained, masks, row_masks, strict=True):
        rows, size, blocks = _rows(orig)
        keep = torch.empty((rows, size), dtype=mask_dtype(orig), device=orig.device)
        m = None if mask is None else mask.reshape(rows, size)
        for a, b in blocks:
            keep[a:b] = row_mask[a:b].unsqueeze(1)
            if m is not None:
                keep[a:b].masked_fill_(m[a:b] == 0, 0)
        keeps.append(keep.view(orig.shape))
    return keeps


def row_maxima(t: Tensor, keep: Tensor | None) -> Tensor:
    """A bool mask of each row's (dim 0) largest live ``|entry|``: the first, on a draw.

    Rows with no live entry hold none. Built in blocks of rows of about one chunk (each op
    runs on the calling thread on CPU), without a host sync.

    Args:
        t: A weight (this process's part, when sharded).
        keep: Its keep mask (``None``: every entry live).

    Returns:
        A bool tensor of ``t``'s shape.
    """
    rows, size, blocks = _rows(t)
    out = torch.zeros(rows, size, dtype=torch.bool, device=t.device)
    if not rows or not size:
        return out.view(t.shape)
    x = t.detach().reshape(rows, size)
    k = None if keep is None else keep.reshape(rows, size)
    for a, b in blocks:
        block = x[a:b].abs()
        if k is not None:
            live = k[a:b] != 0
            block = torch.where(live, block, -1.0)
        at = block.argmax(dim=1, keepdim=True)
        hit = torch.ones_like(at, dtype=torch.bool)
        if k is not None:
            hit = live.gather(1, at)
        out[a:b].scatter_(1, at, hit)
    return out.view(t.shape)
