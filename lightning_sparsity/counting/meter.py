"""``measure`` (one shot) and ``SparsityMeter`` (trace once, recount cheaply every epoch).

FLOPs count 2 per MAC. The meter's cached recount is the same arithmetic on the same trace
as a full re-trace, so the two agree exactly; it re-traces when the input's shapes or the
model's structure (modules, parameters, pruning/parametrization state) change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.utils._pytree import tree_flatten

from lightning_sparsity.counting.params import Slot, find_slots
from lightning_sparsity.counting.report import LayerStats, SparsityReport
from lightning_sparsity.counting.trace import Trace, replay, trace

__all__ = ["CostModel", "SparsityMeter", "measure"]

Per = Literal["example", "batch"]


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

    def floor(self, pruned: set[str]) -> float:
        """The sparse FLOPs left with every ``pruned`` parameter zero and the others dense."""
        kept = sum(
            c * self.numel[name] for name, c in self.flops_per_nonzero.items() if name not in pruned
        )
        return float(self.fixed_flops + kept)


def _validate(model: Any, example_input: Any, per: str, batch_size: int | None) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, (Tensor, tuple, list, dict)):
        raise TypeError(
            "`example_input` must be a Tensor, a tuple/list of positional arguments or a dict"
            f" of keyword arguments, got {type(example_input).__name__}"
        )
    if per not in ("example", "batch"):
        raise ValueError(f"`per` must be one of ('example', 'batch'), got {per!r}")
    if batch_size is not None and (
        not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1
    ):
        raise ValueError(f"`batch_size` must be a positive int or None, got {batch_size!r}")


def _infer_batch_size(example_input: Any, per: str, batch_size: int | None) -> int:
    if per == "batch":
        return 1
    if batch_size is not None:
        return batch_size
    leaves, _ = tree_flatten(example_input)
    for leaf in leaves:
        if isinstance(leaf, Tensor) and leaf.dim() > 0:
            if leaf.shape[0] < 1:
                raise ValueError(
                    "cannot count FLOPs per example on an empty batch: the example input's"
                    f" first tensor has shape {tuple(leaf.shape)}; give at least one example"
                )
            return int(leaf.shape[0])
    raise ValueError(
        "cannot infer the batch size for per='example': the example input has no tensor with"
        " a batch dimension; pass `batch_size=` or use per='batch'"
    )


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

    Args:
        model: the model to count.
        example_input: a Tensor, a tuple/list of positional arguments, or a dict of kwargs.
        per: ``"example"`` (FLOPs divided by the input's batch size) or ``"batch"``.
        batch_size: the batch size to divide by; default: dim 0 of the first input tensor.

    Raises:
        TypeError: if ``model`` is not a module or ``example_input`` not a supported type.
        ValueError: for a bad ``per`` or ``batch_size``.
        MeasureError: if the model's forward pass fails on the example input.
    """

    def __init__(
        self,
        model: nn.Module,
        example_input: Any,
        *,
        per: Per = "example",
        batch_size: int | None = None,
    ) -> None:
        _validate(model, example_input, per, batch_size)
        self.model = model
        self.example_input = example_input
        self.per: Per = per
        self.batch_size = _infer_batch_size(example_input, per, batch_size)
        self.traces = 0
        self._trace: Trace | None = None
        self._signature: tuple[Any, ...] | None = None
        self._ensure_trace(find_slots(model))

    def _ensure_trace(self, slots: list[Slot]) -> Trace:
        signature = _signature(self.model, slots, self.example_input)
        if self._trace is None or signature != self._signature:
            self._trace = trace(self.model, self.example_input)
            self._signature = signature
            self.traces += 1
        return self._trace

    def retrace(self) -> None:
        """Trace again at the next count.

        For changes the meter cannot see: a conv's stride set in place, a Python flag or a
        data-dependent branch that changes which ops the forward runs.
        """
        self._trace = None

    def measure(self) -> SparsityReport:
        """Count the model as it is now (re-tracing only if its structure changed)."""
        current = self._ensure_trace(find_slots(self.model))
        return _report(current, self.per, self.batch_size)

    def cost_model(self) -> CostModel:
        """The per-parameter cost of the current trace (for FLOP-targeted pruning).

        Raises:
            ValueError: on the meta device (partly used weights need their values).
        """
        current = self._ensure_trace(find_slots(self.model))
        div = self.batch_size
        per_nonzero: dict[int, Fraction] = {}
        partial: set[str] = set()
        fixed = Fraction(sum(current.fixed))
        if any(u.chain is not None for u in current.uses):
            if any(slot.is_meta() for slot in current.slots):
                raise ValueError("cost_model() needs real weights; the model is on meta")
            _, nnz_use = _nonzeros(current)
        for i, use in enumerate(current.uses):
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


def measure(
    model: nn.Module,
    example_input: Any,
    *,
    activations: bool = False,
    per: Per = "example",
    batch_size: int | None = None,
) -> SparsityReport:
    """Count parameters, nonzero parameters, dense and sparse FLOPs of one forward pass.

    Args:
        model: the model; left as found (mode flags, gradients, running statistics, hooks).
        example_input: a Tensor, a tuple/list of positional arguments, or a dict of kwargs.
        activations: also count effective FLOPs (both operands nonzero) on this input.
        per: ``"example"`` (FLOPs divided by the input's batch size) or ``"batch"``.
        batch_size: the batch size to divide by; default: dim 0 of the first input tensor.

    Returns:
        The report. On the meta device, nonzero counts and sparse FLOPs are ``None``.

    Raises:
        TypeError: if ``model`` is not a module or ``example_input`` not a supported type.
        ValueError: for a bad ``per`` or ``batch_size``, or ``activations=True`` on meta.
        MeasureError: if the model's forward pass fails on the example input.
    """
    _validate(model, example_input, per, batch_size)
    div = _infer_batch_size(example_input, per, batch_size)
    if activations and any(slot.is_meta() for slot in find_slots(model)):
        raise ValueError("activations=True needs real values; the model is on the meta device")
    return _report(trace(model, example_input, effective=activations), per, div)


def _gather(values: list[Tensor]) -> list[Any]:
    """0-dim tensors to Python numbers with one host sync (they may sit on several devices)."""
    if not values:
        return []
    device = values[0].device
    return torch.stack([v.to(device, non_blocking=True) for v in values]).tolist()


def _nonzeros(current: Trace) -> tuple[list[int], list[int]]:
    """Nonzeros of every slot and of every use's operand, with one host sync."""
    slots = current.slots
    partial = [u for u in current.uses if u.chain is not None]
    with torch.no_grad(), parametrize.cached():
        counts: list[Tensor] = [slot.value().count_nonzero() for slot in slots]
        counts += [replay(slots[u.slot].value(), u.chain).count_nonzero() for u in partial]  # type: ignore[arg-type]
    values = _gather(counts)
    nnz_slot, nnz_partial = values[: len(slots)], iter(values[len(slots) :])
    nnz_use = [nnz_slot[u.slot] if u.chain is None else next(nnz_partial) for u in current.uses]
    return nnz_slot, nnz_use


def _report(current: Trace, per: Per, div: int) -> SparsityReport:
    slots = current.slots
    n_rows = len(current.rows)
    meta = any(slot.is_meta() for slot in slots)
    sparse: list[Fraction] | None = None
    nonzero: list[int] | None = None
    nnz_slot: list[int] = []
    if not meta:
        nnz_slot, nnz_use = _nonzeros(current)
        sparse = [Fraction(f) for f in current.fixed]
        for use, nnz in zip(current.uses, nnz_use, strict=True):
            sparse[use.row] += use.coef * nnz
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
            )
        )
    known = {"params_nonzero", "flops_sparse"} if not meta else set()
    if effective is not None:
        known.add("flops_effective")
    parameters = {
        slot.name: (numel, None if meta else nnz_slot[i])
        for i, (slot, numel) in enumerate(zip(slots, current.numels, strict=True))
    }
    return SparsityReport.from_layers(
        layers,
        per=per,
        batch_size=div,
        unsupported=current.unsupported,
        known=frozenset(known),
        parameters=parameters,
    )
