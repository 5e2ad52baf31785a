"""``MetricGuard``: hold pruning back while a monitored metric is worse than allowed.

Pure logic, no Lightning: the controller hands it the metrics logged so far (Lightning's
``trainer.callback_metrics``) before each pruning step and follows what it says.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from lightning_sparsity._checks import check_bools, check_choice
from lightning_sparsity._settings import Settings

__all__ = ["GuardCheck", "MetricGuard", "MonitorMissingError"]

Mode = Literal["min", "max"]
GuardAction = Literal["pause", "restore"]

_MODES = ("min", "max")
_ACTIONS = ("pause", "restore")


class MonitorMissingError(RuntimeError):
    """The guarded metric was not logged and the guard is ``strict``."""


@dataclass(frozen=True)
class GuardCheck:
    """What the guard says before one pruning step.

    Attributes:
        ok: pruning may go on (also when the metric is missing and the guard not strict).
        value: the metric's value, or ``None`` when it was not logged.
        best: the best value seen so far.
        message: why pruning is held back (empty when ``ok``).
    """

    ok: bool
    value: float | None
    best: float | None
    message: str = ""


def _number(name: str, value: object, errors: list[str], *, minimum: float | None = None) -> None:
    if value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or (minimum is not None and value < minimum)
    ):
        rule = "a finite number" + ("" if minimum is None else f" >= {minimum:g}")
        errors.append(f"`{name}` must be {rule} or None, got {value!r}")


class MetricGuard(Settings):
    """Pause pruning (or restore the last good masks) while a logged metric is too bad.

    Example:
        >>> guard = MetricGuard("val_loss", mode="min", max_drop=0.1)   # loss may rise 0.1
        >>> guard = MetricGuard("val_acc", threshold=0.9, action="restore")

    Args:
        monitor: the metric's name as the LightningModule logs it (``"val_acc"``).
        mode: ``"max"`` when higher is better (accuracy), ``"min"`` when lower is better
            (loss), as in Lightning's ``EarlyStopping``.
        threshold: the metric must be at least this (``max``) or at most this (``min``).
        max_drop: the metric must not be worse than its best so far by more than this
            (below the best for ``max``, above it for ``min``).
        action: when the guard trips: ``"pause"`` pruning until the metric recovers, or
            ``"restore"`` the last masks it accepted and pause.
        strict: raise when ``monitor`` is not among the logged metrics (as ``EarlyStopping``
            does); ``False``: warn once and do not guard.

    A metric that is NaN or infinite trips the guard.

    Raises:
        ValueError: for any bad argument (all listed at once).
    """

    _SETTINGS = ("monitor", "mode", "threshold", "max_drop", "action", "strict")

    def __init__(
        self,
        monitor: str,
        *,
        mode: Mode = "max",
        threshold: float | None = None,
        max_drop: float | None = None,
        action: GuardAction = "pause",
        strict: bool = True,
    ) -> None:
        errors: list[str] = []
        if not isinstance(monitor, str) or not monitor:
            errors.append(f"`monitor` must be a metric name (str), got {monitor!r}")
        check_choice("mode", mode, _MODES, errors)
        check_choice("action", action, _ACTIONS, errors)
        check_bools({"strict": strict}, errors)
        _number("threshold", threshold, errors)
        _number("max_drop", max_drop, errors, minimum=0.0)
        if threshold is None and max_drop is None:
            errors.append(f"MetricGuard({monitor!r}) needs `threshold` or `max_drop`")
        if errors:
            raise ValueError("MetricGuard: " + "; ".join(errors))
        self.monitor = monitor
        self.mode: Mode = mode
        self.threshold = threshold
        self.max_drop = max_drop
        self.action: GuardAction = action
        self.strict = strict
        self.best: float | None = None  # state (checkpointed)

    def reset(self) -> None:
        """Forget the best value seen: a new fit starts clean."""
        self.best = None

    def _better(self, a: float, b: float) -> bool:
        return a > b if self.mode == "max" else a < b

    def worst(self, values: Sequence[float]) -> float:
        """The worst of several values (one per process).

        NaN if any is, else the lowest for ``mode="max"``, the highest for ``"min"``.
        """
        if any(math.isnan(v) for v in values):
            return math.nan
        return min(values) if self.mode == "max" else max(values)

    def check(self, metrics: Mapping[str, Any]) -> GuardCheck:
        """Look at the monitored metric (updating the best) and say whether pruning may go on.

        Args:
            metrics: the logged metrics by name (floats or 0-dim tensors).

        Raises:
            MonitorMissingError: if the metric is missing and the guard is ``strict``.
        """
        if self.monitor not in metrics:
            message = (
                f"MetricGuard: {self.monitor!r} is not among the logged metrics"
                f" {sorted(metrics)}; log it in the LightningModule (self.log) or pass"
                " strict=False to prune unguarded"
            )
            if self.strict:
                raise MonitorMissingError(message)
            return GuardCheck(True, None, self.best, message)
        value = float(metrics[self.monitor])
        name = self.monitor
        if not math.isfinite(value):
            return GuardCheck(False, value, self.best, f"{name} is {value}")
        if self.best is None or self._better(value, self.best):
            self.best = value
        worse = "below" if self.mode == "max" else "above"
        if self.threshold is not None and self._better(self.threshold, value):
            message = f"{name} = {value:.4g} is {worse} the threshold {self.threshold:g}"
            return GuardCheck(False, value, self.best, message)
        if self.max_drop is not None and abs(self.best - value) > self.max_drop:
            message = (
                f"{name} = {value:.4g} is more than max_drop={self.max_drop:g} {worse} its"
                f" best {self.best:.4g}"
            )
            return GuardCheck(False, value, self.best, message)
        return GuardCheck(True, value, self.best)

    def state_dict(self) -> dict[str, Any]:
        """The best value seen."""
        return {"best": self.best}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.best = state.get("best")
