"""N:M semi-structured sparsity: at most N nonzeros in every group of M consecutive weights.

Groups run along the input dimension, in the layout the runtimes that execute 2:4 use:

* a Linear (and an attention or recurrent weight), ``(out, in)``: along ``in_features``,
  what ``torch.sparse.to_sparse_semi_structured`` (cuSPARSELt / CUTLASS) takes;
* a convolution, ``(K, C, *kernel)``: along the input channels ``C`` at each output channel
  and kernel position, the weight seen as ``(K, *kernel, C)`` (channels last), the
  implicit-GEMM layout of TensorRT and of NVIDIA's ASP (``apex.contrib.sparsity``,
  ``m4n2_1d``: it permutes a conv weight to ``(R, S, K, C)`` and cuts rows of ``C``). A
  group never mixes kernel positions, so ``C`` must be a multiple of ``M``.

Only weights whose dim 1 is the input carry a pattern (:func:`layout_problem`): not a
transposed convolution (its dim 0 is the input), not an embedding. 2:4 is what Ampere and
later GPUs run at twice the dense rate; the kernels take 2-D weights whose rows and columns
are multiples of a per-dtype minimum (:data:`SEMI_STRUCTURED_MIN`, torch's CUTLASS table),
and convolutions whose output and input channels are multiples of (8, 16) (ASP's rule).

Pure tensor code, no Lightning: used by the pruner (which groups to prune, which weights to
keep) and by the counter (which weights conform, for realizable FLOPs).
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CONV_SEMI_STRUCTURED_MIN",
    "PATTERN_LAYOUT",
    "SEMI_STRUCTURED_MIN",
    "Pattern",
    "SemiStructuredLinear",
    "conforms",
    "from_groups",
    "group_losses",
    "group_view",
    "kernel_problem",
    "layout_problem",
    "parse_pattern",
    "pattern_keep",
    "semi_structured_problem",
]

Pattern = tuple[int, int]  # (N kept, M per group)

#: torch's CUTLASS semi-structured kernels: (rows, columns) each dimension of a 2-D weight
#: must be a multiple of (``SparseSemiStructuredTensorCUTLASS._DTYPE_SHAPE_CONSTRAINTS``)
SEMI_STRUCTURED_MIN: dict[torch.dtype, tuple[int, int]] = {
    torch.float32: (32, 32),
    torch.float16: (32, 64),
    torch.bfloat16: (32, 64),
    torch.int8: (16, 128),
}

_PATTERN = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_pattern(text: object) -> Pattern:
    """``"2:4"`` → ``(2, 4)``.

    Raises:
        ValueError: unless ``text`` is ``"N:M"`` with ``1 <= N < M``.
    """
    match = _PATTERN.match(text) if isinstance(text, str) else None
    if match is None or not 1 <= int(match.group(1)) < int(match.group(2)):
        raise ValueError(f"`pattern` must be 'N:M' with 1 <= N < M (e.g. '2:4'), got {text!r}")
    return int(match.group(1)), int(match.group(2))


#: the grouping of N:M masks, recorded in checkpoints (earlier ones grouped a conv along
#: its flattened ``in_channels * kh * kw`` row)
PATTERN_LAYOUT = "input-channels-last"

#: ASP's rule for a 2:4 convolution (output channels, input channels), as TensorRT runs it
CONV_SEMI_STRUCTURED_MIN = (8, 16)

# modules whose weights hold their input on dim 1 (a transposed conv is no such module)
_INPUT_DIM_ONE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.RNNBase, nn.MultiheadAttention)


def layout_problem(module: nn.Module) -> str | None:
    """Why ``module``'s weights have no N:M layout (``None`` if they have one).

    Linear, convolution, recurrent and attention weights hold their input on dim 1. A
    transposed convolution holds it on dim 0, an embedding has none: no runtime runs them
    N:M. The one rule for the pruner and the counter.
    """
    if isinstance(module, _INPUT_DIM_ONE):
        return None
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return "a transposed convolution's weight holds its input on dim 0: no N:M layout"
    return f"a {type(module).__name__}'s weights have no N:M layout (no input on dim 1)"


def kernel_problem(weight: Tensor, pattern: Pattern) -> str | None:
    """Why ``weight`` cannot carry ``pattern`` (``None`` if it can).

    Every weight needs 2+ dimensions and an input dimension (dim 1) that is a multiple of
    M: a Linear's ``in_features``, a convolution's input channels (its groups run along them
    at each kernel position). A 2-D weight pruned 2:4 must also fit the semi-structured
    kernels' shape rule for its dtype, a convolution ASP's: output and input channels
    multiples of :data:`CONV_SEMI_STRUCTURED_MIN`.

    The one rule for both sides: the pruner prunes to ``pattern`` only the weights it
    accepts, and realizable FLOPs credit ``pattern`` only to those
    (:func:`lightning_sparsity.counting.realizable.probe`). It reads the shape and dtype
    alone (no device work, no host sync; a sharded weight's whole shape).
    """
    n, m = pattern
    if weight.dim() < 2:
        return f"a {weight.dim()}-D weight has no input dimension to group"
    inputs = weight.shape[1]
    if weight.dim() == 2 and inputs % m:
        return f"its rows hold {inputs} weights, not a multiple of {m}"
    if inputs % m:
        return f"its {inputs} input channels are not a multiple of {m}"
    if (n, m) != (2, 4):
        return None
    if weight.dim() == 2:
        rows_min, cols_min = SEMI_STRUCTURED_MIN.get(weight.dtype, (32, 32))
        rows, cols = weight.shape
        if rows % rows_min or cols % cols_min:
            return (
                f"its shape {tuple(weight.shape)} is not a multiple of ({rows_min}, {cols_min}),"
                f" what the 2:4 kernels take for {weight.dtype}"
            )
        return None
    k_min, c_min = CONV_SEMI_STRUCTURED_MIN
    if weight.shape[0] % k_min or inputs % c_min:
        return (
            f"its {weight.shape[0]} output and {inputs} input channels are not multiples of"
            f" ({k_min}, {c_min}), what the 2:4 convolution kernels take (ASP, TensorRT)"
        )
    return None


def group_view(t: Tensor, m: int) -> Tensor:
    """``t`` as ``[groups, M]``, groups along dim 1 (the input) at each other position.

    A 2-D weight's rows cut into groups; a ``(K, C, *kernel)`` weight seen as
    ``(K, *kernel, C)`` first (a copy for a conv, a view for a 2-D weight).
    """
    return t.movedim(1, -1).reshape(-1, m)


def from_groups(groups: Tensor, shape: tuple[int, ...] | torch.Size) -> Tensor:
    """The inverse of :func:`group_view`: ``[groups, M]`` back to a weight's ``shape``."""
    moved = (shape[0], *shape[2:], shape[1])
    return groups.reshape(moved).movedim(-1, 1)


def conforms(weight: Tensor, pattern: Pattern) -> Tensor:
    """Whether every group holds at most N nonzeros: a 0-dim bool tensor (no host sync).

    A weight whose input dimension does not cut into groups does not conform.
    """
    n, m = pattern
    if weight.dim() < 2 or weight.shape[1] % m:
        return torch.zeros((), dtype=torch.bool, device=weight.device)
    return ((group_view(weight, m) != 0).sum(1) <= n).all()


def group_losses(weight: Tensor, keep: Tensor | None, pattern: Pattern) -> Tensor:
    """Per group, the magnitude pruning it N:M would remove: its ``M - N`` smallest ``|w|``.

    Entries already pruned (``keep`` 0) count as 0. Returns ``[groups]`` in the weight's
    dtype.
    """
    n, m = pattern
    magnitude = weight.detach().abs()
    if keep is not None:
        magnitude = magnitude * keep
    smallest = torch.sort(group_view(magnitude, m), dim=1).values[:, : m - n]
    return smallest.sum(1)


def pattern_keep(weight: Tensor, keep: Tensor | None, pattern: Pattern, prune: Tensor) -> Tensor:
    """The keep mask after pruning the groups flagged in ``prune`` to N:M.

    In a pruned group the N largest ``|w|`` are kept (ties: the lower index), entries already
    pruned first to go; the other groups keep their current mask.

    Args:
        weight: the weight (or this process's shard of it).
        keep: its current keep mask, or ``None``.
        pattern: ``(N, M)``.
        prune: ``[groups]`` bool, True for the groups to prune.

    Returns:
        A bool keep mask of ``weight``'s shape.
    """
    n, m = pattern
    current = (
        torch.ones(weight.shape, dtype=torch.bool, device=weight.device)
        if keep is None
        else keep != 0
    )
    score = weight.detach().abs().to(torch.float64)
    score = torch.where(current, score, torch.full_like(score, -1.0))
    order = torch.sort(group_view(score, m), dim=1, descending=True, stable=True).indices
    largest = torch.zeros(order.shape, dtype=torch.bool, device=weight.device)
    largest.scatter_(1, order[:, :n], True)
    groups = group_view(current, m)
    out = torch.where(prune.reshape(-1, 1), groups & largest, groups)
    return from_groups(out, weight.shape)


_HALF = (torch.float16, torch.bfloat16)


def semi_structured_problem(weight: Tensor) -> str | None:
    """Why torch's 2:4 kernels cannot run ``weight`` as a Linear's (``None`` if they can).

    ``torch.sparse.to_sparse_semi_structured`` (cuSPARSELt / CUTLASS): a CUDA device of
    compute capability 8.0+, float16/bfloat16, the shape rule of :func:`kernel_problem`, and
    at most 2 nonzeros in every group of 4 along the input. One host sync (the conformity).
    """
    if weight.device.type != "cuda":
        return "2:4 kernels run on CUDA only"
    if torch.cuda.get_device_capability(weight.device) < (8, 0):
        return "2:4 kernels need compute capability 8.0+ (Ampere or later)"
    if weight.dtype not in _HALF:
        return (
            f"2:4 kernels take float16/bfloat16 here, the weight is {weight.dtype} (cast the"
            " model with .half() or .bfloat16())"
        )
    problem = kernel_problem(weight, (2, 4))
    if problem is not None:
        return f"not 2:4: {problem}"
    if not bool(conforms(weight, (2, 4))):
        return "not 2:4: some group of 4 weights holds more than 2 nonzeros"
    return None


class SemiStructuredLinear(nn.Module):
    """``F.linear`` with a 2:4 semi-structured weight (cuSPARSELt or CUTLASS), any leading dims.

    Args:
        weight: a 2-D weight that :func:`semi_structured_problem` accepts.
        bias: its bias, or ``None``.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        from torch.sparse import to_sparse_semi_structured

        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.weight = to_sparse_semi_structured(weight.detach().contiguous())
        self.bias = None if bias is None else bias.detach()

    def extra_repr(self) -> str:
        """``in_features=…, out_features=…, 2:4``."""
        return f"in_features={self.in_features}, out_features={self.out_features}, 2:4"

    def forward(self, x: Tensor) -> Tensor:
        """``x Wᵀ + b`` over the last axis (the kernels take 2-D inputs)."""
        flat = x.reshape(-1, x.shape[-1]).contiguous()
        return F.linear(flat, self.weight, self.bias).reshape(*x.shape[:-1], -1)
