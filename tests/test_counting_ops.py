"""The op set: free ops that are no gaps, and the matmul-like ops with their own formula."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import lightning_sparsity as ls
from lightning_sparsity.counting.formulas import REGISTRY, is_free
from tests import brute
from tests.brute import relu_input, sparsify_
from tests.test_counting import SDPA

aten = torch.ops.aten


def fcm_flops(fn: Callable[[], object]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def measure_quietly(model: nn.Module, x: object, **kwargs: object) -> ls.SparsityReport:
    """``ls.measure`` with every warning an error: no unsupported op, no batch doubt."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return ls.measure(model, x, **kwargs)  # type: ignore[arg-type]


class Then(nn.Module):
    """A counted layer followed by a free function."""

    def __init__(self, layer: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.layer = layer
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.layer(x))


def _transpose_(y: torch.Tensor) -> torch.Tensor:
    return y.clone().transpose_(0, 1)


def _as_strided_(y: torch.Tensor) -> torch.Tensor:
    return y.clone().as_strided_((y.numel() // 2,), (2,))


def _grid_sample(y: torch.Tensor) -> torch.Tensor:
    grid = torch.linspace(-1, 1, 6).reshape(1, 2, 3, 1).expand(y.shape[0], 2, 3, 2)
    return F.grid_sample(y, grid, align_corners=False)


LIN, CONV2D, CONV3D = 2 * 2 * 4 * 6, 2 * 2 * (4 * 4) * (4 * 2 * 3 * 3), 2 * 2 * 8 * (3 * 2 * 8)
FREE = [
    # (case, model, input, dense FLOPs of its Linear / Conv: 2 * N * outputs * weights)
    ("hardswish", Then(nn.Linear(4, 6), nn.Hardswish()), (2, 4), LIN),
    ("hardswish_", Then(nn.Linear(4, 6), nn.Hardswish(inplace=True)), (2, 4), LIN),
    ("glu", Then(nn.Linear(4, 6), F.glu), (2, 4), LIN),
    ("prelu", Then(nn.Linear(4, 6), nn.PReLU()), (2, 4), LIN),
    ("transpose_", Then(nn.Linear(4, 6), _transpose_), (2, 4), LIN),
    ("as_strided_", Then(nn.Linear(4, 6), _as_strided_), (2, 4), LIN),
    ("linspace", Then(nn.Linear(4, 6), lambda y: y * torch.linspace(0, 1, 6)), (2, 4), LIN),
    (
        "unique",
        Then(nn.Linear(4, 6), lambda y: torch.unique(y.round(), return_counts=True)[1]),
        (2, 4),
        LIN,
    ),
    ("grid_sample", Then(nn.Conv2d(2, 4, 3, padding=1), _grid_sample), (2, 2, 4, 4), CONV2D),
    (
        "bicubic",
        Then(
            nn.Conv2d(2, 4, 3, padding=1),
            lambda y: F.interpolate(y, scale_factor=2, mode="bicubic"),
        ),
        (2, 2, 4, 4),
        CONV2D,
    ),
    (
        "bicubic antialias",
        Then(
            nn.Conv2d(2, 4, 3, padding=1),
            lambda y: F.interpolate(y, size=(3, 3), mode="bicubic", antialias=True),
        ),
        (2, 2, 4, 4),
        CONV2D,
    ),
    (
        "trilinear",
        Then(nn.Conv3d(3, 2, 2), lambda y: F.interpolate(y, scale_factor=2, mode="trilinear")),
        (2, 3, 3, 3, 3),
        CONV3D,
    ),
    (
        "linear1d",
        Then(nn.Conv1d(3, 2, 3), lambda y: F.interpolate(y, scale_factor=2, mode="linear")),
        (2, 3, 6),
        2 * 2 * 4 * 18,
    ),
    # nn.Linear without bias on one unbatched vector runs mm, then an in-place squeeze_
    ("squeeze_", nn.Linear(4, 6, bias=False), (4,), 2 * 4 * 6),
]


@pytest.mark.parametrize(("case", "model", "shape", "dense"), FREE, ids=[c[0] for c in FREE])
def test_free_ops_are_neither_unsupported_nor_warned(
    case: str, model: nn.Module, shape: tuple[int, ...], dense: int
) -> None:
    report = measure_quietly(model, torch.randn(*shape), per="batch")
    assert report.unsupported == {}
    assert report.total.flops == dense


class Bag(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(10, 4, mode="sum")
        self.head = nn.Linear(4, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.bag(tokens))


def test_embedding_bag_is_free_and_its_table_a_parameter() -> None:
    report = measure_quietly(Bag(), torch.tensor([[1, 2, 3], [4, 5, 6]]))
    assert report.unsupported == {}
    assert report.total.flops == 2 * 4 * 3  # per example: the head only
    assert report.layer("bag").params == 40


FREE_OVERLOADS = [
    aten.hardswish.default,
    aten.hardswish_.default,
    aten.as_strided_.default,
    aten.linspace.default,
    aten.grid_sampler_2d.default,
    aten.glu.default,
    aten._prelu_kernel.default,
    aten.upsample_bicubic2d.default,
    aten.upsample_bicubic2d.vec,  # decomposed into .default before a dispatch mode sees it
    aten.upsample_trilinear3d.default,
    aten.upsample_trilinear3d.vec,
    aten.transpose_.default,
    aten.squeeze_.dim,
    aten.unsqueeze_.default,
    aten._unique2.default,
    aten._embedding_bag.default,
]


@pytest.mark.parametrize("op", FREE_OVERLOADS, ids=str)
def test_free_overloads(op: torch._ops.OpOverload) -> None:
    assert is_free(op)
    assert op not in REGISTRY


MORE_FREE: list[tuple[str, Callable[[torch.Tensor], object]]] = [
    # reductions, scans, sorting, indexing and creation, resampling, losses: no matmul
    ("prod", lambda y: y.prod()),
    ("cumprod", lambda y: y.cumprod(0)),
    ("cummax", lambda y: y.cummax(0)),
    ("logcumsumexp", lambda y: y.logcumsumexp(0)),
    ("logsumexp", lambda y: y.logsumexp(0)),
    ("median", lambda y: (y.median(), y.nanmedian(), y.kthvalue(2, 0), y.mode(0))),
    ("masked_select", lambda y: y.masked_select(y > 0)),
    ("rot90 diag", lambda y: (y.rot90(), torch.diag(y[0]), torch.tril_indices(3, 3))),
    ("bucketize", lambda y: torch.bucketize(y, torch.tensor([0.0, 1.0]))),
    ("histc", lambda y: torch.histc(y)),
    ("channel_shuffle", lambda y: F.channel_shuffle(y.reshape(1, 4, 3, 1), 2)),
    ("affine_grid", lambda y: F.affine_grid(torch.zeros(1, 2, 3), [1, 1, 2, 2], False)),
    ("nearest-exact", lambda y: F.interpolate(y[None], size=5, mode="nearest-exact")),
    ("sampling", lambda y: (torch.multinomial(y.softmax(-1), 1), torch.randint(0, 3, (2,)))),
    ("logsigmoid", F.logsigmoid),
    ("cross_entropy", lambda y: F.cross_entropy(y, torch.tensor([0, 1, 2, 0]))),
    ("regression losses", lambda y: (F.mse_loss(y, y), F.smooth_l1_loss(y, y), F.l1_loss(y, y))),
    ("bce", lambda y: F.binary_cross_entropy_with_logits(y, y.sigmoid())),
]


@pytest.mark.parametrize(("case", "fn"), MORE_FREE, ids=[c[0] for c in MORE_FREE])
def test_more_free_ops(case: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    report = measure_quietly(Then(nn.Linear(3, 3), fn), torch.randn(4, 3), per="batch")
    assert report.unsupported == {}
    assert report.total.flops == 2 * 4 * 3 * 3


# --------------------------------------------------------------------------- mv, dot, ...


class Call(nn.Module):
    """``fn(x, weight)`` with a parameter of the given shape."""

    def __init__(self, fn: Callable[..., torch.Tensor], *shape: int, seed: int = 0) -> None:
        super().__init__()
        self.fn = fn
        self.w = nn.Parameter(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, self.w)


def einsum_products(spec: str, a: torch.Tensor, b: torch.Tensor) -> int:
    """FLOPs of the products ``a * b`` over the index grid of ``spec`` with both nonzero."""
    return 2 * int(torch.einsum(spec, brute.nz(a), brute.nz(b)))


MATMUL_LIKE = [
    # (case, fn(x, w), x shape, w shape, einsum of x and w, uses of each w entry, FCM twin)
    # mv [M, K] @ [K]: 2MK; the matrix is the weight (used once per entry) ...
    (
        "mv weight matrix",
        lambda x, w: torch.mv(w, x),
        (5,),
        (3, 5),
        "k,mk->",
        1,
        lambda x, w: torch.mm(w, x[:, None]),
    ),
    # ... or the vector (used M times per entry)
    (
        "mv weight vector",
        lambda x, w: torch.mv(x, w),
        (3, 5),
        (5,),
        "mk,k->",
        3,
        lambda x, w: torch.mm(x, w[:, None]),
    ),
    # dot [K] . [K]: 2K
    (
        "dot",
        lambda x, w: torch.dot(x, w),
        (6,),
        (6,),
        "k,k->",
        1,
        lambda x, w: torch.mm(x[None], w[:, None]),
    ),
    # vdot: dot with the first operand conjugated
    (
        "vdot",
        lambda x, w: torch.vdot(x, w),
        (6,),
        (6,),
        "k,k->",
        1,
        lambda x, w: torch.mm(x[None], w[:, None]),
    ),
    # addmv bias + [M, K] @ [K]: 2MK, the bias add not counted
    (
        "addmv",
        lambda x, w: torch.addmv(torch.ones(3), w, x),
        (5,),
        (3, 5),
        "k,mk->",
        1,
        lambda x, w: torch.addmm(torch.ones(3, 1), w, x[:, None]),
    ),
    # addbmm bias + sum_b [B, M, K] @ [B, K, N]: 2BMKN, each weight entry used M times
    (
        "addbmm",
        lambda x, w: torch.addbmm(torch.ones(3, 2), x, w),
        (4, 3, 5),
        (4, 5, 2),
        "bmk,bkn->",
        3,
        lambda x, w: torch.bmm(x, w),
    ),
]


@pytest.mark.parametrize(
    ("case", "fn", "x_shape", "w_shape", "spec", "uses", "twin"),
    MATMUL_LIKE,
    ids=[c[0] for c in MATMUL_LIKE],
)
def test_matmul_like_ops_match_brute_force(
    case: str,
    fn: Callable[..., torch.Tensor],
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    spec: str,
    uses: int,
    twin: Callable[..., torch.Tensor],
) -> None:
    model = Call(fn, *w_shape)
    sparsify_(model.w, 0.5, seed=2)
    x = relu_input(*x_shape)
    dense = einsum_products(spec, torch.ones(x_shape), torch.ones(w_shape))

    report = measure_quietly(model, x, activations=True, per="batch")

    assert report.unsupported == {}
    assert report.total.flops == dense
    assert report.total.flops_sparse == 2 * uses * int(model.w.count_nonzero())
    assert report.total.flops_effective == einsum_products(spec, x, model.w)
    assert 0 < report.total.flops_effective < report.total.flops_sparse < dense
    # FlopCounterMode has no formula for mv, dot, vdot, addmv or addbmm and counts 0 (with
    # or without grad); the same products through mm / addmm / bmm it counts as we do
    with torch.no_grad():
        assert fcm_flops(lambda: fn(x, model.w)) == 0
        assert fcm_flops(lambda: twin(x, model.w)) == dense


def test_matmul_of_vectors_dispatches_to_the_counted_ops() -> None:
    model = Call(lambda x, w: (w @ x) @ (w @ x), 4, 3)  # mv twice, then dot
    assert measure_quietly(model, torch.randn(3), per="batch").total.flops == 2 * (12 + 12 + 4)


# --------------------------------------------------------------------------- bilinear


def bilinear_closed_form(n: int, k: int, i: int, j: int) -> int:
    # x1 [N, I] with W [K, I, J] over I, then with x2 [N, J] over J
    return 2 * n * k * i * j + 2 * n * k * j


class FunctionalBilinear(nn.Module):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return F.bilinear(x1, x2, self.weight)


@pytest.mark.parametrize("functional", [False, True], ids=["nn.Bilinear", "F.bilinear"])
def test_bilinear_matches_brute_force(functional: bool) -> None:
    torch.manual_seed(0)
    layer = nn.Bilinear(3, 5, 4)  # I = 3, J = 5, K = 4
    sparsify_(layer.weight, 0.5, seed=3)
    x1, x2 = relu_input(3, 3, seed=4), relu_input(3, 5, seed=5)  # N = 3
    with torch.no_grad():
        x1[0] = 0  # a row of x1 W all zero: the second contraction skips it
    sparse, effective, y = brute.bilinear_products(x1, layer.weight, x2)
    with torch.no_grad():
        torch.testing.assert_close(layer(x1, x2) - layer.bias, y.float())
    model = FunctionalBilinear(layer.weight) if functional else layer

    report = measure_quietly(model, (x1, x2), activations=True, per="batch")

    assert report.unsupported == {}
    assert report.total.flops == bilinear_closed_form(3, 4, 3, 5) == 2 * 180 + 2 * 60
    # the first contraction scales with nnz(W), each entry used N = 3 times; the second
    # is between two activations
    assert report.total.flops_sparse == 2 * 3 * int(layer.weight.count_nonzero()) + 2 * 60
    assert report.total.flops_sparse == sparse
    assert report.total.flops_effective == effective
    assert 0 < effective < sparse < report.total.flops
    # FlopCounterMode has no formula for aten._trilinear (0); the same contractions written
    # as two einsums it counts (as bmm) like we do
    with torch.no_grad():
        assert fcm_flops(lambda: model(x1, x2)) == 0
        twin = fcm_flops(
            lambda: torch.einsum("nkj,nj->nk", torch.einsum("ni,kij->nkj", x1, layer.weight), x2)
        )
    assert twin == bilinear_closed_form(3, 4, 3, 5)


def test_bilinear_on_more_dims_and_its_cost_model() -> None:
    torch.manual_seed(0)
    layer = nn.Bilinear(3, 2, 4)
    sparsify_(layer.weight, 0.5, seed=6)
    x1, x2 = torch.randn(2, 5, 3), torch.randn(2, 5, 2)  # flattened to N = 10 rows
    report = measure_quietly(layer, (x1, x2))
    # per example (batch 2): 5 rows each
    assert report.total.flops == bilinear_closed_form(5, 4, 3, 2)
    assert report.total.flops_sparse == 2 * 5 * int(layer.weight.count_nonzero()) + 2 * 5 * 4 * 2
    cost = ls.SparsityMeter(layer, (x1, x2)).cost_model()
    assert cost.flops_per_nonzero == {"weight": 2 * 5}
    assert cost.fixed_flops == 2 * 5 * 4 * 2  # the weight-free second contraction


class Trilinear(nn.Module):
    """``aten._trilinear`` in nn.Bilinear's layout, unrolled over another dim."""

    def __init__(self, unroll_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 3, 5))
        self.unroll_dim = unroll_dim

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return aten._trilinear(x1, self.weight, x2, [1, 3], [0], [1, 2], [2, 3], self.unroll_dim)


@pytest.mark.parametrize(("unroll_dim", "unroll"), [(1, "k"), (2, "i")], ids=["K", "I"])
def test_trilinear_follows_the_unrolled_dim(unroll_dim: int, unroll: str) -> None:
    """Unrolled over the summed I, the first contraction is a plain product, not a bmm."""
    model = Trilinear(unroll_dim)
    sparsify_(model.weight, 0.4, seed=7)
    x1, x2 = relu_input(3, 3, seed=8), relu_input(3, 5, seed=9)
    sparse, effective, y = brute.bilinear_products(x1, model.weight, x2, unroll=unroll)
    with torch.no_grad():
        torch.testing.assert_close(model(x1, x2), y.float())
    report = measure_quietly(model, (x1, x2), activations=True, per="batch")
    n, k, i, j = 3, 4, 3, 5
    second = n * k * j if unroll == "k" else n * k * i * j  # over J, per unrolled i or not
    assert report.total.flops == 2 * n * k * i * j + 2 * second
    assert report.total.flops_sparse == sparse
    assert report.total.flops_effective == effective


# --------------------------------------------------------------------------- attention


class EagerAttention(nn.Module):
    def __init__(self, causal: bool) -> None:
        super().__init__()
        self.causal = causal

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        if self.causal:
            keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
            scores = scores.masked_fill(~keep, float("-inf"))
        return scores.softmax(-1) @ v


def test_causal_attention_counts_the_full_square() -> None:
    """Dense FLOPs of causal attention are the full T x T (eager and SDPA), as
    FlopCounterMode counts them; the masked half shows only in effective FLOPs."""
    q, k = torch.randn(2, 3, 6, 4), torch.randn(2, 3, 6, 4)
    v = torch.randn(2, 3, 6, 5)
    # 2*B*H*L*S*(E + Ev) = 2*2*3*6*6*(4 + 5)
    closed_form = 2 * 2 * 3 * 6 * 6 * (4 + 5)
    counts = {
        (kind.__name__, causal): measure_quietly(kind(causal), (q, k, v), per="batch")
        for kind in (SDPA, EagerAttention)
        for causal in (False, True)
    }
    assert {r.total.flops for r in counts.values()} == {closed_form}
    assert fcm_flops(lambda: EagerAttention(True)(q, k, v)) == closed_form
    causal = ls.measure(SDPA(True), (q, k, v), activations=True, per="batch")
    full = ls.measure(SDPA(False), (q, k, v), activations=True, per="batch")
    assert causal.total.flops_effective < full.total.flops_effective  # zeros are data
