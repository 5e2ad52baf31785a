"""How a target sparsity is spread over the pruned layers.

- ``"global"``: one magnitude threshold over every pruned weight (no per-layer numbers).
- ``"uniform"``: every layer gets the target sparsity.
- ``"erk"``: Erdős–Rényi-Kernel layer densities (:func:`erk_densities`).
- ``"flops"``: one threshold on magnitudes scaled by :func:`flop_scales`, so layers that
  cost more FLOPs per weight are pruned harder.

:func:`layer_sparsities` gives the per-layer sparsities of ``"uniform"`` and ``"erk"``
(``None`` for the two global allocations); pure math on shapes and numbers, no tensors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal, get_args

__all__ = ["ALLOCATIONS", "Allocation", "erk_densities", "flop_scales", "layer_sparsities"]

Allocation = Literal["global", "uniform", "erk", "flops"]
ALLOCATIONS: tuple[str, ...] = get_args(Allocation)


def erk_densities(shapes: Sequence[Sequence[int]], density: float) -> list[float]:
    """Erdős–Rényi-Kernel layer densities (Evci et al. 2020, RigL), as in RigL's code.

    A layer's density is ``eps * sum(shape) / prod(shape)``, with ``eps`` set so the kept
    weights add up to ``density * sum(numel)``. Layers whose density would exceed 1 are kept
    dense (largest raw density first) and ``eps`` is solved again for the rest.

    Args:
        shapes: The weight shapes, e.g. ``(out, in, kh, kw)`` for a 2-D convolution.
        density: The overall fraction of weights to keep, in ``(0, 1]``.

    Returns:
        One density in ``(0, 1]`` per shape.

    Raises:
        ValueError: If ``density`` is not in ``(0, 1]`` or a shape is empty.
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"`density` must be in (0, 1], got {density!r}")
    if any(len(s) == 0 or math.prod(s) == 0 for s in shapes):
        raise ValueError(f"every shape must be non-empty, got {[tuple(s) for s in shapes]}")
    numels = [math.prod(s) for s in shapes]
    raw = [sum(s) / n for s, n in zip(shapes, numels, strict=True)]
    dense: set[int] = set()
    while len(dense) < len(shapes):
        sparse = [i for i in range(len(shapes)) if i not in dense]
        rhs = sum(density * numels[i] for i in sparse) - sum(
            (1.0 - density) * numels[i] for i in dense
        )
        eps = rhs / sum(raw[i] * numels[i] for i in sparse)
        top = max(raw[i] for i in sparse)
        if eps * top <= 1.0:
            return [1.0 if i in dense else eps * raw[i] for i in range(len(shapes))]
        dense.update(i for i in sparse if raw[i] == top)
    return [1.0] * len(shapes)


def layer_sparsities(
    allocation: Allocation, sparsity: float, shapes: Sequence[Sequence[int]]
) -> list[float] | None:
    """Per-layer sparsities of a per-layer allocation.

    Args:
        allocation: One of :data:`ALLOCATIONS`.
        sparsity: The overall target, in ``[0, 1)``.
        shapes: The pruned weights' shapes.

    Returns:
        One sparsity per shape for ``"uniform"`` and ``"erk"``; ``None`` for ``"global"`` and
        ``"flops"`` (one cut over all layers).
    """
    if allocation == "uniform":
        return [float(sparsity)] * len(shapes)
    if allocation == "erk":
        return [1.0 - d for d in erk_densities(shapes, 1.0 - sparsity)]
    return None


def flop_scales(
    names: Sequence[str], numels: Sequence[int], flops_per_nonzero: Mapping[str, float] | None
) -> list[float]:
    """Score factors of ``allocation="flops"``: ``mean_cost / cost_l`` per layer.

    ``cost_l`` is layer ``l``'s FLOPs per nonzero weight and ``mean_cost`` its
    weight-count-weighted mean over the layers, so a layer that costs more per weight scores
    lower and is pruned harder.

    Args:
        names: The pruned parameters' FQNs.
        numels: Their entry counts, in the same order.
        flops_per_nonzero: FLOPs per nonzero weight keyed by parameter FQN.

    Returns:
        One factor per name.

    Raises:
        ValueError: If ``flops_per_nonzero`` is ``None`` or lacks a finite cost > 0 for a name.
    """
    if flops_per_nonzero is None:
        raise ValueError('allocation="flops" needs `flops_per_nonzero`, got None')
    bad = {
        n: flops_per_nonzero.get(n)
        for n in names
        if not (
            isinstance(flops_per_nonzero.get(n), (int, float))
            and math.isfinite(flops_per_nonzero[n])
            and flops_per_nonzero[n] > 0
        )
    }
    if bad:
        raise ValueError(
            'allocation="flops" needs a finite cost > 0 in `flops_per_nonzero` for every'
            f" pruned parameter, got {bad}"
        )
    costs = [float(flops_per_nonzero[n]) for n in names]
    mean = sum(c * k for c, k in zip(costs, numels, strict=True)) / sum(numels)
    return [mean / c for c in costs]
