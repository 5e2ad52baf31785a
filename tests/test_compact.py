"""``ls.compact``: the physically smaller model the realizable count describes (issue #16).

For each family, channel-pruned: the compacted copy's output equals the masked model's
(eval mode), and its dense FLOPs as torch's FlopCounterMode counts them equal our
``flops_realizable`` of the masked model, exactly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import lightning_sparsity as ls
from lightning_sparsity.compact import Compacted
from tests.test_realizable import Block, Vgg


def flop_counter_flops(model: nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def check(model: nn.Module, x: torch.Tensor) -> tuple[ls.SparsityReport, nn.Module]:
    """compact == masked (outputs) and FlopCounterMode(compact) == realizable (per batch)."""
    model.eval()
    report = ls.measure(model, x, per="batch")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    small = ls.compact(model, x)
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=1e-5, atol=1e-5)
    assert flop_counter_flops(small, x) == report.total.flops_realizable
    assert report.total.flops_realizable < report.total.flops  # something was removed
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    after = model.state_dict()  # the masked model is left as found
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    return report, small


def trained_norms(model: nn.Module) -> None:
    """BatchNorm statistics and affine parameters as training leaves them (not 0 and 1)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)


def residual() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        Block(16, 16, 1), Block(16, 32, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )  # fmt: skip


class Depthwise(nn.Module):
    """MobileNet's inverted residual: expand 1×1, depthwise 3×3, project 1×1."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(8, 32, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.depthwise = nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.project = nn.Conv2d(32, 8, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self.bn1(self.expand(x)))
        y = F.relu6(self.bn2(self.depthwise(y)))
        return x + self.project(y)


class Mlp(nn.Module):
    """A transformer block's MLP: hidden size 4·d, GELU, residual."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


def prune_rows(model: nn.Module, sparsity: float, bias: bool = False, **kwargs) -> None:
    """Structured pruning of the weights' rows; with ``bias``, the pruned rows' biases zeroed
    too (a dead row with a live bias outputs a constant, which its consumer keeps reading)."""
    pruner = ls.MagnitudePruner(structured=True, **kwargs)
    pruner.apply(model, sparsity)
    if bias:
        with torch.no_grad():
            for _, module, _ in pruner.targets(model):
                rows = module.weight.reshape(module.weight.shape[0], -1).abs().sum(1) == 0
                if module.bias is not None:
                    module.bias[rows] = 0.0


def test_a_residual_cnn_with_trained_batchnorm() -> None:
    torch.manual_seed(0)
    model = residual()
    trained_norms(model)
    prune_rows(model, 0.4)
    _, small = check(model, torch.randn(2, 3, 16, 16))
    assert any(isinstance(m, Compacted) for m in small.modules())


def test_a_vgg_style_net_through_flatten() -> None:
    torch.manual_seed(0)
    model = Vgg()
    prune_rows(model, 0.5, bias=True, include=[r"features\..*"])
    _, small = check(model, torch.randn(2, 3, 28, 28))
    # the head reads only the live channels' 49 features each
    head = small.head[0]
    assert isinstance(head, Compacted)
    assert head.inputs is not None
    assert len(head.inputs) == 49 * int(model.features[3].weight.abs().sum((1, 2, 3)).gt(0).sum())


def test_a_mobilenet_depthwise_block() -> None:
    torch.manual_seed(0)
    model = Depthwise()
    trained_norms(model)
    prune_rows(model, 0.5, include=[r"depthwise"])  # dead depthwise channels
    _, small = check(model, torch.randn(2, 8, 8, 8))
    assert isinstance(small.depthwise, Compacted)
    assert small.depthwise.layer.groups == small.depthwise.layer.out_channels == 16


def test_a_transformer_mlp_hidden_size() -> None:
    torch.manual_seed(0)
    model = Mlp()
    prune_rows(model, 0.5, bias=True, include=[r"fc1"])  # half the hidden units: fc2 reads 0
    _, small = check(model, torch.randn(4, 5, 16))
    assert small.fc2.extra_repr() == "rows 16/16, inputs 32/64"
    assert small.fc1.extra_repr() == "rows 32/64, inputs 16/16"


def test_the_digits_cnn_after_a_real_structured_fit(tmp_path: Path) -> None:
    from lightning_sparsity.demo import DigitsCNN, DigitsDataModule
    from tests.fits import quiet_trainer

    torch.manual_seed(0)
    pruner = ls.MagnitudePruner(structured=True, schedule=ls.schedules.Constant(0.5))
    callback = ls.SparsityCallback(pruner, write_files=False, verbose=False)
    model = DigitsCNN()
    trainer = quiet_trainer(tmp_path, [callback], 2, limit_train_batches=4, limit_val_batches=2)
    trainer.fit(model, DigitsDataModule())
    check(model, torch.randn(3, 1, 8, 8))


def test_a_grouped_conv_is_kept_dense_and_named() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, groups=2), nn.ReLU(), nn.Conv2d(8, 4, 1))
    prune_rows(model, 0.5, include=["0"])
    x = torch.randn(2, 4, 6, 6)
    with pytest.warns(UserWarning, match=r"kept dense.*0.weight \(a grouped convolution"):
        small = ls.compact(model, x)
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x))


def test_refusals_name_what_cannot_be_compacted() -> None:
    shared = nn.Linear(8, 8)
    tied = nn.Sequential(shared, nn.ReLU(), nn.Linear(8, 8))
    tied[2].weight = shared.weight
    with torch.no_grad():
        shared.weight[:4] = 0.0
        shared.bias[:4] = 0.0
    with pytest.raises(ValueError, match=r"compact: 0.weight is tied to \['0', '2'\]"):
        ls.compact(tied, torch.randn(2, 8))
    with pytest.raises(ValueError, match="meta device"):
        ls.compact(nn.Linear(8, 4, device="meta"), torch.randn(2, 8))
