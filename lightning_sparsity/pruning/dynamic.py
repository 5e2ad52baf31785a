"""Dynamic sparse training: RigL (Evci et al. 2020) and SET (Mocanu et al. 2018).

The sparsity of every layer stays constant while the connections move: every ``delta_t``
optimizer steps, until ``end_step``, each layer drops the ``k`` live weights of smallest
magnitude and grows ``k`` others — RigL those with the largest gradient magnitude (the
whole gradient, taken at that step only), SET at random — with
``k = round(f(t) · n)``, ``n`` the layer's live weights and
``f(t) = drop_fraction / 2 · (1 + cos(π t / end_step))`` (the paper's cosine decay).

The rule, exactly (what ``tests/test_dynamic.py`` implements by brute force):

- the step ``t`` (1, 2, ...: the optimizer steps that ran) updates when ``t % delta_t == 0``
  and ``t < end_step``; its gradient reaches pruned entries (the masks let it through for
  that step's backward) and is read once it is final (after the closure Lightning steps
  with; after gradient accumulation), before the optimizer steps;
- drop: of the live weights, the ``k`` smallest ``|w|`` (ties: the lower flat index first);
- grow: of the weights not kept after the drop (the dropped ones included), the ``k`` with
  the largest ``|g|`` (SET: the largest of a uniform draw seeded by ``seed``, the
  parameter's name and ``t``); ties: the higher flat index first (the lower ones are
  left, as every selection here prunes the lower index first);
- a grown weight that was inactive starts at zero: its gradient is zeroed for this step and
  its optimizer state is zero (it was cleared when the weight was pruned); a weight dropped
  and grown in the same update was never inactive and keeps its value, as RigL's reference
  code does (``reinit_when_same=False``);
- then the optimizer steps with the gradients of the new live weights only, and the masks
  keep the others at zero.

The first masks: at :meth:`observe` (the callback calls it when training starts), each
layer is pruned to its sparsity (``allocation``: ``"erk"``, the paper's default, or
``"uniform"``), at random (``init="random"``, the paper's) or by magnitude. A model that
already carries masks (a resumed fit) keeps them.

The selection is the pruner's exact one (:mod:`.select`): one host sync for the drops of all
layers and one for the growths; sharded (FSDP2) weights are cut without gathering them.
Under DDP the gradients are averaged before the step, so every rank makes the same update.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from lightning_sparsity._checks import check_choice, check_int
from lightning_sparsity._shards import local, reduce_counts, shard_group
from lightning_sparsity.pruning import masks as storage
from lightning_sparsity.pruning import select
from lightning_sparsity.pruning.chunks import count_nonzero
from lightning_sparsity.pruning.masks import param_name
from lightning_sparsity.pruning.pruner import (
    DEFAULT_INCLUDE_TYPES,
    MagnitudePruner,
    after_grads,
    fraction,
)
from lightning_sparsity.pruning.scores import random_scores, rows_of_rank

__all__ = ["SET", "RigL"]

Grow = Literal["gradient", "random"]


class RigL(MagnitudePruner):
    """Dynamic sparse training at a constant sparsity per layer (see the module docstring).

    A pruner like :class:`MagnitudePruner` (the same layer choice, in-place masks,
    checkpoints, DDP and FSDP2 support), without a schedule: its sparsity holds from the
    first step, and the connections move. Use it with ``SparsityCallback(ls.RigL(...))``,
    or in your own loop: ``rigl.observe(model, total_steps)``, ``rigl.attach(optimizer)``.

    Args:
        sparsity: The fraction of zeros over the chosen weights, in ``[0, 1)``.
        allocation: ``"erk"`` (default) or ``"uniform"``: the sparsity of each layer.
        delta_t: Optimizer steps between updates (the paper's ΔT, 100).
        drop_fraction: The fraction of each layer's live weights moved at the first update
            (α, 0.3), decayed by a cosine to 0 at ``end_step``.
        end_step: The step after which the masks stay (T_end). ``None``: ``end_fraction`` of
            the fit's total steps (the callback knows them; your own loop passes
            ``total_steps`` to :meth:`observe`).
        end_fraction: See ``end_step`` (the paper's 0.75).
        grow: ``"gradient"`` (RigL) or ``"random"`` (SET).
        init: The first masks: ``"random"`` (the paper's) or ``"magnitude"``.
        seed: Seeds the random first masks and SET's growth.
        include_types, include, exclude, keep_first_dense, keep_last_dense, parameter_name,
        parameters, min_density, max_sparsity: As for :class:`MagnitudePruner`
            (``min_density`` and ``max_sparsity`` bind the first masks only; updates keep each
            layer's count).

    Raises:
        ValueError: For a bad argument (all of them named at once).
    """

    takes_targets: ClassVar[bool] = False  # its sparsity is constant
    regrows: ClassVar[bool] = True  # grown weights are live at zero until their first step

    def __init__(
        self,
        sparsity: float = 0.9,
        *,
        allocation: Literal["erk", "uniform"] = "erk",
        delta_t: int = 100,
        drop_fraction: float = 0.3,
        end_step: int | None = None,
        end_fraction: float = 0.75,
        grow: Grow = "gradient",
        init: Literal["random", "magnitude"] = "random",
        seed: int = 0,
        include_types: Sequence[str] = DEFAULT_INCLUDE_TYPES,
        include: list[str] | None = None,
        exclude: list[str] | None = None,
        keep_first_dense: bool = False,
        keep_last_dense: bool = False,
        parameter_name: str = "weight",
        parameters: Any = None,
        min_density: float = 0.0,
        max_sparsity: Any = None,
    ) -> None:
        errors: list[str] = []
        name = type(self).__name__
        if not fraction(sparsity, closed=False):
            errors.append(f"`sparsity` must be a number in [0, 1), got {sparsity!r}")
        check_choice("allocation", allocation, ("erk", "uniform"), errors)
        check_int("delta_t", delta_t, errors, minimum=1)
        check_int("end_step", end_step, errors, minimum=1, optional=True)
        for arg, value in (("drop_fraction", drop_fraction), ("end_fraction", end_fraction)):
            if not fraction(value, closed=True) or value == 0:
                errors.append(f"`{arg}` must be a number in (0, 1], got {value!r}")
        check_choice("grow", grow, ("gradient", "random"), errors)
        check_choice("init", init, ("random", "magnitude"), errors)
        if errors:
            raise ValueError(f"{name}: " + "; ".join(errors))
        super().__init__(
            allocation=allocation,
            include_types=include_types,
            include=include,
            exclude=exclude,
            keep_first_dense=keep_first_dense,
            keep_last_dense=keep_last_dense,
            parameter_name=parameter_name,
            parameters=parameters,
            min_density=min_density,
            max_sparsity=max_sparsity,
            score=init,
            seed=seed,
        )
        self.sparsity = float(sparsity)
        self.delta_t = delta_t
        self.drop_fraction = float(drop_fraction)
        self.end_step = end_step
        self.end_fraction = float(end_fraction)
        self.grow = grow
        self.init = init
        self.step_count = 0  # optimizer steps that ran (t of the last one)
        self.updates = 0  # mask updates made
        self._end: int | None = end_step  # end_step, or resolved from the fit's total
        self._live: list[int] = []  # live weights per target (over all ranks)
        self._params: list[tuple[nn.Module, str]] = []
        self._fqns: list[str] = []

    # ------------------------------------------------------------------ plan
    def drop_fraction_at(self, t: int) -> float:
        """``f(t) = drop_fraction / 2 · (1 + cos(π t / end_step))`` (0 from ``end_step`` on)."""
        end = self._end
        if end is None or t >= end:
            return 0.0
        return self.drop_fraction / 2.0 * (1.0 + math.cos(math.pi * t / end))

    def is_update_step(self, t: int) -> bool:
        """Whether the ``t``-th optimizer step (1, 2, ...) updates the masks."""
        return self._end is not None and t % self.delta_t == 0 and t < self._end

    def observe(self, model: nn.Module, total_steps: int | None = None) -> list[Any]:
        """Install the first masks (unless the model carries them), plan the updates.

        Args:
            model: The model.
            total_steps: The fit's optimizer steps; needed when ``end_step`` is ``None``.

        Raises:
            ValueError: If neither ``end_step`` nor ``total_steps`` is known.
        """
        if self.end_step is None:
            if total_steps is None:
                raise ValueError(
                    f"{type(self).__name__}: end_step=None takes end_fraction of the fit's"
                    " total optimizer steps, which is not known here: give end_step, or"
                    " observe(model, total_steps)"
                )
            self._end = max(1, round(self.end_fraction * total_steps))
        targets = self._targets_or_raise(model)
        self._params = [(m, n) for _, m, n in targets]
        self._fqns = [param_name(f, n) for f, _, n in targets]
        if not any(storage.is_masked(m, n) for m, n in self._params):
            self.apply(model, self.sparsity)
        keeps = [storage.trained_and_mask(m, n)[1] for m, n in self._params]
        whole = [storage.trained(m, n) for m, n in self._params]
        counts = torch.stack(
            [
                count_nonzero(k) if k is not None else torch.tensor(local(w).numel())  # type: ignore[arg-type]
                for k, w in zip(keeps, whole, strict=True)
            ]
        ).to(torch.int64)
        self._live = [int(c) for c in reduce_counts(counts, whole).tolist()]  # type: ignore[arg-type]
        self._arm()
        return []

    def _arm(self) -> None:
        """Let the next step's gradients through the masks when it updates."""
        storage.dense_grads(self._params, self.dense_gradients)

    @property
    def dense_gradients(self) -> bool:
        """Whether the coming step (``step_count + 1``) updates: its gradients are whole."""
        return bool(self._params) and self.is_update_step(self.step_count + 1)

    # ------------------------------------------------------------------ steps
    def attach(self, optimizer: Any) -> list[Any]:
        """Keep the masks through ``optimizer``'s steps and update them every ``delta_t``."""
        handles = super().attach(optimizer)
        handles.append(optimizer.register_step_pre_hook(after_grads(self._before_step)))
        handles.append(optimizer.register_step_post_hook(lambda *_: self._arm()))
        return handles

    def _before_step(self) -> None:
        t = self.step_count + 1
        self.step_count = t
        if self._params and self.is_update_step(t):
            self.update(t)

    def update(self, t: int) -> None:
        """Drop and grow in every layer for step ``t`` (the gradients must be whole now)."""
        weights, current = [], []
        for module, name in self._params:
            weight, keep = storage.trained_and_mask(module, name)
            weights.append(weight)
            current.append(keep)
        whole = [storage.trained(m, n) for m, n in self._params]
        group = shard_group(whole)
        f = self.drop_fraction_at(t)
        moved = [round(f * n) for n in self._live]
        numels = [int(w.numel()) if w is not None else 0 for w in whole]
        # drop: the k smallest |w| of the live ones (the pruned counted first)
        sources = select.make_sources(weights, current, None, None, group=group)
        groups = [
            ([s], float(n - live + k))
            for s, n, live, k in zip(sources, numels, self._live, moved, strict=True)
        ]
        cuts = select.cuts(groups, weighted=False)
        kept = [select.keep_masks([s], c)[0] for s, c in zip(sources, cuts, strict=True)]
        # grow: of what is not kept, the k largest scores (kept entries protected)
        scores = [self._grow_scores(i, t, w) for i, w in enumerate(weights)]
        candidates = select.make_sources(scores, None, None, None, group=group)
        grown_sources = [replace(s, protect=k) for s, k in zip(candidates, kept, strict=True)]
        groups = [
            ([s], float(n - live))
            for s, n, live in zip(grown_sources, numels, self._live, strict=True)
        ]
        cuts = select.cuts(groups, weighted=False)
        new = [select.keep_masks([s], c)[0] for s, c in zip(grown_sources, cuts, strict=True)]
        for (module, name), keep, after_drop in zip(self._params, new, kept, strict=True):
            param = storage.trained(module, name)
            if param is not None and param.grad is not None:
                # this step moves the weights that stayed live only: grown ones start at 0
                storage.multiply_by_keeps([(param.grad, after_drop)])
            storage.set_mask(module, name, keep, "inplace")
        self.generation += 1
        self._masked = list(self._params)
        storage.mask_state(self._optimizers(), self._params)
        self.updates += 1

    def _grow_scores(self, i: int, t: int, weight: Tensor) -> Tensor:
        module, name = self._params[i]
        if self.grow == "random":
            whole = storage.trained(module, name)
            shape = tuple(whole.shape) if whole is not None else tuple(weight.shape)
            full = random_scores(self.seed, f"{self._fqns[i]}:{t}", shape, weight.device)
            return _local_rows(full, whole, weight)
        param = storage.trained(module, name)
        grad = None if param is None else param.grad
        if grad is None:
            return torch.zeros_like(weight, dtype=torch.float32)
        return local(grad.detach())

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The pruner's state, the step count and the resolved ``end_step``."""
        state = super().state_dict()
        state["dynamic"] = {"step": self.step_count, "updates": self.updates, "end": self._end}
        model = self._model() if self._model is not None else None
        whole = [storage.trained(m, n) for m, n in self._params]
        if model is not None and shard_group(whole) is None:
            # grown weights are live at zero until they train: the nonzeros are not the
            # masks, so the masks themselves travel (1 byte per weight, on the CPU)
            state.pop("masked", None)
            state["masks"] = {k: m.cpu() for k, m in self.masks(model).items()}
        return state

    def load_state_dict(self, state_dict: Any) -> None:
        """Read :meth:`state_dict`."""
        super().load_state_dict(state_dict)
        dynamic = state_dict.get("dynamic") or {}
        self.step_count = int(dynamic.get("step", 0))
        self.updates = int(dynamic.get("updates", 0))
        if self.end_step is None and dynamic.get("end") is not None:
            self._end = int(dynamic["end"])

    def reset(self) -> None:
        """Forget the model, the steps and what a state held."""
        super().reset()
        self.step_count = 0
        self.updates = 0
        self._end = self.end_step
        self._live, self._params, self._fqns = [], [], []

    _SETTINGS: ClassVar[tuple[str, ...]] = (
        "sparsity",
        "allocation",
        "delta_t",
        "drop_fraction",
        "end_step",
        "end_fraction",
        "grow",
        "init",
        "seed",
        "include_types",
        "include",
        "exclude",
        "keep_first_dense",
        "keep_last_dense",
        "parameter_name",
        "parameters",
        "min_density",
        "max_sparsity",
    )


class SET(RigL):
    """Sparse Evolutionary Training (Mocanu et al. 2018): :class:`RigL` growing at random.

    The same arguments as :class:`RigL` but ``grow`` (always ``"random"``).
    """

    def __init__(self, sparsity: float = 0.9, **kwargs: Any) -> None:
        if "grow" in kwargs:
            raise ValueError(f"SET grows at random; got grow={kwargs['grow']!r} (use RigL)")
        super().__init__(sparsity, grow="random", **kwargs)

    _SETTINGS: ClassVar[tuple[str, ...]] = tuple(k for k in RigL._SETTINGS if k != "grow")


def _local_rows(full: Tensor, whole: Any, weight: Tensor) -> Tensor:
    """This rank's rows of a whole-shape draw (the draw itself when not sharded)."""
    if full.shape == weight.shape:
        return full
    first, rows = rows_of_rank(whole)
    return full[first : first + rows]
