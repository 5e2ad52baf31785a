"""``FlopBudget``: a FLOP (or nonzero-parameter) limit, a deadline, and what to do.

Pure logic, no Lightning: the controller feeds it one measured value per point and acts on
the :class:`BudgetDecision` it returns. FLOPs count 2 per MAC.

Time is counted in completed epochs ``t`` (``0`` = before training), as everywhere in this
package: ``by_epoch=7`` means the limit must hold after 7 completed epochs, the point the
files and curves log at step 7.

* ``action="stop"``: once the measured value is within the limit, pruning freezes; training
  goes on for ``finetune_epochs`` more epochs (``None``: until ``max_epochs``) and then
  stops. Past the deadline still over the limit, ``on_deadline`` says what happens.
* ``action="adjust"``: the FLOPs allowed after ``t`` completed epochs follow a curve in FLOP
  space from the dense model's ``F_0`` at ``t0 = start_epoch`` to the limit ``F_b`` at
  ``t1 = by_epoch`` — cubic as Zhu & Gupta's AGP,
  ``F_t = F_b + (F_0 − F_b)(1 − (t − t0)/(t1 − t0))³`` for ``t0 ≤ t ≤ t1``, or linear — the
  same ramp (:func:`~lightning_sparsity.pruning.schedules.ramp`) as the sparsity schedules,
  and the pruner picks the global magnitude threshold whose sparse FLOPs land there.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from lightning_sparsity._checks import check_choice, check_int
from lightning_sparsity._settings import Settings
from lightning_sparsity._text import count
from lightning_sparsity.pruning.schedules import Curve, ramp

if TYPE_CHECKING:
    from lightning_sparsity.counting import CostModel, SparsityReport

__all__ = ["BudgetDecision", "BudgetError", "FlopBudget", "TrainingPlan", "parse_flops", "slack"]

Action = Literal["stop", "adjust"]
Count = Literal["sparse", "realizable", "effective", "params", "train"]
OnDeadline = Literal["stop", "raise", "warn"]
Status = Literal["over", "on_schedule", "within", "missed"]

_ACTIONS = ("stop", "adjust")
_COUNTS = ("sparse", "realizable", "effective", "params", "train")
_ON_DEADLINE = ("stop", "raise", "warn")
_CURVES = ("cubic", "linear")
_UNITS = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}
_NUMBER = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([KMGTP]?)\s*(?:FLOPS?)?\s*$")
_UNPRUNED = " (not pruned)"
_FLOOR = " (kept at its floor)"

#: pruned parameters with the least density pruning leaves each, or just their names (0)
Floors = Mapping[str, float] | set[str]


def _as_floors(pruned: Floors) -> Mapping[str, float]:
    return pruned if isinstance(pruned, Mapping) else dict.fromkeys(pruned, 0.0)


# settings whose change invalidates the epoch the limit was met
_LIMIT_SETTINGS = ("target", "count", "action")


def parse_flops(value: float | int | str) -> tuple[float, bool]:
    """``1.2e9``, ``"1.2G"``, ``"300M"``, ``"25%"`` → ``(number, is_fraction_of_dense)``.

    Raises:
        ValueError: for anything else (zero, negative, infinite, NaN, unknown units), naming
            the value and the accepted forms.
    """
    accepted = "a positive number of FLOPs (1.2e9, '1.2G', '300M') or a percentage ('25%')"
    if isinstance(value, bool):
        raise ValueError(f"`target` must be {accepted}, got {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"`target` must be {accepted}, got {value!r}")
        return float(value), False
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("%"):
            try:
                percent = float(text[:-1])
            except ValueError:
                percent = math.nan
            if not 0 < percent <= 100:
                raise ValueError(f"`target` percentage must be in (0, 100], got {value!r}")
            return percent / 100.0, True
        match = _NUMBER.match(text.upper())
        if match:
            number = float(match.group(1)) * _UNITS[match.group(2)]
            if 0 < number < math.inf:
                return number, False
    raise ValueError(f"`target` must be {accepted}, got {value!r}")


class BudgetError(ValueError):
    """A budget this model cannot have (a ``ValueError``).

    Above its dense value, below what pruning can reach, a bare number that looks like a
    percentage, or a model with nothing to budget. Raised when the fit (or
    :func:`~lightning_sparsity.prune_to_flops`) starts, once the dense value is known.
    """


def slack(value: float, allowed: float) -> float:
    """``(allowed - value) / allowed``: the fraction of what is allowed left (negative: over)."""
    return (allowed - value) / allowed


@dataclass(frozen=True)
class BudgetDecision:
    """What the budget says at one point.

    Attributes:
        epoch: completed epochs at the point.
        status: ``"within"`` (at or below the limit), ``"on_schedule"`` (``adjust``, before
            the limit is met: at or below the curve's value at this point), ``"over"`` (above
            what is allowed at this point, the deadline not passed) or ``"missed"`` (over,
            the deadline passed).
        value: the measured value.
        limit: the limit in absolute units (FLOPs, or nonzero parameters).
        scheduled: for ``adjust``, the value allowed at this point (the limit from the
            deadline on); else ``None``.
        freeze_pruning: stop changing the masks from now on.
        stop_training: stop the fit after this point.
        reason: machine-readable stop reason (``"finetune_done"``, ``"deadline_missed"``)
            or ``None``.
        message: a sentence for people; epochs in it are completed epochs, as in the files.
    """

    epoch: int
    status: Status
    value: float
    limit: float
    scheduled: float | None
    freeze_pruning: bool
    stop_training: bool
    reason: str | None
    message: str

    @property
    def allowed(self) -> float:
        """The limit in force at this point: the curve's value with ``adjust``, else the limit."""
        return self.limit if self.scheduled is None else self.scheduled

    @property
    def slack(self) -> float:
        """``(allowed - value) / allowed``: the fraction of :attr:`allowed` left (negative: over).

        A fraction (``-0.25``: 25% over), in the files, TensorBoard and messages alike.
        """
        return slack(self.value, self.allowed)


@dataclass(frozen=True)
class TrainingPlan:
    """Where ``FlopBudget(count="train", action="adjust")`` steers the training step.

    Attributes:
        step: the training step's sparse FLOPs per example to prune to now.
        end: the step cost the curve ends at (from ``by_epoch`` on).
        total: the fit's training FLOPs if the plan holds.
    """

    step: float
    end: float
    total: float


class FlopBudget(Settings):
    """A FLOP (or nonzero-parameter) limit with an optional deadline and an action.

    Args:
        target: absolute FLOPs (``1.2e9`` or ``"1.2G"``) or ``"N%"`` of the dense value.
            With ``count="params"`` the unit is nonzero parameters.
        by_epoch: the deadline: the limit must hold after this many completed epochs.
            Required for ``action="adjust"``.
        action: ``"stop"`` (freeze masks once within budget) or ``"adjust"`` (steer the
            pruner along a FLOP schedule that lands on the limit at the deadline).
        count: which number the limit is on: ``"sparse"`` FLOPs (default),
            ``"realizable"`` FLOPs (what kernels execute for the weights' patterns: 2:4,
            removed rows and channels), ``"effective"`` FLOPs (measured on the example input
            at each point), nonzero ``"params"``, or ``"train"``: the sparse training FLOPs
            of the whole fit (every batch's forward and backward, across resumes; the
            callback's ``train_flops``), ``"N%"`` of what the dense model's training would
            cost over ``max_epochs`` (the first epoch's examples each epoch). Its ``stop``
            ends the fit after the last epoch that fits: when the next epoch (as many
            examples, at the cost of the weights then) would go past the target. Its
            ``adjust`` prunes along a curve of the training step's cost, from dense at
            ``start_epoch`` to a level held from ``by_epoch`` to ``max_epochs``, the level
            chosen (again after every epoch) so the whole fit lands on the target: the
            sooner the model is sparse, the cheaper the run. A target below what pruning
            to the floors along that curve costs is refused before the first prune.
        finetune_epochs: with ``stop``, epochs to train after the limit is met before the
            fit stops; ``None`` trains to ``max_epochs``.
        on_deadline: past the deadline and still over: ``"stop"`` training, ``"raise"``,
            or ``"warn"`` and go on.
        start_epoch: with ``adjust``, where the FLOP curve starts from the dense value (it
            first moves at the end of the next epoch).
        curve: with ``adjust``, the shape of the FLOP schedule: ``"cubic"`` or ``"linear"``.

    Raises:
        ValueError: for any bad argument, all listed at once with the values allowed.
    """

    _SETTINGS = (
        "target",
        "by_epoch",
        "action",
        "count",
        "finetune_epochs",
        "on_deadline",
        "start_epoch",
        "curve",
    )

    def __init__(
        self,
        target: float | int | str,
        by_epoch: int | None = None,
        action: Action = "stop",
        *,
        count: Count = "sparse",
        finetune_epochs: int | None = None,
        on_deadline: OnDeadline = "stop",
        start_epoch: int = 0,
        curve: Curve = "cubic",
    ) -> None:
        errors: list[str] = []
        try:
            self._value, self._fraction = parse_flops(target)
        except ValueError as err:
            errors.append(str(err))

        check_choice("action", action, _ACTIONS, errors)
        check_choice("count", count, _COUNTS, errors)
        check_choice("on_deadline", on_deadline, _ON_DEADLINE, errors)
        check_choice("curve", curve, _CURVES, errors)
        check_int("by_epoch", by_epoch, errors, 1, optional=True)
        check_int("finetune_epochs", finetune_epochs, errors, optional=True)
        check_int("start_epoch", start_epoch, errors)
        if count == "train" and action == "stop" and (by_epoch, finetune_epochs) != (None, None):
            errors.append(
                "count='train' with action='stop' ends the fit when the compute is spent:"
                f" `by_epoch` and `finetune_epochs` do not apply (got {by_epoch!r},"
                f" {finetune_epochs!r})"
            )
        elif count == "train" and finetune_epochs is not None:
            errors.append(
                "count='train' with action='adjust' plans the pruning over the whole fit:"
                f" `finetune_epochs` does not apply (got {finetune_epochs!r})"
            )
        if action == "adjust" and count not in ("sparse", "train"):
            errors.append(
                "action='adjust' steers the pruner by sparse FLOPs (count='sparse') or by the"
                f" fit's training FLOPs (count='train'); got count={count!r}"
            )
        if action == "adjust" and by_epoch is None:
            errors.append("`by_epoch` is required with action='adjust' (the deadline to land on)")
        if (
            isinstance(by_epoch, int)
            and isinstance(start_epoch, int)
            and not isinstance(by_epoch, bool)
            and by_epoch <= start_epoch
        ):
            errors.append(f"`by_epoch` ({by_epoch}) must be after `start_epoch` ({start_epoch})")
        if errors:
            raise ValueError("FlopBudget: " + "; ".join(errors))
        # a bare number (20, "20", 0.2) may be a percentage without its "%"
        self._bare = not getattr(self, "_fraction", True) and (
            isinstance(target, (int, float))
            or re.fullmatch(r"\s*[0-9.eE+-]+\s*", target) is not None
        )
        self.target = target
        self.by_epoch = by_epoch
        self.action: Action = action
        self.count: Count = count
        self.finetune_epochs = finetune_epochs
        self.on_deadline: OnDeadline = on_deadline
        self.start_epoch = start_epoch
        self.curve: Curve = curve
        # state (checkpointed)
        self.dense: float | None = None
        self.reached_epoch: int | None = None

    # ------------------------------------------------------------------ values

    @property
    def counts_weight_flops(self) -> bool:
        """Whether the limit is on FLOPs the weights alone decide: sparse or realizable.

        Dense FLOPs are then its reference, and pruning weights is what moves it.
        """
        return self.count in ("sparse", "realizable")

    @property
    def unit(self) -> str:
        """What the limit counts: ``"sparse FLOPs"``, ``"effective FLOPs"`` or parameters."""
        return {
            "sparse": "sparse FLOPs",
            "effective": "effective FLOPs",
            "realizable": "realizable FLOPs",
            "params": "nonzero parameters",
            "train": "training FLOPs",
        }[self.count]

    @property
    def _dense_unit(self) -> str:
        """The unit of the dense value: ``"FLOPs"``, ``"parameters"``, ``"realizable FLOPs"``."""
        return self.unit.replace("sparse ", "").replace("nonzero ", "")

    def value(self, report: SparsityReport) -> float:
        """The measured value in ``report`` (which must hold effective FLOPs for ``effective``).

        Raises:
            ValueError: if the report lacks the value (meta device, or no activations).
        """
        total = report.total
        found = {
            "sparse": total.flops_sparse,
            "realizable": total.flops_realizable,
            "params": total.params_nonzero,
            "effective": total.flops_effective,
        }[self.count]
        if found is None:
            raise ValueError(
                f"FlopBudget(count={self.count!r}) needs the {self.unit} of the model; the"
                " report has none (meta device, or counted without activations)"
            )
        return float(found)

    def reference(self, report: SparsityReport) -> float:
        """What ``"N%"`` refers to: dense FLOPs, all parameters, or the effective FLOPs now."""
        if self.counts_weight_flops:
            return float(report.total.flops)
        if self.count == "params":
            return float(report.total.params)
        return self.value(report)

    def floor(self, report: SparsityReport, cost: CostModel, pruned: Floors | None) -> float:
        """The lowest value pruning can reach.

        Args:
            report: the model's report.
            cost: the cost model of its trace.
            pruned: the parameters the pruner may zero, each with the least density it
                leaves (``MagnitudePruner.floor_densities``; a set of names: down to zero);
                ``None`` when another pruner (any weight may become zero).
        """
        if self.count == "effective":
            return 0.0
        if pruned is None:
            return 0.0 if self.count == "params" else float(cost.fixed_flops)
        floors = _as_floors(pruned)
        if self.count == "params":
            removable = sum(cost.numel[n] * (1.0 - d) for n, d in floors.items())
            return float(report.total.params - round(removable))
        return cost.floor(floors)

    def _floor_parts(self, cost: CostModel, pruned: Floors | None) -> list[tuple[str, float]]:
        """What makes up the FLOP floor, largest first (weight-free ops, weights, floors)."""
        parts = [("ops without a weight operand", float(cost.fixed_flops))]
        floors = None if pruned is None else _as_floors(pruned)
        for name, per in cost.flops_per_nonzero.items():
            if floors is None:
                continue
            if name not in floors:
                parts.append((name + _UNPRUNED, float(per * cost.numel[name])))
            elif floors[name] > 0:
                parts.append((name + _FLOOR, float(per * cost.numel[name] * floors[name])))
        return sorted((p for p in parts if p[1] > 0), key=lambda p: -p[1])

    def start(self, report: SparsityReport, cost: CostModel | None, pruned: Floors | None) -> float:
        """Set the dense reference from the starting point and check the limit can be met.

        Args:
            report: the model at the start (with effective FLOPs for ``count="effective"``).
            cost: the cost model of the trace (``None``: no floor check).
            pruned: see :meth:`floor`.

        Returns:
            The limit.

        Raises:
            BudgetError: if the model has no dense value to budget, or the limit is above
                it or below what pruning can reach; the message names what makes up the
                floor, and suggests ``"N%"`` for a bare number that looks like a percentage.
        """
        floor = 0.0 if cost is None else self.floor(report, cost, pruned)
        parts = self._floor_parts(cost, pruned) if cost is not None else []
        return self.check_reachable(self.reference(report), floor, parts)

    def _percent_hint(self) -> str:
        if self._fraction or self._value > 100:
            return ""
        return f"; did you mean '{self._value * 100 if self._value <= 1 else self._value:g}%'?"

    def check_reachable(
        self, dense: float, floor: float, parts: Sequence[tuple[str, float]] = ()
    ) -> float:
        """Set the dense reference and check the limit against the lowest reachable value.

        Args:
            dense: the dense model's value.
            floor: the lowest value pruning can reach (see :meth:`floor`).
            parts: what makes up the floor, named, for the message.

        Returns:
            The limit.

        Raises:
            BudgetError: if ``dense`` is 0, or the limit is above it or below ``floor``.
        """
        if dense <= 0:
            raise BudgetError(
                f"FlopBudget: the model has no {self._dense_unit} to budget (dense:"
                f" {count(dense)}), so the target {self.target!r} means nothing; drop the"
                " budget, or count what the model has (count='params')"
            )
        self.dense = dense
        limit = self.limit
        if self._bare and self._value <= 100 and limit < 0.01 * dense:
            raise BudgetError(
                f"FlopBudget: target {self.target!r} is {count(limit)} {self.unit},"
                f" {100 * limit / dense:.2g}% of the dense model's {count(dense)}"
                f"{self._percent_hint()} (with a unit, e.g. '{self._value:g} FLOPs' or"
                f" '{self._value:g}K', a number is taken as an absolute count)"
            )
        if limit < floor:
            message = (
                f"FlopBudget: target {self.target!r} ({count(limit)} {self.unit}) is"
                f" unreachable: even with every prunable weight pruned as far as the pruner allows"
                f" the model has"
                f" {count(floor)} {self.unit}; the lowest reachable target is"
                f" {floor / dense:.2%} of dense"
            )
            if parts and self.counts_weight_flops:
                listed = "; ".join(f"{n}: {count(v)}" for n, v in parts[:6])
                more = f" and {len(parts) - 6} more" if len(parts) > 6 else ""
                unpruned = [n.removesuffix(_UNPRUNED) for n, _ in parts if n.endswith(_UNPRUNED)]
                named = ", ".join(repr(re.escape(n)) for n in unpruned[:6])
                named += ", ..." if len(unpruned) > 6 else ""
                hints = []
                if unpruned:
                    hints.append(
                        f"prune those weights too, e.g. MagnitudePruner(parameters=[{named}])"
                        " (regexes over parameter names) or include_types / include /"
                        " keep_first_dense=False"
                    )
                if any(n.endswith(_FLOOR) for n, _ in parts):
                    hints.append(
                        "lower the pruner's per-layer floors (min_density, max_sparsity; an"
                        " N:M pattern keeps N of every M)"
                    )
                message += f" ({listed}{more}); " + ", or ".join([*hints, "raise the target"])
            raise BudgetError(message + self._percent_hint())
        return limit

    @property
    def limit(self) -> float:
        """The limit in absolute units (after the dense reference is known).

        Raises:
            RuntimeError: before :meth:`start` / :meth:`check_reachable`.
            BudgetError: if the limit is above the dense value.
        """
        if self.dense is None:
            raise RuntimeError("FlopBudget: the dense reference is not known yet; call start()")
        limit = self._value * self.dense if self._fraction else self._value
        if limit > self.dense:
            raise BudgetError(
                f"FlopBudget: target {self.target!r} ({count(limit)}) is above the dense"
                f" model's {self._dense_unit}"
                f" ({count(self.dense)}); nothing to prune"
            )
        return limit

    def scheduled(self, epoch: int) -> float:
        """With ``adjust``: the value allowed after ``epoch`` completed epochs.

        Raises:
            RuntimeError: before the dense reference is known.
        """
        limit = self.limit
        assert self.dense is not None
        assert self.by_epoch is not None
        return ramp(epoch, self.start_epoch, self.by_epoch, self.dense, limit, self.curve)

    def deadline_warning(self, max_epochs: int | None) -> str | None:
        """A sentence when the deadline comes after the fit's last epoch, else ``None``."""
        if self.by_epoch is None or max_epochs is None or max_epochs < 0:
            return None
        if self.by_epoch > max_epochs:
            lands = " the FLOP curve will not reach the limit;" if self.action == "adjust" else ""
            return (
                f"FlopBudget(by_epoch={self.by_epoch}) is after the fit's last epoch"
                f" (max_epochs={max_epochs}):{lands} set by_epoch <= max_epochs"
            )
        return None

    # ------------------------------------------------------------------ decisions

    def pruning_allowed(self, epoch: int = 0) -> bool:
        """Whether pruning may go on: ``False`` once the limit was met with ``action="stop"``.

        Pass it to Lightning's ``ModelPruning(apply_pruning=budget.pruning_allowed)`` so the
        budget freezes that callback's masks too.
        """
        return not (self.action == "stop" and self.reached_epoch is not None)

    # ------------------------------------------------------------------ training compute

    def _planned(
        self, end: float, epoch: int, epochs: int, dense_step: float, step_now: float
    ) -> list[float]:
        """The step cost per example of each epoch after ``epoch`` under a plan ending at ``end``.

        The curve runs from ``dense_step`` at ``start_epoch`` to ``end`` at ``by_epoch`` (and
        stays there); the weights cannot grow back, so no epoch costs more than ``step_now``.
        """
        assert self.by_epoch is not None
        return [
            min(step_now, ramp(t, self.start_epoch, self.by_epoch, dense_step, end, self.curve))
            for t in range(epoch, epochs)
        ]

    def lowest_training_fraction(self, epochs: int, dense_step: float, floor_step: float) -> float:
        """The least a fit of ``epochs`` epochs can cost, as a fraction of its dense run.

        Pruning along the curve down to the pruner's floors (``floor_step`` per example).
        """
        planned = self._planned(floor_step, 0, epochs, dense_step, dense_step)
        return sum(planned) / (epochs * dense_step)

    def check_training(
        self,
        epochs: int | None,
        dense_step: float,
        floor_step: float,
        epoch_dense: float | None,
    ) -> None:
        """``count="train"``: set the dense run's total and check the target can be met.

        With ``adjust``, the least the fit can cost is pruning along the curve down to the
        floors (:meth:`lowest_training_fraction`); with ``stop``, nothing (stopping early).

        Args:
            epochs: the fit's epochs (``max_epochs``); ``None`` for a fit of unknown length
                (an absolute ``stop`` target: no dense run to compare with).
            dense_step: a training step's dense FLOPs per example.
            floor_step: the same with every pruned weight at the pruner's floor.
            epoch_dense: the first epoch's dense training FLOPs; ``None`` before it ran
                (then only a ``"N%"`` target is checked, and no reference is kept).

        Raises:
            BudgetError: naming the lowest reachable target.
        """
        if epochs is None:
            if epoch_dense is not None:
                self.dense = math.inf  # no dense run: an absolute target, nothing above it
            return
        lowest = 0.0
        if self.action == "adjust":
            lowest = self.lowest_training_fraction(epochs, dense_step, floor_step)
        if epoch_dense is None and not self._fraction:
            return  # an absolute target: checked when the first epoch's examples are known
        dense = (dense_step if epoch_dense is None else epoch_dense) * epochs
        limit = self._value * dense if self._fraction else self._value
        if limit < lowest * dense:
            given = "" if self._fraction else f" ({count(limit)} FLOPs)"
            raise BudgetError(
                f"FlopBudget(count='train', action='adjust'): target {self.target!r}{given} is"
                f" unreachable: pruning along the {self.curve} curve (dense until epoch"
                f" {self.start_epoch}, at the pruner's floors from epoch {self.by_epoch} to"
                f" max_epochs={epochs}) the fit costs at least {lowest:.2%} of its dense"
                f" run's training ({count(lowest * dense)} FLOPs); the lowest reachable target"
                f" is {lowest:.2%} of dense: prune sooner (an earlier by_epoch or start_epoch),"
                " lower the pruner's floors (min_density), or raise the target"
            )
        if epoch_dense is not None:
            self.check_reachable(dense, lowest * dense)

    def plan_training(
        self,
        spent: float,
        epoch: int,
        examples: int,
        epochs: int,
        dense_step: float,
        step_now: float,
        floor_step: float,
    ) -> TrainingPlan:
        """``count="train"``, ``action="adjust"``: the step cost to prune to after ``epoch``.

        The fit's training FLOPs are ``spent`` so far, and each of the ``epochs - epoch``
        epochs left runs ``examples`` examples at the step cost of the weights then. The
        curve's end (the step cost from ``by_epoch`` on) is chosen, between the floor and the
        dense step, so the whole fit lands on the limit: what was spent is known, the rest
        planned; decided again after every epoch, so what the past missed the rest makes up.

        Args:
            spent: training FLOPs so far.
            epoch: completed epochs.
            examples: examples per epoch.
            epochs: the fit's epochs (``max_epochs``).
            dense_step: a training step's dense FLOPs per example.
            step_now: its sparse FLOPs per example at the weights now.
            floor_step: the same with every pruned weight at the pruner's floor.
        """
        left = self.limit - spent

        def cost(end: float) -> float:
            return examples * sum(self._planned(end, epoch, epochs, dense_step, step_now))

        low, high = floor_step, dense_step
        if cost(high) <= left:
            end = high
        elif cost(low) >= left:
            end = low
        else:
            for _ in range(100):  # bisection: the cost grows with the end
                middle = (low + high) / 2
                low, high = (middle, high) if cost(middle) <= left else (low, middle)
            end = low
        planned = self._planned(end, epoch, epochs, dense_step, step_now)
        return TrainingPlan(planned[0] if planned else step_now, end, spent + cost(end))

    def evaluate_training(
        self,
        spent: float,
        next_epoch: float,
        epoch: int,
        plan: TrainingPlan | None = None,
        epochs: int | None = None,
    ) -> BudgetDecision:
        """``count="train"``: go on while ``spent + next_epoch`` fits in the limit.

        Args:
            spent: the training FLOPs of the fit so far.
            next_epoch: what the next epoch would cost.
            epoch: completed epochs.
            plan: with ``adjust``, the plan this epoch's prune followed (for the message).
            epochs: the fit's epochs, if known: after the last there is no next one.
        """
        limit = self.limit
        done = spent + next_epoch > limit and (epochs is None or epoch < epochs)
        if spent > limit:
            status: Status = "missed"
            message = f"training compute over budget: {count(spent)} > {count(limit)} FLOPs"
        else:
            status = "within"
            message = f"training compute: {count(spent)} of {count(limit)} FLOPs spent"
        if plan is not None:
            over = plan.total > limit * (1 + 1e-9)
            message += (
                f"; planned: {count(plan.total)} in all"
                + (" (over, even at the pruner's floors)" if over else "")
                + f", the step at {count(plan.step)} FLOPs per example next"
            )
        if done:
            message += f"; the next epoch ({count(next_epoch)}) would go past the budget, stopping"
        if done and self.reached_epoch is None:
            self.reached_epoch = epoch
        return BudgetDecision(
            epoch,
            status,
            spent,
            limit,
            None,
            False,
            done,
            "compute_spent" if done else None,
            message,
        )

    def evaluate(self, value: float, epoch: int) -> BudgetDecision:
        """Decide after ``epoch`` completed epochs on the measured ``value``.

        Raises:
            RuntimeError: before the dense reference is known.
            ValueError: if ``value`` is not a finite number.
        """
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise ValueError(f"FlopBudget.evaluate: `value` must be a finite number, got {value!r}")
        limit = self.limit
        scheduled = self.scheduled(epoch) if self.action == "adjust" else None
        numbers = f"{count(value)} {{}} {count(limit)} {self.unit}"
        if value <= limit:
            if self.reached_epoch is None:
                self.reached_epoch = epoch
            done = epoch - self.reached_epoch
            stop = self.finetune_epochs is not None and done >= self.finetune_epochs
            message = f"within budget since epoch {self.reached_epoch}: " + numbers.format("<=")
            if stop:
                message += f"; fine-tuned {done} epochs, stopping"
            return BudgetDecision(
                epoch,
                "within",
                value,
                limit,
                scheduled,
                self.action == "stop",
                stop,
                "finetune_done" if stop else None,
                message,
            )
        if self.by_epoch is not None and epoch >= self.by_epoch:
            message = (
                f"FLOP budget missed: {numbers.format('>')} at epoch {epoch}"
                f" (deadline: epoch {self.by_epoch})"
            )
            stop = self.on_deadline == "stop"
            return BudgetDecision(
                epoch, "missed", value, limit, scheduled, False, stop, "deadline_missed", message
            )
        if scheduled is None:
            message = "over budget: " + numbers.format(">")
            return BudgetDecision(
                epoch, "over", value, limit, scheduled, False, False, None, message
            )
        # adjust, before the deadline: what the curve allows now is the limit in force
        status: Status = "on_schedule" if value <= scheduled else "over"
        message = (
            f"{'on schedule' if status == 'on_schedule' else 'over budget'}: {count(value)}"
            f" {'<=' if status == 'on_schedule' else '>'} {count(scheduled)} {self.unit} allowed"
            f" at epoch {epoch} (limit {count(limit)} by epoch {self.by_epoch})"
        )
        return BudgetDecision(epoch, status, value, limit, scheduled, False, False, None, message)

    # ------------------------------------------------------------------ checkpoints

    def reset(self) -> None:
        """Forget the dense FLOPs and when the limit was reached: a new fit starts clean."""
        self.dense = None
        self.reached_epoch = None

    def state_dict(self) -> dict[str, Any]:
        """Plain values: the dense reference, the epoch the limit was met, the settings."""
        return {
            "version": 2,
            "dense": self.dense,
            "reached_epoch": self.reached_epoch,
            "settings": self.settings(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; also the first version's (0-based epochs).

        The epoch the limit was met is dropped when the target, count or action changed
        since the state was saved (it is then decided again from the next point).
        """
        self.dense = state.get("dense")
        reached = state.get("reached_epoch")
        if "version" not in state and reached is not None:  # v1: 0-based epoch index
            reached += 1
        saved = state.get("settings")
        if saved is not None and any(
            saved.get(k) != v for k, v in self.settings().items() if k in _LIMIT_SETTINGS
        ):
            reached = None
        self.reached_epoch = reached
