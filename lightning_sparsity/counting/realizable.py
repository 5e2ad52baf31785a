"""Realizable FLOPs: what a real kernel executes for a weight's pattern of zeros.

Sparse FLOPs skip every zero weight; dense kernels skip none. Two patterns do pay off:

* N:M semi-structured (2:4: at most 2 nonzeros in every group of 4 along the input
  dimension, a convolution's input channels at each kernel position,
  :mod:`lightning_sparsity.patterns`): a weight that conforms runs at ``N / M`` of its dense
  FLOPs (cuSPARSELt / CUTLASS, TensorRT, on Ampere and later). Considered for the weights of
  linear and convolution layers, attention's projections and recurrent layers, whose dim 1
  is the input (:func:`lightning_sparsity.patterns.layout_problem`), and credited only to a
  weight the kernels take: the pruner's rule,
  :func:`lightning_sparsity.patterns.kernel_problem` (2:4 on a 2-D weight: each dimension a
  multiple of the dtype's minimum, e.g. (32, 32) for float32; on a convolution: output and
  input channels multiples of (8, 16)). A weight it refuses counts
  at what it realizes otherwise (its compaction, else dense).
* structure: dim-0 slices (output rows / channels) and dim-1 slices (input features /
  channels) that are entirely zero can be removed, leaving a smaller dense layer: its
  FLOPs scale by ``(live rows / rows) · (live inputs / inputs)``. Any weight of 2+ dims.
  An input also counts removed where the graph carries a dead row of the layer before as
  zeros into it (:mod:`.channels`: through activations, pooling and an eval BatchNorm
  whose constant for it is zero; not through a residual add).

Per weight the cheaper of the two counts; unstructured zeros realize nothing.

A training step's backward products (:func:`lightning_sparsity.counting.trace.
trace_training`) realize the compaction only (:attr:`Form.compact`): the compacted layer's
gradients are as much smaller as its forward. An N:M weight realizes nothing there. The
activation gradient ``grad_y · W`` reduces over W's *output* dimension, along which its
N:M groups do not run (only a transposable mask, N:M along both dimensions, would take
it; it is not credited), and the weight gradient ``grad_yᵀ · x`` is a dense product whose
pruned entries are dropped afterwards (a kernel computing only the kept ones, a sampled
dense-dense product, has no N:M tensor-core form). Uses of a weight
in slices (a packed projection with different query and key lengths) and ops without a
weight count dense. The probes are device scalars read back with the nonzero counts, in the
same host sync; sharded (``DTensor``) weights are probed on their shards.

Each weight's values are read once, as a bare ``count_nonzero`` sweep reads them: cast to
0/1 bytes, input dimension last (:func:`zero_flags`); the nonzero count, live rows, live
inputs and N:M conformity all come from those bytes (:func:`probe`). A weight without zeros
needs only its count (:func:`dense_probe`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lightning_sparsity._shards import is_sharded, local, shard_group
from lightning_sparsity.patterns import Pattern, kernel_problem, layout_problem

__all__ = [
    "DEFAULT_PATTERNS",
    "Form",
    "Probe",
    "ZeroFlags",
    "count_ones",
    "dense_probe",
    "on_calling_thread",
    "probe",
    "zero_flags",
]

DEFAULT_PATTERNS: tuple[Pattern, ...] = ((2, 4),)
_ONCE = torch.empty(0)  # a holder for values every rank computes whole (not summed)


@dataclass(frozen=True)
class Form:
    """What a weight realizes.

    Attributes:
        factor: realizable over dense FLOPs for the weight's uses (1: nothing skipped).
        text: ``"dense"``, ``"2:4"`` (conforms, in a shape the kernels take), ``"rows 48/64,
            inputs 16/16"`` (compacted), ``"unstructured"`` (zeros no kernel can skip) or
            ``"zero"``.
        compact: the compaction's factor alone, ``(live rows / rows) · (live inputs /
            inputs)``: what a training step's backward products realize.
    """

    factor: Fraction
    text: str
    compact: Fraction = Fraction(1)


@dataclass
class Probe:
    """Device tensors of one weight, decoded into a :class:`Form` after the host sync."""

    nnz: Tensor  # the (local) weight's nonzeros, counted from the same flags
    live_rows: Tensor  # per (local) row: nonzero where the row holds a nonzero
    live_inputs: Tensor  # bool per input, OR-ed over the ranks when sharded
    violations: list[Tensor]  # per usable pattern: rows with a group of more than N nonzeros
    holders: list[Tensor]  # what each violation count was counted over
    weight: Tensor
    rows: int
    inputs: int
    patterns: tuple[Pattern, ...]

    def scalars(self, dead_inputs: Tensor | None = None) -> tuple[list[Tensor], list[Tensor]]:
        """Live rows, live inputs and the violations, with what each was counted over.

        ``dead_inputs`` (bool, one per input): inputs that only ever read zeros
        (:mod:`.channels`), removed with the rows of the layer that makes them. Sharded:
        rows and violations are summed over the ranks later, the inputs are OR-ed already.
        """
        live_inputs = self.live_inputs_after(dead_inputs)
        once = _ONCE if is_sharded(self.weight) else self.weight
        return (
            [self.live_rows.count_nonzero(), live_inputs.count_nonzero(), *self.violations],
            [self.weight, once, *self.holders],
        )

    def live_inputs_after(self, dead_inputs: Tensor | None) -> Tensor:
        """The live inputs less those that only ever read zeros (``dead_inputs``)."""
        if dead_inputs is None:
            return self.live_inputs
        return self.live_inputs & ~dead_inputs.to(self.live_inputs.device)

    def form(self, values: Sequence[int], nnz: int, numel: int) -> Form:
        """The weight's form from its probes' values and its nonzero count."""
        if nnz == 0:
            return Form(Fraction(0), "zero", Fraction(0))
        live_rows, live_inputs, *violations = values
        # a weight without zeros still compacts where the layer before removes its inputs
        compact = Fraction(live_rows, self.rows) * Fraction(live_inputs, self.inputs)
        best = Form(Fraction(1), "dense" if nnz == numel else "unstructured", compact)
        if compact < best.factor:
            best = Form(
                compact,
                f"rows {live_rows}/{self.rows}, inputs {live_inputs}/{self.inputs}",
                compact,
            )
        for (n, m), bad in zip(self.patterns, violations, strict=True):
            if bad == 0 and Fraction(n, m) < best.factor:
                best = Form(Fraction(n, m), f"{n}:{m}", compact)
        return best


@contextmanager
def on_calling_thread(tensors: Iterable[Tensor]) -> Iterator[None]:
    """Run CPU ops on the calling thread only (one intra-op thread), then restore the count.

    The probes are a handful of memory-bound passes per weight. With other processes on the
    cores (DataLoader workers), each OpenMP region can wait a scheduler time slice at its
    barrier (~8 ms on 2 cores): GPT-2's recount took 3.2 s on 2 threads against 0.24-0.29 s
    on one, for 0.12 s against 0.22 s when the machine is idle. The selection avoids the same
    waits by slicing (:mod:`lightning_sparsity.pruning.select`).
    """
    threads = torch.get_num_threads()
    cpu = any(local(t).device.type == "cpu" for t in tensors)
    if not cpu or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class ZeroFlags:
    """Reads each weight's zeros once into a buffer that the next weight reuses.

    :meth:`read` is the recount's one pass over a weight's values, on the intra-op threads
    there were when this was made, as a bare ``count_nonzero`` sweep reads them (one OpenMP
    region per weight), also inside :func:`on_calling_thread`, where the probe then reads
    the bytes. One buffer per device, as large as the largest (local) weight: no allocation
    (and no page faults) per weight.

    Args:
        tensors: the weights that will be read (their sizes set the buffers').
    """

    def __init__(self, tensors: Iterable[Tensor]) -> None:
        sizes: dict[torch.device, int] = {}
        for t in tensors:
            if t.dim() >= 2:
                part = local(t)
                sizes[part.device] = max(sizes.get(part.device, 0), part.numel())
        self._sizes = sizes
        self._buffers: dict[torch.device, Tensor] = {}
        self._threads = torch.get_num_threads()

    def read(self, weight: Tensor, *, inputs_last: bool = True) -> Tensor | None:
        """:func:`zero_flags` of ``weight`` in the buffer (valid until the next read)."""
        if weight.dim() < 2 or weight.numel() == 0:
            return None
        device = local(weight).device
        buffer = self._buffers.get(device)
        if buffer is None:
            buffer = torch.empty(self._sizes[device], dtype=torch.bool, device=device)
            self._buffers[device] = buffer
        threads = torch.get_num_threads()
        torch.set_num_threads(self._threads)
        try:
            return zero_flags(weight, buffer, inputs_last=inputs_last)
        finally:
            torch.set_num_threads(threads)


def zero_flags(weight: Tensor, buffer: Tensor | None = None, *, inputs_last: bool = True) -> Tensor:
    """``weight != 0`` (its local part) as contiguous 0/1 bytes laid out ``(K, *kernel, C)``.

    The input dimension last, as :func:`lightning_sparsity.patterns.group_view` sees the
    weight: a group of M is M consecutive bytes (``inputs_last=False``: the weight's own
    order, cheaper for a kernel of several positions, enough to count). Written into the
    front of ``buffer`` (bool, at least as long as the weight) when given; the one read of
    the weight's values.
    """
    part = local(weight).detach()
    moved = part.movedim(1, -1) if inputs_last else part
    if buffer is None:
        out = torch.empty(moved.shape, dtype=torch.bool, device=part.device)
    else:
        out = buffer[: moved.numel()].view(moved.shape)
    # a cast to bool is ``!= 0`` (NaN included); on CPU it runs 4x faster than ``torch.ne``
    # and twice as fast as ``count_nonzero`` on a dense weight (5x on a pruned one)
    out.copy_(moved)
    return out.view(torch.uint8)


# the integer that holds a group of M 0/1 bytes as one word
_WORDS = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _most_per_group(rows: Tensor, m: int, *, overwrite: bool) -> Tensor:
    """Per row of 0/1 bytes ``(K, L)``, the most ones in a group of ``m`` consecutive bytes.

    Each group read as one little-endian word ``b0 + 256·b1 + …``, times ``1 + 256 + 256² +
    …`` (``m`` terms): byte ``m − 1`` of the product is ``b0 + … + b(m−1)``, the group's
    count (every partial sum is at most ``m``, so no byte carries), and the bytes below it
    are less than one unit of it, so a row's largest product holds its largest count.
    ``overwrite``: multiply in place (``rows`` is not read again).
    """
    # NB: the product overflows the word; its low bits are what two's complement keeps (the
    # vector units and CUDA's integer multiply discard the high bits, as here)
    words = rows.view(_WORDS[m])
    spread = sum(256**i for i in range(m))
    product = words.mul_(spread) if overwrite else words * spread
    return product.amax(1) >> 8 * (m - 1)


@functools.cache
def _fold(n: int) -> int:
    """The largest divisor of ``n`` up to 255: as many 0/1 bytes summed stay in a byte."""
    return next(a for a in range(255, 0, -1) if n % a == 0)


def count_ones(flags: Tensor) -> Tensor:
    """The number of ones in 0/1 bytes: byte sums of up to 255 rows first, vector-wide."""
    return flags.view(_fold(flags.numel()), -1).sum(0, dtype=torch.uint8).sum()


def probe(
    module: nn.Module,
    weight: Tensor,
    patterns: Sequence[Pattern] = DEFAULT_PATTERNS,
    flags: Tensor | None = None,
) -> Probe | None:
    """The probes of one weight (no host sync), or ``None`` for a weight of under 2 dims.

    ``flags``: the weight's :func:`zero_flags` if read already; the probe overwrites them.
    Everything else reads those bytes: first the rows summed up to 255 at a time (a byte
    holds each sum), whose sums give the nonzero count and the inputs' liveness; then each
    group of M as one integer word whose largest product per row gives the rows' liveness
    and the most nonzeros a group holds (:func:`_most_per_group`). Sharded weights: rows and
    pattern violations are counted on the shard (summed over ranks later); the inputs'
    liveness is OR-ed over ranks here, with one all-reduce.
    """
    if weight.dim() < 2 or weight.numel() == 0:
        return None
    if flags is None:
        flags = zero_flags(weight)
    rows_n, inputs_n = local(weight).shape[:2]
    device = flags.device
    rows = flags.view(rows_n, math.prod(flags.shape[1:]))
    # byte sums run at memory speed, where ``any`` over bools and ``count_nonzero`` cost
    # several times more on CPU
    fold = _fold(rows_n)
    sums = rows.view(rows_n // fold, fold, rows.shape[1]).sum(1, dtype=torch.uint8)
    nnz = sums.sum()
    if rows_n == 0:  # a shard of no rows
        live_inputs = torch.zeros(inputs_n, dtype=torch.bool, device=device)
    else:
        live_inputs = sums.view(-1, inputs_n).amax(0).bool()
    if is_sharded(weight):
        flags_in = live_inputs.to(torch.int32)
        dist.all_reduce(flags_in, op=dist.ReduceOp.MAX, group=shard_group([weight]))
        live_inputs = flags_in.bool()
    usable = tuple(patterns) if layout_problem(module) is None else ()
    # the pruner's rule (shape and dtype of the whole weight: no device work); a shard
    # holds whole rows, so whole groups
    takes = {p: kernel_problem(weight, p) is None for p in usable}
    sizes = list(dict.fromkeys(m for (n, m) in usable if takes[(n, m)]))
    words = [m for m in sizes if m in _WORDS]
    most: dict[int, Tensor] = {}
    for m in sizes:  # group counts of other sizes before the words overwrite the bytes
        if m not in words:
            cut = rows.view(rows_n, rows.shape[1] // m, m)
            most[m] = cut.sum(2, dtype=torch.uint8 if m < 256 else torch.int32).amax(1)
    for m in words:
        most[m] = _most_per_group(rows, m, overwrite=m == words[-1])
    live_rows = next(iter(most.values())) if most else rows.amax(1)
    violations: list[Tensor] = []
    holders: list[Tensor] = []
    for n, m in usable:
        if takes[(n, m)]:  # rows holding a group of more than N nonzeros, summed over shards
            violations.append((most[m] > n).count_nonzero())
            holders.append(weight)
        else:  # no kernel runs it: one violation, counted once
            violations.append(torch.ones((), dtype=torch.int64, device=device))
            holders.append(_ONCE)
    return Probe(nnz, live_rows, live_inputs, violations, holders, weight, rows_n, inputs_n, usable)


def dense_probe(
    module: nn.Module, weight: Tensor, nnz: Tensor, patterns: Sequence[Pattern] = DEFAULT_PATTERNS
) -> Probe | None:
    """The probes of a weight without zeros, read off nothing but ``nnz`` (unsharded).

    Every row and input lives and no pattern fits; the caller checks after the read that
    ``nnz`` is indeed the weight's size.
    """
    if weight.dim() < 2 or weight.numel() == 0:
        return None
    rows_n, inputs_n = weight.shape[:2]
    device = weight.device
    usable = tuple(patterns) if layout_problem(module) is None else ()
    return Probe(
        nnz,
        torch.ones(rows_n, dtype=torch.uint8, device=device),
        torch.ones(inputs_n, dtype=torch.bool, device=device),
        [torch.ones((), dtype=torch.int64, device=device) for _ in usable],
        [_ONCE for _ in usable],
        weight,
        rows_n,
        inputs_n,
        usable,
    )
