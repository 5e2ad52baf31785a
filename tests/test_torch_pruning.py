"""``ls.compact`` and realizable FLOPs against Torch-Pruning's own compaction (issue #16).

Torch-Pruning (``torch_pruning``, the ``torch-pruning`` test extra) removes a layer's output
channels together with everything its dependency graph couples to them: the BatchNorm
after, the next layer's input channels, the ``H·W`` features per channel of a Linear after a
flatten. Here the same channels are removed both ways. Torch-Pruning gets the layer and its
indices; we zero those rows (weights and biases) in a masked copy and call ``ls.compact``.
The truths are Torch-Pruning's pruned model (its shapes, weights and outputs) and torch's
``FlopCounterMode`` on it, not our own numbers. Torch-Pruning's model, our compacted model
and the masked model agree on outputs (eval mode), and FlopCounterMode on either pruned model
gives our ``flops_realizable`` of the masked model (per batch), exactly.

A removal keeps the function only where a removed channel reached its consumers as zeros.
After a BatchNorm the channel is its shift ``bias − weight·mean/√(var + eps)``. So
``prune_both`` sets that shift to 0 (bias and running mean 0) in the model both copies come
from. Where the shift is not 0, Torch-Pruning still removes the channel. Then its model
computes something else, and ours keeps the channel (the last test). A depthwise conv
reading a dead channel outputs its bias there only: both remove its row with the channel.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
import torch_pruning as tp
from torch import Tensor, nn

import lightning_sparsity as ls
from lightning_sparsity.compact import Compacted
from tests.test_compact import Depthwise, dead_rows, flop_counter_flops, trained_norms


def vgg() -> nn.Sequential:
    """VGG-BN in miniature: conv-BN-ReLU blocks, pooling, a 2×2 average, two Linears."""

    def block(i: int, cin: int, cout: int) -> list[tuple[str, nn.Module]]:
        conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        return [(f"conv{i}", conv), (f"bn{i}", nn.BatchNorm2d(cout)), (f"relu{i}", nn.ReLU())]

    return nn.Sequential(
        OrderedDict(
            [
                *block(1, 3, 8), ("pool1", nn.MaxPool2d(2)),
                *block(2, 8, 16),
                *block(3, 16, 16), ("pool3", nn.MaxPool2d(2)),
                ("avg", nn.AdaptiveAvgPool2d(2)), ("flat", nn.Flatten()),
                ("fc1", nn.Linear(16 * 4, 32)), ("relu4", nn.ReLU()),
                ("fc2", nn.Linear(32, 10)),
            ]
        )
    )  # fmt: skip


def mlp() -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            [
                ("fc1", nn.Linear(12, 32)), ("relu1", nn.ReLU()),
                ("fc2", nn.Linear(32, 24)), ("relu2", nn.ReLU()),
                ("fc3", nn.Linear(24, 5)),
            ]
        )
    )  # fmt: skip


def lowest_l1(layer: nn.Module, count: int) -> Tensor:
    """The ``count`` output rows of ``layer`` with the lowest L1 norm, in order."""
    norms = layer.weight.detach().flatten(1).abs().sum(1)
    return norms.argsort()[:count].sort().values


def seeded(rows: int, count: int, seed: int) -> Tensor:
    """``count`` of ``rows`` output rows at random (seeded), in order."""
    return torch.randperm(rows, generator=torch.Generator().manual_seed(seed))[:count].sort().values


def prune_both(
    model: nn.Module,
    x: Tensor,
    cuts: dict[str, Tensor],
    norms: dict[str, str],
    zeroed: dict[str, str] | None = None,
) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(masked, ours, Torch-Pruning's): the same output channels removed from ``model``.

    Args:
        model: the model. Its BatchNorms in ``norms`` get a zero shift for the cut channels
            (bias 0, running mean 0), so both copies start from the same function.
        x: the example input (Torch-Pruning's trace, ``ls.compact``'s).
        cuts: per layer, the output channels to remove (Torch-Pruning's root indices).
        norms: per BatchNorm, the cut layer whose channels it normalizes.
        zeroed: per layer whose rows Torch-Pruning removes with a cut (a depthwise conv in
            the group), that cut: its channels are zeroed in the masked copy too.
    """
    model.eval()
    with torch.no_grad():
        for norm, layer in norms.items():
            bn = model.get_submodule(norm)
            bn.bias[cuts[layer]] = 0.0
            bn.running_mean[cuts[layer]] = 0.0
    theirs, masked = copy.deepcopy(model), copy.deepcopy(model)
    graph = tp.DependencyGraph().build_dependency(theirs, example_inputs=x)
    for name, channels in cuts.items():
        layer = theirs.get_submodule(name)
        how = (
            tp.prune_conv_out_channels
            if isinstance(layer, nn.Conv2d)
            else tp.prune_linear_out_channels
        )
        graph.get_pruning_group(layer, how, idxs=channels.tolist()).prune()
    theirs.eval()
    rows = {**cuts, **{name: cuts[cut] for name, cut in (zeroed or {}).items()}}
    for name, channels in rows.items():
        dead_rows(masked.get_submodule(name), channels)
    ours = ls.compact(masked, x)
    return masked, ours, theirs


def assert_same_function(masked: nn.Module, ours: nn.Module, theirs: nn.Module, x: Tensor) -> None:
    with torch.no_grad():
        expected = masked(x)
        torch.testing.assert_close(theirs(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours(x), expected, rtol=1e-5, atol=1e-5)


def assert_same_tensors(mine: nn.Module, theirs: nn.Module) -> None:
    """The same parameters and buffers: names, shapes and values."""
    a, b = mine.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].shape == b[key].shape, key
        assert torch.equal(a[key], b[key]), key


def assert_layers_match(
    ours: nn.Module, theirs: nn.Module, layers: list[str], norms: list[str]
) -> None:
    """Layers compacted to Torch-Pruning's (nothing gathered or put back); norms sliced alike."""
    for name in layers:
        mine = ours.get_submodule(name)
        assert isinstance(mine, Compacted), name
        assert mine.rows is None, name  # only the kept channels come out
        assert mine.inputs is None, name  # and only those arrive
        assert_same_tensors(mine.layer, theirs.get_submodule(name))
    for name in norms:
        assert_same_tensors(ours.get_submodule(name), theirs.get_submodule(name))


def torch_pruning_macs(model: nn.Module, x: Tensor) -> dict[str, int]:
    """Torch-Pruning's count of each Conv2d's and Linear's weight MACs on ``x`` (whole batch).

    ``tp.utils.count_ops_and_params`` (``torch_pruning/utils/op_counter.py``, ptflops's
    hooks) counts MACs, one per multiply-accumulate, module by module:
    ``conv_flops_counter_hook`` counts ``k·k·Cin·Cout/groups`` per output position plus, for
    a bias, ``Cout`` adds per position. ``linear_flops_counter_hook`` counts ``in·out`` per
    row plus ``out_features`` bias adds, once per call and not per row. BatchNorm, ReLU and
    pooling each add ops per element, which our FLOPs leave out. The total is divided by the
    batch size and the per-module figures (``layer_wise=True``) are not. So the like-for-like
    count is per Conv/Linear, whole batch, without the bias adds. Our convs have no bias
    (asserted), and the Linears' bias adds come off here.
    """
    _, _, per_module, _ = tp.utils.count_ops_and_params(model, x, layer_wise=True)
    macs = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            assert module.bias is None
            macs[name] = per_module[module]
        elif isinstance(module, nn.Linear):
            macs[name] = per_module[module] - (
                module.out_features if module.bias is not None else 0
            )
    return macs


def assert_counts_agree(masked: nn.Module, ours: nn.Module, theirs: nn.Module, x: Tensor) -> None:
    report = ls.measure(masked, x, per="batch")
    realizable = report.total.flops_realizable
    assert realizable < report.total.flops  # something was removed
    assert flop_counter_flops(theirs, x) == flop_counter_flops(ours, x) == realizable
    # an outside count in MACs, per layer: 1 MAC = 2 FLOPs
    by_layer = {row.name: row.flops_realizable for row in report.layers}
    outside = torch_pruning_macs(theirs, x)
    assert {name: 2 * macs for name, macs in outside.items()} == {n: by_layer[n] for n in outside}


def test_a_vgg_with_batchnorm_through_flatten() -> None:
    torch.manual_seed(0)
    model = vgg()
    trained_norms(model)
    x = torch.randn(2, 3, 16, 16)
    # the lowest-L1 half of conv1 and conv2, a quarter of conv3 (4 features each of fc1's
    # inputs after the 2×2 average and the flatten), and half of fc1's rows
    cuts = {
        "conv1": lowest_l1(model.conv1, 4),
        "conv2": lowest_l1(model.conv2, 8),
        "conv3": lowest_l1(model.conv3, 4),
        "fc1": lowest_l1(model.fc1, 16),
    }
    norms = {"bn1": "conv1", "bn2": "conv2", "bn3": "conv3"}
    masked, ours, theirs = prune_both(model, x, cuts, norms)
    # Torch-Pruning's shapes: fc1 lost 2·2 = 4 features per channel of conv3
    assert theirs.conv3.weight.shape == (12, 8, 3, 3)
    assert theirs.fc1.weight.shape == (16, 12 * 4)
    assert theirs.fc2.weight.shape == (10, 16)
    assert_same_function(masked, ours, theirs, x)
    assert_counts_agree(masked, ours, theirs, x)
    assert_layers_match(
        ours, theirs, ["conv1", "conv2", "conv3", "fc1", "fc2"], ["bn1", "bn2", "bn3"]
    )


def test_a_plain_mlp() -> None:
    torch.manual_seed(0)
    model = mlp()
    x = torch.randn(3, 12)
    cuts = {"fc1": seeded(32, 16, seed=1), "fc2": seeded(24, 10, seed=2)}
    masked, ours, theirs = prune_both(model, x, cuts, norms={})
    assert [theirs.get_submodule(n).weight.shape for n in ("fc1", "fc2", "fc3")] == [
        (16, 12),
        (14, 16),
        (5, 14),
    ]
    assert_same_function(masked, ours, theirs, x)
    assert_counts_agree(masked, ours, theirs, x)
    assert_layers_match(ours, theirs, ["fc1", "fc2", "fc3"], [])


def depthwise_pruned(zeroed: dict[str, str]) -> tuple[nn.Module, nn.Module, nn.Module, Tensor]:
    """The MobileNet block with half of expand's channels cut, and the input."""
    torch.manual_seed(0)
    model = Depthwise()
    trained_norms(model)
    x = torch.randn(2, 8, 8, 8)
    cuts = {"expand": lowest_l1(model.expand, 16)}
    norms = {"bn1": "expand", "bn2": "expand"}
    return (*prune_both(model, x, cuts, norms, zeroed), x)


def test_a_mobilenet_depthwise_block() -> None:
    # Torch-Pruning's group for expand's channels takes the depthwise conv's channels too
    # (one input each); we zero both
    masked, ours, theirs, x = depthwise_pruned(zeroed={"depthwise": "expand"})
    assert theirs.depthwise.weight.shape == (16, 1, 3, 3)
    assert theirs.project.weight.shape == (8, 16, 1, 1)
    assert_same_function(masked, ours, theirs, x)
    assert_counts_agree(masked, ours, theirs, x)
    for name in ("expand", "depthwise", "project"):
        assert_same_tensors(ours.get_submodule(name).layer, theirs.get_submodule(name))
    assert_same_tensors(ours.bn2, theirs.bn2)
    # a depthwise conv reads its dead channels' zeros only: expand's dead channels leave
    # through bn1 into it, as in Torch-Pruning's group (bn1 sliced to 16 in both)
    assert_same_tensors(ours.bn1, theirs.bn1)
    assert ours.bn1.num_features == theirs.bn1.num_features == 16


def test_a_depthwise_conv_reading_a_dead_channel_is_counted_removed() -> None:
    # only expand's rows zeroed: the depthwise conv (no bias) outputs zeros on those channels,
    # and Torch-Pruning removes them with expand's group; the function is the same
    # (before the depthwise read was followed: 172,032 FLOPs realizable against 102,400)
    masked, ours, theirs, x = depthwise_pruned(zeroed={})
    assert_same_function(masked, ours, theirs, x)
    assert_counts_agree(masked, ours, theirs, x)
    for name in ("expand", "depthwise", "project"):
        assert_same_tensors(ours.get_submodule(name).layer, theirs.get_submodule(name))


def test_a_channel_whose_batchnorm_shift_is_not_zero_is_kept() -> None:
    # conv1's cut channels are dead, but bn1 maps them to its shift 0.3 (bias 0.3, mean 0):
    # a constant, positive, so through ReLU. conv2 (3×3, zero-padded) reads that constant.
    # Torch-Pruning removes the channels anyway, which changes the function. We keep them.
    # Folding the constant into conv2's bias would not be exact either, because the
    # border positions read padding zeros instead of 0.3.
    torch.manual_seed(0)
    model = nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(3, 8, 3, padding=1, bias=False)), ("bn1", nn.BatchNorm2d(8)),
                ("relu1", nn.ReLU()),
                ("conv2", nn.Conv2d(8, 8, 3, padding=1, bias=False)), ("bn2", nn.BatchNorm2d(8)),
                ("relu2", nn.ReLU()),
                ("avg", nn.AdaptiveAvgPool2d(1)), ("flat", nn.Flatten()), ("fc", nn.Linear(8, 4)),
            ]
        )
    )  # fmt: skip
    trained_norms(model)
    x = torch.randn(2, 3, 16, 16)
    cut = lowest_l1(model.conv1, 4)
    with torch.no_grad():
        model.bn1.bias[cut] = 0.3
        model.bn1.running_mean[cut] = 0.0
    masked, ours, theirs = prune_both(model, x, {"conv1": cut}, norms={})
    with torch.no_grad():
        carried = masked.bn1(torch.zeros(1, 8, 1, 1)).flatten()  # what a zero channel leaves
        assert torch.equal(carried[cut], torch.full((4,), 0.3))
        expected = masked(x)
        torch.testing.assert_close(ours(x), expected, rtol=1e-5, atol=1e-5)
        assert (theirs(x) - expected).abs().max() > 1e-2  # Torch-Pruning's is another function
    # ours: conv2 still reads all 8 channels. conv1's cut rows do no multiplications but are
    # put back as zeros for bn1, which keeps all 8
    assert isinstance(ours.conv1, Compacted)
    assert ours.conv1.layer.out_channels == 4
    assert ours.conv1.rows is not None
    assert ours.bn1.num_features == 8
    assert isinstance(ours.conv2, nn.Conv2d)
    assert ours.conv2.in_channels == 8
    assert theirs.conv2.in_channels == 4
    report = ls.measure(masked, x, per="batch")
    assert flop_counter_flops(ours, x) == report.total.flops_realizable
    # what Torch-Pruning removed beyond us: conv2's reads of the 4 cut channels
    # 2 FLOPs · batch 2 · 16·16 positions · 3·3 kernel · 4 channels · 8 rows = 294,912
    assert report.total.flops_realizable - flop_counter_flops(theirs, x) == 294_912
