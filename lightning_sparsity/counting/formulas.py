"""One registry of per-op FLOP formulas.

Convention: **1 MAC = 2 FLOPs**, as in ``torch.utils.flop_counter`` and Lightning's
``measure_flops``. Bias adds, norms, activations and pooling are not counted (this matches
torchvision's published ``_ops``).

Each registered aten op has

* a *dense* formula: a pure function of the op's argument shapes returning a list of
  :class:`Use` — parts of the op's cost, each naming which positional operand may be a
  weight (the sparse count scales that part by ``nnz(weight) / numel(weight)``; every
  registered op uses each weight element equally often, so the scaling is exact), and
* an *effective* formula: the exact number of multiplications (MACs) whose two operands
  are both nonzero, computed with indicator tensors in float64 with autocast off, one
  0-dim tensor per :class:`Use` (no host sync); the tracer doubles it into FLOPs, and
* optionally a *batch* function: the batch size the op ran on, for ops whose batch
  dimension is known (a convolution's dim 0), a Python int read off a shape. The meter
  checks the batch size it divides FLOPs by against these.

Backward ops that fuse several products in one kernel (``convolution_backward``, the CPU
LSTM layer's backward, the attention backwards) have dense formulas too, used by the
training trace (:func:`lightning_sparsity.counting.trace.trace_training`): a part that
computes the gradient of an operand names it in :attr:`Use.grad_of`. They have no effective
formula (effective FLOPs are counted for the forward pass only). Generic products met in
the backward (mm, bmm, addmm) are the forward's formulas.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

aten = torch.ops.aten

__all__ = ["FREE_NAMESPACES", "FREE_OPS", "REGISTRY", "Formula", "Use", "is_free", "register"]


@dataclass(frozen=True)
class Use:
    """One part of an op's dense cost.

    Attributes:
        flops: dense FLOPs of this part (2 per MAC).
        weights: positional indices of operands that may be a weight, in order of
            preference; empty for parts between two activations (attention scores).
        grad_of: in a backward op, the positional index of the operand whose gradient
            this part computes (a weight gradient when that operand is a weight).
    """

    flops: int
    weights: tuple[int, ...] = ()
    grad_of: int | None = None


DenseFn = Callable[..., list[Use]]
EffectiveFn = Callable[..., list[Tensor]]
BatchFn = Callable[..., int]


@dataclass(frozen=True)
class Formula:
    """The registered cost of one aten op.

    Attributes:
        op: the aten overload.
        dense: its dense formula.
        effective: its effective formula.
        batch: the batch size the op ran on (same arguments as ``dense``, no ``result``);
            ``None`` for ops without a known batch dimension (a matmul's rows may be
            examples, tokens or pixels).
    """

    op: torch._ops.OpOverload
    dense: DenseFn
    effective: EffectiveFn
    batch: BatchFn | None = None


REGISTRY: dict[torch._ops.OpOverload, Formula] = {}


def register(
    *ops: Any, effective: EffectiveFn, batch: BatchFn | None = None
) -> Callable[[DenseFn], DenseFn]:
    """Register ``dense`` (decorated) and ``effective`` formulas for aten overloads.

    Args:
        *ops: ``torch.ops.aten`` overloads, e.g. ``aten.mm.default``.
        effective: the effective-FLOP formula, same arguments as the dense one.
        batch: the batch size the op ran on, for ops with a known batch dimension.

    Returns:
        The decorator, which returns the dense function unchanged.

    Raises:
        TypeError: if a target is not an aten op.
        ValueError: if an overload is registered twice.
    """
    overloads: list[torch._ops.OpOverload] = []
    for op in ops:
        if not isinstance(op, torch._ops.OpOverload):
            raise TypeError(
                f"register() takes aten op overloads such as aten.mm.default,"
                f" got {op!r} ({type(op).__name__})"
            )
        overloads.append(op)

    def decorator(dense: DenseFn) -> DenseFn:
        for overload in overloads:
            if overload in REGISTRY:
                raise ValueError(f"{overload} already has a formula ({REGISTRY[overload].dense})")
            REGISTRY[overload] = Formula(overload, dense, effective, batch)
        return dense

    return decorator


# --------------------------------------------------------------------------- helpers


def _ind(t: Tensor) -> Tensor:
    """1 where ``t`` is nonzero, else 0, as float64 (exact counts up to 2**53)."""
    return (t != 0).to(torch.float64)


def _no_autocast(t: Tensor) -> torch.autocast:
    return torch.autocast(device_type=t.device.type, enabled=False)


def _matmul_count(a: Tensor, b: Tensor) -> Tensor:
    """``sum((a != 0) @ (b != 0))``: multiplications with both operands nonzero."""
    with _no_autocast(a):
        return (_ind(a) @ _ind(b)).sum()


# --------------------------------------------------------------------------- matmul family


def _mm_dense(a: Tensor, b: Tensor, *_: Any, **__: Any) -> list[Use]:
    # NB: [M, K] @ [K, N] is M*N*K MACs.
    m, k = a.shape
    n = b.shape[1]
    return [Use(2 * m * k * n, weights=(1, 0))]


def _mm_effective(a: Tensor, b: Tensor, *_: Any, **__: Any) -> list[Tensor]:
    return [_matmul_count(a, b)]


def _bmm_dense(a: Tensor, b: Tensor, *_: Any, **__: Any) -> list[Use]:
    # NB: [B, M, K] @ [B, K, N] is B*M*N*K MACs.
    b_, m, k = a.shape
    return [Use(2 * b_ * m * k * b.shape[2], weights=(1, 0))]


register(aten.mm.default, effective=_mm_effective)(_mm_dense)
register(aten.bmm.default, effective=_mm_effective)(_bmm_dense)


def _addmm_dense(bias: Tensor, a: Tensor, b: Tensor, *_: Any, **__: Any) -> list[Use]:
    # the bias add is not counted; the weight sits at position 2 or 1
    (use,) = _mm_dense(a, b) if a.dim() == 2 else _bmm_dense(a, b)
    return [Use(use.flops, weights=(2, 1))]


def _addmm_effective(bias: Tensor, a: Tensor, b: Tensor, *_: Any, **__: Any) -> list[Tensor]:
    return [_matmul_count(a, b)]


register(aten.addmm.default, aten.baddbmm.default, effective=_addmm_effective)(_addmm_dense)


def _mv_dense(a: Tensor, v: Tensor, *_: Any, **__: Any) -> list[Use]:
    # NB: [M, K] @ [K] is M*K MACs; each matrix entry is used once, each vector entry M times
    return [Use(2 * a.numel(), weights=(0, 1))]


def _dot_dense(a: Tensor, b: Tensor, *_: Any, **__: Any) -> list[Use]:
    # NB: [K] . [K] is K MACs (vdot conjugates a first: the same products)
    return [Use(2 * a.numel(), weights=(1, 0))]


register(aten.mv.default, effective=_mm_effective)(_mv_dense)
register(aten.dot.default, aten.vdot.default, effective=_mm_effective)(_dot_dense)


def _addmv_dense(bias: Tensor, a: Tensor, v: Tensor, *_: Any, **__: Any) -> list[Use]:
    # bias + [M, K] @ [K]: the bias add is not counted
    (use,) = _mv_dense(a, v)
    return [Use(use.flops, weights=(1, 2))]


def _addbmm_dense(bias: Tensor, a: Tensor, b: Tensor, *_: Any, **__: Any) -> list[Use]:
    # bias + sum_b [B, M, K] @ [B, K, N] is B*M*N*K MACs (the sum over B is adds only)
    (use,) = _bmm_dense(a, b)
    return [Use(use.flops, weights=(2, 1))]


register(aten.addmv.default, effective=_addmm_effective)(_addmv_dense)
register(aten.addbmm.default, effective=_addmm_effective)(_addbmm_dense)


# --------------------------------------------------------------------------- bilinear
#
# aten._trilinear(i1, i2, i3, expand1, expand2, expand3, sumdim, unroll_dim) is what
# nn.Bilinear / F.bilinear dispatch to: (i1 * i2 * i3).sum(sumdim), each operand first
# unsqueezed at its `expand` dims. ATen does not multiply the three at once: for each index
# of unroll_dim it contracts i1 with i2, summing the `sumdim` dims that i3 lacks, then
# contracts that result with i3 over the other `sumdim` dims (the unroll dim is a batch
# dim of both contractions). Each contraction is one bmm in which a summed dim only one
# operand has is summed away first (adds, no products). So with the operands' unsqueezed
# shapes, a contraction costs  prod_d size_d  MACs over the dims d that are kept, or summed
# and held by both operands.
#
# nn.Bilinear, x1 [N, I], W [K, I, J], x2 [N, J] -> _trilinear(x1, W, x2, [1, 3], [0],
# [1, 2], [2, 3], 1) on dims (N, K, I, J):
#   x1 with W over I:   N*K*I*J MACs, every entry of W used N times (scales with nnz(W))
#   that with x2 over J: N*K*J MACs between two activations (weight-free)
#   total 2*N*K*I*J + 2*N*K*J FLOPs; the bias add is not counted.


def _unsqueezed(shape: Sequence[int], expand: Sequence[int]) -> list[int]:
    """``shape`` unsqueezed at each dim of ``expand`` in increasing order, as ATen does."""
    out = list(shape)
    for dim in sorted(expand):
        out.insert(dim, 1)
    return out


def _trilinear_sums(
    expand3: Sequence[int], sumdim: Sequence[int], unroll_dim: int
) -> tuple[set[int], set[int]]:
    """The dims summed in the first contraction (i3 lacks them) and in the second."""
    first = {d for d in sumdim if d in expand3 and d != unroll_dim}
    second = {d for d in sumdim if d not in expand3 and d != unroll_dim}
    return first, second


def _contraction(
    left: Sequence[int], right: Sequence[int], sums: set[int]
) -> tuple[int, bool, bool, list[int]]:
    """ATen's pairwise contraction on two broadcastable shapes.

    Returns:
        (MACs, whether ``left`` / ``right`` is summed over a dim before any product, the
        result's shape with the summed dims kept as 1).
    """
    macs, left_summed, right_summed, shape = 1, False, False, []
    for d, (a, b) in enumerate(zip(left, right, strict=True)):
        if d not in sums:
            macs *= max(a, b)
            shape.append(max(a, b))
            continue
        if a != 1 and b != 1:
            macs *= a
        left_summed |= a != 1 and b == 1
        right_summed |= b != 1 and a == 1
        shape.append(1)
    return macs, left_summed, right_summed, shape


def _trilinear_dense(
    i1: Tensor, i2: Tensor, i3: Tensor, expand1: Sequence[int], expand2: Sequence[int],
    expand3: Sequence[int], sumdim: Sequence[int], unroll_dim: int = 1, *_: Any, **__: Any,
) -> list[Use]:  # fmt: skip
    a = _unsqueezed(i1.shape, expand1)
    b = _unsqueezed(i2.shape, expand2)
    c = _unsqueezed(i3.shape, expand3)
    first_sums, second_sums = _trilinear_sums(expand3, sumdim, unroll_dim)
    first, a_summed, b_summed, buf = _contraction(a, b, first_sums)
    second, _buf_summed, c_summed, _shape = _contraction(buf, c, second_sums)
    # an operand summed before its products is no weight: its entries are not each used
    # equally often (nn.Bilinear never does this)
    return [
        Use(
            2 * first,
            weights=tuple(p for p, summed in ((1, b_summed), (0, a_summed)) if not summed),
        ),
        Use(2 * second, weights=() if c_summed else (2,)),
    ]


def _contraction_count(left: Tensor, right: Tensor, sums: set[int]) -> tuple[Tensor, Tensor]:
    """Products with both operands nonzero in one contraction, and its result (float64)."""
    for d in sums:  # summed away first, as ATen does: the sums are what gets multiplied
        if left.shape[d] != 1 and right.shape[d] == 1:
            left = left.sum(d, keepdim=True)
        elif right.shape[d] != 1 and left.shape[d] == 1:
            right = right.sum(d, keepdim=True)
    dims = list(range(left.dim()))
    count = torch.einsum(_ind(left), dims, _ind(right), dims, [])  # size-1 dims broadcast
    kept = [d for d in dims if d not in sums]
    shape = [1 if d in sums else max(left.shape[d], right.shape[d]) for d in dims]
    return count, torch.einsum(left, dims, right, dims, kept).reshape(shape)


def _trilinear_effective(
    i1: Tensor, i2: Tensor, i3: Tensor, expand1: Sequence[int], expand2: Sequence[int],
    expand3: Sequence[int], sumdim: Sequence[int], unroll_dim: int = 1, *_: Any, **__: Any,
) -> list[Tensor]:  # fmt: skip
    # NB: the intermediate (x1 W in nn.Bilinear) is recomputed in float64; its zeros are data
    def full(t: Tensor, expand: Sequence[int]) -> Tensor:
        return t.double().reshape(_unsqueezed(t.shape, expand))

    first_sums, second_sums = _trilinear_sums(expand3, sumdim, unroll_dim)
    with _no_autocast(i1):
        first, buf = _contraction_count(full(i1, expand1), full(i2, expand2), first_sums)
        second = _contraction_count(buf, full(i3, expand3), second_sums)[0]
    return [first, second]


register(aten._trilinear.default, effective=_trilinear_effective)(_trilinear_dense)


# --------------------------------------------------------------------------- convolution


def _conv_dense(
    x: Tensor, w: Tensor, bias: Tensor | None, stride: Any, padding: Any, dilation: Any,
    transposed: bool, *_: Any, result: Tensor, **__: Any,
) -> list[Use]:  # fmt: skip
    # NB: every weight element meets one input pixel per output position (per input
    # position when transposed), padding included, as FlopCounterMode counts it:
    #   2 * N * prod(spatial) * prod(w.shape),  spatial = input's if transposed else output's
    spatial = x.shape[2:] if transposed else result.shape[2:]
    return [Use(2 * x.shape[0] * math.prod(spatial) * w.numel(), weights=(1,))]


def _conv_effective(
    x: Tensor, w: Tensor, bias: Tensor | None, stride: Any, padding: Any, dilation: Any,
    transposed: bool, output_padding: Any, groups: int, *_: Any, **__: Any,
) -> list[Tensor]:  # fmt: skip
    # sum(conv(1[x != 0], 1[w != 0])): zero padding contributes nothing. A transposed conv
    # runs uncropped (padding 0) so that, like the dense count, every product is counted.
    if transposed:
        padding = output_padding = [0] * (x.dim() - 2)
    with _no_autocast(x):
        y = torch.ops.aten.convolution.default(
            _ind(x), _ind(w), None, stride, padding, dilation, transposed, output_padding, groups
        )
    return [y.sum()]


def _first_dim(x: Tensor, *_: Any, **__: Any) -> int:
    return int(x.shape[0])


# aten's convolution always takes a batched input [N, C, ...] (an unbatched one is unsqueezed)
register(
    aten.convolution.default,
    aten._convolution.default,
    effective=_conv_effective,
    batch=_first_dim,
)(_conv_dense)


# --------------------------------------------------------------------------- attention


def _sdpa_shapes(q: Tensor, k: Tensor, v: Tensor) -> int:
    # q [..., L, E], k [..., S, E], v [..., S, Ev]; grouped-query heads count q's heads:
    #   scores 2*B*H*L*S*E + attn@v 2*B*H*L*S*Ev
    batch_heads = math.prod(q.shape[:-2])
    length, e = q.shape[-2], q.shape[-1]
    s, ev = k.shape[-2], v.shape[-1]
    return 2 * batch_heads * length * s * (e + ev)


def _sdpa_dense(q: Tensor, k: Tensor, v: Tensor, *_: Any, **__: Any) -> list[Use]:
    return [Use(_sdpa_shapes(q, k, v))]


def _attention_probs(
    q: Tensor, k: Tensor, mask: Tensor | None, is_causal: bool, scale: float | None
) -> Tensor:
    """Softmax probabilities of SDPA recomputed in float64 (their zeros are data)."""
    if k.shape[-3] != q.shape[-3] and q.dim() >= 3:  # grouped-query attention
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q.double() @ k.double().transpose(-2, -1)) * scale
    length, s = q.shape[-2], k.shape[-2]
    if is_causal:
        keep = torch.ones(length, s, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.double()
    return torch.softmax(scores, dim=-1)


def _sdpa_count(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool, scale: float | None
) -> Tensor:
    # NB: probabilities are recomputed in float64 without dropout; an entry that underflows
    # to exactly 0 in a lower precision kernel is still counted here.
    with _no_autocast(q):
        if k.shape[-3] != q.shape[-3] and q.dim() >= 3:
            rep = q.shape[-3] // k.shape[-3]
            k_, v_ = k.repeat_interleave(rep, dim=-3), v.repeat_interleave(rep, dim=-3)
        else:
            k_, v_ = k, v
        p = _attention_probs(q, k_, mask, is_causal, scale)
        return _matmul_count(q, k_.transpose(-2, -1)) + _matmul_count(p, v_)


def _sdpa_effective(
    q: Tensor, k: Tensor, v: Tensor, *args: Any, attn_mask: Tensor | None = None,
    scale: float | None = None, **kwargs: Any,
) -> list[Tensor]:  # fmt: skip
    # CPU flash: (q, k, v, dropout_p, is_causal, *, attn_mask, scale)
    is_causal = bool(args[1]) if len(args) > 1 else bool(kwargs.get("is_causal", False))
    return [_sdpa_count(q, k, v, attn_mask, is_causal, scale)]


def _sdpa_effective_with_bias(
    q: Tensor, k: Tensor, v: Tensor, attn_bias: Tensor | None = None, *args: Any,
    scale: float | None = None, is_causal: bool = False, **kwargs: Any,
) -> list[Tensor]:  # fmt: skip
    # efficient / cudnn: (q, k, v, attn_bias, compute_log_sumexp, dropout_p, is_causal, ...)
    if len(args) > 2:
        is_causal = bool(args[2])
    return [_sdpa_count(q, k, v, attn_bias, is_causal, scale)]


def _sdpa_effective_flash(
    q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0, is_causal: bool = False,
    *args: Any, scale: float | None = None, **kwargs: Any,
) -> list[Tensor]:  # fmt: skip
    # CUDA flash: (q, k, v, dropout_p, is_causal, return_debug_mask, *, scale)
    return [_sdpa_count(q, k, v, None, is_causal, scale)]


register(aten._scaled_dot_product_flash_attention_for_cpu.default, effective=_sdpa_effective)(
    _sdpa_dense
)
register(aten._scaled_dot_product_flash_attention.default, effective=_sdpa_effective_flash)(
    _sdpa_dense
)
register(
    aten._scaled_dot_product_efficient_attention.default,
    aten._scaled_dot_product_cudnn_attention.default,
    effective=_sdpa_effective_with_bias,
)(_sdpa_dense)


def _mha_dense(
    query: Tensor, key: Tensor, value: Tensor, embed_dim: int, num_heads: int,
    qkv_weight: Tensor, qkv_bias: Tensor, proj_weight: Tensor, *_: Any, **__: Any,
) -> list[Use]:  # fmt: skip
    # nn.MultiheadAttention's fused fast path (batch first: query [B, L, E], key [B, S, E]):
    #   in-projection 2*B*L*E*E (q) + 2*B*S*E*E (k) + 2*B*S*E*E (v), S == L
    #   attention     2*B*L*S*E (scores, all heads) + 2*B*L*S*E (attn @ v)
    #   out-projection 2*B*L*E*E
    b, length, e = query.shape
    s = key.shape[1]
    # NB: the op requires query, key and value of one shape (L == S), so every entry of the
    # packed in-projection weight is used B*L times.
    assert length == s, "aten._native_multi_head_attention takes L == S"
    return [
        Use(2 * b * length * 3 * e * e, weights=(5,)),
        Use(2 * b * length * s * 2 * e),
        Use(2 * b * length * e * e, weights=(7,)),
    ]


def _mha_effective(
    query: Tensor, key: Tensor, value: Tensor, embed_dim: int, num_heads: int,
    qkv_weight: Tensor, qkv_bias: Tensor, proj_weight: Tensor, proj_bias: Tensor,
    mask: Tensor | None = None, *_: Any, **__: Any,
) -> list[Tensor]:  # fmt: skip
    e, h = embed_dim, num_heads
    wq, wk, wv = qkv_weight.split(e)
    bq, bk, bv = qkv_bias.split(e)
    with _no_autocast(query):
        q, k, v = F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)

        def heads(t: Tensor) -> Tensor:  # [B, L, E] -> [B, H, L, E/H]
            return t.unflatten(-1, (h, e // h)).transpose(1, 2)

        qh, kh, vh = heads(q), heads(k), heads(v)
        attn_mask = None
        if mask is not None:  # fast-path masks are True where attention is *disallowed*
            attn_mask = ~mask if mask.dtype == torch.bool else mask
            if attn_mask.dim() == 2 and attn_mask.shape[0] == query.shape[0]:  # key padding
                attn_mask = attn_mask[:, None, None, :]
        p = _attention_probs(qh, kh, attn_mask, False, None)
        o = (p @ vh.double()).transpose(1, 2).flatten(2)
        in_proj = [
            _matmul_count(query, wq.t()),
            _matmul_count(key, wk.t()),
            _matmul_count(value, wv.t()),
        ]
        attention = _matmul_count(qh, kh.transpose(-2, -1)) + _matmul_count(p, vh)
        out_proj = _matmul_count(o, proj_weight.t())
    return [in_proj[0] + in_proj[1] + in_proj[2], attention, out_proj]


register(aten._native_multi_head_attention.default, effective=_mha_effective, batch=_first_dim)(
    _mha_dense
)


# --------------------------------------------------------------------------- recurrent


def _rnn_layer_dense(x: Tensor, w_ih: Tensor, w_hh: Tensor, *args: Any, **__: Any) -> list[Use]:
    # aten.mkldnn_rnn_layer: one direction of one LSTM layer on CPU (FlopCounterMode: 0).
    # x is [T, B, In]; w_ih [G*H, In], w_hh [G*H, H] (G = 4 gates):
    #   2 * T * B * In * G*H  +  2 * T * B * H * G*H
    steps_and_batch = x.shape[0] * x.shape[1]
    return [
        Use(2 * steps_and_batch * w_ih.numel(), weights=(1,)),
        Use(2 * steps_and_batch * w_hh.numel(), weights=(2,)),
    ]


def _rnn_layer_effective(
    x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor, hx: Tensor, cx: Tensor,
    reverse: bool, batch_sizes: Any, mode: int, hidden_size: int, num_layers: int,
    has_biases: bool, bidirectional: bool, batch_first: bool, *_: Any, result: Any, **__: Any,
) -> list[Tensor]:  # fmt: skip
    # NB: nn.LSTM hands this op time-major data whatever its batch_first flag says
    y = result[0]  # every h_t, [T, B, H]
    # the previous hidden state of each step: h0, then every output but the last processed
    prev = torch.cat([hx.reshape(1, *y.shape[1:]), y[1:] if reverse else y[:-1]])
    return [_matmul_count(x, w_ih.t()), _matmul_count(prev, w_hh.t())]


def _second_dim(x: Tensor, *_: Any, **__: Any) -> int:
    return int(x.shape[1])


# time-major whatever the module's batch_first: the batch is dim 1
register(aten.mkldnn_rnn_layer.default, effective=_rnn_layer_effective, batch=_second_dim)(
    _rnn_layer_dense
)


# --------------------------------------------------------------------------- backward
#
# Fused backward kernels (the training trace only). A part with ``grad_of`` computes the
# gradient of that operand; a part with ``weights`` multiplies by that operand (the
# activation gradient through a weight). Generic backward products (mm, bmm, addmm) use
# the forward formulas above.


def _no_effective(*_: Any, **__: Any) -> list[Tensor]:
    raise NotImplementedError("effective FLOPs are counted for the forward pass only")


def _conv_backward_dense(
    grad_output: Tensor, x: Tensor, w: Tensor, bias_sizes: Any, stride: Any, padding: Any,
    dilation: Any, transposed: bool, output_padding: Any, groups: int,
    output_mask: Sequence[bool], *_: Any, **__: Any,
) -> list[Use]:  # fmt: skip
    # NB: the gradient w.r.t. the input (a transposed convolution of grad_output with w) and
    # the one w.r.t. the weight (a convolution of x with grad_output) each meet every weight
    # element once per output position (per input position when transposed): the forward's
    #   2 * N * prod(spatial) * prod(w.shape)
    # each, when output_mask asks for it (the bias gradient is a sum, not counted).
    # FlopCounterMode counts the same, except the weight gradient of a grouped convolution:
    # it takes all C_in input channels per output channel there, `groups` times this.
    spatial = x.shape[2:] if transposed else grad_output.shape[2:]
    flops = 2 * x.shape[0] * math.prod(spatial) * w.numel()
    uses = []
    if output_mask[0]:
        uses.append(Use(flops, weights=(2,)))
    if output_mask[1]:
        uses.append(Use(flops, grad_of=2))
    return uses


register(aten.convolution_backward.default, effective=_no_effective)(_conv_backward_dense)


def _rnn_layer_backward_dense(
    x: Tensor, w_ih: Tensor, w_hh: Tensor, *_: Any, **__: Any
) -> list[Use]:  # fmt: skip
    # aten.mkldnn_rnn_layer_backward (FlopCounterMode: 0): one oneDNN call computes, whatever
    # needs them, the gradients w.r.t. the input and the initial state (through w_ih and w_hh)
    # and w.r.t. both weights, each as many products as its forward part:
    #   2 * T * B * numel(w)  per weight, twice
    steps_and_batch = x.shape[0] * x.shape[1]
    ih, hh = 2 * steps_and_batch * w_ih.numel(), 2 * steps_and_batch * w_hh.numel()
    return [Use(ih, weights=(1,)), Use(hh, weights=(2,)), Use(ih, grad_of=1), Use(hh, grad_of=2)]


register(aten.mkldnn_rnn_layer_backward.default, effective=_no_effective)(_rnn_layer_backward_dense)


def _sdpa_backward_dense(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, *_: Any, **__: Any
) -> list[Use]:
    # FlopCounterMode's attention backward (q [..., L, E], k [..., S, E], v [..., S, Ev]):
    # the scores again (L*S*E), grad of the probabilities (L*S*Ev), grad_v (S*L*Ev),
    # grad_q (L*S*E), grad_k (E*L*S) per batch and query head:
    #   2 * B*H * L * S * (3*E + 2*Ev)
    batch_heads = math.prod(q.shape[:-2])
    length, e = q.shape[-2], q.shape[-1]
    s, ev = k.shape[-2], v.shape[-1]
    return [Use(2 * batch_heads * length * s * (3 * e + 2 * ev))]


register(
    aten._scaled_dot_product_flash_attention_for_cpu_backward.default,
    aten._scaled_dot_product_flash_attention_backward.default,
    aten._scaled_dot_product_efficient_attention_backward.default,
    aten._scaled_dot_product_cudnn_attention_backward.default,
    effective=_no_effective,
)(_sdpa_backward_dense)


# --------------------------------------------------------------------------- not counted

#: Ops that cost nothing in the dense column besides those tagged pointwise and views (and
#: in-place views such as transpose_, squeeze_, as_strided_): norms, pooling, softmax,
#: reductions, creation, copies, shape and index plumbing, resampling (upsampling, grid
#: sampling), embedding lookups, activations without the pointwise tag (hardswish, glu,
#: prelu). An overload's in-place variant (a trailing ``_``) is free with it.
FREE_OPS: frozenset[str] = frozenset(
    [
        "_adaptive_avg_pool2d",
        "_adaptive_avg_pool3d",
        "_batch_norm_impl_index",
        "_embedding_bag",
        "_embedding_bag_forward_only",
        "_log_softmax",
        "_prelu_kernel",
        "_safe_softmax",
        "_native_batch_norm_legit",
        "_native_batch_norm_legit_functional",
        "_native_batch_norm_legit_no_training",
        "_softmax",
        "_to_copy",
        "_unique",
        "_unique2",
        "_unsafe_view",
        "_upsample_bicubic2d_aa",
        "_upsample_bilinear2d_aa",
        "_upsample_nearest_exact1d",
        "_upsample_nearest_exact2d",
        "_upsample_nearest_exact3d",
        "_local_scalar_dense",
        "adaptive_avg_pool1d",
        "adaptive_avg_pool2d",
        "adaptive_avg_pool3d",
        "adaptive_max_pool1d",
        "adaptive_max_pool2d",
        "adaptive_max_pool3d",
        "affine_grid_generator",
        "alias",
        "amax",
        "amin",
        "any",
        "all",
        "arange",
        "argmax",
        "argmin",
        "avg_pool1d",
        "avg_pool2d",
        "avg_pool3d",
        "batch_norm",
        "bernoulli",
        "bernoulli_",
        "binary_cross_entropy",
        "binary_cross_entropy_with_logits",
        "bucketize",
        "cat",
        "channel_shuffle",
        "clone",
        "constant_pad_nd",
        "copy",
        "copy_",
        "cummax",
        "cummin",
        "cumprod",
        "cumsum",
        "detach",
        "diag",
        "diag_embed",
        "dropout",
        "embedding",
        "empty",
        "empty_like",
        "empty_strided",
        "expand_copy",
        "fill",
        "fill_",
        "flip",
        "full",
        "full_like",
        "gather",
        "glu",
        "grid_sampler_2d",
        "grid_sampler_3d",
        "hardswish",
        "histc",
        "huber_loss",
        "index",
        "index_copy",
        "index_copy_",
        "index_put",
        "index_put_",
        "index_select",
        "kthvalue",
        "l1_loss",
        "layer_norm",
        "lift_fresh",
        "lift_fresh_copy",
        "linalg_vector_norm",
        "linspace",
        "log_sigmoid_forward",
        "log_softmax",
        "logcumsumexp",
        "logspace",
        "logsumexp",
        "masked_fill",
        "masked_fill_",
        "masked_select",
        "max",
        "max_pool1d",
        "max_pool2d",
        "max_pool2d_with_indices",
        "max_pool3d",
        "max_pool3d_with_indices",
        "mean",
        "median",
        "min",
        "mode",
        "mse_loss",
        "multinomial",
        "nanmedian",
        "native_batch_norm",
        "native_dropout",
        "native_group_norm",
        "native_layer_norm",
        "new_empty",
        "new_empty_strided",
        "new_full",
        "new_ones",
        "new_zeros",
        "nll_loss2d_forward",
        "nll_loss_forward",
        "nonzero",
        "norm",
        "normal_",
        "ones",
        "ones_like",
        "pad",
        "prod",
        "rand",
        "rand_like",
        "randint",
        "randn",
        "randn_like",
        "randperm",
        "reflection_pad1d",
        "reflection_pad2d",
        "reflection_pad3d",
        "repeat",
        "repeat_interleave",
        "replication_pad1d",
        "replication_pad2d",
        "replication_pad3d",
        "roll",
        "rot90",
        "rsub",
        "scalar_tensor",
        "scatter",
        "scatter_add",
        "scatter_add_",
        "scatter_",
        "searchsorted",
        "smooth_l1_loss",
        "sort",
        "softmax",
        "split",
        "split_with_sizes",
        "stack",
        "std",
        "std_mean",
        "sum",
        "topk",
        "tril",
        "tril_indices",
        "triu",
        "triu_indices",
        "uniform_",
        "unsafe_split",
        "unsafe_split_with_sizes",
        "unique_consecutive",
        "unique_dim",
        "upsample_bicubic2d",
        "upsample_bilinear2d",
        "upsample_linear1d",
        "upsample_nearest1d",
        "upsample_nearest2d",
        "upsample_nearest3d",
        "upsample_trilinear3d",
        "var",
        "var_mean",
        "zero_",
        "zeros",
        "zeros_like",
        "_pad_packed_sequence",
        "_pack_padded_sequence",
        "pixel_shuffle",
        "pixel_unshuffle",
        "one_hot",
        "im2col",
        "col2im",
        "resize_",
        "set_",
        "sym_size",
        "sym_stride",
        "sym_numel",
        "sym_storage_offset",
        "is_same_size",
        "equal",
        "_has_compatible_shallow_copy_type",
        # the backward's own plumbing (training trace): norms', pooling's, softmax's and
        # losses' gradients, index and resampling gradients, scatters into a full tensor
        "_adaptive_avg_pool2d_backward",
        "_adaptive_avg_pool3d_backward",
        "_embedding_bag_backward",
        "_embedding_bag_dense_backward",
        "_embedding_bag_per_sample_weights_backward",
        "_log_softmax_backward_data",
        "_masked_softmax_backward",
        "_prelu_kernel_backward",
        "_softmax_backward_data",
        "_upsample_bicubic2d_aa_backward",
        "_upsample_bilinear2d_aa_backward",
        "_upsample_nearest_exact1d_backward",
        "_upsample_nearest_exact2d_backward",
        "_upsample_nearest_exact3d_backward",
        "adaptive_max_pool2d_backward",
        "adaptive_max_pool3d_backward",
        "avg_pool2d_backward",
        "avg_pool3d_backward",
        "binary_cross_entropy_backward",
        "cudnn_batch_norm_backward",
        "diagonal_backward",
        "embedding_backward",
        "embedding_dense_backward",
        "glu_backward",
        "grid_sampler_2d_backward",
        "grid_sampler_3d_backward",
        "hardswish_backward",
        "huber_loss_backward",
        "index_select_backward",
        "l1_loss_backward",
        "log_sigmoid_backward",
        "max_pool2d_with_indices_backward",
        "max_pool3d_with_indices_backward",
        "miopen_batch_norm_backward",
        "mse_loss_backward",
        "native_batch_norm_backward",
        "native_group_norm_backward",
        "native_layer_norm_backward",
        "nll_loss2d_backward",
        "nll_loss_backward",
        "select_backward",
        "slice_backward",
        "smooth_l1_loss_backward",
        "unfold_backward",
        "upsample_bicubic2d_backward",
        "upsample_bilinear2d_backward",
        "upsample_linear1d_backward",
        "upsample_nearest1d_backward",
        "upsample_nearest2d_backward",
        "upsample_nearest3d_backward",
        "upsample_trilinear3d_backward",
        "as_strided_scatter",
        "select_scatter",
        "slice_scatter",
        "diagonal_scatter",
        "masked_scatter",
        "_unsafe_index",
        "_unsafe_index_put",
        "elu_backward",
        "gelu_backward",
        "hardsigmoid_backward",
        "hardtanh_backward",
        "leaky_relu_backward",
        "mish_backward",
        "softplus_backward",
        "rrelu_with_noise_backward",
        "threshold_backward",
        "native_dropout_backward",
        "reflection_pad1d_backward",
        "reflection_pad2d_backward",
        "reflection_pad3d_backward",
        "replication_pad1d_backward",
        "replication_pad2d_backward",
        "replication_pad3d_backward",
        "soft_margin_loss_backward",
        "masked_scatter_backward",
        "_weight_norm_interface_backward",
        "_fused_rms_norm_backward",
        "_segment_reduce_backward",
        "_upsample_lanczos2d_aa_backward",
        "_batch_norm_with_update",
        "batch_norm_backward",
        "_batch_norm_no_update",
    ]
)


#: Namespaces of ops that move data between processes or mark profiler ranges: FSDP2's
#: all-gathers around a sharded module's forward, c10d collectives, record_function.
FREE_NAMESPACES: frozenset[str] = frozenset(
    ["fsdp", "c10d", "_c10d_functional", "c10d_functional", "_dtensor", "profiler"]
)


def is_free(op: torch._ops.OpOverload) -> bool:
    """Whether ``op`` truly costs nothing in the dense column (not an unknown op)."""
    return (
        op.namespace in FREE_NAMESPACES
        or op.is_view
        or torch.Tag.pointwise in op.tags
        or torch.Tag.inplace_view in op.tags  # transpose_, squeeze_, as_strided_: metadata
        or op._opname in FREE_OPS
        or op._opname.rstrip("_") in FREE_OPS
        or _elementwise_step(op)
    )


#: aten ops of the ``_foreach_`` family that are products, not elementwise.
FOREACH_PRODUCTS: frozenset[str] = frozenset(["_foreach_mm"])


def _elementwise_step(op: torch._ops.OpOverload) -> bool:
    """An optimizer's fused or per-list elementwise update, or the AMP scaler's checks."""
    name = op._opname
    return (
        op.namespace == "aten"
        and name.startswith(("_foreach_", "_fused_", "_amp_"))
        and name not in FOREACH_PRODUCTS
    )
