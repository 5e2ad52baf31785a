"""``SparsityCallback``: glue between the meter, the pruner, the loggers and the files.

At fit start (the dense point) and at each train epoch end it prunes when a pruner is
given, re-measures through :class:`~lightning_sparsity.SparsityMeter`, logs ``sparsity/``
scalars through every logger of the trainer, and keeps the history in its checkpoint state.
FLOPs count 2 per MAC.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from lightning_utilities.core.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from lightning_sparsity._checks import check_int
from lightning_sparsity.budget import BudgetDecision, FlopBudget
from lightning_sparsity.counting import SparsityMeter, SparsityReport, measure
from lightning_sparsity.loggers.history import HistoryWriter, plot_history
from lightning_sparsity.loggers.tensorboard import (
    hparams_of,
    is_tensorboard,
    layout,
    tensorboard_writers,
)
from lightning_sparsity.pruning import MagnitudePruner

__all__ = [
    "BudgetExceededError",
    "SparsityCallback",
    "SparsityCallbackLogic",
    "default_input_from_batch",
]


class BudgetExceededError(RuntimeError):
    """The FLOP budget's deadline passed over budget and ``on_deadline="raise"``."""


XAxis = Literal["epoch", "global_step"]
_STEPS = ("epoch", "global_step")


def default_input_from_batch(batch: Any) -> Any:
    """The model input of a ``(input, target, ...)`` batch, or a bare Tensor batch.

    Raises:
        TypeError: for any other batch; pass ``input_from_batch=`` then.
    """
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    raise TypeError(
        f"cannot take the model input from a batch of type {type(batch).__name__}; set"
        " `example_input_array` on the LightningModule or pass `input_from_batch=` (a function"
        " batch -> model input) or `example_input=` to SparsityCallback"
    )


def _first_example(value: Any) -> Any:
    """Slice every tensor to its first example (batch of one)."""
    return tree_map(lambda t: t[:1] if isinstance(t, Tensor) and t.dim() > 0 else t, value)


class SparsityCallbackLogic:
    """The callback's behaviour, independent of which Lightning package provides the base.

    Use :class:`lightning_sparsity.SparsityCallback` (``pytorch_lightning``) or
    ``lightning_sparsity.lightning.SparsityCallback`` (the unified ``lightning`` package).

    Args:
        pruning: a :class:`~lightning_sparsity.MagnitudePruner` whose schedule is applied at
            train epoch ends; ``None`` to only measure (e.g. beside Lightning's
            ``ModelPruning`` or a torch.ao.pruning sparsifier).
        budget: a :class:`~lightning_sparsity.FlopBudget`: evaluated at each epoch end; it
            can freeze the masks, stop training, or (``action="adjust"``) steer ``pruning``
            along a FLOP schedule. FLOP targets are per example, like the logged counts.
        example_input: the model input to count with; default
            ``pl_module.example_input_array``, else the first example of the first training
            batch.
        input_from_batch: batch → model input, for batches that are not ``(input, ...)``.
        per_layer: also log per-layer density and sparse FLOPs under ``sparsity_layers/``
            (turn off for huge models).
        step: the x axis of the curves: ``"epoch"`` (epochs completed; 0 is the dense model
            at fit start) or ``"global_step"``.
        table_every_n_epochs: write the per-layer markdown table to TensorBoard every N
            epochs (and at fit end); ``0`` only at fit end.
        write_files: at each point append the history to ``sparsity_history.csv``/``.json``
            in the trainer's log directory; at fit end write the report and a PNG.
        prune_every_n_steps: prune every N optimizer steps instead of at epoch ends; the
            schedule's "epochs" then count these pruning steps (Zhu & Gupta's Δt in steps).
            Measuring and logging stay at epoch ends.

    Raises:
        TypeError: if ``pruning`` lacks the pruner interface, ``budget`` is not a
            ``FlopBudget`` or ``input_from_batch`` is not callable.
        ValueError: for a bad ``step`` or ``table_every_n_epochs``, or an ``adjust`` budget
            without a pruner to steer.
    """

    def __init__(
        self,
        pruning: MagnitudePruner | None = None,
        budget: FlopBudget | None = None,
        *,
        example_input: Any | None = None,
        input_from_batch: Callable[[Any], Any] | None = None,
        per_layer: bool = True,
        step: XAxis = "epoch",
        table_every_n_epochs: int = 1,
        write_files: bool = True,
        prune_every_n_steps: int | None = None,
    ) -> None:
        # every argument checked at once; a wrong type wins over a wrong value
        type_errors, value_errors = [], []
        if pruning is not None and not all(
            hasattr(pruning, name) for name in ("apply", "schedule", "state_dict")
        ):
            type_errors.append(
                f"`pruning` must be a MagnitudePruner (or None), got {type(pruning).__name__}"
            )
        if budget is not None and not isinstance(budget, FlopBudget):
            type_errors.append(f"`budget` must be a FlopBudget (or None), got {budget!r}")
        elif budget is not None and budget.action == "adjust" and pruning is None:
            value_errors.append(
                "a FlopBudget with action='adjust' steers this callback's pruner; pass"
                " `pruning=MagnitudePruner(...)` too"
            )
        if input_from_batch is not None and not callable(input_from_batch):
            type_errors.append(
                f"`input_from_batch` must be callable, got {type(input_from_batch).__name__}"
            )
        for name, flag in (("per_layer", per_layer), ("write_files", write_files)):
            if not isinstance(flag, bool):
                type_errors.append(f"`{name}` must be a bool, got {flag!r}")
        if example_input is not None and not isinstance(example_input, (Tensor, tuple, list, dict)):
            type_errors.append(
                "`example_input` must be a Tensor, a tuple/list of positional arguments, a dict"
                f" of keyword arguments or None, got {type(example_input).__name__}"
            )
        if step not in _STEPS:
            value_errors.append(f"`step` must be one of {_STEPS}, got {step!r}")
        check_int("table_every_n_epochs", table_every_n_epochs, value_errors)
        check_int("prune_every_n_steps", prune_every_n_steps, value_errors, 1, optional=True)
        if (
            prune_every_n_steps is not None
            and isinstance(budget, FlopBudget)
            and budget.action == "adjust"
        ):
            value_errors.append(
                "`prune_every_n_steps` goes with a pruning schedule; a FlopBudget with"
                " action='adjust' steers at epoch ends"
            )
        if type_errors or value_errors:
            message = "; ".join(type_errors + value_errors)
            raise TypeError(message) if type_errors else ValueError(message)
        self.pruning = pruning
        self.budget = budget
        self.example_input = example_input
        self.input_from_batch = input_from_batch or default_input_from_batch
        self.per_layer = per_layer
        self.step = step
        self.table_every_n_epochs = table_every_n_epochs
        self.write_files = write_files
        self.prune_every_n_steps = prune_every_n_steps
        self.history: list[dict[str, Any]] = []
        self.report: SparsityReport | None = None
        self._meter: SparsityMeter | None = None
        self._restore_masks = False
        self._good_masks: dict[str, Tensor] | None = None
        self._warned_deadline = False
        self._writer: HistoryWriter | None = None
        self._layout_written: set[int] = set()
        self._dir: Path | None = None

    @property
    def frozen(self) -> bool:
        """Whether the budget froze the masks (met with ``action="stop"``)."""
        return self.budget is not None and not self.budget.pruning_allowed(0)

    @property
    def stopping_reason(self) -> str | None:
        """Why the budget stopped the fit (``"finetune_done"``, ``"deadline_missed"``)."""
        return None if self.budget is None else self.budget.stopping_reason

    @property
    def stopping_message(self) -> str | None:
        """The same for people."""
        return None if self.budget is None else self.budget.stopping_message

    @property
    def state_key(self) -> str:
        """Unique per configuration, so several callbacks can sit in one Trainer."""
        config = {**hparams_of(self.pruning, "pruning"), **hparams_of(self.budget, "budget")}
        return f"{type(self).__qualname__}{sorted(config.items())}"

    # ------------------------------------------------------------------ measuring

    def _input(self, pl_module: nn.Module, batch: Any = None) -> Any | None:
        value = self.example_input
        if value is None:
            value = getattr(pl_module, "example_input_array", None)
        if value is None and batch is not None:
            value = _first_example(self.input_from_batch(batch))
        if value is None:
            return None
        param = next(pl_module.parameters(), torch.empty(0))
        floating = next((p.dtype for p in pl_module.parameters() if p.is_floating_point()), None)

        def to_model(t: Any) -> Any:  # the model's device, and its dtype under true precision
            if not isinstance(t, Tensor):
                return t
            dtype = floating if t.is_floating_point() and floating is not None else t.dtype
            return t.to(device=param.device, dtype=dtype)

        return tree_map(to_model, value)

    def _measure(self, pl_module: nn.Module, example_input: Any) -> SparsityReport:
        meter = self._meter
        if meter is None or meter.model is not pl_module:
            meter = self._meter = SparsityMeter(pl_module, example_input)
        return meter.measure()

    def _target(self, epoch: int) -> float | None:
        if self.budget is not None and self.budget.action == "adjust":
            return None  # the budget steers in FLOP space
        schedule = getattr(self.pruning, "schedule", None)
        return None if schedule is None else float(schedule(epoch))

    def _budget_value(self, pl_module: nn.Module, report: SparsityReport) -> float:
        assert self.budget is not None
        assert self._meter is not None
        if self.budget.count == "params":
            return float(report.total.params_nonzero or 0)
        if self.budget.count == "effective":
            example = self._meter.example_input
            return float(measure(pl_module, example, activations=True).total.flops_effective or 0)
        return float(report.total.flops_sparse or 0)

    def _budget_floor(self, pl_module: nn.Module, report: SparsityReport) -> float:
        """The lowest value pruning can reach: pruned weights all zero, the others dense."""
        assert self.budget is not None
        assert self._meter is not None
        count, cost = self.budget.count, self._meter.cost_model()
        if count == "effective":
            return 0.0
        if self.pruning is None:  # another pruner may zero any weight
            return 0.0 if count == "params" else float(cost.fixed_flops)
        pruned = self.pruning.target_names(pl_module)
        if count == "params":
            return float(report.total.params - sum(cost.numel[n] for n in pruned))
        return cost.floor(pruned)

    def _point(self, trainer: Any, pl_module: nn.Module, example_input: Any, epoch: int) -> None:
        """Measure, record and log one point: ``epoch`` epochs completed."""
        report = self.report = self._measure(pl_module, example_input)
        total = report.total
        step = epoch if self.step == "epoch" else int(trainer.global_step)
        row: dict[str, Any] = {
            "step": step,
            "epoch": epoch,
            "per": report.per,
            "flops": total.flops,
            "flops_sparse": total.flops_sparse,
            "flops_ratio": total.flops_ratio,
            "params": total.params,
            "params_nonzero": total.params_nonzero,
            "param_sparsity": total.sparsity,
            "target_sparsity": self._target(self._schedule_index(trainer, epoch - 1))
            if epoch > 0
            else None,
            # what the schedule's target counts: the pruner's weights only
            "pruned_sparsity": None
            if self.pruning is None
            else report.sparsity_of(self.pruning.target_names(pl_module)),
        }
        decision = None
        if self.budget is not None:
            value = self._budget_value(pl_module, report)
            if epoch == 0 or self.budget.dense is None:  # the dense start: check once
                # what "N%" refers to: dense FLOPs, all parameters, the effective FLOPs now
                dense = {"sparse": total.flops, "params": total.params, "effective": value}
                self.budget.check_reachable(
                    float(dense[self.budget.count]), self._budget_floor(pl_module, report)
                )
            limit = self.budget.resolve(self.budget.dense)  # type: ignore[arg-type]
            row["budget_count"] = self.budget.count
            row["budget_value"] = value
            row["budget_limit"] = limit
            row["budget_flops"] = limit if self.budget.count != "params" else None
            row["budget_slack"] = (limit - value) / limit
            if epoch > 0:
                decision = self.budget.evaluate(value, epoch - 1)
                row["budget_scheduled"] = decision.scheduled
                row["budget_status"] = decision.status
        self.history.append(row)
        self._log(trainer, report, row)
        if decision is not None:
            self._act(trainer, decision, epoch - 1)

    def _act(self, trainer: Any, decision: BudgetDecision, epoch: int) -> None:
        """Follow a budget decision the way Lightning's EarlyStopping stops."""
        assert self.budget is not None
        if decision.freeze_pruning and self.budget.reached_epoch == epoch:  # the first time
            rank_zero_info(f"lightning_sparsity: {decision.message}; masks frozen")
        if decision.status == "missed" and not decision.stop_training:
            if self.budget.on_deadline == "raise":
                raise BudgetExceededError(decision.message)
            if not self._warned_deadline:
                rank_zero_warn(f"lightning_sparsity: {decision.message}")
                self._warned_deadline = True
        stop = bool(trainer.strategy.reduce_boolean_decision(decision.stop_training, all=False))
        if stop:
            rank_zero_info(f"lightning_sparsity: stopping: {decision.message}")
        trainer.should_stop = trainer.should_stop or stop

    # ------------------------------------------------------------------ logging

    def metrics(self, report: SparsityReport, row: dict[str, Any]) -> dict[str, float]:
        """The scalars logged for one point (stable keys)."""
        per = f"per_{report.per}"
        metrics = {
            f"sparsity/flops_dense_{per}": float(row["flops"]),
            f"sparsity/flops_sparse_{per}": float(row["flops_sparse"]),
            "sparsity/flops_ratio": float(row["flops_ratio"]),
            "sparsity/params": float(row["params"]),
            "sparsity/params_nonzero": float(row["params_nonzero"]),
            "sparsity/param_sparsity": float(row["param_sparsity"]),
        }
        if row["target_sparsity"] is not None:
            metrics["sparsity/target_sparsity"] = float(row["target_sparsity"])
        if row["pruned_sparsity"] is not None:
            metrics["sparsity/pruned_sparsity"] = float(row["pruned_sparsity"])
        if "budget_limit" in row:
            metrics["budget/limit"] = float(row["budget_limit"])
            metrics["budget/value"] = float(row["budget_value"])
            metrics["budget/slack"] = float(row["budget_slack"])
            if row.get("budget_scheduled") is not None:
                metrics["budget/scheduled"] = float(row["budget_scheduled"])
            if "budget_status" in row:
                metrics["budget/within"] = float(row["budget_status"] == "within")
        if self.per_layer:
            for layer in report.layers:
                name = layer.name or "root"
                if layer.params:
                    metrics[f"sparsity_layers/{name}/density"] = float(layer.density or 0.0)
                if layer.flops:
                    metrics[f"sparsity_layers/{name}/flops_sparse_{per}"] = float(
                        layer.flops_sparse or 0
                    )
        return metrics

    def _log(self, trainer: Any, report: SparsityReport, row: dict[str, Any]) -> None:
        metrics = self.metrics(report, row)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=row["step"])
        if not trainer.is_global_zero:
            return
        per = f"per_{report.per}"
        for writer in tensorboard_writers(trainer.loggers):
            if id(writer) not in self._layout_written:
                flops = [f"sparsity/flops_dense_{per}", f"sparsity/flops_sparse_{per}"]
                if self.budget is not None and self.budget.count == "sparse":
                    flops += ["budget/limit", "budget/scheduled"]
                sparsity = ["sparsity/pruned_sparsity", "sparsity/target_sparsity"]
                writer.add_custom_scalars(layout(flops, [*sparsity, "sparsity/param_sparsity"]))
                self._layout_written.add(id(writer))
            every = self.table_every_n_epochs
            if every and row["epoch"] % every == 0:
                writer.add_text("sparsity/layers", report.to_markdown(), global_step=row["step"])
        if self.write_files and self.directory is not None:
            if self._writer is None or self._writer.directory != self.directory:
                self._writer = HistoryWriter(self.directory)
            self._writer.write(self.history)

    @property
    def directory(self) -> Path | None:
        """Where the files go: the trainer's log directory (known from ``setup`` on)."""
        return self._dir

    # ------------------------------------------------------------------ hooks

    def setup(self, trainer: Any, pl_module: nn.Module, stage: str) -> None:
        """Find the log directory (on every rank: it is broadcast); none without a logger.

        Before loading a checkpoint (resume, or ``test(ckpt_path=...)``), give the model
        plain weights, as the checkpoint stores them; a resumed fit re-applies the masks.
        """
        self._dir = Path(trainer.log_dir or trainer.default_root_dir)
        if not trainer.loggers or getattr(trainer, "fast_dev_run", False):
            self._dir = None  # Lightning suppresses logging: no files either
        if trainer.ckpt_path and self.pruning is not None:  # any stage: test(ckpt_path=...)
            self.pruning.make_permanent(pl_module)

    def _start(self, trainer: Any, pl_module: nn.Module, batch: Any = None) -> None:
        example_input = self._input(pl_module, batch)
        if example_input is None:
            return
        if self.history:  # resumed: the curve continues, no second starting point
            self._meter = SparsityMeter(pl_module, example_input)
        else:
            self._point(trainer, pl_module, example_input, trainer.current_epoch)

    def on_fit_start(self, trainer: Any, pl_module: nn.Module) -> None:
        """Re-apply restored masks; measure the starting point; stop a run already done."""
        if self._restore_masks and self.pruning is not None:
            self.pruning.restore(pl_module)
            self._restore_masks = False
        self._start(trainer, pl_module)
        if self.stopping_reason is not None:  # resumed after the budget ended the run
            rank_zero_info(f"lightning_sparsity: already stopped: {self.stopping_message}")
            trainer.should_stop = True

    def on_train_batch_start(
        self, trainer: Any, pl_module: nn.Module, batch: Any, batch_idx: int
    ) -> None:
        """Without an explicit input, the meter starts on the first batch's first example."""
        if self._meter is None:
            self._start(trainer, pl_module, batch)

    def on_train_batch_end(
        self, trainer: Any, pl_module: nn.Module, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """With ``prune_every_n_steps``: prune every N optimizer steps."""
        every = self.prune_every_n_steps
        step = int(trainer.global_step)
        if every is not None and self._meter is not None and step > 0 and step % every == 0:
            self._prune(trainer, pl_module, step // every - 1)

    def on_train_epoch_end(self, trainer: Any, pl_module: nn.Module) -> None:
        """Prune (schedule or FLOP budget), then measure, log and act on the budget."""
        if self._meter is None:  # no batch ran and no input was given
            return
        if self.prune_every_n_steps is None:
            self._prune(trainer, pl_module, trainer.current_epoch)
        self._point(trainer, pl_module, self._meter.example_input, trainer.current_epoch + 1)

    def _schedule_index(self, trainer: Any, epoch: int) -> int:
        """The schedule's time index at the end of ``epoch``: the epoch, or pruning steps."""
        every = self.prune_every_n_steps
        return epoch if every is None else max(0, int(trainer.global_step) // every - 1)

    def _prune(self, trainer: Any, pl_module: nn.Module, epoch: int) -> None:
        """Prune for the schedule's time index ``epoch`` (an epoch, or a pruning step)."""
        pruner, budget = self.pruning, self.budget
        if pruner is None or self.frozen:
            return
        if budget is not None and budget.monitor is not None:
            metric = trainer.callback_metrics.get(budget.monitor)
            if metric is None:
                rank_zero_warn(
                    f"lightning_sparsity: FlopBudget monitor {budget.monitor!r} is not among"
                    f" the logged metrics {sorted(trainer.callback_metrics)}; not guarding"
                )
            elif not budget.guard_ok(float(metric)):
                if budget.guard_action == "restore" and self._good_masks is not None:
                    pruner.apply_masks(pl_module, self._good_masks)
                return  # paused until the metric recovers
            else:
                self._good_masks = pruner.masks(pl_module)
        assert self._meter is not None
        if budget is not None and budget.action == "adjust":
            if epoch >= budget.start_epoch:
                cost = self._meter.cost_model()
                pruner.apply_flop_target(
                    pl_module,
                    budget.scheduled(epoch),
                    cost.flops_per_nonzero,
                    cost.fixed_flops,
                    not_above=True,
                )
        elif pruner.schedule is not None:
            costs = (
                self._meter.cost_model().flops_per_nonzero if pruner.allocation == "flops" else None
            )
            pruner.step(pl_module, epoch, flops_per_nonzero=costs)

    def on_fit_end(self, trainer: Any, pl_module: nn.Module) -> None:
        """Final table, hparams, report files and the PNG plot."""
        if not trainer.is_global_zero or self.report is None:
            return
        report, last = self.report, self.history[-1]
        for writer in tensorboard_writers(trainer.loggers):
            writer.add_text("sparsity/layers", report.to_markdown(), global_step=last["step"])
        hparams = {**hparams_of(self.pruning, "pruning"), **hparams_of(self.budget, "budget")}
        if hparams:
            final = {
                "sparsity/final_flops_ratio": float(last["flops_ratio"]),
                "sparsity/final_param_sparsity": float(last["param_sparsity"]),
            }
            for logger in trainer.loggers:
                if is_tensorboard(logger):  # metrics for the HParams dashboard
                    logger.log_hyperparams(hparams, metrics=final)
                else:
                    logger.log_hyperparams(hparams)
        directory = self.directory
        if self.write_files and directory is not None:
            report.to_json(directory / "sparsity_report.json")
            (directory / "sparsity_report.md").write_text(report.to_markdown() + "\n")
            plot_history(self.history, directory / "sparsity_curves.png")
            rank_zero_info(
                f"lightning_sparsity: sparse/dense FLOPs {last['flops_ratio']:.3f}, parameter"
                f" sparsity {last['param_sparsity']:.3f}; history, report and plot in {directory}"
            )

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """The history and the pruner's state (masks included)."""
        state: dict[str, Any] = {
            "history": [dict(row) for row in self.history],
        }
        if self.pruning is not None:
            state["pruning"] = self.pruning.state_dict()
        if self.budget is not None:
            state["budget"] = self.budget.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the history and budget state; masks are re-applied at fit start."""
        self.history = [dict(row) for row in state_dict.get("history", [])]
        if self.pruning is not None and "pruning" in state_dict:
            self.pruning.load_state_dict(state_dict["pruning"])
            self._restore_masks = True
        if self.budget is not None and "budget" in state_dict:
            self.budget.load_state_dict(state_dict["budget"])

    def on_save_checkpoint(
        self, trainer: Any, pl_module: nn.Module, checkpoint: dict[str, Any]
    ) -> None:
        """Store plain weights (zeros in place) so a fresh, unpruned model loads them.

        The masks travel in this callback's state.
        """
        if self.pruning is None:
            return
        state = checkpoint.get("state_dict", {})
        for name in self.pruning.masks(pl_module):
            if name + "_orig" in state and name + "_mask" in state:
                state[name] = state.pop(name + "_orig") * state.pop(name + "_mask")

    def on_exception(self, trainer: Any, pl_module: nn.Module, exception: BaseException) -> None:
        """Keep the plot of what finished; the history files are already on disk."""
        directory = self.directory
        if trainer.is_global_zero and self.write_files and directory and len(self.history) > 1:
            try:
                plot_history(self.history, directory / "sparsity_curves.png")
            except Exception as err:  # never hide the original exception
                rank_zero_warn(f"lightning_sparsity: could not write the plot: {err}")


class SparsityCallback(SparsityCallbackLogic, pl.Callback):
    """Recount nonzero parameters and sparse FLOPs every epoch, prune, log, keep the history.

    A ``pytorch_lightning.Callback``; for ``lightning.pytorch.Trainer`` use
    ``lightning_sparsity.lightning.SparsityCallback`` (same arguments).
    See :class:`SparsityCallbackLogic` for the arguments.
    """
