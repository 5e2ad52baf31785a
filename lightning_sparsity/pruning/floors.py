"""Per-layer floors: the fewest entries (rows, N:M groups) a pruned layer keeps; cuts under them.

A floor of ``k`` units keeps a layer's ``k`` largest units; for single entries, each row's
(dim 0) largest among them (:func:`~.rows.row_maxima`), so every output unit keeps an input
and the model's output still depends on its input. What a global cut under floors prunes is
exact: the smallest units outside every layer's floor, as many as the target asks (or all
of them, when it asks more).

Floors rarely bind, and marking them costs a selection of its own, so :func:`floored`
finds the same masks lazily: it cuts with no layer protected, checks every floor on the
device (one host read for all layers), and only then protects the layers whose floor was
broken and cuts again. A layer that keeps its floor unprotected keeps its protected units
anyway (they are its largest), so protecting it changes nothing: the result is the one with
every floor protected. Should the second cut break other floors, the third protects every
floor at once. At most three rounds whatever the number of layers; host reads: one cut
(and one check) when no floor binds, at most 3 cuts, 2 checks and 2 protections.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from lightning_sparsity._shards import reduce_counts
from lightning_sparsity.pruning import select
from lightning_sparsity.pruning.chunks import chunk_size, count_nonzero
from lightning_sparsity.pruning.rows import row_maxima
from lightning_sparsity.pruning.select import Source

__all__ = ["allowed", "entry_floors", "floor_count", "floored", "prunable"]


def floor_count(density: float, size: int) -> int:
    """Units of ``size`` that a floor ``density`` keeps: at least 1 when ``density > 0``."""
    if density <= 0 or size == 0:
        return 0
    return min(size, max(1, math.ceil(round(density * size, 6))))


def entry_floors(densities: Sequence[float], whole: Sequence[Tensor]) -> list[int]:
    """Entries each weight keeps at least: its floor density, and one per row (dim 0)."""
    out = []
    for d, w in zip(densities, whole, strict=True):
        rows = w.shape[0] if w.dim() else 1
        out.append(0 if d <= 0 else min(w.numel(), max(floor_count(d, w.numel()), rows)))
    return out


def prunable(sources: Sequence[Source], sizes: Sequence[int], protected: Sequence[int]) -> float:
    """What a cut can take with ``protected`` units of each source kept.

    A count, or the weight of weighted sources: ``sum(weight_l * (size_l - protected_l))``.
    """
    return sum(s.weight * (n - p) for s, n, p in zip(sources, sizes, protected, strict=True))


def allowed(
    wanted: float, sources: Sequence[Source], sizes: Sequence[int], protected: Sequence[int]
) -> float:
    """``wanted`` clamped to what a cut can take with ``protected`` units kept."""
    return min(wanted, prunable(sources, sizes, protected))


Cut = Callable[[list[int]], list[Tensor]]


def floored(
    sources: list[Source],
    sizes: list[int],
    floors: list[int],
    whole: Sequence[Tensor],
    cut: Cut,
    *,
    rows: bool = False,
) -> tuple[list[Tensor], list[int]]:
    """The unit keep masks of ``cut`` under the floors (see the module docstring).

    Args:
        sources: The selection's sources (one per layer, in ``cut``'s order).
        sizes: Units per source over all ranks.
        floors: Units each source keeps at least (0: no floor).
        whole: The layers' parameters as the model holds them (sharded: ``DTensor`` s),
            so the checks count over all ranks.
        cut: Given the protected units per source (0 for unprotected ones), clamps its
            target to what is left (:func:`prunable`), cuts and returns one bool keep mask
            per source; it must select on the same ``sources``.
        rows: The units are single entries: each row (dim 0) keeps one too.

    Returns:
        The keep masks of the last cut, and the units it protected per source (what the
        cut's target was clamped with: :func:`prunable` of them).
    """
    protected = [0] * len(sources)
    guarded: set[int] = set()
    for attempt in range(3):
        masks = cut(protected)
        if attempt == 2:  # every floor protected: they hold by construction
            return masks, protected
        broken = [i for i in _broken(sources, masks, floors, whole, rows) if i not in guarded]
        if not broken:
            return masks, protected
        if attempt == 1:  # a second round broke more floors: protect them all at once
            broken = [i for i, k in enumerate(floors) if k > 0 and i not in guarded]
        guarded.update(broken)
        counts = [floors[i] if i in broken else 0 for i in range(len(sources))]
        include = None
        if rows:
            include = [
                row_maxima(s.tensor, s.keep) if c else None
                for s, c in zip(sources, counts, strict=True)
            ]
        got = select.protect_largest(sources, counts, sizes, include)
        pairs = enumerate(zip(got, protected, strict=True))
        protected = [g if i in broken else p for i, (g, p) in pairs]
    raise AssertionError("unreachable")  # pragma: no cover


def _broken(
    sources: Sequence[Source],
    masks: Sequence[Tensor],
    floors: Sequence[int],
    whole: Sequence[Tensor],
    rows: bool,
) -> list[int]:
    """Sources that keep fewer units than their floor allows, or (``rows``) lost a row.

    What was pruned before the cut stays pruned: a floor asks at most the units that were
    live, and only rows that were live. One host read (one all-reduce when sharded).
    """
    chosen = [i for i, k in enumerate(floors) if k > 0]
    if not chosen:
        return []
    parts: list[Tensor] = []
    for i in chosen:
        src, mask = sources[i], masks[i]
        kept = count_nonzero(mask)
        live = (
            count_nonzero(src.keep)
            if src.keep is not None
            else torch.tensor(src.tensor.numel(), device=kept.device)
        )
        lost = torch.zeros((), dtype=torch.int64, device=kept.device)
        if rows and src.tensor.dim() and src.tensor.numel():
            alive = _rows_alive(mask)
            before = _rows_alive(src.keep) if src.keep is not None else None
            lost = (~alive if before is None else before & ~alive).sum()
        parts += [kept, live, lost]
    counts = torch.stack(parts).to(torch.int64)
    values = reduce_counts(counts, [whole[i] for i in chosen for _ in range(3)]).tolist()
    out = []
    for j, i in enumerate(chosen):
        kept, live, lost = values[3 * j : 3 * j + 3]
        if kept < min(floors[i], live) or lost:
            out.append(i)
    return out


def _rows_alive(mask: Tensor) -> Tensor:
    """Per row (dim 0), whether it keeps an entry; in blocks of rows of about one chunk.

    The sum of the mask's 0/1 bytes in int32: ``any`` over bools, or a max or an int64 sum
    over the bytes, are 2-8x slower on CPU.
    """
    flat = (mask if mask.dtype == torch.bool else mask != 0).reshape(mask.shape[0], -1)
    step = max(1, chunk_size(mask.device) // max(flat.shape[1], 1))
    blocks = [
        flat[a : a + step].view(torch.uint8).sum(1, dtype=torch.int32)
        for a in range(0, flat.shape[0], step)
    ]
    return torch.cat(blocks) > 0
