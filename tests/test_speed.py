"""ls.speed: measured dense vs sparse-kernel forward times beside the FLOP ratios.

Timings depend on the machine, so nothing here asserts which kernel is faster; only what is
guaranteed by construction: a sparse kernel is kept exactly where it measured faster, the
model is left as found, and the FLOP ratios are the closed forms.
"""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lightning_sparsity as ls
from lightning_sparsity.cli import CliError
from lightning_sparsity.cli.commands import speed_command
from lightning_sparsity.patterns import SemiStructuredLinear
from lightning_sparsity.speed import (
    CompactSpeed,
    LayerSpeed,
    SpeedReport,
    _Csr,
    format_speed,
    speed,
)
from tests.test_compact import Mlp, dead_rows, flop_counter_flops

FAST = {"repeats": 3, "warmup": 1}


def zero_fraction(weight: torch.Tensor, fraction: float, seed: int = 0) -> int:
    """Zero ``round(fraction * numel)`` entries at random places; return the zeros."""
    g = torch.Generator().manual_seed(seed)
    zeros = round(fraction * weight.numel())
    with torch.no_grad():
        weight.view(-1)[torch.randperm(weight.numel(), generator=g)[:zeros]] = 0
    return zeros


class Big(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4096, 4096)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class Small(nn.Module):
    """fc1 64→128, ReLU, fc2 128→10 (fc2 used twice on halves of its input's batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 128)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(torch.relu(self.fc1(x)))
        return torch.cat([self.fc2(h[:4]), self.fc2(h[4:])])


def small_model() -> nn.Module:
    torch.manual_seed(0)
    model = Small()
    zero_fraction(model.fc1.weight, 0.9)
    zero_fraction(model.fc2.weight, 0.5, seed=1)
    return model


def meta_model() -> nn.Module:
    """A factory that builds on the meta device (shapes, no values)."""
    with torch.device("meta"):
        return Small()


def conv_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3))
    zero_fraction(model[0].weight, 0.9)
    return model


def test_large_sparse_linear_times_both_ways_beside_the_flop_ratio() -> None:
    torch.manual_seed(0)
    model = Big()
    zeros = zero_fraction(model.fc.weight, 0.9)
    x = torch.randn(64, 4096)
    report = speed(model, x, **FAST)
    (row,) = report.layers
    assert (row.name, row.type, row.tried) == ("fc", "Linear", "csr")
    assert row.dense_ms is not None
    assert row.dense_ms > 0
    assert row.sparse_ms is not None
    assert row.sparse_ms > 0
    assert row.speedup == row.dense_ms / row.sparse_ms
    # sparse FLOPs = 2·64·4096·nnz, dense 2·64·4096·4096: the ratio is nnz / numel
    numel = 4096 * 4096
    assert row.flops_ratio == pytest.approx((numel - zeros) / numel, rel=1e-12)
    assert row.flops_ratio == pytest.approx(0.1, abs=1e-7)
    assert row.realizable_ratio == 1.0  # unstructured zeros: no dense kernel skips them
    assert report.flops_ratio == row.flops_ratio  # bias adds are not FLOPs by default
    # kept exactly where it measured faster
    assert (row.kernel == "csr") == (row.sparse_ms < row.dense_ms)
    assert report.accelerated == (["fc"] if row.kernel == "csr" else [])
    assert report.dense_ms > 0
    assert report.sparse_ms > 0
    assert report.speedup == report.dense_ms / report.sparse_ms
    assert (report.sparse_ms == report.dense_ms) == (not report.accelerated)
    table = format_speed(report)
    assert "| fc | Linear |" in table
    assert "0.100" in table
    assert report.summary[1:] in table  # its first letter capitalized in the table


def snapshot(model: nn.Module) -> dict[str, object]:
    return {
        "params": [(name, p) for name, p in model.named_parameters()],
        "values": {k: v.clone() for k, v in model.state_dict().items()},
        "flags": [(m, m.training) for m in model.modules()],
        "hooks": [(m, dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in model.modules()],
        "attrs": [(m, dict(m.__dict__)) for m in model.modules()],
        "grad": [(name, p.requires_grad) for name, p in model.named_parameters()],
    }


@pytest.mark.parametrize("per_layer", [True, False])
def test_model_is_left_as_found(per_layer: bool) -> None:
    model = small_model().train()
    model.fc1.register_forward_hook(lambda m, i, o: None)
    model.fc2.register_forward_pre_hook(lambda m, a: None)

    def custom_forward(x: torch.Tensor) -> torch.Tensor:  # a user's own instance forward
        return F.linear(x, model.fc1.weight, model.fc1.bias)

    model.fc1.forward = custom_forward
    model.eval()
    x = torch.randn(8, 64)
    with torch.no_grad():
        before_out = model(x)
    model.train()
    before = snapshot(model)

    report = speed(model, x, per_layer=per_layer, **FAST)

    after = snapshot(model)
    assert [n for n, _ in after["params"]] == [n for n, _ in before["params"]]
    assert all(a is b for (_, a), (_, b) in zip(after["params"], before["params"], strict=True))
    for key, value in before["values"].items():
        assert torch.equal(after["values"][key], value), key
    assert after["flags"] == before["flags"]
    assert after["hooks"] == before["hooks"]
    assert after["attrs"] == before["attrs"]  # no leftover forward attribute either
    assert after["grad"] == before["grad"]
    assert model.fc1.forward is custom_forward
    assert "forward" not in model.fc2.__dict__
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), before_out)
    # fc2's kernel was swapped in and out (fc1's forward is the user's own: left alone)
    assert [r.name for r in report.layers] == ["fc1", "fc2"]
    assert report.layers[0].tried is None
    assert "its forward is not nn.Linear's" in report.layers[0].note
    assert report.layers[1].tried == "csr"
    assert report.layers[1].calls == 2
    assert "called 2× per forward" in report.layers[1].note


def test_dense_model_reports_nothing_accelerated() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))
    report = speed(model, torch.randn(16, 32), **FAST)
    assert report.accelerated == []
    assert report.speedup == 1.0
    assert report.sparse_ms == report.dense_ms
    assert [(r.kernel, r.tried, r.note) for r in report.layers] == [
        ("dense", None, "no zero weights"),
        ("dense", None, "no zero weights"),
    ]
    assert report.flops_ratio == 1.0
    assert report.summary.startswith(
        "no layer runs faster with a sparse kernel on cpu: the measured speed-up is 1.00×"
    )
    assert "No layer runs faster with a sparse kernel on cpu" in format_speed(report)


def test_conv_only_model_says_convolutions_run_dense() -> None:
    model = conv_model()
    report = speed(model, torch.randn(2, 3, 12, 12), **FAST)
    assert report.accelerated == []
    assert [(r.name, r.type, r.kernel, r.tried) for r in report.layers] == [
        ("0", "Conv2d", "dense", None),
        ("2", "Conv2d", "dense", None),
    ]
    assert all("no torch sparse kernel runs it" in r.note for r in report.layers)
    assert all(r.dense_ms is not None and r.sparse_ms is None for r in report.layers)
    assert "Convolutions run dense: no torch sparse kernel runs them" in " ".join(report.notes)
    # 90% of conv 0's weights are zero: counted, but nothing runs them sparse
    assert report.layers[0].flops_ratio == pytest.approx(0.1, abs=1e-3)
    assert "measured speed-up is 1.00×" in format_speed(report)


def test_half_precision_linear_on_cpu_says_why_csr_is_not_tried() -> None:
    model = small_model().to(torch.bfloat16)
    report = speed(model, torch.randn(8, 64, dtype=torch.bfloat16), **FAST)
    assert report.accelerated == []
    assert "CSR on cpu takes float32/float64, the weight is torch.bfloat16" in report.layers[1].note


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(8, 64), (2, 3, 64)])
def test_csr_kernel_computes_the_linear_layer(bias: bool, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(64, 32, bias=bias)
    zero_fraction(layer.weight, 0.7)
    x = torch.randn(shape)
    kernel = _Csr(layer.weight, layer.bias)
    with torch.inference_mode():
        out = kernel(x)
        expected = F.linear(x, layer.weight, layer.bias)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"repeats": 0}, ValueError, r"`repeats` must be an int >= 1, got 0"),
        ({"warmup": -1, "repeats": 2.5}, ValueError, r"`repeats`.*2\.5.*`warmup`.*-1"),
        ({"per_layer": "yes"}, TypeError, r"`per_layer` must be a bool, got 'yes'"),
        ({"compact": 1}, TypeError, r"`compact` must be a bool, got 1"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        speed(small_model(), torch.randn(8, 64), **kwargs)  # type: ignore[arg-type]


def test_not_a_module_and_meta_device() -> None:
    with pytest.raises(TypeError, match=r"`model` must be a torch.nn.Module, got str"):
        speed("model", torch.randn(8, 64))  # type: ignore[arg-type]
    with torch.device("meta"):
        model = nn.Linear(64, 8)
    with pytest.raises(ValueError, match="needs real weights"):
        speed(model, torch.randn(8, 64, device="meta"))


def test_an_empty_batch_is_refused_not_timed() -> None:
    # zero examples run zero FLOPs: the report said sparse/dense 1.000 for fc1 90% zero
    model = small_model()
    with pytest.raises(ValueError, match=r"empty batch: its first tensor has shape \(0, 64\)"):
        speed(model, torch.zeros(0, 64), **FAST)
    # a real batch: fc1 keeps 8,192 - 7,373 = 819 of its weights, fc2 640 of 1,280 (biases
    # are not counted), every weight used once per example: 1,459 / 9,472 = 0.154
    report = speed(model, torch.zeros(8, 64), **FAST)
    kept = 2 * (8_192 - round(0.9 * 8_192)) + 2 * (1_280 - round(0.5 * 1_280))
    assert report.flops_ratio == pytest.approx(kept / (2 * 8_192 + 2 * 1_280))


@pytest.mark.parametrize("compact", [False, True])
def test_report_data_round_trip(compact: bool) -> None:
    report = speed(small_model(), torch.randn(8, 64), compact=compact, **FAST)
    data = report.to_dict()
    assert data["speedup"] == report.speedup
    assert data["accelerated"] == report.accelerated
    assert [row["name"] for row in data["layers"]] == ["fc1", "fc2"]
    rebuilt = SpeedReport(
        **{
            **{k: v for k, v in data.items() if k in SpeedReport.__dataclass_fields__},
            "layers": tuple(
                LayerSpeed(**{k: v for k, v in row.items() if k != "speedup"})
                for row in data["layers"]
            ),
            "notes": tuple(data["notes"]),
            "compact": None
            if data["compact"] is None
            else CompactSpeed(**{k: data["compact"][k] for k in CompactSpeed.__dataclass_fields__}),
        }
    )
    assert rebuilt == report
    assert (data["compact"] is None) == (not compact)


def test_speed_command_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert speed_command("tests.test_speed:small_model", (8, 64), 2) == 0
    out = capsys.readouterr().out
    assert out.startswith("| layer | type | kernel | tried | dense ms | sparse ms |")
    assert "| fc1 | Linear |" in out
    assert "medians of 2 runs after 3 warm-up" in out


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("tests.test_speed:nothing", (8, 64), 2), {}, "cannot import"),
        (("tests.test_speed:small_model", (8, 63), 2), {}, "forward failed on the example input"),
        (("tests.test_speed:small_model", (8, 64), 2), {"dtype": "int8"}, "--dtype must be"),
    ],
)
def test_speed_command_errors(
    args: tuple[str, tuple[int, ...], int], kwargs: dict[str, str], match: str
) -> None:
    with pytest.raises(CliError, match=match):
        speed_command(*args, **kwargs)


# ------------------------------------------------------------- the compacted model


def half_mlp() -> nn.Module:
    """The MLP with 48 of fc1's 64 hidden units dead (a factory for the command too)."""
    torch.manual_seed(0)
    model = Mlp()
    dead_rows(model.fc1, slice(0, 48))
    return model


def convnet() -> nn.Module:
    """Conv 3→16 (10 rows dead), BatchNorm at its initial statistics, ReLU, conv 16→8."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 3)
    )
    dead_rows(model[0], slice(0, 10))
    return model


@pytest.mark.parametrize(
    ("build", "shape", "dense", "compacted"),
    [
        # 10 tokens of 2·(16·64 + 64·16) = 40,960 FLOPs; 16 of 64 hidden units live: a quarter
        (half_mlp, (2, 5, 16), 40_960, 10_240),
        # 2 examples: conv0 2·3·9·16 per position · 100 positions = 86,400 and conv3
        # 2·16·9·8 · 64 = 147,456, per example 233,856; 6 of conv0's 16 rows live and conv3
        # reads only those (a dead channel is 0 after BatchNorm at its initial statistics):
        # 6/16 of each
        (convnet, (2, 3, 10, 10), 2 * 233_856, 2 * 233_856 * 6 // 16),
    ],
)
def test_compact_times_the_compacted_model_and_counts_its_flops_as_flop_counter_mode(
    build: object, shape: tuple[int, ...], dense: int, compacted: int
) -> None:
    model = build()  # type: ignore[operator]
    x = torch.randn(shape)
    report = speed(model, x, compact=True, **FAST)
    small = ls.compact(model, x)  # built again: what the report's FLOPs must describe
    result = report.compact
    assert result is not None
    assert result.flops_compact == flop_counter_flops(small.eval(), x)
    assert result.flops_dense == flop_counter_flops(model.eval(), x)
    assert (result.flops_dense, result.flops_compact) == (dense, compacted)
    assert result.flops_ratio == dense / compacted
    assert result.eager_dense_ms == report.dense_ms  # one race: the same dense forward
    assert result.eager_compact_ms > 0
    assert result.eager_speedup == result.eager_dense_ms / result.eager_compact_ms
    # onnxruntime ran both, checked against torch first: equal within the tolerance
    assert result.ort_note == ""
    assert result.ort_dense_gap is not None
    assert result.ort_dense_gap <= 1
    assert result.ort_compact_gap is not None
    assert result.ort_compact_gap <= 1
    assert result.ort_dense_ms is not None
    assert result.ort_compact_ms is not None
    assert result.ort_speedup == result.ort_dense_ms / result.ort_compact_ms
    table = report.to_markdown()
    assert f"| compacted | {result.flops_compact:,} | {result.flops_ratio:.2f}× |" in table
    assert "| onnxruntime ms | speed-up (onnxruntime) |" in table
    assert "their outputs equal torch's on the example input" in table
    assert f"compacted: dense FLOPs {result.flops_ratio:.2f}× fewer" in report.summary
    assert f"{result.ort_speedup:.2f}× in onnxruntime" in report.summary
    data = report.to_dict()["compact"]
    assert data["flops_ratio"] == result.flops_ratio
    assert data["ort_speedup"] == result.ort_speedup


class ExportsOtherwise(nn.Module):
    """Adds 1 to its output while torch.onnx exports it: its ONNX computes something else."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc2(torch.relu(self.fc1(x)))
        return y + 1 if torch.onnx.is_in_onnx_export() else y


def test_onnxruntime_output_that_differs_from_torch_is_reported_not_timed() -> None:
    torch.manual_seed(0)
    model = ExportsOtherwise()
    dead_rows(model.fc1, slice(0, 16))
    report = speed(model, torch.randn(4, 16), compact=True, **FAST)
    result = report.compact
    assert result is not None
    assert result.eager_compact_ms > 0  # torch's compacted model is right: timed
    assert result.ort_dense_ms is None
    assert result.ort_compact_ms is None
    assert result.ort_speedup is None
    # off by 1 where the outputs are about 0.3: far beyond the tolerance
    assert result.ort_dense_gap is not None
    assert result.ort_dense_gap > 1000
    assert result.ort_compact_gap is not None
    assert result.ort_compact_gap > 1000
    assert result.ort_note.startswith(
        "onnxruntime's output of the dense model differs from torch's by"
    )
    assert "onnxruntime's output of the compacted model differs" in result.ort_note
    table = report.to_markdown()
    assert "onnxruntime ms" not in table
    assert f"onnxruntime not timed: {result.ort_note}." in table.splitlines()
    assert "in onnxruntime" not in report.summary


class Keywords(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 8)

    def forward(self, *, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


@pytest.mark.parametrize(
    ("case", "why", "row"),
    [
        (
            "not installed",
            "onnxruntime is not installed (pip install 'lightning-sparsity[onnx]')",
            "| compacted | 2,048 | 4.00× |",  # 2 tokens of 4,096 FLOPs, a quarter kept
        ),
        (
            "keywords",
            "it is fed a Tensor or a tuple of Tensors (positional inputs), the example input is"
            " a dict",
            "| compacted | 256 | 2.00× |",  # 2 examples of 2·16·8 = 256 FLOPs, half kept
        ),
    ],
)
def test_without_onnxruntime_its_columns_are_absent_and_one_line_says_why(
    case: str, why: str, row: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if case == "not installed":  # as if it were: its import fails
        monkeypatch.setitem(sys.modules, "onnxruntime", None)
        model: nn.Module = half_mlp()
        example: object = torch.randn(2, 16)
    else:
        model = Keywords()
        dead_rows(model.fc, slice(0, 4))
        example = {"x": torch.randn(2, 16)}
    report = speed(model, example, compact=True, **FAST)
    assert report.compact is not None
    assert report.compact.ort_note == why
    assert (report.compact.ort_dense_ms, report.compact.ort_dense_gap) == (None, None)
    lines = report.to_markdown().splitlines()
    assert lines[-1] == f"onnxruntime not timed: {why}."
    assert lines[-3].startswith(row)
    assert lines[-3].count("|") == 6  # model, FLOPs, ratio, eager ms, speed-up: no more
    assert "onnxruntime" not in "\n".join(lines[:-1])


def test_compact_leaves_the_model_as_found() -> None:
    model = convnet().train()
    x = torch.randn(2, 3, 10, 10)
    before = snapshot(model)
    speed(model, x, compact=True, **FAST)
    after = snapshot(model)
    assert all(a is b for (_, a), (_, b) in zip(after["params"], before["params"], strict=True))
    for key, value in before["values"].items():
        assert torch.equal(after["values"][key], value), key  # BatchNorm statistics too
    assert after["flags"] == before["flags"]
    assert after["attrs"] == before["attrs"]


def test_the_speed_subcommand_with_compact(capsys: pytest.CaptureFixture[str]) -> None:
    from lightning_sparsity.cli import main

    args = ["speed", "tests.test_speed:half_mlp", "--input-shape", "2,5,16", "--repeats", "2"]
    assert main([*args, "--compact"]) == 0
    out = capsys.readouterr().out
    # 10 tokens: dense 40,960 FLOPs, compacted 10,240 (see the closed forms above)
    assert "| masked (as is) | 40,960 | 1.00× |" in out
    assert "| compacted | 10,240 | 4.00× |" in out
    assert "their outputs equal torch's on the example input" in out


# ------------------------------------------------------------------------- CUDA: 2:4

needs_2_4_gpu = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0),
    reason="the 2:4 kernels (to_sparse_semi_structured) need a CUDA GPU of compute"
    " capability 8.0+ (Ampere or later); none here",
)


def two_of_four(weight: torch.Tensor) -> None:
    """Keep the 2 largest |w| of every 4 consecutive weights along each row (brute force)."""
    with torch.no_grad():
        groups = weight.view(weight.shape[0], -1, 4)
        for r in range(groups.shape[0]):
            for g in range(groups.shape[1]):
                smallest = groups[r, g].abs().argsort()[:2]
                groups[r, g, smallest] = 0


@needs_2_4_gpu
def test_2_4_kernel_on_cuda() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 128))
    two_of_four(model[0].weight)
    model = model.half().cuda()
    x = torch.randn(64, 512, device="cuda", dtype=torch.float16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kernel = SemiStructuredLinear(model[0].weight, model[0].bias)
    with torch.inference_mode():
        torch.testing.assert_close(
            kernel(x), F.linear(x, model[0].weight, model[0].bias), rtol=1e-2, atol=1e-2
        )
    report = speed(model, x, **FAST)
    first, second = report.layers
    assert first.realizable_ratio == 0.5  # 2:4: half the dense FLOPs
    assert first.tried is not None
    assert "2:4 failed" not in first.note
    assert "2:4 rejected" not in first.note
    assert (first.kernel != "dense") == (first.sparse_ms < first.dense_ms)
    assert second.note == "no zero weights"
    assert report.device.startswith("cuda")
    assert report.threads is None
    for key, value in before.items():
        assert torch.equal(model.state_dict()[key], value), key


@needs_2_4_gpu
def test_float32_on_cuda_says_2_4_takes_half_precision() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 256)).cuda()
    two_of_four(model[0].weight)
    report = speed(model, torch.randn(64, 512, device="cuda"), **FAST)
    assert "2:4 kernels take float16/bfloat16 here, the weight is torch.float32" in (
        report.layers[0].note
    )


@pytest.mark.parametrize(
    ("args", "match"),
    [
        # a factory that builds on meta: no values to move to the device or to time
        (["tests.test_speed:meta_model", "--input-shape", "8,64"], "needs real weights"),
        (["tests.test_speed:small_model", "--input-shape", "8,64", "--repeats", "0"], "`repeats`"),
        (["tests.test_speed:small_model", "--input-shape", "8,64", "--device", "gpu"], "gpu"),
        # a device torch knows, without sparse kernels here: refused before moving the model
        (
            ["tests.test_speed:small_model", "--input-shape", "8,64", "--device", "mps"],
            "--device must be cpu or cuda (cuda:N), got 'mps'",
        ),
        # --checkpoint and --compact
        (
            ["tests.test_speed:half_mlp", "--input-shape", "2,16", "--checkpoint", "m.ckpt"],
            "--checkpoint needs a LightningModule class, 'tests.test_speed:half_mlp' is not one",
        ),
        (
            [
                *("lightning_sparsity.demo:DigitsCNN", "--input-shape", "1,1,8,8"),
                *("--checkpoint", "missing.ckpt", "--compact"),
            ],
            "checkpoint 'missing.ckpt' does not exist",
        ),
        (
            ["tests.test_speed:half_mlp", "--input-shape", "2,16", "--compact", "--repeats", "0"],
            "`repeats` must be an int >= 1, got 0",
        ),
        (
            ["tests.test_speed:half_mlp", "--input-shape", "2,15", "--compact"],
            "forward failed on the example input",
        ),
        (
            ["tests.test_compact:boxed_model", "--input-shape", "3,8", "--compact"],
            "compact: the compacted model does not reproduce the masked model on the example"
            " input (its output (Out) cannot be compared)",
        ),
    ],
)
def test_speed_subcommand_errors_are_one_line(
    args: list[str], match: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from lightning_sparsity.cli import main

    assert main(["speed", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lightning-sparsity: error:")
    assert len(err.splitlines()) == 1, err
    assert match in err


def test_the_speed_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    from lightning_sparsity.cli import main

    assert (
        main(["speed", "tests.test_speed:small_model", "--input-shape", "8,64", "--repeats", "2"])
        == 0
    )
    out = capsys.readouterr().out
    assert "dense" in out
    assert "sparse/dense FLOPs" in out or "FLOP" in out


@pytest.mark.filterwarnings("ignore:.*does not have many workers")
def test_the_callback_logs_the_measured_speedup_at_fit_end(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pytorch_lightning.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import lightning_sparsity as ls
    from tests.fits import Wide, quiet_trainer

    schedule = ls.schedules.Constant(0.9, start_epoch=0)
    callback = ls.SparsityCallback(ls.MagnitudePruner(schedule=schedule), speed=True)
    logger = TensorBoardLogger(tmp_path, name="tb")
    quiet_trainer(tmp_path, [callback], 1, logger=logger).fit(Wide())
    acc = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0})
    acc.Reload()
    speedup = acc.Scalars("sparsity/speedup_measured")[-1].value
    assert speedup > 0
    table = (tmp_path / "tb" / "version_0" / "sparsity_speed.md").read_text()
    assert "fc1" in table
