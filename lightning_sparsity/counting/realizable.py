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

Per weight the cheaper of the two counts; unstructured zeros realize nothing. Uses of a weight
in slices (a packed projection with different query and key lengths) and ops without a
weight count dense. The probes are device scalars read back with the nonzero counts, in the
same host sync; sharded (``DTensor``) weights are probed on their shards.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lightning_sparsity._shards import is_sharded, local, shard_group
from lightning_sparsity.patterns import Pattern, group_view, kernel_problem, layout_problem

__all__ = ["DEFAULT_PATTERNS", "Form", "Probe", "on_calling_thread", "probe"]

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
    """

    factor: Fraction
    text: str


@dataclass
class Probe:
    """Device tensors of one weight, decoded into a :class:`Form` after the host sync."""

    nnz: Tensor  # the (local) weight's nonzeros, counted from the same flags
    live_rows: Tensor  # uint8 per (local) row: 1 where the row holds a nonzero
    live_inputs: Tensor  # bool per input, OR-ed over the ranks when sharded
    violations: list[Tensor]  # per usable pattern: groups holding more than N nonzeros
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
            return Form(Fraction(0), "zero")
        live_rows, live_inputs, *violations = values
        # a weight without zeros still compacts where the layer before removes its inputs
        best = Form(Fraction(1), "dense" if nnz == numel else "unstructured")
        compact = Fraction(live_rows, self.rows) * Fraction(live_inputs, self.inputs)
        if compact < best.factor:
            best = Form(
                compact, f"rows {live_rows}/{self.rows}, inputs {live_inputs}/{self.inputs}"
            )
        for (n, m), bad in zip(self.patterns, violations, strict=True):
            if bad == 0 and Fraction(n, m) < best.factor:
                best = Form(Fraction(n, m), f"{n}:{m}")
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


def probe(
    module: nn.Module, weight: Tensor, patterns: Sequence[Pattern] = DEFAULT_PATTERNS
) -> Probe | None:
    """The probes of one weight (no host sync), or ``None`` for a weight of under 2 dims.

    Sharded weights: rows and pattern violations are counted on the shard (summed over ranks
    later); the inputs' liveness is OR-ed over ranks here, with one all-reduce.
    """
    if weight.dim() < 2 or weight.numel() == 0:
        return None
    part = local(weight).detach()
    # every reduction reads the 0/1 bytes of one ``!= 0``: max over bytes and counting
    # nonzero bytes run at memory speed, where ``any`` over bools and a float
    # ``count_nonzero`` (branchy on a mix of zeros) cost 5-10x more on CPU
    flags = (part != 0).view(torch.uint8)
    nnz = flags.count_nonzero()
    rows_n, inputs_n = part.shape[0], part.shape[1]
    live_rows = flags.reshape(rows_n, -1).amax(1)
    per_input = flags.reshape(rows_n, inputs_n, -1)
    if per_input.shape[2] > 1:  # kernel positions folded first (a view when 1)
        per_input = per_input.amax(2)
    live_inputs = per_input.reshape(rows_n, inputs_n).amax(0).bool()
    if is_sharded(weight):
        flags_in = live_inputs.to(torch.int32)
        dist.all_reduce(flags_in, op=dist.ReduceOp.MAX, group=shard_group([weight]))
        live_inputs = flags_in.bool()
    violations: list[Tensor] = []
    holders: list[Tensor] = []
    usable = tuple(patterns) if layout_problem(module) is None else ()
    for n, m in usable:
        # the pruner's rule (shape and dtype of the whole weight: no device work); a shard
        # holds whole rows, so whole groups
        if kernel_problem(weight, (n, m)) is not None:
            # no kernel runs it: one violation, counted once
            violations.append(torch.ones((), dtype=torch.int64, device=part.device))
            holders.append(_ONCE)
        else:  # groups holding more than N nonzeros, summed over the shards
            per_group = group_view(flags, m).sum(1, dtype=torch.uint8)  # 1 byte per group
            violations.append((per_group > n).count_nonzero())
            holders.append(weight)
    return Probe(nnz, live_rows, live_inputs, violations, holders, weight, rows_n, inputs_n, usable)
