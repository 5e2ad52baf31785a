"""Sparsity schedules: the target sparsity after ``t`` completed epochs.

One time convention for schedules, budgets, logged steps and files: ``t`` counts completed
epochs (``0`` = before training, the model as the fit starts); a schedule's value at ``t`` is
the sparsity the model must have after ``t`` completed epochs. With the callback's
``prune_every_n_steps=N``, ``t`` counts completed pruning steps (every ``N`` optimizer steps)
instead, as in Zhu & Gupta's AGP with Δt in steps.

Sparsity is the fraction of zeros among the pruned weights, a float in ``[0, 1)``.

Every schedule returns ``0.0`` (no pruning) before its first pruning epoch. Targets never
decrease: pruning is monotone (see :class:`~lightning_sparsity.pruning.MagnitudePruner`).
With a ``frequency`` Δt the target only changes at ``start_epoch + k·Δt`` and holds its last
value in between. A ramp's value at ``start_epoch`` is ``initial_sparsity`` (``0.0`` by
default), so with ``start_epoch=0`` the first epoch end is the first change.

The ramps share :func:`ramp_progress` with the FLOP curve of
:class:`~lightning_sparsity.FlopBudget`, so both move at the same epochs.

All constructor arguments are plain ints, floats and lists, so LightningCLI / jsonargparse
can build any schedule from YAML::

    schedule:
      class_path: lightning_sparsity.schedules.Cubic
      init_args: {final_sparsity: 0.8, start_epoch: 0, end_epoch: 10}
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from lightning_sparsity._checks import check_int

__all__ = [
    "Constant",
    "Cubic",
    "Curve",
    "Exponential",
    "FromCallable",
    "Linear",
    "LotteryTicket",
    "Schedule",
    "Step",
    "ramp",
    "ramp_progress",
]

Curve = Literal["cubic", "linear"]


def ramp_progress(t: int, start: int, end: int, frequency: int = 1) -> float:
    """How far a ramp from ``start`` to ``end`` has gone after ``t`` completed epochs.

    ``0`` up to ``start``, ``1`` from ``end`` on; in between ``(t_q - start) / (end - start)``
    with ``t_q = start + floor((t - start) / frequency) * frequency``, the last update at or
    before ``t``.

    Args:
        t: completed epochs (or pruning steps).
        start: where the ramp starts (progress 0).
        end: where it ends (progress 1), ``> start``.
        frequency: the ramp only moves every ``frequency`` epochs.
    """
    if t <= start:
        return 0.0
    if t >= end:
        return 1.0
    return (t - start) // frequency * frequency / (end - start)


def ramp(
    t: int, start: int, end: int, first: float, last: float, curve: Curve, frequency: int = 1
) -> float:
    """The value after ``t`` completed epochs of a ramp from ``first`` to ``last``.

    With ``p = ramp_progress(t, start, end, frequency)``:

    * ``"cubic"`` (Zhu & Gupta's AGP): ``last + (first - last) * (1 - p)**3``;
    * ``"linear"``: ``first + (last - first) * p``.
    """
    return _shape(first, last, ramp_progress(t, start, end, frequency), curve)


def _shape(first: float, last: float, progress: float, curve: Curve) -> float:
    if curve == "cubic":
        return last + (first - last) * (1.0 - progress) ** 3
    return first + (last - first) * progress


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_sparsity(name: str, value: object, errors: list[str]) -> None:
    if not _is_real(value) or not 0.0 <= float(value) < 1.0:  # type: ignore[arg-type]
        errors.append(f"`{name}` must be a float in [0, 1), got {value!r}")


def _raise(cls: type, errors: list[str]) -> None:
    if errors:
        raise ValueError(f"{cls.__name__}: " + "; ".join(errors))


class Schedule(ABC):
    """Base class: maps ``t`` completed epochs to the target sparsity after them."""

    def __call__(self, epoch: int) -> float:
        """Return the target sparsity after ``epoch`` completed epochs.

        Args:
            epoch: completed epochs ``t`` (``0`` = before training).

        Returns:
            The target sparsity, a float in ``[0, 1)``.

        Raises:
            ValueError: If ``epoch`` is not an int >= 0.
        """
        errors: list[str] = []
        check_int("epoch", epoch, errors)
        _raise(type(self), errors)
        return self._target(epoch)

    @abstractmethod
    def _target(self, epoch: int) -> float:
        """Return the target for a validated epoch."""

    @abstractmethod
    def is_pruning_epoch(self, epoch: int) -> bool:
        """Whether the target may change at ``epoch`` completed epochs (the pruner runs).

        Args:
            epoch: completed epochs ``t``.
        """

    @property
    @abstractmethod
    def last_epoch(self) -> int | None:
        """The epoch after which the target never changes (``None``: unknown)."""

    def first_prune(self, last: int) -> int | None:
        """The first ``t <= last`` at which the schedule prunes (a target above 0), or ``None``."""
        return next((t for t in range(last + 1) if self.is_pruning_epoch(t) and self(t) > 0), None)

    def peak(self) -> float | None:
        """The highest target the schedule ever sets (``None`` when :attr:`last_epoch` is unknown).

        Read off every epoch up to :attr:`last_epoch`, after which the target holds.
        """
        last = self.last_epoch
        if last is None:
            return None
        return max(self._target(t) for t in range(last + 1))

    def settings(self) -> dict[str, Any]:
        """``{"type": class name, **constructor arguments}`` (a function by its import path)."""
        out: dict[str, Any] = {"type": type(self).__name__}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if callable(value):  # FromCallable's fn, by its import path
                module = getattr(value, "__module__", "?")
                value = f"{module}.{getattr(value, '__qualname__', repr(value))}"
            out[f.name] = list(value) if isinstance(value, (list, tuple)) else value
        return out


@dataclass(frozen=True)
class Constant(Schedule):
    """One-shot pruning: ``0.0`` before ``start_epoch``, ``sparsity`` from it on.

    Args:
        sparsity: The target, in ``[0, 1)``.
        start_epoch: The completed epochs after which pruning happens (``0``: before
            training).

    Raises:
        ValueError: If an argument is out of range (all are reported at once).
    """

    sparsity: float
    start_epoch: int = 0

    def __post_init__(self) -> None:
        errors: list[str] = []
        _check_sparsity("sparsity", self.sparsity, errors)
        check_int("start_epoch", self.start_epoch, errors)
        _raise(type(self), errors)

    def _target(self, epoch: int) -> float:
        return float(self.sparsity) if epoch >= self.start_epoch else 0.0

    def is_pruning_epoch(self, epoch: int) -> bool:
        """True only at ``start_epoch``."""
        return epoch == self.start_epoch

    @property
    def last_epoch(self) -> int:
        """``start_epoch``."""
        return self.start_epoch


@dataclass(frozen=True)
class _Ramp(Schedule):
    """A ramp from ``initial_sparsity`` at ``start_epoch`` to ``final_sparsity`` at ``end_epoch``.

    The target is ``0.0`` before ``start_epoch`` and ``final_sparsity`` from ``end_epoch`` on.
    Between them it is updated at ``start_epoch + k * frequency`` only and holds in between;
    ``end_epoch - start_epoch`` must be a multiple of ``frequency`` so the final value is
    reached at ``end_epoch``.
    """

    final_sparsity: float
    start_epoch: int
    end_epoch: int
    initial_sparsity: float = 0.0
    frequency: int = 1

    def __post_init__(self) -> None:
        errors: list[str] = []
        _check_sparsity("final_sparsity", self.final_sparsity, errors)
        _check_sparsity("initial_sparsity", self.initial_sparsity, errors)
        check_int("start_epoch", self.start_epoch, errors)
        check_int("end_epoch", self.end_epoch, errors)
        check_int("frequency", self.frequency, errors, minimum=1)
        if not errors:
            if self.initial_sparsity > self.final_sparsity:
                errors.append(
                    f"`initial_sparsity` must be <= `final_sparsity` ({self.final_sparsity!r}),"
                    f" got {self.initial_sparsity!r}"
                )
            if self.end_epoch <= self.start_epoch:
                errors.append(
                    f"`end_epoch` must be > `start_epoch` ({self.start_epoch}),"
                    f" got {self.end_epoch}"
                )
            elif (self.end_epoch - self.start_epoch) % self.frequency:
                errors.append(
                    f"`end_epoch - start_epoch` ({self.end_epoch - self.start_epoch}) must be a"
                    f" multiple of `frequency` ({self.frequency})"
                )
        _raise(type(self), errors)

    def _target(self, epoch: int) -> float:
        if epoch < self.start_epoch:
            return 0.0
        if epoch >= self.end_epoch:
            return float(self.final_sparsity)
        return self._curve(ramp_progress(epoch, self.start_epoch, self.end_epoch, self.frequency))

    @abstractmethod
    def _curve(self, progress: float) -> float:
        """Return the sparsity at ``progress`` in ``[0, 1)`` of the ramp."""

    def is_pruning_epoch(self, epoch: int) -> bool:
        """True at ``start_epoch + k * frequency`` up to ``end_epoch``."""
        return (
            self.start_epoch <= epoch <= self.end_epoch
            and (epoch - self.start_epoch) % self.frequency == 0
        )

    @property
    def last_epoch(self) -> int:
        """``end_epoch``."""
        return self.end_epoch


@dataclass(frozen=True)
class Linear(_Ramp):
    """Linear ramp: ``s_t = s_i + (s_f - s_i) * (t_q - t0) / (t1 - t0)``.

    ``t_q = t0 + floor((t - t0) / Δt) * Δt`` is the last update epoch at or before ``t``.
    ``0.0`` before ``start_epoch`` (so ``initial_sparsity`` applies from ``start_epoch``),
    ``final_sparsity`` from ``end_epoch`` on.

    Args:
        final_sparsity: ``s_f`` in ``[0, 1)``.
        start_epoch: ``t0``: completed epochs where the ramp starts at ``s_i`` (it first
            moves at ``t0 + Δt``).
        end_epoch: ``t1 > t0``: completed epochs by which ``s_f`` is reached.
        initial_sparsity: ``s_i`` in ``[0, s_f]``.
        frequency: ``Δt >= 1``; ``t1 - t0`` must be a multiple of it.

    Raises:
        ValueError: If an argument is out of range (all are reported at once).
    """

    def _curve(self, progress: float) -> float:
        return _shape(self.initial_sparsity, self.final_sparsity, progress, "linear")


@dataclass(frozen=True)
class Cubic(_Ramp):
    """Zhu & Gupta (2017) automated gradual pruning (AGP).

    ``s_t = s_f + (s_i - s_f) * (1 - (t_q - t0) / (n·Δt))**3`` for ``t`` in
    ``[t0, t0 + n·Δt]`` with ``t0 + n·Δt = end_epoch`` and
    ``t_q = t0 + floor((t - t0) / Δt) * Δt``. Before ``start_epoch`` the target is ``0.0``
    (no pruning; ``initial_sparsity`` applies from ``start_epoch`` on), after ``end_epoch``
    it is ``s_f``.

    Args:
        final_sparsity: ``s_f`` in ``[0, 1)``.
        start_epoch: ``t0``: completed epochs where the ramp starts at ``s_i`` (it first
            moves at ``t0 + Δt``).
        end_epoch: ``t0 + n·Δt > t0``: completed epochs by which ``s_f`` is reached.
        initial_sparsity: ``s_i`` in ``[0, s_f]``.
        frequency: ``Δt >= 1``; ``end_epoch - start_epoch`` must be a multiple of it.

    Raises:
        ValueError: If an argument is out of range (all are reported at once).
    """

    def _curve(self, progress: float) -> float:
        return _shape(self.initial_sparsity, self.final_sparsity, progress, "cubic")


@dataclass(frozen=True)
class Exponential(_Ramp):
    """The density ``d = 1 - s`` decays geometrically from ``d_i`` to ``d_f``.

    ``d_t = d_i * (d_f / d_i) ** ((t_q - t0) / (t1 - t0))``, so ``s_t = 1 - d_t``; every
    update removes the same fraction of the remaining weights. ``t_q`` as in :class:`Linear`;
    ``0.0`` before ``start_epoch``, ``final_sparsity`` from ``end_epoch`` on.

    Args:
        final_sparsity: ``s_f = 1 - d_f`` in ``[0, 1)``.
        start_epoch: ``t0``: completed epochs where the ramp starts at ``s_i`` (it first
            moves at ``t0 + Δt``).
        end_epoch: ``t1 > t0``: completed epochs by which ``s_f`` is reached.
        initial_sparsity: ``s_i = 1 - d_i`` in ``[0, s_f]``.
        frequency: ``Δt >= 1``; ``t1 - t0`` must be a multiple of it.

    Raises:
        ValueError: If an argument is out of range (all are reported at once).
    """

    def _curve(self, progress: float) -> float:
        d_i = 1.0 - self.initial_sparsity
        d_f = 1.0 - self.final_sparsity
        return 1.0 - d_i * (d_f / d_i) ** progress


@dataclass(frozen=True)
class Step(Schedule):
    """Piecewise constant: ``sparsities[i]`` from epoch ``milestones[i]`` on, ``0.0`` before.

    Args:
        milestones: Strictly increasing epochs (ints >= 0), at least one.
        sparsities: Non-decreasing targets in ``[0, 1)``, one per milestone.

    Raises:
        ValueError: If the lists are empty, of different lengths, unordered or out of range
            (all problems are reported at once).
    """

    milestones: list[int] = field(default_factory=list)
    sparsities: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        errors: list[str] = []
        if not self.milestones:
            errors.append("`milestones` must hold at least one epoch, got []")
        if len(self.milestones) != len(self.sparsities):
            errors.append(
                f"`milestones` and `sparsities` must have the same length, got"
                f" {len(self.milestones)} and {len(self.sparsities)}"
            )
        for i, epoch in enumerate(self.milestones):
            check_int(f"milestones[{i}]", epoch, errors)
        for i, value in enumerate(self.sparsities):
            _check_sparsity(f"sparsities[{i}]", value, errors)
        if not errors:
            for i in range(1, len(self.milestones)):
                if self.milestones[i] <= self.milestones[i - 1]:
                    errors.append(
                        f"`milestones` must be strictly increasing, got {self.milestones}"
                    )
                    break
            for i in range(1, len(self.sparsities)):
                if self.sparsities[i] < self.sparsities[i - 1]:
                    errors.append(f"`sparsities` must be non-decreasing, got {self.sparsities}")
                    break
        _raise(type(self), errors)

    def _target(self, epoch: int) -> float:
        target = 0.0
        for milestone, value in zip(self.milestones, self.sparsities, strict=True):
            if epoch >= milestone:
                target = float(value)
        return target

    def is_pruning_epoch(self, epoch: int) -> bool:
        """True at the milestones."""
        return epoch in self.milestones

    @property
    def last_epoch(self) -> int:
        """The last milestone."""
        return self.milestones[-1]


@dataclass(frozen=True)
class FromCallable(Schedule):
    """A user function ``fn(epoch) -> sparsity``, validated on every call.

    Every epoch is a pruning epoch; from YAML, give ``fn`` as an import path
    (``mypkg.schedules.my_fn``).

    Args:
        fn: Maps a 0-based epoch to a target in ``[0, 1)``.
        last_epoch: The epoch after which ``fn`` no longer changes, if known; pruning is
            skipped after it.

    Raises:
        ValueError: If ``fn`` is not callable or ``last_epoch`` is not ``None`` or an int >= 0.
    """

    fn: Callable[[int], float]
    last_epoch: int | None = None

    def __post_init__(self) -> None:
        errors: list[str] = []
        if not callable(self.fn):
            errors.append(f"`fn` must be callable, got {self.fn!r}")
        if self.last_epoch is not None:
            check_int("last_epoch", self.last_epoch, errors)
        _raise(type(self), errors)

    def _target(self, epoch: int) -> float:
        value = self.fn(epoch)
        if not _is_real(value) or not math.isfinite(value) or not 0.0 <= value < 1.0:
            raise ValueError(
                f"FromCallable: `fn({epoch})` must return a float in [0, 1), got {value!r}"
            )
        return float(value)

    def is_pruning_epoch(self, epoch: int) -> bool:
        """True every epoch up to ``last_epoch`` (every epoch when it is ``None``)."""
        return self.last_epoch is None or epoch <= self.last_epoch


@dataclass(frozen=True)
class LotteryTicket(Schedule):
    """Iterative magnitude pruning with rewinding (Frankle & Carbin 2019; Frankle et al. 2020).

    Each round trains ``epochs_per_round`` epochs past the rewind point, then prunes
    ``rate`` of the surviving weights; the survivors go back to their values after
    ``rewind_epoch`` completed epochs (the callback does that, see
    :class:`~lightning_sparsity.SparsityCallback`), and the next round trains again. Round
    ``r`` ends at ``t_r = rewind_epoch + r * epochs_per_round`` (so every round's weights
    have ``rewind_epoch + epochs_per_round`` epochs of training behind them), and the target
    from ``t_r`` on is ``1 - (1 - rate) ** r``, for ``r = 1 .. rounds``: ``0.0`` before
    ``t_1``. With a global allocation exactly ``round(target * N)`` of the ``N`` weights are
    pruned, which is ``rate`` of the survivors up to the rounding of one weight.

    Train to ``rewind_epoch + (rounds + 1) * epochs_per_round`` epochs (``max_epochs``) to
    train the last ticket once more after its rewind.

    Args:
        rate: The fraction of the surviving weights each round prunes, in ``(0, 1)``
            (Frankle & Carbin's ``p``, e.g. ``0.2``).
        rounds: How many rounds prune, >= 1.
        epochs_per_round: Epochs trained after each rewind before the next prune, >= 1.
        rewind_epoch: ``k``: the survivors rewind to their values after ``k`` completed
            epochs (``0``: the weights the fit starts with, as in the 2019 paper; a few
            epochs, "late rewinding", as in the 2020 one).

    Raises:
        ValueError: If an argument is out of range (all are reported at once).
    """

    rate: float
    rounds: int
    epochs_per_round: int
    rewind_epoch: int = 0

    def __post_init__(self) -> None:
        errors: list[str] = []
        if not _is_real(self.rate) or not 0.0 < float(self.rate) < 1.0:
            errors.append(f"`rate` must be a float in (0, 1), got {self.rate!r}")
        check_int("rounds", self.rounds, errors, minimum=1)
        check_int("epochs_per_round", self.epochs_per_round, errors, minimum=1)
        check_int("rewind_epoch", self.rewind_epoch, errors)
        _raise(type(self), errors)

    def round_at(self, epoch: int) -> int:
        """How many rounds have pruned after ``epoch`` completed epochs (``0`` .. ``rounds``)."""
        done = max(0, epoch - self.rewind_epoch) // self.epochs_per_round
        return min(done, self.rounds)

    def _target(self, epoch: int) -> float:
        return 1.0 - (1.0 - float(self.rate)) ** self.round_at(epoch)

    def is_pruning_epoch(self, epoch: int) -> bool:
        """True at ``rewind_epoch + r * epochs_per_round`` for ``r = 1 .. rounds``."""
        since = epoch - self.rewind_epoch
        every = self.epochs_per_round
        return since > 0 and since % every == 0 and since // every <= self.rounds

    @property
    def last_epoch(self) -> int:
        """``rewind_epoch + rounds * epochs_per_round``: the last round's prune."""
        return self.rewind_epoch + self.rounds * self.epochs_per_round
