"""FLOP budgets in real fits: stop, deadline, adjust, one-shot, unreachable, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pytorch_lightning.callbacks import ModelCheckpoint, ModelPruning

import lightning_sparsity as ls
from lightning_sparsity.callback import BudgetExceededError
from lightning_sparsity.demo import DigitsCNN
from tests.fits import WIDE_DENSE, Wide, quiet_trainer

pytestmark = pytest.mark.filterwarnings("ignore:.*does not have many workers")


def test_measure_agrees_with_the_closed_form_of_the_test_model() -> None:
    assert ls.measure(Wide(), torch.zeros(1, 3, 16, 16)).total.flops == WIDE_DENSE


def test_stop_freezes_masks_at_first_epoch_within_and_stops_after_finetune(
    tmp_path: Path,
) -> None:
    pruner = ls.MagnitudePruner(
        schedule=ls.schedules.Linear(0.9, start_epoch=0, end_epoch=9), allocation="uniform"
    )
    budget = ls.FlopBudget("60%", finetune_epochs=2)
    callback = ls.SparsityCallback(pruner, budget, write_files=False)
    trainer = quiet_trainer(tmp_path, [callback], epochs=20)
    trainer.fit(Wide())

    sparse = [point.flops_sparse for point in callback.history]
    assert [point.epoch for point in callback.history] == list(range(len(sparse)))
    limit = 0.6 * WIDE_DENSE
    first = next(t for t, value in enumerate(sparse) if value <= limit)  # point index = epoch
    assert all(value > limit for value in sparse[:first])
    assert sparse[first:] == [sparse[first]] * len(sparse[first:])  # frozen from then on
    assert len(sparse) == first + 3  # two fine-tune epochs after the one that met it
    assert trainer.current_epoch == first + 2  # epochs done when stopped
    assert callback.stopping_reason == "finetune_done"
    assert budget.reached_epoch == first
    assert callback.stopping_message == (
        f"within budget since epoch {first}: {sparse[-1]:,} <= 389,068.8 sparse FLOPs;"
        " fine-tuned 2 epochs, stopping"
    )
    assert callback.history[-1].budget_status == "within"


@pytest.mark.parametrize("on_deadline", ["stop", "raise", "warn"])
def test_deadline_missed(tmp_path: Path, on_deadline: str) -> None:
    pruner = ls.MagnitudePruner(schedule=ls.schedules.Linear(0.5, start_epoch=0, end_epoch=10))
    budget = ls.FlopBudget("10%", by_epoch=2, on_deadline=on_deadline)  # type: ignore[arg-type]
    callback = ls.SparsityCallback(pruner, budget, write_files=False)
    trainer = quiet_trainer(tmp_path, [callback], epochs=4)
    if on_deadline == "raise":
        with pytest.raises(BudgetExceededError, match=r"FLOP budget missed: .* > 64,844.8"):
            trainer.fit(Wide())
        assert trainer.current_epoch == 1  # raised at the end of the second epoch
    elif on_deadline == "warn":
        with pytest.warns(UserWarning, match="FLOP budget missed"):
            trainer.fit(Wide())
        assert trainer.current_epoch == 4  # went on to max_epochs
        assert callback.stopping_reason is None
    else:
        trainer.fit(Wide())
        assert trainer.current_epoch == 2  # stopped after 2 epochs, the deadline
        assert callback.stopping_reason == "deadline_missed"
        assert "at epoch 2 (deadline: epoch 2)" in (callback.stopping_message or "")
        assert [p.budget_status for p in callback.history] == ["over", "over", "missed"]


def test_adjust_follows_the_flop_schedule_and_lands_on_the_budget(tmp_path: Path) -> None:
    budget = ls.FlopBudget("25%", by_epoch=5, action="adjust")
    callback = ls.SparsityCallback(ls.MagnitudePruner(), budget, write_files=False)
    quiet_trainer(tmp_path, [callback], epochs=6).fit(Wide())
    points = callback.history
    # after t completed epochs F_t = F_b + (F_0 − F_b)(1 − t/5)³ with F_0 = 648,448,
    # F_b = 162,112: the first epoch end already moves the curve
    scheduled = [162_112 + 486_336 * (1 - min(t, 5) / 5) ** 3 for t in range(7)]
    assert scheduled[1] == pytest.approx(162_112 + 486_336 * 0.8**3)
    assert [p.epoch for p in points] == list(range(7))
    for point, target in zip(points, scheduled, strict=True):
        assert point.flops_sparse == pytest.approx(target, rel=0.005)
        assert point.flops_sparse <= target  # at or below the schedule
        assert point.budget_scheduled == pytest.approx(target, rel=1e-12)
    assert points[5].flops_sparse == pytest.approx(0.25 * WIDE_DENSE, rel=0.005)
    # removing 648,448 - 162,112 = 486,336 FLOPs needs more than all the linear layers'
    # 132,352: the convolutions must give at least 353,984
    report = callback.report
    assert report is not None
    convs = [report.layer("conv1"), report.layer("conv2")]
    assert sum(layer.flops - layer.flops_sparse for layer in convs) >= 353_984


@pytest.mark.parametrize("target", ["10%", "37.5%", 100_000, "0.1M"])
def test_prune_to_flops_lands_just_below_its_target(target: object) -> None:
    torch.manual_seed(0)
    model = Wide()
    report = ls.prune_to_flops(model, torch.zeros(1, 3, 16, 16), target)  # type: ignore[arg-type]
    expected = {"10%": 64_844.8, "37.5%": 243_168.0, 100_000: 1e5, "0.1M": 1e5}[target]  # type: ignore[index]
    # the cheapest weights (fc1, fc2) cost 2 FLOPs: the gap left is under 2
    assert expected - 2 < report.total.flops_sparse <= expected
    assert report == ls.measure(model, torch.zeros(1, 3, 16, 16))


@pytest.mark.parametrize("target", ["5%", "20%", "50%"])
def test_prune_to_flops_within_a_tenth_of_a_percent(target: str) -> None:
    torch.manual_seed(0)
    model = DigitsCNN()
    report = ls.prune_to_flops(model, model.example_input_array, target)
    wanted = float(target[:-1]) / 100 * report.total.flops
    assert report.total.flops_sparse == pytest.approx(wanted, rel=0.001)
    assert report.total.flops_sparse <= wanted


def test_prune_to_flops_errors() -> None:
    with pytest.raises(ValueError, match=r"above the dense model's FLOPs \(648,448\)"):
        ls.prune_to_flops(Wide(), torch.zeros(1, 3, 16, 16), "1G")
    pruner = ls.MagnitudePruner(keep_first_dense=True, min_density=0.0)
    with pytest.raises(
        ValueError,
        match=r"unreachable: .* has 221,184 sparse FLOPs; the lowest reachable target is 34\.11%"
        r" of dense \(conv1\.weight \(not pruned\): 221,184\)",
    ):
        ls.prune_to_flops(Wide(), torch.zeros(1, 3, 16, 16), "20%", pruner=pruner)
    # with the default floors (1% of each layer, at least one weight per row) the pruned
    # layers keep some FLOPs too: conv2 max(ceil(0.01 * 2304), 16) = 24 weights * 128 =
    # 3,072; fc1 max(656, 64) * 2 = 1,312; fc2 max(7, 10) * 2 = 20; with conv1's 221,184:
    # 225,588 = 34.79% of 648,448
    pruner = ls.MagnitudePruner(keep_first_dense=True)
    with pytest.raises(
        ValueError,
        match=r"has 225,588 sparse FLOPs; the lowest reachable target is 34\.79% of dense"
        r" \(conv1\.weight \(not pruned\): 221,184; conv2\.weight \(kept at its floor\):"
        r" 3,072; fc1\.weight \(kept at its floor\): 1,312; fc2\.weight \(kept at its"
        r" floor\): 20\); prune those weights too.*or lower the pruner's per-layer floors",
    ):
        ls.prune_to_flops(Wide(), torch.zeros(1, 3, 16, 16), "20%", pruner=pruner)


def test_unreachable_budget_fails_at_fit_start(tmp_path: Path) -> None:
    pruner = ls.MagnitudePruner(
        keep_first_dense=True, schedule=ls.schedules.Constant(0.5), min_density=0.0
    )
    # conv1 (221,184 FLOPs, 34.11% of dense) stays dense: 20% cannot be reached
    callback = ls.SparsityCallback(pruner, ls.FlopBudget("20%", by_epoch=5), write_files=False)
    trainer = quiet_trainer(tmp_path, [callback], epochs=5)
    with pytest.raises(ValueError, match=r"unreachable.*lowest reachable target is 34\.11% of"):
        trainer.fit(Wide())
    assert trainer.global_step == 0


def test_model_pruning_governed_by_the_budget(tmp_path: Path) -> None:
    budget = ls.FlopBudget("65%")
    pruning = ModelPruning(
        "l1_unstructured", amount=0.25, apply_pruning=budget.pruning_allowed, verbose=0
    )
    callback = ls.SparsityCallback(budget=budget, write_files=False)
    quiet_trainer(tmp_path, [pruning, callback], epochs=8).fit(Wide())
    sparse = [point.flops_sparse for point in callback.history]
    first = next(i for i, value in enumerate(sparse) if value <= 0.65 * WIDE_DENSE)
    assert first > 1
    assert sparse[first:] == [sparse[first]] * len(sparse[first:])


def test_resume_of_a_run_the_budget_ended_stops_at_once(tmp_path: Path) -> None:
    def parts() -> tuple[ls.SparsityCallback, ModelCheckpoint]:
        pruner = ls.MagnitudePruner(schedule=ls.schedules.Linear(0.9, 0, 4), allocation="uniform")
        budget = ls.FlopBudget("60%", finetune_epochs=0)
        callback = ls.SparsityCallback(pruner, budget, write_files=False)
        return callback, ModelCheckpoint(dirpath=tmp_path, save_last=True)

    callback, checkpoint = parts()
    first = quiet_trainer(tmp_path, [callback, checkpoint], 10, enable_checkpointing=True)
    first.fit(Wide())
    assert callback.stopping_reason == "finetune_done"
    history = callback.history

    callback, checkpoint = parts()
    second = quiet_trainer(tmp_path, [callback, checkpoint], 10, enable_checkpointing=True)
    second.fit(Wide(), ckpt_path=str(tmp_path / "last.ckpt"))
    assert callback.stopping_reason == "finetune_done"
    assert second.global_step == first.global_step  # no further training step ran
    assert callback.history == history


def test_budget_on_nonzero_parameters(tmp_path: Path) -> None:
    pruner = ls.MagnitudePruner(
        schedule=ls.schedules.Linear(0.9, start_epoch=0, end_epoch=9), allocation="uniform"
    )
    budget = ls.FlopBudget(20_000, count="params", finetune_epochs=0)
    callback = ls.SparsityCallback(pruner, budget, write_files=False)
    quiet_trainer(tmp_path, [callback], epochs=20).fit(Wide())
    nonzero = [point.params_nonzero for point in callback.history]
    assert nonzero[-1] <= 20_000 < nonzero[-2]  # stopped at the first epoch within
    assert callback.history[-1].budget_value == nonzero[-1]
    assert callback.stopping_reason == "finetune_done"


def test_budget_on_effective_flops_counts_zero_activations(tmp_path: Path) -> None:
    budget = ls.FlopBudget("60%", count="effective")
    pruner = ls.MagnitudePruner(schedule=ls.schedules.Constant(0.3), allocation="uniform")
    callback = ls.SparsityCallback(pruner, budget, write_files=False)
    model = Wide()
    quiet_trainer(tmp_path, [callback], epochs=1).fit(model)
    # the example input is zeros: after conv1 only its bias and ReLU are left, so the value
    # is what measure(activations=True) says on that input, not the sparse FLOPs
    effective = ls.measure(model, model.example_input_array, activations=True)
    assert callback.history[-1].budget_value == effective.total.flops_effective
    assert effective.total.flops_effective < callback.history[-1].flops_sparse


class CrossAttention(torch.nn.Module):
    """Query length 3, key length 7: the packed QKV weight is used in slices."""

    def __init__(self) -> None:
        super().__init__()
        self.mha = torch.nn.MultiheadAttention(16, 2, batch_first=True)
        self.fc1 = torch.nn.Linear(16, 64)
        self.fc2 = torch.nn.Linear(64, 16)

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.mha(q, kv, kv)[0])))


def test_prune_to_flops_counts_sliced_weights_it_does_not_prune() -> None:
    torch.manual_seed(0)
    model = CrossAttention()
    x = (torch.randn(1, 3, 16), torch.randn(1, 7, 16))
    # the attention's out_proj is pruned too: inplace zeros reach MHA reading its weight
    report = ls.prune_to_flops(model, x, "60%")
    assert int(model.mha.out_proj.weight.count_nonzero()) < 16 * 16
    target = 0.6 * report.total.flops
    # fc1, fc2 and out_proj weights cost 2 * 3 = 6 FLOPs each (3 query tokens)
    assert target - 6 < report.total.flops_sparse <= target  # under one such weight's cost


def test_one_shot_and_budget_argument_errors() -> None:
    with pytest.raises(TypeError, match="`pruner` must be a MagnitudePruner or None, got int"):
        ls.prune_to_flops(Wide(), torch.zeros(1, 3, 16, 16), "50%", pruner=3)  # type: ignore[arg-type]
    with torch.device("meta"):
        meta = Wide()
    with pytest.raises(ValueError, match="needs real weights to rank; the model is on meta"):
        ls.prune_to_flops(meta, torch.zeros(1, 3, 16, 16, device="meta"), "50%")
    with pytest.raises(
        ValueError, match=r"action='adjust' steers .* \(count='train'\); got count='params'"
    ):
        ls.FlopBudget("50%", by_epoch=3, action="adjust", count="params")
    with pytest.raises(ValueError, match="`monitor` must be a metric name"):
        ls.MetricGuard(3, threshold=0.5)  # type: ignore[arg-type]
