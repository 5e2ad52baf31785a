"""Pruning to a FLOP target: the keep masks whose sparse FLOPs land at a wanted number.

Sparse FLOPs are ``fixed + others + sum(cost_l * nnz_l)``: ``fixed`` for what no weight
changes, ``others`` for parameters with a cost that are not pruned (counted with their
current nonzeros, :func:`other_flops`), and per pruned weight ``l`` its FLOPs per nonzero
``cost_l``. :func:`flop_target_keeps` removes the smallest weights (or rows) until the removed
FLOPs are closest to what the target asks, or, with ``not_above``, until they reach it and
then keeps back what fits (:func:`fill_gap`). ``MagnitudePruner.apply_flop_target`` is the
public entry; this module holds its math.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from lightning_sparsity.pruning import select
from lightning_sparsity.pruning.masks import locate, mask_dtype, nonzero_counts
from lightning_sparsity.pruning.rows import expand_rows, row_scales, row_scores

__all__ = [
    "check_flop_arguments",
    "fill_gap",
    "flop_target_keeps",
    "other_flops",
    "structured_flop_keeps",
]


def _bad(value: object) -> bool:
    return (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (math.isfinite(value) and value >= 0)
    )


def check_flop_arguments(
    target_flops: float, fixed_flops: float, flops_per_nonzero: Mapping[str, float]
) -> None:
    """Check the numbers of a FLOP target, reporting every problem at once.

    Args:
        target_flops: The sparse FLOPs wanted.
        fixed_flops: FLOPs that no weight changes.
        flops_per_nonzero: FLOPs per nonzero weight keyed by parameter FQN.

    Raises:
        ValueError: If a number is not finite or negative.
    """
    errors = [
        f"`{arg}` must be a finite number >= 0, got {value!r}"
        for arg, value in (("target_flops", target_flops), ("fixed_flops", fixed_flops))
        if _bad(value)
    ]
    errors += [
        f"`flops_per_nonzero[{k!r}]` must be a finite number >= 0, got {v!r}"
        for k, v in flops_per_nonzero.items()
        if _bad(v)
    ]
    if errors:
        raise ValueError("apply_flop_target: " + "; ".join(errors))


def other_flops(
    model: nn.Module, flops_per_nonzero: Mapping[str, float], pruned: set[str]
) -> float:
    """The FLOPs of the parameters in ``flops_per_nonzero`` that are not pruned.

    Args:
        model: The model.
        flops_per_nonzero: FLOPs per nonzero weight keyed by parameter FQN.
        pruned: The FQNs of the pruned parameters (left out here).

    Returns:
        ``sum(flops_per_nonzero[p] * nnz(p))`` over the other parameters (one host sync).

    Raises:
        ValueError: If a key names no parameter of ``model``.
    """
    others = [k for k in flops_per_nonzero if k not in pruned]
    if not others:
        return 0.0
    found = locate(model, others)
    unknown = [k for k, where in found.items() if where is None]
    if unknown:
        raise ValueError(f"`flops_per_nonzero` names no parameter of the model: {unknown}")
    nnz = nonzero_counts([where for where in found.values() if where is not None])
    return sum(flops_per_nonzero[k] * z for k, z in zip(others, nnz, strict=True))


def flop_target_keeps(
    trained: list[Tensor],
    masks: list[Tensor | None],
    costs: list[float],
    target_flops: float,
    fixed_flops: float,
    others: float,
    *,
    norm: float | None = None,
    not_above: bool = False,
) -> list[Tensor]:
    """Keep masks whose sparse FLOPs land closest to ``target_flops`` (one global cut).

    Warns when the target is below what pruning these weights can reach (then every weight
    that costs FLOPs is pruned). Monotone: already pruned entries stay pruned.

    Args:
        trained: The pruned weights, as trained.
        masks: Their current keep masks (``None``: not masked).
        costs: FLOPs per nonzero weight, one per weight (0: pruned at the same threshold,
            free).
        target_flops: The sparse FLOPs wanted.
        fixed_flops: FLOPs that no weight here changes.
        others: FLOPs of parameters with a cost that are not pruned (:func:`other_flops`).
        norm: Prune whole rows scored by this ``p``-norm (:mod:`.rows`); ``None``: entries.
        not_above: Land at or below the target: the shortest magnitude prefix that reaches
            it, then :func:`fill_gap` (entries only).

    Returns:
        One keep mask per weight, in :func:`~lightning_sparsity.pruning.masks.mask_dtype`.
    """
    all_dense = (
        fixed_flops + others + sum(c * o.numel() for c, o in zip(costs, trained, strict=True))
    )
    if target_flops < fixed_flops + others:
        warnings.warn(
            f"target_flops={target_flops:g} is below what pruning these weights can reach"
            f" ({fixed_flops + others:g}); pruning every weight that costs FLOPs",
            UserWarning,
            stacklevel=3,
        )
    remove = all_dense - target_flops
    if norm is not None:
        return structured_flop_keeps(trained, masks, costs, remove, norm, not_above)
    sources = select.make_sources(trained, masks, None, costs)
    (cut,) = select.cuts([(sources, float(remove))], weighted=True, reach=not_above)
    keeps = select.keep_masks(sources, cut, [mask_dtype(o) for o in trained])
    if not_above:
        kept = sum(
            c * int(((o != 0) & (k != 0)).sum())
            for c, o, k in zip(costs, trained, keeps, strict=True)
        )
        fill_gap(trained, masks, keeps, costs, target_flops - fixed_flops - others - kept)
    return keeps


def structured_flop_keeps(
    trained: list[Tensor],
    masks: list[Tensor | None],
    costs: list[float],
    remove: float,
    norm: float,
    not_above: bool = False,
) -> list[Tensor]:
    """Row keep masks (expanded to entries) that remove FLOPs closest to ``remove``.

    Rows compare by their normalized ``norm``-norm; a row weighs its cost per weight times
    its size.

    Args:
        trained: The pruned weights, as trained.
        masks: Their current keep masks.
        costs: FLOPs per nonzero weight, one per weight.
        remove: The FLOPs to remove, already removed ones included.
        norm: The ``p`` of the row norm.
        not_above: Remove at least ``remove`` (the smallest prefix of rows that reaches it).

    Returns:
        One keep mask per weight, of its shape.
    """
    scores, row_keeps, row_sizes = row_scores(trained, masks, norm)
    weights = [c * n for c, n in zip(costs, row_sizes, strict=True)]
    sources = select.make_sources(scores, row_keeps, row_scales(row_sizes, norm), weights)
    (cut,) = select.cuts([(sources, float(remove))], weighted=True, reach=not_above)
    return expand_rows(trained, masks, select.keep_masks(sources, cut))


def fill_gap(
    trained: list[Tensor],
    masks: Sequence[Tensor | None],
    keeps: list[Tensor],
    costs: list[float],
    gap: float,
) -> None:
    """Keep back just-pruned weights, largest first, whose cost fits in ``gap`` (in place).

    After the shortest magnitude prefix that reaches a FLOP target, the sparse FLOPs sit up
    to one (costly) weight below it; restoring the largest of the weights this step pruned
    whose FLOP cost still fits closes the gap to under the cheapest such cost.

    Args:
        trained: The pruned weights, as trained.
        masks: Their keep masks before this step.
        keeps: Their new keep masks, updated in place.
        costs: FLOPs per nonzero weight, one per weight.
        gap: The FLOPs left below the target.
    """
    candidates: list[tuple[float, int, int]] = []  # (|w|, tensor index, flat index)
    for t, (weight, mask, keep, cost) in enumerate(zip(trained, masks, keeps, costs, strict=True)):
        if not 0 < cost <= gap:
            continue
        newly = (keep == 0) & (weight != 0)
        if mask is not None:
            newly &= mask != 0
        scores = torch.where(newly, weight.abs(), torch.full_like(weight, -1.0)).reshape(-1)
        k = min(int(gap // cost), int(newly.sum()))
        if k:
            values, index = torch.topk(scores.float(), k)
            candidates += [(v, t, i) for v, i in zip(values.tolist(), index.tolist(), strict=True)]
    candidates.sort(key=lambda c: (-c[0], c[1], c[2]))  # largest first; ties in a fixed order
    for _, t, i in candidates:
        if costs[t] <= gap:
            keeps[t].view(-1)[i] = 1
            gap -= costs[t]
