"""The physically smaller model the realizable count describes: ``ls.compact``.

Realizable FLOPs (:mod:`lightning_sparsity.counting.realizable`) count a layer's rows that
hold no nonzero weight, and its inputs that hold none or only ever read the zeros of a
dead row of the layer before (:mod:`lightning_sparsity.counting.channels`), as removed.
:func:`compact` removes exactly those, from the same sweep
(:func:`lightning_sparsity.counting.meter.structure`): each Linear and convolution whose
realizable form is a compaction becomes a :class:`Compacted` layer that

1. gathers its live inputs (``index_select``: no multiplication),
2. runs a dense layer holding only the live rows and inputs (the FLOPs that remain),
3. puts its outputs back in their rows, the dead rows holding their bias (a constant: a row
   with no nonzero weight multiplies nothing), so every shape downstream (a residual add,
   a BatchNorm, a concatenation) is as before.

Hence the compacted model's dense FLOPs equal the masked model's realizable FLOPs exactly
wherever the realizable form is a removal, and its output equals the masked model's (in
eval mode: a dead channel reaches a consumer as zeros through an eval BatchNorm only). A
weight realized as N:M (``"2:4"``) keeps its shape, zeros in place (its N:M FLOPs need a
2:4 kernel). Other weights whose form is a removal (attention, recurrent, grouped or
transposed convolutions) are kept dense and named in a warning.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

from lightning_sparsity._shards import is_sharded
from lightning_sparsity.counting.meter import WeightStructure, structure
from lightning_sparsity.pruning import masks as storage

__all__ = ["Compacted", "compact"]


class Compacted(nn.Module):
    """A Linear or convolution with its dead rows and inputs removed (see the module).

    Args:
        layer: the dense layer of the live rows and inputs, or ``None`` if no row lives.
        inputs: the indices of the live inputs (``None``: every input).
        rows: the indices of the live rows (``None``: every row).
        fill: per row of the original layer, what a dead row outputs (its bias, or 0).
        dim: the channel axis: 1 for a convolution, -1 for a Linear.
        shape: ``(rows, inputs)`` of the original layer, for the repr.
        conv: for a layer without live rows, the original convolution (its geometry only:
            the output's spatial size); ``None`` for a Linear.
    """

    layer: nn.Module | None
    inputs: Tensor | None
    rows: Tensor | None
    fill: Tensor

    def __init__(
        self,
        layer: nn.Module | None,
        inputs: Tensor | None,
        rows: Tensor | None,
        fill: Tensor,
        dim: int,
        shape: tuple[int, int],
        conv: _ConvNd | None = None,
    ) -> None:
        super().__init__()
        self.layer = layer
        self.register_buffer("inputs", inputs)
        self.register_buffer("rows", rows)
        self.register_buffer("fill", fill)
        self.dim = dim
        self.shape = shape
        self._geometry = None if conv is None else _geometry(conv)

    def extra_repr(self) -> str:
        """``rows 8/16, inputs 4/8``: what is left of the original layer."""
        rows = self.shape[0] if self.rows is None else len(self.rows)
        inputs = self.shape[1] if self.inputs is None else len(self.inputs)
        return f"rows {rows}/{self.shape[0]}, inputs {inputs}/{self.shape[1]}"

    def forward(self, x: Tensor) -> Tensor:
        """Gather the live inputs, run the small layer, put its rows back (see the class)."""
        if self.inputs is not None:
            x = x.index_select(self.dim, self.inputs)
        if self.layer is None:  # no live row: every output is its row's constant
            return self._constant(x)
        y = self.layer(x)
        if self.rows is None:
            return y
        shape = list(y.shape)
        shape[self.dim] = self.fill.numel()
        out = self._broadcast(self.fill, len(shape)).expand(shape).to(y.dtype).clone()
        return out.index_copy(self.dim % len(shape), self.rows, y)

    def _broadcast(self, values: Tensor, dims: int) -> Tensor:
        view = [1] * dims
        view[self.dim] = values.numel()
        return values.reshape(view)

    def _constant(self, x: Tensor) -> Tensor:
        if self._geometry is None:  # a Linear: the last axis becomes the rows
            shape = [*x.shape[:-1], self.fill.numel()]
        else:
            shape = [x.shape[0], self.fill.numel(), *_conv_size(x.shape[2:], *self._geometry)]
        return self._broadcast(self.fill, len(shape)).expand(shape).to(x.dtype).clone()


def _geometry(conv: _ConvNd) -> tuple[Any, ...]:
    return (conv.kernel_size, conv.stride, conv.padding, conv.dilation)


def _conv_size(
    size: torch.Size, kernel: Any, stride: Any, padding: Any, dilation: Any
) -> list[int]:
    """A convolution's output spatial size (torch's formula; ``padding='same'`` keeps it)."""
    if padding == "same":
        return list(size)
    pads = (0,) * len(size) if padding == "valid" else padding
    return [
        (n + 2 * p - d * (k - 1) - 1) // s + 1
        for n, k, s, p, d in zip(size, kernel, stride, pads, dilation, strict=True)
    ]


def _why_not(module: nn.Module, found: WeightStructure) -> str | None:
    """Why a weight whose form is a removal cannot be compacted here (``None``: it can)."""
    if found.slot.attr != "weight":
        return f"{found.slot.attr} of a {type(module).__name__}"
    if isinstance(module, nn.Linear):
        return None
    if isinstance(module, _ConvNd):
        if module.transposed:
            return "a transposed convolution"
        depthwise = module.groups == module.in_channels == module.out_channels
        if module.groups != 1 and not depthwise:
            return f"a grouped convolution (groups={module.groups})"
        return None
    return f"a {type(module).__name__}"


def _small(module: nn.Module, weight: Tensor, bias: Tensor | None) -> nn.Module:
    """A layer like ``module`` holding ``weight`` (and ``bias``), as plain parameters."""
    if isinstance(module, nn.Linear):
        small: nn.Module = nn.Linear(weight.shape[1], weight.shape[0], bias is not None)
    else:
        assert isinstance(module, _ConvNd)
        small = copy.deepcopy(module)
        for name in ("weight", "bias"):
            if storage.is_masked(small, name):
                storage.remove(small, name)
        if small.groups > 1:  # depthwise: one group per kept channel
            small.groups = small.in_channels = small.out_channels = weight.shape[0]
        else:
            small.in_channels, small.out_channels = weight.shape[1], weight.shape[0]
    small.weight = nn.Parameter(weight.detach().clone())
    small.bias = None if bias is None else nn.Parameter(bias.detach().clone())  # type: ignore[assignment]
    return small.to(device=weight.device, dtype=weight.dtype)


def _compacted(module: nn.Module, found: WeightStructure) -> Compacted:
    weight = storage.effective(module, "weight").detach()
    bias_value = getattr(module, "bias", None)
    bias = None if bias_value is None else bias_value.detach()
    rows, inputs = found.live_rows.to(weight.device), found.live_inputs.to(weight.device)
    row_index = rows.nonzero().flatten() if not bool(rows.all()) else None
    input_index = inputs.nonzero().flatten() if not bool(inputs.all()) else None
    depthwise = isinstance(module, _ConvNd) and module.groups > 1
    kept = weight
    if row_index is not None:
        kept = kept.index_select(0, row_index)
    if depthwise:  # channel c reads input channel c alone: the live rows' inputs
        input_index = row_index
    elif input_index is not None:
        kept = kept.index_select(1, input_index)
    small_bias = None if bias is None or row_index is None else bias.index_select(0, row_index)
    if bias is not None and row_index is None:
        small_bias = bias
    fill = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
    if bias is not None:
        fill = torch.where(rows, torch.zeros_like(bias), bias)
    layer = None if kept.shape[0] == 0 else _small(module, kept, small_bias)
    is_conv = isinstance(module, _ConvNd)
    return Compacted(
        layer,
        input_index,
        row_index,
        fill,
        1 if is_conv else -1,
        (weight.shape[0], weight.shape[1]),
        module if is_conv and layer is None else None,  # type: ignore[arg-type]
    )


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def compact(model: nn.Module, example_input: Any) -> nn.Module:
    """A copy of ``model`` without the rows and inputs its realizable FLOPs count removed.

    The copy's dense FLOPs (``FlopCounterMode``) equal ``ls.measure(model,
    example_input).total.flops_realizable`` (per batch) where every weight realizes a
    removal, dense or unstructured; a weight realized N:M keeps its shape. Its output equals
    the masked model's in eval mode; masks on the copy are made permanent (plain weights).
    ``model`` is left as found.

    Args:
        model: the pruned model.
        example_input: an input of the shapes the model runs on (the trace that finds the
            dead channels); a Tensor, a tuple/list of positional arguments, or a dict.

    Returns:
        The compacted copy, in eval mode.

    Warns:
        UserWarning: naming weights whose form is a removal that this cannot compact (an
            attention, recurrent, grouped or transposed convolution weight): kept dense.

    Raises:
        ValueError: for a model on the meta device, with sharded (FSDP2) weights, or whose
            compacted weight is tied to another module (named).
    """
    if any(is_sharded(p) for p in model.parameters()):
        raise ValueError("compact needs whole weights: gather the sharded (FSDP2) model first")
    found = structure(model, example_input)
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        for param in module.parameters(recurse=False):
            owners.setdefault(id(param), []).append(name)
    new = copy.deepcopy(model)
    kept: dict[str, str] = {}
    for item in found:
        if not item.form.text.startswith(("rows ", "zero")):
            continue
        module = item.slot.module
        why = _why_not(module, item)
        if why is not None:
            kept[item.slot.name] = why
            continue
        tied = owners.get(id(storage.trained(module, "weight")), [])
        if len(tied) > 1:
            raise ValueError(
                f"compact: {item.slot.name} is tied to {tied}: compacting one would change"
                " the others; untie it or compact none"
            )
        parent, child = _parent(new, item.slot.module_name)
        setattr(parent, child, _compacted(module, item))
    for module in new.modules():  # what stays: plain weights, zeros in place
        for name in list(module._parameters):
            base = name.removesuffix("_orig")
            if storage.is_masked(module, base):
                storage.remove(module, base)
    if kept:
        listed = "; ".join(f"{n} ({why})" for n, why in kept.items())
        warnings.warn(
            f"compact: kept dense, though their realizable form removes rows or inputs: {listed}",
            UserWarning,
            stacklevel=2,
        )
    return new.eval()
