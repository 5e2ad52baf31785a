"""Exact global magnitude selection over many tensors, without sorting or concatenating them.

The magnitudes of IEEE floats order like the integers of their bit patterns once the sign bit
is cleared. So the k-th smallest ``|x|`` over many tensors is found by a radix select on those
bits, 16 bits per level, most significant first:

1. level 0: histogram the top 16-bit word of every value (sign bit cleared: 2**15 bins),
   tensor by tensor, summing the bin counts; the running sum says which bin holds the k-th
   value;
2. level j: histogram the next 16-bit word of the values whose higher words equal the digits
   chosen so far; descend again.

``float16``/``bfloat16`` need one level, ``float32`` two, ``float64`` four. Each level reads
every tensor once; all temporaries are per tensor (the largest about one copy of the largest
tensor), so memory stays far below one copy of all weights. The digits stay on the device, so
host syncs are per call, not per tensor: one to count already pruned entries (when masks are
given), one to read the result, and, only where ties at the threshold must be split, one to
count them per tensor (unless the last level's digits were few enough to keep) and one in the
tensor where they run out. On CUDA the histograms use ``index_add_`` (``torch.bincount``
reads its input's max back to the host) and no boolean indexing.

Order and ties: entries are ordered by ``(|x|, tensor index, flat index)``, ``|x|`` compared
exactly as stored (``-0.0`` ties with ``0.0``); among entries equal to the threshold the first
ones in (tensor index, flat index) order are pruned, so results are deterministic and exact.
In ``float16``/``bfloat16`` such ties are common (few distinct values), so the masks can
differ from ``torch.nn.utils.prune.global_unstructured`` (``topk``: ties in an unspecified
order), but only among entries whose ``|x|`` equals the threshold: the count pruned and every
entry below or above it agree.

Already pruned entries: pass each tensor's current keep mask (``masks``). Entries whose mask is
0 are pruned first, whatever their value, and count toward the target. Tensors of several
dtypes are compared in their common promoted dtype (exact: ``float16`` and ``bfloat16`` widen
to ``float32`` without rounding). Non-finite values are rejected.

Why a radix select, not ``torch.cat`` of every weight + ``kthvalue``/``topk`` (what
:func:`torch.nn.utils.prune.global_unstructured` does):

- memory: no concatenated copy of every weight and no sort of it; temporaries are per
  tensor. Measured on ResNet-50 pruned to 80%: the threshold alone adds 15 MiB to the peak,
  ``global_unstructured`` 1,235 MiB;
- syncs: a constant number of host syncs, whatever the number of layers (the digits stay on
  the device; on CUDA ``index_add_`` instead of ``bincount``), as above;
- ties: exact and deterministic (the order above), where ``topk`` leaves their order
  unspecified.

Interface: :func:`make_sources` wraps and validates the tensors (:class:`Source`),
:func:`cuts` finds the cuts of one or several groups in one host sync (a global cut, or one
per layer), :func:`keep_masks` builds the masks of a cut in any dtype. The functions below
(:func:`threshold_for_count`, :func:`masks_for_count`, ...) are built on them; the pruner uses
them directly, to cut every layer in one sync and to build masks in the weights' dtype.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce

import torch
from torch import Tensor

__all__ = [
    "Cut",
    "Source",
    "cuts",
    "keep_masks",
    "kth_smallest_abs",
    "make_sources",
    "masks_for_count",
    "masks_for_cut",
    "masks_for_weighted_target",
    "threshold_for_count",
    "threshold_for_weighted_target",
]

_BINS_TOP = 1 << 15  # level 0: the top 16-bit word without its sign bit
_BINS = 1 << 16
_LITTLE_ENDIAN = sys.byteorder == "little"
# devices where torch.bincount and boolean indexing cost no host sync
_HOST_DEVICES = ("cpu",)
_INT_VIEW = {
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float32: torch.int32,
    torch.float64: torch.int64,
}
# top 16-bit word of +inf: every top word >= this one belongs to an inf or a NaN
_INF_TOP_WORD = {
    torch.float16: 0x7C00,
    torch.bfloat16: 0x7F80,
    torch.float32: 0x7F80,
    torch.float64: 0x7FF0,
}


@dataclass(frozen=True)
class Cut:
    """Where a global magnitude cut falls.

    Every live entry with ``|x| < threshold`` is pruned; of the ``tied`` live entries with
    ``|x| == threshold`` the first ``ties`` in (tensor index, flat index) order are pruned.
    Entries already pruned (mask 0) stay pruned. ``key < 0`` means: prune nothing new.

    Attributes:
        threshold: The magnitude at the cut (exact; a Python float holds every value of the
            supported dtypes), or ``-1.0`` when nothing new is pruned.
        ties: How many live entries equal to ``threshold`` are pruned.
        tied: How many live entries equal ``threshold``.
        key: The bit pattern of ``threshold`` as an integer of the dtype's width.
        dtype: The dtype the comparison is made in.
        tied_per_tensor: How many live entries equal ``threshold`` in each tensor, when known.
    """

    threshold: float
    ties: int
    tied: int
    key: int
    dtype: torch.dtype
    tied_per_tensor: tuple[int, ...] | None = None


@dataclass
class Source:
    """One tensor of a selection: its values, current keep mask, score scale and weight.

    Build with :func:`make_sources`, which validates the inputs and fills ``excluded``.

    Attributes:
        tensor: The values; scores are ``|x| * scale``.
        keep: The current keep mask (0 = already pruned), or ``None``.
        scale: The positive score factor.
        weight: What pruning one entry adds toward a weighted target (1 for a count).
        key_dtype: The dtype all tensors of the selection are compared in.
        excluded: How many entries ``keep`` already prunes.
    """

    tensor: Tensor
    keep: Tensor | None
    scale: float
    weight: float
    key_dtype: torch.dtype
    excluded: int = 0

    def scores(self) -> Tensor:
        """Return the flat scores ``x * keep * scale`` in the key dtype (a view when possible)."""
        x = self.tensor.detach()
        if self.keep is not None:
            x = x * self.keep
        if x.dtype != self.key_dtype:
            x = x.to(self.key_dtype)
        if self.scale != 1.0:
            x = x * self.scale
        return x.reshape(-1)


def make_sources(
    tensors: Sequence[Tensor],
    masks: Sequence[Tensor | None] | None,
    scales: Sequence[float] | None,
    weights: Sequence[float] | None,
) -> list[Source]:
    """Validate the inputs and wrap them as :class:`Source` s for :func:`cuts`.

    Counts the already pruned entries of every masked tensor in one host sync.

    Args:
        tensors: Floating tensors (float16, bfloat16, float32 or float64), at least one.
        masks: Optional current keep masks (one per tensor or ``None``; 0 = already pruned).
        scales: Optional finite per-tensor score factors > 0.
        weights: Optional finite per-tensor weights >= 0 (for weighted targets).

    Returns:
        One source per tensor, all with the tensors' common promoted dtype as key dtype.

    Raises:
        ValueError: If ``tensors`` is empty, an input list has the wrong length, a mask the
            wrong shape, or a scale or weight is out of range.
        TypeError: If a tensor is not floating point.
    """
    if len(tensors) == 0:
        raise ValueError("`tensors` must hold at least one tensor, got none")
    for name, seq in (("masks", masks), ("scales", scales), ("weights", weights)):
        if seq is not None and len(seq) != len(tensors):
            raise ValueError(
                f"`{name}` must have one entry per tensor ({len(tensors)}), got {len(seq)}"
            )
    for i, t in enumerate(tensors):
        if t.dtype not in _INT_VIEW:
            raise TypeError(
                f"tensors[{i}] must be float16, bfloat16, float32 or float64, got {t.dtype}"
            )
    for name, seq in (("scales", scales), ("weights", weights)):
        for i, value in enumerate(seq or ()):
            low_ok = value > 0 if name == "scales" else value >= 0
            if not (math.isfinite(value) and low_ok):
                rule = "> 0" if name == "scales" else ">= 0"
                raise ValueError(f"`{name}[{i}]` must be finite and {rule}, got {value!r}")
    key_dtype = reduce(torch.promote_types, (t.dtype for t in tensors))
    out = []
    for i, t in enumerate(tensors):
        keep = None if masks is None else masks[i]
        if keep is not None and keep.shape != t.shape:
            raise ValueError(
                f"masks[{i}] must have the shape of tensors[{i}] {tuple(t.shape)},"
                f" got {tuple(keep.shape)}"
            )
        out.append(
            Source(
                tensor=t,
                keep=keep,
                scale=1.0 if scales is None else float(scales[i]),
                weight=1.0 if weights is None else float(weights[i]),
                key_dtype=key_dtype,
            )
        )
    with_masks = [s for s in out if s.keep is not None]
    if with_masks:
        kept = torch.stack([s.keep.count_nonzero() for s in with_masks if s.keep is not None])
        for s, n in zip(with_masks, kept.tolist(), strict=True):
            s.excluded = s.tensor.numel() - int(n)
    return out


def _words(scores: Tensor) -> list[Tensor]:
    """The 16-bit words of flat scores as column views, most significant first (no copy)."""
    words = scores.contiguous().view(torch.int16).view(scores.numel(), -1)
    order = range(words.shape[1] - 1, -1, -1) if _LITTLE_ENDIAN else range(words.shape[1])
    return [words[:, j] for j in order]


def _level_digits(scores: Tensor, level: int, prefix: list[Tensor], bins: int) -> Tensor:
    """The ``level``-th 16-bit digit of ``|scores|`` for the entries matching the prefix.

    Where boolean indexing would sync with the host (CUDA), every entry is kept and the
    ones off the prefix get the overflow digit ``bins``, which :func:`_histogram` drops.
    """
    words = _words(scores)
    top = torch.bitwise_and(words[0], 0x7FFF)  # clears the sign bit: the word of |x|
    if level == 0:
        return top
    match = top == prefix[0]
    for j in range(1, level):
        match &= words[j] == prefix[j]
    if scores.device.type in _HOST_DEVICES:
        return torch.bitwise_and(words[level][match].to(torch.int32), 0xFFFF)
    digits = torch.bitwise_and(words[level].to(torch.int32), 0xFFFF)
    return digits.masked_fill_(~match, bins)


def _histogram(digits: Tensor, bins: int) -> Tensor:
    """Counts of ``digits`` in ``[0, bins)`` (int64); larger digits are dropped."""
    if digits.device.type in _HOST_DEVICES:
        return torch.bincount(digits, minlength=bins)[:bins]
    # torch.bincount reads its input's max back to the host; index_add_ does not
    counts = torch.zeros(bins + 1, dtype=torch.int64, device=digits.device)
    ones = torch.ones((), dtype=torch.int64, device=digits.device).expand(digits.numel())
    return counts.index_add_(0, digits.to(torch.int32), ones)[:bins]


@dataclass
class _Descent:
    """Device-side result of the radix descent for one group (no host sync yet)."""

    digits: list[Tensor]
    rem: Tensor  # what is left to take inside the tie group: a count, or a weight
    tied: Tensor  # live entries equal to the threshold
    tied_weight: Tensor
    nonfinite: Tensor
    total: Tensor  # live count, or live weight
    tied_per_tensor: Tensor | None  # from the last level's digits, when they were kept


def _descend(sources: list[Source], target: float, weighted: bool) -> _Descent:
    """Find, on the device, the digits of the threshold where the running total reaches it.

    The last level's digits are kept per tensor while they add up to at most the largest
    tensor's size (they usually are a small fraction of it), so the ties at the threshold can
    be counted per tensor without another pass over the data.
    """
    device = sources[0].tensor.device
    key_dtype = sources[0].key_dtype
    levels = torch.finfo(key_dtype).bits // 16
    acc_dtype = torch.float64 if weighted else torch.int64
    rem = torch.tensor(target, dtype=acc_dtype, device=device)
    at_zero = torch.ones((), dtype=torch.int64, device=device)  # 1 while every digit is 0
    digits: list[Tensor] = []
    prefix: list[Tensor] = []
    zero = torch.zeros((), dtype=acc_dtype, device=device)
    nonfinite = total = tied = tied_weight = zero
    budget = max(s.tensor.numel() for s in sources)
    kept: list[Tensor] | None = None
    for level in range(levels):
        last = level == levels - 1
        kept = [] if last else None
        counts = torch.zeros(_BINS_TOP if level == 0 else _BINS, dtype=torch.int64, device=device)
        hist = torch.zeros_like(counts, dtype=acc_dtype) if weighted else counts
        for src in sources:
            level_digits = _level_digits(src.scores(), level, prefix, counts.numel())
            c = _histogram(level_digits, counts.numel())
            if src.excluded:
                # pruned entries are exact zeros: take them out of the zero bin
                c[0] -= src.excluded * at_zero
            counts += c
            if weighted:
                hist += c.to(acc_dtype) * src.weight
            if kept is not None:
                budget -= level_digits.numel()
                kept = None if budget < 0 else [*kept, level_digits]
        if level == 0:
            nonfinite = counts[_INF_TOP_WORD[key_dtype] :].sum()
            total = hist.sum()
            if weighted:  # past the total: prune up to the last entry that weighs anything
                rem = torch.minimum(rem, total)
        cum = hist.cumsum(0)
        bins = torch.arange(cum.numel(), device=device)
        last_nonempty = torch.where(hist > 0, bins, 0).max()
        digit = torch.searchsorted(cum, rem.reshape(1)).reshape(()).clamp(max=last_nonempty)
        rem = rem - torch.where(digit > 0, cum[(digit - 1).clamp(min=0)], zero)
        tied, tied_weight = counts[digit], hist[digit]
        digits.append(digit)
        prefix.append(digit.to(torch.int16))
        at_zero = at_zero * (digit == 0)
    tied_per_tensor = None
    if kept is not None:
        excluded = torch.tensor([s.excluded for s in sources], device=device)
        tied_per_tensor = torch.stack([(d == digits[-1]).sum() for d in kept])
        tied_per_tensor = tied_per_tensor - excluded * at_zero
    return _Descent(
        digits, rem, tied, tied_weight.to(torch.float64), nonfinite, total, tied_per_tensor
    )


def _none(dtype: torch.dtype) -> Cut:
    return Cut(threshold=-1.0, ties=0, tied=0, key=-1, dtype=dtype)


def _key_to_float(key: int, dtype: torch.dtype) -> float:
    return float(torch.tensor(key, dtype=_INT_VIEW[dtype]).view(dtype).item())


_Read = tuple[int, float, int, float, int, float, "tuple[int, ...] | None"]


def _read(descents: list[_Descent]) -> list[_Read]:
    """Bring descents to the host in one sync.

    Returns:
        Per descent: (key, rem, tied, tied weight, non-finite count, total, tied per tensor).
    """
    if not descents:
        return []
    parts: list[Tensor] = []
    for descent in descents:
        parts += [d.to(torch.float64).reshape(1) for d in descent.digits]
        parts += [
            descent.rem.to(torch.float64).reshape(1),
            descent.tied.to(torch.float64).reshape(1),
            descent.tied_weight.reshape(1),
            descent.nonfinite.to(torch.float64).reshape(1),
            descent.total.to(torch.float64).reshape(1),
        ]
        if descent.tied_per_tensor is not None:
            parts.append(descent.tied_per_tensor.to(torch.float64))
    values = iter(torch.cat(parts).tolist())
    out: list[_Read] = []
    for descent in descents:
        key = 0
        for _ in descent.digits:
            key = (key << 16) | int(next(values))
        rem, tied, tied_weight, nonfinite, total = (next(values) for _ in range(5))
        per_tensor = None
        if descent.tied_per_tensor is not None:
            per_tensor = tuple(int(next(values)) for _ in range(descent.tied_per_tensor.numel()))
        out.append((key, rem, int(tied), tied_weight, int(nonfinite), total, per_tensor))
    return out


def _walk_ties(
    sources: list[Source], rem: float, tie_counts: list[int], reach: bool = False
) -> int:
    """Weighted case: how many tied entries, taken in order, land closest to ``rem``.

    Tied entries before the crossing go toward the target (weightless ones are free); of the
    two prefixes around the crossing the closer one wins, the one reaching it on a draw (or
    always, with ``reach``).
    """
    taken = 0
    for src, count in zip(sources, tie_counts, strict=True):
        if count == 0:
            continue
        if count * src.weight < rem:
            taken += count
            rem -= count * src.weight
            continue
        n = max(1, math.ceil(rem / src.weight))
        over, under = n * src.weight - rem, rem - (n - 1) * src.weight
        return taken + (n if reach or over <= under else n - 1)
    return taken  # only reached when rounding left the target just above every tie


def _tie_counts(sources: list[Source], cut: Cut) -> tuple[int, ...]:
    """Per tensor: how many live entries equal the threshold (one pass, one host sync)."""
    if cut.tied_per_tensor is not None:
        return cut.tied_per_tensor
    counts = torch.stack([_tied_mask(src, cut).count_nonzero() for src in sources])
    return tuple(int(c) for c in counts.tolist())


def _tied_mask(src: Source, cut: Cut) -> Tensor:
    a = src.scores().abs()
    tied = a == torch.tensor(cut.threshold, dtype=cut.dtype, device=a.device)
    if cut.key == 0 and src.keep is not None:  # pruned entries are zeros too: not live
        tied &= src.keep.reshape(-1) != 0
    return tied


def cuts(
    groups: Sequence[tuple[list[Source], float]], weighted: bool, reach: bool = False
) -> list[Cut]:
    """Descend to each group's threshold and settle its ties; one host sync for all groups.

    Each group is selected on its own (one group: a global cut; one per layer: per-layer
    cuts). All sources must share one key dtype. Targets count already pruned entries; a
    target at or below them prunes nothing new. No argument checks beyond the sources'.

    Args:
        groups: ``(sources, target)`` pairs: the sources from one :func:`make_sources` call
            (or several of one dtype), and how many entries (unweighted) or how much weight
            (weighted) to prune in all.
        weighted: Whether targets are sums of the sources' ``weight`` instead of counts.
            Weighted, the pruned weight lands closest to the target (the reaching prefix on
            a draw).
        reach: Weighted only: land at the smallest prefix that reaches the target instead.

    Returns:
        One :class:`Cut` per group; build masks with :func:`keep_masks`.

    Raises:
        ValueError: If a value is inf/NaN.
    """
    descents: list[_Descent | None] = []
    for sources, target in groups:
        weights = [s.weight if weighted else 1.0 for s in sources]
        live = target - sum(s.excluded * w for s, w in zip(sources, weights, strict=True))
        descents.append(_descend(sources, live, weighted) if live > 0 else None)
    reads = iter(_read([d for d in descents if d is not None]))
    out = []
    for (sources, _), descent in zip(groups, descents, strict=True):
        dtype = sources[0].key_dtype
        if descent is None:
            out.append(_none(dtype))
            continue
        key, rem, tied, tied_weight, nonfinite, total, per_tensor = next(reads)
        if nonfinite:
            raise ValueError(f"cannot select among non-finite values: found {nonfinite} inf/NaN")
        if weighted and total <= 0:  # nothing left that weighs anything
            out.append(_none(dtype))
            continue
        cut = Cut(_key_to_float(key, dtype), 0, tied, key, dtype, per_tensor)
        if not weighted:
            ties = int(rem)
        elif tied == 1:
            ties = 1 if reach or tied_weight - rem <= rem else 0
        else:
            ties = _walk_ties(sources, rem, list(_tie_counts(sources, cut)), reach)
        out.append(Cut(cut.threshold, ties, tied, key, dtype, per_tensor))
    return out


def _cut(sources: list[Source], target: float, weighted: bool) -> Cut:
    return cuts([(sources, target)], weighted)[0]


def keep_masks(
    sources: list[Source], cut: Cut, dtypes: Sequence[torch.dtype] | None = None
) -> list[Tensor]:
    """Build the keep masks (1 = keep) of a cut, in ``dtypes`` (bool by default).

    Per tensor, tied entries are all pruned (``|x| > t`` keeps), all kept (``|x| >= t``),
    or, in the one tensor where the ties run out, split by flat index. A mask in the key
    dtype doubles as the ``|x|`` temporary, so building masks in the weights' dtype costs no
    extra copy.

    Args:
        sources: The sources the cut was computed on.
        cut: From :func:`cuts`.
        dtypes: One mask dtype per source; bool when not given.

    Returns:
        One keep mask per source, of its tensor's shape.
    """
    out_dtypes = list(dtypes) if dtypes is not None else [torch.bool] * len(sources)
    if cut.key < 0:
        return [
            torch.ones_like(s.tensor, dtype=d) if s.keep is None else (s.keep != 0).to(d)
            for s, d in zip(sources, out_dtypes, strict=True)
        ]
    if 0 < cut.ties < cut.tied:
        remaining, takes = cut.ties, []
        for count in _tie_counts(sources, cut):
            takes.append((min(count, remaining), count))
            remaining -= takes[-1][0]
    else:  # every tied entry pruned (as if take == count), or none (take == 0)
        takes = [(1, 1) if cut.ties else (0, 1)] * len(sources)
    masks = []
    for src, dtype, (take, count) in zip(sources, out_dtypes, takes, strict=True):
        scores = src.scores()
        t = torch.tensor(cut.threshold, dtype=cut.dtype, device=scores.device)
        keep = torch.empty(scores.shape, dtype=dtype, device=scores.device)
        compare = torch.ge if take == 0 else torch.gt
        if dtype == cut.dtype:  # the mask buffer doubles as the |x| temporary
            torch.abs(scores, out=keep)
            compare(keep, t, out=keep)
        else:
            compare(scores.abs(), t, out=keep)
        if 0 < take < count:
            keep[_tied_mask(src, cut).nonzero().squeeze(1)[take:]] = 1
        if cut.key == 0 and src.keep is not None:  # pruned zeros compare like live zeros
            keep *= (src.keep.reshape(-1) != 0).to(dtype)
        masks.append(keep.view(src.tensor.shape))
    return masks


def _check_count(sources: list[Source], k: int) -> None:
    total = sum(s.tensor.numel() for s in sources)
    pruned = sum(s.excluded for s in sources)
    if isinstance(k, bool) or not isinstance(k, int) or not pruned <= k <= total:
        raise ValueError(
            f"`k` must be an int in [{pruned}, {total}] (already pruned, total entries), got {k!r}"
        )


def _check_target(target: float) -> None:
    if (
        isinstance(target, bool)
        or not isinstance(target, (int, float))
        or not math.isfinite(target)
    ):
        raise ValueError(f"`target` must be a finite number, got {target!r}")


def threshold_for_count(
    tensors: Sequence[Tensor],
    k: int,
    *,
    masks: Sequence[Tensor | None] | None = None,
    scales: Sequence[float] | None = None,
) -> Cut:
    """Find the cut that prunes exactly ``k`` entries of ``tensors`` in total, smallest first.

    Args:
        tensors: Floating tensors (float16, bfloat16, float32 or float64), any shapes.
        k: How many entries to prune in total, already pruned ones included.
        masks: Optional current keep masks (one per tensor or ``None``); entries with mask 0
            are already pruned and are pruned first.
        scales: Optional positive per-tensor factors; scores are ``|x| * scale``.

    Returns:
        The :class:`Cut`; build masks from it with :func:`masks_for_cut`.

    Raises:
        ValueError: If ``k`` is not in ``[already pruned, total entries]``, an input list has
            the wrong length, a mask the wrong shape, a scale is not finite and positive, or
            a value is inf/NaN.
        TypeError: If a tensor is not floating point.
    """
    sources = make_sources(tensors, masks, scales, None)
    _check_count(sources, k)
    return _cut(sources, k, weighted=False)


def threshold_for_weighted_target(
    tensors: Sequence[Tensor],
    weights_per_tensor: Sequence[float],
    target: float,
    *,
    masks: Sequence[Tensor | None] | None = None,
    scales: Sequence[float] | None = None,
) -> Cut:
    """Find the magnitude cut whose pruned weight lands closest to ``target``.

    Entries are pruned smallest ``|x| * scale`` first; pruning an entry of tensor ``i`` adds
    ``weights_per_tensor[i]`` (e.g. FLOPs per nonzero weight). The cut is the prefix of that
    order whose summed weight is closest to ``target``: the prefix that first reaches it, or
    the one just before (weightless entries below the crossing are pruned too); the one that
    reaches it on a draw. Already pruned entries count with their weight. A target beyond
    the total prunes up to the last entry that weighs anything.

    Args:
        tensors: Floating tensors (float16, bfloat16, float32 or float64).
        weights_per_tensor: Finite weights >= 0, one per tensor.
        target: The summed weight to remove.
        masks: Optional current keep masks (mask 0 = already pruned).
        scales: Optional positive per-tensor score factors.

    Returns:
        The :class:`Cut`; build masks from it with :func:`masks_for_cut`.

    Raises:
        ValueError: If ``target`` is not finite, an input list has the wrong length, a mask
            the wrong shape, a weight or scale is out of range, or a value is inf/NaN.
        TypeError: If a tensor is not floating point.
    """
    _check_target(target)
    sources = make_sources(tensors, masks, scales, weights_per_tensor)
    return _cut(sources, float(target), weighted=True)


def masks_for_cut(
    tensors: Sequence[Tensor],
    cut: Cut,
    *,
    masks: Sequence[Tensor | None] | None = None,
    scales: Sequence[float] | None = None,
) -> list[Tensor]:
    """Build boolean keep masks (True = keep) for a :class:`Cut` of the same inputs.

    Args:
        tensors: The tensors the cut was computed on.
        cut: From :func:`threshold_for_count` or :func:`threshold_for_weighted_target`.
        masks: The same current keep masks as for the cut.
        scales: The same score factors as for the cut.

    Returns:
        One boolean mask per tensor, of its shape.

    Raises:
        ValueError: If an input list has the wrong length or a mask the wrong shape.
        TypeError: If a tensor is not floating point.
    """
    return keep_masks(make_sources(tensors, masks, scales, None), cut)


def masks_for_count(
    tensors: Sequence[Tensor],
    k: int,
    *,
    masks: Sequence[Tensor | None] | None = None,
    scales: Sequence[float] | None = None,
) -> list[Tensor]:
    """Boolean keep masks that prune exactly ``k`` entries in total, smallest ``|x|`` first.

    Ties at the threshold are pruned in (tensor index, flat index) order.

    Args:
        tensors: Floating tensors (float16, bfloat16, float32 or float64).
        k: How many entries to prune in total, already pruned ones included.
        masks: Optional current keep masks (mask 0 = already pruned, pruned first).
        scales: Optional positive per-tensor score factors.

    Returns:
        One boolean mask per tensor (True = keep) with exactly ``k`` False entries in total.

    Raises:
        ValueError: See :func:`threshold_for_count`.
        TypeError: If a tensor is not floating point.
    """
    sources = make_sources(tensors, masks, scales, None)
    _check_count(sources, k)
    return keep_masks(sources, _cut(sources, k, weighted=False))


def masks_for_weighted_target(
    tensors: Sequence[Tensor],
    weights_per_tensor: Sequence[float],
    target: float,
    *,
    masks: Sequence[Tensor | None] | None = None,
    scales: Sequence[float] | None = None,
) -> list[Tensor]:
    """Boolean keep masks for :func:`threshold_for_weighted_target`.

    Args:
        tensors: Floating tensors (float16, bfloat16, float32 or float64).
        weights_per_tensor: Finite weights >= 0, one per tensor.
        target: The summed weight to remove.
        masks: Optional current keep masks (mask 0 = already pruned).
        scales: Optional positive per-tensor score factors.

    Returns:
        One boolean mask per tensor (True = keep).

    Raises:
        ValueError: See :func:`threshold_for_weighted_target`.
        TypeError: If a tensor is not floating point.
    """
    _check_target(target)
    sources = make_sources(tensors, masks, scales, weights_per_tensor)
    return keep_masks(sources, _cut(sources, float(target), weighted=True))


def kth_smallest_abs(tensors: Sequence[Tensor], k: int) -> Tensor:
    """The ``k``-th smallest ``|x|`` (1-based) over all entries of ``tensors``.

    Args:
        tensors: Floating tensors (float16, bfloat16, float32 or float64).
        k: Rank in ``[1, total entries]``.

    Returns:
        A 0-d tensor in the tensors' common dtype, on their device.

    Raises:
        ValueError: If ``k`` is out of range or a value is inf/NaN.
        TypeError: If a tensor is not floating point.
    """
    sources = make_sources(tensors, None, None, None)
    total = sum(s.tensor.numel() for s in sources)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= total:
        raise ValueError(f"`k` must be an int in [1, {total}], got {k!r}")
    cut = _cut(sources, k, weighted=False)
    return torch.tensor(cut.threshold, dtype=cut.dtype, device=tensors[0].device)
