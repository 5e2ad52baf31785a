"""Realizable FLOPs: 2:4 weights at half, removed rows and inputs skipped, unstructured
zeros not; checked against a hand count."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import lightning_sparsity as ls
from lightning_sparsity.patterns import group_view
from tests.fits import Wide, quiet_trainer


class Mixed(nn.Module):
    """conv1 8→16 3×3 and conv2 16→16 3×3 on 8×8 (BN between), fc1 1024→64, fc2 64→10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * 8 * 8, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(torch.relu(self.bn1(self.conv1(x))))
        return self.fc2(torch.relu(self.fc1(h.flatten(1))))


def pruned_model() -> Mixed:
    torch.manual_seed(0)
    model = Mixed().eval()
    with torch.no_grad():
        # conv1 structurally: 6 of its 16 output channels (rows) entirely zero
        model.conv1.weight[:6] = 0
        # conv2 unstructured: about half its weights zero, no whole row or input channel
        g = torch.Generator().manual_seed(1)
        model.conv2.weight.mul_((torch.rand(model.conv2.weight.shape, generator=g) > 0.5).float())
        # fc1 2:4: in every group of 4 along the input the 2 largest kept
        ls.MagnitudePruner(pattern="2:4", include=["fc1"]).apply(model, 0.5)
        # fc2: its first 32 inputs unused (whole columns zero)
        model.fc2.weight[:, :32] = 0
        model.bn1.bias.fill_(0.5)  # the dead conv1 channels leave BN as a constant, not 0
    return model


def test_realizable_flops_equal_a_hand_count() -> None:
    model = pruned_model()
    report = ls.measure(model, torch.zeros(1, 8, 8, 8))
    # dense FLOPs (2 per MAC, 8×8 outputs):
    #   conv1 2·64·16·8·9 = 147,456     conv2 2·64·16·16·9 = 294,912
    #   fc1   2·1024·64   = 131,072     fc2   2·64·10      =   1,280
    # realizable:
    #   conv1: 10 of 16 rows live              147,456 · 10/16 =  92,160
    #   conv2: unstructured zeros, and its inputs all live (BN turns conv1's dead channels
    #          into constants): dense                          294,912
    #   fc1: 2:4                               131,072 · 1/2   =  65,536
    #   fc2: 32 of 64 inputs live              1,280 · 32/64   =     640
    hand = {"conv1": 92_160, "conv2": 294_912, "fc1": 65_536, "fc2": 640}
    assert {name: report.layer(name).flops_realizable for name in hand} == hand
    assert report.total.flops_realizable == sum(hand.values()) == 453_248
    assert report.forms["conv1.weight"] == "rows 10/16, inputs 8/8"
    assert report.forms["conv2.weight"] == "unstructured"
    assert report.forms["fc1.weight"] == "2:4"
    assert report.forms["fc2.weight"] == "rows 10/10, inputs 32/64"
    # realizable never undercuts sparse: a kernel runs at least the nonzeros
    for layer in report.layers:
        assert layer.flops_sparse <= layer.flops_realizable <= layer.flops
    assert "| realizable FLOPs |" in report.to_markdown().splitlines()[0]
    assert "fc1.weight 2:4" in report.to_markdown()


def test_the_meter_recounts_realizable_flops_as_a_fresh_measure() -> None:
    model = pruned_model()
    x = torch.zeros(1, 8, 8, 8)
    meter = ls.SparsityMeter(model, x)
    with torch.no_grad():
        model.conv1.weight[:8] = 0  # two more dead rows
    assert meter.measure() == ls.measure(model, x)
    assert meter.measure().layer("conv1").flops_realizable == 147_456 * 8 // 16
    assert ls.measure(model, x, realizable=False).total.flops_realizable is None


def test_a_pattern_other_than_two_four() -> None:
    model = nn.Sequential(nn.Linear(64, 32))
    ls.MagnitudePruner(pattern="1:4").apply(model, 0.75)
    w = model[0].weight
    assert bool(((group_view(w, 4) != 0).sum(1) <= 1).all())
    x = torch.zeros(1, 64)
    # checked only for 2:4 by default: 1:4 is also 2:4-conforming (half the FLOPs)
    assert ls.measure(model, x).total.flops_realizable == 2 * 64 * 32 // 2
    # named, its own rate counts: a quarter
    assert ls.measure(model, x, realizable=["2:4", "1:4"]).total.flops_realizable == 1024


@pytest.mark.filterwarnings("ignore:.*does not have many workers")
def test_a_budget_on_realizable_flops_in_a_fit(tmp_path: Path) -> None:
    # unstructured pruning realizes nothing; 2:4 halves fc1's 131,072 FLOPs
    schedule = ls.schedules.Constant(0.5, start_epoch=1)
    pruner = ls.MagnitudePruner(schedule=schedule, pattern="2:4", include=["fc1"])
    budget = ls.FlopBudget("95%", count="realizable", finetune_epochs=0)
    callback = ls.SparsityCallback(pruner, budget, write_files=False)
    quiet_trainer(tmp_path, [callback], 4).fit(Wide())
    realizable = [p.flops_realizable for p in callback.history]
    # Wide: 648,448 dense; after the 2:4 step fc1 (131,072) runs at half: 582,912
    assert realizable == [648_448, 582_912]
    assert [p.budget_value for p in callback.history] == realizable
    assert callback.stopping_reason == "finetune_done"  # 582,912 <= 0.95 · 648,448
