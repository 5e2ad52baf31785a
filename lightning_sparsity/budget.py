"""``FlopBudget``: a FLOP (or nonzero-parameter) limit, a deadline, and what to do.

Pure logic, no Lightning: the callback feeds it one measured value per epoch end and acts
on the :class:`BudgetDecision` it returns. FLOPs count 2 per MAC.

* ``action="stop"``: once the measured value is within the limit, pruning freezes; training
  goes on for ``finetune_epochs`` more epochs (``None``: until ``max_epochs``) and then
  stops. Past the deadline still over the limit, ``on_deadline`` says what happens.
* ``action="adjust"``: the FLOPs allowed at each epoch end follow a curve in FLOP space from
  the dense model at ``start_epoch`` to the limit at ``by_epoch`` (cubic, as Zhu & Gupta's
  AGP schedule: ``F_t = F_b + (F_0 − F_b)(1 − (t − t0)/(t1 − t0))³``), and the pruner
  picks the global magnitude threshold whose sparse FLOPs land there.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from lightning_sparsity._checks import check_int

__all__ = ["BudgetDecision", "FlopBudget", "parse_flops"]

Action = Literal["stop", "adjust"]
Count = Literal["sparse", "effective", "params"]
OnDeadline = Literal["stop", "raise", "warn"]
Curve = Literal["cubic", "linear"]
GuardAction = Literal["pause", "restore"]

_ACTIONS = ("stop", "adjust")
_COUNTS = ("sparse", "effective", "params")
_ON_DEADLINE = ("stop", "raise", "warn")
_CURVES = ("cubic", "linear")
_GUARD_ACTIONS = ("pause", "restore")
_UNITS = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}
_NUMBER = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([KMGTP]?)\s*(?:FLOPS?)?\s*$")


def parse_flops(value: float | int | str) -> tuple[float, bool]:
    """``1.2e9``, ``"1.2G"``, ``"300M"``, ``"25%"`` → ``(number, is_fraction_of_dense)``.

    Raises:
        ValueError: for anything else, naming the value and the accepted forms.
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
            if number > 0:
                return number, False
    raise ValueError(f"`target` must be {accepted}, got {value!r}")


@dataclass(frozen=True)
class BudgetDecision:
    """What the budget says at one epoch end.

    Attributes:
        status: ``"over"``, ``"within"`` or ``"missed"`` (over, deadline passed).
        limit: the limit in absolute units (FLOPs, or nonzero parameters).
        scheduled: for ``adjust``, the value allowed at this epoch end; else ``None``.
        freeze_pruning: stop changing the masks from now on.
        stop_training: stop the fit after this epoch.
        reason: machine-readable stop reason (``"finetune_done"``, ``"deadline_missed"``)
            or ``None``.
        message: a sentence for people.
    """

    status: Literal["over", "within", "missed"]
    limit: float
    scheduled: float | None
    freeze_pruning: bool
    stop_training: bool
    reason: str | None
    message: str


class FlopBudget:
    """A FLOP (or nonzero-parameter) limit with an optional deadline and an action.

    Args:
        target: absolute FLOPs (``1.2e9`` or ``"1.2G"``) or ``"N%"`` of the dense value.
            With ``count="params"`` the unit is nonzero parameters.
        by_epoch: the deadline: the (0-based) epoch at whose end the limit must hold.
            Required for ``action="adjust"``.
        action: ``"stop"`` (freeze masks once within budget) or ``"adjust"`` (steer the
            pruner along a FLOP schedule that lands on the limit at the deadline).
        count: which number the limit is on: ``"sparse"`` FLOPs (default), ``"effective"``
            FLOPs (measured on the example input each epoch), or nonzero ``"params"``.
        finetune_epochs: with ``stop``, epochs to train after the limit is met before the
            fit stops; ``None`` trains to ``max_epochs``.
        on_deadline: past the deadline and still over: ``"stop"`` training, ``"raise"``,
            or ``"warn"`` and go on.
        start_epoch: with ``adjust``, the first epoch whose end prunes.
        curve: with ``adjust``, the shape of the FLOP schedule: ``"cubic"`` or ``"linear"``.
        monitor: a logged metric (e.g. ``"val_acc"``) guarding the pruning; optional.
        min_value: the guard: ``monitor`` must stay >= this.
        max_drop: the guard: ``monitor`` must not fall more than this below its best.
        guard_action: when the guard trips: ``"pause"`` pruning until it recovers, or
            ``"restore"`` the last masks that met it.

    Raises:
        ValueError: for any bad argument, all listed at once with the values allowed.
    """

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
        monitor: str | None = None,
        min_value: float | None = None,
        max_drop: float | None = None,
        guard_action: GuardAction = "pause",
    ) -> None:
        errors: list[str] = []
        try:
            self._value, self._fraction = parse_flops(target)
        except ValueError as err:
            errors.append(str(err))

        def choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
            if value not in allowed:
                errors.append(f"`{name}` must be one of {allowed}, got {value!r}")

        choice("action", action, _ACTIONS)
        choice("count", count, _COUNTS)
        choice("on_deadline", on_deadline, _ON_DEADLINE)
        choice("curve", curve, _CURVES)
        choice("guard_action", guard_action, _GUARD_ACTIONS)
        check_int("by_epoch", by_epoch, errors, optional=True)
        check_int("finetune_epochs", finetune_epochs, errors, optional=True)
        check_int("start_epoch", start_epoch, errors)
        if action == "adjust" and count != "sparse":
            errors.append(
                f"action='adjust' steers the pruner by sparse FLOPs; `count` must be 'sparse',"
                f" got {count!r}"
            )
        if monitor is not None and not isinstance(monitor, str):
            errors.append(f"`monitor` must be a metric name (str) or None, got {monitor!r}")
        if min_value is not None and (
            isinstance(min_value, bool) or not isinstance(min_value, (int, float))
        ):
            errors.append(f"`min_value` must be a number or None, got {min_value!r}")
        if action == "adjust" and by_epoch is None:
            errors.append("`by_epoch` is required with action='adjust' (the deadline to land on)")
        if (
            isinstance(by_epoch, int)
            and isinstance(start_epoch, int)
            and by_epoch is not None
            and by_epoch < start_epoch
        ):
            errors.append(
                f"`by_epoch` ({by_epoch}) must not be before `start_epoch` ({start_epoch})"
            )
        if monitor is None and (min_value is not None or max_drop is not None):
            errors.append("`min_value` / `max_drop` need `monitor` (the metric they guard)")
        if monitor is not None and min_value is None and max_drop is None:
            errors.append(f"`monitor={monitor!r}` needs `min_value` or `max_drop`")
        if max_drop is not None and (
            isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or max_drop < 0
        ):
            errors.append(f"`max_drop` must be a number >= 0, got {max_drop!r}")
        if errors:
            raise ValueError("FlopBudget: " + "; ".join(errors))
        self.target = target
        self.by_epoch = by_epoch
        self.action: Action = action
        self.count: Count = count
        self.finetune_epochs = finetune_epochs
        self.on_deadline: OnDeadline = on_deadline
        self.start_epoch = start_epoch
        self.curve: Curve = curve
        self.monitor = monitor
        self.min_value = min_value
        self.max_drop = max_drop
        self.guard_action: GuardAction = guard_action
        # state (checkpointed)
        self.dense: float | None = None
        self.reached_epoch: int | None = None
        self.best_metric: float | None = None
        self.stopping_reason: str | None = None
        self.stopping_message: str | None = None

    # ------------------------------------------------------------------ values

    @property
    def _unit(self) -> str:
        return {"sparse": "FLOPs", "effective": "effective FLOPs", "params": "parameters"}[
            self.count
        ]

    def resolve(self, dense: float) -> float:
        """The limit in absolute units, given the dense model's value.

        Raises:
            ValueError: if the limit is above the dense value.
        """
        limit = self._value * dense if self._fraction else self._value
        if limit > dense:
            raise ValueError(
                f"FlopBudget: target {self.target!r} ({limit:,.0f}) is above the dense model's"
                f" {self._unit} ({dense:,.0f}); nothing to prune"
            )
        return limit

    def check_reachable(self, dense: float, floor: float) -> float:
        """Set the dense value and check the limit against the lowest reachable value.

        Args:
            dense: the dense model's value.
            floor: the value with every prunable weight zero (weight-free FLOPs and
                parameters that are not pruned).

        Returns:
            The limit.

        Raises:
            ValueError: if the limit is above dense or below ``floor``.
        """
        self.dense = dense
        limit = self.resolve(dense)
        if limit < floor:
            raise ValueError(
                f"FlopBudget: target {self.target!r} ({limit:,.0f}) is unreachable: even with"
                f" every prunable weight zero the model has {floor:,.0f} {self._unit};"
                f" the lowest reachable target is {floor / dense:.2%} of dense"
            )
        return limit

    def scheduled(self, epoch: int) -> float:
        """With ``adjust``: the value allowed at the end of ``epoch``.

        Raises:
            RuntimeError: before :meth:`check_reachable` set the dense value.
        """
        if self.dense is None:
            raise RuntimeError("FlopBudget.scheduled() needs check_reachable() first")
        dense, limit = self.dense, self.resolve(self.dense)
        assert self.by_epoch is not None
        if epoch < self.start_epoch:
            return dense
        if epoch >= self.by_epoch:
            return limit
        # progress 1 at by_epoch; the first pruning step (start_epoch) already moves
        span = self.by_epoch - self.start_epoch + 1
        progress = (epoch - self.start_epoch + 1) / span
        left = 1 - progress
        shape = left**3 if self.curve == "cubic" else left
        return limit + (dense - limit) * shape

    # ------------------------------------------------------------------ decisions

    def pruning_allowed(self, epoch: int) -> bool:
        """Whether pruning may go on: ``False`` once the limit was met with ``action="stop"``.

        Pass it to Lightning's ``ModelPruning(apply_pruning=budget.pruning_allowed)`` so the
        budget freezes that callback's masks too.
        """
        return not (self.action == "stop" and self.reached_epoch is not None)

    def guard_ok(self, metric: float | None) -> bool:
        """Whether the monitored metric allows pruning (True without a guard)."""
        if self.monitor is None or metric is None:
            return True
        if self.best_metric is None or metric > self.best_metric:
            self.best_metric = metric
        if self.min_value is not None and metric < self.min_value:
            return False
        return not (self.max_drop is not None and metric < self.best_metric - self.max_drop)

    def evaluate(self, value: float, epoch: int) -> BudgetDecision:
        """Decide after the end of ``epoch`` on the measured ``value``.

        Raises:
            RuntimeError: before :meth:`check_reachable` set the dense value.
        """
        if self.dense is None:
            raise RuntimeError("FlopBudget.evaluate() needs check_reachable() first")
        limit = self.resolve(self.dense)
        scheduled = self.scheduled(epoch) if self.action == "adjust" else None
        unit = "nonzero parameters" if self.count == "params" else f"{self.count} FLOPs"
        if value <= limit:
            if self.reached_epoch is None:
                self.reached_epoch = epoch
            done = epoch - self.reached_epoch
            stop = self.finetune_epochs is not None and done >= self.finetune_epochs
            reason = "finetune_done" if stop else None
            message = (
                f"within budget since epoch {self.reached_epoch}: {value:,.0f} <= {limit:,.0f}"
                f" {unit}" + (f"; fine-tuned {done} epochs, stopping" if stop else "")
            )
            if stop:
                self.stopping_reason, self.stopping_message = reason, message
            return BudgetDecision(
                "within", limit, scheduled, self.action == "stop", stop, reason, message
            )
        if self.by_epoch is not None and epoch >= self.by_epoch:
            message = (
                f"FLOP budget missed: {value:,.0f} > {limit:,.0f} {unit} at the end of epoch"
                f" {epoch} (deadline: epoch {self.by_epoch})"
            )
            stop = self.on_deadline == "stop"
            if stop:
                self.stopping_reason, self.stopping_message = "deadline_missed", message
            return BudgetDecision(
                "missed", limit, scheduled, False, stop, "deadline_missed", message
            )
        message = f"over budget: {value:,.0f} > {limit:,.0f} {unit}"
        return BudgetDecision("over", limit, scheduled, False, False, None, message)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Plain values: dense value, the epoch the budget was met, the guard's best."""
        return {
            "dense": self.dense,
            "reached_epoch": self.reached_epoch,
            "best_metric": self.best_metric,
            "stopping_reason": self.stopping_reason,
            "stopping_message": self.stopping_message,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (keys added later default to ``None``)."""
        self.dense = state.get("dense")
        self.reached_epoch = state.get("reached_epoch")
        self.best_metric = state.get("best_metric")
        self.stopping_reason = state.get("stopping_reason")
        self.stopping_message = state.get("stopping_message")
