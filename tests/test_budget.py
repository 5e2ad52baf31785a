"""FlopBudget's pure logic: parsing, validation, the FLOP schedule, decisions."""

from __future__ import annotations

import pytest

import lightning_sparsity as ls
from lightning_sparsity.control.budget import parse_flops


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
        ({"target": "25%", "by_epoch": 2, "start_epoch": 5}, r"`by_epoch` \(2\) must be after"),
        ({"target": "25%", "by_epoch": 3, "start_epoch": 3}, r"`by_epoch` \(3\) must be after"),
        ({"target": "25%", "by_epoch": 0}, "`by_epoch` must be an int >= 1 or None, got 0"),
        ({"target": "25%", "finetune_epochs": 1.5}, "`finetune_epochs` must be an int"),
        # an infinite target is no budget: "1e400" parses to inf
        ({"target": "1e400"}, "`target` must be a positive number of FLOPs.*got '1e400'"),
        ({"target": float("inf")}, "`target` must be a positive number of FLOPs.*got inf"),
        ({"target": float("nan")}, "`target` must be a positive number of FLOPs.*got nan"),
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
        ValueError, match=r"unreachable.*has 300 sparse FLOPs.*lowest reachable target is 30"
    ):
        ls.FlopBudget("20%").check_reachable(dense=1000, floor=300)
    assert ls.FlopBudget("30%").check_reachable(dense=1000, floor=300) == pytest.approx(300)


def test_budget_refusals_are_budget_errors_and_a_model_without_flops_is_one() -> None:
    # a ValueError (what callers caught before), and one class the CLI turns into one line
    for budget, dense, floor in [("20%", 1000, 300), (2000.0, 1000, 0), ("20", 10**6, 0)]:
        with pytest.raises(ls.BudgetError):
            ls.FlopBudget(budget).check_reachable(dense=dense, floor=floor)  # type: ignore[arg-type]
    assert issubclass(ls.BudgetError, ValueError)
    # was ZeroDivisionError at the first point (slack = (limit - value) / limit, limit 0)
    with pytest.raises(ls.BudgetError, match=r"the model has no FLOPs to budget \(dense: 0\)"):
        ls.FlopBudget("50%").check_reachable(dense=0, floor=0)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "3", None])
def test_evaluate_refuses_a_value_that_is_not_a_finite_number(value: object) -> None:
    # nan was "cannot convert float NaN to integer" from the message's number formatting
    budget = ls.FlopBudget("50%")
    budget.check_reachable(dense=1000, floor=0)
    with pytest.raises(ValueError, match=r"`value` must be a finite number, got"):
        budget.evaluate(value, 1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("target", "hint"),
    [("20", "'20%'"), (20, "'20%'"), (0.2, "'20%'"), ("0.5", "'50%'"), ("100", "'100%'")],
)
def test_a_bare_number_that_looks_like_a_percentage(target: object, hint: str) -> None:
    # "20" was taken as 20 FLOPs and reported only at the deadline ("294 > 20"): refuse it
    # when the limit is under 1% of dense, and say how to mean an absolute count
    budget = ls.FlopBudget(target)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=f"of the dense model's 1,000,000; did you mean {hint}"):
        budget.check_reachable(dense=1_000_000, floor=0)
    with_unit = ls.FlopBudget(f"{float(target):g} FLOPs")
    assert with_unit.check_reachable(dense=1_000_000, floor=0) == float(target)
    # a bare number of at least 1% of dense is a count
    count = ls.FlopBudget(target)  # type: ignore[arg-type]
    assert count.check_reachable(dense=100 * float(target), floor=0) == float(target)


def test_small_limits_print_with_their_digits() -> None:
    budget = ls.FlopBudget(0.2, count="params")
    budget.check_reachable(dense=10, floor=0)
    # the limit 0.2 printed as "0" read "1 > 0": the digits must be there
    assert "1 > 0.2 nonzero parameters" in budget.evaluate(1, 1).message
    wide = ls.FlopBudget("10%")
    wide.check_reachable(dense=648_448, floor=0)
    assert "> 64,844.8 sparse FLOPs" in wide.evaluate(100_000, 1).message


def test_cubic_flop_schedule_closed_form() -> None:
    budget = ls.FlopBudget("20%", by_epoch=4, action="adjust", start_epoch=0)
    budget.check_reachable(dense=1000, floor=0)
    # t completed epochs; F_t = 200 + 800 * (1 - t/4)**3:
    # 1000, 200 + 800*27/64 = 537.5, 200 + 100 = 300, 212.5, 200, then 200
    assert [budget.scheduled(t) for t in range(6)] == [1000, 537.5, 300.0, 212.5, 200.0, 200.0]
    linear = ls.FlopBudget(100.0, by_epoch=5, action="adjust", start_epoch=2, curve="linear")
    linear.check_reachable(dense=400, floor=0)
    # dense up to t0 = 2; then 400 + (100 - 400) * (t - 2)/3: 300, 200, 100
    assert [linear.scheduled(t) for t in range(7)] == [400, 400, 400, 300, 200, 100, 100]


def test_the_flop_curve_and_the_cubic_schedule_move_at_the_same_epochs() -> None:
    # one convention: after t completed epochs, both curves have gone (t - t0)/(t1 - t0)
    budget = ls.FlopBudget("20%", by_epoch=4, action="adjust", start_epoch=1)
    budget.check_reachable(dense=1000, floor=0)
    cubic = ls.schedules.Cubic(0.8, start_epoch=1, end_epoch=4)
    for t in range(7):
        removed = (1000 - budget.scheduled(t)) / 800  # fraction of the way to the limit
        assert removed == pytest.approx(cubic(t) / 0.8), t
    assert budget.scheduled(1) == 1000  # neither moves before the end of epoch t0 + 1


def test_an_adjust_budget_is_judged_against_its_curve_before_the_deadline() -> None:
    # before: epoch 0 of a run exactly on its curve said "over" with slack -4 (the dense
    # model against the final limit), though the curve allows the dense model there
    budget = ls.FlopBudget("20%", by_epoch=4, action="adjust")
    budget.check_reachable(dense=1000, floor=0)
    # allowed after t epochs: 1000, 537.5, 300, 212.5, then the limit 200
    on_curve = [budget.evaluate(v, t) for t, v in enumerate([1000, 537.0, 300, 212.5])]
    assert [d.status for d in on_curve] == ["on_schedule"] * 4
    # slack = (allowed - value) / allowed: (537.5 - 537) / 537.5 at epoch 1
    assert [d.slack for d in on_curve] == [0.0, 0.5 / 537.5, 0.0, 0.0]
    assert on_curve[1].message == (
        "on schedule: 537 <= 537.5 sparse FLOPs allowed at epoch 1 (limit 200 by epoch 4)"
    )
    assert budget.reached_epoch is None  # the limit itself is not met yet
    behind = budget.evaluate(600, 1)
    assert behind.status == "over"
    assert behind.slack == pytest.approx((537.5 - 600) / 537.5)
    assert behind.message == (
        "over budget: 600 > 537.5 sparse FLOPs allowed at epoch 1 (limit 200 by epoch 4)"
    )
    within = budget.evaluate(200, 4)
    assert (within.status, within.slack) == ("within", 0.0)
    assert budget.evaluate(300, 5).slack == -0.5  # the limit in force after the deadline


def test_stop_freezes_at_first_epoch_within_and_stops_after_finetune() -> None:
    budget = ls.FlopBudget(500.0, finetune_epochs=2)
    budget.check_reachable(dense=1000, floor=0)
    decisions = [budget.evaluate(v, t) for t, v in enumerate([900, 600, 500, 480, 480])]
    assert [d.status for d in decisions] == ["over", "over", "within", "within", "within"]
    assert [d.freeze_pruning for d in decisions] == [False, False, True, True, True]
    assert [d.stop_training for d in decisions] == [False, False, False, False, True]
    assert decisions[-1].reason == "finetune_done"
    assert budget.reached_epoch == 2
    # the message speaks the files' numbering: within since the point at epoch 2
    assert decisions[-1].message.startswith("within budget since epoch 2: 480 <= 500")


@pytest.mark.parametrize(("on_deadline", "stops"), [("stop", True), ("warn", False)])
def test_deadline_missed(on_deadline: str, stops: bool) -> None:
    budget = ls.FlopBudget("10%", by_epoch=1, on_deadline=on_deadline)  # type: ignore[arg-type]
    budget.check_reachable(dense=1000, floor=0)
    assert budget.evaluate(500, 0).status == "over"
    missed = budget.evaluate(400, 1)
    assert missed.status == "missed"
    assert missed.reason == "deadline_missed"
    assert missed.stop_training is stops
    assert "400 > 100 sparse FLOPs at epoch 1 (deadline: epoch 1)" in missed.message


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


def test_state_of_the_first_version_counted_epochs_from_zero() -> None:
    budget = ls.FlopBudget(500.0)
    # v1 stored the 0-based index of the epoch whose end met the limit: index 2 = 3 done
    budget.load_state_dict({"dense": 1000.0, "reached_epoch": 2, "best_metric": None})
    assert budget.reached_epoch == 3


def test_a_changed_target_decides_again_when_the_limit_was_met() -> None:
    saved = ls.FlopBudget("50%", finetune_epochs=1)
    saved.check_reachable(dense=1000, floor=0)
    saved.evaluate(450, 3)
    lower = ls.FlopBudget("25%", finetune_epochs=1)
    lower.load_state_dict(saved.state_dict())
    assert lower.reached_epoch is None  # met under 50%, not under 25%
    assert lower.evaluate(450, 4).status == "over"
    longer = ls.FlopBudget("50%", finetune_epochs=5)  # only the fine-tuning changed
    longer.load_state_dict(saved.state_dict())
    assert longer.reached_epoch == 3
    assert not longer.evaluate(450, 5).stop_training  # 2 of 5 fine-tune epochs


def test_deadline_after_the_last_epoch_is_named() -> None:
    budget = ls.FlopBudget("25%", by_epoch=12, action="adjust")
    warning = budget.deadline_warning(max_epochs=10)
    assert warning is not None
    assert "by_epoch=12" in warning
    assert "max_epochs=10" in warning
    assert budget.deadline_warning(max_epochs=12) is None
    assert ls.FlopBudget("25%").deadline_warning(max_epochs=3) is None
