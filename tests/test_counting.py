"""The counter against brute force, closed forms and FlopCounterMode."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize, prune
from torch.utils.flop_counter import FlopCounterMode

import lightning_sparsity as ls
from tests import brute
from tests.brute import relu_input, sparsify_


def fcm_flops(model: nn.Module, x: torch.Tensor | tuple) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        model(*x) if isinstance(x, tuple) else model(x)
    return counter.get_total_flops()


# --------------------------------------------------------------------------- convolutions

CONVS = [
    ("conv1d s2 p1", nn.Conv1d(3, 4, 3, stride=2, padding=1), (2, 3, 9)),
    ("conv2d s2 p1 d2", nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=2), (2, 3, 7, 7)),
    ("conv2d groups", nn.Conv2d(4, 6, 3, padding=1, groups=2), (1, 4, 5, 5)),
    ("depthwise", nn.Conv2d(4, 4, 3, padding=1, groups=4), (2, 4, 5, 5)),
    ("conv3d", nn.Conv3d(2, 3, 2, stride=1, padding=1), (1, 2, 3, 3, 3)),
    ("transposed2d s2 p1", nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1), (1, 3, 4, 4)),
    ("transposed1d groups", nn.ConvTranspose1d(4, 6, 3, stride=2, groups=2), (2, 4, 5)),
]


@pytest.mark.parametrize(("case", "conv", "shape"), CONVS, ids=[c[0] for c in CONVS])
def test_conv_matches_brute_force(case: str, conv: nn.Module, shape: tuple) -> None:
    conv = copy.deepcopy(conv)
    sparsify_(conv.weight, 0.5)
    x = relu_input(*shape)
    kwargs = {
        "stride": conv.stride[0],
        "padding": conv.padding[0],
        "dilation": conv.dilation[0],
        "groups": conv.groups,
        "transposed": conv.transposed,
    }
    dense = brute.conv_products(x, torch.ones_like(conv.weight), count_input_zeros=True, **kwargs)
    sparse = brute.conv_products(x, conv.weight, count_input_zeros=True, **kwargs)
    effective = brute.conv_products(x, conv.weight, **kwargs)

    report = ls.measure(conv, x, activations=True, per="batch")

    assert report.total.flops == dense == fcm_flops(conv, x)
    assert report.total.flops_sparse == sparse
    assert report.total.flops_effective == effective
    assert 0 < effective < sparse < dense  # the case really has zeros on both sides


def test_conv2d_closed_form_and_per_example() -> None:
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight[:2] = 0  # 2 of 5 output channels
    report = ls.measure(conv, torch.randn(4, 3, 6, 6))
    # per example: 2 * (6*6) * (5*3*3*3) = 9,720 dense; 3/5 of that sparse = 5,832
    assert report.per == "example"
    assert report.batch_size == 4
    assert report.total.flops == 9_720
    assert report.total.flops_sparse == 5_832
    assert report.total.params == 135
    assert report.total.params_nonzero == 81


# --------------------------------------------------------------------------- matmul family


@pytest.mark.parametrize("shape", [(3, 6), (2, 4, 6)], ids=["2-D input", "3-D input"])
def test_linear_matches_brute_force(shape: tuple) -> None:
    linear = nn.Linear(6, 5)
    sparsify_(linear.weight, 0.6)
    x = relu_input(*shape)
    rows = x.numel() // 6
    report = ls.measure(linear, x, activations=True, per="batch")
    # dense: 2 * rows * 6 * 5
    assert report.total.flops == 2 * rows * 30 == fcm_flops(linear, x)
    assert report.total.flops_sparse == 2 * rows * int(linear.weight.count_nonzero())
    assert report.total.flops_effective == brute.matmul_products(x, linear.weight.t())


class EinsumBmm(nn.Module):
    """A parameter used through einsum and through a broadcast bmm."""

    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.randn(4, 3))
        self.q = nn.Parameter(torch.randn(3, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("bik,kn->bin", x, self.p)  # [B, I, 3]
        return torch.bmm(y, self.q.expand(x.shape[0], 3, 2))


def test_einsum_and_broadcast_bmm_with_parameters() -> None:
    model = EinsumBmm()
    sparsify_(model.p, 0.5, seed=3)
    sparsify_(model.q, 0.5, seed=4)
    x = relu_input(2, 5, 4)
    report = ls.measure(model, x, activations=True, per="batch")
    y = torch.einsum("bik,kn->bin", x, model.p)
    # dense: 2*2*5*4*3 + 2*2*5*3*2 = 240 + 120
    assert report.total.flops == 360 == fcm_flops(model, x)
    # sparse: every p entry used B*I = 10 times, every q entry B*I = 10 times
    nnz_p, nnz_q = int(model.p.count_nonzero()), int(model.q.count_nonzero())
    assert report.total.flops_sparse == 2 * 10 * nnz_p + 2 * 10 * nnz_q
    assert report.total.flops_effective == (
        brute.matmul_products(x, model.p) + brute.matmul_products(y, model.q)
    )


# --------------------------------------------------------------------------- attention


class SDPA(nn.Module):
    def __init__(self, causal: bool) -> None:
        super().__init__()
        self.causal = causal

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_matches_closed_form_and_brute_force(causal: bool) -> None:
    q, k = relu_input(2, 2, 4, 8, seed=1), relu_input(2, 2, 4, 8, seed=2)
    v = relu_input(2, 2, 4, 5, seed=3)
    report = ls.measure(SDPA(causal), (q, k, v), activations=True, per="batch")
    # 2*B*H*L*S*(E + Ev) = 2*2*2*4*4*(8 + 5) = 1,664 — FlopCounterMode says 0 on CPU
    assert report.total.flops == 1_664
    assert report.total.flops_sparse == 1_664
    p = brute.softmax_probs(q, k, causal)
    assert report.total.flops_effective == brute.attention_products(q, k, v, p)
    assert (p == 0).any() == causal  # the causal case really skips products


def mha_brute(mha: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor) -> dict:
    e, h = mha.embed_dim, mha.num_heads
    wq, wk, wv = mha.in_proj_weight.split(e)
    bq, bk, bv = mha.in_proj_bias.split(e)
    b, length, s = query.shape[0], query.shape[1], key.shape[1]
    q, k, v = F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(key, wv, bv)

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (h, e // h)).transpose(1, 2)

    p = brute.softmax_probs(heads(q), heads(k))
    o = (p @ heads(v).double()).transpose(1, 2).flatten(2)
    nnz = [int(w.count_nonzero()) for w in (wq, wk, wv, mha.out_proj.weight)]
    return {
        # 2BLE² + 2·2BSE² (projections) + 2·2BLSE (attention) + 2BLE² (output)
        "dense": 2 * b * length * e * e * 2 + 2 * 2 * b * s * e * e + 2 * 2 * b * length * s * e,
        "sparse": 2 * b * length * (nnz[0] + nnz[3])
        + 2 * b * s * (nnz[1] + nnz[2])
        + 2 * 2 * b * length * s * e,
        "effective": brute.matmul_products(query, wq.t())
        + brute.matmul_products(key, wk.t())
        + brute.matmul_products(key, wv.t())
        + brute.attention_products(heads(q), heads(k), heads(v), p)
        + brute.matmul_products(o, mha.out_proj.weight.t()),
    }


def pruned_mha() -> nn.MultiheadAttention:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight[:8, :4] = 0  # the query block is sparser than key and value
        mha.in_proj_weight[8:, :1] = 0
        mha.out_proj.weight[:, :3] = 0
    return mha


@pytest.mark.parametrize("grad", [True, False], ids=["with grad", "no_grad"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_multihead_attention_self(grad: bool, training: bool) -> None:
    mha = pruned_mha().train(training)
    x = relu_input(2, 5, 8)
    expected = mha_brute(mha, x, x)
    with torch.set_grad_enabled(grad):
        report = ls.measure(mha, (x, x, x), activations=True, per="batch")
    assert report.total.flops == expected["dense"]
    assert report.total.flops_sparse == expected["sparse"]
    assert report.total.flops_effective == expected["effective"]
    assert mha.training == training


def test_multihead_attention_fast_path_is_what_flop_counter_mode_misses() -> None:
    mha = pruned_mha().eval()
    x = relu_input(1, 5, 8)
    with torch.no_grad():
        assert fcm_flops(mha, (x, x, x)) == 0
    assert ls.measure(mha, (x, x, x)).total.flops == mha_brute(mha, x, x)["dense"]


def test_multihead_attention_cross_lengths_uses_qkv_blocks_apart() -> None:
    """Query length != key length: the packed projection is split, blocks used unequally."""
    mha = pruned_mha()
    q, k = relu_input(2, 3, 8, seed=5), relu_input(2, 6, 8, seed=6)
    expected = mha_brute(mha, q, k)
    meter = ls.SparsityMeter(mha, (q, k, k), per="batch")
    report = ls.measure(mha, (q, k, k), activations=True, per="batch")
    assert report.total.flops == expected["dense"]
    assert report.total.flops_sparse == expected["sparse"] == meter.measure().total.flops_sparse
    assert report.total.flops_effective == expected["effective"]
    with torch.no_grad():
        mha.in_proj_weight[8:16] = 0  # the key block only: the cached recount must see it
    expected = mha_brute(mha, q, k)
    assert meter.measure().total.flops_sparse == expected["sparse"]
    assert meter.traces == 1


# --------------------------------------------------------------------------- recurrent


@pytest.mark.parametrize("batch_first", [False, True])
def test_lstm_matches_step_by_step_brute_force(batch_first: bool) -> None:
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 5, batch_first=batch_first)
    sparsify_(lstm.weight_ih_l0, 0.5, seed=1)
    sparsify_(lstm.weight_hh_l0, 0.3, seed=2)
    x = relu_input(3, 2, 4)  # [T, B, In]
    sparse, effective, outputs = brute.recurrent_products(
        x, lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0, "lstm"
    )
    inp = x.transpose(0, 1) if batch_first else x
    with torch.no_grad():
        out, _ = lstm(inp)
    torch.testing.assert_close(out.transpose(0, 1) if batch_first else out, outputs)
    report = ls.measure(lstm, inp, activations=True, per="batch")
    # dense: 2 * T*B * (4*20 + 5*20) = 2 * 6 * 180 = 2,160 — FlopCounterMode says 0
    assert report.total.flops == 2_160
    assert fcm_flops(lstm, inp) == 0
    assert report.total.flops_sparse == sparse
    assert report.total.flops_effective == effective


def test_gru_matches_flop_counter_mode_and_brute_force() -> None:
    torch.manual_seed(0)
    gru = nn.GRU(4, 5)
    sparsify_(gru.weight_ih_l0, 0.5, seed=1)
    sparsify_(gru.weight_hh_l0, 0.5, seed=2)
    x = relu_input(3, 2, 4)
    sparse, effective, outputs = brute.recurrent_products(
        x, gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0, "gru"
    )
    with torch.no_grad():
        torch.testing.assert_close(gru(x)[0], outputs)
    report = ls.measure(gru, x, activations=True, per="batch")
    # dense: 2 * T*B * (4*15 + 5*15) = 2 * 6 * 135 = 1,620
    assert report.total.flops == 1_620 == fcm_flops(gru, x)
    assert report.total.flops_sparse == sparse
    assert report.total.flops_effective == effective


# --------------------------------------------------------------------------- parameters


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4, bias=False)
        self.b = nn.Linear(4, 4, bias=False)
        self.b.weight = self.a.weight  # tied

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


def test_tied_weight_counts_once_and_flops_twice() -> None:
    model = Tied()
    sparsify_(model.a.weight, 0.5)
    nnz = int(model.a.weight.count_nonzero())
    report = ls.measure(model, torch.randn(1, 4))
    assert report.total.params == 16
    assert report.total.params_nonzero == nnz
    assert report.total.flops == 2 * 2 * 16  # two 4x4 products
    assert report.total.flops_sparse == 2 * 2 * nnz
    assert report.layer("b").params == 0  # the tied weight belongs to its first owner
    assert report.layer("b").flops == 32


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.fc(x).relu())


def test_module_called_twice() -> None:
    model = Twice()
    sparsify_(model.fc.weight, 0.5)
    nnz = int(model.fc.weight.count_nonzero())
    report = ls.measure(model, torch.randn(1, 3))
    assert report.total.params == 12  # 9 weights + 3 biases
    assert report.layer("fc").flops == 2 * 2 * 9
    assert report.layer("fc").flops_sparse == 2 * 2 * nnz


def small_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 10),
    )


def expected_sparse(model: nn.Sequential, weights: dict[int, torch.Tensor]) -> int:
    # per example on 8x8: conv0 uses each weight 64x, conv3 16x, linear once (x2 FLOPs)
    uses = {0: 64, 3: 16, 6: 1}
    return sum(2 * uses[i] * int(w.count_nonzero()) for i, w in weights.items())


def test_prune_per_layer_and_global_reparametrization() -> None:
    model = small_cnn()
    x = torch.randn(1, 1, 8, 8)
    dense = ls.measure(model, x)
    prune.l1_unstructured(model[0], "weight", amount=0.5)
    prune.global_unstructured(
        [(model[3], "weight"), (model[6], "weight")],
        pruning_method=prune.L1Unstructured,
        amount=0.7,
    )
    report = ls.measure(model, x)
    effective = {i: model[i].weight_orig * model[i].weight_mask for i in (0, 3, 6)}
    assert report.total.params == dense.total.params  # masks are not parameters
    assert report.total.flops == dense.total.flops
    assert report.total.flops_sparse == expected_sparse(model, effective)
    zeros = sum(int((w == 0).sum()) for w in effective.values())
    assert report.total.params_nonzero == dense.total.params_nonzero - zeros


class Mask(nn.Module):
    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


def test_parametrization_counts_the_effective_weight() -> None:
    model = small_cnn()
    x = torch.randn(1, 1, 8, 8)
    dense = ls.measure(model, x)
    mask = torch.rand(model[3].weight.shape, generator=torch.Generator().manual_seed(0)) > 0.6
    parametrize.register_parametrization(model[3], "weight", Mask(mask.float()))
    report = ls.measure(model, x)
    assert report.total.params == dense.total.params
    weights = {0: model[0].weight, 3: model[3].weight, 6: model[6].weight}
    assert report.total.flops_sparse == expected_sparse(model, weights)
    assert report.layer("3").params_nonzero == int(mask.sum()) + 8  # + the bias


def test_torch_ao_pruning_sparsifier() -> None:
    from torch.ao.pruning import WeightNormSparsifier

    model = small_cnn()
    sparsifier = WeightNormSparsifier(sparsity_level=0.5, sparse_block_shape=(1, 4))
    sparsifier.prepare(model, [{"tensor_fqn": "6.weight"}])
    sparsifier.step()
    report = ls.measure(model, torch.randn(1, 1, 8, 8))
    weights = {0: model[0].weight, 3: model[3].weight, 6: model[6].weight}
    assert parametrize.is_parametrized(model[6], "weight")
    assert int((weights[6] == 0).sum()) == 640  # half of 10*128
    assert report.total.flops_sparse == expected_sparse(model, weights)


# --------------------------------------------------------------------------- FlopCounterMode


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32, 16), nn.GELU(), nn.Linear(16, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(F.relu(self.bn(self.conv(x)))))


@pytest.mark.parametrize(
    ("model", "x"),
    [
        (Block(), torch.randn(2, 3, 8, 8)),
        (nn.Sequential(nn.Linear(7, 9), nn.ReLU(), nn.Linear(9, 2)), torch.randn(5, 7)),
        (nn.GRU(3, 4, num_layers=2, bidirectional=True), torch.randn(4, 2, 3)),
        (
            nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2),
            torch.randn(1, 5, 16),
        ),
    ],
    ids=["cnn", "mlp", "gru", "transformer"],
)
def test_dense_equals_flop_counter_mode(model: nn.Module, x: torch.Tensor) -> None:
    model.train()  # FlopCounterMode sees the unfused paths in train mode with grad
    assert ls.measure(model, x, per="batch").total.flops == fcm_flops(model, x)


# --------------------------------------------------------------------------- meter


def test_meter_equals_full_retrace_after_pruning() -> None:
    model = small_cnn()
    x = torch.randn(1, 1, 8, 8)
    meter = ls.SparsityMeter(model, x)
    prune.l1_unstructured(model[3], "weight", amount=0.4)  # structure change: re-trace
    assert meter.measure() == ls.measure(model, x)
    assert meter.traces == 2
    with torch.no_grad():
        model[3].weight_orig[:2] = 0  # values only: no re-trace
        model[6].weight[:, :50] = 0
    cached = meter.measure()
    assert meter.traces == 2
    assert cached == ls.measure(model, x)
    assert cached.total.flops_sparse < ls.measure(small_cnn(), x).total.flops_sparse


def test_meter_retraces_on_new_input_shape_and_module_swap() -> None:
    model = small_cnn()
    meter = ls.SparsityMeter(model, torch.randn(1, 1, 8, 8))
    meter.measure()
    assert meter.traces == 1
    model[6] = nn.Linear(128, 3)
    assert meter.measure() == ls.measure(model, torch.randn(1, 1, 8, 8))
    assert meter.traces == 2
    meter.example_input = torch.randn(1, 1, 16, 16)
    model[6] = nn.Linear(8 * 8 * 8, 3)
    assert meter.measure().total.flops == ls.measure(model, torch.randn(1, 1, 16, 16)).total.flops
    assert meter.traces == 3


def test_cost_model_is_linear_in_nonzeros() -> None:
    model = small_cnn()
    cost = ls.SparsityMeter(model, torch.randn(1, 1, 8, 8)).cost_model()
    # FLOPs per nonzero: conv0 2*64, conv3 2*16, linear 2
    assert cost.flops_per_nonzero == {"0.weight": 128, "3.weight": 32, "6.weight": 2}
    assert cost.fixed_flops == 0
    assert cost.flops == 128 * 36 + 32 * 288 + 2 * 1280


# --------------------------------------------------------------------------- leaves the model


def test_model_left_as_found() -> None:
    model = small_cnn().train()
    model[0].eval()  # a mix of flags
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    state = copy.deepcopy(model.state_dict())
    hooks = [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]
    ls.measure(model, torch.randn(3, 1, 8, 8), activations=True)
    ls.SparsityMeter(model, torch.randn(1, 1, 8, 8)).measure()
    assert [m.training for m in model.modules()] == [True, False, *[True] * 6]
    for p, g in zip(model.parameters(), grads, strict=True):
        assert torch.equal(p.grad, g)
    for key, value in model.state_dict().items():  # BN running stats included
        assert torch.equal(value, state[key]), key
    assert [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()] == hooks


def test_double_precision_model() -> None:
    model = small_cnn().double()
    report = ls.measure(model, torch.randn(1, 1, 8, 8, dtype=torch.float64), activations=True)
    assert report.total.flops == ls.measure(small_cnn(), torch.randn(1, 1, 8, 8)).total.flops
    assert next(model.parameters()).dtype == torch.float64


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("model", "x", "error", "match"),
    [
        ([nn.Linear(2, 2)], torch.randn(1, 2), TypeError, "must be a torch.nn.Module, got list"),
        (nn.Linear(2, 2), "x", TypeError, "`example_input` must be a Tensor.*got str"),
        (nn.Linear(2, 2), 3, TypeError, "got int"),
        (nn.Linear(2, 2), torch.randn(1, 3), ls.MeasureError, r"Linear forward .*Tensor\(1, 3\)"),
    ],
)
def test_bad_input(model: object, x: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        ls.measure(model, x)  # type: ignore[arg-type]
    with pytest.raises(error, match=match):
        ls.SparsityMeter(model, x)  # type: ignore[arg-type]


class Raises(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("boom: bad batch")


def test_forward_that_raises_keeps_its_message_and_cause() -> None:
    with pytest.raises(ls.MeasureError, match=r"Raises forward failed.*ValueError: boom") as info:
        ls.measure(Raises(), torch.randn(1, 2))
    assert isinstance(info.value.__cause__, ValueError)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"per": "sample"}, r"`per` must be one of \('example', 'batch'\), got 'sample'"),
        ({"batch_size": 0}, "`batch_size` must be a positive int or None, got 0"),
        ({"batch_size": 2.5}, "got 2.5"),
    ],
)
def test_bad_options(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ls.measure(nn.Linear(2, 2), torch.randn(1, 2), **kwargs)


def test_a_model_or_input_the_trace_cannot_follow_is_named() -> None:
    # were "register_forward_pre_hook is not supported on ScriptModules", and "cannot infer
    # the batch size ... pass `batch_size=`" whose advice then failed in forward
    with pytest.raises(TypeError, match=r"`model` is a TorchScript module.*eager module"):
        ls.measure(torch.jit.script(nn.Linear(8, 4)), torch.zeros(2, 8))
    with pytest.raises(TypeError, match=r"holds no tensor \(only float\).*torch.tensor\(data\)"):
        ls.measure(nn.Linear(8, 4), [[1.0] * 8] * 2)


def test_an_empty_weight_costs_nothing() -> None:
    # Linear(0, 4) runs in torch (its output is the bias); it multiplies nothing: 0 FLOPs
    # (was ZeroDivisionError: Fraction(0, 0), reported as a failed forward)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: initializing zero-element tensors
        model = nn.Sequential(nn.Linear(0, 4), nn.Linear(4, 3))
    total = quiet_measure(model, torch.zeros(2, 0)).total
    # 2 * 4 * 3 = 24 FLOPs per example, all of the second layer
    assert (total.flops, total.flops_sparse, total.params) == (24, 24, 4 + 12 + 3)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        # were "'int' object is not iterable" from deep in the pattern parsing
        ({"realizable": 5}, TypeError, r"`realizable` must be True, False or a list of 'N:M'"),
        ({"realizable": None}, TypeError, r"\(e.g. \['2:4'\]\), got None"),
        ({"realizable": ["2:4", "x"]}, ValueError, r"`pattern` must be 'N:M'.*got 'x'"),
    ],
)
def test_bad_realizable_patterns_name_the_value(
    kwargs: dict, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        ls.measure(nn.Linear(2, 2), torch.randn(1, 2), **kwargs)
    with pytest.raises(error, match=match):
        ls.SparsityMeter(nn.Linear(2, 2), torch.randn(1, 2), **kwargs)


def test_activations_must_be_a_bool() -> None:
    # "no" is truthy: it counted effective FLOPs (another forward) where none were asked for
    with pytest.raises(TypeError, match=r"`activations` must be a bool, got 'no'"):
        ls.measure(nn.Linear(2, 2), torch.randn(1, 2), activations="no")  # type: ignore[arg-type]


def test_zero_parameter_model() -> None:
    report = ls.measure(nn.ReLU(), torch.randn(2, 3))
    assert report.total.params == 0
    assert report.total.params_nonzero == 0
    assert report.total.flops == 0
    assert report.total.flops_sparse == 0
    assert report.layers == ()


def test_meta_device_gives_dense_counts_and_no_values() -> None:
    with torch.device("meta"):
        model = small_cnn()
    report = ls.measure(model, torch.empty(1, 1, 8, 8, device="meta"))
    assert report.total.flops == ls.measure(small_cnn(), torch.randn(1, 1, 8, 8)).total.flops
    assert report.total.params == 36 + 4 + 4 + 4 + 288 + 8 + 1280 + 10
    assert report.total.flops_sparse is None
    assert report.total.params_nonzero is None
    with pytest.raises(ValueError, match="activations=True needs real values"):
        ls.measure(model, torch.empty(1, 1, 8, 8, device="meta"), activations=True)


class Fft(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfft(x).abs()


def test_unknown_ops_are_reported_and_warned_once() -> None:
    with pytest.warns(UserWarning, match="no FLOP formula for aten._fft_r2c.default"):
        report = ls.measure(Fft(), torch.randn(2, 8))
    assert report.unsupported == {"aten._fft_r2c.default": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ls.measure(Fft(), torch.randn(2, 8)).unsupported == {"aten._fft_r2c.default": 1}


def test_transformer_encoder_fast_path_is_counted() -> None:
    torch.manual_seed(0)
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2)
    encoder.eval()
    x = torch.randn(1, 5, 16)
    with torch.no_grad():
        assert fcm_flops(encoder, x) == 0  # the fused path is invisible to FlopCounterMode
    # per layer: in-proj 2*5*16*48 + attention 2*2*5*5*16 + out-proj 2*5*16*16
    #            + feed-forward 2*2*5*16*32 = 7,680 + 1,600 + 2,560 + 10,240 = 22,080
    assert ls.measure(encoder, x).total.flops == 2 * 22_080


def test_report_exports_agree(tmp_path: Path) -> None:
    import csv
    import json

    model = small_cnn()
    sparsify_(model[3].weight, 0.5)
    report = ls.measure(model, torch.randn(1, 1, 8, 8))
    text = report.to_csv(tmp_path / "r.csv")
    rows = list(csv.DictReader(text.splitlines()))
    assert [r["name"] for r in rows] == [*(layer.name for layer in report.layers), "total"]
    assert [int(r["flops_sparse"]) for r in rows] == [
        *(layer.flops_sparse for layer in report.layers),
        report.total.flops_sparse,
    ]
    assert (tmp_path / "r.csv").read_text() == text
    data = json.loads(report.to_json(tmp_path / "r.json"))
    assert data == json.loads((tmp_path / "r.json").read_text()) == report.to_dict()
    assert data["total"]["params_nonzero"] == report.total.params_nonzero
    # sums: the total row is the sum of the layer rows
    assert sum(layer.flops for layer in report.layers) == report.total.flops
    table = report.to_markdown()
    assert f"| **total** |  | {report.total.params:,} | {report.total.params_nonzero:,} |" in table
    with pytest.raises(KeyError, match="no layer named 'nope'; layers are"):
        report.layer("nope")


@pytest.mark.parametrize("how", ["prune", "parametrize"])
def test_pruned_weight_read_without_its_module_forward(how: str) -> None:
    """nn.MultiheadAttention reads out_proj.weight but never calls out_proj."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    if how == "prune":
        prune.l1_unstructured(mha.out_proj, "weight", 0.5)
    else:
        mask = (torch.arange(64).reshape(8, 8) % 2).float()
        parametrize.register_parametrization(mha.out_proj, "weight", Mask(mask))
    x = torch.randn(2, 4, 8)
    report = ls.measure(mha, (x, x, x), per="batch")
    # dense 2*2*4*(3*64) + 2*2*2*4*4*8 + 2*2*4*64 = 5,120; out-proj keeps 32 of 64 weights
    assert report.total.flops == 5_120
    assert report.total.flops_sparse == 5_120 - 2 * 2 * 4 * 32
    assert ls.SparsityMeter(mha, (x, x, x), per="batch").measure() == report


class EinsumFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 6, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bi,oi->bo", x, self.lin.weight) + self.lin(x)


@pytest.mark.parametrize("how", ["prune", "parametrize"])
def test_pruned_weight_read_before_its_module_forward(how: str) -> None:
    model = EinsumFirst()
    mask = torch.rand(6, 6, generator=torch.Generator().manual_seed(0)) > 0.5
    if how == "prune":
        prune.custom_from_mask(model.lin, "weight", mask)
    else:
        parametrize.register_parametrization(model.lin, "weight", Mask(mask.float()))
    report = ls.measure(model, torch.randn(1, 6))
    # the weight is used twice, each entry once per use: 2 * 2 * nnz
    assert report.total.flops_sparse == 2 * 2 * int(mask.sum())


def test_tied_weight_pruned_at_one_owner_counts_once() -> None:
    class LM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 8)
            self.head = nn.Linear(8, 10, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.head(self.emb(tokens))

    model = LM()
    prune.l1_unstructured(model.head, "weight", 0.5)
    report = ls.measure(model, torch.tensor([[1, 2, 3]]))
    assert report.total.params == 80  # one 10x8 tensor
    assert report.total.params_nonzero == 40
    assert report.total.flops_sparse == 2 * 3 * 40


def test_empty_batch_and_lazy_modules() -> None:
    with pytest.raises(ValueError, match=r"empty batch: .* shape \(0, 4\)"):
        ls.measure(nn.Linear(4, 3), torch.zeros(0, 4))
    lazy = nn.Sequential(nn.LazyLinear(4), nn.ReLU(), nn.Linear(4, 2))
    meter = ls.SparsityMeter(lazy, torch.zeros(1, 6))  # the trace initializes the weights
    # 2 * (6*4 + 4*2) = 64
    assert meter.measure().total.flops == 64
    assert meter.measure() == ls.measure(lazy, torch.zeros(1, 6))
    assert ls.measure(nn.ReLU(), torch.zeros(1, 3)).total.flops_effective is None


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"per": "batch"}, {"batch_size": 2}, {"per": "batch", "batch_size": 3}],
    ids=["per-example", "per-batch", "batch-size", "per-batch-batch-size"],
)
def test_an_empty_batch_is_refused_however_the_flops_are_divided(kwargs: dict) -> None:
    # zero examples run zero FLOPs: the ratios came out 0/0 = 1.0 (per batch, or with a
    # batch_size) for a model 90% zero, whose ratio on any real batch is its nonzero share
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64, bias=False))
    with torch.no_grad():
        model[0].weight.view(-1)[torch.randperm(4096)[:3686]] = 0  # 410 of 4,096 kept
    assert ls.measure(model, torch.zeros(5, 64), **kwargs).total.flops_ratio == 410 / 4096
    match = r"the example input is an empty batch: its first tensor has shape \(0, 64\)"
    for empty in (torch.zeros(0, 64), {"x": torch.zeros(0, 64)}, (torch.zeros(0, 64),)):
        with pytest.raises(ValueError, match=match):
            ls.measure(model, empty, **kwargs)
        with pytest.raises(ValueError, match=match):
            ls.SparsityMeter(model, empty, **kwargs)
    meter = ls.SparsityMeter(model, torch.zeros(5, 64), **kwargs)
    meter.example_input = torch.zeros(0, 64)  # replaced by an empty one: refused at the count
    with pytest.raises(ValueError, match=match):
        meter.measure()
    # a list of examples (detection's convention) that is empty
    with pytest.raises(ValueError, match=r"empty batch: its first argument is an empty list"):
        ls.measure(model, ([],), **kwargs)


def test_retrace_sees_an_in_place_stride_change() -> None:
    conv = nn.Conv2d(1, 2, 3, padding=1)
    meter = ls.SparsityMeter(conv, torch.zeros(1, 1, 8, 8))
    conv.stride = (2, 2)  # invisible to the meter's structure check
    meter.retrace()
    # 2 * (4*4) * (2*1*3*3) = 576
    assert (
        meter.measure().total.flops == 576 == ls.measure(conv, torch.zeros(1, 1, 8, 8)).total.flops
    )


# --------------------------------------------------------------------------- batch size


def quiet_measure(model: nn.Module, x: object, **kwargs: object) -> ls.SparsityReport:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return ls.measure(model, x, **kwargs)  # type: ignore[arg-type]


def test_unbatched_vector_warns_and_batch_size_one_is_exact() -> None:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 3))
    with pytest.warns(UserWarning, match=r"divided by 20, .*shape \(20,\).* 1-D.*batch_size=1"):
        report = ls.measure(mlp, torch.zeros(20))
    assert report.batch_size == 20  # as asked for, only warned about
    # one example: 2 * (20*64 + 64*3) = 2 * 1,472 = 2,944 (bias adds not counted)
    exact = quiet_measure(mlp, torch.zeros(20), batch_size=1)
    assert exact.total.flops == 2_944 == fcm_flops(mlp, torch.zeros(20))
    assert quiet_measure(mlp, torch.zeros(20), per="batch").total.flops == 2_944
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        meter = ls.SparsityMeter(mlp, torch.zeros(20))
        meter.measure()
        meter.retrace()
        meter.measure()
    assert [str(w.message).count("batch_size=1") for w in record] == [1]  # once per meter


def test_an_explicit_batch_size_the_input_or_the_ops_contradict_is_warned_about() -> None:
    # 3 examples cannot be split out of a (2, 8) input: per example would be 2*2*8*4/3 =
    # 42.67, no example's cost
    linear = nn.Linear(8, 4)
    with pytest.warns(
        UserWarning, match=r"divided by 3, the batch_size given, but no dim.*\(2, 8\)"
    ):
        assert ls.measure(linear, torch.zeros(2, 8), batch_size=3).total.flops == 2 * 2 * 8 * 4 / 3
    # (T=5, B=2, F=8) with batch_size=2: dim 1 holds the examples, 2 * 5 * 8 * 4 = 320 each
    assert quiet_measure(linear, torch.zeros(5, 2, 8), batch_size=2).total.flops == 320
    # a time-major LSTM ran on batch 2: batch_size=3 divides T=6 but not what the LSTM ran on
    lstm = nn.LSTM(8, 16)
    match = r"batch_size given, but LSTM \(aten.mkldnn_rnn_layer\) ran on batch 2.*batch_size=2"
    with pytest.warns(UserWarning, match=match):
        ls.measure(lstm, torch.zeros(6, 2, 8), batch_size=3)
    # per example: 2 * T * (F*4H + H*4H) = 2 * 6 * (8*64 + 16*64) = 18,432
    assert quiet_measure(lstm, torch.zeros(6, 2, 8), batch_size=2).total.flops == 18_432


def test_time_major_lstm_warns_and_batch_size_gives_the_closed_form() -> None:
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 5)
    sparsify_(lstm.weight_ih_l0, 0.5, seed=1)
    sparsify_(lstm.weight_hh_l0, 0.5, seed=2)
    x = relu_input(10, 4, 3)  # [T=10, B=4, F=3]
    match = r"LSTM \(aten.mkldnn_rnn_layer\) ran on batch 4, not a multiple of 10.*batch_size=4"
    with pytest.warns(UserWarning, match=match):
        assert ls.measure(lstm, x).total.flops == 2 * 4 * (3 * 20 + 5 * 20)  # T/B-fold short
    sparse, _, outputs = brute.recurrent_products(
        x, lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0, "lstm"
    )
    with torch.no_grad():
        torch.testing.assert_close(lstm(x)[0], outputs)
    report = quiet_measure(lstm, x, batch_size=4)
    # per example: 2 * T * (F*4H + H*4H) = 2 * 10 * (3*20 + 5*20) = 3,200
    assert report.total.flops == 3_200
    assert report.total.flops_sparse == sparse / 4
    # batch first, the same data: dim 0 is the batch, and the LSTM agrees
    batch_first = nn.LSTM(3, 5, batch_first=True)
    assert quiet_measure(batch_first, x.transpose(0, 1)).total.flops == 3_200


class Detector(nn.Module):
    """Takes a list of [3, H, W] images, as torchvision's detection models do."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, images: list[torch.Tensor]) -> torch.Tensor:
        return self.conv(torch.stack(images))


class OneImage(Detector):
    def forward(self, image: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.conv(image[None])


def test_list_of_images_is_a_batch_of_examples() -> None:
    model = Detector()
    img = torch.randn(3, 6, 6)
    # per image: 2 * (6*6) * (4*3*3*3) = 7,776
    one = quiet_measure(model, ([img],))
    assert one.batch_size == 1
    assert one.total.flops == 7_776
    two = quiet_measure(model, ([img, img],))
    assert two.batch_size == 2
    assert two.total.flops == 7_776
    assert quiet_measure(model, {"images": [img, img, img]}).batch_size == 3
    # one unbatched image: dim 0 is its 3 channels, and the convolution says batch 1
    match = r"Conv2d \(aten.convolution\) ran on batch 1, not a multiple of 3.*batch_size=1"
    with pytest.warns(UserWarning, match=match):
        assert ls.measure(OneImage(), img).total.flops == 7_776 / 3
    assert quiet_measure(OneImage(), img, batch_size=1).total.flops == 7_776


class Video(nn.Module):
    """Folds time into the convolution's batch: [B, T, C, H, W] -> [B*T, C, H, W]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.pos = nn.Parameter(torch.randn(1, 3, 4, 4))
        self.pos_conv = nn.Conv2d(3, 3, 1)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        frames = clip.flatten(0, 1)
        # a conv on a parameter (batch 1) says nothing about the input's batch
        frames = frames + F.conv2d(self.pos, self.pos_conv.weight)
        return self.conv(frames).unflatten(0, clip.shape[:2])


def test_video_folding_time_into_the_batch_does_not_warn() -> None:
    report = quiet_measure(Video(), torch.randn(2, 5, 3, 4, 4))
    assert report.batch_size == 2
    # per clip: 5 frames * 2 * (4*4) * (2*3*3*3) + the positional conv 2 * 16 * 9 / 2 clips
    assert report.total.flops == 5 * 2 * 16 * 54 + 2 * 16 * 9 / 2


class TimeMajorAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [T, B, E]
        x = x.transpose(0, 1)
        return self.mha(x, x, x, need_weights=False)[0]


def test_fused_attention_batch_is_evidence() -> None:
    model = TimeMajorAttention().eval()
    x = torch.randn(5, 2, 8)
    match = r"MultiheadAttention \(aten._native_multi_head_attention\) ran on batch 2,"
    with torch.no_grad(), pytest.warns(UserWarning, match=match):
        ls.measure(model, x)
    with torch.no_grad():
        assert quiet_measure(model.mha, (x, x, x)).batch_size == 5  # agrees: [B=5, L=2, E]


def test_meter_follows_a_replaced_example_input() -> None:
    model = small_cnn()
    meter = ls.SparsityMeter(model, torch.randn(1, 1, 8, 8))
    per_example = meter.measure().total.flops
    meter.example_input = torch.randn(4, 1, 8, 8)
    report = meter.measure()
    assert report.batch_size == 4
    assert report.total.flops == per_example
    assert meter.cost_model().flops == per_example


def test_footer_says_what_the_flops_were_divided_by() -> None:
    mlp = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 3))
    report = quiet_measure(mlp, torch.zeros(20, 20))
    assert report.to_markdown().endswith(
        "FLOPs per example: the example input's FLOPs divided by its batch size 20"
        " (2 FLOPs = 1 MAC)."
    )
    assert report.to_dict()["batch_size"] == 20
    assert '"batch_size": 20' in report.to_json()
    per_batch = quiet_measure(mlp, torch.zeros(20, 20), per="batch")
    assert per_batch.batch_size == 20
    assert per_batch.to_markdown().endswith(
        "FLOPs per batch of 20 examples: the example input's FLOPs as given (2 FLOPs = 1 MAC)."
    )
    # a batch size the evidence doubts is not stated per batch (and not warned about)
    lstm_batch = quiet_measure(nn.LSTM(3, 5), torch.zeros(10, 4, 3), per="batch")
    assert lstm_batch.batch_size is None
    assert lstm_batch.to_dict()["batch_size"] is None
    assert lstm_batch.to_markdown().endswith(
        "FLOPs per batch: the example input's FLOPs as given (2 FLOPs = 1 MAC)."
    )
    assert quiet_measure(mlp, torch.zeros(20), per="batch", batch_size=1).batch_size == 1
