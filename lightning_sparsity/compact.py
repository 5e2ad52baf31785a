"""The physically smaller model the realizable count describes: ``ls.compact``.

Realizable FLOPs (:mod:`lightning_sparsity.counting.realizable`) count a layer's rows that
hold no nonzero weight, and its inputs that hold none or only ever read a dead row's
constant that the layer can take into its bias (:mod:`lightning_sparsity.counting.channels`),
as removed. :func:`compact` removes exactly those, from the same sweep
(:func:`lightning_sparsity.counting.meter.structure`): each Linear and convolution whose
realizable form is a compaction becomes a :class:`Compacted` layer that

1. gathers its live inputs (``index_select``: no multiplication),
2. runs a dense layer holding only the live rows and inputs (the FLOPs that remain), its
   bias plus what the dropped inputs' constants contribute (``weight · constant``, the
   constants read on the example input),
3. puts its outputs back in their rows, the dead rows holding their bias (a constant: a row
   with no nonzero weight multiplies nothing), so every shape downstream (a concatenation,
   the model's output) is as before — except where a group of producers' dead channels (one
   layer's, or every addend's of a residual add) reach only compacted layers: there they
   leave (no scatter, no gather), the BatchNorms between sliced.

Hence the compacted model's dense FLOPs equal the masked model's realizable FLOPs exactly
wherever the realizable form is a removal, and its output equals the masked model's (in
eval mode). A weight realized as N:M (``"2:4"``) keeps its shape, zeros in place (its N:M
FLOPs need a 2:4 kernel). Other weights whose form is a removal (attention, recurrent,
grouped or transposed convolutions) are kept dense and named in a warning.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.utils import parametrize
from torch.utils._pytree import tree_flatten

from lightning_sparsity._shards import is_sharded
from lightning_sparsity.counting.channels import ChannelFlow
from lightning_sparsity.counting.meter import Structure, WeightStructure, structure
from lightning_sparsity.counting.trace import _eval_mode as _eval
from lightning_sparsity.counting.trace import call_model
from lightning_sparsity.patterns import SemiStructuredLinear, semi_structured_problem
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
        shape: ``(rows, inputs)`` of the original layer, and ``live``: of those it keeps
            (the realizable form's ``rows a/b, inputs c/d``), for the repr.
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
        live: tuple[int, int],
        conv: _ConvNd | None = None,
    ) -> None:
        super().__init__()
        self.layer = layer
        self.register_buffer("inputs", inputs)
        self.register_buffer("rows", rows)
        self.register_buffer("fill", fill)
        self.dim = dim
        self.shape = shape
        self.live = live
        self._geometry = None if conv is None else _geometry(conv)
        self._spatial = 0 if conv is None else len(conv.kernel_size)

    def extra_repr(self) -> str:
        """``rows 8/16, inputs 4/8``: what is left of the original layer."""
        (rows, inputs), (live_rows, live_inputs) = self.shape, self.live
        return f"rows {live_rows}/{rows}, inputs {live_inputs}/{inputs}"

    def forward(self, x: Tensor) -> Tensor:
        """Gather the live inputs, run the small layer, put its rows back (see the class)."""
        # a Linear's inputs are its last axis; a convolution's the one before its spatial
        # axes (1 batched, 0 unbatched)
        dim = self.dim if not self._spatial else x.dim() - self._spatial - 1
        if self.inputs is not None:
            x = x.index_select(dim, self.inputs)
        if self.layer is None:  # nothing to multiply: every output is its row's constant
            return self._constant(x, dim)
        y = self.layer(x)
        if self.rows is None:
            return y
        shape = list(y.shape)
        shape[dim] = self.fill.numel()
        out = self._broadcast(self.fill, len(shape), dim).expand(shape).to(y.dtype).clone()
        return out.index_copy(dim % len(shape), self.rows, y)

    @staticmethod
    def _broadcast(values: Tensor, dims: int, dim: int) -> Tensor:
        view = [1] * dims
        view[dim] = values.numel()
        return values.reshape(view)

    def _constant(self, x: Tensor, dim: int) -> Tensor:
        if self._geometry is None:  # a Linear: the last axis becomes the rows
            shape = [*x.shape[:-1], self.fill.numel()]
        else:
            spatial = x.shape[dim + 1 :]
            shape = [*x.shape[:dim], self.fill.numel(), *_conv_size(spatial, *self._geometry)]
        return self._broadcast(self.fill, len(shape), dim).expand(shape).to(x.dtype).clone()


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


_REBUILT = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


# modules whose fast path (eval, no grad) reads their children's weights directly, where the
# traced slow path calls the children
_FAST_PATHS = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.MultiheadAttention)


def _why_not(
    module: nn.Module, found: WeightStructure, parent: nn.Module | None = None
) -> str | None:
    """Why a weight whose form is a removal cannot be compacted here (``None``: it can).

    Compaction rebuilds a layer from its weight and bias alone: a module holding more (a
    forward of its own, hooks, a parametrization) or a weight read elsewhere stays dense.
    """
    if found.slot.attr != "weight":
        return f"{found.slot.attr} of a {type(module).__name__}"
    if type(module) not in _REBUILT:
        return f"a {type(module).__name__} (only {', '.join(t.__name__ for t in _REBUILT)})"
    if found.foreign:
        return "its weight is read outside its own forward"
    if isinstance(parent, _FAST_PATHS):
        return f"inside a {type(parent).__name__}, whose fast path reads its weight"
    if module._forward_hooks or module._forward_pre_hooks:
        return "it has forward hooks"
    if "forward" in module.__dict__:
        return "its forward is set on the instance"
    if parametrize.is_parametrized(module, "weight"):
        return "a parametrized weight"
    if isinstance(module, _ConvNd):
        depthwise = module.groups == module.in_channels == module.out_channels
        if module.groups != 1 and not depthwise:
            return f"a grouped convolution (groups={module.groups})"
    return None


def _unmask(module: nn.Module) -> None:
    """Make ``module``'s own masks permanent: plain parameters, the zeros in place."""
    for name in list(module._parameters):
        base = name.removesuffix("_orig")
        if storage.is_masked(module, base):
            storage.remove(module, base)


def _small(module: nn.Module, weight: Tensor, bias: Tensor | None) -> nn.Module:
    """A layer like ``module`` holding ``weight`` (and ``bias``), as plain parameters."""
    if isinstance(module, nn.Linear):
        small: nn.Module = nn.Linear(weight.shape[1], weight.shape[0], bias is not None)
    else:
        assert isinstance(module, _ConvNd)
        small = copy.deepcopy(module)
        _unmask(small)
        if small.groups > 1:  # depthwise: one group per kept channel
            small.groups = small.in_channels = small.out_channels = weight.shape[0]
        else:
            small.in_channels, small.out_channels = weight.shape[1], weight.shape[0]
    small.weight = nn.Parameter(weight.detach().clone())
    small.bias = None if bias is None else nn.Parameter(bias.detach().clone())  # type: ignore[assignment]
    return small.to(device=weight.device, dtype=weight.dtype)


def _positions(mask: Tensor, space: Tensor | None) -> Tensor | None:
    """Where ``mask``'s entries sit among ``space``'s (all when ``None``); ``None`` if all."""
    inside = mask if space is None else mask[space]
    return None if bool(inside.all()) else inside.nonzero().flatten()


def _compacted(
    module: nn.Module,
    found: WeightStructure,
    in_space: Tensor | None = None,
    out_space: Tensor | None = None,
    fold: Tensor | None = None,
) -> Compacted:
    """The :class:`Compacted` layer of ``module``.

    ``in_space``: the inputs that reach it (bool over its inputs; ``None``: all), when the
    layer before drops the channels it reads only as zeros. ``out_space``: the rows it must
    output (``None``: all), when the layers after read only those. ``fold``: per row, what
    the inputs it drops add (their constants times their weights), added to the bias.
    """
    weight = storage.effective(module, "weight").detach()
    bias_value = getattr(module, "bias", None)
    bias = None if bias_value is None else bias_value.detach()
    if fold is not None and bias is not None:
        bias = bias + fold
    elif fold is not None and bool(fold.ne(0).any()):  # a layer without one gets a bias
        bias = fold
    device = weight.device
    rows, inputs = found.live_rows.to(device), found.live_inputs.to(device)
    in_space = None if in_space is None else in_space.to(device)
    out_space = None if out_space is None else out_space.to(device)
    depthwise = isinstance(module, _ConvNd) and module.groups > 1
    kept = weight[rows]
    if not depthwise:
        kept = kept[:, inputs]
    # a depthwise channel reads its own input channel: the live rows' inputs
    gather = _positions(rows if depthwise else inputs, in_space)
    scatter = _positions(rows, out_space)
    small_bias = None if bias is None else bias[rows]
    space_bias = None if bias is None else (bias if out_space is None else bias[out_space])
    space_rows = rows if out_space is None else rows[out_space]
    # no row, or no input, left to multiply: every output is its row's bias
    empty = kept.shape[0] == 0 or (not depthwise and kept.shape[1] == 0)
    fill = torch.zeros(space_rows.shape[0], dtype=weight.dtype, device=device)
    if space_bias is not None:
        fill = space_bias.clone() if empty else torch.where(space_rows, 0.0, space_bias)
    layer = None if empty else _small(module, kept, small_bias)
    is_conv = isinstance(module, _ConvNd)
    return Compacted(
        layer,
        gather,
        scatter,
        fill,
        1 if is_conv else -1,
        (weight.shape[0], weight.shape[1]),
        (int(rows.sum()), int(inputs.sum())),
        module if is_conv else None,  # type: ignore[arg-type]
    )


def _sliced_norm(norm: _BatchNorm, kept: Tensor) -> _BatchNorm:
    """``norm`` for the channels ``kept`` only (eval-mode statistics sliced)."""
    small = copy.deepcopy(norm)
    index = kept.to(norm.running_mean.device if norm.running_mean is not None else "cpu")
    small.num_features = int(kept.sum())
    for name in ("weight", "bias"):
        value = getattr(norm, name)
        if value is not None:
            setattr(small, name, nn.Parameter(value.detach()[index].clone()))
    for name in ("running_mean", "running_var"):
        value = getattr(norm, name)
        if value is not None:
            setattr(small, name, value[index].clone())
    return small


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


class _Removal(NamedTuple):
    """A group of producers whose channels leave: those ``kept`` stay, read by ``flows``."""

    producers: set[int]
    kept: Tensor
    flows: list[ChannelFlow]


def _groups(reads: list[tuple[ChannelFlow, Tensor | None]]) -> list[list[int]]:
    """The reads coupled through shared producers (a residual add joins them), by index."""
    parent = list(range(len(reads)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    first: dict[int, int] = {}  # producer → a read of it
    for i, (flow, _) in enumerate(reads):
        for producer in flow.producers:
            j = first.setdefault(producer, i)
            a, b = root(i), root(j)
            parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for i in range(len(reads)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def _removable(found: Structure, plan: dict[int, WeightStructure]) -> list[_Removal]:
    """Groups of producers whose dead channels can leave the model, with what they keep.

    Kept: the channels some read needs. Producers joined by a residual add form one group
    (their channels are one axis). A group qualifies when every producer is compacted, runs
    once and reaches nothing but reads of layers being compacted, each such layer reading
    once and nothing else, and no BatchNorm on its way sees another group's tensors.
    """
    readers: dict[int, int] = {}
    for flow, _ in found.reads:
        readers[flow.consumer] = readers.get(flow.consumer, 0) + 1
    groups = _groups(found.reads)
    seen_by: dict[int, set[int]] = {}  # BatchNorm → the groups whose reads pass it
    for g, group in enumerate(groups):
        for i in group:
            for norm in found.reads[i][0].norms:
                seen_by.setdefault(id(norm), set()).add(g)
    shared = {g for gs in seen_by.values() if len(gs) > 1 for g in gs}
    out = []
    for g, group in enumerate(groups):
        reads = [found.reads[i] for i in group]
        producers = {p for flow, _ in reads for p in flow.producers}
        if g in shared or any(
            p not in plan or plan[p].uses != 1 or p in found.escaped for p in producers
        ):
            continue
        if any(
            dead is None
            or flow.consumer not in plan
            or readers[flow.consumer] != 1
            or plan[flow.consumer].uses != 1
            for flow, dead in reads
        ):
            continue
        deads = [d for _, d in reads if d is not None]
        if len({d.shape for d in deads}) != 1 or any(len(f.parts) > 1 for f, _ in reads):
            continue  # (after a concatenation each producer holds a range: kept in place)
        kept = ~torch.stack(deads).all(0)
        out.append(_Removal(producers, kept, [flow for flow, _ in reads]))
    return out


def _dropped(module: nn.Module, found: WeightStructure) -> Tensor:
    """The inputs a layer reads with nonzero weights but drops: their producer's row is dead."""
    weight = storage.effective(module, "weight").detach()
    own = weight.reshape(weight.shape[0], weight.shape[1], -1).ne(0).any(2).any(0)
    return own & ~found.live_inputs.to(own.device)


def _constants(model: nn.Module, example_input: Any, layers: list[nn.Module]) -> tuple[Any, dict]:
    """The masked model's output, and the input each of ``layers`` reads (eval, no grad)."""
    seen: dict[int, Tensor] = {}

    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        seen[id(module)] = args[0].detach()

    handles = [layer.register_forward_pre_hook(hook) for layer in layers]
    try:
        with torch.no_grad(), _eval(model):
            expected = call_model(model, example_input)
    finally:
        for handle in handles:
            handle.remove()
    return expected, seen


def _fold(module: nn.Module, dropped: Tensor, x: Tensor) -> Tensor:
    """What dropped inputs add to each row: ``Σ_j Σ_taps weight[:, j] · c_j``.

    ``c_j``: input ``j``'s value, one constant wherever the layer reads it (the trail of
    :mod:`lightning_sparsity.counting.channels`), read at the input's first position.
    """
    weight = storage.effective(module, "weight").detach()
    if isinstance(module, _ConvNd):
        channel = x.dim() - len(module.kernel_size) - 1  # 1 batched, 0 unbatched
        values = x.movedim(channel, 0).reshape(x.shape[channel], -1)[:, 0]
    else:
        values = x.reshape(-1, x.shape[-1])[0]
    columns = weight.reshape(weight.shape[0], weight.shape[1], -1).sum(2)
    index = dropped.nonzero().flatten()
    return columns[:, index] @ values[index].to(columns.dtype)


def _build(
    model: nn.Module,
    found: Structure,
    plan: dict[int, WeightStructure],
    folds: dict[int, Tensor],
    physical: bool,
) -> nn.Module:
    """The compacted copy; ``physical``: dead channels leave (no scatter).

    ``folds``: per layer, what the inputs it drops add to its bias.
    """
    removals = _removable(found, plan) if physical else []
    in_spaces: dict[int, Tensor] = {}
    out_spaces: dict[int, Tensor] = {}
    norms: dict[int, tuple[_BatchNorm, Tensor]] = {}
    for removal in removals:
        for producer in removal.producers:
            out_spaces[producer] = removal.kept
        for flow in removal.flows:
            in_spaces[flow.consumer] = removal.kept.repeat_interleave(flow.repeat)
            for norm in flow.norms:
                norms[id(norm)] = (norm, removal.kept)
    new = copy.deepcopy(model)
    paths: dict[int, list[str]] = {}  # every name a module goes by (a module held twice)
    for name, module in model.named_modules(remove_duplicate=False):
        paths.setdefault(id(module), []).append(name)

    def put(module: nn.Module, replacement: nn.Module) -> None:
        for name in paths[id(module)]:
            parent, child = _parent(new, name)
            setattr(parent, child, replacement)

    for index, item in plan.items():
        layer = _compacted(
            item.slot.module, item, in_spaces.get(index), out_spaces.get(index), folds.get(index)
        )
        put(item.slot.module, layer)
    for norm, kept in norms.values():
        put(norm, _sliced_norm(norm, kept))
    for module in new.modules():  # what stays: plain weights, zeros in place
        _unmask(module)
    return new.eval()


def _gap(got: Any, expected: Any) -> float | None:
    """The largest difference of two outputs over their dtype's tolerance (``<= 1``: same).

    ``None`` when they cannot be compared (another structure).
    """
    a, _ = tree_flatten(got)
    b, _ = tree_flatten(expected)
    if len(a) != len(b):
        return None
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        if not isinstance(x, Tensor) or not isinstance(y, Tensor):
            try:
                if not bool(x == y):
                    return None
            except (RuntimeError, TypeError, ValueError):
                return None
            continue
        if x.shape != y.shape:
            return None
        if not y.is_floating_point():
            worst = max(worst, 0.0 if torch.equal(x, y) else float("inf"))
            continue
        # float32: a sum in another order differs by some 1e-7 of the terms; half: 1e-3
        rtol = 1e-2 if y.dtype in (torch.float16, torch.bfloat16) else 1e-5
        scale = rtol * (y.abs() + y.abs().mean() + 1e-6)
        worst = max(worst, float(((x - y).abs() / scale).max()) if y.numel() else 0.0)
    return worst


def _check(new: nn.Module, example_input: Any, expected: Any) -> tuple[bool, str]:
    """Whether ``new`` reproduces ``expected`` on the example input, and if not, why."""
    try:
        with torch.no_grad():
            gap = _gap(call_model(new, example_input), expected)
    except Exception as err:  # a layout a module did not expect (shapes, attributes)
        return False, f"its forward raised {type(err).__name__}: {err}"
    if gap is None:
        return False, f"its output ({type(expected).__name__}) cannot be compared"
    return gap <= 1, f"its output differs by {gap:.3g} times the tolerance"


def _to_semi_structured(new: nn.Module) -> None:
    """Swap each plain Linear of ``new`` whose weight the 2:4 kernels take for one on them.

    Records ``new.semi_structured``: every Linear's name → ``"2:4"`` or why not.
    """
    done: dict[str, str] = {}
    for name, module in list(new.named_modules()):
        if not isinstance(module, nn.Linear):
            continue
        problem = (
            f"a {type(module).__name__} with a forward of its own"
            if type(module) is not nn.Linear or "forward" in module.__dict__
            else semi_structured_problem(module.weight.detach())
        )
        done[name] = problem or "2:4"
        if problem is None:
            parent, child = _parent(new, name)
            setattr(parent, child, SemiStructuredLinear(module.weight, module.bias))
    setattr(new, "semi_structured", done)  # noqa: B010 (a Module's attribute, not typed)


def compact(model: nn.Module, example_input: Any, *, semi_structured: bool = False) -> nn.Module:
    """A copy of ``model`` without the rows and inputs its realizable FLOPs count removed.

    The copy's dense FLOPs (``FlopCounterMode``) equal ``ls.measure(model,
    example_input).total.flops_realizable`` (per batch) where every weight realizes a
    removal, dense or unstructured, and compact rebuilds every removal (see Warns); a
    weight realized N:M keeps its shape. Its output equals the masked model's in eval mode,
    checked on ``example_input``: the path the model takes there (a branch of ``forward``
    that depends on the data and is not taken is not checked). Masks on the copy are made
    permanent (plain weights).

    A group of layers' dead channels (one layer's, or every addend's of a residual add)
    leave the model where only compacted layers read them (the BatchNorms between sliced
    too); elsewhere (a concatenation, the output) they are put back as their constant.
    ``model`` is left as found.

    Args:
        model: the pruned model.
        example_input: an input of the shapes the model runs on (the trace that finds the
            dead channels); a Tensor, a tuple/list of positional arguments, or a dict.
        semi_structured: also run each plain Linear whose weight is 2:4 on torch's 2:4
            kernels (``torch.sparse.to_sparse_semi_structured``: CUDA, compute capability
            8.0+, float16/bfloat16): a :class:`.patterns.SemiStructuredLinear` each.

    Returns:
        The compacted copy, in eval mode. With ``semi_structured``, its attribute
        ``semi_structured`` maps every Linear's name to ``"2:4"`` (converted) or why not.

    Warns:
        UserWarning: naming weights whose form is a removal that this cannot compact, kept
            dense (their FLOPs stay): attention, recurrent, grouped or transposed
            convolution weights, a layer class with a forward of its own, a layer with hooks,
            a weight read outside its layer (tied to another module) or parametrized.

    Raises:
        ValueError: for a model on the meta device or with sharded (FSDP2) weights, with
            ``semi_structured`` for a model not on CUDA, and if neither layout (or the 2:4
            kernels) reproduces the masked model's output on the example input.
    """
    if any(is_sharded(p) for p in model.parameters()):
        raise ValueError("compact needs whole weights: gather the sharded (FSDP2) model first")
    devices = sorted({p.device.type for p in model.parameters()})
    if semi_structured and devices != ["cuda"]:
        raise ValueError(
            "compact(semi_structured=True) runs 2:4 weights on torch's semi-structured kernels,"
            f" which need CUDA; the model's parameters are on {', '.join(devices) or 'no device'}"
            " (move it with .cuda(), and .half() or .bfloat16())"
        )
    found = structure(model, example_input)
    plan: dict[int, WeightStructure] = {}
    kept: dict[str, str] = {}
    for index, item in found.weights.items():
        if not item.form.text.startswith(("rows ", "zero")):
            continue
        module = item.slot.module
        parent = _parent(model, item.slot.module_name)[0] if item.slot.module_name else None
        why = _why_not(module, item, parent)
        if why is not None:
            kept[item.slot.name] = why
            continue
        plan[index] = item
    if kept:
        listed = "; ".join(f"{n} ({why})" for n, why in kept.items())
        warnings.warn(
            f"compact: kept dense, though their realizable form removes rows or inputs: {listed}",
            UserWarning,
            stacklevel=2,
        )
    dropped = {i: _dropped(item.slot.module, item) for i, item in plan.items()}
    dropped = {i: d for i, d in dropped.items() if bool(d.any())}
    expected, inputs = _constants(model, example_input, [plan[i].slot.module for i in dropped])
    folds = {
        i: _fold(plan[i].slot.module, d, inputs[id(plan[i].slot.module)])
        for i, d in dropped.items()
        if id(plan[i].slot.module) in inputs
    }
    new = _build(model, found, plan, folds, physical=True)
    same, why = _check(new, example_input, expected)
    if not same:
        new = _build(model, found, plan, folds, physical=False)  # layers keep their positions
        same, why = _check(new, example_input, expected)
        if same:
            warnings.warn(
                "compact: removing dead channels between layers changed the output on the"
                " example input; each compacted layer keeps its channels' positions instead",
                UserWarning,
                stacklevel=2,
            )
    if same and semi_structured:
        _to_semi_structured(new)
        same, why = _check(new, example_input, expected)
        why = f"with the 2:4 kernels, {why}"
    if same:
        return new
    raise ValueError(
        f"compact: the compacted model does not reproduce the masked model on the example"
        f" input ({why}); a layer may compute more than its weights say (a forward of its"
        " own, a hook, a weight changed in place): nothing is returned that computes"
        " something else"
    )
