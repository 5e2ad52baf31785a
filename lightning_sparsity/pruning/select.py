"""Exact global magnitude selection over many tensors, without sorting or concatenating them.

The magnitudes of IEEE floats order like the integers of their bit patterns once the sign bit
is cleared. So the k-th smallest ``|x|`` over many tensors is found by a radix select on those
bits, 16 bits per level, most significant first:

1. level 0: histogram the top 16-bit word of every value (sign bit cleared: 2**15 bins); the
   running sum says which bin holds the k-th value;
2. level j: histogram the next 16-bit word of the values whose higher words equal the digits
   chosen so far (the others go to two overflow bins); descend again.

``float16``/``bfloat16`` need one level, ``float32`` two, ``float64`` four. A level adds every
tensor, chunk by chunk, into one preallocated histogram (``index_add_``, one row per group):
a tensor costs no histogram of its own (no allocation, no zeroing, no adding up), and nothing
reads a count back to the host.

Chunks, threads and memory: every pass reads the tensors in chunks; see :mod:`.chunks` for why.

Host syncs: none until one read of every result at the end of :func:`cuts`, whatever the
number of tensors or groups. Already pruned entries (:func:`make_sources`) are counted on the
device; :attr:`Source.excluded` reads them, once for all the sources of a call, if asked.
Ties split inside a group are ordered without a read: a count cut in one process numbers its
tied entries while building the masks (a running count on the device); a weighted cut, whose
walk over the ties needs each tensor's tie count, and a sharded one count them in one more
pass before that read.

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

Sharded tensors (FSDP2's ``Shard(0)``: each rank holds a contiguous chunk of every tensor,
chunks in rank order): pass the local chunks and ``group`` to :func:`make_sources`. Each level
all-reduces the histograms (the already pruned counts ride along at level 0), so every rank
finds the same threshold without gathering a weight; the global order (tensor, flat index) is
(tensor, rank, local flat index), so each rank learns how many tied entries the ranks before
it hold from one ``all_gather`` of the per-tensor tie counts. Collectives per selection: one
all-reduce per level (two when weighted) and one all-gather, whatever the number of tensors
or groups. Weighted histograms are summed in ``float64``: identical on every rank, and equal
to a single process's while partial sums are exact (integers below 2**53, as FLOP costs are).

Why a radix select, not ``torch.cat`` of every weight + ``kthvalue``/``topk`` (what
:func:`torch.nn.utils.prune.global_unstructured` does):

- memory: no concatenated copy of every weight and no sort of it (ResNet-50 pruned to 80%:
  ``global_unstructured`` adds 1,235 MiB to the peak);
- time: every value is read a fixed number of times, in ops that never wait at an OpenMP
  barrier (ResNet-50 to 80% on 2 cores, the cut and its masks: about 25x faster quiet and
  27x with two busy processes, ``benchmarks/bench_pruning.py``);
- syncs: a constant number of host syncs, whatever the number of layers;
- ties: exact and deterministic (the order above), where ``topk`` leaves their order
  unspecified.

Interface: :func:`make_sources` wraps and validates the tensors (:class:`Source`),
:func:`cuts` finds the cuts of one or several groups in one host sync (a global cut, or one
per layer), :func:`keep_masks` builds the masks of a cut in any dtype, without a sync. The
functions below (:func:`threshold_for_count`, :func:`masks_for_count`, ...) are built on them;
the pruner uses them directly, to cut every layer in one sync and to build masks in the
storage's dtype.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from functools import reduce

import torch
import torch.distributed as dist
from torch import Tensor

from lightning_sparsity.pruning.chunks import as_factor, chunk_size, count_nonzero

__all__ = [
    "Cut",
    "NonFiniteError",
    "Source",
    "cuts",
    "keep_masks",
    "kth_smallest_abs",
    "make_sources",
    "masks_for_count",
    "masks_for_cut",
    "masks_for_weighted_target",
    "protect_largest",
    "threshold_for_count",
    "threshold_for_weighted_target",
]

_TOP_BINS = 1 << 15  # level 0: the top 16-bit word without its sign bit
_WORD_BINS = 1 << 16
# a group's histogram row: [overflow bin shared with the row before][65536 digit bins]; one
# more overflow bin closes the last row. Off-prefix entries land in the overflow bins.
_ROW = _WORD_BINS + 1
_GROUPS_PER_PASS = 16  # one process: histograms of at most this many groups at a time
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


class NonFiniteError(ValueError):
    """A selection met inf or NaN values (they have no place in a magnitude order)."""


@dataclass(frozen=True)
class Cut:
    """Where a global magnitude cut falls.

    Every live entry with ``|x| < threshold`` is pruned; of the ``tied`` live entries with
    ``|x| == threshold`` the first ``ties`` in (tensor index, flat index) order are pruned.
    Entries already pruned (mask 0) stay pruned. ``key < 0`` means: prune nothing new.
    Sharded, every count here is over all ranks except the per-tensor ones.

    Attributes:
        threshold: The magnitude at the cut (exact; a Python float holds every value of the
            supported dtypes), or ``-1.0`` when nothing new is pruned.
        ties: How many live entries equal to ``threshold`` are pruned.
        tied: How many live entries equal ``threshold``.
        key: The bit pattern of ``threshold`` as an integer of the dtype's width.
        dtype: The dtype the comparison is made in.
        tied_per_tensor: How many live entries equal ``threshold`` in each tensor (this
            process's part of it), when known.
        tied_before: Per tensor, how many live entries equal to ``threshold`` come before
            this process's part of it in the order, when known.
        already: What the masks pruned before this cut, over all ranks: a count, or a
            weight for a weighted cut (a target at or below it prunes nothing new).
    """

    threshold: float
    ties: int
    tied: int
    key: int
    dtype: torch.dtype
    tied_per_tensor: tuple[int, ...] | None = None
    tied_before: tuple[int, ...] | None = None
    already: float = 0.0


class _Kept:
    """The kept-entry counts of the masked sources of one :func:`make_sources` call.

    They stay on the device; the first :attr:`Source.excluded` reads them all in one sync.
    """

    def __init__(self, counts: Tensor) -> None:
        self.counts = counts
        self.host: list[int] | None = None

    def read(self) -> list[int]:
        if self.host is None:
            self.host = [int(c) for c in self.counts.tolist()]
        return self.host


@dataclass(eq=False)
class Source:
    """One tensor of a selection: its values, current keep mask, score scale and weight.

    Build with :func:`make_sources`, which validates the inputs.

    Attributes:
        tensor: The values (this process's part, when sharded); scores are ``|x| * scale``.
        keep: The current keep mask (0 = already pruned), or ``None``.
        scale: The positive score factor.
        weight: What pruning one entry adds toward a weighted target (1 for a count).
        key_dtype: The dtype all tensors of the selection are compared in.
        group: The process group the tensors are sharded over, or ``None``.
        protect: Entries no cut prunes (``True``), set by :func:`protect_largest`: they
            score the key dtype's largest finite value, above every live entry.
    """

    tensor: Tensor
    keep: Tensor | None
    scale: float
    weight: float
    key_dtype: torch.dtype
    group: dist.ProcessGroup | None = None
    protect: Tensor | None = None
    _kept: tuple[_Kept, int] | None = field(default=None, repr=False)

    @property
    def excluded(self) -> int:
        """How many of this process's entries ``keep`` already prunes.

        Read to the host on first use, in one sync for all sources of the
        :func:`make_sources` call.
        """
        if self._kept is None:
            return 0
        kept, i = self._kept
        return self.tensor.numel() - kept.read()[i]

    def scores(self) -> Tensor:
        """Return the flat scores ``x * keep * scale`` in the key dtype."""
        x = self.tensor.detach()
        if self.keep is not None:
            x = x * as_factor(self.keep)
        if x.dtype != self.key_dtype:
            x = x.to(self.key_dtype)
        if self.scale != 1.0:
            x = x * self.scale
        x = x.reshape(-1)
        if self.protect is not None:
            x = x.masked_fill(self.protect.reshape(-1), torch.finfo(self.key_dtype).max)
        return x


def _on(values: Sequence[float], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Host numbers as a device tensor, copied without waiting for the device."""
    host = torch.tensor(values, dtype=dtype)
    return host if device.type == "cpu" else host.to(device, non_blocking=True)


def _pieces(src: Source, chunk: int) -> Iterator[tuple[int, Tensor, Tensor | None]]:
    """``(start, values, keep)`` of consecutive flat slices of at most ``chunk`` entries."""
    x = src.tensor.detach().reshape(-1)
    if x.numel() == 0:
        return iter(())
    xs = x.split(chunk)
    keeps = [None] * len(xs) if src.keep is None else src.keep.reshape(-1).split(chunk)
    return zip(range(0, x.numel(), chunk), xs, keeps, strict=True)


class _Scratch:
    """One chunk-sized buffer, handed out as views of a given length (cached)."""

    def __init__(self, buffer: Tensor) -> None:
        self.buffer = buffer
        self.views: dict[int, Tensor] = {buffer.numel(): buffer}

    def __call__(self, n: int) -> Tensor:
        view = self.views.get(n)
        if view is None:
            view = self.views[n] = self.buffer[:n]
        return view

    def view(self, dtype: torch.dtype) -> _Scratch:
        return _Scratch(self.buffer.view(dtype))


def _abs_scores(src: Source, x: Tensor, keep: Tensor | None, out: Tensor, start: int) -> Tensor:
    """``|scores|`` of the slice at flat ``start``, in the key dtype, written into ``out``.

    Protected entries (:attr:`Source.protect`) score the key dtype's largest finite value.
    """
    if keep is not None:
        x = torch.mul(x, as_factor(keep), out=out)
    elif x.dtype != src.key_dtype:
        x = out.copy_(x)
    if src.scale != 1.0:
        x = torch.mul(x, src.scale, out=out)
    x = torch.abs(x, out=out)
    if src.protect is not None:
        flat = src.protect.reshape(-1)[start : start + x.numel()]
        x.masked_fill_(flat, torch.finfo(src.key_dtype).max)
    return x


def _zero(t: Tensor) -> None:
    chunk = chunk_size(t.device)
    for a in range(0, t.numel(), chunk):
        t[a : a + chunk].zero_()


def make_sources(
    tensors: Sequence[Tensor],
    masks: Sequence[Tensor | None] | None,
    scales: Sequence[float] | None,
    weights: Sequence[float] | None,
    *,
    group: dist.ProcessGroup | None = None,
) -> list[Source]:
    """Validate the inputs and wrap them as :class:`Source` s for :func:`cuts`.

    Counts the already pruned entries of every masked tensor on the device (no host sync).

    Args:
        tensors: Floating tensors (float16, bfloat16, float32 or float64), at least one.
            Sharded: this process's contiguous ``Shard(0)`` chunk of each.
        masks: Optional current keep masks (one per tensor or ``None``; 0 = already pruned).
        scales: Optional finite per-tensor score factors > 0.
        weights: Optional finite per-tensor weights >= 0 (for weighted targets).
        group: The process group the tensors are sharded over (ranks in chunk order), or
            ``None`` for whole tensors in one process. Every rank of it must make the same
            calls with its own chunks.

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
                group=group,
            )
        )
    with_masks = [s for s in out if s.keep is not None]
    if with_masks:
        kept = _Kept(torch.stack([count_nonzero(s.keep) for s in with_masks if s.keep is not None]))
        for i, s in enumerate(with_masks):
            s._kept = (kept, i)
    return out


def _excluded(src: Source) -> Tensor:
    """How many entries ``keep`` already prunes (0-d int64 on the device, no sync)."""
    if src._kept is None:
        return torch.zeros((), dtype=torch.int64, device=src.tensor.device)
    kept, i = src._kept
    return src.tensor.numel() - kept.counts[i]


def _level_index(bits: Tensor, level: int, levels: int, base: Tensor | None, out: Tensor) -> Tensor:
    """Histogram positions of one slice at ``level``, in ``out``.

    Level 0: the top word (``bits`` are those of ``|x|``: no sign). Level j: ``1 + digit``
    for the entries whose higher words equal the prefix (``base = prefix * 2**16 - 1``), 0
    for those below it, ``2**16 + 1`` for those above: the row's two overflow bins.
    """
    shift = 16 * (levels - 1 - level)
    if level == 0:
        return torch.bitwise_right_shift(bits, shift, out=out) if shift else out.copy_(bits)
    if shift:
        bits = torch.bitwise_right_shift(bits, shift, out=out)
    torch.sub(bits, base, out=out)  # type: ignore[arg-type]
    return out.clamp_(0, _WORD_BINS + 1)


@dataclass
class _Descent:
    """Device-side results of the radix descent for a batch of groups (no host sync yet).

    One entry per group in each field named in :data:`_PER_GROUP`; :func:`_read` reads them
    back by those names.
    """

    groups: list[list[Source]]
    digits: Tensor  # (levels, groups)
    rem: Tensor  # what is left to take inside the tie group: a count, or a weight
    tied: Tensor  # live entries equal to the threshold
    tied_weight: Tensor
    nonfinite: Tensor
    total: Tensor  # live count, or live weight
    excluded: Tensor  # already pruned count, all ranks
    excluded_weight: Tensor
    target: Tensor
    tie_counts: Tensor | None  # (ranks, sources): live entries equal to the threshold


class _Histogram:
    """A batch's histogram, one row per group, and the chunk buffers every level fills it from.

    ``counts`` (and ``hist``) hold ``size`` bins, every group's row of digit bins between
    overflow bins (:data:`_ROW`), then one entry per group for its already pruned entries.
    """

    def __init__(
        self,
        sources: list[Source],
        group_of: list[int],
        n: int,
        weights: list[Tensor],
        weighted: bool,
        chunk: int,
    ) -> None:
        """The buffers of ``n`` groups; per source, its group (``group_of``) and weight."""
        first = sources[0]
        device, key_dtype = first.tensor.device, first.key_dtype
        self.sources, self.group_of, self.weights = sources, group_of, weights
        self.weighted, self.key_dtype, self.chunk = weighted, key_dtype, chunk
        self.levels = torch.finfo(key_dtype).bits // 16
        index_dtype = torch.int64 if self.levels == 4 else torch.int32
        self.size = size = n * _ROW + 1
        self.counts = torch.empty(size + n, dtype=torch.int64, device=device)
        # the weight per bin when weighted, else the counts themselves
        self.hist = (
            torch.empty(size + n, dtype=torch.float64, device=device) if weighted else self.counts
        )
        self.starts = torch.arange(1, size, _ROW, device=device)  # first digit bin of each row
        self.ones = _Scratch(torch.ones((), dtype=torch.int64, device=device).expand(chunk))
        self.scores = _Scratch(torch.empty(chunk, dtype=key_dtype, device=device))
        self.bits = self.scores.view(_INT_VIEW[key_dtype])
        self.index = _Scratch(torch.empty(chunk, dtype=index_dtype, device=device))

    def fill(self, level: int, prefix: Tensor) -> None:
        """Add every chunk of every tensor into its group's row at ``level``.

        ``prefix``: per group, the digits chosen at the levels above.
        """
        _zero(self.counts)
        if self.weighted:
            _zero(self.hist)
        ones, scores, bits, index = self.ones, self.scores, self.bits, self.index
        bases = None if level == 0 else (prefix * _WORD_BINS - 1).to(index.buffer.dtype)
        for i, src in enumerate(self.sources):
            g = self.group_of[i]
            lo, hi = (
                (g * _ROW + 1, g * _ROW + 1 + _TOP_BINS)
                if level == 0
                else (g * _ROW, (g + 1) * _ROW + 1)
            )
            row_counts, row_hist = self.counts[lo:hi], self.hist[lo:hi]
            base = None if bases is None else bases[g]
            weight = _Scratch(self.weights[i]) if self.weighted else None
            for a, x, keep in _pieces(src, self.chunk):
                m = x.numel()
                _abs_scores(src, x, keep, scores(m), a)
                at = _level_index(bits(m), level, self.levels, base, index(m))
                row_counts.index_add_(0, at, ones(m))
                if weight is not None:
                    row_hist.index_add_(0, at, weight(m))

    def finish(self, level: int, state: _State) -> None:
        """Take the already pruned entries out, all-reduce, empty the overflow bins.

        Pruned entries are exact zeros: they leave digit 0 while the prefix is all 0. At
        level 0 their counts ride along with the all-reduce (sharded sources), after the
        rows. Off-prefix entries, in the overflow bins, are out of the running sums.
        """
        # this process's pruned entries: the counts are all-reduced after (at every level)
        self.counts.index_add_(0, self.starts, -(state.mine * state.at_zero))
        if self.weighted:
            self.hist.index_add_(0, self.starts, -(state.mine_weight * state.at_zero))
        if level == 0:
            self.counts[self.size :].copy_(state.mine)
            if self.weighted:
                self.hist[self.size :].copy_(state.mine_weight)
        group = self.sources[0].group
        if group is not None:
            dist.all_reduce(self.counts, group=group)
            if self.weighted:
                dist.all_reduce(self.hist, group=group)
        self.hist[: self.size : _ROW].zero_()


@dataclass
class _State:
    """Per group, on the device: what the descent carries from one level to the next."""

    target: Tensor
    excluded: Tensor  # already pruned count: this process's until level 0's all-reduce
    excluded_weight: Tensor
    mine: Tensor  # this process's already pruned count (what its histograms hold)
    mine_weight: Tensor
    rem: Tensor  # what is left to take inside the chosen prefix: a count, or a weight
    prefix: Tensor  # the digits chosen so far, as one integer
    at_zero: Tensor  # 1 while every digit chosen is 0
    digits: list[Tensor]
    total: Tensor  # live count, or live weight (from level 0)
    nonfinite: Tensor  # inf/NaN entries (from level 0)
    tied: Tensor  # live entries in the chosen bin: at the last level, equal to the threshold
    tied_weight: Tensor

    @classmethod
    def start(
        cls,
        targets: Sequence[float | Tensor],
        owner: Tensor,
        excl: Tensor,
        weights: Sequence[Tensor],
        weighted: bool,
    ) -> _State:
        """Per group: this process's already pruned entries (count and weight), the target.

        ``owner``: per source, its group (on the device); ``excl``: per source, its already
        pruned entries; ``weights``: per source, its weight expanded (weighted only).
        """
        n, device = len(targets), owner.device
        acc = torch.float64 if weighted else torch.int64
        excl_count = torch.zeros(n, dtype=torch.int64, device=device).index_add_(0, owner, excl)
        excl_weight = excl_count.to(torch.float64)
        if weighted:
            per_weight = excl.to(torch.float64) * torch.stack([w[0] for w in weights])
            excl_weight = torch.zeros(n, dtype=torch.float64, device=device)
            excl_weight.index_add_(0, owner, per_weight)
        target = _on([0.0 if isinstance(t, Tensor) else t for t in targets], acc, device)
        for g, t in enumerate(targets):
            if isinstance(t, Tensor):
                target[g].copy_(t)
        zero = torch.zeros(n, dtype=acc, device=device)
        return cls(
            target=target,
            excluded=excl_count,
            excluded_weight=excl_weight,
            mine=excl_count,
            mine_weight=excl_weight,
            rem=zero,
            prefix=torch.zeros(n, dtype=torch.int64, device=device),
            at_zero=torch.ones(n, dtype=torch.int64, device=device),
            digits=[],
            total=zero,
            nonfinite=zero,
            tied=zero,
            tied_weight=zero,
        )

    def take_pruned(self, hist: _Histogram) -> None:
        """After level 0's all-reduce: the pruned entries over all ranks, left to take."""
        self.excluded = hist.counts[hist.size :].clone()
        self.excluded_weight = (
            hist.hist[hist.size :].clone() if hist.weighted else self.excluded.to(torch.float64)
        )
        self.rem = self.target - (self.excluded_weight if hist.weighted else self.excluded)

    def choose(self, hist: _Histogram, level: int) -> None:
        """Find every group's digit at ``level`` from the running sums of its row."""
        starts = hist.starts
        h, c = hist.hist[: hist.size], hist.counts[: hist.size]
        cum = h.cumsum(0)
        ends = starts + ((_TOP_BINS if level == 0 else _WORD_BINS) - 1)
        before = cum.index_select(0, starts - 1)
        row_end = cum.index_select(0, ends)
        if level == 0:
            self.total = row_end - before
            if hist.weighted:  # past the total: prune up to the last entry that weighs anything
                self.rem = torch.minimum(self.rem, self.total)
            ccum = c.cumsum(0) if hist.weighted else cum
            inf = starts + (_INF_TOP_WORD[hist.key_dtype] - 1)
            self.nonfinite = ccum.index_select(0, ends) - ccum.index_select(0, inf)
        found = torch.searchsorted(cum, before + self.rem)
        last = torch.searchsorted(cum, row_end)  # the row's last bin that weighs anything
        digit = (torch.minimum(found, last) - starts).clamp_(min=0)
        where = starts + digit
        self.rem = self.rem - (cum.index_select(0, where - 1) - before)
        self.tied, self.tied_weight = c.index_select(0, where), h.index_select(0, where)
        self.digits.append(digit)
        self.prefix = self.prefix * _WORD_BINS + digit
        self.at_zero = self.at_zero * (digit == 0)


def _descend(
    batch: Sequence[tuple[list[Source], float | Tensor]], weighted: bool, per_tensor: bool
) -> _Descent:
    """Run the radix descent of several groups at once, on the device.

    Each level adds every chunk of every tensor into its group's row of one histogram, then
    (all-reduced when sharded) finds every group's digit with one ``searchsorted`` over the
    running sums. With ``per_tensor``, one more pass counts each tensor's ties.
    """
    groups = [sources for sources, _ in batch]
    sources = [s for g in groups for s in g]
    group_of = [g for g, members in enumerate(groups) for _ in members]
    device = sources[0].tensor.device
    chunk = chunk_size(device)
    owner = _on(group_of, torch.int64, device)
    excl = torch.stack([_excluded(s) for s in sources])
    weights = [
        torch.full((), s.weight, dtype=torch.float64, device=device).expand(chunk)
        for s in (sources if weighted else ())
    ]
    state = _State.start([t for _, t in batch], owner, excl, weights, weighted)
    hist = _Histogram(sources, group_of, len(groups), weights, weighted, chunk)
    for level in range(hist.levels):
        hist.fill(level, state.prefix)
        hist.finish(level, state)
        if level == 0:
            state.take_pruned(hist)
        state.choose(hist, level)
    tie_counts = None
    if per_tensor:
        keys = state.prefix.index_select(0, owner)
        local = _tie_counts_on_device(sources, keys, excl, chunk)
        tie_counts = _per_rank(local, sources[0].group)
    return _Descent(
        groups=groups,
        digits=torch.stack(state.digits),
        rem=state.rem,
        tied=state.tied,
        tied_weight=state.tied_weight.to(torch.float64),
        nonfinite=state.nonfinite,
        total=state.total,
        excluded=state.excluded,
        excluded_weight=state.excluded_weight,
        target=state.target,
        tie_counts=tie_counts,
    )


def _per_rank(local: Tensor, group: dist.ProcessGroup | None) -> Tensor:
    """Every rank's ``local`` in rank order, ``(ranks, n)``: one all-gather when sharded."""
    if group is None:
        return local.unsqueeze(0)
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, local, group=group)
    return torch.stack(parts)


def _tie_counts_on_device(
    sources: Sequence[Source], keys: Tensor, excl: Tensor, chunk: int
) -> Tensor:
    """Per source, the live entries whose ``|x|`` bits equal ``keys`` (int64, no sync)."""
    device = sources[0].tensor.device
    key_dtype = sources[0].key_dtype
    int_dtype = _INT_VIEW[key_dtype]
    scores = _Scratch(torch.empty(chunk, dtype=key_dtype, device=device))
    bits = scores.view(int_dtype)
    diff = _Scratch(torch.empty(chunk, dtype=int_dtype, device=device))
    nonzero = torch.zeros(len(sources), dtype=torch.int64, device=device)
    for i, src in enumerate(sources):
        key, acc = keys[i].to(int_dtype), nonzero[i]
        for a, x, keep in _pieces(src, chunk):
            m = x.numel()
            _abs_scores(src, x, keep, scores(m), a)
            acc += torch.sub(bits(m), key, out=diff(m)).count_nonzero()
    numels = _on([s.tensor.numel() for s in sources], torch.int64, device)
    # pruned entries are zeros too: not live, so not tied
    return numels - nonzero - excl * (keys == 0)


@dataclass
class _Result:
    """One group's descent, read to the host (the fields of :data:`_PER_GROUP` by name)."""

    key: int
    rem: float
    tied: int
    tied_weight: float
    nonfinite: int
    total: float
    excluded: int
    excluded_weight: float
    target: float
    tie_counts: list[list[int]] | None  # (ranks, tensors of the group)

    @classmethod
    def of(cls, key: int, row: Mapping[str, float], tie_counts: list[list[int]] | None) -> _Result:
        """From the numbers read for a group, by their :data:`_PER_GROUP` names."""
        return cls(
            key=key,
            rem=row["rem"],
            tied=int(row["tied"]),
            tied_weight=row["tied_weight"],
            nonfinite=int(row["nonfinite"]),
            total=row["total"],
            excluded=int(row["excluded"]),
            excluded_weight=row["excluded_weight"],
            target=row["target"],
            tie_counts=tie_counts,
        )


# the fields of _Result (and of _Descent) that hold one number per group
_PER_GROUP = tuple(f.name for f in fields(_Result) if f.name not in ("key", "tie_counts"))


def _read(
    descents: Sequence[_Descent], extra: Sequence[Tensor] = ()
) -> tuple[list[_Result], list[float]]:
    """Bring descents (and the ``extra`` tensors, flattened) to the host in one sync."""
    parts: list[Tensor] = []
    for d in descents:
        parts.append(d.digits.reshape(-1))
        parts += [getattr(d, name) for name in _PER_GROUP]
        if d.tie_counts is not None:
            parts.append(d.tie_counts.reshape(-1))
    parts += [e.reshape(-1) for e in extra]
    if not parts:
        return [], []
    values = iter(torch.cat([p.to(torch.float64) for p in parts]).tolist())
    out: list[_Result] = []
    for d in descents:
        n, levels = len(d.groups), d.digits.shape[0]
        digits = [[int(next(values)) for _ in range(n)] for _ in range(levels)]
        read = {name: [next(values) for _ in range(n)] for name in _PER_GROUP}
        counts = None
        if d.tie_counts is not None:
            ranks, width = d.tie_counts.shape
            counts = [[int(next(values)) for _ in range(width)] for _ in range(ranks)]
        offset = 0
        for g, members in enumerate(d.groups):
            key = 0
            for level in range(levels):
                key = (key << 16) | digits[level][g]
            per_tensor = None
            if counts is not None:
                per_tensor = [row[offset : offset + len(members)] for row in counts]
            offset += len(members)
            row = {name: column[g] for name, column in read.items()}
            out.append(_Result.of(key, row, per_tensor))
    return out, list(values)


def _select(
    groups: Sequence[tuple[list[Source], float | Tensor]],
    weighted: bool,
    extra: Sequence[Tensor] = (),
) -> tuple[list[_Result], list[float]]:
    """Descend for every group (batched: one histogram per batch), then read all in one sync."""
    descents: list[_Descent] = []
    a = 0
    while a < len(groups):
        first = groups[a][0][0]
        most = len(groups) if first.group is not None else _GROUPS_PER_PASS
        b = a + 1
        while (
            b < len(groups)
            and b - a < most
            and groups[b][0][0].key_dtype == first.key_dtype
            and groups[b][0][0].tensor.device == first.tensor.device
        ):
            b += 1
        batch = groups[a:b]
        # ties per tensor: to walk a weighted tie group, and to order ranks when sharded; a
        # count cut in one process splits its ties while building masks instead
        per_tensor = first.group is not None or (weighted and any(len(s) > 1 for s, _ in batch))
        descents.append(_descend(batch, weighted, per_tensor))
        a = b
    return _read(descents, extra)


def _key_to_float(key: int, dtype: torch.dtype) -> float:
    """The float whose bit pattern is ``key`` (pure Python: no tensor, no sync)."""
    if dtype == torch.float16:
        return float(struct.unpack("<e", struct.pack("<H", key))[0])
    if dtype == torch.bfloat16:
        return float(struct.unpack("<f", struct.pack("<I", key << 16))[0])
    if dtype == torch.float32:
        return float(struct.unpack("<f", struct.pack("<I", key))[0])
    return float(struct.unpack("<d", struct.pack("<Q", key))[0])


def _walk_ties(weights: Sequence[float], rem: float, tie_counts: Sequence[int], reach: bool) -> int:
    """Weighted case: how many tied entries, taken in order, land closest to ``rem``.

    Tied entries before the crossing go toward the target (weightless ones are free); of the
    two prefixes around the crossing the closer one wins, the one reaching it on a draw (or
    always, with ``reach``).
    """
    taken = 0
    for weight, count in zip(weights, tie_counts, strict=True):
        if count == 0:
            continue
        if count * weight < rem:
            taken += count
            rem -= count * weight
            continue
        n = max(1, math.ceil(rem / weight))
        over, under = n * weight - rem, rem - (n - 1) * weight
        return taken + (n if reach or over <= under else n - 1)
    return taken  # only reached when rounding left the target just above every tie


def _rank(sources: Sequence[Source]) -> int:
    group = sources[0].group
    return 0 if group is None else dist.get_rank(group)


def _per_tensor(
    counts: list[list[int]], rank: int
) -> tuple[tuple[int, ...], tuple[int, ...], list[int]]:
    """Split tie counts per (rank, tensor) into this rank's view.

    Returns:
        This rank's counts, the ties before its part of each tensor in the order (tensor,
        rank, flat index), and the totals per tensor.
    """
    totals = [sum(column) for column in zip(*counts, strict=True)]
    before, done = [], 0
    for t, total in enumerate(totals):
        before.append(done + sum(counts[r][t] for r in range(rank)))
        done += total
    return tuple(counts[rank]), tuple(before), totals


def _to_cut(sources: Sequence[Source], r: _Result, weighted: bool, reach: bool) -> Cut:
    dtype = sources[0].key_dtype
    already = r.excluded_weight if weighted else float(r.excluded)
    if r.target - already <= 0:
        return _none(dtype, already)
    if r.nonfinite:
        raise NonFiniteError(f"cannot select among non-finite values: found {r.nonfinite} inf/NaN")
    if weighted and r.total <= 0:  # nothing left that weighs anything
        return _none(dtype, already)
    local = before = None
    totals: list[int] | None = None
    if r.tie_counts is not None:
        local, before, totals = _per_tensor(r.tie_counts, _rank(sources))
    elif len(sources) == 1:
        local, before, totals = (r.tied,), (0,), [r.tied]
    cut = Cut(
        threshold=_key_to_float(r.key, dtype),
        ties=0,
        tied=r.tied,
        key=r.key,
        dtype=dtype,
        tied_per_tensor=local,
        tied_before=before,
        already=already,
    )
    if not weighted:
        ties = int(r.rem)
    elif r.tied == 1:
        ties = 1 if reach or r.tied_weight - r.rem <= r.rem else 0
    else:
        if totals is None:
            totals = _tie_counts(sources, cut)[2]
        ties = _walk_ties([s.weight for s in sources], r.rem, totals, reach)
    return replace(cut, ties=ties)


def _none(dtype: torch.dtype, already: float = 0.0) -> Cut:
    return Cut(threshold=-1.0, ties=0, tied=0, key=-1, dtype=dtype, already=already)


def _tie_counts(
    sources: Sequence[Source], cut: Cut
) -> tuple[tuple[int, ...], tuple[int, ...], list[int]]:
    """Count the ties of a cut made without them: one pass and one host sync.

    Sharded, one all-gather too. Returns what :func:`_per_tensor` returns.
    """
    device = sources[0].tensor.device
    keys = torch.full((len(sources),), cut.key, dtype=torch.int64, device=device)
    excl = torch.stack([_excluded(s) for s in sources])
    local = _tie_counts_on_device(sources, keys, excl, chunk_size(device))
    rows = _per_rank(local, sources[0].group).tolist()
    counts = [[int(c) for c in row] for row in rows]
    return _per_tensor(counts, _rank(sources))


def _cuts(
    groups: Sequence[tuple[list[Source], float | Tensor]],
    weighted: bool,
    reach: bool = False,
    extra: Sequence[Tensor] = (),
) -> tuple[list[Cut], list[float]]:
    """:func:`cuts` that also reads ``extra`` tensors (flattened) in its one host sync."""
    results, rest = _select(groups, weighted, extra)
    out = [
        _to_cut(sources, r, weighted, reach)
        for (sources, _), r in zip(groups, results, strict=True)
    ]
    return out, rest


def cuts(
    groups: Sequence[tuple[list[Source], float | Tensor]], weighted: bool, reach: bool = False
) -> list[Cut]:
    """Descend to each group's threshold and settle its ties; one host sync for all groups.

    Each group is selected on its own (one group: a global cut; one per layer: per-layer
    cuts), all of them in the same passes. All sources of a group must share one key dtype.
    Targets count already pruned entries; a target at or below them prunes nothing new
    (:attr:`Cut.already` says how much that was). No argument checks beyond the sources'.
    Sharded sources (see :func:`make_sources`): targets are over all ranks, and every rank
    must call with the same groups and targets.

    Args:
        groups: ``(sources, target)`` pairs: the sources from one :func:`make_sources` call
            (or several of one dtype), and how many entries (unweighted) or how much weight
            (weighted) to prune in all. A target may be a 0-d tensor on the device (read
            along with the results).
        weighted: Whether targets are sums of the sources' ``weight`` instead of counts.
            Weighted, the pruned weight lands closest to the target (the reaching prefix on
            a draw).
        reach: Weighted only: land at the smallest prefix that reaches the target instead.

    Returns:
        One :class:`Cut` per group; build masks with :func:`keep_masks`.

    Raises:
        ValueError: If a value is inf/NaN.
    """
    return _cuts(groups, weighted, reach)[0]


def _fill(t: Tensor, value: float) -> None:
    chunk = chunk_size(t.device)
    for a in range(0, t.numel(), chunk):
        t[a : a + chunk].fill_(value)


def _keep_mask(
    src: Source,
    cut: Cut,
    dtype: torch.dtype,
    take: int,
    count: int,
    scratch: _Scratch,
    carry: Tensor | None,
) -> tuple[Tensor, Tensor | None]:
    """Build one tensor's keep mask.

    ``|x| >= t`` (take 0), ``|x| > t`` (take all ``count`` ties), or ``|x| > t`` but for the
    ties after the first ``take`` in the order. With ``carry`` (the ties before this tensor
    in the order, on the device) the ties are split here; the carry comes back updated for
    the next tensor.
    """
    flat = torch.empty(src.tensor.numel(), dtype=dtype, device=src.tensor.device)
    chunk = scratch.buffer.numel()
    if cut.key < 0:  # nothing new: the current mask
        if src.keep is None:
            _fill(flat, 1)
        for a, x, keep in _pieces(src, chunk):
            if keep is not None:
                torch.ne(keep, 0, out=flat[a : a + x.numel()])
        return flat.view(src.tensor.shape), carry
    compare = torch.ge if take == 0 else torch.gt
    t = cut.threshold
    outs = flat.split(chunk) if flat.numel() else ()
    for out, (a, x, keep) in zip(outs, _pieces(src, chunk), strict=True):
        mags = _abs_scores(src, x, keep, scratch(x.numel()), a)
        compare(mags, t, out=out)
        if carry is not None:  # keep back the ties after the first `take`
            tied = mags == t
            if cut.key == 0 and keep is not None:
                tied &= keep != 0
            order = tied.cumsum(0) + carry
            out.masked_fill_(tied & (order > take), 1)
            carry = order[-1]
        if cut.key == 0 and keep is not None:  # pruned zeros compare like live zeros
            out.masked_fill_(keep == 0, 0)
    return flat.view(src.tensor.shape), carry


def keep_masks(
    sources: Sequence[Source], cut: Cut, dtypes: Sequence[torch.dtype] | None = None
) -> list[Tensor]:
    """Build the keep masks (1 = keep) of a cut, in ``dtypes`` (bool by default).

    Per tensor, tied entries are all pruned (``|x| > t`` keeps), all kept (``|x| >= t``),
    or, in the one tensor where the ties run out (on each rank, when sharded), split by flat
    index. No host sync (one, for a cut made elsewhere without per-tensor tie counts, when
    its ties must be split); temporaries of one chunk.

    Args:
        sources: The sources the cut was computed on.
        cut: From :func:`cuts`.
        dtypes: One mask dtype per source; bool when not given.

    Returns:
        One keep mask per source, of its tensor's shape.
    """
    out_dtypes = list(dtypes) if dtypes is not None else [torch.bool] * len(sources)
    if not sources:
        return []
    device = sources[0].tensor.device
    takes = [(1, 1) if cut.ties else (0, 1)] * len(sources)  # every tie pruned, or none
    carry: Tensor | None = None
    shared = False
    if cut.key >= 0 and 0 < cut.ties < cut.tied:
        local, before = cut.tied_per_tensor, cut.tied_before
        if local is not None and before is None and sources[0].group is None:
            before = tuple(sum(local[:i]) for i in range(len(local)))
        if local is None and sources[0].group is None:
            # one process: count the ties on the device while building the masks, in order
            takes, shared = [(cut.ties, cut.tied)] * len(sources), True
            carry = torch.zeros((), dtype=torch.int64, device=device)
        else:
            if local is None or before is None:
                local, before, _ = _tie_counts(sources, cut)
            takes = [(min(max(cut.ties - b, 0), c), c) for b, c in zip(before, local, strict=True)]
    size = min(chunk_size(device), max(s.tensor.numel() for s in sources)) or 1
    scratch = _Scratch(torch.empty(size, dtype=sources[0].key_dtype, device=device))
    masks = []
    for src, dtype, (take, count) in zip(sources, out_dtypes, takes, strict=True):
        if not shared:
            carry = torch.zeros((), dtype=torch.int64, device=device) if 0 < take < count else None
        mask, carry = _keep_mask(src, cut, dtype, take, count, scratch, carry)
        masks.append(mask)
    return masks


def protect_largest(
    sources: Sequence[Source],
    counts: Sequence[int],
    sizes: Sequence[int],
    include: Sequence[Tensor | None] | None = None,
) -> list[int]:
    """Mark the ``counts[i]`` largest live entries of each source as never pruned.

    A per-source floor for later cuts over the same sources: the protected entries score
    above every live one (:attr:`Source.protect`), so a global cut takes the smallest of
    the others first, and lands on its target exactly while the target leaves at least
    the protected entries (the caller clamps it: at most
    ``sum(weight_i * (size_i - protected_i))``). The entries are the first ``counts[i]`` of
    the order ``(-|x|, flat index)`` among live ones (all of them when fewer are live). One
    batched per-source cut: one host sync (and its collectives when sharded); a bool mask
    per protected source.

    Args:
        sources: From :func:`make_sources`.
        counts: Entries to protect per source, over all ranks (0: none).
        sizes: Entries per source over all ranks (the local sizes in one process).
        include: Per source, live entries to protect whatever their score (``True``), at
            most ``counts[i]`` of them over all ranks; the largest others fill up the count.

    Returns:
        The entries protected per source, over all ranks: ``min(counts[i], live_i)``.
    """
    chosen = [i for i, k in enumerate(counts) if k > 0]
    if not chosen:
        return [0] * len(sources)
    for i in chosen:
        sources[i].protect = None if include is None else include[i]
    groups = [([sources[i]], float(sizes[i] - counts[i])) for i in chosen]
    protected = [0] * len(sources)
    found = cuts(groups, weighted=False)
    for i, (group, _), cut in zip(chosen, groups, found, strict=True):
        (mask,) = keep_masks(group, cut)
        if group[0].keep is not None:
            mask &= group[0].keep != 0
        sources[i].protect = mask
        protected[i] = min(counts[i], sizes[i] - int(cut.already))
    return protected


def _check_count(k: object, low: int, entries: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not low <= k <= entries:
        what = " (already pruned, total entries)" if low != 1 else ""
        raise ValueError(f"`k` must be an int in [{low}, {entries}]{what}, got {k!r}")


def _count_cut(sources: list[Source], k: int, low: int | None = None) -> Cut:
    """The cut pruning ``k`` entries in all; ``k`` checked against the counts read with it."""
    if isinstance(k, bool) or not isinstance(k, int):  # the message needs the counts
        pruned = sum(s.excluded for s in sources)
        _check_count(k, pruned if low is None else low, sum(s.tensor.numel() for s in sources))
    (result,), _ = _select([(sources, float(k))], weighted=False)
    entries = int(result.total) + result.excluded  # live + pruned, over all ranks
    _check_count(k, result.excluded if low is None else low, entries)
    return _to_cut(sources, result, False, False)


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
    group: dist.ProcessGroup | None = None,
) -> Cut:
    """Find the cut that prunes exactly ``k`` entries of ``tensors`` in total, smallest first.

    Args:
        tensors: Floating tensors (float16, bfloat16, float32 or float64), any shapes.
        k: How many entries to prune in total, already pruned ones included.
        masks: Optional current keep masks (one per tensor or ``None``); entries with mask 0
            are already pruned and are pruned first.
        scales: Optional positive per-tensor factors; scores are ``|x| * scale``.
        group: Sharded tensors: the process group (see :func:`make_sources`); ``k`` counts
            over all ranks.

    Returns:
        The :class:`Cut`; build masks from it with :func:`masks_for_cut`.

    Raises:
        ValueError: If ``k`` is not in ``[already pruned, total entries]``, an input list has
            the wrong length, a mask the wrong shape, a scale is not finite and positive, or
            a value is inf/NaN.
        TypeError: If a tensor is not floating point.
    """
    return _count_cut(make_sources(tensors, masks, scales, None, group=group), k)


def threshold_for_weighted_target(
    tensors: Sequence[Tensor],
    weights_per_tensor: Sequence[float],
    target: float,
    *,
    masks: Sequence[Tensor | None] | None = None,
    scales: Sequence[float] | None = None,
    group: dist.ProcessGroup | None = None,
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
        group: Sharded tensors: the process group (see :func:`make_sources`).

    Returns:
        The :class:`Cut`; build masks from it with :func:`masks_for_cut`.

    Raises:
        ValueError: If ``target`` is not finite, an input list has the wrong length, a mask
            the wrong shape, a weight or scale is out of range, or a value is inf/NaN.
        TypeError: If a tensor is not floating point.
    """
    _check_target(target)
    sources = make_sources(tensors, masks, scales, weights_per_tensor, group=group)
    return cuts([(sources, float(target))], weighted=True)[0]


def masks_for_cut(
    tensors: Sequence[Tensor],
    cut: Cut,
    *,
    masks: Sequence[Tensor | None] | None = None,
    scales: Sequence[float] | None = None,
    group: dist.ProcessGroup | None = None,
) -> list[Tensor]:
    """Build boolean keep masks (True = keep) for a :class:`Cut` of the same inputs.

    Args:
        tensors: The tensors the cut was computed on.
        cut: From :func:`threshold_for_count` or :func:`threshold_for_weighted_target`.
        masks: The same current keep masks as for the cut.
        scales: The same score factors as for the cut.
        group: The same process group as for the cut.

    Returns:
        One boolean mask per tensor, of its shape.

    Raises:
        ValueError: If an input list has the wrong length or a mask the wrong shape.
        TypeError: If a tensor is not floating point.
    """
    return keep_masks(make_sources(tensors, masks, scales, None, group=group), cut)


def masks_for_count(
    tensors: Sequence[Tensor],
    k: int,
    *,
    masks: Sequence[Tensor | None] | None = None,
    scales: Sequence[float] | None = None,
    group: dist.ProcessGroup | None = None,
) -> list[Tensor]:
    """Boolean keep masks that prune exactly ``k`` entries in total, smallest ``|x|`` first.

    Ties at the threshold are pruned in (tensor index, flat index) order. One host sync.

    Args:
        tensors: Floating tensors (float16, bfloat16, float32 or float64).
        k: How many entries to prune in total, already pruned ones included.
        masks: Optional current keep masks (mask 0 = already pruned, pruned first).
        scales: Optional positive per-tensor score factors.
        group: Sharded tensors: the process group (see :func:`make_sources`); ``k`` counts
            over all ranks, and each rank gets the masks of its chunks.

    Returns:
        One boolean mask per tensor (True = keep) with exactly ``k`` False entries in total.

    Raises:
        ValueError: See :func:`threshold_for_count`.
        TypeError: If a tensor is not floating point.
    """
    sources = make_sources(tensors, masks, scales, None, group=group)
    return keep_masks(sources, _count_cut(sources, k))


def masks_for_weighted_target(
    tensors: Sequence[Tensor],
    weights_per_tensor: Sequence[float],
    target: float,
    *,
    masks: Sequence[Tensor | None] | None = None,
    scales: Sequence[float] | None = None,
    group: dist.ProcessGroup | None = None,
) -> list[Tensor]:
    """Boolean keep masks for :func:`threshold_for_weighted_target`.

    Args:
        tensors: Floating tensors (float16, bfloat16, float32 or float64).
        weights_per_tensor: Finite weights >= 0, one per tensor.
        target: The summed weight to remove.
        masks: Optional current keep masks (mask 0 = already pruned).
        scales: Optional positive per-tensor score factors.
        group: Sharded tensors: the process group (see :func:`make_sources`).

    Returns:
        One boolean mask per tensor (True = keep).

    Raises:
        ValueError: See :func:`threshold_for_weighted_target`.
        TypeError: If a tensor is not floating point.
    """
    _check_target(target)
    sources = make_sources(tensors, masks, scales, weights_per_tensor, group=group)
    return keep_masks(sources, cuts([(sources, float(target))], weighted=True)[0])


def kth_smallest_abs(
    tensors: Sequence[Tensor], k: int, *, group: dist.ProcessGroup | None = None
) -> Tensor:
    """The ``k``-th smallest ``|x|`` (1-based) over all entries of ``tensors``.

    Args:
        tensors: Floating tensors (float16, bfloat16, float32 or float64).
        k: Rank in ``[1, total entries]``.
        group: Sharded tensors: the process group (see :func:`make_sources`).

    Returns:
        A 0-d tensor in the tensors' common dtype, on their device.

    Raises:
        ValueError: If ``k`` is out of range or a value is inf/NaN.
        TypeError: If a tensor is not floating point.
    """
    sources = make_sources(tensors, None, None, None, group=group)
    cut = _count_cut(sources, k, low=1)
    return torch.full((), cut.threshold, dtype=cut.dtype, device=tensors[0].device)
