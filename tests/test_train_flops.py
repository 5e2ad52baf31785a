"""Training FLOPs of one step (``SparsityMeter.measure_training``).

Dense: equal to ``FlopCounterMode`` run around a real forward + ``backward()`` in training
mode, where FlopCounterMode has formulas; where it has none (the CPU flash attention, the
CPU LSTM layer) against its own attention formulas, or an unrolled model it does count.
Sparse: equal to brute-force counts of each product's nonzero weight operands (and of the
trained entries' weight-gradient products), written here.
"""

from __future__ import annotations

import copy
import gc
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from torch.utils.flop_counter import (
    FlopCounterMode,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

import lightning_sparsity as ls
from lightning_sparsity.counting import SparsityMeter, TrainingCost
from tests.brute import conv_products, matmul_products, nz, recurrent_products, sparsify_


def step_flops(
    model: nn.Module, x: Any, loss: Callable[[Any], Tensor] | None = None
) -> tuple[int, dict[str, int]]:
    """FlopCounterMode around one real forward + backward (train mode); grads cleared."""
    model.train()
    with FlopCounterMode(display=False) as counter:
        out = model(*x) if isinstance(x, tuple) else model(x)
        value = loss(out) if loss is not None else _sum(out)
        value.backward()
    model.zero_grad(set_to_none=True)
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    return counter.get_total_flops(), counts


def _sum(out: Any) -> Tensor:
    leaves = [t for t in torch.utils._pytree.tree_flatten(out)[0] if isinstance(t, Tensor)]
    return sum((t.sum() for t in leaves if t.requires_grad), torch.zeros(()))


def cost(model: nn.Module, x: Any, **kwargs: Any) -> TrainingCost:
    meter = SparsityMeter(model, x, per="batch", **kwargs)
    return meter.measure_training()


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(8, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))


class Block(nn.Module):
    """A pre-norm transformer block: attention (by hand or SDPA) and an MLP."""

    def __init__(self, sdpa: bool, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.sdpa, self.heads = sdpa, heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        b, length, dim = x.shape
        q, k, v = (
            self.qkv(self.norm1(x))
            .reshape(b, length, 3, self.heads, dim // self.heads)
            .permute(2, 0, 3, 1, 4)
        )
        if self.sdpa:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            scores = q @ k.transpose(-2, -1) / (dim // self.heads) ** 0.5
            a = scores.softmax(-1) @ v
        x = x + self.proj(a.transpose(1, 2).reshape(b, length, dim))
        return x + self.mlp(self.norm2(x))


class Frozen(nn.Module):
    """A trainable conv, a frozen one (its backward: the input gradient only), a head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3)
        self.fc1 = nn.Linear(4 * 4 * 4, 8)
        self.fc2 = nn.Linear(8, 3)
        self.conv2.requires_grad_(False)
        self.fc1.weight.requires_grad_(False)  # its bias trains: the gradient passes fc1

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.conv2(F.relu(self.conv1(x)))).flatten(1)
        return self.fc2(F.relu(self.fc1(h)))


class NoGradPart(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.body, self.head = nn.Linear(6, 12), nn.Linear(12, 12), nn.Linear(12, 2)

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():  # a frozen feature extractor run without autograd
            h = self.embed(x)
        return self.head(F.relu(self.body(h)))


class Checkpointed(NoGradPart):
    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.embed(x))
        h = checkpoint(lambda t: F.relu(self.body(t)), h, use_reentrant=False)
        return self.head(h)


def test_recomputed_forward_counts_in_the_forward() -> None:
    torch.manual_seed(0)
    model, x = Checkpointed(), torch.randn(3, 6)
    found = cost(model, x)
    assert found.total.flops == step_flops(model, x)[0]
    embed, body, head = 2 * 3 * 6 * 12, 2 * 3 * 12 * 12, 2 * 3 * 12 * 2
    assert found.forward.flops == embed + 2 * body + head  # body's forward runs twice
    assert found.grad_inputs.flops == body + head
    assert found.grad_weights.flops == embed + body + head


def test_an_input_from_the_callers_graph_is_left_alone() -> None:
    torch.manual_seed(0)
    model, y = nn.Linear(4, 3), torch.randn(2, 4, requires_grad=True)
    x = y * 2
    found = cost(model, x)
    assert found.grad_inputs.flops == 2 * 2 * 3 * 4  # x requires a gradient
    x.sum().backward()  # the caller's graph still works
    assert torch.equal(y.grad, torch.full((2, 4), 2.0))


class Autocast(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):  # weights cast on the way
            return self.body(x).float()


def pruned_mlp() -> tuple[nn.Module, Any]:
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    torch.nn.utils.prune.l1_unstructured(model[0], "weight", 0.5)
    return model, torch.randn(3, 8)


DENSE_CASES: dict[str, Callable[[], tuple[nn.Module, Any]]] = {
    "cnn": lambda: (CNN(), torch.randn(2, 3, 8, 8)),
    "attention_by_hand": lambda: (Block(sdpa=False), torch.randn(2, 5, 16)),
    "encoder_layer": lambda: (
        nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True),
        torch.randn(2, 5, 16),
    ),
    "multihead_attention": lambda: (nn.MultiheadAttention(16, 2), (torch.randn(5, 2, 16),) * 3),
    "frozen": lambda: (Frozen(), torch.randn(2, 2, 6, 6)),
    "no_grad_part": lambda: (NoGradPart(), torch.randn(3, 6)),
    "input_requires_grad": lambda: (CNN(), torch.randn(2, 3, 8, 8, requires_grad=True)),
    "prune_reparametrized": pruned_mlp,
    "autocast_bfloat16": lambda: (Autocast(), torch.randn(4, 16)),
    "gru": lambda: (nn.GRU(6, 8), torch.randn(4, 2, 6)),
    "conv_transpose": lambda: (
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1)),
        torch.randn(2, 3, 6, 6),
    ),
}


@pytest.mark.parametrize("case", DENSE_CASES)
def test_dense_equals_flop_counter_mode(case: str) -> None:
    torch.manual_seed(0)
    model, x = DENSE_CASES[case]()
    found = cost(model, x)
    expected, _ = step_flops(model, x)
    assert found.total.flops == expected
    parts = found.forward.flops + found.grad_inputs.flops + found.grad_weights.flops
    assert parts == expected
    assert found.unsupported == {}


def test_backward_skips_what_autograd_skips() -> None:
    """The first layer's input gradient runs only for an input that requires one."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 4))
    x = torch.randn(3, 6)
    plain, with_grad = cost(model, x), cost(model, x.clone().requires_grad_())
    # grad_x = grad_y @ W of the first layer: 3 rows x 10 x 6 MACs
    assert with_grad.grad_inputs.flops - plain.grad_inputs.flops == 2 * 3 * 10 * 6
    assert with_grad.total.flops == step_flops(model, x.clone().requires_grad_())[0]
    # frozen: no weight gradients at all, the input gradient of the last layer only
    for p in model.parameters():
        p.requires_grad_(False)
    model[2].bias.requires_grad_(True)
    frozen = cost(model, x)
    assert frozen.grad_weights.flops == 0
    assert frozen.grad_inputs.flops == 0  # nothing before layer 2 trains: no grad_x needed
    assert frozen.total.flops == step_flops(model, x)[0] == frozen.forward.flops
    model[0].bias.requires_grad_(True)  # now layer 2 passes its gradient back: 3x4x10
    assert cost(model, x).grad_inputs.flops == 2 * 3 * 4 * 10


def test_frozen_convolution_computes_the_input_gradient_only() -> None:
    torch.manual_seed(0)
    model, x = Frozen(), torch.randn(2, 2, 6, 6)
    found = cost(model, x)
    # conv2 (frozen) on 4x6x6 -> 4x4x4: its input gradient only, as many products as its
    # forward; conv1's weight gradient only (x needs none); fc1 (frozen weight, trained
    # bias): grad_x only; fc2 both
    conv1 = 2 * 2 * 36 * (4 * 2 * 9)
    conv2 = 2 * 2 * 16 * (4 * 4 * 9)
    fc1, fc2 = 2 * 2 * 64 * 8, 2 * 2 * 8 * 3
    assert found.grad_inputs.flops == conv2 + fc1 + fc2
    assert found.grad_weights.flops == conv1 + fc2
    assert found.forward.flops == conv1 + conv2 + fc1 + fc2


def test_attention_sdpa_against_flop_counter_formulas() -> None:
    """FlopCounterMode has no formula for the CPU flash attention: its own formulas added."""
    torch.manual_seed(0)
    model, x = Block(sdpa=True), torch.randn(2, 5, 16)
    expected, counts = step_flops(model, x)
    if not any("flash_attention_for_cpu" in op for op in counts):
        q = k = v = grad_out = (2, 2, 5, 8)  # batch, heads, length, head dim
        expected += sdpa_flop_count(q, k, v) + sdpa_backward_flop_count(grad_out, q, k, v)
    assert cost(model, x).total.flops == expected


class UnrolledLSTM(nn.Module):
    """nn.LSTM's computation step by step with nn.LSTMCell (whose matmuls FlopCounterMode
    counts); the initial state requires a gradient, as the fused kernel computes it."""

    def __init__(self, lstm: nn.LSTM) -> None:
        super().__init__()
        self.cells = nn.ModuleList()
        for layer in range(lstm.num_layers):
            cell = nn.LSTMCell(
                lstm.input_size if layer == 0 else lstm.hidden_size, lstm.hidden_size
            )
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(cell, name).data.copy_(getattr(lstm, f"{name}_l{layer}"))
            self.cells.append(cell)

    def forward(self, x: Tensor) -> Tensor:
        for cell in self.cells:
            h = torch.zeros(x.shape[1], cell.hidden_size, requires_grad=True)
            c = torch.zeros(x.shape[1], cell.hidden_size, requires_grad=True)
            outputs = []
            for t in range(x.shape[0]):
                h, c = cell(x[t], (h, c))
                outputs.append(h)
            x = torch.stack(outputs)
        return x


def test_lstm_against_unrolled_cells() -> None:
    """The CPU LSTM layer's backward computes the gradients of the input, the initial state
    and both weights whatever needs them (FlopCounterMode counts 0 for nn.LSTM)."""
    torch.manual_seed(0)
    lstm, x = nn.LSTM(6, 8, num_layers=2), torch.randn(4, 3, 6)
    reference = UnrolledLSTM(lstm)
    assert torch.allclose(reference(x), lstm(x)[0], atol=1e-6)
    expected, _ = step_flops(reference, x.clone().requires_grad_())
    found = cost(lstm, x, loss=lambda out: out[0].sum())
    assert found.total.flops == expected
    assert found.grad_inputs.flops == found.grad_weights.flops == found.forward.flops


def test_grouped_convolution_weight_gradient() -> None:
    """FlopCounterMode counts a grouped convolution's weight gradient `groups` times over."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, groups=4), nn.ReLU(), nn.Conv2d(8, 8, 1))
    x = torch.randn(2, 4, 6, 6)
    found = cost(model, x)
    weight_gradient = 2 * 2 * 16 * (8 * 1 * 9)  # N x out positions x weight entries
    assert found.grad_weights.flops == weight_gradient + 2 * 2 * 16 * 64
    assert step_flops(model, x)[0] == found.total.flops + 3 * weight_gradient


def test_custom_loss_and_per_example() -> None:
    torch.manual_seed(0)
    model, x = CNN(), torch.randn(4, 3, 8, 8)
    target = torch.tensor([1, 2, 3, 4])

    def loss(out: Tensor) -> Tensor:
        return F.cross_entropy(out, target)

    expected, _ = step_flops(model, x, loss)
    per_batch = cost(model, x, loss=loss)
    per_example = SparsityMeter(model, x, loss=loss).measure_training()
    assert per_batch.total.flops == expected
    assert per_example.total.flops * 4 == expected
    assert per_example.batch_size == 4
    assert per_example.per == "example"
    data = per_example.to_dict()
    assert data["total"]["flops"] * 4 == expected
    assert set(data) == {
        "per",
        "batch_size",
        "total",
        "forward",
        "grad_inputs",
        "grad_weights",
        "unsupported",
    }
    assert per_example.total.flops_ratio == 1.0


# --------------------------------------------------------------------------- sparse


def linear_products(rows: int, w: Tensor, grad_x: bool, trained: Tensor | None) -> int:
    """A Linear's step on ``rows`` rows, product by product: forward x @ W^T and grad_x =
    grad_y @ W with a nonzero weight operand; grad_W = grad_y^T @ x into trained entries."""
    forward = matmul_products(torch.ones(rows, w.shape[1]), w.t())
    backward = matmul_products(torch.ones(rows, w.shape[0]), w) if grad_x else 0
    if trained is not None:  # [out, rows, in] products, kept where the entry is trained
        products = torch.ones(w.shape[0], rows, w.shape[1], dtype=torch.int64)
        backward += 2 * int((products * nz(trained)[:, None, :]).sum())
    return forward + backward


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2)
        self.fc1 = nn.Linear(4 * 2 * 2, 12)
        self.fc2 = nn.Linear(12, 5)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.conv2(F.relu(self.conv1(x)))).flatten(1)
        return self.fc2(F.relu(self.fc1(h)))


def small_brute(model: Small, x: Tensor, trained: dict[str, Tensor]) -> int:
    """Every product of one step with a nonzero weight operand, or into a trained entry.

    A convolution's backward products map one to one onto its forward products
    x[p]·w[q] → y[o]: grad_y[o]·w[q] → grad_x[p] (a zero w[q] skipped) and
    grad_y[o]·x[p] → grad_w[q] (counted when w[q] is trained: here, nonzero).
    """
    w1, w2 = model.conv1.weight.detach(), model.conv2.weight.detach()
    conv1 = conv_products(x, w1, padding=1, count_input_zeros=True)
    h = torch.ones(2, 4, 6, 6)
    conv2 = conv_products(h, w2, stride=2, count_input_zeros=True)
    total = 2 * conv1  # forward, weight gradient (no input gradient: x needs none)
    total += 3 * conv2  # forward, input gradient, weight gradient
    total += linear_products(2, model.fc1.weight.detach(), True, trained["fc1.weight"])
    total += linear_products(2, model.fc2.weight.detach(), True, trained["fc2.weight"])
    return total


def test_sparse_equals_brute_force() -> None:
    torch.manual_seed(0)
    model, x = Small(), torch.randn(2, 2, 6, 6)
    meter = SparsityMeter(model, x, per="batch")
    for fraction, seed in ((0.0, 0), (0.5, 1), (0.8, 2)):
        for name, p in model.named_parameters():
            if name.endswith("weight"):
                sparsify_(p, fraction, seed)
        found = meter.measure_training()
        trained = {n: p.detach() for n, p in model.named_parameters()}
        assert found.total.flops_sparse == small_brute(model, x, trained)
    assert meter.training_traces == 1
    # a pruner's masks: fc1 trains its nonzero entries and all of row 0 (grown), fc2 any 7
    fc1, fc2 = model.fc1.weight.detach(), model.fc2.weight.detach()
    grown = fc1 != 0
    grown[0] = True
    seven = torch.zeros(fc2.numel())
    seven[:7] = 1
    masked = meter.measure_training({"fc1.weight": grown, "fc2.weight": 7})
    trained = {"fc1.weight": grown, "fc2.weight": seven.view_as(fc2)}
    assert masked.total.flops_sparse == small_brute(model, x, trained)
    # every entry trained (dense weight gradients); the convolutions' zeros too: one
    # product per example and output position each
    dense_grads = meter.measure_training("all")
    everything = {"fc1.weight": torch.ones_like(fc1), "fc2.weight": torch.ones_like(fc2)}
    conv_zeros = sum(
        2 * rows * int((m.weight == 0).sum())
        for m, rows in ((model.conv1, 2 * 36), (model.conv2, 2 * 4))
    )
    assert dense_grads.total.flops_sparse == small_brute(model, x, everything) + conv_zeros


def test_the_ledgers_count_is_the_measured_one() -> None:
    """``count_training`` (what the callback's ledger adds) against the brute force of
    test_sparse_equals_brute_force: its sparse cost with the masks, with every weight
    gradient (RigL's growth step) from the same sweep, and ``still`` false exactly while a
    trained entry is zero."""
    torch.manual_seed(0)
    model, x = Small(), torch.randn(2, 2, 6, 6)
    meter = SparsityMeter(model, x, per="batch")
    fresh = meter.count_training()
    assert fresh.still  # every entry of every weight nonzero
    assert fresh.flops == fresh.flops_sparse == fresh.flops_sparse_all
    assert fresh.flops == meter.measure_training().total.flops
    fc1, fc2 = model.fc1.weight, model.fc2.weight
    with torch.no_grad():
        fc1[:, ::2] = 0  # pruned: its mask
        fc2[0] = 0  # pruned too, but row 0 kept by the mask (grown: live at zero)
    masks = {"fc1.weight": fc1.detach() != 0, "fc2.weight": torch.ones_like(fc2, dtype=bool)}
    masks["fc2.weight"][1:] = fc2.detach()[1:] != 0
    count = meter.count_training(masks)
    trained = {n: m.float() for n, m in masks.items()}
    assert count.flops_sparse == small_brute(model, x, trained)
    everything = {n: torch.ones_like(m, dtype=torch.float) for n, m in masks.items()}
    assert count.flops_sparse_all == small_brute(model, x, everything)  # convs: no zeros
    assert not count.still  # fc2's row 0 is trained and zero
    with torch.no_grad():
        fc2[0] = 0.5  # moved by a step
    assert meter.count_training(masks).still
    assert not meter.count_training().still  # fc1's zeros, unmasked: they would train


@pytest.mark.parametrize("seed", range(8))
def test_the_ledgers_count_on_random_zeros_and_masks(seed: int) -> None:
    """Random zeros (in the convs every third case, in fc1 and fc2 in most), random masks
    on fc1 and fc2 (their nonzeros and some zero entries kept live, as RigL grows them;
    in odd cases those moved by a step): the ledger's sparse counts equal the brute force,
    and ``still`` holds exactly when no trained entry is zero (a live masked entry, or any
    entry of an unmasked conv). The eight cases hold every combination of the two."""
    torch.manual_seed(seed)
    model, x = Small(), torch.randn(2, 2, 6, 6)
    g = torch.Generator().manual_seed(seed)
    for i, (name, p) in enumerate(model.named_parameters()):
        if name.endswith("weight"):  # zeros in the convs every third case, in fc most
            fraction = 0.5 * (seed % 3 == 0) if "conv" in name else 0.6 * (seed % 4 != 0)
            sparsify_(p, fraction, seed + i)
    masks = {}
    for name in ("fc1.weight", "fc2.weight"):
        weight = model.get_parameter(name)
        grown = torch.rand(weight.shape, generator=g) < 0.1  # live, at zero until a step
        masks[name] = (weight.detach() != 0) | grown
        if seed % 2:
            with torch.no_grad():
                weight[grown & (weight == 0)] = 0.25  # moved by a step
    meter = SparsityMeter(model, x, per="batch")
    count = meter.count_training(masks)
    trained = {n: m.float() for n, m in masks.items()}
    assert count.flops_sparse == small_brute(model, x, trained)
    everything = {n: torch.ones_like(m, dtype=torch.float) for n, m in masks.items()}
    conv_zeros = sum(
        2 * rows * int((m.weight == 0).sum())
        for m, rows in ((model.conv1, 2 * 36), (model.conv2, 2 * 4))
    )
    assert count.flops_sparse_all == small_brute(model, x, everything) + conv_zeros
    live_zero = any(bool((model.get_parameter(n)[m] == 0).any()) for n, m in masks.items())
    conv_zero = any(bool((m.weight == 0).any()) for m in (model.conv1, model.conv2))
    assert count.still == (not live_zero and not conv_zero)
    assert count.flops == meter.measure_training().total.flops


def test_lstm_sparse_equals_brute_force() -> None:
    torch.manual_seed(0)
    lstm, x = nn.LSTM(5, 6), torch.randn(4, 2, 5)
    for p in (lstm.weight_ih_l0, lstm.weight_hh_l0):
        sparsify_(p, 0.6)
    w_ih, w_hh = lstm.weight_ih_l0.detach(), lstm.weight_hh_l0.detach()
    forward, _, out = recurrent_products(x, w_ih, w_hh, lstm.bias_ih_l0, lstm.bias_hh_l0, "lstm")
    assert torch.allclose(out, lstm(x)[0], atol=1e-6)
    # the backward: per step and weight, grad_y·W into the input or state (zeros skipped)
    # and grad_y·x into each trained (nonzero) entry: as many products as the forward
    found = cost(lstm, x)
    assert found.total.flops_sparse == 3 * forward
    lstm.weight_hh_l0.requires_grad_(False)  # the fused kernel still computes its gradient
    frozen = cost(lstm, x)
    assert frozen.total.flops == found.total.flops
    hh_products = 2 * 4 * 2 * int(nz(w_hh).sum())
    assert frozen.total.flops_sparse == 3 * forward - hh_products


def test_recount_equals_retrace() -> None:
    torch.manual_seed(0)
    model, x = Block(sdpa=False), torch.randn(2, 5, 16)
    meter = SparsityMeter(model, x)
    for fraction in (0.3, 0.6, 0.9):
        for p in (model.qkv.weight, model.mlp[0].weight, model.proj.weight):
            sparsify_(p, fraction, seed=int(fraction * 10))
        assert meter.measure_training() == SparsityMeter(model, x).measure_training()
    assert meter.training_traces == 1
    meter.example_input = torch.randn(3, 7, 16)
    meter.measure_training()
    assert meter.training_traces == 2
    model.qkv.weight.requires_grad_(False)  # a different backward: traced again
    meter.measure_training()
    assert meter.training_traces == 3
    meter.retrace()
    meter.measure_training()
    assert meter.training_traces == 4


# --------------------------------------------------------------------------- realizable


def test_realizable_equals_compacted_models_dense_step() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4)
    )
    x = torch.randn(3, 8)
    with torch.no_grad():
        model[0].weight[::2] = 0  # rows 8/16, and layer 2's inputs they feed
        model[0].bias[::2] = 0
        model[2].weight[:, 1] = 0  # input 1 of layer 2 too
        model[2].weight[:4] = 0  # rows 8/12
        model[2].bias[:4] = 0
    found = cost(model, x)
    small = ls.compact(model, x)
    for p in small.parameters():
        p.requires_grad_(True)
    assert found.total.flops_realizable == step_flops(small, x)[0]
    assert found.total.flops_realizable < found.total.flops


def test_realizable_two_four_forward_only() -> None:
    """A 2:4 weight halves its forward products; its backward products run dense."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
    x = torch.randn(5, 64)
    with torch.no_grad():
        w = model[2].weight.view(32, 16, 4)
        w[::2, :, 2:] = 0  # 2 of every 4 inputs, other ones in odd rows: every input lives
        w[1::2, :, :2] = 0
    found = cost(model, x)
    assert found.forward.flops_realizable == found.forward.flops - 2 * 5 * 64 * 32 // 2
    assert found.grad_inputs.flops_realizable == found.grad_inputs.flops
    assert found.grad_weights.flops_realizable == found.grad_weights.flops


# --------------------------------------------------------------------------- as found


def test_model_left_as_found() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Flatten())
    model.eval()
    model[0].weight.grad = torch.ones_like(model[0].weight)
    state = copy.deepcopy(model.state_dict())
    x = torch.randn(2, 3, 5, 5)
    rng = torch.get_rng_state()
    cost(model, x)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert torch.equal(torch.get_rng_state(), rng)
    assert not any(m.training for m in model.modules())
    assert torch.equal(model[0].weight.grad, torch.ones_like(model[0].weight))
    assert model[0].bias.grad is None


class Cross(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, q: Tensor, kv: Tensor) -> Tensor:
        return self.attention(q, kv, kv, need_weights=False)[0]


def test_cross_attention_slices_of_the_packed_projection() -> None:
    """Query and key/value lengths differ: the packed in-projection is used in slices."""
    torch.manual_seed(0)
    model, q, kv = Cross(), torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    sparsify_(model.attention.in_proj_weight, 0.5)
    sparsify_(model.attention.out_proj.weight, 0.3)
    found = cost(model, (q, kv))
    expected, counts = step_flops(model, (q, kv))
    attention = 0
    if not any("flash_attention_for_cpu" in op for op in counts):
        qs, ks = (2, 2, 5, 8), (2, 2, 7, 8)
        attention = sdpa_flop_count(qs, ks, ks) + sdpa_backward_flop_count(qs, qs, ks, ks)
    assert found.total.flops == expected + attention
    # sparse: the inputs need no gradient, so the in-projection has forward and weight
    # gradient products only (2 x rows x nonzero entries of each slice), the out-projection
    # all three; attention stays dense
    wq, wk, wv = model.attention.in_proj_weight.detach().split(16)
    wo = model.attention.out_proj.weight.detach()
    rows_q, rows_kv = 2 * 5, 2 * 7
    in_proj = sum(
        linear_products(rows, w, False, w)
        for rows, w in ((rows_q, wq), (rows_kv, wk), (rows_kv, wv))
    )
    out_proj = linear_products(rows_q, wo, True, wo)
    assert found.total.flops_sparse == in_proj + out_proj + attention


def test_trainable_is_checked() -> None:
    model, x = nn.Sequential(nn.Linear(4, 3)), torch.randn(2, 4)
    meter = SparsityMeter(model, x)
    with pytest.raises(ValueError, match="names no parameter"):
        meter.measure_training({"nope.weight": 3})
    with pytest.raises(ValueError, match=r"count in \[0, 12\]"):
        meter.measure_training({"0.weight": 13})
    with pytest.raises(ValueError, match="has 4 entries"):
        meter.measure_training({"0.weight": torch.ones(4, dtype=torch.bool)})
    with pytest.raises(TypeError, match="'nonzero', 'all' or a mapping"):
        meter.measure_training("dense")  # type: ignore[arg-type]


def test_meta_device_dense_only() -> None:
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    found = cost(model, torch.zeros(3, 8, device="meta"))
    # forward 2*3*(8*16 + 16*4); grad_x of layer 2 only; both weight gradients
    assert found.total.flops == 2 * 3 * (2 * (8 * 16 + 16 * 4) + 16 * 4)
    assert found.total.flops_sparse is None


def test_readme_snippet_runs() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Training FLOPs", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    scope: dict[str, Any] = {}
    exec(code, scope)
    found = scope["cost"]
    assert found.total.flops * 4 == step_flops(scope["model"], scope["x"], scope["meter"].loss)[0]


def test_training_cost_model_is_the_sparse_count() -> None:
    torch.manual_seed(0)
    model, x = Small(), torch.randn(2, 2, 6, 6)
    meter = SparsityMeter(model, x)
    model_cost = meter.cost_model(training=True)
    for name, p in model.named_parameters():
        sparsify_(p, 0.6, seed=len(name))
    nonzero = {n: int(p.count_nonzero()) for n, p in model.named_parameters()}
    linear = model_cost.fixed_flops + sum(
        c * nonzero[n] for n, c in model_cost.flops_per_nonzero.items()
    )
    assert linear == pytest.approx(meter.measure_training().total.flops_sparse, rel=1e-12)
    assert model_cost.flops == meter.measure_training().total.flops
    assert meter.training_traces == 1


def test_recount_reads_the_device_a_constant_number_of_times() -> None:
    from tests.test_syncs import count_reads

    def reads(layers: int) -> int:
        torch.manual_seed(0)
        model = nn.Sequential(*[nn.Linear(16, 16) for _ in range(layers)])
        meter = SparsityMeter(model, torch.randn(2, 16))
        meter.measure_training()  # traced; every weight dense
        for p in model.parameters():
            sparsify_(p, 0.5)
        meter.measure_training()  # zeros appeared: probed again
        masks = {f"{i}.weight": model[i].weight != 0 for i in range(layers)}
        with count_reads() as calls:
            meter.measure_training()
            meter.measure_training(masks)
        return len(calls)

    assert reads(3) == reads(30) <= 3  # one sweep each, and one for the masks


def test_autocast_casts_keep_the_weights() -> None:
    torch.manual_seed(0)
    model, x = Autocast(), torch.randn(4, 16)
    sparsify_(model.body[0].weight, 0.5)
    sparsify_(model.body[2].weight, 0.5)
    w1, w2 = model.body[0].weight.detach(), model.body[2].weight.detach()
    expected = linear_products(4, w1, False, w1) + linear_products(4, w2, True, w2)
    assert cost(model, x).total.flops_sparse == expected


def test_backward_plumbing_is_free() -> None:
    """Activations', norms', pooling's, padding's and losses' gradients: no FLOPs, no op
    left unknown."""
    torch.manual_seed(0)
    layers = [
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.Hardswish(),
        nn.Hardsigmoid(),
        nn.ELU(),
        nn.LeakyReLU(),
        nn.Mish(),
        nn.Softplus(),
        nn.Hardtanh(),
        nn.GELU(),
        nn.SiLU(),
        nn.Sigmoid(),
        nn.Tanh(),
        nn.ReflectionPad2d(1),
        nn.ReplicationPad2d(1),
        nn.GroupNorm(2, 4),
        nn.MaxPool2d(2),
        nn.Upsample(scale_factor=2),
        nn.AvgPool2d(2),
        nn.Dropout(0.2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.LayerNorm(4),
        nn.Linear(4, 3),
        nn.LogSoftmax(-1),
    ]
    model, x = nn.Sequential(*layers), torch.randn(2, 3, 8, 8)
    target = torch.tensor([0, 2])
    found = cost(model, x, loss=lambda out: F.nll_loss(out, target))
    assert found.unsupported == {}
    conv, linear = 2 * 2 * 64 * (4 * 3 * 9), 2 * 2 * 4 * 3
    assert found.total.flops == 2 * conv + 3 * linear  # conv: no input gradient


def test_a_recorded_step_and_its_misuse() -> None:
    """Two linear layers, two losses and two optimizers per step, outside Lightning: the
    recorded step's dense FLOPs are what FlopCounterMode counts around the same step;
    per example the step's FLOPs divided by the examples given."""
    torch.manual_seed(0)
    a, b = nn.Linear(6, 5), nn.Linear(5, 3)
    model = nn.Sequential(a, b)
    opt_a, opt_b = torch.optim.Adam(a.parameters()), torch.optim.SGD(b.parameters(), lr=0.1)
    x = torch.randn(4, 6)

    def step() -> None:
        hidden = a(x)
        opt_a.zero_grad()
        b(hidden).square().sum().backward()
        opt_a.step()
        opt_b.zero_grad()
        b(hidden.detach()).sum().backward()
        opt_b.step()

    with FlopCounterMode(display=False) as counter:
        step()
    meter = SparsityMeter(model, torch.zeros(1, 6))
    meter.start_step()
    assert meter.recording
    with pytest.raises(RuntimeError, match="being recorded already"):
        meter.start_step()
    step()
    meter.stop_step(4)
    assert not meter.recording
    assert meter.step_recorded
    assert meter.measure_training().total.flops * 4 == counter.get_total_flops()
    # a: forward 2·30, weight gradient 2·30 (its input needs none); b twice: forward 2·15,
    # input gradient 2·15 the first time, weight gradient 2·15 each time
    assert meter.measure_training().total.flops == 2 * 30 * 2 + 2 * 15 * 5
    with pytest.raises(RuntimeError, match="no step is being recorded"):
        meter.stop_step(4)
    meter.start_step()
    with pytest.raises(ValueError, match="`examples` must be a positive int, got 0"):
        meter.stop_step(0)
    meter.abort_step()  # nothing running: nothing to do
    # an update paused the recording and never ended (the AMP scaler skipped the step):
    # the next forward counts again
    meter.start_step()
    meter.pause_step()
    step()
    meter.stop_step(4)
    assert meter.measure_training().total.flops * 4 == counter.get_total_flops()
    meter.retrace()  # back to the example input's step
    assert not meter.step_recorded
    assert meter.measure_training().total.flops == 2 * 30 * 2 + 2 * 15 * 3


def test_a_recording_holds_no_output_that_has_no_gradient_node() -> None:
    """A frozen teacher's output (``no_grad``: no autograd node) is not kept alive by the
    recording once the step lets go of it; the optimizers' elementwise ops are free, a
    grouped matmul is not."""
    from lightning_sparsity.counting.formulas import is_free
    from lightning_sparsity.counting.trace import StepRecorder

    teacher = nn.Linear(64, 64)
    recorder = StepRecorder(teacher)
    recorder.start()
    try:
        with torch.no_grad():
            out = teacher(torch.randn(32, 64))
        held = weakref.ref(out)
        del out
        gc.collect()
        assert held() is None
    finally:
        recorder.close()
    assert is_free(torch.ops.aten._foreach_add_.List)
    assert is_free(torch.ops.aten._fused_adam_.default)
    assert not is_free(torch.ops.aten._foreach_mm.default)
