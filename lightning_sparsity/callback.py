"""``SparsityCallback``: Lightning hooks around :class:`~lightning_sparsity.SparsityController`.

The controller (Lightning-free) prunes, measures, evaluates the budget and records each
point; this callback calls it from the hooks, makes the ranks agree, logs what it returns
(every Lightning logger, TensorBoard extras, ``callback_metrics`` for monitoring, the
history files) and stops the trainer the way ``EarlyStopping`` does. FLOPs count 2 per MAC.

Time: a point is the model after ``t`` completed epochs (``0``: before training), logged at
step ``t`` (or at the global step with ``step="global_step"``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from lightning_utilities.core.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_map

from lightning_sparsity._checks import check_bools, check_choice, check_int
from lightning_sparsity._text import count
from lightning_sparsity.averaging import AveragedCopies
from lightning_sparsity.compact import compact
from lightning_sparsity.control.budget import BudgetDecision, FlopBudget
from lightning_sparsity.control.controller import (
    HistoryPoint,
    Outcome,
    SparsityController,
    check_pieces,
)
from lightning_sparsity.control.guard import MetricGuard
from lightning_sparsity.counting import SparsityReport, measure
from lightning_sparsity.loggers.history import (
    HistoryWriter,
    metric_series,
    plot_history,
    training_line,
    training_ratio,
)
from lightning_sparsity.loggers.resume import Logged, logged_versions, same_root
from lightning_sparsity.loggers.tensorboard import (
    SeriesWriters,
    drop_events_after,
    is_tensorboard,
    layout,
    tensorboard_writers,
    write_hparams,
)
from lightning_sparsity.pruning import MagnitudePruner
from lightning_sparsity.pruning.masks import param_name, plain_state, reapply
from lightning_sparsity.speed import SpeedReport, format_speed
from lightning_sparsity.speed import speed as time_speed

__all__ = [
    "BudgetExceededError",
    "SparsityCallback",
    "SparsityCallbackLogic",
    "check_strategy",
    "compare_settings",
    "default_input_from_batch",
]

XAxis = Literal["epoch", "global_step"]
_STEPS = ("epoch", "global_step")
# settings a resumed fit cannot change without mixing two meanings in one history
_FIXED_SETTINGS = ("step", "prune_every_n_steps", "budget/count")
# tags this callback writes to TensorBoard
_OUR_TAGS = ("sparsity/", "sparsity_layers/", "budget/")
# ... and at the global step, beside curves on the epoch axis (to overlay per-step metrics)
_GLOBAL_STEP_TAGS = "sparsity_global_step/"
_INPUT_KINDS = "a Tensor, a tuple/list of positional arguments or a dict of keyword arguments"


#: strategies whose parameters are flattened across ranks (not per-weight shards)
_FLATTENING = {
    "FSDPStrategy": "FSDP1 flattens each unit's weights into one sharded buffer",
    "DeepSpeedStrategy": "DeepSpeed ZeRO flattens weights into partitioned buffers",
}


def check_strategy(strategy: Any) -> None:
    """Refuse strategies whose weights cannot be read per weight and per shard.

    Supported: one device, DDP (``ddp``, ``ddp_spawn``, ...), and FSDP2 through Lightning's
    ``ModelParallelStrategy`` with ``fully_shard`` (``DTensor`` weights, ``Shard(0)``).

    Raises:
        ValueError: For ``FSDPStrategy`` (FSDP1) and ``DeepSpeedStrategy``, naming what is
            supported.
    """
    why = _FLATTENING.get(type(strategy).__name__)
    if why is not None:
        raise ValueError(
            f"lightning_sparsity does not support {type(strategy).__name__}: {why}, so"
            " per-weight nonzero counts and masks cannot be read. Supported: a single device,"
            " DDP, and FSDP2 (ModelParallelStrategy with torch.distributed.fsdp.fully_shard"
            " in configure_model)"
        )


class BudgetExceededError(RuntimeError):
    """The FLOP budget's deadline passed over budget and ``on_deadline="raise"``."""


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


def _examples(value: Any) -> int:
    """The examples in a model input: its first tensor's leading size (1 without one)."""
    first = next((t for t in tree_flatten(value)[0] if isinstance(t, Tensor) and t.dim()), None)
    return 1 if first is None else int(first.shape[0])


def _first_example(value: Any) -> Any:
    """Slice every tensor to its first example (batch of one)."""
    return tree_map(lambda t: t[:1] if isinstance(t, Tensor) and t.dim() > 0 else t, value)


def _flatten(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def compare_settings(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``"key: old -> new"`` for every setting that differs (nested settings flattened)."""
    old, new = _flatten(saved), _flatten(current)
    return [
        f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key)
    ]


def _reached_limit(trainer: Any, last_epoch: int | None) -> str | None:
    """``"max_epochs=12"`` or ``"max_steps=100"`` when a resumed fit has nothing to train."""
    max_epochs = trainer.max_epochs
    if last_epoch is not None and max_epochs is not None and 0 <= max_epochs <= last_epoch:
        return f"max_epochs={max_epochs}"
    if 0 <= trainer.max_steps <= trainer.global_step:
        return f"max_steps={trainer.max_steps}"
    return None


class SparsityCallbackLogic:
    """The callback's behaviour, independent of which Lightning package provides the base.

    Use :class:`lightning_sparsity.SparsityCallback` (``pytorch_lightning`` if installed,
    else ``lightning.pytorch``) or ``lightning_sparsity.lightning.SparsityCallback``
    (always ``lightning.pytorch``).

    Args:
        pruning: a :class:`~lightning_sparsity.MagnitudePruner` whose schedule is applied at
            epoch ends; ``None`` to only measure (e.g. beside Lightning's ``ModelPruning``
            or a torch.ao.pruning sparsifier).
        budget: a :class:`~lightning_sparsity.FlopBudget`: evaluated at each point; it can
            freeze the masks, stop training, or (``action="adjust"``) steer ``pruning``
            along a FLOP schedule (the pruner then takes no schedule of its own). FLOP
            targets are per example, like the logged counts.
        guard: a :class:`~lightning_sparsity.MetricGuard`: asked before each pruning step;
            holds pruning back (or restores the last good masks) while a logged metric is
            worse than allowed.
        example_input: the model input to count with; default
            ``pl_module.example_input_array``, else the first example of the first training
            batch (kept in the checkpoint).
        input_from_batch: batch → model input, for batches that are not ``(input, ...)``.
        per_layer: also log per-layer density and sparse FLOPs under ``sparsity_layers/``
            (turn off for huge models).
        step: the x axis of the curves: ``"epoch"`` (epochs completed; 0 is the model at
            fit start) or ``"global_step"``.
        table_every_n_epochs: write the per-layer markdown table to TensorBoard every N
            epochs (and at fit end); ``0`` only at fit end.
        write_files: at each point append the history to ``sparsity_history.csv``/``.json``
            in the trainer's log directory; at fit end write the report and a PNG.
        prune_every_n_steps: prune every N optimizer steps instead of at epoch ends; the
            schedule's time then counts these pruning steps (Zhu & Gupta's Δt in steps).
            Measuring and logging stay at epoch ends.
        prog_bar: show ``sparsity/flops_ratio`` (and ``budget/slack``) on the progress bar.
        verbose: one status line per point through Lightning's rank-zero logging.
        name: tells several SparsityCallbacks in one Trainer apart (their checkpoint state
            keys); ``None`` for the only one.
        hparams: more entries for the run's HParams entry (a sweep's budget and seed),
            listed first and marked as the settings that vary between runs.
        hparams_experiment: write the HParams *experiment* (the columns and their order)
            besides the run's values. TensorBoard takes it from any one run of its log
            directory: a sweep turns it off in its dense baseline, whose settings lack the
            pruner's and budget's, so the columns are those of a run that has them.
        train_flops: count the training FLOPs that ran (``sparsity/train_flops`` per epoch,
            ``sparsity/train_flops_total`` over the fit, dense and sparse: every training
            batch's examples times its forward and backward at the masks it ran with;
            :mod:`lightning_sparsity.control.compute`). ``True`` counts a step as one
            forward and backward of the model on the example input, until a batch runs
            several backward passes (a GAN's): then the next batch's step is recorded as
            it runs and counts for every batch. ``"step"`` records the first training
            batch's step (also a teacher's forward, products in the loss; the optimizers'
            updates excluded) and counts every batch as that step
            (:meth:`SparsityMeter.start_step`). A model whose training step cannot be
            traced is warned about once and trains on, uncounted.
        speed: at fit end, time the forward with dense vs sparse kernels
            (:func:`lightning_sparsity.speed`: CSR on CPU, 2:4 on CUDA), log
            ``sparsity/speedup_measured`` and write ``sparsity_speed.md``; one process only.
        export: ``"compact"``: at fit end, write the compacted model
            (:func:`lightning_sparsity.compact`, dead rows and channels removed) to
            ``model_compact.pt`` in the run directory, and its table to
            ``model_compact.md``; ``None`` writes nothing. One process only.
        rewind_epoch: ``k``: right after each prune, write the model's weights back to their
            values after ``k`` completed epochs (``0``: the initial weights), pruned entries
            staying zero: iterative magnitude pruning with rewinding (Frankle & Carbin's
            lottery tickets). The whole model is rewound (biases, norms and their buffers
            too); the copy is taken at the point of epoch ``k``, kept on the weights' device
            and in checkpoints. Default: the pruner's
            :class:`~lightning_sparsity.schedules.LotteryTicket` schedule's ``rewind_epoch``
            (a different one is refused), else no rewinding. Must come before the
            schedule's first prune.
        rewind_optimizer: also restore the optimizers' state (momentum, moments, learning
            rates) and the LR schedulers' state of epoch ``k`` at each rewind; the pruned
            entries' state is zeroed again. ``False``: they carry on.

    Raises:
        TypeError: if an argument has the wrong type.
        ValueError: for a bad ``step``, ``table_every_n_epochs`` or ``prune_every_n_steps``,
            an ``adjust`` budget without a pruner or with a pruner that has a schedule.
    """

    def __init__(
        self,
        pruning: MagnitudePruner | None = None,
        budget: FlopBudget | None = None,
        *,
        guard: MetricGuard | None = None,
        example_input: Any | None = None,
        input_from_batch: Callable[[Any], Any] | None = None,
        per_layer: bool = True,
        step: XAxis = "epoch",
        table_every_n_epochs: int = 1,
        write_files: bool = True,
        prune_every_n_steps: int | None = None,
        prog_bar: bool = True,
        verbose: bool = True,
        name: str | None = None,
        hparams: dict[str, Any] | None = None,
        hparams_experiment: bool = True,
        train_flops: bool | Literal["step"] = True,
        speed: bool = False,
        export: Literal["compact"] | None = None,
        rewind_epoch: int | None = None,
        rewind_optimizer: bool = False,
    ) -> None:
        # every argument checked at once; a wrong type wins over a wrong value
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
        if export is not None:
            check_choice("export", export, ("compact",), value_errors)
        if input_from_batch is not None and not callable(input_from_batch):
            type_errors.append(
                f"`input_from_batch` must be callable, got {type(input_from_batch).__name__}"
            )
        flags = {
            "per_layer": per_layer,
            "write_files": write_files,
            "prog_bar": prog_bar,
            "verbose": verbose,
            "speed": speed,
            "hparams_experiment": hparams_experiment,
        }
        check_bools(flags, type_errors)
        if not isinstance(train_flops, bool) and train_flops != "step":
            type_errors.append(f"`train_flops` must be a bool or 'step', got {train_flops!r}")
        if example_input is not None and not isinstance(example_input, (Tensor, tuple, list, dict)):
            type_errors.append(
                "`example_input` must be a Tensor, a tuple/list of positional arguments, a dict"
                f" of keyword arguments or None, got {type(example_input).__name__}"
            )
        elif any(isinstance(t, Tensor) and t.is_meta for t in tree_flatten(example_input)[0]):
            value_errors.append(
                "`example_input` holds a tensor on the meta device (a shape, no values): the"
                " sparse and effective counts need real values; give a real tensor (it is moved"
                " to the model's device)"
            )
        if name is not None and (not isinstance(name, str) or not name):
            type_errors.append(f"`name` must be a non-empty str or None, got {name!r}")
        if hparams is not None and not isinstance(hparams, dict):
            type_errors.append(f"`hparams` must be a dict or None, got {hparams!r}")
        check_choice("step", step, _STEPS, value_errors)
        check_int("table_every_n_epochs", table_every_n_epochs, value_errors)
        if type_errors or value_errors:
            message = "; ".join(type_errors + value_errors)
            raise TypeError(message) if type_errors else ValueError(message)
        self.pruning = pruning
        self.budget = budget
        self.guard = guard
        self.example_input = example_input
        self.input_from_batch = input_from_batch or default_input_from_batch
        self.per_layer = per_layer
        self.step = step
        self.table_every_n_epochs = table_every_n_epochs
        self.write_files = write_files
        self.prune_every_n_steps = prune_every_n_steps
        self.prog_bar = prog_bar
        self.verbose = verbose
        self.name = name
        self.hparams = dict(hparams or {})
        self.hparams_experiment = hparams_experiment
        self.speed = speed
        self.train_flops = train_flops
        self.export = export
        self.rewind_epoch = rewind_epoch
        self.rewind_optimizer = rewind_optimizer
        self.controller = SparsityController(
            pruning,
            budget,
            guard,
            prune_every_n_steps=prune_every_n_steps,
            rewind_epoch=rewind_epoch,
            rewind_optimizer=rewind_optimizer,
        )
        self.controller.compute.enabled = bool(train_flops)
        self._backwards = 0  # in the batch running
        self._said_passes = False
        self._dir: Path | None = None
        self._writer: HistoryWriter | None = None
        self._layout_written: set[int] = set()
        self._series = SeriesWriters()
        self._restore_masks = False
        self._stored_input: Any | None = None
        self._warned_deadline = False
        self._handles: list[Any] = []
        self._averages: AveragedCopies | None = None
        self._loggers: list[Logged] = []  # this fit's loggers and versions (checkpointed)
        self._resumed: list[Logged] | None = None  # those of the fit a checkpoint resumes

    # ------------------------------------------------------------------ read-only views

    @property
    def history(self) -> list[HistoryPoint]:
        """The points so far: the model after ``point.epoch`` completed epochs."""
        return self.controller.history

    @property
    def report(self) -> SparsityReport | None:
        """The report of the last point."""
        return self.controller.report

    @property
    def frozen(self) -> bool:
        """Whether the budget froze the masks (met with ``action="stop"``)."""
        return self.budget is not None and not self.budget.pruning_allowed()

    @property
    def stopping_reason(self) -> str | None:
        """Why the budget stopped the fit (``"finetune_done"``, ``"deadline_missed"``)."""
        stopped = self.controller.stopped
        return None if stopped is None else stopped.reason

    @property
    def stopping_message(self) -> str | None:
        """The same for people."""
        stopped = self.controller.stopped
        return None if stopped is None else stopped.message

    @property
    def state_key(self) -> str:
        """``"SparsityCallback"``, or ``"SparsityCallback[name]"`` with a ``name``."""
        base = "SparsityCallback"
        return base if self.name is None else f"{base}[{self.name}]"

    @property
    def directory(self) -> Path | None:
        """Where the files go: the trainer's log directory (known from ``setup`` on)."""
        return self._dir

    def settings(self) -> dict[str, Any]:
        """What this callback and its pieces were built with (compared on resume)."""
        return {"step": self.step, **self.controller.settings()}

    # ------------------------------------------------------------------ setup

    def setup(self, trainer: Any, pl_module: nn.Module, stage: str) -> None:
        """Start a fit clean; find the log directory; check the other callbacks.

        Before loading a checkpoint (resume, or ``test(ckpt_path=...)``), give the model
        plain weights, as the checkpoint stores them; a resumed fit re-applies the masks.
        """
        check_strategy(trainer.strategy)
        self._dir = Path(trainer.log_dir or trainer.default_root_dir)
        if not trainer.loggers or getattr(trainer, "fast_dev_run", False):
            self._dir = None  # Lightning suppresses logging: no files either
        if stage == "fit":
            # a new fit starts clean; a resume then loads the checkpoint's state over it
            self.controller.reset()
            self._writer = None
            self._layout_written = set()
            self._restore_masks = False
            self._stored_input = None
            self._warned_deadline = False
            self._loggers = [] if self._dir is None else logged_versions(trainer.loggers)
            self._resumed = None
            # fast_dev_run (a sweep's one-batch check) sets max_epochs=1: no deadline there
            if not getattr(trainer, "fast_dev_run", False):
                for warning in self.controller.fit_warnings(trainer.max_epochs, trainer.max_steps):
                    rank_zero_warn(f"lightning_sparsity: {warning}")
        if trainer.ckpt_path and self.pruning is not None:  # any stage: test(ckpt_path=...)
            self.pruning.make_permanent(pl_module)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """The controller's state (history, masks, budget, guard), settings, input."""
        state = self.controller.state_dict()
        state["settings"] = self.settings()
        state["loggers"] = self._loggers  # for lightning_sparsity.resume_version
        if self._stored_input is not None:
            state["example_input"] = tree_map(
                lambda t: t.cpu() if isinstance(t, Tensor) else t, self._stored_input
            )
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the state; warn about changed settings, refuse what cannot continue.

        Raises:
            ValueError: if the x axis, ``prune_every_n_steps`` or the budget's count changed
                (one history would mix two meanings).
        """
        saved = state_dict.get("settings")
        if saved is not None:
            changed = compare_settings(saved, self.settings())
            fixed = [c for c in changed if c.split(":")[0] in _FIXED_SETTINGS]
            if fixed:
                raise ValueError(
                    f"lightning_sparsity: cannot resume this checkpoint's sparsity history with"
                    f" {'; '.join(fixed)}: the history would mix two meanings; start a new fit"
                    " (without ckpt_path) or keep these settings"
                )
            if changed:
                rank_zero_warn(
                    "lightning_sparsity: resuming with changed settings ("
                    + "; ".join(changed)
                    + "); the history continues, the budget decides again on the last point"
                )
            if _flatten(saved).get("pruning/allocation") is not None and self.pruning is None:
                rank_zero_warn(
                    "lightning_sparsity: the checkpoint was pruned by this callback, which now"
                    " has no pruner: its masks are no longer kept (pruned weights may regrow)"
                )
        self.controller.load_state_dict(state_dict)
        self._stored_input = state_dict.get("example_input")
        self._resumed = list(state_dict.get("loggers") or [])
        self._restore_masks = self.pruning is not None and "pruning" in state_dict

    def on_load_checkpoint(
        self, trainer: Any, pl_module: nn.Module, checkpoint: dict[str, Any]
    ) -> None:
        """Find the state of checkpoints written before the stable key (version 1).

        Their key held every scalar setting; it is renamed to :attr:`state_key`, so Lightning
        hands the state to :meth:`load_state_dict` (which reads the first version too).
        """
        states = checkpoint.get("callbacks")
        own = (states or {}).get(self.state_key)
        if isinstance(own, dict) and trainer.global_rank != 0:
            compute = own.get("compute")
            if isinstance(compute, dict) and (compute.get("epoch") or compute.get("owed")):
                # the epoch's training FLOPs so far (and what is owed) are every rank's sum:
                # rank 0 adds them
                own["compute"] = {**compute, "epoch": None, "owed": None}
        if not states or self.state_key in states or self.name is not None:
            return
        legacy = [k for k in states if isinstance(k, str) and k.startswith("SparsityCallback[(")]
        if len(legacy) == 1:
            states[self.state_key] = states.pop(legacy[0])

    def on_save_checkpoint(
        self, trainer: Any, pl_module: nn.Module, checkpoint: dict[str, Any]
    ) -> None:
        """Store plain weights (zeros in place) so a fresh, unpruned model loads them.

        ``"inplace"`` masks keep the weights plain already; ``"prune"`` pairs
        (``weight_orig``, ``weight_mask``) are folded, also in ``current_model_state``,
        where Lightning's ``WeightAveraging`` moves the model's own state (its averaged
        copy, plain, takes ``state_dict``). The masks travel in this callback's state.
        """
        own = (checkpoint.get("callbacks") or {}).get(self.state_key)
        if trainer.world_size > 1 and isinstance(own, dict) and "compute" in own:
            # every rank saves together: the epoch's training FLOPs so far, summed
            compute, gather = self.controller.compute, self._gather(trainer)
            own["compute"]["epoch"] = compute.partial(gather)
            own["compute"]["owed"] = compute.owed_over(gather)
        if self.pruning is not None and self.pruning.mask_storage == "prune":
            names = self.pruning.target_names(pl_module)
            for key in ("state_dict", "current_model_state"):
                state = checkpoint.get(key)
                if isinstance(state, dict):
                    plain_state(state, names)

    # ------------------------------------------------------------------ hooks

    def on_fit_start(self, trainer: Any, pl_module: nn.Module) -> None:
        """Re-apply restored masks; write the HParams entry before Lightning writes its own.

        Resumed: say so when the loggers start a new run beside the one resumed, or when
        that run is finished (nothing to train).
        """
        if self._restore_masks and self.pruning is not None:
            self.pruning.restore(pl_module)
            self._restore_masks = False
        if self._resumed is not None:
            self._resuming(trainer)
        self._write_hparams(trainer, pl_module)

    def _resuming(self, trainer: Any) -> None:
        """Warn when the resumed run gets a new logger version; say when it is finished."""
        saved, self._resumed = self._resumed or [], None
        moved = [
            f"{now['type']} version {was['version']!r} -> {now['version']!r}"
            for was, now in zip(saved, self._loggers, strict=False)
            if was.get("type") == now["type"]
            and was.get("version") is not None
            and now["version"] != was["version"]
            and now["root"] is not None
            and same_root(now["root"], was)
        ]
        if moved:
            rank_zero_warn(
                "lightning_sparsity: this fit resumes a run but logs as a new one"
                f" ({', '.join(moved)}): TensorBoard shows two runs, and the history and report"
                " go to the new directory; to continue the run, give the logger"
                " version=lightning_sparsity.resume_version(ckpt_path)"
                " (`lightning-sparsity fit --ckpt_path` does)"
            )
        last = self.history[-1].epoch if self.history else None
        reached = _reached_limit(trainer, last)
        if reached is not None:
            where = "" if moved or self.directory is None else f"; its logs are in {self.directory}"
            rank_zero_info(
                f"lightning_sparsity: the run is finished ({reached} reached at epoch {last}):"
                f" nothing to train{where}; raise {reached.split('=')[0]} to train on"
            )

    def on_train_start(self, trainer: Any, pl_module: nn.Module) -> None:
        """Keep masks through optimizer steps and weight averaging; take the first point.

        After a resume, the points it missed.
        """
        pruner = self.pruning
        if self.controller.rewind is not None:
            schedulers = [config.scheduler for config in trainer.lr_scheduler_configs]
            self.controller.rewind.bind(trainer.optimizers, schedulers)
        if pruner is not None:
            self._handles = [h for opt in trainer.optimizers for h in pruner.attach(opt)]
            total = trainer.estimated_stepping_batches
            steps = int(total) if math.isfinite(total) else None
            # what score= ranks by, if anything; RigL's first masks and update plan
            self._handles += pruner.observe(pl_module, steps)
            self._averages = AveragedCopies(pl_module, lambda: pruner._masked)
            for name in self._averages.attach(trainer.callbacks):
                rank_zero_warn(
                    f"lightning_sparsity: cannot find the averaged model of {name} (another"
                    " Lightning version?): its average is not masked; the masks are applied"
                    " again and the model counted again when the fit ends"
                )
        self._begin(trainer, pl_module)

    def teardown(self, trainer: Any, pl_module: nn.Module, stage: str) -> None:
        """Detach from the optimizers and weight averaging (at the end of a stage)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._series.close()
        if self._averages is not None:
            self._averages.detach()
            self._averages = None

    def on_train_batch_start(
        self, trainer: Any, pl_module: nn.Module, batch: Any, batch_idx: int
    ) -> None:
        """Without an explicit input, the meter starts on the first batch's first example.

        At each epoch's first batch, after every callback's ``on_train_epoch_start``, the
        masked weights are checked against their masks (see :meth:`_reapply`).
        """
        if not self.controller.bound:
            self._begin(trainer, pl_module, batch)
        elif batch_idx == 0:
            self._reapply(pl_module, f"at the start of epoch {int(trainer.current_epoch)}")
        if self.train_flops and self.controller.bound:
            self.controller.batch_start(pl_module, record=self.train_flops == "step")
        self._backwards = 0

    def on_before_backward(self, trainer: Any, pl_module: nn.Module, loss: Tensor) -> None:
        """Count the batch's backward passes (``train_flops=True`` counts one)."""
        self._backwards += 1

    def on_train_batch_end(
        self, trainer: Any, pl_module: nn.Module, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Count the batch's training FLOPs; with ``prune_every_n_steps``: prune every N steps."""
        if self.train_flops and self.controller.bound:
            self._count_batch(pl_module, self._batch_examples(batch))
        every = self.prune_every_n_steps
        if every is None or not self.controller.bound or self.frozen:
            return
        steps = int(trainer.global_step) // every
        done = self.controller.prune_step(
            pl_module, steps, self._metrics(trainer), self._agree(trainer), self._gather(trainer)
        )
        if done is not None:
            self._mask_averages()

    def _count_batch(self, pl_module: nn.Module, examples: int) -> None:
        """Add the batch to the training FLOPs.

        A step of several backward passes is counted as it runs (the next batch's step
        recorded, this batch corrected to it); a batch without one is named.
        """
        meter, passes = self.controller.meter, self._backwards
        known = meter is None or meter.step_recorded or meter.recording  # (recording: now)
        if self.train_flops is True and passes > 1 and not known:
            self.controller.owe_batch(examples)
            if not self._said_passes:
                self._said_passes = True
                rank_zero_info(
                    f"lightning_sparsity: the training step ran {passes} backward passes in"
                    " one batch: its training FLOPs are those of the step as it runs,"
                    " recorded at the next batch (train_flops='step' records the first)"
                )
            return
        self.controller.batch_end(pl_module, examples, passes)
        if passes == 0 and not self._said_passes:
            self._said_passes = True
            rank_zero_warn(
                "lightning_sparsity: the training step ran no backward pass in a batch; its"
                " training FLOPs are counted as a whole step's (a forward and a backward)"
            )

    def on_before_optimizer_step(self, trainer: Any, pl_module: nn.Module, optimizer: Any) -> None:
        """An optimizer's update is not part of a recorded step (``train_flops="step"``)."""
        if self.train_flops:
            self.controller.optimizer_step()

    def on_train_epoch_end(self, trainer: Any, pl_module: nn.Module) -> None:
        """Prune (schedule or FLOP budget), then measure, log and act on the budget."""
        self.controller.abort_batch()  # a recorded batch the module skipped never ended
        epoch = int(trainer.current_epoch) + 1
        if not self.controller.bound or (self.controller.last_epoch or 0) >= epoch:
            return  # no batch ran and no input was given; or this point is recorded
        self._reapply(pl_module, f"at the end of epoch {epoch}")
        if self.pruning is not None and trainer.world_size > 1:
            self.pruning.sync_scores()  # before the prune and the epoch's checkpoint
        outcome = self.controller.epoch_end(
            pl_module,
            epoch=epoch,
            global_step=int(trainer.global_step),
            step=self._x(trainer, epoch),
            metrics=self._metrics(trainer),
            agree=self._agree(trainer),
            gather=self._gather(trainer),
        )
        self._mask_averages()
        self._publish(trainer, outcome)
        self._log_to_module(pl_module, outcome.point)
        self._act(trainer, outcome.decision)

    def on_fit_end(self, trainer: Any, pl_module: nn.Module) -> None:
        """Count the final model again if it changed; final table, metrics, files, PNG.

        Weight averaging swaps its average in when training ends, after the last point; a
        callback may have written into the weights. The masks are checked (and applied
        again) and, if the model changed, counted again, so the last point and the report
        are those of the model the fit returns.
        """
        if self.controller.bound and self.history:
            broken = self._reapply(pl_module, "at fit end")
            if broken or (self._averages is not None and self._averages.swapped_in):
                self._recount(trainer, pl_module)
        report = self.report
        if not trainer.is_global_zero or report is None:
            return
        last = self.history[-1]
        table = report.to_markdown() + training_line(last)
        for writer in tensorboard_writers(trainer.loggers):
            writer.add_text("sparsity/layers", table, global_step=last.step)
        final = self._final_metrics(last)
        if self.export == "compact":
            self._export_compact(trainer, pl_module)
        timing = self._speed(trainer, pl_module)
        if timing is not None:
            final["sparsity/speedup_measured"] = timing.speedup
        for logger in trainer.loggers:
            logger.log_metrics(final, step=last.step)
        directory = self.directory
        if self.write_files and directory is not None:
            report.to_json(directory / "sparsity_report.json")
            (directory / "sparsity_report.md").write_text(table + "\n")
            self._plot(trainer, directory)
            ratio = training_ratio(last)
            trained = "" if ratio is None else f", training FLOPs {ratio:.3f} of dense"
            rank_zero_info(
                f"lightning_sparsity: sparse/dense FLOPs {last.flops_ratio:.3f}, parameter"
                f" sparsity {last.param_sparsity:.3f}{trained}; history, report and plot in"
                f" {directory}"
            )

    def _plot(self, trainer: Any, directory: Path) -> None:
        """``sparsity_curves.png``: the curves, the budget's deadline, the monitored metrics.

        The metrics are read back from the run's TensorBoard files (flushed first): those
        that checkpoints, early stopping or the guard monitor, else every ``val*`` one.
        """
        for writer in tensorboard_writers(trainer.loggers):
            writer.flush()
        metrics = metric_series(directory, self._monitors(trainer) or None)
        deadline = None if self.budget is None else self.budget.by_epoch
        plot_history(
            self.history, directory / "sparsity_curves.png", deadline=deadline, metrics=metrics
        )

    def _export_compact(self, trainer: Any, pl_module: nn.Module) -> None:
        """Write the compacted model and its table into the run directory (one process)."""
        directory = self.directory
        example_input = self._input(pl_module)
        if not self.write_files or directory is None or example_input is None:
            return
        if trainer.world_size > 1:
            rank_zero_warn(
                "lightning_sparsity: export='compact' compacts the whole model in one process;"
                f" skipped with {trainer.world_size} processes (call lightning_sparsity.compact"
                " after the fit)"
            )
            return
        small = compact(pl_module, example_input)
        torch.save(small, directory / "model_compact.pt")
        table = measure(small, example_input).to_markdown()
        (directory / "model_compact.md").write_text(table + "\n")
        rank_zero_info(f"lightning_sparsity: compacted model in {directory / 'model_compact.pt'}")

    def _speed(self, trainer: Any, pl_module: nn.Module) -> SpeedReport | None:
        """With ``speed=True``: the forward timed with dense vs sparse kernels (one process)."""
        if not self.speed:
            return None
        if trainer.world_size > 1:  # a forward on rank 0 alone would hang under FSDP
            rank_zero_warn(
                "lightning_sparsity: speed=True times a single process; skipped with"
                f" {trainer.world_size} processes (call lightning_sparsity.speed after the fit)"
            )
            return None
        example_input = self._input(pl_module)
        if example_input is None:
            return None
        timing = time_speed(pl_module, example_input)
        rank_zero_info(f"lightning_sparsity: {timing.summary}")
        directory = self.directory
        if self.write_files and directory is not None:
            (directory / "sparsity_speed.md").write_text(format_speed(timing) + "\n")
        return timing

    def on_exception(self, trainer: Any, pl_module: nn.Module, exception: BaseException) -> None:
        """Keep the plot of what finished; the history files are already on disk.

        A step being recorded stops (Lightning tears down without ``teardown`` then).
        """
        self.controller.abort_batch()
        directory = self.directory
        if trainer.is_global_zero and self.write_files and directory and len(self.history) > 1:
            try:
                self._plot(trainer, directory)
            except Exception as err:  # never hide the original exception
                rank_zero_warn(f"lightning_sparsity: could not write the plot: {err}")

    # ------------------------------------------------------------------ steps of the hooks

    def _x(self, trainer: Any, epoch: int) -> int:
        return epoch if self.step == "epoch" else int(trainer.global_step)

    @staticmethod
    def _metrics(trainer: Any) -> dict[str, Any]:
        return dict(trainer.callback_metrics)

    @staticmethod
    def _gather(trainer: Any) -> Callable[[float], list[float]]:
        """Every rank's value of a number (the guarded metric), on every rank."""

        def gather(value: float) -> list[float]:
            if trainer.world_size == 1:
                return [value]
            device = trainer.strategy.root_device
            values = trainer.strategy.all_gather(torch.tensor(value, device=device))
            return [float(v) for v in torch.atleast_1d(values).tolist()]

        return gather

    @staticmethod
    def _agree(trainer: Any) -> Callable[[bool], bool]:
        """Every rank must say yes (the guard), so all keep the same masks."""
        return lambda ok: bool(trainer.strategy.reduce_boolean_decision(ok, all=True))

    def _input(self, pl_module: nn.Module, batch: Any = None) -> Any | None:
        value = self.example_input
        if value is None:
            value = getattr(pl_module, "example_input_array", None)
        if value is None:
            value = self._stored_input
        if value is None and batch is not None:
            value = self._stored_input = _first_example(self._from_batch(batch))
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

    def _batch_examples(self, batch: Any) -> int:
        """The examples in a training batch: those of its model input.

        Without ``input_from_batch`` for a batch that is no ``(input, ...)`` (a dict, when
        ``example_input`` was given), the leading size of its first tensor, as Lightning
        takes a batch's size.
        """
        if self.input_from_batch is default_input_from_batch:
            try:
                return _examples(default_input_from_batch(batch))
            except TypeError:
                return _examples(batch)
        return _examples(self._from_batch(batch))

    def _from_batch(self, batch: Any) -> Any:
        """``input_from_batch(batch)``, refusing what is no model input.

        Raises:
            TypeError: if it returns ``None`` or anything but a Tensor, tuple/list or dict.
            Exception: what the user's ``input_from_batch`` raised, with a note naming it.
        """
        given = self.input_from_batch is not default_input_from_batch
        try:
            value = self.input_from_batch(batch)
        except Exception as err:
            if not given:
                raise
            note = (
                "lightning_sparsity: raised inside input_from_batch (the batch -> model input"
                f" function given to SparsityCallback), on a batch of type {type(batch).__name__}"
            )
            if not hasattr(err, "add_note"):  # pragma: no cover - Python 3.10
                raise RuntimeError(f"{note}: {type(err).__name__}: {err}") from err
            err.add_note(note)
            raise
        if not isinstance(value, (Tensor, tuple, list, dict)):
            what = "None" if value is None else f"a {type(value).__name__}"
            raise TypeError(
                f"SparsityCallback: input_from_batch returned {what} for a batch of type"
                f" {type(batch).__name__}; it must return the model input ({_INPUT_KINDS})"
            )
        return value

    def _reapply(self, pl_module: nn.Module, when: str) -> bool:
        """Check the masked weights against their masks (one host sync); apply them again.

        Another callback may write dense values into pruned weights (copying saved
        weights, loading a ``state_dict``): the counts would then disagree with the masks,
        and pruning be undone silently. Warns, naming the weights.

        Returns:
            Whether any weight disagreed.
        """
        masked = [] if self.pruning is None else list(self.pruning._masked)
        counts = reapply(masked) if masked else []
        if not any(counts):
            return False
        fqns = {id(m): fqn for fqn, m in pl_module.named_modules()}
        broken = [
            f"{param_name(fqns.get(id(module), '?'), name)} ({count})"
            for (module, name), count in zip(masked, counts, strict=True)
            if count
        ]
        rank_zero_warn(
            f"lightning_sparsity: {when}, pruned weights disagreed with their masks (entries"
            f" in parentheses): {', '.join(broken)}; something wrote dense values into them (a"
            " callback copying weights or loading a state_dict?). The masks are applied"
            " again, so the counts and the model stay pruned"
        )
        return True

    def _mask_averages(self) -> None:
        """The masks may have changed: the averaged copies of weight averaging follow."""
        if self._averages is not None:
            self._averages.mask()
            self._averages.swapped_in = False

    def _recount(self, trainer: Any, pl_module: nn.Module) -> None:
        """Count the model again after the last point; new counts replace that point's."""
        meter, last = self.controller.meter, self.history[-1]
        assert meter is not None
        report = meter.measure()
        self.controller.report = report
        total = report.total
        counts = {
            "flops_sparse": total.flops_sparse,
            "flops_realizable": total.flops_realizable,
            "params_nonzero": total.params_nonzero,
        }
        if all(getattr(last, key) == value for key, value in counts.items()):
            return
        changed: dict[str, Any] = dict(counts)
        if self.pruning is not None:
            changed["pruned_sparsity"] = report.sparsity_of(self.pruning.target_names(pl_module))
        if self.budget is not None and last.budget_count == self.budget.count:
            budget_report = self.controller._budget_report(pl_module, report)
            changed["budget_value"] = self.budget.value(budget_report)
        point = dataclasses.replace(last, **changed)
        self.history[-1] = point
        rank_zero_info(
            f"lightning_sparsity: the weights changed after the point of epoch {last.epoch}"
            " (weight averaging swapped in, or masks applied again): it now holds the counts"
            " of the final model"
        )
        self._publish(trainer, Outcome(point, report))

    def _begin(self, trainer: Any, pl_module: nn.Module, batch: Any = None) -> None:
        """Bind the meter; record the first point, or catch up after a resume."""
        example_input = self._input(pl_module, batch)
        if example_input is None:
            return  # wait for the first batch
        controller = self.controller
        controller.bind(pl_module, example_input)
        epoch, global_step = int(trainer.current_epoch), int(trainer.global_step)
        if not self.history:
            outcome = controller.start(
                pl_module, epoch=epoch, global_step=global_step, step=self._x(trainer, epoch)
            )
            self._mask_averages()
            self._publish(trainer, outcome)
            self._act(trainer, outcome.decision)
            return
        self._drop_stale_events(trainer)
        last = controller.last_epoch or 0
        # a checkpoint saved on an epoch's last batch is written before that epoch's end
        # hook, which Lightning does not run again on resume: take the missed points now
        for missed in range(last + 1, epoch + 1):
            outcome = controller.epoch_end(
                pl_module,
                epoch=missed,
                global_step=global_step,
                step=self._x(trainer, missed),
                metrics=self._metrics(trainer),
                agree=self._agree(trainer),
                gather=self._gather(trainer),
            )
            self._publish(trainer, outcome)
            rank_zero_info(f"lightning_sparsity: took the point of epoch {missed} on resume")
        if self.prune_every_n_steps is not None:
            controller.prune_step(
                pl_module,
                global_step // self.prune_every_n_steps,
                self._metrics(trainer),
                self._agree(trainer),
                self._gather(trainer),
            )
        self._mask_averages()
        decision = controller.resume()
        if decision is not None and decision.stop_training:
            rank_zero_info(f"lightning_sparsity: already stopped: {decision.message}")
        self._act(trainer, decision)

    def _act(self, trainer: Any, decision: BudgetDecision | None) -> None:
        """Follow a budget decision the way Lightning's EarlyStopping stops."""
        if decision is None:
            return
        assert self.budget is not None
        if decision.freeze_pruning and self.budget.reached_epoch == decision.epoch:
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

    def metrics(self, point: HistoryPoint, report: SparsityReport) -> dict[str, float]:
        """The scalars logged for one point (stable keys)."""
        per = f"per_{point.per}"
        metrics = {
            f"sparsity/flops_dense_{per}": float(point.flops),
            f"sparsity/flops_sparse_{per}": float(point.flops_sparse),
            "sparsity/flops_ratio": point.flops_ratio,
            **(
                {}
                if point.flops_realizable is None
                else {f"sparsity/flops_realizable_{per}": float(point.flops_realizable)}
            ),
            "sparsity/params": float(point.params),
            "sparsity/params_nonzero": float(point.params_nonzero),
            "sparsity/param_sparsity": point.param_sparsity,
        }
        if point.train_flops is not None:  # the training steps that ran, all examples
            for key in (
                "train_flops",
                "train_flops_dense",
                "train_flops_total",
                "train_flops_dense_total",
            ):
                metrics[f"sparsity/{key}"] = float(getattr(point, key))
        if point.target_sparsity is not None:
            metrics["sparsity/target_sparsity"] = point.target_sparsity
        if point.pruned_sparsity is not None:
            metrics["sparsity/pruned_sparsity"] = point.pruned_sparsity
        if point.budget_limit is not None and point.budget_value is not None:
            metrics["budget/limit"] = float(point.budget_limit)
            metrics["budget/value"] = float(point.budget_value)
            metrics["budget/slack"] = float(point.budget_slack or 0.0)
            metrics["budget/within"] = float(point.budget_status == "within")
            if point.budget_scheduled is not None:
                metrics["budget/scheduled"] = float(point.budget_scheduled)
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

    def _publish(self, trainer: Any, outcome: Outcome) -> None:
        """Log one point to every logger, TensorBoard's extras and the history files."""
        point, report = outcome.point, outcome.report
        metrics = self.metrics(point, report)
        at_step = self._at_global_step(point, metrics)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=point.step)
            if at_step:
                logger.log_metrics(at_step, step=point.global_step)
        if not trainer.is_global_zero:
            return
        for writer in tensorboard_writers(trainer.loggers):
            if id(writer) not in self._layout_written:
                writer.add_custom_scalars(layout(point.per))
                self._layout_written.add(id(writer))
            global_step = point.global_step if at_step else None
            ratio = f"{_GLOBAL_STEP_TAGS}flops_ratio"
            self._series.write(writer, point, global_step=global_step, ratio_at_global_step=ratio)
            if point.budget_status is not None:
                writer.add_text("budget/status", _budget_text(point), global_step=point.step)
            every = self.table_every_n_epochs
            if every and point.epoch % every == 0:
                writer.add_text("sparsity/layers", report.to_markdown(), global_step=point.step)
        if self.write_files and self.directory is not None:
            if self._writer is None or self._writer.directory != self.directory:
                self._writer = HistoryWriter(self.directory)
            self._writer.write(self.history)
        if self.verbose:
            rank_zero_info(self._status(trainer, point))

    def _at_global_step(self, point: HistoryPoint, metrics: dict[str, float]) -> dict[str, float]:
        """On the epoch axis, the headline curves again at the global step (else nothing).

        Lightning logs ``val_acc`` and ``train_loss`` at the global step: these overlay them.
        """
        if self.step != "epoch" or point.global_step is None:
            return {}
        names = ("flops_ratio", "param_sparsity", "pruned_sparsity", "target_sparsity")
        return {
            f"{_GLOBAL_STEP_TAGS}{name}": metrics[f"sparsity/{name}"]
            for name in names
            if f"sparsity/{name}" in metrics
        }

    def _status(self, trainer: Any, point: HistoryPoint) -> str:
        """One line per point: sparse FLOPs, ratio, budget slack, monitored metrics."""
        parts = [
            f"lightning_sparsity: epoch {point.epoch}:"
            f" sparse FLOPs {count(point.flops_sparse)} per {point.per}"
            f" ({point.flops_ratio:.3f} of dense), parameter sparsity {point.param_sparsity:.3f}"
        ]
        if point.budget_slack is not None:
            status = (point.budget_status or "").replace("_", " ")
            parts.append(f"budget {status}, slack {point.budget_slack:+.3f}")
        if point.pruning is not None:
            parts.append(f"pruning {point.pruning}")
        logged = trainer.callback_metrics
        for monitor in self._monitors(trainer):
            if monitor in logged:
                parts.append(f"{monitor} {float(logged[monitor]):.4g}")
        return ", ".join(parts)

    def _log_to_module(self, pl_module: Any, point: HistoryPoint) -> None:
        """The headline numbers into ``trainer.callback_metrics`` (not the loggers again).

        So ``ModelCheckpoint(monitor="sparsity/flops_ratio")``, ``EarlyStopping`` and the
        progress bar can use them.
        """
        values = {
            "sparsity/flops_ratio": (point.flops_ratio, self.prog_bar),
            f"sparsity/flops_sparse_per_{point.per}": (float(point.flops_sparse), False),
            "sparsity/param_sparsity": (point.param_sparsity, False),
        }
        if point.budget_slack is not None:
            values["budget/slack"] = (point.budget_slack, self.prog_bar)
        for key, (value, bar) in values.items():
            pl_module.log(
                key,
                float(value),
                on_step=False,
                on_epoch=True,
                logger=False,
                prog_bar=bar,
                sync_dist=True,  # the same on every rank; avoids Lightning's epoch-end warning
            )

    def _monitors(self, trainer: Any) -> list[str]:
        """Metrics other parts of the fit watch: the guard's, checkpoints', early stopping's."""
        names = [] if self.guard is None else [self.guard.monitor]
        for cb in trainer.callbacks:
            monitor = getattr(cb, "monitor", None)
            if isinstance(monitor, str) and monitor not in names and cb is not self:
                names.append(monitor)
        return names

    def _final_metrics(self, last: HistoryPoint) -> dict[str, float]:
        final = {
            "sparsity/final_flops_ratio": last.flops_ratio,
            "sparsity/final_param_sparsity": last.param_sparsity,
            f"sparsity/final_flops_sparse_per_{last.per}": float(last.flops_sparse),
        }
        if last.train_flops_total is not None:
            final["sparsity/final_train_flops_total"] = float(last.train_flops_total)
        if last.budget_slack is not None:
            final["budget/final_slack"] = last.budget_slack
        return final

    def _hparams(self) -> dict[str, Any]:
        """The pruner, schedule, budget, guard and rewind settings, flat, for HParams."""
        pieces = {"pruning": self.pruning, "budget": self.budget, "guard": self.guard}
        out: dict[str, Any] = dict(self.hparams)
        for prefix, piece in pieces.items():
            if piece is not None:
                out[f"{prefix}/type"] = type(piece).__name__
                out.update(_flatten(piece.settings(), f"{prefix}/"))
        rewind = self.controller.rewind
        if rewind is not None:
            out["rewind/epoch"], out["rewind/optimizer"] = rewind.epoch, rewind.optimizer
        return out

    def _write_hparams(self, trainer: Any, pl_module: Any) -> None:
        """One HParams entry per run holding the module's, the data's and our settings.

        TensorBoard shows only the first entry in a run, and Lightning writes the module's
        right after ``on_fit_start``: so write the merged one first.
        """
        ours = self._hparams()
        if not ours or not trainer.is_global_zero:
            return
        theirs: dict[str, Any] = {}
        if getattr(pl_module, "_log_hyperparams", True):
            theirs.update(getattr(pl_module, "hparams_initial", {}) or {})
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and getattr(datamodule, "_log_hyperparams", True):
            theirs.update(getattr(datamodule, "hparams_initial", {}) or {})
        per = "example"
        tags = self._monitors(trainer)  # what the fit is judged by comes first
        tags += list(self._final_metrics(HistoryPoint(0, 0, 0, per, 1, 1, 1, 1)))
        if self.budget is not None:
            tags.append("budget/final_slack")
        varying = [*self.hparams, "budget/target"]  # a sweep's settings; a budget's target
        for logger in trainer.loggers:
            if is_tensorboard(logger):
                hparams = {**_flatten(theirs), **ours}
                write_hparams(
                    logger.experiment,
                    hparams,
                    list(dict.fromkeys(tags)),
                    varying=varying,
                    experiment=self.hparams_experiment,
                )
            else:
                logger.log_hyperparams(ours)

    def _drop_stale_events(self, trainer: Any) -> None:
        """Resumed: drop our TensorBoard points a killed run logged after the checkpoint."""
        if not trainer.is_global_zero or not self.history:
            return
        last = self.history[-1]
        for logger in trainer.loggers:
            if not is_tensorboard(logger):
                continue
            live = getattr(logger, "_experiment", None)
            skip = self._series.live_files()
            if live is not None:
                skip.append(Path(live.file_writer.event_writer._file_name))
            log_dir = Path(logger.log_dir)
            for run in [log_dir, *self._series.directories(log_dir)]:  # and the FLOP series'
                drop_events_after(run, last.step, _on_x_axis, skip=skip)
                if last.global_step is not None:
                    drop_events_after(run, last.global_step, _on_global_step, skip=skip)


def _on_x_axis(tag: str) -> bool:
    """Our tags logged at the point's step (epoch, or global step with that axis)."""
    return tag.startswith(_OUR_TAGS)


def _on_global_step(tag: str) -> bool:
    """Our copies at the global step, beside curves on the epoch axis."""
    return tag.startswith(_GLOBAL_STEP_TAGS)


def _budget_text(point: HistoryPoint) -> str:
    """The budget's status at a point, as text: TensorBoard neither smooths nor clips it."""
    limit = point.budget_scheduled if point.budget_scheduled is not None else point.budget_limit
    which = "scheduled limit" if point.budget_scheduled is not None else "limit"
    return (
        f"epoch {point.epoch}: {point.budget_status}: {point.budget_count}"
        f" {count(point.budget_value)} against the {which} {count(limit)}"
    )


# the Lightning base class: the only Lightning import of this module
from lightning_sparsity._lightning import pl  # noqa: E402


class SparsityCallback(SparsityCallbackLogic, pl.Callback):
    """Recount nonzero parameters and sparse FLOPs every epoch, prune, log, keep the history.

    A ``pytorch_lightning.Callback`` (a ``lightning.pytorch.Callback`` when only the
    ``lightning`` package is installed). See :class:`SparsityCallbackLogic` for the
    arguments.
    """
