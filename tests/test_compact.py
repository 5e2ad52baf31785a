"""``ls.compact``: the physically smaller model the realizable count describes (issue #16).

For each family, channel-pruned: the compacted copy's output equals the masked model's
(eval mode), and its dense FLOPs as torch's FlopCounterMode counts them equal our
``flops_realizable`` of the masked model, exactly.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
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
    # and our counter agrees, with no op of the compacted model unknown to it
    again = ls.measure(small, x, per="batch")
    assert again.total.flops == report.total.flops_realizable
    assert again.unsupported == {}
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
    prune_rows(model, 0.4, allocation="uniform")  # 40% of every layer's rows
    _, small = check(model, torch.randn(2, 3, 16, 16))
    # trained statistics: a dead channel leaves bn1 as its nonzero constant, which conv2
    # reads, so conv1 puts its rows back in place and bn1 keeps every channel
    block = small[3]
    assert isinstance(block.conv1, Compacted)
    assert block.conv1.live[0] < 16
    assert block.conv1.rows is not None
    assert block.bn1.num_features == 16


def test_dead_channels_leave_through_a_batchnorm_at_its_initial_statistics() -> None:
    # bn1's constant for a dead channel is 0 (mean 0, bias 0): conv1's dead channels leave
    # through bn1 (sliced) into conv2; conv2 feeds the residual add, whose channels leave
    # only where the stem's rows are dead too
    torch.manual_seed(0)
    model = residual()
    prune_rows(model, 0.4, allocation="uniform")
    stem_dead = model[0].weight.abs().sum((1, 2, 3)) == 0
    conv2_dead = model[3].conv2.weight.abs().sum((1, 2, 3)) == 0
    _, small = check(model, torch.randn(2, 3, 16, 16))
    block = small[3]
    live = block.conv1.live[0]
    assert live < 16
    assert block.conv1.rows is None  # only the live channels come out
    assert block.bn1.num_features == live
    assert block.conv2.layer.in_channels == live
    assert block.conv2.inputs is None  # and conv2 reads them all
    width = int((~(stem_dead & conv2_dead)).sum())
    assert 0 < width < 16  # the residual add narrows to the channels some branch holds
    assert block.bn2.num_features == small[1].num_features == width


def test_a_vgg_style_net_through_flatten() -> None:
    torch.manual_seed(0)
    model = Vgg()
    prune_rows(model, 0.5, bias=True, include=[r"features\..*"])
    _, small = check(model, torch.randn(2, 3, 28, 28))
    # the last conv outputs its live channels only (no scatter back), the flatten carries
    # them, and the head reads their 49 features each (no gather: the rest never arrive)
    live = int(model.features[3].weight.abs().sum((1, 2, 3)).gt(0).sum())
    conv, head = small.features[3], small.head[0]
    assert isinstance(conv, Compacted)
    assert isinstance(head, Compacted)
    assert (conv.rows, head.inputs) == (None, None)
    assert conv.fill.numel() == live
    assert head.layer.in_features == 49 * live


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
    # the dead hidden units leave the model: fc1 outputs 32, fc2 reads 32, nothing moved
    assert (small.fc1.rows, small.fc2.inputs) == (None, None)
    assert small.fc1.layer.out_features == small.fc2.layer.in_features == 32


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
    x = torch.randn(2, 8)
    with pytest.warns(UserWarning, match=r"0.weight \(its weight is read outside its own"):
        small = ls.compact(tied, x)
    with torch.no_grad():
        torch.testing.assert_close(small(x), tied(x))
    assert small[2].weight is small[0].weight  # still tied: nothing compacted
    with pytest.raises(ValueError, match="meta device"):
        ls.compact(nn.Linear(8, 4, device="meta"), torch.randn(2, 8))


def test_a_layer_whose_forward_is_set_on_the_instance_is_kept() -> None:
    # the same output as nn.Linear's on the example input, another one on large inputs: a
    # rebuilt plain Linear would pass compact's check and compute something else
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    dead_rows(model[0], slice(0, 4))
    layer = model[0]
    plain = nn.Linear.forward

    def clipped(x: torch.Tensor) -> torch.Tensor:
        return plain(layer, x.clamp(-100, 100))

    layer.forward = clipped
    x = torch.randn(2, 8)
    with pytest.warns(UserWarning, match=r"0.weight \(its forward is set on the instance\)"):
        small = ls.compact(model, x)
    big = torch.full((1, 8), 1000.0)
    with torch.no_grad():
        torch.testing.assert_close(small(big), model(big))


def pruned_mlp() -> nn.Module:
    """A factory for the export command: the transformer MLP, half its hidden units pruned."""
    torch.manual_seed(0)
    model = Mlp()
    prune_rows(model, 0.5, bias=True, include=[r"fc1"])
    return model.eval()


def test_export_writes_the_compacted_model_as_pt_and_onnx(tmp_path: Path, capsys) -> None:
    import numpy as np
    import onnxruntime

    from lightning_sparsity.cli import main

    x = torch.randn(3, 5, 16)
    masked = pruned_mlp()
    with torch.no_grad():
        expected = masked(x)
    target = "tests.test_compact:pruned_mlp"
    assert main(["export", target, "--input-shape", "2,5,16", "--to", str(tmp_path / "m.pt")]) == 0
    printed = capsys.readouterr().out
    # dense: norm-free FLOPs 2·(16·64 + 64·16) per token, 10 tokens = 40,960; compacted half
    assert "compacted: FLOPs 20,480 of 40,960 dense (0.500; realizable 20,480)" in printed
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected)
    onnx_path = tmp_path / "m.onnx"
    assert main(["export", target, "--input-shape", "2,5,16", "--to", str(onnx_path)]) == 0
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": x.numpy()})  # batch 3: the batch axis is dynamic
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("to", "message"),
    [("m.txt", "--to must name a .onnx or .pt file, got"), ("m.pt", "cannot import")],
)
def test_export_errors_are_one_line(tmp_path: Path, capsys, to: str, message: str) -> None:
    from lightning_sparsity.cli import main

    target = "tests.test_compact:pruned_mlp" if to.endswith(".txt") else "nope.mod:factory"
    assert main(["export", target, "--input-shape", "2,16", "--to", str(tmp_path / to)]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1


def test_the_callback_writes_the_compacted_model_at_fit_end(tmp_path: Path) -> None:
    from pytorch_lightning.loggers import CSVLogger

    from tests.fits import Wide, quiet_trainer

    torch.manual_seed(0)
    pruner = ls.MagnitudePruner(structured=True, schedule=ls.schedules.Constant(0.5))
    callback = ls.SparsityCallback(pruner, export="compact", verbose=False)
    model = Wide()
    logger = CSVLogger(tmp_path, name="run")
    quiet_trainer(tmp_path, [callback], 1, logger=logger).fit(model)
    directory = callback.directory
    assert directory is not None
    small = torch.load(directory / "model_compact.pt", weights_only=False)
    x = torch.randn(2, 3, 16, 16)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=1e-5, atol=1e-5)
    # its dense FLOPs are the last point's realizable FLOPs (per example, batch 1 here)
    assert flop_counter_flops(small, x[:1]) == callback.history[-1].flops_realizable
    table = (directory / "model_compact.md").read_text()
    assert ".layer | " in table  # the compacted model's table: a Compacted layer's inner one
    assert "Not counted" not in table  # gathers and scatters are free ops, known as such
    with pytest.raises(ValueError, match=r"`export` must be one of \('compact',\), got 'onnx'"):
        ls.SparsityCallback(export="onnx")  # type: ignore[arg-type]


# ---- never a model that computes something else (cases from a review of compact) ----


class Scaled(nn.Linear):
    """A Linear subclass whose forward does more than its weights say."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


def dead_rows(layer: nn.Module, rows: slice | torch.Tensor) -> None:
    with torch.no_grad():
        layer.weight[rows] = 0.0
        if layer.bias is not None:
            layer.bias[rows] = 0.0


def own_forward() -> tuple[nn.Module, torch.Tensor]:
    model = nn.Sequential(Scaled(8, 8), nn.ReLU(), nn.Linear(8, 4))
    dead_rows(model[0], slice(0, 4))
    return model, torch.randn(3, 8)


def hooked() -> tuple[nn.Module, torch.Tensor]:
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    dead_rows(model[0], slice(0, 4))
    model[0].register_forward_hook(lambda m, i, o: o + 1.0)
    return model, torch.randn(3, 8)


def shared_norm() -> tuple[nn.Module, torch.Tensor]:
    class Two(nn.Module):  # one BatchNorm after two producers with different dead channels
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
            self.norm = nn.BatchNorm2d(8)
            self.c, self.d = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c(self.norm(self.a(x))) + self.d(self.norm(self.b(x)))

    model = Two()
    dead_rows(model.a, slice(0, 4))
    dead_rows(model.b, slice(0, 2))
    return model, torch.randn(2, 3, 4, 4)


def reads_only_dead() -> tuple[nn.Module, torch.Tensor]:
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))
    dead_rows(model[0], slice(0, 4))
    with torch.no_grad():
        model[2].weight[:, 4:] = 0.0  # its live weights read only the dead channels
    return model, torch.randn(2, 3, 5, 5)


def unbatched() -> tuple[nn.Module, torch.Tensor]:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))
    dead_rows(model[0], slice(0, 4))
    return model, torch.randn(3, 6, 6)  # (C, H, W)


def transformer_layer() -> tuple[nn.Module, torch.Tensor]:
    model = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    dead_rows(model.linear1, slice(0, 16))
    return model, torch.randn(2, 5, 16)


@pytest.mark.parametrize(
    "make", [own_forward, hooked, shared_norm, reads_only_dead, unbatched, transformer_layer]
)
def test_compact_reproduces_the_masked_model_or_keeps_the_layer(make) -> None:
    torch.manual_seed(0)
    model, x = make()
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # layers kept dense are named (tested elsewhere)
        small = ls.compact(model, x)
    other = torch.randn_like(x)  # no data-dependent branch here: any input agrees
    with torch.no_grad():
        for inputs in (x, other):
            torch.testing.assert_close(small(inputs), model(inputs), rtol=1e-5, atol=1e-6)


def test_a_module_held_under_two_names_is_compacted_under_both() -> None:
    class Alias(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)
            self.head = self.fc  # the same module, another name: forward calls this one

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(x)

    torch.manual_seed(0)
    model = Alias()
    dead_rows(model.fc, slice(0, 4))
    check(model, torch.randn(3, 8))  # FlopCounterMode == realizable (was 2x: head kept)


@dataclass
class Out:
    y: torch.Tensor


class Boxed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> Out:
        return Out(self.b(torch.relu(self.a(x))))


def boxed_model() -> nn.Module:
    """A model whose output compact cannot compare (a factory for the speed command too)."""
    model = Boxed()
    dead_rows(model.a, slice(0, 4))
    return model


def test_an_output_that_cannot_be_compared_is_refused_with_its_reason() -> None:
    with pytest.raises(ValueError, match=r"its output \(Out\) cannot be compared"):
        ls.compact(boxed_model(), torch.randn(3, 8))


# ---- constants folded into the consumer's bias (issue #16) ----


class ConstantInto(nn.Module):
    """A conv with live biases, a trained BatchNorm and an activation, then a reader.

    A dead row of ``first`` outputs its bias, the BatchNorm and the activation map it to
    another constant: ``after`` reads it as one value at every position.
    """

    def __init__(self, reader: str, act: str) -> None:
        super().__init__()
        self.reader = reader
        self.first = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.act = {"gelu": nn.GELU(), "sigmoid": nn.Sigmoid()}[act]
        self.pool = nn.AvgPool2d(3, 1, padding=1) if reader == "avgpool-padded" else nn.Identity()
        self.after = {
            "linear": nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5)),
            "conv1x1": nn.Conv2d(8, 5, 1, bias=False),
            "conv3x3-valid": nn.Conv2d(8, 5, 3),
            "conv3x3-reflect": nn.Conv2d(8, 5, 3, padding=1, padding_mode="reflect"),
            "conv3x3-zeros": nn.Conv2d(8, 5, 3, padding=1),
            "avgpool-padded": nn.Conv2d(8, 5, 1),
        }[reader]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after(self.pool(self.act(self.norm(self.first(x)))))


@pytest.mark.parametrize("act", ["gelu", "sigmoid"])
@pytest.mark.parametrize(
    ("reader", "folds"),
    [
        ("linear", True),  # every feature reads the constant: weight · c joins the bias
        ("conv1x1", True),  # no bias before: compact gives it one
        ("conv3x3-valid", True),  # no padding: every tap of every output reads c
        ("conv3x3-reflect", True),  # the padding copies c
        ("conv3x3-zeros", False),  # the border reads the padding's zeros, not c
        ("avgpool-padded", False),  # the border averages zeros in: not one constant
    ],
)
def test_a_dead_rows_constant_folds_where_the_reader_takes_it_exactly(
    reader: str, act: str, folds: bool
) -> None:
    from tests.test_realizable import dead_inputs_are_dead

    torch.manual_seed(0)
    model = ConstantInto(reader, act)
    trained_norms(model)
    with torch.no_grad():
        model.first.weight[::2] = 0.0  # rows 0, 2, 4, 6 dead; their biases stay
    model.eval()
    x = torch.randn(2, 3, 6, 6)
    # the count by brute force: inputs that are one constant over random batches (and zero
    # where the reader pads zeros), all of them and only them
    dead = dead_inputs_are_dead(model, x, complete=True)
    name = "after.2.weight" if reader == "linear" else "after.weight"
    assert dead == ({name: 4 * (4 if reader == "linear" else 1)} if folds else {})
    report = ls.measure(model, x, per="batch")
    # the report names what stays and why: 4 dead channels read as a value it cannot drop
    assert report.constants_kept == ({} if folds else {name: 4})
    assert ("Kept: after.weight reads 4 dead channels" in report.to_markdown()) is not folds
    if not folds:  # nothing compacts: the model is its own compaction
        # first: 2 FLOPs · 2 examples · 6·6 positions · 8 rows · 3·3·3 taps = 31104, half of
        # its rows gone; the reader keeps every input
        assert report.total.flops - report.total.flops_realizable == 31104 // 2
        return
    _, small = check(model, x)
    layer = small.after[2] if reader == "linear" else small.after
    assert isinstance(layer, Compacted)
    assert layer.live[1] == (16 if reader == "linear" else 4)
    assert layer.layer.bias is not None  # the constants' share, folded


def test_a_transformer_mlp_with_live_biases_folds_them() -> None:
    # fc1's pruned hidden units keep their biases: GELU(b) reaches fc2 as a constant, folded
    torch.manual_seed(0)
    model = Mlp()
    prune_rows(model, 0.5, include=[r"fc1"])
    assert model.fc1.bias.ne(0).all()
    _, small = check(model, torch.randn(4, 5, 16))
    assert small.fc2.extra_repr() == "rows 16/16, inputs 32/64"
    assert small.fc1.layer.out_features == small.fc2.layer.in_features == 32


def test_a_residual_stream_narrows_where_every_branch_is_dead() -> None:
    # channels pruned across the residual stream as Torch-Pruning's coupled groups do: the
    # stem's and every block's last conv (and shortcut) lose the same rows, so each block's
    # input, the sum, and the head lose them; trained statistics with a zero shift there
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        Block(16, 16, 1), Block(16, 16, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )  # fmt: skip
    trained_norms(model)
    stream = torch.tensor([0, 3, 5, 6, 9, 12])
    with torch.no_grad():
        for conv, norm in [(model[0], model[1]), (model[3].conv2, model[3].bn2),
                           (model[4].conv2, model[4].bn2)]:  # fmt: skip
            conv.weight[stream] = 0.0
            norm.bias[stream] = 0.0  # so a dead channel stays 0 through the norm ...
            norm.running_mean[stream] = 0.0  # ... bias − weight·mean/√(var+eps) = 0
    report, small = check(model, torch.randn(2, 3, 8, 8))
    for i in (3, 4):
        assert small[i].conv1.layer.in_channels == 10  # reads the 10 live stream channels
        assert small[i].conv2.layer.out_channels == 10
        assert small[i].bn2.num_features == 10
    assert small[1].num_features == 10
    assert small[7].layer.in_features == 10
    assert report.forms["7.weight"] == "rows 10/10, inputs 10/16"


@pytest.mark.parametrize("shift", [0.0, 0.3])
def test_a_depthwise_row_goes_with_the_channel_it_reads_only_if_that_is_zero(shift: float) -> None:
    # expand's rows 0, 2, ... dead; bn1 maps them to `shift`. The depthwise conv pads zeros:
    # a row reading 0 outputs 0 (no bias) and leaves with the channel; a row reading 0.3
    # computes 0.3·Σw inside and less at the border, so it stays
    torch.manual_seed(0)
    model = Depthwise()
    trained_norms(model)
    with torch.no_grad():
        model.expand.weight[::2] = 0.0
        model.bn1.bias[::2] = shift
        model.bn1.running_mean[::2] = 0.0
    _, small = check(model, torch.randn(2, 8, 8, 8))
    rows = small.depthwise.live[0] if isinstance(small.depthwise, Compacted) else 32
    assert rows == (16 if shift == 0.0 else 32)


class Inception(nn.Module):
    """Two branches concatenated, a BatchNorm over the concatenation, then a reader."""

    def __init__(self, reader: str) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(3, 6, 3, padding=1)
        self.norm = nn.BatchNorm2d(14)
        self.reader = nn.Conv2d(14, 5, 1) if reader == "conv1x1" else nn.Conv2d(14, 5, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reader(F.gelu(self.norm(torch.cat([self.a(x), self.b(x)], 1))))


@pytest.mark.parametrize("reader", ["conv1x1", "conv3x3-zeros"])
def test_a_concatenation_carries_each_branchs_dead_channels_to_its_range(reader: str) -> None:
    # a's rows 1, 3, 5 and b's rows 0, 4 dead (live biases): the reader's inputs 1, 3, 5 and
    # 8, 12. A 1×1 reader folds their constants; a zero-padded 3×3 takes only those the norm
    # maps to 0 (bias and mean zeroed there: a's 3 and b's 4, inputs 3 and 12)
    torch.manual_seed(0)
    model = Inception(reader)
    trained_norms(model)
    with torch.no_grad():
        model.a.weight[[1, 3, 5]] = 0.0
        model.b.weight[[0, 4]] = 0.0
        for channel, producer, row in [(3, model.a, 3), (12, model.b, 4)]:
            producer.bias[row] = 0.0
            model.norm.bias[channel] = 0.0
            model.norm.running_mean[channel] = 0.0
    model.eval()
    x = torch.randn(2, 3, 6, 6)
    from tests.test_realizable import dead_inputs_are_dead

    expected = 5 if reader == "conv1x1" else 2
    assert dead_inputs_are_dead(model, x, complete=True) == {"reader.weight": expected}
    report, small = check(model, x)
    assert small.reader.live[1] == 14 - expected
    # each branch's dead rows go back in place for the concatenation (a scatter): the norm
    # keeps its 14 channels
    assert small.norm.num_features == 14
    assert report.constants_kept == ({} if reader == "conv1x1" else {"reader.weight": 3})


# ---- 2:4 Linears on torch's semi-structured kernels (CUDA only) ----


def test_semi_structured_needs_cuda_and_says_so() -> None:
    model = Mlp()
    prune_rows(model, 0.5, include=[r"fc1"])
    with pytest.raises(ValueError, match=r"need CUDA; the model's parameters are on cpu"):
        ls.compact(model, torch.randn(2, 16), semi_structured=True)


def test_semi_structured_names_why_each_linear_stays() -> None:
    # the bookkeeping, on CPU: every Linear named, none swapped (the kernels are CUDA only)
    from lightning_sparsity.compact import _to_semi_structured

    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    _to_semi_structured(model)
    why = "2:4 kernels run on CUDA only"
    assert model.semi_structured == {"0": why, "2": why}
    assert all(type(m) is nn.Linear for m in (model[0], model[2]))


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0),
    reason="the 2:4 kernels (to_sparse_semi_structured) need a CUDA GPU of compute"
    " capability 8.0+ (Ampere or later); none here",
)
def test_semi_structured_runs_two_four_linears_on_the_kernels() -> None:
    from lightning_sparsity.patterns import SemiStructuredLinear
    from tests.test_speed import two_of_four

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 128))
    two_of_four(model[0].weight)  # 2:4; model[2] stays dense
    model = model.half().cuda().eval()
    x = torch.randn(64, 512, device="cuda", dtype=torch.float16)
    small = ls.compact(model, x, semi_structured=True)
    assert isinstance(small[0], SemiStructuredLinear)
    assert small.semi_structured["0"] == "2:4"
    assert small.semi_structured["2"].startswith("not 2:4")
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=1e-2, atol=1e-2)
