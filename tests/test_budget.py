"""FlopBudget's pure logic: parsing, validation, the FLOP schedule, decisions."""

from __future__ import annotations

import pytest

import lightning_sparsity as ls
from lightning_sparsity.budget import parse_flops


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (1.2e9, (1.2e9, False)),
        (300, (300.0, False)),
        ("1.2G", (1.2e9, False)),
        ("300M", (3e8, False)),
        ("1.5 GFLOPs", (1.5e9, False)),
        ("2e6", (2e6, False)),
        ("25%", (0.25, True)),
        ("100%", (1.0, True)),
    ],
)
def test_parse_flops(text: object, expected: tuple[float, bool]) -> None:
    value, fraction = parse_flops(text)  # type: ignore[arg-type]
    assert value == pytest.approx(expected[0])
    assert fraction == expected[1]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target": -5}, "`target` must be a positive number of FLOPs.*got -5"),
        ({"target": 0}, "got 0"),
        ({"target": "12X"}, "got '12X'"),
        ({"target": "0%"}, r"percentage must be in \(0, 100\], got '0%'"),
        ({"target": "150%"}, "got '150%'"),
        ({"target": "25%", "action": "halt"}, r"`action` must be one of \('stop', 'adjust'\)"),
        ({"target": "25%", "count": "macs"}, "`count` must be one of.*got 'macs'"),
        ({"target": "25%", "on_deadline": "die"}, "`on_deadline` must be one of"),
        ({"target": "25%", "action": "adjust"}, "`by_epoch` is required with action='adjust'"),
        ({"target": "25%", "by_epoch": 2, "start_epoch": 5}, r"`by_epoch` \(2\) must not be"),
        ({"target": "25%", "by_epoch": -1}, "`by_epoch` must be an int >= 0 or None, got -1"),
        ({"target": "25%", "finetune_epochs": 1.5}, "`finetune_epochs` must be an int"),
        ({"target": "25%", "min_value": 0.9}, "need `monitor`"),
        ({"target": "25%", "monitor": "val_acc"}, "needs `min_value` or `max_drop`"),
    ],
)
def test_bad_arguments_name_the_value(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ls.FlopBudget(**kwargs)


def test_all_errors_at_once() -> None:
    with pytest.raises(ValueError, match=r"`target`.*; `action`.*; `count`"):
        ls.FlopBudget(-1, action="x", count="y")  # type: ignore[arg-type]


def test_limit_above_dense_and_unreachable() -> None:
    with pytest.raises(ValueError, match=r"target 2000.0 \(2,000\) is above the dense"):
        ls.FlopBudget(2000.0).check_reachable(dense=1000, floor=100)
    with pytest.raises(
        ValueError, match=r"unreachable.*has 300 FLOPs.*lowest reachable target is 30"
    ):
        ls.FlopBudget("20%").check_reachable(dense=1000, floor=300)
    assert ls.FlopBudget("30%").check_reachable(dense=1000, floor=300) == pytest.approx(300)


def test_cubic_flop_schedule_closed_form() -> None:
    budget = ls.FlopBudget("20%", by_epoch=3, action="adjust", start_epoch=0)
    budget.check_reachable(dense=1000, floor=0)
    # F_t = 200 + 800 * (1 - (t + 1)/4)**3: 200 + 800*27/64 = 537.5, 200 + 100 = 300, 212.5, 200
    assert [budget.scheduled(t) for t in range(5)] == [537.5, 300.0, 212.5, 200.0, 200.0]
    linear = ls.FlopBudget(100.0, by_epoch=4, action="adjust", start_epoch=2, curve="linear")
    linear.check_reachable(dense=400, floor=0)
    # before start: dense; then 100 + 300 * (1 - (t - 1)/3): 300, 200, 100
    assert [linear.scheduled(t) for t in range(6)] == [400, 400, 300, 200, 100, 100]


def test_stop_freezes_at_first_epoch_within_and_stops_after_finetune() -> None:
    budget = ls.FlopBudget(500.0, finetune_epochs=2)
    budget.check_reachable(dense=1000, floor=0)
    decisions = [budget.evaluate(v, e) for e, v in enumerate([900, 600, 500, 480, 480])]
    assert [d.status for d in decisions] == ["over", "over", "within", "within", "within"]
    assert [d.freeze_pruning for d in decisions] == [False, False, True, True, True]
    assert [d.stop_training for d in decisions] == [False, False, False, False, True]
    assert decisions[-1].reason == "finetune_done"
    assert budget.stopping_reason == "finetune_done"
    assert budget.reached_epoch == 2


@pytest.mark.parametrize(("on_deadline", "stops"), [("stop", True), ("warn", False)])
def test_deadline_missed(on_deadline: str, stops: bool) -> None:
    budget = ls.FlopBudget("10%", by_epoch=1, on_deadline=on_deadline)  # type: ignore[arg-type]
    budget.check_reachable(dense=1000, floor=0)
    assert budget.evaluate(500, 0).status == "over"
    missed = budget.evaluate(400, 1)
    assert missed.status == "missed"
    assert missed.reason == "deadline_missed"
    assert missed.stop_training is stops
    assert "400 > 100 sparse FLOPs at the end of epoch 1 (deadline: epoch 1)" in missed.message


def test_guard_on_a_metric() -> None:
    budget = ls.FlopBudget("10%", monitor="val_acc", max_drop=0.05, min_value=0.5)
    assert [budget.guard_ok(m) for m in (0.8, 0.9, 0.86, 0.84, 0.95, 0.4)] == [
        True,
        True,
        True,  # 0.9 - 0.86 = 0.04 <= 0.05
        False,  # 0.06 below the best
        True,
        False,  # below min_value
    ]


def test_state_round_trip() -> None:
    budget = ls.FlopBudget(500.0, finetune_epochs=5)
    budget.check_reachable(dense=1000, floor=0)
    budget.evaluate(400, 3)
    other = ls.FlopBudget(500.0, finetune_epochs=5)
    other.load_state_dict(budget.state_dict())
    assert other.reached_epoch == 3
    assert other.dense == 1000
    assert other.evaluate(400, 8).stop_training  # 5 epochs after epoch 3
    assert ls.FlopBudget(1.0).state_dict()["reached_epoch"] is None
