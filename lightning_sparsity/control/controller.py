"""The Lightning-free core of the callback: one point of the curve at a time.

:class:`SparsityController` owns what happens at a point (``t`` completed epochs): prune
for the schedule or the budget's FLOP curve (unless the guard holds it back or the budget
froze the masks), measure through a cached :class:`~lightning_sparsity.SparsityMeter`,
evaluate the budget, and record a typed :class:`HistoryPoint`. It returns plain data
(:class:`Outcome`); the Lightning callback only calls it from hooks, agrees across ranks,
logs, and stops the trainer.

Time: ``epoch`` is always completed epochs (``0`` = before training); ``global_step`` is
optimizer steps; ``step`` is the x value the point is logged at (one of the two).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

from torch import Tensor, nn

from lightning_sparsity._checks import check_int
from lightning_sparsity._shards import nonfinite
from lightning_sparsity.control.budget import BudgetDecision, FlopBudget, TrainingPlan, slack
from lightning_sparsity.control.compute import TrainCompute
from lightning_sparsity.control.guard import GuardCheck, MetricGuard
from lightning_sparsity.control.rewind import Rewind, check_rewind, rewind_epoch_of
from lightning_sparsity.counting import CostModel, SparsityMeter, SparsityReport, measure
from lightning_sparsity.pruning import MagnitudePruner

__all__ = [
    "HistoryPoint",
    "Outcome",
    "SparsityController",
    "check_pieces",
    "nonfinite_parameters",
]

Agree = Callable[[bool], bool]
Gather = Callable[[float], list[float]]


def _same(flag: bool) -> bool:
    return flag


def _alone(value: float) -> list[float]:
    return [value]


@dataclass(frozen=True)
class HistoryPoint:
    """One point of the curves: the model after ``epoch`` completed epochs.

    Attributes:
        epoch: completed epochs (``0``: before training).
        step: the x value the point is logged at (``epoch`` or ``global_step``).
        global_step: optimizer steps done (``None`` in histories from version 1).
        per: ``"example"`` or ``"batch"``: what the FLOPs are counted for.
        flops: dense FLOPs.
        flops_sparse: FLOPs skipping multiplications by zero weights.
        flops_realizable: what kernels execute for the weights' patterns (2:4, removed rows
            and input channels), when counted.
        params: parameters (tied ones once).
        params_nonzero: nonzero parameters.
        target_sparsity: the schedule's target for the pruner's weights, if it has one.
        pruned_sparsity: the fraction of zeros among the pruner's weights.
        pruning: what the pruner did at this point: ``"pruned"``, ``"paused"`` (the guard
            held it), ``"restored"`` (the guard restored the last good masks), ``"frozen"``
            (the budget froze the masks) or ``None`` (nothing pruned: not due, or the masks
            already where the schedule or the budget asks).
        guard_value: the guarded metric when the guard was asked.
        budget_count: what the budget counts (``"sparse"``, ``"effective"``, ``"params"``,
            ``"train"``: the training FLOPs since the fit began).
        budget_value: the budget's measured value.
        budget_limit: the budget's limit.
        budget_scheduled: with ``action="adjust"``, the value allowed at this point.
        budget_status: ``"within"``, ``"on_schedule"``, ``"over"`` or ``"missed"`` (see
            :class:`~lightning_sparsity.BudgetDecision`).
        train_flops: sparse training FLOPs of the epoch ending at this point (every
            training batch that ran: examples × the step's forward and backward, over all
            ranks; :mod:`~lightning_sparsity.control.compute`); ``0`` at the first point.
        train_flops_dense: the same with dense kernels.
        train_flops_total: sparse training FLOPs since the fit began (across resumes).
        train_flops_dense_total: the same with dense kernels.
    """

    VERSION: ClassVar[int] = 2

    epoch: int
    step: int
    global_step: int | None
    per: str
    flops: int | float
    flops_sparse: int | float
    params: int
    params_nonzero: int
    target_sparsity: float | None = None
    pruned_sparsity: float | None = None
    flops_realizable: int | float | None = None
    pruning: str | None = None
    guard_value: float | None = None
    budget_count: str | None = None
    budget_value: float | None = None
    budget_limit: float | None = None
    budget_scheduled: float | None = None
    budget_status: str | None = None
    train_flops: float | None = None
    train_flops_dense: float | None = None
    train_flops_total: float | None = None
    train_flops_dense_total: float | None = None

    @property
    def flops_ratio(self) -> float:
        """``flops_sparse / flops`` (1.0 for a model without FLOPs)."""
        return self.flops_sparse / self.flops if self.flops else 1.0

    @property
    def param_sparsity(self) -> float:
        """The fraction of zero parameters."""
        return 1.0 - self.params_nonzero / self.params if self.params else 0.0

    @property
    def budget_slack(self) -> float | None:
        """The fraction of the limit in force left (negative: over); see ``BudgetDecision``.

        The limit in force is the scheduled value with ``action="adjust"``, else the limit.
        """
        if self.budget_limit is None or self.budget_value is None:
            return None
        allowed = self.budget_limit if self.budget_scheduled is None else self.budget_scheduled
        return slack(self.budget_value, allowed)

    _DERIVED: ClassVar[tuple[str, ...]] = ("flops_ratio", "param_sparsity", "budget_slack")

    def to_dict(self) -> dict[str, Any]:
        """Plain values, derived columns included (the row of the history files)."""
        row = asdict(self)
        row.update({name: getattr(self, name) for name in self._DERIVED})
        return row

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> HistoryPoint:
        """Read :meth:`to_dict` (derived and unknown keys are ignored; v1 rows load too)."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in row.items() if k in names}
        values.setdefault("global_step", None)
        return cls(**values)


@dataclass(frozen=True)
class Outcome:
    """What one point decided, for the callback to log and act on.

    Attributes:
        point: the recorded point.
        report: the full report of the model at the point.
        decision: the budget's decision, if there is a budget.
        guard: what the guard said, if it was asked.
    """

    point: HistoryPoint
    report: SparsityReport
    decision: BudgetDecision | None = None
    guard: GuardCheck | None = None


def nonfinite_parameters(model: nn.Module) -> list[str]:
    """Names of the floating parameters holding an inf or NaN (one host sync).

    Raises:
        Nothing; returns ``[]`` for a model on the meta device.
    """
    return list(nonfinite(list(model.named_parameters())))


@dataclass
class _State:
    """Everything that changes during a fit (reset for a new fit, checkpointed)."""

    history: list[HistoryPoint] = field(default_factory=list)
    pruning_steps: int = 0  # schedule steps taken with prune_every_n_steps
    good: dict[str, dict[str, Tensor]] | None = None  # the guard's last accepted snapshot
    warned_missing: bool = False  # the guard's metric was missing (warned once per fit)


def check_pieces(
    pruning: object,
    budget: object,
    guard: object,
    prune_every_n_steps: object,
    type_errors: list[str],
    value_errors: list[str],
    rewind_epoch: object = None,
    rewind_optimizer: object = False,
) -> None:
    """Append what is wrong with the pieces and how they combine (nothing if all is well).

    A FlopBudget with ``action="adjust"`` steers a pruner without a schedule of its own, at
    epoch ends; a MetricGuard guards a pruner; rewinding follows a pruner's schedule (see
    :func:`~lightning_sparsity.control.rewind.check_rewind`).
    """
    check_rewind(
        pruning, rewind_epoch, rewind_optimizer, prune_every_n_steps, type_errors, value_errors
    )
    if pruning is not None and not isinstance(pruning, MagnitudePruner):
        type_errors.append(
            f"`pruning` must be a MagnitudePruner (or None), got {type(pruning).__name__}"
        )
    if budget is not None and not isinstance(budget, FlopBudget):
        type_errors.append(f"`budget` must be a FlopBudget (or None), got {budget!r}")
    if guard is not None and not isinstance(guard, MetricGuard):
        type_errors.append(f"`guard` must be a MetricGuard (or None), got {guard!r}")
    check_int("prune_every_n_steps", prune_every_n_steps, value_errors, 1, optional=True)
    adjust = isinstance(budget, FlopBudget) and budget.action == "adjust"
    if adjust and pruning is None:
        value_errors.append(
            "a FlopBudget with action='adjust' steers the pruner; pass"
            " `pruning=MagnitudePruner(...)` too"
        )
    elif adjust and isinstance(pruning, MagnitudePruner) and not pruning.takes_targets:
        value_errors.append(
            f"a FlopBudget with action='adjust' sets pruning targets, but {pruning!r} keeps its"
            " sparsity and moves connections: pass a budget with action='stop', or a"
            " MagnitudePruner"
        )
    elif adjust and isinstance(pruning, MagnitudePruner) and pruning.schedule is not None:
        value_errors.append(
            "a FlopBudget with action='adjust' sets the pruning targets itself; the"
            f" pruner's schedule {pruning.schedule!r} would be ignored: pass a"
            " MagnitudePruner without `schedule`, or a budget with action='stop'"
        )
    if isinstance(guard, MetricGuard) and pruning is None:
        value_errors.append("a MetricGuard guards the pruner; pass `pruning` too")
    if adjust and prune_every_n_steps is not None:
        value_errors.append(
            "`prune_every_n_steps` goes with a pruning schedule; a FlopBudget with"
            " action='adjust' steers at epoch ends"
        )


class SparsityController:
    """Prune, measure, evaluate the budget and record the history, one point at a time.

    Args:
        pruning: the pruner (its schedule drives pruning unless an ``adjust`` budget does).
        budget: the FLOP budget.
        guard: the metric guard, asked before each pruning step.
        prune_every_n_steps: the schedule's time counts pruning steps taken by
            :meth:`prune_step` instead of epochs.
        rewind_epoch: after each prune, the model's weights go back to their values after
            this many completed epochs, pruned entries staying zero (:attr:`rewind`, a
            :class:`~lightning_sparsity.control.rewind.Rewind`); default: a LotteryTicket
            schedule's ``rewind_epoch``, else no rewinding.
        rewind_optimizer: rewind the optimizers' and LR schedulers' state too (bind them
            with ``controller.rewind.bind(optimizers, schedulers)``).
    """

    def __init__(
        self,
        pruning: MagnitudePruner | None = None,
        budget: FlopBudget | None = None,
        guard: MetricGuard | None = None,
        *,
        prune_every_n_steps: int | None = None,
        rewind_epoch: int | None = None,
        rewind_optimizer: bool = False,
    ) -> None:
        type_errors: list[str] = []
        value_errors: list[str] = []
        check_pieces(
            pruning,
            budget,
            guard,
            prune_every_n_steps,
            type_errors,
            value_errors,
            rewind_epoch,
            rewind_optimizer,
        )
        if type_errors or value_errors:
            message = "SparsityController: " + "; ".join(type_errors + value_errors)
            raise TypeError(message) if type_errors else ValueError(message)
        self.pruning = pruning
        self.budget = budget
        self.guard = guard
        self.prune_every_n_steps = prune_every_n_steps
        k = rewind_epoch_of(pruning, rewind_epoch)
        self.rewind = None if k is None else Rewind(k, rewind_optimizer)
        self.meter: SparsityMeter | None = None
        self.report: SparsityReport | None = None
        self.stopped: BudgetDecision | None = None
        self.compute = TrainCompute()
        self._max_epochs: int | None = None
        self._max_steps: int | None = None
        self._state = _State()
        self._plan: TrainingPlan | None = None  # the training budget's, for its message

    # ------------------------------------------------------------------ state

    @property
    def history(self) -> list[HistoryPoint]:
        """The points recorded so far, oldest first."""
        return self._state.history

    @property
    def last_epoch(self) -> int | None:
        """Completed epochs at the last point, ``None`` before the first."""
        return self.history[-1].epoch if self.history else None

    def reset(self) -> None:
        """Forget the history and every decision: a new fit starts clean."""
        self._state = _State()
        self.compute.reset()
        self.meter = None
        self.report = None
        self.stopped = None
        for piece in (self.budget, self.guard, self.pruning, self.rewind):
            if piece is not None:
                piece.reset()

    def bind(self, model: nn.Module, example_input: Any) -> None:
        """Count ``model`` on ``example_input`` from now on (traces once)."""
        if self.meter is None or self.meter.model is not model:
            patterns = ["2:4"]  # what GPUs run; and the pruner's own
            if self.pruning is not None and self.pruning.pattern is not None:
                patterns.append(self.pruning.pattern)
            self.meter = SparsityMeter(model, example_input, realizable=patterns)

    @property
    def bound(self) -> bool:
        """Whether :meth:`bind` was called."""
        return self.meter is not None

    def fit_warnings(self, max_epochs: int | None, max_steps: int | None = None) -> list[str]:
        """What a fit of ``max_epochs`` epochs will not reach, as sentences.

        The budget's deadline; any pruning by the schedule (whose time counts epochs unless
        pruning goes by steps). ``max_steps`` (if positive) ends the fit too: a training
        budget does not stop a fit at its last epoch.
        """
        found: list[str] = []
        self._max_epochs = max_epochs
        self._max_steps = max_steps if max_steps is not None and max_steps > 0 else None
        if self.budget is not None:
            deadline = self.budget.deadline_warning(max_epochs)
            if deadline is not None:
                found.append(deadline)
        schedule = None if self.pruning is None else self.pruning.schedule
        if (
            schedule is not None
            and self.prune_every_n_steps is None
            and max_epochs is not None
            and max_epochs >= 0
            and schedule.first_prune(max_epochs) is None
        ):
            found.append(
                f"the pruner's schedule ({type(schedule).__name__}) prunes nothing by the fit's"
                f" last epoch (max_epochs={max_epochs}): start it earlier or train longer"
            )
        return found

    def settings(self) -> dict[str, Any]:
        """What the pieces were built with (compared when a fit resumes)."""
        return {
            "pruning": None if self.pruning is None else self.pruning.settings(),
            "budget": None if self.budget is None else self.budget.settings(),
            "guard": None if self.guard is None else self.guard.settings(),
            "prune_every_n_steps": self.prune_every_n_steps,
            **(
                {}
                if self.rewind is None
                else {"rewind_epoch": self.rewind.epoch, "rewind_optimizer": self.rewind.optimizer}
            ),
        }

    def state_dict(self) -> dict[str, Any]:
        """History, pruner (masks), budget and guard state, plain values and CPU tensors."""
        state: dict[str, Any] = {
            "version": HistoryPoint.VERSION,
            "history": [p.to_dict() for p in self.history],
            "pruning_steps": self._state.pruning_steps,
            "settings": self.settings(),
            "compute": self.compute.state_dict(),
        }
        if self.pruning is not None:
            state["pruning"] = self.pruning.state_dict()
        if self.budget is not None:
            state["budget"] = self.budget.state_dict()
        if self.guard is not None:
            state["guard"] = self.guard.state_dict()
        if self.rewind is not None:
            state["rewind"] = self.rewind.state_dict()
        if self._state.good is not None:
            state["good"] = {
                part: {k: t.cpu() for k, t in tensors.items()}
                for part, tensors in self._state.good.items()
            }
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (version 1 states too); masks go on at :meth:`restore`."""
        self._state = _State(
            history=[HistoryPoint.from_dict(row) for row in state.get("history", [])],
            pruning_steps=int(state.get("pruning_steps", 0)),
            good=state.get("good")
            or ({"masks": state["good_masks"]} if state.get("good_masks") else None),
        )
        if self.pruning is not None and "pruning" in state:
            self.pruning.load_state_dict(state["pruning"])
        if self.budget is not None and "budget" in state:
            self.budget.load_state_dict(state["budget"])
        if self.guard is not None:
            guard_state = state.get("guard")
            if guard_state is None and "budget" in state:  # v1 kept the guard in the budget
                guard_state = {"best": state["budget"].get("best_metric")}
            self.guard.load_state_dict(guard_state or {})
        if self.rewind is not None:
            self._load_rewind(state.get("rewind") or {})
        self.compute.load_state_dict(state.get("compute") or {})

    def _load_rewind(self, state: Mapping[str, Any]) -> None:
        """Read the copy to rewind to; refuse a fit past its epoch that has none."""
        assert self.rewind is not None
        self.rewind.load_state_dict(state)
        last = self.last_epoch
        if not self.rewind.taken and last is not None and last >= self.rewind.epoch:
            raise ValueError(
                f"lightning_sparsity: this fit rewinds to epoch {self.rewind.epoch}, but the"
                f" checkpoint (epoch {last}) holds no copy of the weights of that epoch (saved"
                " without rewinding?): start a new fit, or resume without rewinding"
            )

    # ------------------------------------------------------------------ training compute

    def batch_start(self, model: nn.Module, record: bool = False) -> None:
        """A training batch is about to run: the cost of its step (see :class:`TrainCompute`).

        ``record``: record the step as it runs, the first time (``SparsityMeter.start_step``);
        that batch is counted at its end. Recorded too while batches are owed a step.
        """
        meter = self.meter
        wanted = record or bool(self.compute.owed[0])
        if wanted and meter is not None and not meter.step_recorded and self.compute.counting:
            try:
                meter.start_step()
            except NotImplementedError as err:  # a sharded model
                self.compute.fail(err)
            return
        self.compute.begin_batch(meter, self.pruning, model)

    def optimizer_step(self) -> None:
        """An optimizer's update begins (after its closure): not part of a recorded step."""
        if self.meter is not None:
            self.meter.pause_step()

    def batch_end(self, model: nn.Module, examples: int, passes: int) -> None:
        """The batch ran on ``examples`` examples (this process's), ``passes`` backwards.

        A recording that saw no backward pass is dropped (the next batch is recorded); the
        batch is owed its cost until then.
        """
        meter = self.meter
        if meter is not None and meter.recording:
            if examples < 1 or passes == 0:
                meter.abort_step()
                self.compute.owe(examples)
                return
            meter.stop_step(examples)
            self.compute.begin_batch(meter, self.pruning, model)  # at the weights after it
            self.compute.settle_owed()
        self.compute.end_batch(examples)

    def owe_batch(self, examples: int) -> None:
        """The batch ran a step that is not one forward and backward on the example input.

        Counted at that cost now and corrected to the step recorded at the next batch.
        """
        self.compute.owe(examples)

    def abort_batch(self) -> None:
        """Stop recording a step, if one runs (its batch failed or never ended)."""
        if self.meter is not None:
            self.meter.abort_step()

    # ------------------------------------------------------------------ points

    def _meter(self) -> SparsityMeter:
        if self.meter is None:
            raise RuntimeError("SparsityController: call bind(model, example_input) first")
        return self.meter

    def start(
        self,
        model: nn.Module,
        *,
        epoch: int = 0,
        global_step: int = 0,
        step: int | None = None,
    ) -> Outcome:
        """The first point of a fresh fit: check the weights and the budget, then record.

        A schedule whose target at ``epoch`` is above zero prunes before the point (e.g.
        ``Constant(0.5, start_epoch=0)`` prunes before training).

        Raises:
            ValueError: for weights holding inf/NaN (named), or a budget that cannot be
                met (see :meth:`FlopBudget.start`).
        """
        meter = self._meter()
        bad = nonfinite_parameters(model)
        if bad:
            raise ValueError(
                f"lightning_sparsity: parameters hold inf or NaN before training: {bad};"
                " sparse FLOPs and magnitude pruning need finite weights"
            )
        if self.pruning is not None:
            self.pruning.check(model)
        report = meter.measure()
        if self.budget is not None and self.budget.count == "train":
            if not self.compute.enabled:
                raise ValueError(
                    "FlopBudget(count='train') limits the training FLOPs the callback counts;"
                    " it needs SparsityCallback(train_flops=True) (the default)"
                )
            if self.budget.action == "adjust":  # a percentage now; absolute after epoch 1
                self.budget.check_training(self._epochs(), *self._train_steps(model), None)
        elif self.budget is not None:
            pruned = None if self.pruning is None else self.pruning.floor_densities(model)
            self.budget.start(self._budget_report(model, report), meter.cost_model(), pruned)
        pruning = None
        schedule = None if self.pruning is None else self.pruning.schedule
        if (
            self._steers_by_schedule
            and schedule is not None
            and self.prune_every_n_steps is None
            and schedule.is_pruning_epoch(epoch)
            and schedule(epoch) > 0
        ):
            pruning = self._apply_schedule(model, epoch)
            report = meter.measure()
        if self.rewind is not None and self.rewind.epoch == epoch:
            self.rewind.take(model)
        trained = None
        if self.compute.enabled:
            trained = dict.fromkeys(
                (
                    "train_flops",
                    "train_flops_dense",
                    "train_flops_total",
                    "train_flops_dense_total",
                ),
                0,
            )
        return self._record(model, report, epoch, global_step, step, pruning, None, trained)

    def epoch_end(
        self,
        model: nn.Module,
        *,
        epoch: int,
        global_step: int,
        step: int | None = None,
        metrics: Mapping[str, Any] | None = None,
        agree: Agree = _same,
        gather: Gather = _alone,
    ) -> Outcome:
        """After ``epoch`` completed epochs: prune (if due), rewind, measure, evaluate, record.

        With rewinding, the copy is taken at the point of its epoch, and written back right
        after each prune (before the count).

        Args:
            model: the model.
            epoch: completed epochs.
            global_step: optimizer steps done.
            step: the x value of the point (default ``epoch``).
            metrics: the logged metrics (for the guard).
            agree: reduces a local "guard ok" over all processes (every rank must agree).
            gather: every process's value of a number (the guarded metric: the guard
                judges, and the history records, the worst of them on every rank).

        Raises:
            RuntimeError: before :meth:`bind`.
            MonitorMissingError: see :class:`~lightning_sparsity.MetricGuard`.
        """
        pruning: str | None = None
        check: GuardCheck | None = None
        rewind = self.rewind
        if rewind is not None and rewind.epoch == epoch:
            rewind.take(model)  # before the schedule's first prune (checked)
        trained = self.compute.close_epoch(gather)
        if trained is not None and self.budget is not None and self.budget.count == "train":
            self._train_reference(model, epoch, trained)
        if self.pruning is not None and self.prune_every_n_steps is None:
            pruning, check = self._prune(model, epoch, metrics or {}, agree, gather)
        if rewind is not None and pruning == "pruned":
            assert self.pruning is not None
            rewind.apply(model, self.pruning._masked)
        report = self._meter().measure()
        if pruning == "pruned" and not self._pruned_more(model, report):
            pruning = None  # the masks were already there (a budget met and held)
        return self._record(model, report, epoch, global_step, step, pruning, check, trained)

    def _training_budget(
        self, model: nn.Module, epoch: int, trained: Mapping[str, Any] | None, global_step: int
    ) -> BudgetDecision | None:
        """``FlopBudget(count="train")``: the fit's training FLOPs against the limit.

        At the first epoch's end the dense reference is set: that epoch's dense training
        FLOPs times ``max_epochs``. The next epoch is costed at the weights now (after this
        point's prune): as many examples as this epoch, the step's sparse cost per example.
        """
        budget = self.budget
        assert budget is not None
        if trained is None or epoch == 0 or budget.dense is None:
            return None
        per_example = self.compute.cost_now(self._meter(), self.pruning, model)
        next_epoch = self.compute.epoch_examples * per_example
        plan, self._plan = self._plan, None
        spent = float(trained["train_flops_total"])
        epochs = self._epochs()
        if self._max_steps is not None and global_step >= self._max_steps:
            epochs = epoch  # the fit ends here by its steps: no next epoch to stop
        return budget.evaluate_training(spent, next_epoch, epoch, plan, epochs)

    def _epochs(self) -> int | None:
        """The fit's ``max_epochs``, which a training budget relative to a dense run needs.

        ``None`` when the fit has none and the budget is an absolute ``stop`` target.

        Raises:
            ValueError: without one (``max_epochs=-1``, or a fit limited by steps or time).
        """
        budget = self.budget
        assert budget is not None
        epochs = self._max_epochs
        if epochs is not None and epochs > 0:
            return epochs
        if budget.action == "adjust" or budget._fraction:
            what = "plan" if budget.action == "adjust" else "a percentage of the dense run's"
            raise ValueError(
                f"FlopBudget(count='train', target={budget.target!r}, action={budget.action!r}):"
                f" {what} training needs the fit's max_epochs (got {epochs!r}); set"
                " Trainer(max_epochs=...)"
                + ("" if budget.action == "adjust" else ", or give an absolute target ('2.5T')")
            )
        return None

    def _train_steps(self, model: nn.Module, cost: CostModel | None = None) -> tuple[float, float]:
        """A training step's dense FLOPs per example, and its cost at the pruner's floors.

        ``cost``: the training step's cost model, if the caller has it already.
        """
        cost = cost or self._meter().cost_model(training=True)
        pruned = None if self.pruning is None else self.pruning.floor_densities(model)
        return float(cost.flops), float(cost.floor(pruned or {}))

    def _train_reference(self, model: nn.Module, epoch: int, trained: Mapping[str, Any]) -> None:
        """At the first epoch's end: the dense run's total, and the target checked on it."""
        budget = self.budget
        assert budget is not None
        if budget.dense is not None or epoch == 0 or not self.compute.epoch_examples:
            return
        dense_step, floor_step = self._train_steps(model)
        budget.check_training(
            self._epochs(), dense_step, floor_step, float(trained["train_flops_dense"])
        )

    def _plan_training(self, model: nn.Module, t: int, cost: CostModel) -> TrainingPlan:
        """Where ``FlopBudget(count="train", action="adjust")`` prunes the step to now."""
        budget = self.budget
        assert budget is not None
        dense_step, floor_step = self._train_steps(model, cost)
        epochs = self._epochs()
        assert epochs is not None  # adjust: refused without one
        self._plan = budget.plan_training(
            spent=self.compute.total_sparse,
            epoch=t,
            examples=self.compute.epoch_examples,
            epochs=epochs,
            dense_step=dense_step,
            step_now=self.compute.cost_now(self._meter(), self.pruning, model),
            floor_step=floor_step,
        )
        return self._plan

    def _pruned_more(self, model: nn.Module, report: SparsityReport) -> bool:
        """Whether the pruner's weights hold another number of zeros than at the last point."""
        assert self.pruning is not None
        last = self.history[-1].pruned_sparsity if self.history else None
        return last is None or report.sparsity_of(self.pruning.target_names(model)) != last

    def prune_step(
        self,
        model: nn.Module,
        steps: int,
        metrics: Mapping[str, Any] | None = None,
        agree: Agree = _same,
        gather: Gather = _alone,
    ) -> str | None:
        """With ``prune_every_n_steps``: ``steps`` pruning steps are done; prune for it.

        Returns:
            What the pruner did (see :attr:`HistoryPoint.pruning`).
        """
        if self.pruning is None or steps <= self._state.pruning_steps:
            return None
        self._state.pruning_steps = steps
        pruning, _ = self._prune(model, steps, metrics or {}, agree, gather)
        return pruning

    def resume(self) -> BudgetDecision | None:
        """Decide again on the last point (settings may have changed since it was saved).

        Returns:
            The budget's decision on the last point, or ``None``.
        """
        if self.budget is None or not self.history:
            return None
        last = self.history[-1]
        if self.budget.count == "train":  # decided again at the next epoch's end
            return None
        if self.budget.dense is None:  # the budget is new to this run
            if self.budget.count == "effective":
                raise ValueError(
                    "cannot add a FlopBudget(count='effective') to a resumed run: its reference"
                    " is the effective FLOPs at the start, which were not measured"
                )
            first = self.history[0]
            dense = first.flops if self.budget.count == "sparse" else first.params
            self.budget.check_reachable(float(dense), 0.0)
        if last.budget_value is None or last.budget_count != self.budget.count:
            return None
        decision = self.budget.evaluate(last.budget_value, last.epoch)
        self.stopped = decision if decision.stop_training else None
        return decision

    # ------------------------------------------------------------------ pruning

    @property
    def _steers_by_schedule(self) -> bool:
        return self.budget is None or self.budget.action != "adjust"

    def _apply_schedule(self, model: nn.Module, t: int) -> str | None:
        assert self.pruning is not None
        schedule = self.pruning.schedule
        if schedule is None or not schedule.is_pruning_epoch(t) or schedule(t) <= 0:
            return None
        costs = None
        if self.pruning.allocation == "flops":
            costs = self._meter().cost_model().flops_per_nonzero
        self.pruning.apply(model, schedule(t), flops_per_nonzero=costs)
        return "pruned"

    def _prune(
        self,
        model: nn.Module,
        t: int,
        metrics: Mapping[str, Any],
        agree: Agree,
        gather: Gather = _alone,
    ) -> tuple[str | None, GuardCheck | None]:
        """Prune for time ``t`` (epochs, or pruning steps) if due and allowed."""
        pruner, budget = self.pruning, self.budget
        assert pruner is not None
        if budget is not None and not budget.pruning_allowed():
            return "frozen", None
        adjust = budget is not None and budget.action == "adjust"
        if adjust:
            assert budget is not None
            due = t > budget.start_epoch
        else:
            schedule = pruner.schedule
            due = schedule is not None and schedule.is_pruning_epoch(t) and schedule(t) > 0
        if not due:
            return None, None
        check = None
        if self.guard is not None:
            monitor = self.guard.monitor
            if monitor in metrics:  # every rank judges the worst rank's value
                metrics = {**metrics, monitor: self.guard.worst(gather(float(metrics[monitor])))}
            check = self.guard.check(metrics)
            if not agree(check.ok):  # every rank must accept, or all hold the masks
                if self.guard.action == "restore" and self._state.good is not None:
                    pruner.revert(model, self._state.good)
                    return "restored", check
                return "paused", check
            if self.guard.action == "restore":
                self._state.good = pruner.snapshot(model)
        if adjust:
            assert budget is not None
            training = budget.count == "train"
            if training and budget.dense is None:
                return None, check  # no epoch was counted (train_flops off, or it failed)
            cost = self._meter().cost_model(training=training)
            target = self._plan_training(model, t, cost).step if training else budget.scheduled(t)
            pruner.apply_flop_target(
                model, target, cost.flops_per_nonzero, cost.fixed_flops, not_above=True
            )
            return "pruned", check
        return self._apply_schedule(model, t), check

    # ------------------------------------------------------------------ recording

    def _budget_report(self, model: nn.Module, report: SparsityReport) -> SparsityReport:
        """The report the budget reads: with effective FLOPs when it counts them."""
        if self.budget is None or self.budget.count != "effective":
            return report
        meter = self._meter()
        return measure(model, meter.example_input, activations=True, batch_size=meter.batch_size)

    def _target(self, epoch: int) -> float | None:
        schedule = None if self.pruning is None else self.pruning.schedule
        if schedule is None or not self._steers_by_schedule:
            return None
        t = epoch if self.prune_every_n_steps is None else self._state.pruning_steps
        return schedule(t)

    def _record(
        self,
        model: nn.Module,
        report: SparsityReport,
        epoch: int,
        global_step: int,
        step: int | None,
        pruning: str | None,
        check: GuardCheck | None,
        trained: Mapping[str, Any] | None = None,
    ) -> Outcome:
        total = report.total
        if total.flops_sparse is None or total.params_nonzero is None:
            raise ValueError("lightning_sparsity: cannot record a point on the meta device")
        decision = None
        budget_fields: dict[str, Any] = {}
        if self.budget is not None and self.budget.count == "train":
            decision = self._training_budget(model, epoch, trained, global_step)
            value = None if decision is None else decision.value
        elif self.budget is not None:
            value = self.budget.value(self._budget_report(model, report))
            decision = self.budget.evaluate(value, epoch)
        if self.budget is not None and decision is not None:
            if decision.stop_training:
                self.stopped = decision
            budget_fields = {
                "budget_count": self.budget.count,
                "budget_value": value,
                "budget_limit": decision.limit,
                "budget_scheduled": decision.scheduled,
                "budget_status": decision.status,
            }
        point = HistoryPoint(
            epoch=epoch,
            step=epoch if step is None else step,
            global_step=global_step,
            per=report.per,
            flops=total.flops,
            flops_sparse=total.flops_sparse,
            flops_realizable=total.flops_realizable,
            params=total.params,
            params_nonzero=total.params_nonzero,
            target_sparsity=self._target(epoch),
            pruned_sparsity=None
            if self.pruning is None
            else report.sparsity_of(self.pruning.target_names(model)),
            pruning=pruning,
            guard_value=None if check is None else check.value,
            **budget_fields,
            **(trained or {}),
        )
        self.history.append(point)
        self.report = report
        if self.pruning is not None and pruning == "pruned":
            self.pruning.warn_emptied(report.emptied(self.pruning.target_names(model)))
        if check is not None and check.message and check.ok and not self._state.warned_missing:
            self._state.warned_missing = True  # the metric is missing, the guard not strict
            warnings.warn(f"lightning_sparsity: {check.message}", UserWarning, stacklevel=3)
        return Outcome(point, report, decision, check)
