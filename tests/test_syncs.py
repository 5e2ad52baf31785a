"""Host syncs of a point (prune, measure, budget) do not grow with the number of layers.

On CPU a "sync" is any read of a tensor's value into Python: ``item``, ``tolist``, ``cpu``,
``numpy``, ``bool``/``int``/``float``/``index`` conversions; each is a device-to-host wait
on CUDA. Counted by wrapping those methods.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from torch import nn

import lightning_sparsity as ls

READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")


@contextlib.contextmanager
def count_reads() -> Iterator[list[str]]:
    calls: list[str] = []
    saved = {name: getattr(torch.Tensor, name) for name in READS}

    def wrap(name: str):  # type: ignore[no-untyped-def]
        original = saved[name]

        def counted(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            calls.append(name)
            return original(self, *args, **kwargs)

        return counted

    for name in READS:
        setattr(torch.Tensor, name, wrap(name))
    try:
        yield calls
    finally:
        for name, original in saved.items():
            setattr(torch.Tensor, name, original)


def mlp(layers: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(32, 32) for _ in range(layers)])


def point_reads(layers: int, budget: ls.FlopBudget | None, schedule: bool) -> int:
    model = mlp(layers)
    pruner = ls.MagnitudePruner(
        schedule=ls.schedules.Linear(0.8, start_epoch=0, end_epoch=4) if schedule else None
    )
    controller = ls.SparsityController(pruner, budget)
    controller.bind(model, torch.zeros(1, 32))
    controller.start(model)
    controller.epoch_end(model, epoch=1, global_step=1)  # the meter is traced by now
    with count_reads() as calls:
        controller.epoch_end(model, epoch=2, global_step=2)
    return len(calls)


@pytest.mark.parametrize(
    ("budget", "schedule"),
    [
        (None, True),  # a schedule step, then the recount
        (ls.FlopBudget("40%", by_epoch=4, action="adjust"), False),  # the FLOP target path
        (ls.FlopBudget("40%", finetune_epochs=3), True),  # a stop budget beside a schedule
    ],
    ids=["schedule", "adjust", "stop"],
)
def test_a_point_reads_the_device_a_constant_number_of_times(
    budget: ls.FlopBudget | None, schedule: bool
) -> None:
    small, large = point_reads(4, budget, schedule), point_reads(40, budget, schedule)
    assert small == large
    assert small <= 4  # pruning (<= 2) and the recount (1), whatever the budget adds


def test_the_cached_recount_reads_once() -> None:
    model = mlp(40)
    meter = ls.SparsityMeter(model, torch.zeros(1, 32))
    ls.MagnitudePruner().apply(model, 0.5)
    with count_reads() as calls:
        meter.measure()
    assert len(calls) == 1


def test_the_probes_run_on_the_calling_thread_and_the_thread_count_is_restored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # under load every OpenMP region can wait a scheduler slice at its barrier (~8 ms on 2
    # cores): the probes' passes run on one thread, as the selection's slices do
    import lightning_sparsity.counting.meter as meter_module

    seen: list[int] = []
    real = meter_module.probe

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(meter_module, "probe", spy)
    threads = torch.get_num_threads()
    model = mlp(4)
    meter = ls.SparsityMeter(model, torch.zeros(1, 32))
    try:
        torch.set_num_threads(2)
        meter.measure()
        assert len(seen) == 8  # one call per weight and bias (a bias has no probe)
        assert set(seen) == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_each_weight_is_read_once_on_the_callers_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    # the one pass over a weight's values (a cast to bool) runs on every thread, as a bare
    # count_nonzero sweep does: one OpenMP region per weight; the probes read its bytes on one
    import lightning_sparsity.counting.realizable as realizable

    seen: list[int] = []
    real = realizable.zero_flags

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(realizable, "zero_flags", spy)
    threads = torch.get_num_threads()
    meter = ls.SparsityMeter(mlp(4), torch.zeros(1, 32))
    try:
        torch.set_num_threads(2)
        meter.measure()
        assert seen == [2, 2, 2, 2]  # the four weights, not the biases
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
