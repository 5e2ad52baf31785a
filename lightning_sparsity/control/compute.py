"""Training compute: the FLOPs of the training steps that ran, per epoch and over the run.

Each training batch adds ``examples × cost``, ``cost`` the training step's FLOPs per example
(:meth:`SparsityMeter.count_training`: forward and backward) at the weights the batch ran
with. Counted at the fit's first batch and again when the masks change (the pruner's
``generation``); then again at every batch while the last count is not settled. A count is
settled when no trained entry was zero (``StepCount.still``: a step moves only trained
entries, so the nonzeros stay as they are), when two batches in a row cost the same, or
after a prune by a pruner that only zeroes (``pruner.regrows`` false). A weight RigL or SET
grows is live at zero until its first step, and a weight initialised to zero moves at the
first step: those are counted again at the next batch. (A live weight that stays exactly
zero for several steps and only then moves is counted as zero until the next change.) A
step that computes every weight gradient (RigL's growth steps, ``pruner.dense_gradients``)
takes that cost from the same count. The weight gradients counted are those of the live
entries (the pruner's masks), every entry of an unpruned weight. A batch whose optimizer
step the AMP scaler skips still ran its forward and backward: it counts. Under DDP each
rank adds its own batches; the epoch's sums are gathered over the ranks at its end.

The step is one forward and backward on the meter's example input, or the step recorded as
it ran (:meth:`SparsityMeter.start_step`): counted again once one is recorded. A batch
whose step was not the one its cost was chosen for (several backward passes; a recording
that saw none) is owed: added at that cost, then corrected to the next recorded step's cost
(in the epoch that step comes in; the total is exact). Lightning-free.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from torch import nn

from lightning_sparsity.counting.meter import StepCount

__all__ = ["TrainCompute"]

Gather = Callable[[float], list[float]]


class TrainCompute:
    """The training FLOPs that ran: dense and sparse, this epoch and in all."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.total_dense: float = 0
        self.total_sparse: float = 0
        self.epoch_dense: float = 0
        self.epoch_sparse: float = 0
        self.epoch_examples = 0  # the last closed epoch's, over all ranks
        self._examples = 0  # this epoch's so far, this process's
        self.failed: str | None = None  # why counting stopped (said once)
        self._cached: tuple[Any, StepCount] | None = None
        self._settled = False  # the cached count holds until the masks change
        self._pending: tuple[float, float] | None = None
        self._masks: tuple[Any, dict[str, Any]] | None = None  # the pruner's, per generation
        # batches whose step is not known yet (owe): examples, and the dense and sparse
        # FLOPs added for them meanwhile; corrected when a recorded step's cost is known
        self.owed: list[float] = [0, 0, 0]

    def reset(self) -> None:
        """A new fit: nothing counted."""
        self.__init__(self.enabled)  # type: ignore[misc]

    def begin_batch(self, meter: Any, pruner: Any, model: nn.Module) -> None:
        """Choose the cost of the batch about to run (counted again if the masks changed)."""
        self._pending = None
        if not self.enabled or self.failed is not None or meter is None:
            return
        # the masks, and the step they are counted for (a recorded one replaces the first)
        key = (id(meter), None if pruner is None else pruner.generation, meter.steps_recorded)
        if self._cached is None or self._cached[0] != key or not self._settled:
            count = self._measure(meter, pruner, model)
            if count is None:
                return
            if count.still:  # no trained entry at zero: the next steps cost the same
                self._settled = True
            elif self._cached is not None and self._cached[0] == key:
                self._settled = self._cached[1] == count  # counted again: did they settle?
            else:  # new masks: only a pruner that grows weights back moves them after
                self._settled = self._cached is not None and not (pruner is None or pruner.regrows)
            self._cached = (key, count)
        count = self._cached[1]
        dense = pruner is not None and pruner.dense_gradients  # RigL's growth step
        self._pending = (count.flops, count.flops_sparse_all if dense else count.flops_sparse)

    def _measure(self, meter: Any, pruner: Any, model: nn.Module) -> StepCount | None:
        """The step's count now (:meth:`SparsityMeter.count_training`); ``None`` if it failed.

        A model whose step cannot be traced is said once; the fit goes on, uncounted.
        """
        trainable: Any = "nonzero"
        if pruner is not None:
            key = (id(model), pruner.generation)  # the masks change with the generation only
            if self._masks is None or self._masks[0] != key:
                self._masks = (key, pruner.masks(model))
            trainable = self._masks[1] or "nonzero"
        try:
            return meter.count_training(trainable)
        except Exception as err:
            self.fail(err)
            return None

    @property
    def counting(self) -> bool:
        """Whether the training FLOPs are counted (on, and nothing failed)."""
        return self.enabled and self.failed is None

    def fail(self, err: Exception) -> None:
        """Stop counting for this fit, said once (the fit goes on)."""
        self.failed = f"{type(err).__name__}: {err}"
        self._pending = None
        warnings.warn(
            f"lightning_sparsity: the training FLOPs are not counted in this fit: {err}",
            UserWarning,
            stacklevel=5,
        )

    def cost_now(self, meter: Any, pruner: Any, model: nn.Module) -> float:
        """The sparse FLOPs of a plain step per example at the weights now (0 if failed)."""
        count = self._measure(meter, pruner, model)
        return 0.0 if count is None else count.flops_sparse

    def owe(self, examples: int) -> None:
        """Add the batch that ran, whose step is not the one its cost was chosen for.

        A step of several backward passes, or a recording that saw none: added now at the
        cost chosen (none when there was none), corrected to the next recorded step's
        cost by :meth:`settle_owed` (in whichever epoch that comes).
        """
        if not self.counting:
            return
        dense, sparse = self._pending or (0, 0)
        self._pending = (dense, sparse)
        self.end_batch(examples)
        self.owed = [self.owed[0] + examples, self.owed[1] + examples * dense,
                     self.owed[2] + examples * sparse]  # fmt: skip

    def settle_owed(self) -> None:
        """Correct the owed batches to the cost chosen now (a recorded step's)."""
        examples, dense_added, sparse_added = self.owed
        if self._pending is None or not examples:
            return
        dense, sparse = self._pending
        self.epoch_dense += examples * dense - dense_added
        self.epoch_sparse += examples * sparse - sparse_added
        self.owed = [0, 0, 0]

    def end_batch(self, examples: int) -> None:
        """Add the batch that ran: ``examples`` times its step's cost per example."""
        if self._pending is None:
            return
        dense, sparse = self._pending
        self._examples += examples
        self.epoch_dense += examples * dense
        self.epoch_sparse += examples * sparse
        self._pending = None

    def close_epoch(self, gather: Gather) -> dict[str, float] | None:
        """The epoch's sums over every rank, added to the totals (then zero for the next).

        Returns ``None`` when the training FLOPs are not counted.
        """
        if not self.enabled or self.failed is not None:
            return None
        dense = sum(gather(float(self.epoch_dense)))
        sparse = sum(gather(float(self.epoch_sparse)))
        self.epoch_examples = int(sum(gather(float(self._examples))))
        self.total_dense += dense
        self.total_sparse += sparse
        self.epoch_dense = self.epoch_sparse = 0
        self._examples = 0
        return {
            "train_flops": _plain(sparse),
            "train_flops_dense": _plain(dense),
            "train_flops_total": _plain(self.total_sparse),
            "train_flops_dense_total": _plain(self.total_dense),
        }

    def partial(self, gather: Gather | None = None) -> list[float]:
        """The epoch's sums so far, ``[dense, sparse, examples]``.

        This process's; with ``gather``, every rank's added (a collective: all call it).
        """
        mine = [self.epoch_dense, self.epoch_sparse, self._examples]
        return mine if gather is None else summed(mine, gather)

    def owed_over(self, gather: Gather) -> list[float]:
        """The owed batches' ``[examples, dense, sparse]`` added over every rank (collective)."""
        return summed(self.owed, gather)

    def state_dict(self) -> dict[str, Any]:
        """The totals and the epoch so far (a resume continues both).

        A checkpoint taken inside an epoch (on a batch's end, or after validation) is
        resumed at that epoch's remaining batches or its end: the batches that ran before
        it are in ``epoch``. Under DDP the caller replaces ``epoch`` with the sums over
        every rank and gives it to one rank only on resume.
        """
        return {
            "total_dense": self.total_dense,
            "total_sparse": self.total_sparse,
            "epoch": self.partial(),
            "owed": list(self.owed),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Read :meth:`state_dict`."""
        self.total_dense = state.get("total_dense", 0)
        self.total_sparse = state.get("total_sparse", 0)
        dense, sparse, examples = state.get("epoch") or (0, 0, 0)
        self.epoch_dense, self.epoch_sparse, self._examples = dense, sparse, int(examples)
        self.owed = list(state.get("owed") or (0, 0, 0))


def summed(values: list[float], gather: Gather) -> list[float]:
    """Each value added over every rank (a collective: all call it)."""
    return [_plain(sum(gather(float(v)))) for v in values]


def _plain(value: float) -> float:
    """An integral float as an int (FLOPs of integer costs stay exact in JSON)."""
    return int(value) if float(value).is_integer() else value
