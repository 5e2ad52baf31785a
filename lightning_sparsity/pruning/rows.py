"""Structured pruning by rows (dim 0: output channels / features), for sparsity and FLOPs.

A row scores by the ``p``-norm of its effective entries. Rows of different layers compare
by the normalized norm ``||row||_p / row_numel ** (1 / p)`` (:func:`row_scales`). A row mask
becomes an entry mask with :func:`expand_rows`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_sparsity.pruning.masks import mask_dtype

__all__ = ["expand_rows", "row_scales", "row_scores"]


def row_scores(
    trained: Sequence[Tensor], masks: Sequence[Tensor | None], norm: float
) -> tuple[list[Tensor], list[Tensor | None], list[int]]:
    """Per layer: the ``norm``-norms of the effective rows, the live rows, the row size.

    Args:
        trained: The trained weights.
        masks: Their current keep masks (``None``: not masked).
        norm: The ``p`` of the row norm, > 0 (``inf`` allowed).

    Returns:
        Per layer: the row norms (one per row), the rows with any entry kept (``None`` when
        not masked), and the entries per row.
    """
    scores: list[Tensor] = []
    row_keeps: list[Tensor | None] = []
    for orig, mask in zip(trained, masks, strict=True):
        rows = orig.shape[0] if orig.dim() else 1
        eff = orig.detach() if mask is None else orig.detach() * mask
        scores.append(torch.linalg.vector_norm(eff.reshape(rows, -1), ord=norm, dim=1))
        row_keeps.append(None if mask is None else (mask.reshape(rows, -1) != 0).any(1))
    return (
        scores,
        row_keeps,
        [o.numel() // s.numel() for o, s in zip(trained, scores, strict=True)],
    )


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
        shape = (-1,) + (1,) * (orig.dim() - 1)
        keep = row_mask.reshape(shape).expand_as(orig).to(mask_dtype(orig))
        keeps.append(keep if mask is None else keep * mask)
    return keeps
