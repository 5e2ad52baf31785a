"""``measure`` (one shot) and ``SparsityMeter`` (trace once, recount cheaply every epoch).

FLOPs count 2 per MAC. The meter's cached recount is the same arithmetic on the same trace
as a full re-trace, so the two agree exactly; it re-traces when the input's shapes or the
model's structure (modules, parameters, pruning/parametrization state) change.

Per example, FLOPs are divided by the number of examples in the example input: the length
of a list of tensors given as the first argument (torchvision detection's convention),
else dim 0 of the first tensor. When that is inferred, the trace's evidence (the batch
sizes that convolutions, LSTM layers and fused attention ran on) is checked against it, and
a 1-D first tensor (one example without a batch dimension?) is warned about. An empty batch
(that dim 0, or that list, empty) is refused whatever ``per`` and ``batch_size`` say: zero
examples run zero FLOPs, and every ratio would be 0/0.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.utils._pytree import tree_flatten

from lightning_sparsity._shards import is_sharded, local, reduce_counts
from lightning_sparsity.counting.channels import ChannelFlow, dead_channels, kept_constants
from lightning_sparsity.counting.params import Slot, find_slots
from lightning_sparsity.counting.realizable import (
    DEFAULT_PATTERNS,
    Form,
    Probe,
    ZeroFlags,
    count_ones,
    dense_probe,
    on_calling_thread,
    probe,
)
from lightning_sparsity.counting.report import (
    LayerStats,
    SparsityReport,
    StepFlops,
    TrainingCost,
)
from lightning_sparsity.counting.trace import (
    FORWARD,
    GRAD_WEIGHTS,
    PARTS,
    Loss,
    StepRecorder,
    Trace,
    replay,
    trace,
    trace_training,
)
from lightning_sparsity.patterns import Pattern, parse_pattern

__all__ = [
    "CostModel",
    "SparsityMeter",
    "Structure",
    "WeightStructure",
    "measure",
    "structure",
]

Per = Literal["example", "batch"]
#: Which entries of a weight receive its gradient (``measure_training(trainable=...)``).
Trainable = Literal["nonzero", "all"] | Mapping[str, "Tensor | int"]


@dataclass(frozen=True)
class CostModel:
    """Sparse FLOPs as a linear function of each parameter's nonzero count.

    ``flops_sparse = fixed_flops + Σ flops_per_nonzero[name] × nnz(name)`` for parameters
    used whole (views, transposes, casts); parameters used only in parts (a packed QKV
    projection with different query and key lengths) appear in ``partial``: they are not
    linear in their total count, so their FLOPs at their current nonzeros are part of
    ``fixed_flops``. FLOPs are per example or per batch as ``per`` says.

    Attributes:
        flops: dense FLOPs.
        fixed_flops: FLOPs that no per-parameter cost carries: ops with no weight operand
            (attention scores), never skipped, and the partly used parameters' FLOPs now.
        flops_per_nonzero: parameter name → FLOPs per nonzero entry.
        partial: names of parameters used in parts.
        numel: parameter name → number of entries, for every parameter.
        per: ``"example"`` or ``"batch"``.
    """

    flops: float
    fixed_flops: float
    flops_per_nonzero: dict[str, float]
    partial: frozenset[str]
    numel: dict[str, int]
    per: Per

    def floor(self, pruned: Mapping[str, float] | set[str]) -> float:
        """The sparse FLOPs left with every ``pruned`` parameter at its floor, the others dense.

        Args:
            pruned: The pruned parameters' least densities (``MagnitudePruner.
                floor_densities``); a set of names for weights that can become all zero.
        """
        floors = pruned if isinstance(pruned, Mapping) else dict.fromkeys(pruned, 0.0)
        kept = sum(
            c * self.numel[name] * floors.get(name, 1.0)
            for name, c in self.flops_per_nonzero.items()
        )
        return float(self.fixed_flops + kept)


def _validate(model: Any, example_input: Any, per: str, batch_size: int | None) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError(
            "`model` is a TorchScript module: its forward runs in the TorchScript interpreter,"
            " where the counter's module tracking cannot follow; measure the eager module"
            " (before torch.jit.script / torch.jit.trace)"
        )
    if not isinstance(example_input, (Tensor, tuple, list, dict)):
        raise TypeError(
            "`example_input` must be a Tensor, a tuple/list of positional arguments or a dict"
            f" of keyword arguments, got {type(example_input).__name__}"
        )
    leaves = tree_flatten(example_input)[0]
    if leaves and not any(isinstance(leaf, Tensor) for leaf in leaves):  # none: an empty batch
        kinds = sorted({type(leaf).__name__ for leaf in leaves})
        raise TypeError(
            f"`example_input` holds no tensor (only {', '.join(kinds)}); a tuple or list is"
            " unpacked as positional arguments: give the data as tensors, e.g. torch.tensor(data)"
        )
    if per not in ("example", "batch"):
        raise ValueError(f"`per` must be one of ('example', 'batch'), got {per!r}")
    if batch_size is not None and (
        not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1
    ):
        raise ValueError(f"`batch_size` must be a positive int or None, got {batch_size!r}")


@dataclass(frozen=True)
class _Examples:
    """How many examples the example input holds, and where that was read."""

    count: int
    source: Literal["explicit", "list", "dim0", "unknown"]
    shape: tuple[int, ...] = ()  # "dim0": that tensor's; "explicit": the input's, or ()


def _first_argument(example_input: Any) -> Any:
    if isinstance(example_input, dict):
        return next(iter(example_input.values()), None)
    if isinstance(example_input, (tuple, list)):
        return example_input[0] if example_input else None
    return example_input


def _first_batched(example_input: Any) -> Tensor | None:
    """The input's first tensor of 1+ dims: its dim 0 is the batch (unless a list is)."""
    leaves, _ = tree_flatten(example_input)
    return next((t for t in leaves if isinstance(t, Tensor) and t.dim() > 0), None)


def _count_examples(example_input: Any) -> _Examples:
    first = _first_argument(example_input)
    if isinstance(first, (tuple, list)) and first and all(isinstance(t, Tensor) for t in first):
        return _Examples(len(first), "list")  # a list of examples, e.g. [3, H, W] images
    batched = _first_batched(example_input)
    if batched is not None:
        return _Examples(int(batched.shape[0]), "dim0", tuple(batched.shape))
    raise ValueError(
        "cannot infer the batch size for per='example': the example input has no tensor with"
        " a batch dimension; pass `batch_size=` or use per='batch'"
    )


def _refuse_empty(example_input: Any) -> None:
    """Refuse an input of no examples, however the FLOPs are divided.

    Zero examples run zero FLOPs: per example the division is by 0, per batch (or with a
    ``batch_size``) every ratio is 0/0.

    Raises:
        ValueError: naming the empty list or the shape of the empty tensor.
    """
    first = _first_argument(example_input)
    batched = _first_batched(example_input)
    if batched is not None and batched.shape[0] == 0:
        where = f"its first tensor has shape {tuple(batched.shape)}"
    elif batched is None and isinstance(first, (tuple, list)) and not first:
        where = f"its first argument is an empty {type(first).__name__} (of examples)"
    else:
        return
    raise ValueError(
        f"the example input is an empty batch: {where}; zero examples run zero FLOPs, so"
        " per-example counts and sparse/dense ratios mean nothing: give at least one example"
    )


def _examples(example_input: Any, per: str, batch_size: int | None) -> _Examples:
    """The number of examples in the input; per batch a best effort, never an error.

    Raises:
        ValueError: for an empty batch (any ``per``), or per example when the number
            cannot be inferred.
    """
    _refuse_empty(example_input)
    if batch_size is not None:
        try:  # what the input looks like, to check the number against
            found = _count_examples(example_input)
        except ValueError:
            found = _Examples(1, "unknown")
        shape = (found.count,) if found.source == "list" else found.shape
        return _Examples(batch_size, "explicit", shape)
    if per == "example":
        return _count_examples(example_input)
    try:
        return _count_examples(example_input)
    except ValueError:
        return _Examples(1, "unknown")


def _doubt(examples: _Examples, batches: dict[str, frozenset[int]]) -> str | None:
    """Why the number of examples looks wrong given the trace's evidence, or ``None``.

    Evidence agrees when every batch size an op ran on is a multiple of it (a video model
    folds time into its convolutions' batch: N = B*T). An inferred number is doubted by
    that evidence, and a 1-D first tensor; an explicit ``batch_size`` by that evidence, and
    by an input none of whose dimensions (nor the length of its list of examples) is a
    multiple of it: no way to split it into that many equal examples.
    """
    if examples.source not in ("list", "dim0", "explicit"):
        return None
    n = examples.count
    wrong = {label: sorted(b for b in sizes if b % n) for label, sizes in batches.items()}
    wrong = {label: sizes for label, sizes in sorted(wrong.items()) if sizes}
    reasons = [
        f"{label} ran on batch {', '.join(map(str, sizes))}, not a multiple of {n}"
        for label, sizes in wrong.items()
    ]
    if examples.source == "explicit":
        if examples.shape and not any(d % n == 0 for d in examples.shape):
            reasons.insert(
                0, f"no dimension of the input (shape {examples.shape}) is a multiple of it"
            )
        where, fix = "the batch_size given", "Check batch_size"
    else:
        one_d = examples.source == "dim0" and len(examples.shape) == 1 and (wrong or not batches)
        if one_d:
            reasons.insert(0, "that tensor is 1-D (one example without a batch dimension?)")
        if examples.source == "dim0":
            where = f"dim 0 of its first tensor, shape {examples.shape}"
        else:
            where = "the length of the list of examples that is its first argument"
        fix = "Pass batch_size=N"
    if not reasons:
        return None
    evidence = [b for sizes in batches.values() for b in sizes]
    if evidence:
        guess = f"batch_size={math.gcd(*evidence)} going by those ops"
    elif examples.source == "explicit" and examples.shape:
        guess = f"batch_size={examples.shape[0]} if dim 0 holds them"
    else:
        guess = "batch_size=1 for one example"
    return (
        f"lightning_sparsity: FLOPs per example are the example input's FLOPs divided by {n},"
        f" {where}, but {'; '.join(reasons)}. {fix}, the number of examples in"
        f" the input ({guess}), or per='batch' to count the input as given."
    )


def _settle(
    per: Per, examples: _Examples, batches: dict[str, frozenset[int]]
) -> tuple[int, int | None, str | None]:
    """The divisor of the FLOPs, the batch size the report states, and a warning if any.

    Per batch nothing is divided, and an inferred batch size the evidence doubts is not
    stated (``None``) rather than warned about.
    """
    doubt = _doubt(examples, batches)
    if per == "example":
        return examples.count, examples.count, doubt
    known = examples.source != "unknown" and doubt is None
    return 1, examples.count if known else None, None


def _signature(model: nn.Module, slots: Sequence[Slot], example_input: Any) -> tuple[Any, ...]:
    leaves, spec = tree_flatten(example_input)
    inputs = tuple(
        (tuple(x.shape), x.dtype, x.device) if isinstance(x, Tensor) else repr(x) for x in leaves
    )
    modules = tuple((id(m), type(m)) for m in model.modules())
    return (str(spec), inputs, modules, tuple(s.signature() for s in slots))


def _as_number(value: Fraction) -> int | float:
    return value.numerator if value.denominator == 1 else float(value)


class SparsityMeter:
    """Trace a model once, then recount nonzero parameters and sparse FLOPs cheaply.

    Example:
        >>> meter = SparsityMeter(model, torch.zeros(1, 3, 224, 224))
        >>> meter.measure().total.flops_sparse  # every epoch: one sweep of nonzero counts
        >>> meter.measure_training().total.flops_sparse  # one training step, likewise

    Args:
        model: the model to count.
        example_input: a Tensor, a tuple/list of positional arguments, or a dict of kwargs.
        per: ``"example"`` (FLOPs divided by the input's batch size) or ``"batch"``.
        batch_size: the number of examples in the input; default: the length of a list of
            tensors given as the first argument, else dim 0 of the first input tensor (then
            re-inferred when ``example_input`` is replaced).
        realizable: also count realizable FLOPs at each :meth:`measure` (``True``: 2:4; a
            list of ``"N:M"``; ``False``: skip them, the bytes read off each weight only counted).
        loss: for :meth:`measure_training`: the scalar loss from the model's output, e.g.
            ``lambda out: F.cross_entropy(out, target)`` (its own FLOPs count in the forward
            part); default: the sum of every floating-point output that requires a gradient.

    Warns:
        UserWarning: once per meter, if the inferred batch size disagrees with the batch
            sizes the model's convolutions, LSTM layers or fused attention ran on, or is
            dim 0 of a 1-D tensor.

    Raises:
        TypeError: if ``model`` is not a module, ``example_input`` not a supported type or
            ``realizable`` neither a bool nor patterns.
        ValueError: for a bad ``per`` or ``batch_size``, a bad pattern, or an empty batch
            (also when ``example_input`` is replaced by one: at :meth:`measure`).
        MeasureError: if the model's forward pass fails on the example input.
    """

    def __init__(
        self,
        model: nn.Module,
        example_input: Any,
        *,
        per: Per = "example",
        batch_size: int | None = None,
        realizable: bool | Sequence[str] = True,
        loss: Loss | None = None,
    ) -> None:
        _validate(model, example_input, per, batch_size)
        if loss is not None and not callable(loss):
            raise TypeError(f"`loss` must be a callable of the model's output, got {loss!r}")
        self.loss = loss
        self.training_traces = 0
        self._training: tuple[tuple[Any, ...], Trace] | None = None
        self._training_known: tuple[Trace, list[int | None]] | None = None
        self._recorder: StepRecorder | None = None
        self._step: tuple[Trace, int] | None = None  # a recorded step and its examples
        self.steps_recorded = 0
        self.patterns = _patterns(realizable)
        self.model = model
        self.example_input = example_input
        self.per: Per = per
        self._batch_size_arg = batch_size
        self._divisor = 1
        self.batch_size: int | None = batch_size
        self.traces = 0
        self._trace: Trace | None = None
        self._signature: tuple[Any, ...] | None = None
        self._warned = False
        self._known: tuple[Trace, list[int | None]] | None = None
        self._ensure_trace(find_slots(model))

    def _ensure_trace(self, slots: list[Slot]) -> Trace:
        signature = _signature(self.model, slots, self.example_input)
        if self._trace is None or signature != self._signature:
            # the example input may have been replaced: its number of examples with it (an
            # empty batch fails before the trace)
            examples = _examples(self.example_input, self.per, self._batch_size_arg)
            self._trace = trace(self.model, self.example_input, slots=slots)
            self._signature = signature
            self.traces += 1
            self._divisor, self.batch_size, doubt = _settle(self.per, examples, self._trace.batches)
            if doubt is not None and not self._warned:  # once per meter
                self._warned = True
                warnings.warn(doubt, UserWarning, stacklevel=3)
        return self._trace

    def retrace(self) -> None:
        """Trace again at the next count.

        For changes the meter cannot see: a conv's stride set in place, a Python flag or a
        data-dependent branch that changes which ops the forward runs. The training
        step's trace too (:meth:`measure_training`).
        """
        self._trace = None
        self._training = None
        self._step = None

    def start_step(self) -> None:
        """Record the training step that runs from now until :meth:`stop_step`.

        From then on the training FLOPs (:meth:`measure_training`, :meth:`count_training`,
        ``cost_model(training=True)``) are that step's instead of one forward and backward
        on the example input: for a step that is not that (several losses, forwards or
        optimizers: :class:`.trace.StepRecorder`). Per example, the recorded step's
        FLOPs are divided by the number of examples :meth:`stop_step` is given.

        Raises:
            RuntimeError: if a recording is running.
            NotImplementedError: for a sharded (FSDP2 / DTensor) model.
        """
        if self._recorder is not None:
            raise RuntimeError("SparsityMeter.start_step: a step is being recorded already")
        self._refuse_sharded()
        recorder = StepRecorder(self.model, find_slots(self.model))
        recorder.start()
        self._recorder = recorder

    def stop_step(self, examples: int) -> None:
        """End the recording :meth:`start_step` began; the step ran on ``examples`` examples.

        Raises:
            RuntimeError: if no step is being recorded.
            ValueError: if ``examples`` is not a positive int.
        """
        recorder, self._recorder = self._recorder, None
        if recorder is None:
            raise RuntimeError("SparsityMeter.stop_step: no step is being recorded")
        trace = recorder.stop()
        if isinstance(examples, bool) or not isinstance(examples, int) or examples < 1:
            raise ValueError(f"`examples` must be a positive int, got {examples!r}")
        self._step = (trace, examples)
        self.steps_recorded += 1
        self._training_known = None

    def pause_step(self) -> None:
        """An optimizer's update begins: not recorded until its ``step`` ends."""
        if self._recorder is not None:
            self._recorder.pause()

    def abort_step(self) -> None:
        """Stop a running recording (the step failed), keeping what was counted before."""
        recorder, self._recorder = self._recorder, None
        if recorder is not None:
            recorder.close()

    @property
    def recording(self) -> bool:
        """Whether a step is being recorded (:meth:`start_step`)."""
        return self._recorder is not None

    @property
    def step_recorded(self) -> bool:
        """Whether the training FLOPs are a recorded step's (:meth:`stop_step`)."""
        return self._step is not None

    def measure(self) -> SparsityReport:
        """Count the model as it is now (re-tracing only if its structure changed).

        What the last count of the same trace found tells the probes what they can skip
        (:func:`_nonzeros`).
        """
        current = self._ensure_trace(find_slots(self.model))
        known = self._known[1] if self._known is not None and self._known[0] is current else None
        report = _report(current, self.per, self._divisor, self.batch_size, self.patterns, known)
        self._known = (current, [report.parameters[s.name][1] for s in current.slots])
        return report

    def measure_training(self, trainable: Trainable = "nonzero") -> TrainingCost:
        """The FLOPs of one training step on the example input: forward + backward.

        The step is traced once per input shape (and structure, and set of parameters and
        inputs that require gradients: :func:`.trace.trace_training`), then recounted from
        the weights' nonzero counts like :meth:`measure` (one host sync; one more for
        ``trainable`` masks). Dense FLOPs are what ``FlopCounterMode`` counts around a real
        forward + ``loss.backward()`` (except where it has no formula, and a grouped
        convolution's weight gradient, which it counts ``groups`` times); the sparse and
        realizable columns skip what :class:`~.report.TrainingCost` says.

        Args:
            trainable: the entries whose weight gradients count in ``flops_sparse``:
                ``"nonzero"`` (the default: a pruned weight's masked entries keep zero
                gradients), ``"all"`` (dense gradients, e.g. RigL's growth steps), or a
                mapping of parameter name to a bool mask or a count of trained entries
                (the others: their nonzero entries). A weight that requires no gradient
                has none, whatever this says.

        Returns:
            The step's cost, per example or per batch as the meter counts.

        Raises:
            TypeError, ValueError: for a bad ``trainable``.
            NotImplementedError: for a sharded (FSDP2 / DTensor) model: its backward
                gathers each weight anew, out of the trace's sight (not counted yet).
            MeasureError: if the forward, the loss or the backward fails.
        """
        return self._training_cost(trainable, self.patterns)[0]

    def count_training(self, trainable: Trainable = "nonzero") -> StepCount:
        """A training step's dense and sparse FLOPs now, as a ledger of the steps adds them.

        What :meth:`measure_training` counts, without the realizable column (the probes
        are half of a recount's time), and with the sparse cost of a step that computes
        every weight gradient from the same sweep.

        Raises:
            ValueError: on the meta device (the counts need the weights' values).
            TypeError, ValueError, NotImplementedError, MeasureError: as
                :meth:`measure_training`.
        """
        count = self._training_cost(trainable, None)[1]
        if count is None:
            raise ValueError("count_training() needs real weights; the model is on meta")
        return count

    def _training_cost(
        self, trainable: Trainable, patterns: Sequence[Pattern] | None
    ) -> tuple[TrainingCost, StepCount | None]:
        current, div, batch_size = self._training_step()
        known = self._training_known
        previous = known[1] if known is not None and known[0] is current else None
        cost, nnz, count = _training_cost(
            current, self.per, div, batch_size, patterns, trainable, previous
        )
        self._training_known = (current, nnz) if nnz is not None else None
        return cost, count

    def _training_step(self) -> tuple[Trace, int, int | None]:
        """The training step's trace, what its FLOPs are divided by, and its batch size."""
        if self._step is None:
            return self._ensure_training_trace(), self._divisor, self.batch_size
        self._refuse_sharded()
        current, examples = self._step
        return current, examples if self.per == "example" else 1, examples

    def _refuse_sharded(self, params: Sequence[Tensor] | None = None) -> None:
        params = list(self.model.parameters()) if params is None else params
        if any(is_sharded(p) for p in params):
            raise NotImplementedError(
                "training FLOPs of a sharded (FSDP2 / DTensor) model are not counted yet:"
                " its backward gathers each weight anew, out of the trace's sight"
            )

    def _ensure_training_trace(self) -> Trace:
        params = list(self.model.parameters())
        self._refuse_sharded(params)
        slots = find_slots(self.model)
        self._ensure_trace(slots)  # the number of examples, for a replaced example input
        leaves = tree_flatten(self.example_input)[0]
        signature = (
            self._signature,  # the forward's, as _ensure_trace just checked it
            tuple(p.requires_grad for p in params),
            tuple(x.requires_grad for x in leaves if isinstance(x, Tensor)),
            self.loss,
        )
        if self._training is None or self._training[0] != signature:
            current = trace_training(self.model, self.example_input, self.loss, slots=slots)
            self._training = (signature, current)
            self.training_traces += 1
        return self._training[1]

    def cost_model(self, *, training: bool = False) -> CostModel:
        """The per-parameter cost of the current trace (for FLOP-targeted pruning).

        Args:
            training: the cost of a training step (:meth:`measure_training`, its default
                ``trainable="nonzero"``: weight gradients per nonzero entry too) instead
                of a forward pass.

        Raises:
            ValueError: on the meta device (partly used weights need their values).
        """
        if training:
            current, div, _ = self._training_step()
        else:
            current, div = self._ensure_trace(find_slots(self.model)), self._divisor
        per_nonzero: dict[int, Fraction] = {}
        partial: set[str] = set()
        fixed = Fraction(sum(current.fixed))
        if any(u.chain is not None for u in current.uses):
            if any(slot.is_meta() for slot in current.slots):
                raise ValueError("cost_model() needs real weights; the model is on meta")
            nnz_use = _nonzeros(current).nnz_use
        for i, use in enumerate(current.uses):
            if use.frozen:  # a weight gradient of no trained entry
                continue
            if use.chain is None:
                per_nonzero[use.slot] = per_nonzero.get(use.slot, Fraction(0)) + use.coef
            else:  # not linear in the parameter's count: counted at its current value
                partial.add(current.slots[use.slot].name)
                fixed += use.coef * nnz_use[i]
        return CostModel(
            flops=_as_number(Fraction(sum(current.dense), div)),
            fixed_flops=_as_number(fixed / div),
            flops_per_nonzero={
                current.slots[i].name: _as_number(c / div) for i, c in per_nonzero.items()
            },
            partial=frozenset(partial),
            numel={s.name: n for s, n in zip(current.slots, current.numels, strict=True)},
            per=self.per,
        )


@dataclass(frozen=True)
class WeightStructure:
    """What the realizable count finds in one weight, with the masks it counts by.

    Attributes:
        slot: the weight (its module, attribute and name).
        form: its realizable form (:class:`.realizable.Form`).
        live_rows: bool per row (dim 0): holds a nonzero weight.
        live_inputs: bool per input (dim 1): holds a nonzero weight and reads more than the
            zeros of a dead row of the layer before (:mod:`.channels`).
        uses: how often the traced forward uses the weight whole.
        foreign: whether an op outside its module's own forward reads it (another module,
            or ``F.linear(x, layer.weight)`` in a parent).
    """

    slot: Slot
    form: Form
    live_rows: Tensor
    live_inputs: Tensor
    uses: int
    foreign: bool = False


@dataclass(frozen=True)
class Structure:
    """What the realizable count finds in a model (:func:`structure`).

    Attributes:
        weights: per slot index, the weights of 2+ dims.
        reads: every layer reading another's output channels (:mod:`.channels`), with
            the producer's channels that are zero where it reads them (``None``: unknown).
        escaped: producers whose channels also reach something other than those reads.
    """

    weights: dict[int, WeightStructure]
    reads: list[tuple[ChannelFlow, Tensor | None]]
    escaped: frozenset[int]


def structure(
    model: nn.Module, example_input: Any, patterns: Sequence[str] = ("2:4",)
) -> Structure:
    """The realizable form of every weight of 2+ dims, with the rows and inputs it keeps.

    The same trace and sweep as :func:`measure` (one host sync), so what
    :mod:`lightning_sparsity.compact` removes is exactly what realizable FLOPs count removed.

    Raises:
        TypeError, ValueError, MeasureError: as :func:`measure`; ValueError on meta.
    """
    _validate(model, example_input, "batch", None)
    if any(slot.is_meta() for slot in find_slots(model)):
        raise ValueError("structure needs real weights; the model is on the meta device")
    current = trace(model, example_input)
    counted = _nonzeros(current, _patterns(list(patterns)))
    assert counted.forms is not None
    assert counted.live is not None
    uses = Counter(u.slot for u in current.uses if u.chain is None)
    foreign = {u.slot for u in current.uses if u.row != current.row_of_slot[u.slot]}
    weights = {}
    for i, (slot, form, live) in enumerate(
        zip(current.slots, counted.forms, counted.live, strict=True)
    ):
        if form is not None and live is not None:
            weights[i] = WeightStructure(slot, form, live[0], live[1], uses[i], i in foreign)
    return Structure(weights, counted.reads, current.escaped)


def measure(
    model: nn.Module,
    example_input: Any,
    *,
    activations: bool = False,
    per: Per = "example",
    batch_size: int | None = None,
    realizable: bool | Sequence[str] = True,
) -> SparsityReport:
    """Count parameters, nonzero parameters, dense and sparse FLOPs of one forward pass.

    Args:
        model: the model; left as found (mode flags, gradients, running statistics, hooks).
        example_input: a Tensor, a tuple/list of positional arguments, or a dict of kwargs.
        activations: also count effective FLOPs (both operands nonzero) on this input.
        per: ``"example"`` (FLOPs divided by the input's batch size) or ``"batch"``.
        batch_size: the number of examples in the input; default: the length of a list of
            tensors given as the first argument, else dim 0 of the first input tensor.
        realizable: also count realizable FLOPs (:mod:`.realizable`): ``True`` checks the
            2:4 pattern, a list of ``"N:M"`` others; ``False`` skips them.

    Returns:
        The report. On the meta device, nonzero counts and sparse FLOPs are ``None``.

    Warns:
        UserWarning: if the inferred batch size disagrees with the batch sizes the model's
            convolutions, LSTM layers or fused attention ran on, or is dim 0 of a 1-D
            tensor; ``batch_size=`` or ``per="batch"`` silences it.

    Raises:
        TypeError: if ``model`` is not a module, ``example_input`` not a supported type,
            ``activations`` not a bool or ``realizable`` neither a bool nor patterns.
        ValueError: for a bad ``per`` or ``batch_size``, an empty batch (dim 0 of the first
            tensor 0: no FLOPs to divide or compare), or ``activations=True`` on meta.
        MeasureError: if the model's forward pass fails on the example input.
    """
    _validate(model, example_input, per, batch_size)
    if not isinstance(activations, bool):
        raise TypeError(f"`activations` must be a bool, got {activations!r}")
    patterns = _patterns(realizable)
    examples = _examples(example_input, per, batch_size)
    if activations and any(slot.is_meta() for slot in find_slots(model)):
        raise ValueError("activations=True needs real values; the model is on the meta device")
    current = trace(model, example_input, effective=activations)
    div, stated, doubt = _settle(per, examples, current.batches)
    if doubt is not None:
        warnings.warn(doubt, UserWarning, stacklevel=2)
    return _report(current, per, div, stated, patterns)


def _patterns(realizable: bool | Sequence[str]) -> tuple[Pattern, ...] | None:
    """The N:M patterns realizable FLOPs check (``None``: not counted).

    Raises:
        TypeError: unless ``realizable`` is a bool, a string or a list.
        ValueError: for a pattern that is not ``"N:M"``.
    """
    if realizable is True:
        return DEFAULT_PATTERNS
    if realizable is False:
        return None
    if isinstance(realizable, str):
        realizable = [realizable]
    if not isinstance(realizable, Sequence):
        raise TypeError(
            "`realizable` must be True, False or a list of 'N:M' patterns (e.g. ['2:4']),"
            f" got {realizable!r}"
        )
    return tuple(dict.fromkeys(parse_pattern(p) for p in realizable))


def _gather(values: list[Tensor]) -> list[Any]:
    """0-dim tensors to Python numbers with one host sync (they may sit on several devices)."""
    if not values:
        return []
    device = values[0].device
    return torch.stack([v.to(device, non_blocking=True) for v in values]).tolist()


def whole(t: Tensor) -> Tensor:
    """A sharded tensor gathered whole (only for the rare sliced use of a sharded weight)."""
    return t.full_tensor() if is_sharded(t) else t  # type: ignore[attr-defined]


@dataclass
class _Counts:
    """What one sweep over the weights read back (one host sync)."""

    nnz_slot: list[int]
    nnz_use: list[int]
    numel_use: list[int]  # entries of each use's operand
    forms: list[Form | None] | None  # per slot, with realizable FLOPs
    # per probed slot, with realizable FLOPs: (live rows, live inputs) as the forms count them
    live: list[tuple[Tensor, Tensor] | None] | None = None
    # every channel read, with the producer's channels dead where it reads them
    reads: list[tuple[ChannelFlow, Tensor | None]] = field(default_factory=list)
    # per consumer slot: channels dead in every producer that it still reads (not 0)
    kept: dict[int, int] = field(default_factory=dict)


def _dense_before(tensors: Sequence[Tensor], known: Sequence[int | None] | None) -> list[bool]:
    """Per slot, whether it had no zero at the previous recount (``known``: its nonzeros).

    Not for sharded weights: every rank must probe alike.
    """
    if known is None or any(is_sharded(t) for t in tensors):
        return [False] * len(tensors)
    return [t.dim() > 1 and nnz == t.numel() > 0 for t, nnz in zip(tensors, known, strict=True)]


def _nonzeros(
    current: Trace,
    patterns: Sequence[Pattern] | None = None,
    known: Sequence[int | None] | None = None,
) -> _Counts:
    """Nonzeros of every slot and use's operand (and the realizable probes), one host sync.

    ``known``: every slot's nonzeros at the previous recount of this trace. A weight that had
    no zero is counted only: if it still has none, every row and input lives and no N:M
    pattern fits (:func:`.realizable.dense_probe`); should zeros have appeared since (the
    first count after pruning it), the count runs again probing every weight, with a second
    host sync.
    """
    slots = current.slots
    partial = [u for u in current.uses if u.chain is not None]
    probes: list[Probe | None] = [None] * len(slots)
    with torch.no_grad(), parametrize.cached():
        tensors = [slot.value() for slot in slots]
        dead: dict[int, Tensor] = {}
        reads: list[tuple[ChannelFlow, Tensor | None]] = []
        kept_counts: list[tuple[int, Tensor]] = []
        flags = ZeroFlags(tensors)  # the values read on every thread, as a sweep reads them
        with on_calling_thread(tensors):  # the rest: bytes and small tensors
            dense = _dense_before(tensors, known if patterns is not None else None)
            if patterns is not None:
                probes = [
                    dense_probe(s.module, t, _count(flags, t), patterns)
                    if was_dense
                    else probe(s.module, t, patterns, flags.read(t))
                    for s, t, was_dense in zip(slots, tensors, dense, strict=True)
                ]
                if current.flows and not any(is_sharded(t) for t in tensors):
                    # a training trace: its forward uses (the backward reuses each weight)
                    uses = Counter(u.slot for u in current.uses if u.part == FORWARD)
                    rows = [None if p is None else p.live_rows for p in probes]
                    reads, dead, rows = dead_channels(current.flows, uses, tensors, rows)
                    for found, alive in zip(probes, rows, strict=True):
                        if found is not None and alive is not None:
                            found.live_rows = alive  # a depthwise row reading zeros only: dead
                    for flow, read_dead in reads:
                        left = kept_constants(flow, rows, read_dead)
                        if left is not None:
                            kept_counts.append((flow.consumer, left.count_nonzero()))
            # a probed weight's count comes with its probes; the others' from the same read
            counts: list[Tensor] = [
                found.nnz if found is not None else _count(flags, t)
                for t, found in zip(tensors, probes, strict=True)
            ]
        # a part of a sharded weight is replayed on the whole one (rare: a sliced use)
        parts = [replay(whole(tensors[u.slot]), u.chain) for u in partial]  # type: ignore[arg-type]
        counts += [p.count_nonzero() for p in parts]
        holders: list[Tensor] = [*tensors, *parts]
        for i, found in enumerate(probes):
            if found is not None:
                scalars, held = found.scalars(dead.get(i))
                counts += scalars
                holders += held
        counts += [n for _, n in kept_counts]  # (never sharded: no reads then)
    if any(is_sharded(t) for t in tensors):  # per-shard counts summed: one all-reduce
        device = counts[0].device
        stacked = torch.stack([c.to(device) for c in counts])
        counts = list(reduce_counts(stacked, holders).unbind())
    values = _gather(counts)
    nnz_slot = values[: len(slots)]
    if any(was and n != all_ for was, n, all_ in zip(dense, nnz_slot, current.numels, strict=True)):
        return _nonzeros(current, patterns)  # zeros where there were none: probe them
    nnz_partial = iter(values[len(slots) : len(slots) + len(parts)])
    rest = iter(values[len(slots) + len(parts) :])
    nnz_use = [nnz_slot[u.slot] if u.chain is None else next(nnz_partial) for u in current.uses]
    part_numels = iter([p.numel() for p in parts])
    numel_use = [
        current.numels[u.slot] if u.chain is None else next(part_numels) for u in current.uses
    ]
    forms: list[Form | None] | None = None
    live: list[tuple[Tensor, Tensor] | None] | None = None
    if patterns is not None:
        forms, live = [], []
        for i, found in enumerate(probes):
            if found is None:
                forms.append(None)
                live.append(None)
                continue
            probe_values = [next(rest) for _ in range(2 + len(found.violations))]
            forms.append(found.form(probe_values, nnz_slot[i], current.numels[i]))
            live.append((found.live_rows.bool(), found.live_inputs_after(dead.get(i))))
    kept: dict[int, int] = {}
    for consumer, _ in kept_counts:
        kept[consumer] = kept.get(consumer, 0) + next(rest)
    return _Counts(nnz_slot, nnz_use, numel_use, forms, live, reads, kept)


def _count(flags: ZeroFlags, t: Tensor) -> Tensor:
    """The nonzeros of ``t`` (its local part): a weight's from one read, a vector's directly."""
    read = flags.read(t, inputs_last=False)
    return local(t).count_nonzero() if read is None else count_ones(read)


def _trained(current: Trace, counted: _Counts, trainable: Trainable) -> list[int]:
    """Per use, the trained entries of its operand (used for the weight-gradient uses).

    Raises:
        TypeError, ValueError: for a bad ``trainable``.
    """
    if trainable == "nonzero":
        return counted.nnz_use
    if trainable == "all":
        return counted.numel_use
    if not isinstance(trainable, Mapping):
        raise TypeError(
            "`trainable` must be 'nonzero', 'all' or a mapping of parameter name to a bool"
            f" mask or a count, got {trainable!r}"
        )
    index = {slot.name: i for i, slot in enumerate(current.slots)}
    unknown = sorted(set(trainable) - set(index))
    if unknown:
        raise ValueError(f"`trainable` names no parameter of the model: {unknown}")
    out = list(counted.nnz_use)
    lazy: list[tuple[int, Tensor]] = []
    for i, use in enumerate(current.uses):
        given = trainable.get(current.slots[use.slot].name)
        if given is None or use.part != GRAD_WEIGHTS:
            continue
        numel = current.numels[use.slot]
        if isinstance(given, Tensor):
            if given.numel() != numel:
                raise ValueError(
                    f"`trainable` mask of {current.slots[use.slot].name} has {given.numel()}"
                    f" entries, the parameter {numel}"
                )
            mask = given.reshape(_shape_of(current, use.slot)) if use.chain else given
            lazy.append((i, replay(mask, use.chain) if use.chain else mask))
        elif isinstance(given, int) and not isinstance(given, bool) and 0 <= given <= numel:
            if use.chain is not None:
                raise ValueError(
                    f"{current.slots[use.slot].name} is used in parts: give `trainable` a mask"
                )
            out[i] = given
        else:
            raise ValueError(
                f"`trainable[{current.slots[use.slot].name!r}]` must be a bool mask or a count"
                f" in [0, {numel}], got {given!r}"
            )
    if lazy:
        with torch.no_grad():
            counts = _gather([mask.count_nonzero() for _, mask in lazy])
        for (i, _), n in zip(lazy, counts, strict=True):
            out[i] = int(n)
    return out


def _shape_of(current: Trace, slot: int) -> torch.Size:
    with torch.no_grad(), parametrize.cached():
        return current.slots[slot].value().shape


@dataclass(frozen=True)
class StepCount:
    """One training step's FLOPs at the weights now, as a ledger adds them up.

    From one sweep of the nonzero counts, without the realizable probes
    (:meth:`SparsityMeter.count_training`); per example or per batch as the meter counts.

    Attributes:
        flops: dense (as :attr:`TrainingCost.total`'s ``flops``).
        flops_sparse: sparse, the weight gradients of the ``trainable`` entries.
        flops_sparse_all: sparse, every weight gradient of a weight that requires one (a
            step that computes them all: RigL's growth steps).
        still: no trained entry is zero (a masked weight's live entries, every entry of the
            others that train). A step moves only trained entries, and an entry a step moves
            is not left at exactly zero, so the next steps have the same nonzeros, and these
            costs, until the weights are changed otherwise (new masks).
    """

    flops: int | float
    flops_sparse: int | float
    flops_sparse_all: int | float
    still: bool


def _training_cost(
    current: Trace,
    per: Per,
    div: int,
    batch_size: int | None,
    patterns: Sequence[Pattern] | None,
    trainable: Trainable,
    previous: Sequence[int | None] | None = None,
) -> tuple[TrainingCost, list[int | None] | None, StepCount | None]:
    """A training trace's cost now, every slot's nonzeros, and the ledger's count.

    The last two are ``None`` on meta.
    """
    parts = len(PARTS)
    sparse: list[Fraction] | None = None
    realizable: list[Fraction] | None = None
    nnz_slot: list[int | None] | None = None
    gw_trained = gw_all = Fraction(0)  # the weight gradients as ``trainable`` says, and all
    still = True
    if not any(slot.is_meta() for slot in current.slots):
        counted = _nonzeros(current, patterns, previous)
        trained = _trained(current, counted, trainable)
        nnz_slot = list(counted.nnz_slot)
        masked = set(trainable) if isinstance(trainable, Mapping) else set()
        sparse = [Fraction(f) for f in current.part_fixed]
        if counted.forms is not None:
            realizable = [Fraction(f) for f in current.part_fixed]
        for i, use in enumerate(current.uses):
            if use.part == GRAD_WEIGHTS:
                n = 0 if use.frozen else trained[i]
                gw_trained += use.coef * n
                gw_all += 0 if use.frozen else use.coef * counted.numel_use[i]
                if not use.frozen:  # trains every entry, or a masked weight's live ones
                    named = current.slots[use.slot].name in masked
                    still &= counted.nnz_use[i] == (n if named else counted.numel_use[i])
            else:
                n = counted.nnz_use[i]
            sparse[use.part] += use.coef * n
            if realizable is not None and counted.forms is not None:
                form = counted.forms[use.slot] if use.chain is None else None
                if form is None:
                    factor = Fraction(1)
                else:  # the backward realizes the compaction only (see .realizable)
                    factor = form.factor if use.part == FORWARD else form.compact
                realizable[use.part] += use.coef * counted.numel_use[i] * factor

    def step(*picked: int) -> StepFlops:
        def total(values: list[Fraction] | None) -> int | float | None:
            if values is None:
                return None
            return _as_number(sum((values[p] for p in picked), Fraction(0)) / div)

        return StepFlops(
            flops=_as_number(Fraction(sum(current.part_dense[p] for p in picked), div)),
            flops_sparse=total(sparse),
            flops_realizable=total(realizable),
        )

    forward, grad_inputs, grad_weights = (step(p) for p in range(parts))
    cost = TrainingCost(
        total=step(*range(parts)),
        forward=forward,
        grad_inputs=grad_inputs,
        grad_weights=grad_weights,
        per=per,
        batch_size=batch_size,
        unsupported=dict(current.unsupported),
    )
    count: StepCount | None = None
    if sparse is not None:
        assert cost.total.flops_sparse is not None
        every_gradient = sum(sparse, Fraction(0)) - gw_trained + gw_all
        count = StepCount(
            flops=cost.total.flops,
            flops_sparse=cost.total.flops_sparse,
            flops_sparse_all=_as_number(every_gradient / div),
            still=still,
        )
    return cost, nnz_slot, count


def _report(
    current: Trace,
    per: Per,
    div: int,
    batch_size: int | None,
    patterns: Sequence[Pattern] | None = None,
    previous: Sequence[int | None] | None = None,
) -> SparsityReport:
    slots = current.slots
    n_rows = len(current.rows)
    meta = any(slot.is_meta() for slot in slots)
    sparse: list[Fraction] | None = None
    nonzero: list[int] | None = None
    nnz_slot: list[int] = []
    realizable: list[Fraction] | None = None
    forms: list[Form | None] | None = None
    kept: dict[int, int] = {}
    if not meta:
        counted = _nonzeros(current, patterns, previous)
        nnz_slot, nnz_use, forms = counted.nnz_slot, counted.nnz_use, counted.forms
        kept = counted.kept
        sparse = [Fraction(f) for f in current.fixed]
        for use, nnz in zip(current.uses, nnz_use, strict=True):
            sparse[use.row] += use.coef * nnz
        if forms is not None:  # per use: dense times the weight's form (slices: dense)
            realizable = [Fraction(f) for f in current.fixed]
            for use, numel in zip(current.uses, counted.numel_use, strict=True):
                form = forms[use.slot] if use.chain is None else None
                factor = Fraction(1) if form is None else form.factor
                realizable[use.row] += use.coef * numel * factor
        nonzero = [0] * n_rows
        for slot_index, row in enumerate(current.row_of_slot):
            nonzero[row] += nnz_slot[slot_index]
    params = [0] * n_rows
    for numel, row in zip(current.numels, current.row_of_slot, strict=True):
        params[row] += numel
    effective: list[Any] | None = None
    if current.effective is not None:
        found = [e for e in current.effective if e is not None]
        zero = torch.zeros((), dtype=torch.float64, device=found[0].device if found else None)
        effective = [int(v) for v in _gather([zero if e is None else e for e in current.effective])]

    layers = []
    for row in range(n_rows):
        if not params[row] and not current.dense[row]:
            continue
        layers.append(
            LayerStats(
                name=current.rows[row],
                type=current.row_types[row],
                params=params[row],
                params_nonzero=None if nonzero is None else nonzero[row],
                flops=_as_number(Fraction(current.dense[row], div)),
                flops_sparse=None if sparse is None else _as_number(sparse[row] / div),
                flops_effective=None
                if effective is None
                else _as_number(Fraction(effective[row], div)),
                flops_realizable=None if realizable is None else _as_number(realizable[row] / div),
            )
        )
    known = {"params_nonzero", "flops_sparse"} if not meta else set()
    if realizable is not None:
        known.add("flops_realizable")
    if effective is not None:
        known.add("flops_effective")
    parameters = {
        slot.name: (numel, None if meta else nnz_slot[i])
        for i, (slot, numel) in enumerate(zip(slots, current.numels, strict=True))
    }
    return SparsityReport.from_layers(
        layers,
        per=per,
        batch_size=batch_size,
        unsupported=current.unsupported,
        known=frozenset(known),
        parameters=parameters,
        forms={
            slot.name: form.text
            for slot, form in zip(slots, forms or [], strict=False)
            if form is not None
        },
        constants_kept={slots[i].name: n for i, n in kept.items() if n},
    )
