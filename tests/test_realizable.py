"""Realizable FLOPs: 2:4 weights at half, removed rows and inputs skipped, unstructured
zeros not; checked against a hand count."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import lightning_sparsity as ls
from lightning_sparsity.counting.channels import dead_inputs
from lightning_sparsity.counting.realizable import ZeroFlags, probe
from lightning_sparsity.counting.trace import trace
from lightning_sparsity.patterns import group_view, kernel_problem
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


# ---- dead rows carried into the next layer's inputs (counting/channels.py) ----


def dead_rows_model(bn_bias: float = 0.0, bn_mean: float = 0.0) -> Mixed:
    """Mixed with conv1's first 6 channels dead (weights and bias zero); BN's constant for
    them is ``bias − weight·mean/√(var+eps)`` = ``bn_bias − bn_mean/√(1 + 1e-5)``."""
    model = pruned_model()
    with torch.no_grad():
        model.conv1.bias[:6] = 0
        model.bn1.bias.fill_(bn_bias)
        model.bn1.running_mean.fill_(bn_mean)
    return model


def compacted_output(model: Mixed, x: torch.Tensor) -> torch.Tensor:
    """The forward with conv1's dead channels (and conv2's inputs for them) removed."""
    live = slice(6, 16)
    h = nn.functional.conv2d(x, model.conv1.weight[live], model.conv1.bias[live], padding=1)
    bn = model.bn1
    h = nn.functional.batch_norm(
        h,
        bn.running_mean[live],
        bn.running_var[live],
        bn.weight[live],
        bn.bias[live],
        eps=bn.eps,
    )
    h = nn.functional.conv2d(
        torch.relu(h), model.conv2.weight[:, live], model.conv2.bias, padding=1
    )
    return model.fc2(torch.relu(model.fc1(h.flatten(1))))


def test_dead_rows_through_batchnorm_at_its_initial_constants_remove_inputs() -> None:
    model = dead_rows_model()
    x = torch.randn(3, 8, 8, 8)
    # brute force: the compacted network computes what the whole one does
    with torch.no_grad():
        torch.testing.assert_close(compacted_output(model, x), model(x))
    report = ls.measure(model, x[:1])
    # conv2 reads 10 of its 16 input channels: 294,912 · 10/16 = 184,320 (unstructured
    # zeros in what is left realize nothing)
    assert report.forms["conv2.weight"] == "rows 16/16, inputs 10/16"
    assert report.layer("conv2").flops_realizable == 184_320
    assert report.layer("conv1").flops_realizable == 92_160  # its own rows, as before


# constants 0.5 and +0.3 (a negative one ReLU would zero again: not followed, conservative)
@pytest.mark.parametrize(("bn_bias", "bn_mean"), [(0.5, 0.0), (0.0, -0.3)])
def test_a_nonzero_batchnorm_constant_keeps_the_inputs(bn_bias: float, bn_mean: float) -> None:
    model = dead_rows_model(bn_bias, bn_mean)
    x = torch.randn(3, 8, 8, 8)
    with torch.no_grad():  # removing them would change the output: they are not dead
        assert not torch.allclose(compacted_output(model, x), model(x))
    report = ls.measure(model, x[:1])
    assert report.forms["conv2.weight"] == "unstructured"
    assert report.layer("conv2").flops_realizable == 294_912


def test_the_meter_follows_batchnorm_statistics_moving() -> None:
    model = dead_rows_model()
    x = torch.zeros(1, 8, 8, 8)
    meter = ls.SparsityMeter(model, x)
    assert meter.measure().layer("conv2").flops_realizable == 184_320
    with torch.no_grad():
        model.bn1.running_mean[:6] = -0.1  # training moved the statistics
    assert meter.measure().layer("conv2").flops_realizable == 294_912
    assert meter.measure() == ls.measure(model, x)


class Stack(nn.Module):
    """fc1 16→32, ReLU, fc2 32→8 on (batch, tokens, 16); ``skip``: add fc1's input's
    projection before fc2 (a residual); ``twice``: fc2 also reads a raw input."""

    def __init__(self, mode: str = "") -> None:
        super().__init__()
        self.mode = mode
        self.fc1 = nn.Linear(16, 32)
        self.side = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        if self.mode == "skip":
            h = h + self.side(x)
        if self.mode == "inplace":
            h += self.side(x)
        out = self.fc2(h)
        if self.mode == "twice":
            out = out + self.fc2(torch.ones((*x.shape[:-1], 32)))
        return out


@pytest.mark.parametrize("mode", ["", "skip", "inplace", "twice"])
def test_linear_rows_reach_the_next_linear_only_where_nothing_joins(mode: str) -> None:
    torch.manual_seed(0)
    model = Stack(mode).eval()
    with torch.no_grad():
        model.fc1.weight[:24] = 0  # 24 of 32 rows dead, their bias too
        model.fc1.bias[:24] = 0
    report = ls.measure(model, torch.randn(2, 5, 16))
    fc2_dense = 2 * 5 * 32 * 8 * (2 if mode == "twice" else 1)  # per sample, both calls
    # only the plain stack carries the zeros into fc2: 8 of 32 inputs live
    live = 8 if mode == "" else 32
    assert report.forms["fc2.weight"] == ("dense" if live == 32 else "rows 8/8, inputs 8/32")
    assert report.layer("fc2").flops_realizable == fc2_dense * live // 32


class Block(nn.Module):
    """A ResNet basic block: conv-BN-ReLU-conv-BN, plus the (downsampled) input."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.down(x))


def test_inputs_counted_dead_are_dead_in_a_residual_network() -> None:
    """Soundness by brute force: random values put into a consumer's weights for the
    inputs counted dead leave the network's output unchanged."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        Block(16, 16, 1),
        Block(16, 32, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    ).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):  # a third of every conv's rows dead
                m.weight[torch.randperm(m.out_channels)[: m.out_channels // 3]] = 0
        model[5].bn1.running_mean.uniform_(-1, 1)  # trained statistics: no zeros pass here
    # (not complete: relu of bn1's negative constants of the second block is 0 too, which
    # the trail, knowing no constant's sign, does not count)
    names = dead_inputs_are_dead(model, torch.randn(4, 3, 16, 16))
    # the stem's and each block's first conv feed the conv after them; the trained BN of
    # the second block's first conv stops it (conv2 pads zeros: its nonzero constant cannot
    # fold). A residual sum's channel is dead where every addend's is (the stem's and the
    # first block's conv2 rows both dead; the second block's conv2 and shortcut for the fc):
    # the second block's conv1 and shortcut, and the fc, read those
    assert set(names) == {
        "4.conv1.weight", "4.conv2.weight", "5.conv1.weight", "5.down.0.weight", "8.weight"
    }  # fmt: skip


def dead_inputs_are_dead(
    model: nn.Module, x: torch.Tensor, complete: bool = False
) -> dict[str, int]:
    """Brute force: every input counted dead is one constant wherever its layer reads it,
    over several random batches (so ``weight · constant`` folds into the layer's bias
    exactly), and zero where the layer pads zeros (the border would read 0, not the
    constant). Returns the consumers with dead inputs and how many. ``complete``: also every
    such input of a Linear or convolution is counted dead."""
    found = trace(model, x[:1])
    slots = [getattr(s.module, s.attr) for s in found.slots]
    probes = [probe(s.module, w) for s, w in zip(found.slots, slots, strict=True)]
    rows = [None if p is None else p.live_rows for p in probes]
    dead = dead_inputs(found.flows, Counter(u.slot for u in found.uses), slots, rows)
    layers = {id(m): m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))}
    seen: dict[int, list[torch.Tensor]] = {}
    hooks = [
        m.register_forward_pre_hook(lambda m, a: seen.setdefault(id(m), []).append(a[0]))
        for m in layers.values()
    ]
    with torch.no_grad():
        for seed in range(3):
            torch.manual_seed(seed)
            model(torch.randn_like(x))
    for h in hooks:
        h.remove()
    constant: dict[int, torch.Tensor] = {}  # per layer: its inputs that are one constant
    for key, inputs in seen.items():
        layer = layers[key]
        conv = not isinstance(layer, nn.Linear)
        per_input = torch.cat(
            [(a.movedim(1, 0) if conv else a.movedim(-1, 0)).reshape(a.shape[1 if conv else -1], -1)
             for a in inputs], 1,
        )  # fmt: skip
        same = (per_input == per_input[:, :1]).all(1)
        padding = getattr(layer, "padding", (0,))
        pads = padding != "valid" and (isinstance(padding, str) or any(padding))
        pads = pads and getattr(layer, "padding_mode", "zeros") == "zeros"
        constant[key] = same & (per_input[:, 0] == 0) if pads else same
    for i, d in dead.items():
        module = found.slots[i].module
        assert constant[id(module)][d].all(), f"{found.slots[i].name}: an input counted dead varies"
    if complete:
        for i, slot in enumerate(found.slots):
            expected = constant.get(id(slot.module))
            if (
                slot.attr != "weight"
                or expected is None
                or slot.module.weight.shape[1] != len(expected)
            ):
                continue
            got = dead.get(i, torch.zeros_like(expected))
            assert torch.equal(got, expected), f"{slot.name}: constant inputs not counted dead"
    return {found.slots[i].name: int(d.sum()) for i, d in dead.items() if d.any()}


class Views(nn.Module):
    """Views of a conv's output that do and do not keep a channel's entries together."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        features = {"flatten": 8 * 16, "split-last": 2, "merge-c-h": 4, "flatten-2": 16}
        self.fc = nn.Linear(features[self.how], 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)  # (B, 8, 4, 4)
        if self.how == "flatten":  # channel c: features 16c .. 16c + 15
            return self.fc(y.flatten(1))
        if self.how == "split-last":  # (B, 64, 2): the fc reads pairs, not channels
            return self.fc(y.reshape(y.shape[0], -1, 2))
        if self.how == "merge-c-h":  # (B, 32, 4): C·H merged, the fc reads W
            return self.fc(y.reshape(y.shape[0], 32, 4))
        return self.fc(y.flatten(2))  # (B, 8, 16): the fc reads H·W of each channel


@pytest.mark.parametrize(
    ("how", "expected"),
    [("flatten", {"fc.weight": 4 * 16}), ("split-last", {}), ("merge-c-h", {}), ("flatten-2", {})],
)
def test_views_carry_dead_channels_only_where_they_keep_them_together(
    how: str, expected: dict[str, int]
) -> None:
    torch.manual_seed(0)
    model = Views(how).eval()
    with torch.no_grad():
        model.conv.weight[::2] = 0.0  # channels 0, 2, 4, 6 dead
        model.conv.bias[::2] = 0.0
    assert dead_inputs_are_dead(model, torch.randn(4, 3, 4, 4)) == expected


# ---- N:M credited only where the kernels take the weight (patterns.kernel_problem) ----


def two_of_four(weight: torch.Tensor) -> None:
    """2:4 with every input read: all weights nonzero, then in every group of 4 the even
    rows keep the first 2, the odd rows the last 2."""
    with torch.no_grad():
        weight.copy_(weight.abs() + 0.1)
        groups = weight.view(weight.shape[0], -1, 4)
        groups[0::2, :, 2:] = 0
        groups[1::2, :, :2] = 0


@pytest.mark.parametrize(
    ("dtype", "forms", "realizable"),
    [
        # float32 kernels take multiples of (32, 32): 0.weight (32, 32) does, 2.weight
        # (10, 32) not; dense 2·32·32 = 2,048 and 2·32·10 = 640:
        # realizable 2,048 / 2 + 640 = 1,664
        (torch.float32, {"0.weight": "2:4", "2.weight": "unstructured"}, 1_664),
        # float16 / bfloat16 kernels take multiples of (32, 64): neither; 2,048 + 640
        (torch.bfloat16, {"0.weight": "unstructured", "2.weight": "unstructured"}, 2_688),
    ],
)
def test_two_four_is_credited_only_to_weights_the_kernels_take(
    dtype: torch.dtype, forms: dict[str, str], realizable: int
) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10)).to(dtype)
    for i in (0, 2):
        two_of_four(model[i].weight)
        assert bool(((group_view(model[i].weight, 4) != 0).sum(1) <= 2).all())
    report = ls.measure(model, torch.zeros(1, 32, dtype=dtype))
    assert report.forms == forms
    assert report.total.flops == 2_688
    assert report.total.flops_realizable == realizable
    # the pruner's rule, the same function: what it refuses is never counted 2:4
    for name, text in forms.items():
        accepted = kernel_problem(model.get_parameter(name), (2, 4)) is None
        assert (text == "2:4") == accepted
    # a pattern the pruner refuses is counted at what the weight really realizes: the
    # meter (the budget's count) agrees with a fresh measure
    assert ls.SparsityMeter(model, torch.zeros(1, 32, dtype=dtype)).measure() == report


def test_a_refused_two_four_weight_realizes_its_compaction() -> None:
    # (10, 32) float32: 2:4 in every group, and rows 6..9 zero: compacted to 6 of 10 rows,
    # 640 · 6/10 = 384 (2:4 would have said 320, but no kernel runs this shape)
    layer = nn.Linear(32, 10)
    two_of_four(layer.weight)
    with torch.no_grad():
        layer.weight[6:] = 0  # rows 0..5 still read every input
    report = ls.measure(nn.Sequential(layer), torch.zeros(1, 32))
    assert report.forms == {"0.weight": "rows 6/10, inputs 32/32"}
    assert report.total.flops_realizable == 384


def test_a_realizable_budget_is_not_credited_a_refused_two_four_weight() -> None:
    # 2.weight (10, 32) conforms to 2:4 but no float32 kernel takes it: the budget's value
    # is the float32 case's 1,664 (2,048 / 2 + 640), not 1,344 (both halved)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
    for i in (0, 2):
        two_of_four(model[i].weight)
    budget = ls.FlopBudget("90%", count="realizable", finetune_epochs=0)
    controller = ls.SparsityController(None, budget)
    controller.bind(model, torch.zeros(1, 32))
    controller.start(model)
    assert [p.budget_value for p in controller.history] == [1_664]


class Vgg(nn.Module):
    """VGG's shape in miniature: convs, adaptive pooling to 7×7, flatten, a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.pool = nn.AdaptiveAvgPool2d((7, 7))
        self.head = nn.Sequential(nn.Linear(16 * 49, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


def test_dead_channels_reach_a_linear_through_flatten_and_match_the_compacted_model() -> None:
    # half of every conv's output channels dead (weights and bias): a dead channel of the
    # last conv is 49 dead features of head[0] after the 7×7 pooling and the flatten
    torch.manual_seed(0)
    model = Vgg().eval()
    convs = [model.features[0], model.features[3]]
    dead = [torch.arange(c.out_channels) % 2 == 1 for c in convs]
    with torch.no_grad():
        for conv, d in zip(convs, dead, strict=True):
            conv.weight[d] = 0.0
            conv.bias[d] = 0.0
    live = [~d for d in dead]
    # the compacted model, by hand: live channels only, head[0] keeps the live 49-blocks
    small = Vgg().eval()
    features = live[1].repeat_interleave(49)
    with torch.no_grad():
        small.features[0] = nn.Conv2d(3, 4, 3, padding=1)
        small.features[0].weight.copy_(convs[0].weight[live[0]])
        small.features[0].bias.copy_(convs[0].bias[live[0]])
        small.features[3] = nn.Conv2d(4, 8, 3, padding=1)
        small.features[3].weight.copy_(convs[1].weight[live[1]][:, live[0]])
        small.features[3].bias.copy_(convs[1].bias[live[1]])
        small.head[0] = nn.Linear(8 * 49, 32)
        small.head[0].weight.copy_(model.head[0].weight[:, features])
        small.head[0].bias.copy_(model.head[0].bias)
        small.head[2].load_state_dict(model.head[2].state_dict())
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x))  # the hand compaction is exact
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        small(x)
    report = ls.measure(model, x)
    # was 1.13x on torchvision's vgg11: head[0] kept all 16·49 inputs
    assert report.total.flops_realizable == counter.get_total_flops()
    assert report.forms["head.0.weight"] == "rows 32/32, inputs 392/784"
    # sound: random values in the inputs counted dead change nothing (4 of conv 2's 8
    # inputs; 8 dead channels · 49 = 392 of the head's)
    assert dead_inputs_are_dead(model, torch.randn(2, 3, 28, 28)) == {
        "features.3.weight": 4,
        "head.0.weight": 392,
    }


class PoolAfter(nn.Module):
    """A dead-channel layer, a pool, a reader: the pool's window on or off the channel axis."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        linear = how == "avg_pool2d-on-features"
        self.first = nn.Linear(8, 8) if linear else nn.Conv2d(3, 8, 1)
        self.second = nn.Linear(8, 4) if linear else nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.first(x))
        if self.how == "max_pool3d-on-4d":  # read as an unbatched (C, D, H, W): dim 1 pooled
            y = nn.functional.max_pool3d(y, (3, 1, 1), 1, (1, 0, 0))
        elif self.how == "avg_pool2d-on-features":  # (B, T, F) read as (C, H, W): F pooled
            y = nn.functional.avg_pool2d(y, (1, 3), 1, (0, 1))
        else:  # max_pool2d on (B, C, H, W): H and W pooled, channels kept
            y = nn.functional.max_pool2d(y, 3, 1, 1)
        return self.second(y)


@pytest.mark.parametrize(
    ("how", "x", "expected"),
    [
        # were credited: the pool mixes the dead channels with their neighbours
        ("max_pool3d-on-4d", torch.randn(2, 3, 4, 4), {}),
        ("avg_pool2d-on-features", torch.randn(2, 5, 8), {}),
        ("max_pool2d", torch.randn(2, 3, 4, 4), {"second.weight": 4}),
    ],
)
def test_a_pool_carries_dead_channels_only_where_its_window_leaves_their_axis(
    how: str, x: torch.Tensor, expected: dict[str, int]
) -> None:
    torch.manual_seed(0)
    model = PoolAfter(how).eval()
    with torch.no_grad():
        model.first.weight[1::2] = 0.0  # channels 1, 3, 5, 7 dead
        model.first.bias[1::2] = 0.0
    assert dead_inputs_are_dead(model, x) == expected


def random_groups(shape: tuple[int, ...], m: int, seed: int) -> torch.Tensor:
    """A weight whose groups of ``m`` (along dim 1 at each kernel position) hold 0 to ``m``
    nonzeros at random, with two rows and two inputs entirely zero."""
    g = torch.Generator().manual_seed(seed)
    k, c, *kernel = shape
    moved = (k, *kernel, c // m, m)  # groups last, as the runtimes lay them out
    counts = torch.randint(0, m + 1, moved[:-1], generator=g)[..., None]
    ranks = torch.rand(moved, generator=g).argsort(-1).argsort(-1)
    values = torch.randn(moved, generator=g) * (ranks < counts)
    w = values.reshape(k, *kernel, c).movedim(-1, 1).contiguous()
    w[[1, k - 2]] = 0
    w[:, [0, c - 1]] = 0
    return w


PROBED_LAYERS = {
    "linear": lambda: nn.Linear(96, 32),
    "conv1d": lambda: nn.Conv1d(48, 8, 5),
    "conv2d": lambda: nn.Conv2d(48, 16, 3),
    "conv2d-1x1": lambda: nn.Conv2d(96, 16, 1),
}


@pytest.mark.parametrize("layer", sorted(PROBED_LAYERS))
@pytest.mark.parametrize("m", [2, 4, 6, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_probes_equal_a_position_by_position_count(
    layer: str, m: int, dtype: torch.dtype
) -> None:
    module = PROBED_LAYERS[layer]().to(dtype)
    shape = tuple(module.weight.shape)
    with torch.no_grad():
        module.weight.copy_(random_groups(shape, m, seed=m))
    w = module.weight.detach()
    patterns = [(n, m) for n in range(1, m)]
    found = probe(module, w, patterns)
    assert found is not None
    # the truths, one position at a time
    k, c = shape[:2]
    kernel = list(itertools.product(*[range(s) for s in shape[2:]]))
    nonzero = {
        (r, i, *p): bool(w[(r, i, *p)] != 0) for r in range(k) for i in range(c) for p in kernel
    }
    assert int(found.nnz) == sum(nonzero.values())
    rows = [any(nonzero[(r, i, *p)] for i in range(c) for p in kernel) for r in range(k)]
    inputs = [any(nonzero[(r, i, *p)] for r in range(k) for p in kernel) for i in range(c)]
    assert (found.live_rows != 0).tolist() == rows
    assert found.live_inputs.tolist() == inputs
    most = [
        max(sum(nonzero[(r, g + j, *p)] for j in range(m)) for g in range(0, c, m) for p in kernel)
        for r in range(k)
    ]
    for (n, _), violations in zip(patterns, found.violations, strict=True):
        # rows holding a group of more than N nonzeros; a weight no kernel takes: one
        taken = kernel_problem(w, (n, m)) is None
        assert int(violations) == (sum(most_r > n for most_r in most) if taken else 1)


def test_probes_read_from_a_shared_buffer_equal_fresh_ones() -> None:
    # the recount reads every weight's zeros into one buffer, the largest weight's size
    layers = [nn.Conv2d(48, 16, 3), nn.Linear(96, 32), nn.Conv2d(96, 16, 1)]
    weights = [
        random_groups(tuple(layer.weight.shape), 4, seed=i) for i, layer in enumerate(layers)
    ]
    flags = ZeroFlags(weights)
    for layer, w in zip(layers, weights, strict=True):
        shared, fresh = probe(layer, w, flags=flags.read(w)), probe(layer, w)
        assert shared is not None
        assert fresh is not None
        assert int(shared.nnz) == int(fresh.nnz) == int(w.count_nonzero())
        assert torch.equal(shared.live_rows, fresh.live_rows)
        assert torch.equal(shared.live_inputs, fresh.live_inputs)
        assert [int(v) for v in shared.violations] == [int(v) for v in fresh.violations]


@pytest.mark.parametrize("realizable", [True, False, ["2:4", "1:4", "3:8"]])
def test_every_parameters_nonzeros_equal_a_brute_count(realizable: bool | list[str]) -> None:
    # the default count reads them off the probes' bytes, realizable=False off a read of
    # its own; the last weight's 257 entries (a prime) fold no two rows' bytes together
    model = nn.Sequential(
        pruned_model(),
        nn.Linear(10, 13 * 11),
        nn.Unflatten(1, (13, 11)),
        nn.Conv1d(13, 1, 11),
        nn.Flatten(),
        nn.Linear(1, 257),
    )
    with torch.no_grad():
        model[1].weight[::3] = 0
        model[3].weight[:, :, ::2] = 0
        model[5].weight[::2] = 0
    report = ls.measure(model, torch.zeros(1, 8, 8, 8), realizable=realizable)
    brute = {
        name: (p.numel(), sum(1 for v in p.detach().flatten().tolist() if v != 0))
        for name, p in model.named_parameters()
    }
    assert report.parameters == brute
