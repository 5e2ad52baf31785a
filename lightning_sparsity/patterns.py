"""N:M semi-structured sparsity: at most N nonzeros in every group of M consecutive weights.

Groups run along the input dimension, the layout ``torch.sparse.to_sparse_semi_structured``
expects: a weight's rows (dim 0, the outputs) flattened past dim 0 (a Linear's
``in_features``; a conv's ``in_channels × kh × kw``), cut into groups of ``M``. 2:4 is what
Ampere and later GPUs run at twice the dense rate (cuSPARSELt / CUTLASS); their kernels take
2-D weights whose rows and columns are multiples of a per-dtype minimum
(:data:`SEMI_STRUCTURED_MIN`, torch's CUTLASS table).

Pure tensor code, no Lightning: used by the pruner (which groups to prune, which weights to
keep) and by the counter (which weights conform, for realizable FLOPs).
"""

from __future__ import annotations

import math
import re

import torch
from torch import Tensor

__all__ = [
    "SEMI_STRUCTURED_MIN",
    "Pattern",
    "conforms",
    "group_losses",
    "group_view",
    "kernel_problem",
    "parse_pattern",
    "pattern_keep",
]

Pattern = tuple[int, int]  # (N kept, M per group)

#: torch's CUTLASS semi-structured kernels: (rows, columns) each dimension of a 2-D weight
#: must be a multiple of (``SparseSemiStructuredTensorCUTLASS._DTYPE_SHAPE_CONSTRAINTS``)
SEMI_STRUCTURED_MIN: dict[torch.dtype, tuple[int, int]] = {
    torch.float32: (32, 32),
    torch.float16: (32, 64),
    torch.bfloat16: (32, 64),
    torch.int8: (16, 128),
}

_PATTERN = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_pattern(text: object) -> Pattern:
    """``"2:4"`` → ``(2, 4)``.

    Raises:
        ValueError: unless ``text`` is ``"N:M"`` with ``1 <= N < M``.
    """
    match = _PATTERN.match(text) if isinstance(text, str) else None
    if match is None or not 1 <= int(match.group(1)) < int(match.group(2)):
        raise ValueError(f"`pattern` must be 'N:M' with 1 <= N < M (e.g. '2:4'), got {text!r}")
    return int(match.group(1)), int(match.group(2))


def _row_length(weight: Tensor) -> int:
    # from the shape alone: no indexing (a sharded weight's global shape, no communication)
    return math.prod(weight.shape[1:]) if weight.dim() > 1 and weight.shape[0] else 0


def kernel_problem(weight: Tensor, pattern: Pattern) -> str | None:
    """Why ``weight`` cannot carry ``pattern`` (``None`` if it can).

    Every weight needs 2+ dimensions and rows whose length is a multiple of M. A 2-D weight
    pruned 2:4 must also fit the semi-structured kernels' shape rule for its dtype.

    The one rule for both sides: the pruner prunes to ``pattern`` only the weights it
    accepts, and realizable FLOPs credit ``pattern`` only to those
    (:func:`lightning_sparsity.counting.realizable.probe`). It reads the shape and dtype
    alone (no device work, no host sync; a sharded weight's whole shape).
    """
    n, m = pattern
    if weight.dim() < 2:
        return f"a {weight.dim()}-D weight has no input dimension to group"
    length = _row_length(weight)
    if length % m:
        return f"its rows hold {length} weights, not a multiple of {m}"
    if (n, m) == (2, 4) and weight.dim() == 2:
        rows_min, cols_min = SEMI_STRUCTURED_MIN.get(weight.dtype, (32, 32))
        rows, cols = weight.shape
        if rows % rows_min or cols % cols_min:
            return (
                f"its shape {tuple(weight.shape)} is not a multiple of ({rows_min}, {cols_min}),"
                f" what the 2:4 kernels take for {weight.dtype}"
            )
    return None


def group_view(t: Tensor, m: int) -> Tensor:
    """``t`` as ``[groups, M]``: rows flattened past dim 0, cut into groups of ``M``."""
    return t.reshape(t.shape[0], -1).reshape(-1, m)


def conforms(weight: Tensor, pattern: Pattern) -> Tensor:
    """Whether every group holds at most N nonzeros: a 0-dim bool tensor (no host sync).

    A weight that cannot carry the pattern (see :func:`kernel_problem`, shape only) does
    not conform.
    """
    n, m = pattern
    if weight.dim() < 2 or _row_length(weight) % m:
        return torch.zeros((), dtype=torch.bool, device=weight.device)
    return ((group_view(weight, m) != 0).sum(1) <= n).all()


def group_losses(weight: Tensor, keep: Tensor | None, pattern: Pattern) -> Tensor:
    """Per group, the magnitude pruning it N:M would remove: its ``M - N`` smallest ``|w|``.

    Entries already pruned (``keep`` 0) count as 0. Returns ``[groups]`` in the weight's
    dtype.
    """
    n, m = pattern
    magnitude = weight.detach().abs()
    if keep is not None:
        magnitude = magnitude * keep
    smallest = torch.sort(group_view(magnitude, m), dim=1).values[:, : m - n]
    return smallest.sum(1)


def pattern_keep(weight: Tensor, keep: Tensor | None, pattern: Pattern, prune: Tensor) -> Tensor:
    """The keep mask after pruning the groups flagged in ``prune`` to N:M.

    In a pruned group the N largest ``|w|`` are kept (ties: the lower index), entries already
    pruned first to go; the other groups keep their current mask.

    Args:
        weight: the weight (or this process's shard of it).
        keep: its current keep mask, or ``None``.
        pattern: ``(N, M)``.
        prune: ``[groups]`` bool, True for the groups to prune.

    Returns:
        A bool keep mask of ``weight``'s shape.
    """
    n, m = pattern
    current = (
        torch.ones(weight.shape, dtype=torch.bool, device=weight.device)
        if keep is None
        else keep != 0
    )
    score = weight.detach().abs().to(torch.float64)
    score = torch.where(current, score, torch.full_like(score, -1.0))
    order = torch.sort(group_view(score, m), dim=1, descending=True, stable=True).indices
    largest = torch.zeros(order.shape, dtype=torch.bool, device=weight.device)
    largest.scatter_(1, order[:, :n], True)
    groups = group_view(current, m)
    out = torch.where(prune.reshape(-1, 1), groups & largest, groups)
    return out.reshape(weight.shape)
