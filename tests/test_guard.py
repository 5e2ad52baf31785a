"""MetricGuard's pure logic: both directions, thresholds, drops, NaN, missing metrics."""

from __future__ import annotations

import math

import pytest
import torch

import lightning_sparsity as ls
from lightning_sparsity.control.guard import MonitorMissingError


def oks(guard: ls.MetricGuard, values: list[float]) -> list[bool]:
    return [guard.check({guard.monitor: v}).ok for v in values]


def test_higher_is_better_with_a_threshold_and_a_drop() -> None:
    guard = ls.MetricGuard("val_acc", max_drop=0.05, threshold=0.5)
    assert oks(guard, [0.8, 0.9, 0.86, 0.84, 0.95, 0.4]) == [
        True,
        True,
        True,  # 0.9 - 0.86 = 0.04 <= 0.05
        False,  # 0.06 below the best 0.9
        True,
        False,  # below the threshold
    ]
    assert guard.best == 0.95


def test_lower_is_better_for_a_loss() -> None:
    # the defect: a higher-is-better guard on val_loss paused while the loss improved and
    # allowed pruning while it exploded
    guard = ls.MetricGuard("val_loss", mode="min", max_drop=0.1, threshold=2.0)
    assert oks(guard, [1.0, 0.8, 0.85, 0.95, 0.5, 3.0]) == [
        True,
        True,  # improving
        True,  # 0.05 above the best 0.8
        False,  # 0.15 above the best
        True,
        False,  # above the threshold (and far above the best)
    ]
    assert guard.best == 0.5


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_nan_or_infinite_metric_trips_the_guard(value: float) -> None:
    guard = ls.MetricGuard("val_loss", mode="min", threshold=10.0)
    check = guard.check({"val_loss": torch.tensor(value)})
    assert not check.ok
    assert "val_loss is" in check.message


def test_a_missing_metric_raises_when_strict_and_is_ignored_when_not() -> None:
    with pytest.raises(MonitorMissingError, match=r"'val_acc' is not among .*\['train_loss'\]"):
        ls.MetricGuard("val_acc", threshold=0.5).check({"train_loss": 1.0})
    lenient = ls.MetricGuard("val_acc", threshold=0.5, strict=False)
    check = lenient.check({"train_loss": 1.0})
    assert check.ok
    assert check.value is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threshold": math.nan}, "`threshold` must be a finite number or None, got nan"),
        ({"max_drop": math.nan}, r"`max_drop` must be a finite number >= 0 or None, got nan"),
        ({"max_drop": -0.1}, r"`max_drop` must be a finite number >= 0 or None, got -0.1"),
        ({"threshold": "0.9"}, "`threshold` must be a finite number or None, got '0.9'"),
        ({}, "needs `threshold` or `max_drop`"),
        ({"threshold": 1.0, "mode": "up"}, r"`mode` must be one of \('min', 'max'\)"),
        ({"threshold": 1.0, "action": "undo"}, r"`action` must be one of \('pause', 'restore'\)"),
        ({"threshold": 1.0, "strict": 1}, "`strict` must be a bool, got 1"),
    ],
)
def test_bad_arguments_name_the_value(kwargs: dict, match: str) -> None:
    # NaN silently disabled the guard before (every comparison with NaN is False)
    with pytest.raises(ValueError, match=match):
        ls.MetricGuard("val_acc", **kwargs)


def test_state_round_trip() -> None:
    guard = ls.MetricGuard("val_acc", max_drop=0.1)
    oks(guard, [0.7, 0.9])
    other = ls.MetricGuard("val_acc", max_drop=0.1)
    other.load_state_dict(guard.state_dict())
    assert oks(other, [0.79]) == [False]  # 0.11 below the best restored
