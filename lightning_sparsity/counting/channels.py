"""Which layer's output channels another layer reads, found in the traced forward pass.

Realizable FLOPs (:mod:`.realizable`) compact a structurally pruned layer: its dead output
rows go, and so do the matching input channels of a layer that reads them, but only where
the graph lets a dead row reach that input as zeros. A dead row (all-zero weights, zero or
no bias) outputs zeros; zeros stay zeros through ReLU-like activations, pooling, views that
keep the channel axis, copies, and a flatten into a Linear's features (channel ``c`` of
``(B, C, H, W)`` becomes features ``c·H·W`` to ``(c + 1)·H·W − 1``); an eval-mode BatchNorm
maps them to the constant ``bias − weight · mean / √(var + eps)``, zero at initialisation
but not after training moves it (checked at each recount, on the BatchNorm's current
values). Anything else (a residual
add, a concatenation, an in-place op that is not zero-preserving) ends the trail: the
consumer's inputs then count removed only where its own weights for them are zero.

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

__all__ = ["ChannelFlow", "ChannelTracker", "dead_inputs", "dead_inputs_of", "dead_rows"]


@dataclass(frozen=True)
class ChannelFlow:
    """One read of a producer's output channels as a consumer's input channels.

    Attributes:
        consumer: slot of the weight whose dim 1 reads the channels.
        producer: slot of the weight whose dim-0 rows make them.
        bias: slot of the producer's bias (``None``: no bias).
        norms: eval-mode BatchNorms on the way, in order.
    """

    consumer: int
    producer: int
    bias: int | None
    norms: tuple[_BatchNorm, ...]
    repeat: int = 1


class _Channels(NamedTuple):
    """An activation whose axis ``dim`` holds a producer's output channels.

    Each spans ``repeat`` consecutive entries of that axis (1; ``H·W`` after flattening
    ``(B, C, H, W)``).
    """

    ref: weakref.ReferenceType[Tensor]
    dim: int
    producer: int
    bias: int | None
    norms: tuple[_BatchNorm, ...]
    repeat: int = 1


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
# pools over their input's last k axes (given a tensor of k + 1 axes, torch reads it as
# unbatched: axis 0 is not pooled, every other is): a zero channel stays a zero channel where
# the channel axis comes before the pooled ones
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

    def _set(self, tensor: Any, src: _Channels, dim: int, norms: tuple[_BatchNorm, ...]) -> None:
        if isinstance(tensor, Tensor):
            self.channels[id(tensor)] = src._replace(ref=weakref.ref(tensor), dim=dim, norms=norms)

    def step(self, func: torch._ops.OpOverload, args: tuple[Any, ...], out: Any, row: int) -> None:
        """Record what ``func`` (run inside the module of ``row``) did to the channels."""
        if func in _MATMULS:
            read = self._matmul(func, args, out)
            self._escape(args, read)
            return
        src = self.lookup(args[0]) if args else None
        carried = src is not None and self._carry(src, func, args, out, row)
        first = out[0] if isinstance(out, (tuple, list)) and out else out
        followed = carried and self.lookup(first) is not None
        self._escape(args, args[0] if followed else None)
        if not carried and func._schema.is_mutable:
            # an in-place op (x += y) rewrote a tensor whose channels we follow: trail ends
            for a in args:
                if isinstance(a, Tensor):
                    self.channels.pop(id(a), None)

    def _escape(self, args: Any, kept: Any) -> None:
        """Every followed tensor among an op's ``args`` but ``kept`` leaves the trail: escaped.

        An aten op's arguments nest one level at most (``Tensor[]``).
        """
        for arg in args:
            for leaf in arg if isinstance(arg, (list, tuple)) else (arg,):
                found = self.lookup(leaf) if leaf is not kept else None
                if found is not None:
                    self.escaped.add(found.producer)

    def escape_outputs(self, outputs: Any) -> None:
        """The model's outputs leave the model: their producers' channels escaped."""
        self._escape(tree_flatten(outputs)[0], None)

    def _carry(
        self, src: _Channels, func: torch._ops.OpOverload, args: tuple[Any, ...], out: Any, row: int
    ) -> bool:
        """Follow the channels of ``args[0]`` into ``out``.

        Returns ``False`` where ``func`` does not keep zero channels zero.
        """
        x: Tensor = args[0]
        first = out[0] if isinstance(out, (tuple, list)) else out
        if not isinstance(first, Tensor):
            return False
        keeps_axes = first.shape[: src.dim + 1] == x.shape[: src.dim + 1]
        if func in _ZERO_PRESERVING:
            if func in (aten.hardtanh.default, aten.hardtanh_.default):
                low = args[1] if len(args) > 1 else -1.0
                high = args[2] if len(args) > 2 else 1.0
                if not low <= 0 <= high:
                    return False
            if first.shape == x.shape:
                self._set(first, src, src.dim, src.norms)
            return True
        if func in _POOLS:
            if func in (aten.mean.dim, aten.sum.dim_IntList):
                dims = args[1] if len(args) > 1 and args[1] is not None else range(x.dim())
                if any(d % x.dim() == src.dim for d in dims):
                    return True  # summed over the channels: a new tensor, no trail
            elif src.dim >= x.dim() - _POOLED_AXES[func]:
                return False  # the window covers the channel axis: channels mixed
            if keeps_axes:
                self._set(first, src, src.dim, src.norms)
            return True
        if func in _VIEWS:
            if keeps_axes:
                self._set(first, src, src.dim, src.norms)
            elif src.dim == x.dim() - 1 and first.shape[-1] == x.shape[-1]:
                self._set(first, src, first.dim() - 1, src.norms)  # (B, T, C) → (B·T, C)
            else:
                merged = _merged(x.shape, first.shape, src.dim)
                if merged is not None:  # (B, C, H, W) → (B, C·H·W): channel c spans H·W
                    self._set(first, src._replace(repeat=src.repeat * merged), src.dim, src.norms)
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
                self._set(first, src, 1, (*src.norms, module))
            return True
        return False

    def _matmul(self, func: torch._ops.OpOverload, args: tuple[Any, ...], out: Any) -> Any:
        """Record a layer reading a producer's channels.

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
        else:  # the operand is weight.t(): the slot's dim 1 reads the input's last axis
            x = args[0] if func is aten.mm.default else args[1]
            dim = x.dim() - 1
            rows_first = reads_all = len(chain) == 1 and chain[0].func in _TRANSPOSES
        src = self.lookup(x)
        read = None
        if reads_all and src is not None and src.dim == dim:
            self.flows.append(ChannelFlow(slot, src.producer, src.bias, src.norms, src.repeat))
            read = x
        if rows_first and (bias is not None or bias_arg is None) and isinstance(out, Tensor):
            out_dim = 1 if func is aten.convolution.default else out.dim() - 1
            self.channels[id(out)] = _Channels(weakref.ref(out), out_dim, slot, bias, ())
        return read


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
    reads = [(flow, dead_rows(flow, tensors, live_rows)) for flow in flows]
    return dead_inputs_of(reads, uses, tensors)


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
    """The producer's output channels that are zero where the consumer reads them."""
    rows = live_rows[flow.producer]
    if rows is None:
        return None
    dead = rows == 0
    if flow.bias is not None:
        bias = tensors[flow.bias]
        if bias.shape != dead.shape:
            return None
        dead = dead & (bias == 0)
    for norm in flow.norms:
        mean, var = norm.running_mean, norm.running_var
        if mean is None or var is None or mean.shape != dead.shape:
            return None
        # out = w·(x − mean)/√(var + eps) + b: a zero channel leaves b − w·mean/√(var + eps)
        scale = norm.weight if norm.weight is not None else torch.ones_like(mean)
        shift = norm.bias if norm.bias is not None else torch.zeros_like(mean)
        constant = shift - scale * mean / torch.sqrt(var + norm.eps)
        dead = dead & (constant == 0)
    return dead
