"""One traced forward pass: per-op dense FLOPs, attributed to modules and weight slots.

The forward runs under a ``TorchDispatchMode`` (so every model works without per-layer-type
code) in eval mode under ``no_grad``. Each op with a formula in
:mod:`~lightning_sparsity.counting.formulas` adds its dense FLOPs to the innermost running
module's row; a part whose weight operand derives from a slot (through views, copies and
casts, followed op by op) becomes a :class:`WeightUse`: FLOPs per nonzero entry of that
operand. Sparse FLOPs are then ``fixed + Σ coef × nnz`` for any later state of the weights,
which is what makes the per-epoch recount one sweep of nonzero counts.

Ops whose formula knows their batch dimension (convolution, the CPU LSTM layer, the fused
multi-head attention) also record the batch size they ran on, the evidence against which
the meter checks the batch size it divides FLOPs by.

:func:`trace_training` traces one training step the same way: the forward in training
mode with gradients on, a scalar loss, and the backward autograd runs for it (gradients of
every leaf the loss depends on, as ``loss.backward()`` would compute them, without
touching ``.grad``). Each backward product is attributed to the forward op whose autograd
node runs it, and split into three parts (:data:`PARTS`):

* ``grad_inputs``: products that multiply by a weight to pass the gradient to an
  activation (``grad_x = grad_y · W``): a use of that weight, FLOPs per nonzero entry as
  in the forward; and every weight-free backward product (attention), fixed;
* ``grad_weights``: products that compute a weight's gradient (``grad_W = grad_yᵀ · x``):
  a use of that weight, FLOPs per *trainable* entry (the meter counts the nonzero ones by
  default). Inside a forward op's node a product that names no weight operand and whose
  result has as many entries as the op's weight operand is that weight's gradient; fused
  kernels name it (:attr:`~lightning_sparsity.counting.formulas.Use.grad_of`).

What autograd skips is skipped: no ``grad_x`` for an input that does not need it (the
first layer's input), no ``grad_W`` for a frozen weight, nothing for a ``no_grad`` part.
A fused kernel that computes a frozen weight's gradient anyway (the CPU LSTM layer) is
counted dense, and marked ``frozen`` so that sparse FLOPs skip it. What autograd adds is
counted: a forward the backward recomputes (activation checkpointing, run with gradients
on) counts in the forward part, the gradients of its products as above.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from lightning_sparsity.counting.channels import ChannelFlow, ChannelTracker
from lightning_sparsity.counting.formulas import REGISTRY, Formula, is_free
from lightning_sparsity.counting.params import Slot, find_slots

aten = torch.ops.aten

__all__ = [
    "FORWARD",
    "GRAD_INPUTS",
    "GRAD_WEIGHTS",
    "PARTS",
    "MeasureError",
    "StepRecorder",
    "Trace",
    "WeightUse",
    "call_model",
    "default_loss",
    "graph_leaves",
    "trace",
    "trace_training",
]

#: The parts of a training step (:attr:`WeightUse.part`): the forward pass, the backward
#: products that pass gradients to activations, those that compute weight gradients.
PARTS = ("forward", "grad_inputs", "grad_weights")
FORWARD, GRAD_INPUTS, GRAD_WEIGHTS = range(3)


class MeasureError(RuntimeError):
    """The model's forward pass failed on the example input."""


class ChainOp(NamedTuple):
    """One op on the way from a slot's value to a weight operand (replayed when needed)."""

    func: torch._ops.OpOverload
    args: tuple[Any, ...]  # the arguments after the tensor itself
    kwargs: dict[str, Any]
    output: int | None  # which output, for ops that return several


@dataclass(frozen=True)
class WeightUse:
    """FLOPs that scale with the nonzeros of (a view of) one slot.

    Attributes:
        row: index of the module row the FLOPs belong to.
        slot: index of the slot.
        coef: dense FLOPs per entry of the operand (sparse = coef × nnz(operand)).
        chain: ``None`` when the operand holds exactly the slot's entries (a transpose,
            reshape or cast), so ``nnz(operand) == nnz(slot)``; otherwise the ops that
            make the operand from the slot's value (a slice, a broadcast).
        part: :data:`FORWARD`, :data:`GRAD_INPUTS` (the weight multiplies a gradient) or
            :data:`GRAD_WEIGHTS` (the product computes the operand's gradient: sparse
            counts it per trainable entry).
        frozen: a weight gradient a fused kernel computed for a weight that requires no
            gradient (no trainable entry).
    """

    row: int
    slot: int
    coef: Fraction
    chain: tuple[ChainOp, ...] | None
    part: int = FORWARD
    frozen: bool = False


@dataclass
class Trace:
    """What one forward pass costs, independent of the weights' current values."""

    slots: list[Slot]
    numels: list[int]
    rows: list[str]
    row_types: list[str]
    row_of_slot: list[int]
    dense: list[int]
    fixed: list[int]
    uses: list[WeightUse]
    effective: list[Tensor | None] | None
    unsupported: dict[str, int]
    # batch sizes that ops with a known batch dimension ran on, by module type and op
    # ("Conv2d (aten.convolution)"); ops on activations only, not on weights
    batches: dict[str, frozenset[int]] = field(default_factory=dict)
    # layers reading other layers' output channels (realizable FLOPs compact both)
    flows: list[ChannelFlow] = field(default_factory=list)
    # producers whose channels also reach something other than those reads
    escaped: frozenset[int] = frozenset()
    # a training step's trace: dense and weight-free FLOPs per part (PARTS); else empty
    part_dense: tuple[int, ...] = ()
    part_fixed: tuple[int, ...] = ()


# ops whose output holds exactly the entries of their input (so the same nonzero count)
_BIJECTIVE = {
    aten.t.default,
    aten.transpose.int,
    aten.permute.default,
    aten.view.default,
    aten._unsafe_view.default,
    aten._reshape_alias.default,
    aten.clone.default,
    aten._to_copy.default,
    aten.detach.default,
    aten.alias.default,
    aten.lift_fresh.default,
    aten.unsqueeze.default,
    aten.squeeze.default,
    aten.squeeze.dim,
    aten.squeeze.dims,
    aten.expand.default,  # only when nothing is broadcast (checked by numel)
}
# non-view ops that still carry a weight's entries through (replayed from the chain)
_CARRY = {aten.unsafe_split.Tensor, aten.unsafe_split_with_sizes.default, aten.unsafe_chunk.default}

_COUNT, _CARRY_KIND, _FREE, _UNKNOWN = range(4)
_WARNED: set[str] = set()


class _Provenance(NamedTuple):
    # weak: an unsharded weight FSDP2 frees after its unit's forward is not kept alive; a
    # dead tensor's id may be reused, so a lookup checks the reference is the operand itself
    ref: weakref.ReferenceType[Tensor]
    slot: int
    chain: tuple[ChainOp, ...]
    bijective: bool


_Operand = tuple[Tensor, int, "tuple[ChainOp, ...] | None"]  # a weight operand and its slot


class _CountingMode(TorchDispatchMode):
    def __init__(
        self,
        modules: Sequence[nn.Module],
        effective: bool,
        training: bool = False,
        live: bool = False,
    ):
        super().__init__()
        n_rows = len(modules)
        self.training = training
        # a step as it runs (StepRecorder): forwards and backwards may alternate, an op is
        # in the backward when autograd's engine runs it
        self.live = live
        self.backward = False
        self.part_dense = [0] * len(PARTS)
        self.part_fixed = [0] * len(PARTS)
        # training: each counted forward op's output (weakly: an output freed before it has
        # a node never gets one), row and weight operands until the backward starts; then
        # by the autograd node that computes their gradients
        self.pending: list[tuple[weakref.ReferenceType[Tensor], int, list[_Operand]]] = []
        self.paused = False  # a recorded step's optimizer update: not counted
        self.nodes: dict[Any, tuple[int, list[_Operand]]] = {}
        self.prov: dict[int, _Provenance] = {}
        self.stack: list[int] = [0]
        self.dense = [0] * n_rows
        self.fixed = [0] * n_rows
        self.uses: list[WeightUse] = []
        self.effective: list[Tensor | None] | None = [None] * n_rows if effective else None
        self.unsupported: Counter[str] = Counter()
        self.batches: dict[tuple[int, str], set[int]] = {}
        self.kinds: dict[torch._ops.OpOverload, int] = {}
        self.channels = ChannelTracker(modules, self.whole_weight)

    def mark(self, tensor: Tensor, slot: int) -> None:
        found = self.prov.get(id(tensor))
        if found is None or found.ref() is not tensor or found.slot != slot or found.chain:
            self.prov[id(tensor)] = _Provenance(weakref.ref(tensor), slot, (), True)

    def source(self, value: Any) -> _Provenance | None:
        """Where ``value`` comes from, if it is (a view of) a weight."""
        if not isinstance(value, Tensor):
            return None
        found = self.prov.get(id(value))
        return found if found is not None and found.ref() is value else None

    def whole_weight(self, value: Any) -> tuple[int, tuple[ChainOp, ...]] | None:
        """The slot and chain of ``value`` if it holds all of a weight's entries."""
        src = self.source(value)
        return (src.slot, src.chain) if src is not None and src.bijective else None

    def _kind(self, func: torch._ops.OpOverload) -> int:
        if func in REGISTRY:
            return _COUNT
        if func.is_view or func in _BIJECTIVE or func in _CARRY:
            return _CARRY_KIND
        return _FREE if is_free(func) else _UNKNOWN

    def __torch_dispatch__(
        self,
        func: torch._ops.OpOverload,
        types: Sequence[type],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if self.paused:
            return func(*args, **kwargs)
        if self.live:
            inside = torch._C._current_autograd_node() is not None
            if inside and not self.backward:
                self.start_backward()
            elif self.backward and not inside:
                self.backward = False  # a forward again (the next pass, the optimizer's)
        if self.pending:
            self._settle()
        out = func(*args, **kwargs)
        kind = self.kinds.get(func)
        if kind is None:
            kind = self.kinds[func] = self._kind(func)
        if kind == _COUNT:
            self._count(REGISTRY[func], args, kwargs, out)
        elif kind == _CARRY_KIND:
            src = self.source(args[0]) if args else None
            if src is not None:
                self._carry(src, func, args, kwargs, out)
        elif kind == _UNKNOWN:
            self.unsupported[str(func)] += 1
        if not self.backward:
            self.channels.step(func, args, out, self.stack[-1])
        return out

    def _settle(self) -> None:
        """Map counted forward ops to their autograd nodes, once autograd has set them.

        Run before each op, so that at most the last op's output is held here; an output
        without a node yet (none: a ``no_grad`` part) waits for the backward's start.
        """
        waiting = []
        for ref, row, operands in self.pending:
            first = ref()
            node = None if first is None else first.grad_fn
            if node is not None:
                self.nodes[node] = (row, operands)
            elif first is not None and not self.backward:
                waiting.append((ref, row, operands))
        self.pending = waiting

    def start_backward(self) -> None:
        """The forward and the loss are done: what follows is the backward."""
        self.backward = True
        self._settle()

    def _add(self, row: int, part: int, flops: int, fixed: bool) -> None:
        self.dense[row] += flops
        self.part_dense[part] += flops
        if fixed:
            self.fixed[row] += flops
            self.part_fixed[part] += flops

    def _use(
        self, row: int, operand: Tensor, slot: int, chain: tuple[ChainOp, ...] | None,
        flops: int, part: int, frozen: bool = False,
    ) -> None:  # fmt: skip
        self._add(row, part, flops, fixed=False)
        # an empty weight (Linear(0, n)) multiplies nothing: 0 FLOPs per nonzero
        per = Fraction(flops, operand.numel()) if operand.numel() else Fraction(0)
        self.uses.append(WeightUse(row, slot, per, chain, part, frozen))

    def _weight_operand(self, args: tuple[Any, ...], positions: Sequence[int]) -> _Operand | None:
        for pos in positions:
            src = self.source(args[pos])
            if src is not None:
                return args[pos], src.slot, None if src.bijective else src.chain
        return None

    def _count_backward(
        self, formula: Formula, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
    ) -> None:
        node = torch._C._current_autograd_node()
        row, operands = self.nodes.get(node, (0, [])) if node is not None else (0, [])
        uses = formula.dense(*args, **kwargs, result=out)
        for index, use in enumerate(uses):
            if use.grad_of is not None:  # a fused kernel's gradient of this operand
                found = self._weight_operand(args, (use.grad_of,))
                if found is not None:
                    operand, slot, chain = found
                    frozen = not operand.requires_grad
                    self._use(row, operand, slot, chain, use.flops, GRAD_WEIGHTS, frozen)
                else:  # the gradient of an activation operand
                    self._add(row, GRAD_INPUTS, use.flops, fixed=True)
                continue
            found = self._weight_operand(args, use.weights)
            if found is not None:  # the gradient passed on through a weight
                self._use(row, *found, use.flops, GRAD_INPUTS)
                continue
            # no weight operand: in the node of an op with a weight operand, the product
            # whose result has that operand's entries is its gradient (of an op in several
            # contractions, nn.Bilinear's, the last one: the one that makes the result)
            numel = out.numel() if isinstance(out, Tensor) and index == len(uses) - 1 else -1
            grad = next((o for o in operands if o[0].numel() == numel), None)
            if grad is not None:
                self._use(row, *grad, use.flops, GRAD_WEIGHTS)
            else:
                self._add(row, GRAD_INPUTS, use.flops, fixed=True)

    def _carry(
        self,
        src: _Provenance,
        func: torch._ops.OpOverload,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        out: Any,
    ) -> None:
        outputs = out if isinstance(out, (tuple, list)) else (out,)
        for index, tensor in enumerate(outputs):
            if not isinstance(tensor, Tensor):
                continue
            step = ChainOp(func, args[1:], kwargs, index if outputs is out else None)
            bijective = src.bijective and func in _BIJECTIVE and tensor.numel() == args[0].numel()
            chain = (*src.chain, step)
            self.prov[id(tensor)] = _Provenance(weakref.ref(tensor), src.slot, chain, bijective)

    def _count(
        self, formula: Formula, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
    ) -> None:
        # a forward op the backward runs with gradients on is a recomputation (activation
        # checkpointing): counted as the forward counts it
        if self.backward and not torch.is_grad_enabled():
            self._count_backward(formula, args, kwargs, out)
            return
        row = self.stack[-1]
        if (
            formula.batch is not None
            and not self.backward
            and not (args and self.source(args[0]) is not None)
        ):  # a Python int read off a shape; an op run on a weight says nothing of the batch
            name = f"aten.{formula.op._opname}"
            self.batches.setdefault((row, name), set()).add(formula.batch(*args, **kwargs))
        operands: list[_Operand] = []
        for use in formula.dense(*args, **kwargs, result=out):
            found = self._weight_operand(args, use.weights)
            if found is None:
                self._add(row, FORWARD, use.flops, fixed=True)
                continue
            self._use(row, *found, use.flops, FORWARD)
            operands.append(found)
        if self.training:
            leaves = out if isinstance(out, (tuple, list)) else (out,)
            first = next((t for t in leaves if isinstance(t, Tensor)), None)
            if first is not None:
                self.pending.append((weakref.ref(first), row, operands))
        if self.effective is not None:
            counts = formula.effective(*args, **kwargs, result=out)
            total = 2 * (torch.stack(counts).sum() if len(counts) > 1 else counts[0])  # MAC→FLOPs
            previous = self.effective[row]
            self.effective[row] = total if previous is None else previous + total


def replay(value: Tensor, chain: tuple[ChainOp, ...]) -> Tensor:
    """Rebuild a weight operand from its slot's value."""
    for step in chain:
        out = step.func(value, *step.args, **step.kwargs)
        value = out if step.output is None else out[step.output]
    return value


def call_model(model: nn.Module, example_input: Any) -> Any:
    """Call ``model`` on a Tensor, a tuple/list of positional arguments, or a dict of kwargs."""
    if isinstance(example_input, dict):
        return model(**example_input)
    if isinstance(example_input, (tuple, list)):
        return model(*example_input)
    return model(example_input)


def describe_input(example_input: Any) -> str:
    """A short text of the input's tensor shapes, for error messages."""
    leaves, _ = tree_flatten(example_input)
    parts = [
        f"Tensor{tuple(x.shape)} {x.dtype} on {x.device}" if isinstance(x, Tensor) else repr(x)
        for x in leaves
    ]
    return ", ".join(parts) if parts else "no tensors"


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the trace (no running-statistics updates), every flag restored after."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag


Reader = tuple[nn.Module, str, int]  # (module, attribute, slot index)


def _readers(model: nn.Module, slots: Sequence[Slot]) -> dict[int, list[Reader]]:
    """Per module: ``(module, attribute, slot)`` of every weight held in its subtree.

    A tied weight is held by several modules under several attributes; each is listed.
    Call it where the forward will run (under ``parametrize.cached()``): the weights are
    matched to slots by identity.
    """
    slot_of = {id(getattr(s.module, s.attr)): i for i, s in enumerate(slots)}
    attrs: dict[int, set[str]] = {}
    for s in slots:
        attrs.setdefault(id(s.module), set()).add(s.attr)
    held: dict[int, list[Reader]] = {}
    for module in model.modules():
        for attr in {*module._parameters, *attrs.get(id(module), ())}:
            i = slot_of.get(id(getattr(module, attr, None)))
            if i is not None:
                held.setdefault(id(module), []).append((module, attr, i))
    out: dict[int, list[Reader]] = {}

    def below(module: nn.Module) -> list[Reader]:  # its subtree's, each module once
        if id(module) not in out:
            found = dict.fromkeys(held.get(id(module), ()))
            for child in module.children():
                found.update(dict.fromkeys(below(child)))
            out[id(module)] = list(found)
        return out[id(module)]

    below(model)
    return {key: entries for key, entries in out.items() if entries}


@contextlib.contextmanager
def _hooks(model: nn.Module, mode: _CountingMode, slots: Sequence[Slot]) -> Iterator[None]:
    """Module rows and weight marks for ``mode`` while the body runs ``model``."""
    modules = list(model.named_modules())
    row_of_module = {id(m): i for i, (_, m) in enumerate(modules)}
    readers: dict[int, list[Reader]] = {}

    def pre_hook(module: nn.Module, _: Any) -> None:
        mode.paused = False  # a forward: an optimizer update before it is over (or skipped)
        mode.stack.append(row_of_module[id(module)])
        # the weights of this module and those below it as its forward will read them: after
        # prune's own pre-hook (the effective weight), after FSDP2's (the unsharded weight)
        for owner, attr, i in readers.get(id(module), ()):
            mode.mark(getattr(owner, attr), i)

    def post_hook(module: nn.Module, _: Any, __: Any) -> None:
        mode.stack.pop()

    handles = []
    for _, module in modules:
        handles.append(module.register_forward_pre_hook(pre_hook))
        handles.append(module.register_forward_hook(post_hook, always_call=True))
    try:
        # every weight as any module may read it, also before (or without) its owner's
        # forward, e.g. nn.MultiheadAttention reading out_proj.weight
        for i, slot in enumerate(slots):
            mode.mark(getattr(slot.module, slot.attr), i)
        readers.update(_readers(model, slots))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def _tracking(
    model: nn.Module, mode: _CountingMode, slots: Sequence[Slot], example_input: Any
) -> Iterator[None]:
    """:func:`_hooks` for a trace the meter runs, under ``parametrize.cached()``.

    The body runs in the grad mode the caller set (the cached weights are computed in it);
    the cache makes the forward read the very tensors marked. A failure becomes a
    :class:`MeasureError` that shows the input's shapes.
    """
    try:
        with parametrize.cached(), _hooks(model, mode, slots):
            yield
    except Exception as err:
        raise MeasureError(
            f"{type(model).__name__} forward failed on the example input"
            f" ({describe_input(example_input)}): {type(err).__name__}: {err}"
        ) from err


def _finish(model: nn.Module, slots: list[Slot], mode: _CountingMode) -> Trace:
    new = sorted(set(mode.unsupported) - _WARNED)
    if new:  # once per op and process; the report always lists them
        _WARNED.update(new)
        warnings.warn(
            f"lightning_sparsity: no FLOP formula for {', '.join(new)}; their cost is not"
            " counted (see SparsityReport.unsupported)",
            stacklevel=4,
        )
    modules = list(model.named_modules())
    row_of_module = {id(m): i for i, (_, m) in enumerate(modules)}
    row_types = [type(m).__name__ for _, m in modules]
    batches: dict[str, set[int]] = {}
    for (row, name), sizes in mode.batches.items():
        batches.setdefault(f"{row_types[row]} ({name})", set()).update(sizes)
    return Trace(
        slots=slots,
        numels=[slot.numel() for slot in slots],
        rows=[name for name, _ in modules],
        row_types=row_types,
        row_of_slot=[row_of_module[id(s.module)] for s in slots],
        dense=mode.dense,
        fixed=mode.fixed,
        uses=mode.uses,
        effective=mode.effective,
        unsupported=dict(mode.unsupported),
        batches={label: frozenset(sizes) for label, sizes in batches.items()},
        flows=mode.channels.flows,
        escaped=frozenset(mode.channels.escaped),
        part_dense=tuple(mode.part_dense) if mode.training else (),
        part_fixed=tuple(mode.part_fixed) if mode.training else (),
    )


def trace(
    model: nn.Module,
    example_input: Any,
    *,
    effective: bool = False,
    slots: list[Slot] | None = None,
) -> Trace:
    """Run one forward pass of ``model`` on ``example_input`` and record its costs.

    The model is left as found: train/eval flags, gradients, running statistics, hooks.

    Args:
        model: the model.
        example_input: a Tensor, a tuple/list of positional arguments, or a dict of kwargs.
        effective: also count multiplications with both operands nonzero.
        slots: ``find_slots(model)`` if the caller has them.

    Returns:
        The trace.

    Raises:
        MeasureError: if the forward pass raises; the message shows the input's shapes.
    """
    slots = find_slots(model) if slots is None else slots
    mode = _CountingMode([m for m in model.modules()], effective)
    with _eval_mode(model), torch.no_grad(), _tracking(model, mode, slots, example_input):
        with mode:
            output = call_model(model, example_input)
        mode.channels.escape_outputs(output)
    return _finish(model, slots, mode)


Loss = Callable[[Any], Tensor]


def default_loss(output: Any) -> Tensor | None:
    """The sum of every floating-point tensor in ``output`` that requires a gradient.

    ``None`` when none does (nothing to differentiate: the step is its forward pass).
    """
    leaves = [
        t
        for t in tree_flatten(output)[0]
        if isinstance(t, Tensor) and t.requires_grad and t.is_floating_point()
    ]
    if not leaves:
        return None
    total = leaves[0].sum()
    for t in leaves[1:]:
        total = total + t.sum()
    return total


def graph_leaves(loss: Tensor) -> list[Tensor]:
    """The leaves whose gradients ``loss.backward()`` would accumulate."""
    leaves: list[Tensor] = []
    seen: set[Any] = set()
    stack = [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # AccumulateGrad
        if isinstance(variable, Tensor):
            leaves.append(variable)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return leaves


@contextlib.contextmanager
def _train_step(model: nn.Module) -> Iterator[None]:
    """Training mode with gradients, everything the step changes restored after.

    Buffers (running statistics, ``num_batches_tracked``) get their values back, the
    random generators their states (dropout draws), each module its train/eval flag.
    """
    flags = [(m, m.training) for m in model.modules()]
    with torch.no_grad():
        buffers = [(b, b.clone()) for b in model.buffers() if not b.is_meta]
    devices = sorted(
        {t.device.index or 0 for t in (*model.parameters(), *model.buffers())
         if t.device.type == "cuda"}
    )  # fmt: skip
    try:
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            model.train()
            yield
    finally:
        for module, flag in flags:
            module.training = flag
        with torch.no_grad():
            for buffer, value in buffers:
                buffer.copy_(value)


class StepRecorder:
    """Trace the training step as it runs: every forward and backward from start to stop.

    For a step that is not one forward and one backward of the model on its input (a GAN's
    two losses and optimizers, a second forward for a consistency loss, a teacher's
    forward): what :func:`trace_training` records for one step on the example input, here
    recorded off the real step, hooks on the model's modules and a dispatch mode between
    :meth:`start` and :meth:`stop` (which may be called from two callback hooks). An op runs
    in the backward when autograd's engine runs it; products are split into the parts of
    :data:`PARTS` as there. An optimizer's update is not part of the step: from
    :meth:`pause` (Lightning's ``on_before_optimizer_step``, after the closure's forward and
    backward) to the end of that optimizer's ``step``, or the next module's forward (a step
    the AMP scaler skips never ends), nothing counts: an optimizer whose update multiplies
    matrices, Muon's, costs nothing here, as it does on the example input.

    Weights read through a parametrization are not followed (each read computes a new
    tensor): their products count as activations'. Nothing is restored: the step is the
    user's own.

    Args:
        model: the model whose weights the step reads (the LightningModule).
        slots: ``find_slots(model)`` if the caller has them.
    """

    def __init__(self, model: nn.Module, slots: list[Slot] | None = None) -> None:
        self.model = model
        self.slots = find_slots(model) if slots is None else slots
        self._mode = _CountingMode(list(model.modules()), effective=False, training=True, live=True)
        self._stack: contextlib.ExitStack | None = None

    def start(self) -> None:
        """Start recording (hooks on every module, the dispatch mode entered)."""
        stack = contextlib.ExitStack()
        stack.enter_context(_hooks(self.model, self._mode, self.slots))
        handle = register_optimizer_step_post_hook(lambda *_: self.resume())
        stack.callback(handle.remove)
        stack.enter_context(self._mode)
        self._stack = stack

    def pause(self) -> None:
        """Count nothing until the optimizer step that runs now ends (its update)."""
        self._mode.paused = True

    def resume(self) -> None:
        """Count again (an optimizer step ended)."""
        self._mode.paused = False

    def close(self) -> None:
        """Stop recording, if it runs (after a failed step too): hooks removed, mode left.

        Warns if another dispatch mode entered since :meth:`start` is still active: leaving
        ours pops the innermost one (torch's modes are a stack).
        """
        stack, self._stack = self._stack, None
        if stack is None:
            return
        depth = torch._C._len_torch_dispatch_stack()
        if depth and torch._C._get_dispatch_stack_at(depth - 1) is not self._mode:
            warnings.warn(
                "lightning_sparsity: a TorchDispatchMode entered while the training step was"
                " recorded is still active; leaving the recording's mode pops it instead",
                UserWarning,
                stacklevel=3,
            )
        stack.close()

    def stop(self) -> Trace:
        """Stop recording: the trace of what ran since :meth:`start`."""
        self.close()
        self._mode.pending.clear()
        self._mode.nodes.clear()  # autograd's nodes of the step: not kept alive
        return _finish(self.model, self.slots, self._mode)


def trace_training(
    model: nn.Module,
    example_input: Any,
    loss: Loss | None = None,
    *,
    slots: list[Slot] | None = None,
) -> Trace:
    """Trace one training step: the forward in training mode, ``loss``, the backward.

    The backward computes the gradient of every leaf the loss depends on (the parameters
    that require gradients, inputs that do), as ``loss.backward()`` would, by
    ``torch.autograd.grad``: ``.grad`` is left as found, and so are the modules' flags,
    their buffers and the random generators. Hooks on the parameters' gradients run.

    Args:
        model: the model.
        example_input: a Tensor, a tuple/list of positional arguments, or a dict of kwargs.
        loss: the scalar loss from the model's output (its FLOPs count in the forward
            part); default :func:`default_loss`.
        slots: ``find_slots(model)`` if the caller has them.

    Returns:
        The trace; ``uses`` carry their part (:data:`PARTS`), ``part_dense`` and
        ``part_fixed`` the dense and weight-free FLOPs of each part.

    Raises:
        MeasureError: if the forward pass, the loss or the backward raises.
    """
    slots = find_slots(model) if slots is None else slots
    mode = _CountingMode([m for m in model.modules()], effective=False, training=True)
    # an input that is the output of the caller's own graph: a leaf here, that graph untouched
    example_input = tree_map(
        lambda t: t.detach().requires_grad_() if isinstance(t, Tensor) and t.requires_grad else t,
        example_input,
    )
    with _train_step(model), _tracking(model, mode, slots, example_input):
        with mode:
            output = call_model(model, example_input)
            value = (default_loss if loss is None else loss)(output)
            mode.start_backward()
            if value is not None and value.requires_grad:
                leaves = graph_leaves(value)
                if leaves:
                    torch.autograd.grad(value, leaves, allow_unused=True)
        mode.channels.escape_outputs(output)
    return _finish(model, slots, mode)
