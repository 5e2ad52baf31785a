"""Pruning to a FLOP target: the keep masks whose sparse FLOPs land at a wanted number.

Sparse FLOPs are ``fixed + others + sum(cost_l * nnz_l)``: ``fixed`` for what no weight
changes, ``others`` for parameters with a cost that are not pruned (counted with their
current nonzeros, :func:`other_flops`), and per pruned weight ``l`` its FLOPs per nonzero
``cost_l``. :func:`flop_target` removes the smallest weights (or rows) until the removed
FLOPs are closest to what the target asks, or, with ``not_above``, until they reach it and
then keeps back what fits (:func:`fill_gap`), and says where the FLOPs land.
``MagnitudePruner.apply_flop_target`` is the public entry; this module holds its math.

Host syncs: :func:`flop_target` reads twice, whatever the number of layers: the cut (with
the FLOPs of the other parameters, when :func:`other_flops_tensor` leaves them on the
device), then the nonzeros it leaves and, with ``not_above``, the candidates to keep back.

Sharded weights (FSDP2's ``Shard(0)``): pass the local chunks, ``group`` and the global
entry counts. The cut is global (:mod:`.select`); :func:`fill_gap` decides the same on every
rank: each rank offers its largest candidates per layer, one all-gather shows all of them to
every rank, each orders them alike (``|w|``, then tensor, rank, flat index: the global order)
and keeps back its own. Collectives: those of the cut plus one all-gather (and one
all-reduce in :func:`other_flops_tensor`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lightning_sparsity import _shards
from lightning_sparsity.pruning import select
from lightning_sparsity.pruning.chunks import chunk_size, count_nonzero
from lightning_sparsity.pruning.floors import floored, prunable
from lightning_sparsity.pruning.masks import (
    locate,
    mask_dtype,
    trained,
    trained_and_mask,
)
from lightning_sparsity.pruning.rows import expand_rows, row_scales, row_scores

__all__ = [
    "FlopKeeps",
    "check_flop_arguments",
    "fill_gap",
    "flop_target",
    "other_flops",
    "other_flops_tensor",
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


def other_flops_tensor(
    model: nn.Module,
    flops_per_nonzero: Mapping[str, float],
    pruned: set[str],
    *,
    group: dist.ProcessGroup | None = None,
) -> Tensor:
    """The FLOPs of the parameters in ``flops_per_nonzero`` that are not pruned, on the device.

    A 0-d ``float64`` tensor, no host sync: pass it to :func:`flop_target`, which reads it
    along with the cut. Sharded parameters count on every rank's shard, summed with one
    all-reduce over ``group``.

    Args:
        model: The model.
        flops_per_nonzero: FLOPs per nonzero weight keyed by parameter FQN.
        pruned: The FQNs of the pruned parameters (left out here).
        group: The process group sharded parameters are split over, or ``None``.

    Returns:
        ``sum(flops_per_nonzero[p] * nnz(p))`` over the other parameters.

    Raises:
        ValueError: If a key names no parameter of ``model``.
    """
    others = [k for k in flops_per_nonzero if k not in pruned]
    found = locate(model, others)
    unknown = [k for k, where in found.items() if where is None]
    if unknown:
        raise ValueError(f"`flops_per_nonzero` names no parameter of the model: {unknown}")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    terms: list[tuple[Tensor, bool]] = []
    for key, where in found.items():
        if where is None:
            continue
        tensor, keep = trained_and_mask(*where)
        nnz = count_nonzero(tensor, keep).to(torch.float64) * flops_per_nonzero[key]
        terms.append((nnz, _shards.is_sharded(trained(*where))))
    sharded = [t for t, s in terms if s]
    if group is not None and sharded:
        total = torch.stack(sharded)
        dist.all_reduce(total, group=group)
        sharded = list(total.unbind())
    out = torch.zeros((), dtype=torch.float64, device=device)
    shards = iter(sharded)
    for term, is_sharded in terms:  # in the map's order, as a float sum would add them
        out = out + (next(shards) if is_sharded else term)
    return out


def other_flops(
    model: nn.Module,
    flops_per_nonzero: Mapping[str, float],
    pruned: set[str],
    *,
    group: dist.ProcessGroup | None = None,
) -> float:
    """:func:`other_flops_tensor` read to the host: one host sync, none when nothing is left.

    Takes, returns and raises what :func:`other_flops_tensor` does.
    """
    if all(k in pruned for k in flops_per_nonzero):
        return 0.0
    return float(other_flops_tensor(model, flops_per_nonzero, pruned, group=group))


@dataclass(frozen=True)
class FlopKeeps:
    """What :func:`flop_target` returns.

    Attributes:
        keeps: One keep mask per pruned weight, in
            :func:`~lightning_sparsity.pruning.masks.mask_dtype`.
        flops: The sparse FLOPs once they are installed, under the same cost model
            (``fixed + others + sum(cost_l * nnz_l)``, nonzeros over all ranks).
    """

    keeps: list[Tensor]
    flops: float


def flop_target(
    trained: list[Tensor],
    masks: list[Tensor | None],
    costs: list[float],
    target_flops: float,
    fixed_flops: float,
    others: float | Tensor,
    *,
    norm: float | None = None,
    not_above: bool = False,
    numels: Sequence[int] | None = None,
    group: dist.ProcessGroup | None = None,
    floors: Sequence[int] | None = None,
    whole: Sequence[Tensor] | None = None,
    scores: Sequence[Tensor] | None = None,
) -> FlopKeeps:
    """Keep masks whose sparse FLOPs land closest to ``target_flops`` (one global cut).

    Warns when the target is below what pruning these weights can reach (then every weight
    that costs FLOPs is pruned). Monotone: already pruned entries stay pruned. Two host
    syncs, whatever the number of weights.

    Args:
        trained: The pruned weights, as trained (this process's ``Shard(0)`` chunks, when
            sharded).
        masks: Their current keep masks (``None``: not masked).
        costs: FLOPs per nonzero weight, one per weight (0: pruned at the same threshold,
            free).
        target_flops: The sparse FLOPs wanted.
        fixed_flops: FLOPs that no weight here changes.
        others: FLOPs of parameters with a cost that are not pruned: a number
            (:func:`other_flops`) or a 0-d tensor on the device (:func:`other_flops_tensor`,
            read along with the cut).
        norm: Prune whole rows scored by this ``p``-norm (:mod:`.rows`); ``None``: entries.
        not_above: Land at or below the target: the shortest magnitude prefix that reaches
            it, then :func:`fill_gap` (entries only).
        numels: Entries per weight over all ranks (default: ``trained``'s own).
        group: The process group the weights are sharded over, or ``None``.
        floors: Per weight, the entries (rows, with ``norm``) it keeps at least
            (:mod:`.floors`: its largest, one per row among entries; one more host read,
            two more rounds of cut where a floor binds). The FLOPs they keep are part of
            what pruning can reach.
        whole: The weights as the model holds them (``DTensor`` s when sharded), for the
            floors' counts over all ranks; default ``trained``.
        scores: What the weights are ranked by, one tensor of each weight's shape
            (:mod:`.scores`); default ``trained`` (magnitude). The FLOPs count ``trained``'s
            nonzeros.

    Returns:
        The keep masks and the sparse FLOPs they give.
    """
    sizes = [t.numel() for t in trained] if numels is None else list(numels)
    weight_flops = sum(c * n for c, n in zip(costs, sizes, strict=True))
    remove: float | Tensor
    if isinstance(others, Tensor):
        remove = others.to(torch.float64) + fixed_flops + weight_flops - target_flops
    else:
        remove = fixed_flops + others + weight_flops - target_flops
    extra = [others] if isinstance(others, Tensor) else []
    ranked = list(trained) if scores is None else list(scores)
    if norm is not None:
        sources = _row_sources(ranked, masks, costs, norm, group)
        # rows over all ranks: entries / row length
        units = [n // max(1, math.prod(t.shape[1:])) for n, t in zip(sizes, trained, strict=True)]
    else:
        sources = select.make_sources(ranked, masks, None, costs, group=group)
        units = sizes
    floors = [0] * len(trained) if floors is None else list(floors)
    # NB: a layer already below its floor keeps less than this (the warning only)
    kept_floor = sum(s.weight * f for s, f in zip(sources, floors, strict=True))
    found: list[select.Cut] = []
    read: list[float] = []

    def cut(protected: list[int]) -> list[Tensor]:
        most = prunable(sources, units, protected)
        clamped = torch.clamp(remove, max=most) if isinstance(remove, Tensor) else min(remove, most)
        cuts, read[:] = select._cuts(
            [(sources, clamped)], weighted=True, reach=not_above, extra=extra
        )
        found[:] = cuts
        return select.keep_masks(sources, cuts[0])

    unit_keeps, _ = floored(
        sources, units, floors, trained if whole is None else whole, cut, rows=norm is None
    )
    (cut_found,) = found
    other = read[0] if extra else float(others)
    if target_flops < fixed_flops + other + kept_floor:
        warnings.warn(
            f"target_flops={target_flops:g} is below what pruning these weights can reach"
            f" ({fixed_flops + other + kept_floor:g}: weight-free ops, unpruned weights and"
            " the per-layer floors); pruning every weight that costs FLOPs above its floor",
            UserWarning,
            stacklevel=3,
        )
    if norm is not None:
        keeps = expand_rows(trained, masks, unit_keeps)
    else:  # bool, as mask_dtype says
        keeps = [k.to(mask_dtype(o)) for k, o in zip(unit_keeps, trained, strict=True)]
    fill = not_above and norm is None
    limit = max(costs, default=0.0) if fill and cut_found.key > 0 else 0.0
    nnz, offers = _offers(trained, ranked, masks, keeps, costs, limit, sizes, group)
    kept = sum(c * z for c, z in zip(costs, nnz, strict=True))
    if fill:
        gap = target_flops - fixed_flops - other - kept
        nnz = [z + n for z, n in zip(nnz, _keep_back(keeps, costs, offers, gap), strict=True)]
    return FlopKeeps(
        keeps, fixed_flops + other + sum(c * z for c, z in zip(costs, nnz, strict=True))
    )


def _row_sources(
    trained: list[Tensor],
    masks: list[Tensor | None],
    costs: list[float],
    norm: float,
    group: dist.ProcessGroup | None,
) -> list[select.Source]:
    """Rows as selection sources: normalized norms, weighing their cost times their size."""
    scores, row_keeps, row_sizes = row_scores(trained, masks, norm)
    weights = [c * n for c, n in zip(costs, row_sizes, strict=True)]
    factors = row_scales(row_sizes, norm)
    return select.make_sources(scores, row_keeps, factors, weights, group=group)


# ----------------------------------------------------------------------------- fill_gap


@dataclass
class _Offers:
    """Candidates to keep back, from every rank: per rank, per tensor ``(|w|, flat index)``."""

    rank: int
    per_rank: list[list[list[tuple[float, int]]]]


def _largest(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` largest ``scores`` and their indices, without a host sync.

    Ties go by index: the result holds the first ``k`` of the order (-score, index), and
    possibly more entries equal to the k-th value: ``2k`` in all, padded with score -1.
    """
    k = min(k, scores.numel())
    kth = torch.topk(scores, k).values[-1]
    above = torch.nonzero_static(scores > kth, size=k, fill_value=-1).squeeze(1)
    at = torch.nonzero_static(scores == kth, size=k, fill_value=-1).squeeze(1)
    index = torch.cat([above, at])
    valid = index >= 0
    index = torch.where(valid, index, 0)
    return torch.where(valid, scores.index_select(0, index), -1.0), index


def _offers(
    trained: Sequence[Tensor],
    ranked: Sequence[Tensor],
    masks: Sequence[Tensor | None],
    keeps: Sequence[Tensor],
    costs: Sequence[float],
    limit: float,
    numels: Sequence[int],
    group: dist.ProcessGroup | None,
) -> tuple[list[int], _Offers]:
    """Read the nonzeros ``keeps`` leave and the candidates to keep back, in one host sync.

    Per tensor: the nonzeros over all ranks, and from every rank the highest ranked
    (``|ranked|``) weights this step pruned, as many as a gap of ``limit`` could hold (one
    all-gather when sharded).
    """
    device = trained[0].device
    parts: list[Tensor] = []
    sizes: list[int] = []
    chunk = chunk_size(device)
    for weight, rank_by, mask, keep, cost, numel in zip(
        trained, ranked, masks, keeps, costs, numels, strict=True
    ):
        parts.append(count_nonzero(weight, keep).to(torch.float64).reshape(1))
        # the same on every rank: offers are all-gathered
        k = min(numel, int(limit // cost) + 1) if 0 < cost <= limit else 0
        sizes.append(2 * k)
        if k == 0:
            continue
        flat, kept = weight.detach().reshape(-1), keep.reshape(-1)
        by = rank_by.detach().reshape(-1)
        before = None if mask is None else mask.reshape(-1)
        values = [torch.full((0,), -1.0, dtype=torch.float64, device=device)]
        index = [torch.zeros(0, dtype=torch.int64, device=device)]
        for a in range(0, flat.numel(), chunk):
            w = flat[a : a + chunk]
            newly = (kept[a : a + chunk] == 0) & (w != 0)
            if before is not None:
                newly &= before[a : a + chunk] != 0
            scores = torch.where(newly, by[a : a + chunk].abs().to(torch.float64), -1.0)
            v, i = _largest(scores, k)
            values.append(v)
            index.append(i + a)
        v, i = torch.cat(values), torch.cat(index)
        if v.numel() > 2 * k:  # in chunk order, ties stay in flat order
            v, j = _largest(v, k)
            i = i.index_select(0, j)
        pad = 2 * k - v.numel()
        parts += [v, torch.full((pad,), -1.0, dtype=torch.float64, device=device)]
        parts += [
            i.to(torch.float64),
            torch.zeros(pad, dtype=torch.float64, device=device),
        ]
    local = torch.cat(parts)
    rows = [local]
    rank = 0
    if group is not None:
        rank = dist.get_rank(group)
        rows = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
        dist.all_gather(rows, local, group=group)
    values = torch.stack(rows).tolist()  # the one host sync
    nnz = [0] * len(sizes)
    per_rank = []
    for row in values:
        pos, offers = 0, []
        for t, size in enumerate(sizes):
            nnz[t] += int(row[pos])
            pos += 1
            v, i = row[pos : pos + size], row[pos + size : pos + 2 * size]
            pos += 2 * size
            offers.append([(a, int(b)) for a, b in zip(v, i, strict=True) if a >= 0])
        per_rank.append(offers)
    return nnz, _Offers(rank, per_rank)


def _keep_back(
    keeps: Sequence[Tensor], costs: Sequence[float], offers: _Offers, gap: float
) -> list[int]:
    """Keep back offered weights, largest first, while their cost fits in ``gap``.

    Ties go in (tensor, rank, flat index) order; this rank writes its own into ``keeps``.
    Returns how many were kept back per tensor, over all ranks.
    """
    order = sorted(
        (-value, t, r, i)
        for r, per_tensor in enumerate(offers.per_rank)
        for t, pairs in enumerate(per_tensor)
        for value, i in pairs
    )
    restored = [0] * len(keeps)
    mine: list[list[int]] = [[] for _ in keeps]
    for _, t, r, i in order:
        if costs[t] <= gap:
            gap -= costs[t]
            restored[t] += 1
            if r == offers.rank:
                mine[t].append(i)
    for keep, index in zip(keeps, mine, strict=True):
        if index:
            at = torch.tensor(index, dtype=torch.int64)
            if keep.device.type != "cpu":
                at = at.to(keep.device, non_blocking=True)
            keep.view(-1).index_fill_(0, at, 1)
    return restored


def fill_gap(
    trained: list[Tensor],
    masks: Sequence[Tensor | None],
    keeps: list[Tensor],
    costs: list[float],
    gap: float,
    *,
    group: dist.ProcessGroup | None = None,
) -> None:
    """Keep back just-pruned weights, largest first, whose cost fits in ``gap`` (in place).

    After the shortest magnitude prefix that reaches a FLOP target, the sparse FLOPs sit up
    to one (costly) weight below it; restoring the largest of the weights this step pruned
    whose FLOP cost still fits closes the gap to under the cheapest such cost. Ties in
    ``|w|`` go in (tensor, flat index) order. One host sync (one all-gather when sharded:
    every rank decides alike and keeps back its own).

    Args:
        trained: The pruned weights, as trained.
        masks: Their keep masks before this step.
        keeps: Their new keep masks, updated in place.
        costs: FLOPs per nonzero weight, one per weight.
        gap: The FLOPs left below the target.
        group: The process group the weights are sharded over, or ``None``.
    """
    sizes = [t.numel() for t in trained]  # sharded: enough while a tensor's cost > 0
    _, offers = _offers(trained, trained, masks, keeps, costs, gap, sizes, group)
    _keep_back(keeps, costs, offers, gap)
