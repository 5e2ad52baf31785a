"""Which layer's output channels another layer reads, found in the traced forward pass.

Realizable FLOPs (:mod:`.realizable`) compact a structurally pruned layer: its dead output
rows go, and so do the matching input channels of a layer that reads them, where the graph
lets a dead row reach that input as a known value. A dead row (all-zero weights) outputs
its bias, a constant at every position; ops that map a constant channel to a constant
channel keep it one (elementwise activations, pooling without zero padding counted in,
views that keep the channel axis, copies, a flatten into a Linear's features: channel
``c`` of ``(B, C, H, W)`` becomes features ``c·H·W`` to ``(c + 1)·H·W − 1``, an eval-mode
BatchNorm, a residual add of channels that are constant on every branch). A consumer can
drop such an input and fold ``weight · constant`` into its bias where that is exact: a
Linear, or a convolution that pads no zeros (every output position reads the constant at
every kernel tap). Where it pads zeros (a 3×3 convolution with ``padding=1``), the border
reads the padding's zeros, not the constant: the input is removed only if the constant is
zero, which takes a zero bias, zero-preserving ops and BatchNorms whose constant
``bias − weight · mean / √(var + eps)`` is zero (not after training moves it: checked at
each recount, on the BatchNorm's current values). Anything else (a concatenation, an
in-place op that is not followed, an op mixing channels) ends the trail: the consumer's
inputs then count removed only where its own weights for them are zero.

A residual add joins the channels of several producers: a channel of the sum is dead only
where it is dead in every addend (the coupled groups of Torch-Pruning's dependency graph),
and :mod:`lightning_sparsity.compact` then removes it from every producer and reader of the
group at once.

:class:`ChannelTracker` follows the trail op by op in the trace; :func:`dead_inputs` turns
the flows into per-consumer masks of dead inputs on the device, with no host sync.
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils._pytree import tree_flatten

aten = torch.ops.aten

__all__ = [
    "ChannelFlow",
    "ChannelTracker",
    "Source",
    "dead_channels",
    "dead_inputs",
    "dead_inputs_of",
    "dead_rows",
    "kept_constants",
]


class Source(NamedTuple):
    """One producer whose output channels reach an activation.

    Attributes:
        producer: slot of the weight whose dim-0 rows make them.
        bias: slot of the producer's bias (``None``: no bias).
        norms: eval-mode BatchNorms on the way, in order, each with the offset of these
            channels among its own (after a concatenation).
        zero: whether every op since the producer maps 0 to 0 (with a zero bias and zero
            BatchNorm constants a dead row then arrives as zeros).
    """

    producer: int
    bias: int | None
    norms: tuple[tuple[_BatchNorm, int], ...] = ()
    zero: bool = True


@dataclass(frozen=True)
class ChannelFlow:
    """One read of producers' output channels as a consumer's input channels.

    Attributes:
        consumer: slot of the weight whose dim 1 reads the channels.
        parts: consecutive ranges of the channels (several after a concatenation), each
            the producers whose channels are summed there (several after a residual add; a
            channel is dead only where it is dead in every one).
        repeat: consecutive inputs each channel spans (``H·W`` after a flatten).
        constant: whether every op on the way maps a constant channel to a constant one.
        foldable: whether the consumer reads a constant input exactly as a bias (a Linear,
            a convolution without zero padding): a dead channel then leaves whatever its
            constant, folded into the consumer's bias.
        depthwise: the consumer is a depthwise convolution (one input channel per row): a
            row reading a channel that is zero outputs its bias only, a dead row too.
    """

    consumer: int
    parts: tuple[Part, ...]
    repeat: int = 1
    constant: bool = True
    foldable: bool = False
    depthwise: bool = False

    @property
    def producers(self) -> tuple[int, ...]:
        """The producers' slots."""
        return tuple(s.producer for part in self.parts for s in part)

    @property
    def norms(self) -> tuple[_BatchNorm, ...]:
        """Every BatchNorm on the way from any producer, once each."""
        return tuple({id(n): n for part in self.parts for s in part for n, _ in s.norms}.values())


Part = tuple[Source, ...]


class _Channels(NamedTuple):
    """An activation whose axis ``dim`` holds producers' output channels.

    ``parts``: as :attr:`ChannelFlow.parts`, ``widths`` their channel counts. Each channel
    spans ``repeat`` consecutive entries of that axis (1; ``H·W`` after flattening
    ``(B, C, H, W)``). ``constant``: as :attr:`ChannelFlow.constant`.
    """

    ref: weakref.ReferenceType[Tensor]
    dim: int
    parts: tuple[Part, ...]
    widths: tuple[int, ...]
    repeat: int = 1
    constant: bool = True

    def through(self, *, zero: bool = True, constant: bool = True) -> _Channels:
        """After an op that keeps 0 at 0 (``zero``) and constants constant (``constant``)."""
        parts = self.parts
        if not zero:
            parts = tuple(tuple(s._replace(zero=False) for s in part) for part in parts)
        return self._replace(parts=parts, constant=self.constant and constant)


# f(0) == 0 elementwise, whatever their other arguments (hardtanh is checked for its range)
_ZERO_PRESERVING = {
    aten.relu.default,
    aten.relu_.default,
    aten.gelu.default,
    aten.gelu_.default,
    aten.silu.default,
    aten.silu_.default,
    aten.tanh.default,
    aten.tanh_.default,
    aten.hardswish.default,
    aten.hardswish_.default,
    aten.leaky_relu.default,
    aten.leaky_relu_.default,
    aten.elu.default,
    aten.elu_.default,
    aten.mish.default,
    aten.mish_.default,
    aten.hardtanh.default,
    aten.hardtanh_.default,
    aten.clone.default,
    aten.detach.default,
    aten.alias.default,
    aten._to_copy.default,
}
# f(c) is one constant for a constant c, but f(0) != 0
_CONSTANT_PRESERVING = {
    aten.sigmoid.default,
    aten.sigmoid_.default,
    aten.hardsigmoid.default,
    aten.hardsigmoid_.default,
    aten.exp.default,
    aten.exp_.default,
    aten.softplus.default,
    aten.cos.default,
}
# elementwise with a second operand: x ± y joins two followed tensors (a residual add); with a
# number, x + k keeps constants constant (0 only if k is 0), x · k both
_JOINS = {aten.add.Tensor, aten.add_.Tensor, aten.sub.Tensor, aten.sub_.Tensor}
_SCALED = {aten.mul.Tensor, aten.mul_.Tensor, aten.div.Tensor, aten.div_.Tensor}
_AVG_POOLS = {aten.avg_pool1d.default, aten.avg_pool2d.default, aten.avg_pool3d.default}
# pads of the last k axes with copies of the input's own values: a zero channel stays zero,
# a constant one constant (``padding_mode="reflect"``/``"replicate"`` convolutions)
_PADS = {
    aten.reflection_pad1d.default: 1,
    aten.reflection_pad2d.default: 2,
    aten.reflection_pad3d.default: 3,
    aten.replication_pad1d.default: 1,
    aten.replication_pad2d.default: 2,
    aten.replication_pad3d.default: 3,
}
# pools over their input's last k axes (given a tensor of k + 1 axes, torch reads it as
# unbatched: axis 0 is not pooled, every other is): a zero channel stays a zero channel where
# the channel axis comes before the pooled ones (a constant one a constant one, except where
# an average counts zero padding in)
_POOLED_AXES = {
    aten.max_pool1d.default: 1,
    aten.max_pool2d.default: 2,
    aten.max_pool2d_with_indices.default: 2,
    aten.max_pool3d_with_indices.default: 3,
    aten.avg_pool1d.default: 1,
    aten.avg_pool2d.default: 2,
    aten.avg_pool3d.default: 3,
    aten._adaptive_avg_pool2d.default: 2,
    aten._adaptive_avg_pool3d.default: 3,
    aten.adaptive_max_pool2d.default: 2,
}
# ... and reductions over the axes they are given
_POOLS = {*_POOLED_AXES, aten.mean.dim, aten.sum.dim_IntList}
_VIEWS = {aten.view.default, aten._unsafe_view.default, aten._reshape_alias.default}
_NO_TRAINING = aten._native_batch_norm_legit_no_training.default
_NORMS = {  # batch norm: (input, weight, bias, mean, var, training, ...) → (out, ...)
    aten.native_batch_norm.default,
    _NO_TRAINING,
    aten.cudnn_batch_norm.default,
}
_TRANSPOSES = {aten.t.default, aten.transpose.int, aten.permute.default}


# convolution and matrix products: (position of the weight operand, of the bias operand)
_MATMULS = {
    aten.convolution.default: (1, 2),
    aten.mm.default: (1, None),
    aten.addmm.default: (2, 0),
}


class ChannelTracker:
    """Follows producers' output channels through one traced forward pass.

    Args:
        modules: the model's modules by row (a BatchNorm op is matched to its module).
        source: the slot and chain a tensor derives from (the trace's weight provenance).
    """

    def __init__(
        self,
        modules: Sequence[nn.Module],
        source: Callable[[Any], tuple[int, tuple[Any, ...]] | None],
    ) -> None:
        self.modules = modules
        self.source = source
        self.channels: dict[int, _Channels] = {}
        self.flows: list[ChannelFlow] = []
        # producers whose channels reached something other than a recorded read or a
        # followed op (a residual add, a concatenation, the model's output): their channels
        # keep their positions when the model is compacted
        self.escaped: set[int] = set()

    def lookup(self, value: Any) -> _Channels | None:
        """Whose channels ``value`` holds, if it is followed."""
        if not isinstance(value, Tensor):
            return None
        found = self.channels.get(id(value))
        return found if found is not None and found.ref() is value else None

    def _set(self, tensor: Any, found: _Channels, dim: int | None = None) -> None:
        if isinstance(tensor, Tensor):
            ref = weakref.ref(tensor)
            self.channels[id(tensor)] = found._replace(
                ref=ref, dim=found.dim if dim is None else dim
            )

    def step(self, func: torch._ops.OpOverload, args: tuple[Any, ...], out: Any, row: int) -> None:
        """Record what ``func`` (run inside the module of ``row``) did to the channels."""
        if func in _MATMULS:
            read = self._matmul(func, args, out)
            self._escape(args, (read,))
            return
        if func in _JOINS and len(args) > 1 and isinstance(args[1], Tensor):
            self._escape(args, self._join(func, args, out))
            return
        if func is aten.cat.default:
            self._escape(args, self._cat(args, out))
            return
        src = self.lookup(args[0]) if args else None
        carried = src is not None and self._carry(src, func, args, out, row)
        first = out[0] if isinstance(out, (tuple, list)) and out else out
        followed = carried and self.lookup(first) is not None
        self._escape(args, (args[0],) if followed else ())
        if not carried and func._schema.is_mutable:
            # an in-place op (x += y) rewrote a tensor whose channels we follow: trail ends
            for a in args:
                if isinstance(a, Tensor):
                    self.channels.pop(id(a), None)

    def _join(
        self, func: torch._ops.OpOverload, args: tuple[Any, ...], out: Any
    ) -> tuple[Any, ...]:
        """``x ± y`` of two followed tensors of one layout: the sum holds both's producers.

        Returns:
            The operands that stay on the trail (none where the layouts differ).
        """
        a, b = self.lookup(args[0]), self.lookup(args[1])
        if (
            a is None
            or b is None
            or not isinstance(out, Tensor)
            or args[0].shape != args[1].shape
            or out.shape != args[0].shape
            or (a.dim, a.repeat, a.widths) != (b.dim, b.repeat, b.widths)
        ):
            if func._schema.is_mutable:
                self.channels.pop(id(args[0]), None)
            return ()
        parts = tuple(pa + pb for pa, pb in zip(a.parts, b.parts, strict=True))
        self._set(out, a._replace(parts=parts, constant=a.constant and b.constant))
        return (args[0], args[1])

    def _cat(self, args: tuple[Any, ...], out: Any) -> tuple[Any, ...]:
        """``cat`` of followed tensors along their channel axis: their parts side by side.

        Returns:
            The operands that stay on the trail (none unless all are followed so).
        """
        tensors = list(args[0])
        found = [self.lookup(t) for t in tensors]
        if not found or not isinstance(out, Tensor):
            return ()
        dim = (args[1] if len(args) > 1 else 0) % out.dim()
        if any(f is None or f.dim != dim or f.repeat != 1 for f in found):
            return ()
        parts = tuple(p for f in found if f is not None for p in f.parts)
        widths = tuple(w for f in found if f is not None for w in f.widths)
        constant = all(f is not None and f.constant for f in found)
        self._set(out, _Channels(weakref.ref(out), dim, parts, widths, 1, constant))
        return tuple(tensors)

    def _escape(self, args: Any, kept: tuple[Any, ...]) -> None:
        """Every followed tensor among an op's ``args`` but ``kept`` leaves the trail: escaped.

        An aten op's arguments nest one level at most (``Tensor[]``).
        """
        for arg in args:
            for leaf in arg if isinstance(arg, (list, tuple)) else (arg,):
                if any(leaf is k for k in kept):
                    continue
                found = self.lookup(leaf)
                if found is not None:
                    self.escaped.update(s.producer for part in found.parts for s in part)

    def escape_outputs(self, outputs: Any) -> None:
        """The model's outputs leave the model: their producers' channels escaped."""
        self._escape(tree_flatten(outputs)[0], ())

    def _carry(
        self, src: _Channels, func: torch._ops.OpOverload, args: tuple[Any, ...], out: Any, row: int
    ) -> bool:
        """Follow the channels of ``args[0]`` into ``out``.

        Returns ``False`` where ``func`` does not keep a dead channel a known value.
        """
        x: Tensor = args[0]
        first = out[0] if isinstance(out, (tuple, list)) else out
        if not isinstance(first, Tensor):
            return False
        keeps_axes = first.shape[: src.dim + 1] == x.shape[: src.dim + 1]
        if func in _ZERO_PRESERVING or func in _CONSTANT_PRESERVING:
            zero = func in _ZERO_PRESERVING
            if func in (aten.hardtanh.default, aten.hardtanh_.default):
                low = args[1] if len(args) > 1 else -1.0
                high = args[2] if len(args) > 2 else 1.0
                zero = low <= 0 <= high
            if first.shape == x.shape:
                self._set(first, src.through(zero=zero))
            return True
        if func in _SCALED or func in _JOINS:  # with a number (two tensors: ``_join``)
            k = args[1] if len(args) > 1 else None
            if not isinstance(k, (int, float)) or first.shape != x.shape:
                return False
            self._set(first, src.through(zero=func in _SCALED or k == 0))
            return True
        if func in _POOLS:
            if func in (aten.mean.dim, aten.sum.dim_IntList):
                dims = args[1] if len(args) > 1 and args[1] is not None else range(x.dim())
                if any(d % x.dim() == src.dim for d in dims):
                    return True  # summed over the channels: a new tensor, no trail
            elif src.dim >= x.dim() - _POOLED_AXES[func]:
                return False  # the window covers the channel axis: channels mixed
            if keeps_axes:
                self._set(first, src.through(constant=_keeps_constants(func, args)))
            return True
        if func in _PADS:
            if src.dim < x.dim() - _PADS[func] and keeps_axes:
                self._set(first, src)
                return True
            return False
        if func in _VIEWS:
            if keeps_axes:
                self._set(first, src)
            elif src.dim == x.dim() - 1 and first.shape[-1] == x.shape[-1]:
                self._set(first, src, first.dim() - 1)  # (B, T, C) → (B·T, C)
            else:
                merged = _merged(x.shape, first.shape, src.dim)
                if merged is not None:  # (B, C, H, W) → (B, C·H·W): channel c spans H·W
                    self._set(first, src._replace(repeat=src.repeat * merged))
            return True
        if func in _NORMS:
            module = self.modules[row]
            training = func is not _NO_TRAINING and len(args) > 5 and bool(args[5])
            if (
                isinstance(module, _BatchNorm)
                and src.dim == 1
                and src.repeat == 1
                and not training
                and module.running_mean is not None
                and args[3] is module.running_mean
            ):
                offsets = [sum(src.widths[:k]) for k in range(len(src.parts))]
                parts = tuple(
                    tuple(s._replace(norms=(*s.norms, (module, at))) for s in part)
                    for part, at in zip(src.parts, offsets, strict=True)
                )
                self._set(first, src._replace(parts=parts), 1)
            return True
        return False

    def _matmul(self, func: torch._ops.OpOverload, args: tuple[Any, ...], out: Any) -> Any:
        """Record a layer reading producers' channels.

        Returns:
            The activation it read as a flow (``None``: no flow).
        """
        w_pos, b_pos = _MATMULS[func]
        weight = self.source(args[w_pos])
        if weight is None:
            return None
        slot, chain = weight
        bias_arg = args[b_pos] if b_pos is not None and len(args) > b_pos else None
        bias_src = self.source(bias_arg)
        bias = bias_src[0] if bias_src is not None and not bias_src[1] else None
        if func is aten.convolution.default:
            # (input, weight, bias, stride, padding, dilation, transposed, output_padding, groups)
            x, dim = args[0], 1
            rows_first = not args[6] and not chain  # weight dim 0 = output channels
            reads_all = rows_first and args[8] == 1  # groups 1: dim 1 = every input channel
            # one input channel per row (depthwise, multiplier 1)
            depthwise = rows_first and args[8] == x.shape[1] == args[1].shape[0] > 1
            foldable = not any(args[4])  # no zero padding: every tap reads the constant
        else:  # the operand is weight.t(): the slot's dim 1 reads the input's last axis
            x = args[0] if func is aten.mm.default else args[1]
            dim = x.dim() - 1
            rows_first = reads_all = len(chain) == 1 and chain[0].func in _TRANSPOSES
            foldable, depthwise = True, False
        src = self.lookup(x)
        read = None
        if src is not None and src.dim == dim and (reads_all or (depthwise and src.repeat == 1)):
            # a depthwise row reading a constant c ≠ 0 outputs c·Σw + b: only zeros are taken
            fold = foldable and not depthwise
            flow = ChannelFlow(slot, src.parts, src.repeat, src.constant, fold, depthwise)
            self.flows.append(flow)
            read = x
        if rows_first and (bias is not None or bias_arg is None) and isinstance(out, Tensor):
            out_dim = 1 if func is aten.convolution.default else out.dim() - 1
            width = out.shape[out_dim]
            self.channels[id(out)] = _Channels(
                weakref.ref(out), out_dim, ((Source(slot, bias),),), (width,)
            )
        return read


def _keeps_constants(func: torch._ops.OpOverload, args: tuple[Any, ...]) -> bool:
    """Whether a pool maps a constant channel to one constant.

    An average that counts zero padding in, rounds windows up or divides by a set divisor
    does not.
    """
    if func not in _AVG_POOLS:
        return True
    # avg_pool(input, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
    padding = args[3] if len(args) > 3 else 0
    padded = any(padding) if isinstance(padding, (list, tuple)) else bool(padding)
    ceil_mode = bool(args[4]) if len(args) > 4 else False
    counts_padding = bool(args[5]) if len(args) > 5 else True
    divisor = args[6] if len(args) > 6 else None
    return not ceil_mode and divisor is None and not (padded and counts_padding)


def _merged(before: torch.Size, after: torch.Size, dim: int) -> int | None:
    """Entries each index of axis ``dim`` spans after a view merging it with later axes.

    ``(B, C, H, W)`` → ``(B, C·H·W)``: ``H·W``; ``None`` for any other view. Exact only when
    the axes before ``dim`` stay and ``dim`` is the outermost merged axis: then index ``c``
    maps to the consecutive entries ``[c·k, (c + 1)·k)``.
    """
    if len(after) <= dim or after[:dim] != before[:dim]:
        return None
    for end in range(dim + 2, len(before) + 1):  # axes dim .. end-1 merged into one
        if before[dim:end].numel() == after[dim] and before[end:] == after[dim + 1 :]:
            return before[dim + 1 : end].numel()
    return None


def dead_inputs(
    flows: Sequence[ChannelFlow],
    uses: Counter[int],
    tensors: Sequence[Tensor],
    live_rows: Sequence[Tensor | None],
) -> dict[int, Tensor]:
    """Per consumer slot, a bool vector of the input channels that only ever read zeros.

    A consumer counts only if every use of its weight in the trace read flowed channels
    (``uses``: weight uses per slot); several flows must all be dead for a channel.
    ``live_rows``: per slot, nonzero where a row of the weight holds a nonzero (the
    realizable probes', :attr:`.realizable.Probe.live_rows`), ``None`` for a weight of
    under 2 dims.
    """
    return dead_channels(flows, uses, tensors, live_rows)[1]


def dead_channels(
    flows: Sequence[ChannelFlow],
    uses: Counter[int],
    tensors: Sequence[Tensor],
    live_rows: Sequence[Tensor | None],
) -> tuple[list[tuple[ChannelFlow, Tensor | None]], dict[int, Tensor], list[Tensor | None]]:
    """Every read with its dead channels, :func:`dead_inputs`, and the rows that live.

    The flows are taken in trace order: a depthwise convolution's row that reads a dead
    zero channel multiplies zeros only, so it is dead as a producer for the reads after it
    (the rows returned: ``live_rows`` with those rows cleared).
    """
    rows = list(live_rows)
    reads: list[tuple[ChannelFlow, Tensor | None]] = []
    for flow in flows:
        dead = dead_rows(flow, tensors, rows)
        reads.append((flow, dead))
        live = rows[flow.consumer]
        if (
            flow.depthwise
            and dead is not None
            and live is not None
            and uses[flow.consumer] == 1
            and live.shape == dead.shape
        ):
            rows[flow.consumer] = live * ~dead.to(live.device)
    plain = [(flow, dead) for flow, dead in reads if not flow.depthwise]
    return reads, dead_inputs_of(plain, uses, tensors), rows


def dead_inputs_of(
    reads: Sequence[tuple[ChannelFlow, Tensor | None]],
    uses: Counter[int],
    tensors: Sequence[Tensor],
) -> dict[int, Tensor]:
    """:func:`dead_inputs` from each read's dead producer channels (:func:`dead_rows`)."""
    by_consumer: dict[int, list[tuple[ChannelFlow, Tensor | None]]] = {}
    for flow, dead_channels in reads:
        by_consumer.setdefault(flow.consumer, []).append((flow, dead_channels))
    out: dict[int, Tensor] = {}
    for consumer, found in by_consumer.items():
        if len(found) != uses[consumer]:
            continue
        inputs = tensors[consumer].shape[1]
        dead: Tensor | None = None
        for flow, one in found:
            if one is None or one.shape[0] * flow.repeat != inputs:
                break
            if flow.repeat > 1:  # each channel read as `repeat` consecutive inputs
                one = one.repeat_interleave(flow.repeat)
            dead = one if dead is None else dead & one
        else:
            if dead is not None:
                out[consumer] = dead
    return out


def dead_rows(
    flow: ChannelFlow, tensors: Sequence[Tensor], live_rows: Sequence[Tensor | None]
) -> Tensor | None:
    """The producers' output channels the consumer can drop where it reads them.

    Part by part: a channel is dead in every source (no nonzero weight in its row), and
    either the consumer folds its constant into its bias (:attr:`ChannelFlow.foldable` on
    a constant trail) or the constant is zero in every source.
    """
    pieces = []
    for part in flow.parts:
        dead = _dead_part(flow, part, tensors, live_rows)
        if dead is None:
            return None
        pieces.append(dead)
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def _dead_part(
    flow: ChannelFlow, part: Part, tensors: Sequence[Tensor], live_rows: Sequence[Tensor | None]
) -> Tensor | None:
    dead: Tensor | None = None
    zero: Tensor | None = None
    for source in part:
        rows = live_rows[source.producer]
        if rows is None or (dead is not None and rows.shape != dead.shape):
            return None
        one = rows == 0
        dead = one if dead is None else dead & one
        if flow.constant and flow.foldable:
            continue
        is_zero = _zero_constant(source, tensors, one.shape) if source.zero else None
        if is_zero is None:
            return dead & False
        zero = is_zero if zero is None else zero & is_zero
    if dead is None:
        return None
    return dead if zero is None else dead & zero


def _zero_constant(source: Source, tensors: Sequence[Tensor], shape: torch.Size) -> Tensor | None:
    """Per channel, whether a dead row of ``source`` arrives as zero (``None``: unknown)."""
    zero = torch.ones(shape, dtype=torch.bool, device=tensors[source.producer].device)
    if source.bias is not None:
        bias = tensors[source.bias]
        if bias.shape != shape:
            return None
        zero = zero & (bias == 0)
    for norm, at in source.norms:
        mean, var = norm.running_mean, norm.running_var
        if mean is None or var is None or mean.shape[0] < at + shape[0]:
            return None
        part = slice(at, at + shape[0])  # these channels' share of the norm's (after a cat)
        # out = w·(x − mean)/√(var + eps) + b: a zero channel leaves b − w·mean/√(var + eps)
        scale = norm.weight if norm.weight is not None else torch.ones_like(mean)
        shift = norm.bias if norm.bias is not None else torch.zeros_like(mean)
        constant = shift - scale * mean / torch.sqrt(var + norm.eps)
        zero = zero & (constant[part] == 0)
    return zero


def kept_constants(
    flow: ChannelFlow, live_rows: Sequence[Tensor | None], dead: Tensor | None
) -> Tensor | None:
    """The channels dead in every source that the consumer still reads.

    ``dead``: those it drops (:func:`dead_rows`). What is left reaches it as a nonzero
    constant through zero padding, or on a trail that does not keep it one constant.
    """
    if dead is None or flow.depthwise:
        return None
    pieces = []
    for part in flow.parts:
        rows_dead: Tensor | None = None
        for source in part:
            rows = live_rows[source.producer]
            if rows is None or (rows_dead is not None and rows.shape != rows_dead.shape):
                return None
            rows_dead = rows == 0 if rows_dead is None else rows_dead & (rows == 0)
        if rows_dead is None:
            return None
        pieces.append(rows_dead)
    every = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
    return every & ~dead if every.shape == dead.shape else None
