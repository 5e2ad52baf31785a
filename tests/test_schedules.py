import math

import pytest
from jsonargparse import ArgumentParser

from lightning_sparsity.pruning import schedules
from lightning_sparsity.pruning.schedules import (
    Constant,
    Cubic,
    Exponential,
    FromCallable,
    Linear,
    Schedule,
    Step,
)


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [
        (0, 0.0),  # before start_epoch: no pruning
        (1, 0.0),
        (2, 0.5),
        (9, 0.5),
    ],
)
def test_constant(epoch, expected):
    assert Constant(sparsity=0.5, start_epoch=2)(epoch) == expected


CUBIC = Cubic(final_sparsity=0.8, start_epoch=0, end_epoch=4)
CUBIC_FREQ = Cubic(
    final_sparsity=0.9, start_epoch=1, end_epoch=7, initial_sparsity=0.1, frequency=3
)
LINEAR = Linear(final_sparsity=0.8, start_epoch=2, end_epoch=6, initial_sparsity=0.2, frequency=2)
EXPONENTIAL = Exponential(final_sparsity=0.75, start_epoch=0, end_epoch=2)
EXPONENTIAL_INIT = Exponential(
    final_sparsity=0.96, start_epoch=1, end_epoch=3, initial_sparsity=0.8
)


@pytest.mark.parametrize(
    ("schedule", "epoch", "expected"),
    [
        # AGP: s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n dt))**3
        (CUBIC, 0, 0.0),  # 0.8 + (0 - 0.8) * (1 - 0/4)**3 = 0
        (CUBIC, 1, 0.4625),  # 0.8 - 0.8 * (3/4)**3 = 0.8 - 0.3375
        (CUBIC, 2, 0.7),  # 0.8 - 0.8 * (1/2)**3 = 0.8 - 0.1
        (CUBIC, 3, 0.7875),  # 0.8 - 0.8 * (1/4)**3 = 0.8 - 0.0125
        (CUBIC, 4, 0.8),
        (CUBIC, 100, 0.8),
        (CUBIC_FREQ, 0, 0.0),  # before t0 = 1
        (CUBIC_FREQ, 1, 0.1),  # s_i at t0
        (CUBIC_FREQ, 3, 0.1),  # held until t0 + dt = 4
        (CUBIC_FREQ, 4, 0.8),  # 0.9 + (0.1 - 0.9) * (1 - 3/6)**3 = 0.9 - 0.1
        (CUBIC_FREQ, 6, 0.8),  # held
        (CUBIC_FREQ, 7, 0.9),
        # linear: s_i + (s_f - s_i) * (t_q - t0) / (t1 - t0)
        (LINEAR, 1, 0.0),
        (LINEAR, 2, 0.2),
        (LINEAR, 3, 0.2),  # held: t_q = 2
        (LINEAR, 4, 0.5),  # 0.2 + 0.6 * 2/4
        (LINEAR, 5, 0.5),
        (LINEAR, 6, 0.8),
        # density d_t = d_i * (d_f / d_i) ** ((t - t0) / (t1 - t0))
        (EXPONENTIAL, 1, 0.5),  # 1 - 1 * 0.25 ** (1/2)
        (EXPONENTIAL, 2, 0.75),
        (EXPONENTIAL_INIT, 0, 0.0),
        (EXPONENTIAL_INIT, 1, 0.8),
        (EXPONENTIAL_INIT, 2, 1 - 0.2 * (0.04 / 0.2) ** 0.5),  # = 0.91056...
        (EXPONENTIAL_INIT, 3, 0.96),
    ],
)
def test_ramps_match_closed_form(schedule, epoch, expected):
    assert schedule(epoch) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [(0, 0.0), (1, 0.0), (2, 0.3), (4, 0.3), (5, 0.6), (50, 0.6)],
)
def test_step(epoch, expected):
    assert Step(milestones=[2, 5], sparsities=[0.3, 0.6])(epoch) == expected


@pytest.mark.parametrize(
    ("schedule", "pruning_epochs", "last_epoch"),
    [
        (Constant(0.5, start_epoch=2), [2], 2),
        (CUBIC, [0, 1, 2, 3, 4], 4),
        (CUBIC_FREQ, [1, 4, 7], 7),
        (LINEAR, [2, 4, 6], 6),
        (EXPONENTIAL, [0, 1, 2], 2),
        (Step(milestones=[2, 5], sparsities=[0.3, 0.6]), [2, 5], 5),
        (FromCallable(fn=lambda e: 0.0, last_epoch=3), [0, 1, 2, 3], 3),
    ],
)
def test_pruning_epochs_and_last_epoch(schedule, pruning_epochs, last_epoch):
    assert [e for e in range(12) if schedule.is_pruning_epoch(e)] == pruning_epochs
    assert schedule.last_epoch == last_epoch
    # the target never changes after last_epoch, nor between pruning epochs
    held = [e for e in range(1, 12) if not schedule.is_pruning_epoch(e)]
    assert [schedule(e) for e in held] == [schedule(e - 1) for e in held]


def test_from_callable_validates_every_value():
    schedule = FromCallable(fn=lambda epoch: 0.3 * epoch)
    assert schedule(3) == pytest.approx(0.9)  # 0.3 * 3
    assert schedule.last_epoch is None
    assert schedule.is_pruning_epoch(1000)
    with pytest.raises(ValueError, match=r"`fn\(4\)` must return a float in \[0, 1\), got 1\.2"):
        schedule(4)
    with pytest.raises(ValueError, match=r"`fn\(0\)` must return a float in \[0, 1\), got nan"):
        FromCallable(fn=lambda epoch: math.nan)(0)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (
            lambda: Cubic(final_sparsity=1.2, start_epoch=0, end_epoch=3),
            r"`final_sparsity` must be a float in \[0, 1\), got 1\.2",
        ),
        (
            lambda: Linear(final_sparsity=0.5, start_epoch=0, end_epoch=3, initial_sparsity=0.6),
            r"`initial_sparsity` must be <= `final_sparsity` \(0\.5\), got 0\.6",
        ),
        (
            lambda: Cubic(final_sparsity=0.5, start_epoch=3, end_epoch=3),
            r"`end_epoch` must be > `start_epoch` \(3\), got 3",
        ),
        (
            lambda: Cubic(final_sparsity=0.5, start_epoch=0, end_epoch=9, frequency=2),
            r"`end_epoch - start_epoch` \(9\) must be a multiple of `frequency` \(2\)",
        ),
        (
            lambda: Exponential(final_sparsity=0.5, start_epoch=0, end_epoch=4, frequency=0),
            r"`frequency` must be an int >= 1, got 0",
        ),
        (
            lambda: Linear(final_sparsity=0.5, start_epoch=-1, end_epoch=4),
            r"`start_epoch` must be an int >= 0, got -1",
        ),
        (lambda: Constant(sparsity=-0.1), r"`sparsity` must be a float in \[0, 1\), got -0\.1"),
        (lambda: Constant(sparsity=True), r"`sparsity` must be a float in \[0, 1\), got True"),
        (
            lambda: Step(milestones=[1, 2], sparsities=[0.5]),
            r"`milestones` and `sparsities` must have the same length, got 2 and 1",
        ),
        (lambda: Step(milestones=[], sparsities=[]), r"`milestones` must hold at least one"),
        (
            lambda: Step(milestones=[3, 2], sparsities=[0.1, 0.2]),
            r"`milestones` must be strictly increasing, got \[3, 2\]",
        ),
        (
            lambda: Step(milestones=[1, 2], sparsities=[0.5, 0.2]),
            r"`sparsities` must be non-decreasing, got \[0\.5, 0\.2\]",
        ),
        (lambda: FromCallable(fn=3), r"`fn` must be callable, got 3"),
        (
            lambda: FromCallable(fn=abs, last_epoch=-2),
            r"`last_epoch` must be an int >= 0, got -2",
        ),
    ],
)
def test_invalid_arguments(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_all_errors_reported_at_once():
    with pytest.raises(ValueError, match=r"final_sparsity.*1\.5.*frequency.*got 0") as info:
        Cubic(final_sparsity=1.5, start_epoch=0, end_epoch=2, frequency=0)
    assert str(info.value).startswith("Cubic: ")


@pytest.mark.parametrize("epoch", [-1, 1.5, True])
def test_invalid_epoch(epoch):
    with pytest.raises(ValueError, match=r"`epoch` must be an int >= 0, got"):
        CUBIC(epoch)


def test_built_from_yaml_by_jsonargparse():
    parser = ArgumentParser()
    parser.add_argument("--schedule", type=Schedule)
    config = parser.parse_string(
        """
        schedule:
          class_path: lightning_sparsity.pruning.schedules.Cubic
          init_args: {final_sparsity: 0.8, start_epoch: 0, end_epoch: 4}
        """
    )
    schedule = parser.instantiate(config).schedule
    assert schedule == Cubic(final_sparsity=0.8, start_epoch=0, end_epoch=4)
    assert schedule(2) == pytest.approx(0.7)  # 0.8 + (0 - 0.8) * (1 - 2/4)**3


def test_exports():
    assert set(schedules.__all__) == {
        "Constant",
        "Cubic",
        "Exponential",
        "FromCallable",
        "Linear",
        "LotteryTicket",
        "Schedule",
        "Step",
        "Curve",
        "ramp",
        "ramp_progress",
    }
