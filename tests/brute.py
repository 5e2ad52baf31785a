"""Brute-force multiplication counts, written independently of the library's formulas.

Each function walks the products an op performs one position at a time and counts those
whose weight is nonzero (sparse) or whose two operands are nonzero (effective). Every count
is returned in FLOPs (2 per multiplication). Only for tiny shapes.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor


def nz(t: Tensor) -> Tensor:
    return (t != 0).to(torch.int64)


def matmul_products(a: Tensor, b: Tensor) -> int:
    """Products of a[..., m, k] * b[..., k, n] with both nonzero: broadcast, no matmul."""
    both = nz(a)[..., :, :, None] * nz(b)[..., None, :, :]
    return 2 * int(both.sum())


def conv_products(
    x: Tensor,
    w: Tensor,
    *,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    groups: int = 1,
    transposed: bool = False,
    count_input_zeros: bool = False,
) -> int:
    """Products of an N-d (transposed) convolution, visited position by position.

    ``count_input_zeros=True`` counts every product with a nonzero weight (sparse FLOPs:
    padding included, as the dense count has it); otherwise both operands must be nonzero.
    """
    spatial = x.dim() - 2
    xi = torch.ones_like(x, dtype=torch.int64) if count_input_zeros else nz(x)
    wi = nz(w)
    kernel = w.shape[2:]
    total = 0
    if not transposed:
        # w: [Cout, Cin/g, k...]; out[o] += x[o*s - p + k*d] * w[k]
        cin_g, cout_g = w.shape[1], w.shape[0] // groups
        out_size = [
            (x.shape[2 + i] + 2 * padding - dilation * (kernel[i] - 1) - 1) // stride + 1
            for i in range(spatial)
        ]
        for o in itertools.product(*[range(n) for n in out_size]):
            for k in itertools.product(*[range(n) for n in kernel]):
                pos = [o[i] * stride - padding + k[i] * dilation for i in range(spatial)]
                inside = all(0 <= pos[i] < x.shape[2 + i] for i in range(spatial))
                if inside:
                    xs = xi[(slice(None), slice(None), *pos)]  # [N, Cin]
                elif count_input_zeros:  # a padded position: a product by zero, still dense
                    xs = torch.ones(x.shape[0], x.shape[1], dtype=torch.int64)
                else:
                    continue
                for g in range(groups):
                    xg = xs[:, g * cin_g : (g + 1) * cin_g]  # [N, Cin/g]
                    wg = wi[(slice(g * cout_g, (g + 1) * cout_g), slice(None), *k)]
                    total += int((xg[:, None, :] * wg[None, :, :]).sum())
        return 2 * total
    # transposed: w [Cin, Cout/g, k...]; every input position meets every kernel offset
    cin_g = w.shape[0] // groups
    for i in itertools.product(*[range(n) for n in x.shape[2:]]):
        xs = xi[(slice(None), slice(None), *i)]  # [N, Cin]
        for k in itertools.product(*[range(n) for n in kernel]):
            for g in range(groups):
                xg = xs[:, g * cin_g : (g + 1) * cin_g]
                wg = wi[(slice(g * cin_g, (g + 1) * cin_g), slice(None), *k)]  # [Cin/g, Cout/g]
                total += int((xg[:, :, None] * wg[None, :, :]).sum())
    return 2 * total


def attention_products(q: Tensor, k: Tensor, v: Tensor, p: Tensor) -> int:
    """Scores q @ k^T and p @ v, both operands nonzero."""
    return matmul_products(q, k.transpose(-2, -1)) + matmul_products(p, v)


def _lstm_cell(gi: Tensor, gh: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    i, f, g, o = (gi + gh).chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _gru_cell(gi: Tensor, gh: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    (ri, zi, ni), (rh, zh, nh) = gi.chunk(3, dim=1), gh.chunk(3, dim=1)
    r, z = torch.sigmoid(ri + rh), torch.sigmoid(zi + zh)
    n = torch.tanh(ni + r * nh)
    return (1 - z) * n + z * h, c


def recurrent_products(
    x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor, cell: str
) -> tuple[int, int, Tensor]:
    """A single-layer LSTM or GRU (x [T, B, In]) run step by step with explicit products.

    Returns:
        (sparse FLOPs, effective FLOPs, the output sequence) — the output lets the test check
        that this is the same computation the module does.
    """
    step = {"lstm": _lstm_cell, "gru": _gru_cell}[cell]
    h = torch.zeros(x.shape[1], w_hh.shape[1])
    c = torch.zeros_like(h)
    sparse = effective = 0
    outputs = []
    for t in range(x.shape[0]):
        for inp, w in ((x[t], w_ih), (h, w_hh)):
            sparse += 2 * inp.shape[0] * int(nz(w).sum())
            effective += matmul_products(inp, w.t())
        h, c = step(x[t] @ w_ih.t() + b_ih, h @ w_hh.t() + b_hh, h, c)
        outputs.append(h)
    return sparse, effective, torch.stack(outputs)


def softmax_probs(q: Tensor, k: Tensor, causal: bool = False) -> Tensor:
    scores = q.double() @ k.double().transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        length, s = q.shape[-2], k.shape[-2]
        scores = scores.masked_fill(~torch.ones(length, s, dtype=torch.bool).tril(), -math.inf)
    return torch.softmax(scores, dim=-1)


def bilinear_products(
    x1: Tensor, w: Tensor, x2: Tensor, *, unroll: str = "k"
) -> tuple[int, int, Tensor]:
    """``aten._trilinear`` as ``nn.Bilinear`` calls it (no bias), one product at a time.

    x1 [N, I], w [K, I, J], x2 [N, J]; y[n, k] = sum_ij x1[n, i] w[k, i, j] x2[n, j]. ATen
    unrolls one dim and contracts pairwise: with ``unroll="k"`` (nn.Bilinear's unroll_dim=1)
    t[n, k, j] = sum_i x1[n, i] w[k, i, j], then y[n, k] = sum_j t[n, k, j] x2[n, j]; with
    ``unroll="i"`` (unroll_dim=2) t[n, k, i, j] = x1[n, i] w[k, i, j] is not summed over i
    before it meets x2.

    Returns:
        (sparse FLOPs: products whose weight entry is nonzero, the second contraction being
        between activations; effective FLOPs: both operands nonzero; y in float64).
    """
    n_, i_ = x1.shape
    k_, _, j_ = w.shape
    a, b, c = x1.double().tolist(), w.double().tolist(), x2.double().tolist()
    y = torch.zeros(n_, k_, dtype=torch.float64)
    sparse = effective = 0
    for n, k, j in itertools.product(range(n_), range(k_), range(j_)):
        terms = []
        for i in range(i_):
            sparse += b[k][i][j] != 0
            effective += a[n][i] != 0 and b[k][i][j] != 0
            terms.append(a[n][i] * b[k][i][j])
        for t in terms if unroll == "i" else [sum(terms)]:
            sparse += 1
            effective += t != 0 and c[n][j] != 0
            y[n, k] += t * c[n][j]
    return 2 * sparse, 2 * effective, y


def sparsify_(t: Tensor, fraction: float, seed: int = 0) -> Tensor:
    """Zero a random ``fraction`` of ``t`` in place (values, not a mask)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        t.mul_((torch.rand(t.shape, generator=g) >= fraction).to(t.dtype))
    return t


def relu_input(*shape: int, seed: int = 1) -> Tensor:
    """A seeded input with about half its entries zero (as after a ReLU)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).relu()
