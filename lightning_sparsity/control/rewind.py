"""Rewinding: the survivors of each prune go back to their values after ``k`` epochs.

Iterative magnitude pruning with rewinding (Frankle & Carbin 2019, "the lottery ticket
hypothesis"; Frankle et al. 2020, "linear mode connectivity and the lottery ticket
hypothesis"): train, prune, set the weights that survive back to their values after ``k``
completed epochs (``k = 0``: the initial weights), train again, prune again.
:class:`~lightning_sparsity.schedules.LotteryTicket` gives the targets; :class:`Rewind`
keeps the copy of epoch ``k`` and writes it back.

What is rewound: the whole model state, as in the papers' code: every parameter (the pruned
weights and the others: biases, norms, layers kept dense) and every persistent buffer (batch
norm statistics), but not the masks, so pruned entries stay zero. Under
``mask_storage="prune"`` the trained ``weight_orig`` is what is written: the reset reaches
the next forward (Lightning's ``ModelPruning`` once wrote the computed ``weight`` instead,
which the next forward overwrote: Lightning issue #13643), and the copy is never shared
with the model (its fix assigns ``param.data = copy.data``, so training moves the copy too
and a second reset restores trained values). Optionally (``optimizer=True``) the
optimizers' state (momentum, Adam's moments, the learning rates) and the LR schedulers'
state after epoch ``k`` are restored too; the pruned entries' optimizer state is zeroed
again.

The copy lives on the weights' device (as large as the model's parameters and buffers;
taking it and writing it back do no host sync); a checkpoint keeps a CPU copy, so a resumed
fit rewinds to the same values.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from lightning_sparsity._checks import check_bools, check_int
from lightning_sparsity._shards import is_sharded
from lightning_sparsity.pruning import MagnitudePruner
from lightning_sparsity.pruning import masks as storage
from lightning_sparsity.pruning.masks import param_name
from lightning_sparsity.pruning.schedules import LotteryTicket

__all__ = ["Rewind", "check_rewind", "model_state", "rewind_epoch_of"]

Masked = Sequence[tuple[nn.Module, str]]


def rewind_epoch_of(pruning: object, rewind_epoch: object) -> Any:
    """The epoch to rewind to: ``rewind_epoch`` if given, else a LotteryTicket schedule's."""
    if rewind_epoch is not None:
        return rewind_epoch
    schedule = getattr(pruning, "schedule", None)
    return schedule.rewind_epoch if isinstance(schedule, LotteryTicket) else None


def check_rewind(
    pruning: object,
    rewind_epoch: object,
    rewind_optimizer: object,
    prune_every_n_steps: object,
    type_errors: list[str],
    value_errors: list[str],
) -> None:
    """Append what is wrong with the rewinding settings (nothing if all is well).

    Rewinding follows a pruner's schedule at epoch ends; it needs the copy of epoch ``k``
    before the first prune; a LotteryTicket schedule carries ``k`` itself, and a
    ``rewind_epoch`` beside it must say the same.
    """
    before = len(value_errors)
    check_int("rewind_epoch", rewind_epoch, value_errors, optional=True)
    check_bools({"rewind_optimizer": rewind_optimizer}, type_errors)
    if len(value_errors) > before:
        return
    schedule = getattr(pruning, "schedule", None)
    if (
        isinstance(schedule, LotteryTicket)
        and rewind_epoch is not None
        and rewind_epoch != schedule.rewind_epoch
    ):
        value_errors.append(
            f"`rewind_epoch={rewind_epoch!r}` contradicts the schedule's"
            f" LotteryTicket(rewind_epoch={schedule.rewind_epoch}): give the epoch once (the"
            " schedule's is used when `rewind_epoch` is None)"
        )
        return
    k = rewind_epoch_of(pruning, rewind_epoch)
    if k is None:
        if rewind_optimizer is True:
            value_errors.append(
                "`rewind_optimizer=True` needs an epoch to rewind to: pass `rewind_epoch=k` or"
                " a LotteryTicket schedule"
            )
        return
    if not isinstance(pruning, MagnitudePruner) or pruning.schedule is None:
        value_errors.append(
            f"`rewind_epoch={k!r}` rewinds after the pruner's schedule prunes: pass"
            " `pruning=MagnitudePruner(schedule=...)` (e.g. schedules.LotteryTicket); a"
            " FlopBudget with action='adjust' is not rewound"
        )
        return
    if prune_every_n_steps is not None:
        value_errors.append(
            f"`rewind_epoch={k!r}` counts epochs; with `prune_every_n_steps` the schedule"
            " counts pruning steps: use one of them"
        )
        return
    first = pruning.schedule.first_prune(k)
    if first is not None:
        value_errors.append(
            f"`rewind_epoch={k!r}` must come before the schedule's first prune, but"
            f" {type(pruning.schedule).__name__} prunes at epoch {first}: the copy to"
            f" rewind to is taken at the point of epoch {k}"
        )


def model_state(model: nn.Module) -> dict[str, Tensor]:
    """What a rewind restores: parameters and persistent buffers, by plain name.

    A ``"prune"``-masked weight goes by its plain name (``"fc.weight"``) and is its trained
    ``weight_orig``; mask buffers are left out; a tied tensor counts once.

    Raises:
        ValueError: for sharded (``DTensor``) parameters, which are not rewound yet.
    """
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for fqn, module in model.named_modules():
        for name, tensor in module._parameters.items():
            if tensor is None or id(tensor) in seen:
                continue
            if is_sharded(tensor):
                raise ValueError(
                    f"rewinding does not support sharded parameters yet ({param_name(fqn, name)}"
                    " is a DTensor); rewind with a single device or DDP"
                )
            plain = name[: -len("_orig")] if name.endswith("_orig") else name
            if plain != name and storage.storage_of(module, plain) != "prune":
                plain = name
            seen.add(id(tensor))
            out[param_name(fqn, plain)] = tensor
        for name, tensor in module._buffers.items():
            if tensor is None or id(tensor) in seen or name in module._non_persistent_buffers_set:
                continue
            base = name.rpartition("_")[0]
            if name.endswith(("_keep", "_mask")) and storage.storage_of(module, base) is not None:
                continue
            seen.add(id(tensor))
            out[param_name(fqn, name)] = tensor
    return out


def _cpu(value: Any) -> Any:
    return tree_map(lambda t: t.detach().cpu() if isinstance(t, Tensor) else t, value)


class Rewind:
    """The model after ``epoch`` completed epochs, written back into it after each prune.

    Lightning-free: :class:`~lightning_sparsity.SparsityController` calls :meth:`take` at
    the point of ``epoch`` and :meth:`apply` right after each prune; ``SparsityCallback``
    gives it the trainer's optimizers and LR schedulers (:meth:`bind`).

    Args:
        epoch: ``k``: completed epochs after which the copy is taken (``0``: at fit start).
        optimizer: also restore the optimizers' and LR schedulers' state of epoch ``k``.
    """

    def __init__(self, epoch: int, optimizer: bool = False) -> None:
        self.epoch = epoch
        self.optimizer = optimizer
        self._weights: dict[str, Tensor] | None = None
        self._optimizers: list[dict[str, Any]] = []
        self._schedulers: list[dict[str, Any]] = []
        self._bound: tuple[list[Any], list[Any]] = ([], [])

    @property
    def taken(self) -> bool:
        """Whether the copy of epoch :attr:`epoch` is held."""
        return self._weights is not None

    def bind(self, optimizers: Sequence[Any], schedulers: Sequence[Any] = ()) -> None:
        """The optimizers (and LR schedulers) whose state ``optimizer=True`` restores."""
        self._bound = (list(optimizers), list(schedulers))

    def reset(self) -> None:
        """Forget the copy and the bound optimizers (a new fit)."""
        self._weights = None
        self._optimizers, self._schedulers = [], []
        self._bound = ([], [])

    def take(self, model: nn.Module) -> None:
        """Copy the model's parameters and buffers (and optimizer state) as they are now.

        One device-side copy per tensor; no host sync.
        """
        with torch.no_grad():
            self._weights = {k: t.detach().clone() for k, t in model_state(model).items()}
        if self.optimizer:
            optimizers, schedulers = self._bound
            self._optimizers = [copy.deepcopy(o.state_dict()) for o in optimizers]
            self._schedulers = [copy.deepcopy(s.state_dict()) for s in schedulers]

    def apply(self, model: nn.Module, masked: Masked) -> None:
        """Write the copy back; pruned entries (``masked``) stay zero, their state too.

        Raises:
            RuntimeError: before :meth:`take` (and without a copy from a checkpoint).
            ValueError: if the model's tensors no longer match the copy's names and shapes,
                or the optimizers' number changed.
        """
        if self._weights is None:
            raise RuntimeError(
                f"lightning_sparsity: cannot rewind: no copy of the weights after {self.epoch}"
                " epochs was taken (a checkpoint saved without it?)"
            )
        state = model_state(model)
        wrong = sorted(
            k
            for k, saved in self._weights.items()
            if k not in state or state[k].shape != saved.shape
        )
        if wrong or len(state) != len(self._weights):
            extra = sorted(state.keys() - self._weights.keys())
            raise ValueError(
                "lightning_sparsity: cannot rewind: the model's tensors differ from the copy of"
                f" epoch {self.epoch} (missing or reshaped: {wrong}; new: {extra})"
            )
        with torch.no_grad():
            for key, saved in self._weights.items():
                target = state[key]
                if saved.device != target.device:  # read from a checkpoint: move once
                    saved = self._weights[key] = saved.to(target.device)
                target.copy_(saved)
        storage.enforce(masked)  # "inplace" masks: the pruned entries back to zero
        if not self.optimizer:
            return
        optimizers, schedulers = self._bound
        if len(optimizers) != len(self._optimizers) or len(schedulers) != len(self._schedulers):
            raise ValueError(
                "lightning_sparsity: cannot rewind the optimizers: the copy of epoch"
                f" {self.epoch} holds {len(self._optimizers)} optimizer(s) and"
                f" {len(self._schedulers)} LR scheduler(s), the fit has {len(optimizers)} and"
                f" {len(schedulers)}"
            )
        # copies: load_state_dict keeps tensors that are already on the right device, and
        # the optimizer would then move the saved state as it trains
        for optimizer, saved_state in zip(optimizers, self._optimizers, strict=True):
            optimizer.load_state_dict(copy.deepcopy(saved_state))
        for scheduler, saved_state in zip(schedulers, self._schedulers, strict=True):
            scheduler.load_state_dict(copy.deepcopy(saved_state))
        storage.mask_state(optimizers, masked)

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch": k}`` and, once taken, the copy on the CPU (for checkpoints)."""
        state: dict[str, Any] = {"epoch": self.epoch}
        if self._weights is not None:
            state["weights"] = _cpu(self._weights)
            if self.optimizer:
                state["optimizers"] = _cpu(self._optimizers)
                state["schedulers"] = _cpu(self._schedulers)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Read :meth:`state_dict` (the tensors move to the weights' device at the first rewind).

        Raises:
            ValueError: if the copy is of another epoch than :attr:`epoch`.
        """
        weights = state.get("weights")
        if weights is not None and state.get("epoch") != self.epoch:
            raise ValueError(
                f"lightning_sparsity: the checkpoint holds the weights after {state.get('epoch')}"
                f" epochs to rewind to, this fit rewinds to epoch {self.epoch}: keep"
                f" rewind_epoch={state.get('epoch')} or start a new fit"
            )
        self._weights = None if weights is None else dict(weights)
        self._optimizers = list(state.get("optimizers") or [])
        self._schedulers = list(state.get("schedulers") or [])
