"""Global magnitude pruning in half, single and double precision, ties included.

The radix select must give exactly the masks of a brute force that sorts every entry by
``(|w| in float64, tensor index, flat index)``. Against ``torch.nn.utils.prune``'s global
L1 pruning (``topk``, ties in an unspecified order) the masks may differ, but only among
entries whose magnitude equals the threshold, the k-th smallest magnitude.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from lightning_sparsity.pruning import MagnitudePruner, chunks, masks_for_count

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
SPARSITIES = [0.0, 0.3, 0.5, 0.8, 0.9, 0.99]


@pytest.fixture(params=["bincount", "sync-free"])
def histogram_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run on CPU both the bincount path and the one used on CUDA (no host syncs)."""
    monkeypatch.setattr(chunks, "_HOST_DEVICES", ("cpu",) if request.param == "bincount" else ())


def layers(dtype: torch.dtype, seed: int) -> nn.Sequential:
    """Three linear layers; in half precision many weights tie exactly.

    Default (Kaiming uniform) weights, a block of values on a coarse grid (exact ties in
    every dtype, across layers too), zeros of both signs, and both signs of equal magnitudes.
    """
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(48, 64), nn.ReLU(), nn.Linear(64, 40), nn.Linear(40, 10))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in (model[0], model[2], model[3]):
            w = layer.weight.view(-1)
            n = w.numel() // 3
            w[:n] = torch.randint(-8, 9, (n,), generator=g) / 64  # grid: ties everywhere
            w[n : n + 7] = torch.tensor([0.0, -0.0] * 3 + [-0.0])  # -0.0 ties with 0.0
    return model.to(dtype)


def linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def brute_keep(weights: list[torch.Tensor], k: int) -> torch.Tensor:
    """Prune the first ``k`` entries by (|w| exact in float64, tensor index, flat index)."""
    mags = torch.cat([w.detach().reshape(-1).double().abs() for w in weights])
    order = torch.sort(mags, stable=True).indices  # stable: ties stay in concatenation order
    keep = torch.ones(mags.numel(), dtype=torch.bool)
    keep[order[:k]] = False
    return keep


def ours(model: nn.Module, sparsity: float) -> torch.Tensor:
    # the bare global selection: no per-layer floor (tests/test_floors.py covers those)
    pruner = MagnitudePruner(allocation="global", min_density=0.0)
    pruner.apply(model, sparsity)
    masks = pruner.masks(model)
    return torch.cat([masks[f"{name}.weight"].reshape(-1) for name in ("0", "2", "3")])


def torch_global(model: nn.Module, k: int) -> torch.Tensor:
    params = [(m, "weight") for m in linears(model)]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=k)
    return torch.cat([m.weight_mask.reshape(-1).bool() for m in linears(model)])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("seed", [0, 1])
def test_global_masks_equal_a_stable_float64_sort(
    dtype: torch.dtype, sparsity: float, seed: int, histogram_path: None
) -> None:
    model = layers(dtype, seed)
    weights = [m.weight.detach().clone() for m in linears(model)]
    k = round(sparsity * sum(w.numel() for w in weights))
    expected = brute_keep(weights, k)
    assert torch.equal(ours(model, sparsity), expected)
    assert torch.equal(torch.cat([m.reshape(-1) for m in masks_for_count(weights, k)]), expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("seed", [0, 1])
def test_masks_differ_from_torch_prune_only_at_the_threshold(
    dtype: torch.dtype, sparsity: float, seed: int
) -> None:
    model = layers(dtype, seed)
    weights = [m.weight.detach().clone() for m in linears(model)]
    mags = torch.cat([w.reshape(-1).double().abs() for w in weights])
    k = round(sparsity * mags.numel())
    mine = ours(layers(dtype, seed), sparsity)
    theirs = torch_global(model, k)
    assert int((~mine).sum()) == int((~theirs).sum()) == k
    differ = mine != theirs
    if k == 0:
        assert not differ.any()
        return
    threshold = torch.sort(mags).values[k - 1]  # the k-th smallest magnitude
    assert (mags[differ] == threshold).all(), (
        f"{int(differ.sum())} entries differ; magnitudes off the threshold {float(threshold)}:"
        f" {mags[differ & (mags != threshold)].tolist()[:5]}"
    )
    # both prune everything below the threshold and nothing above it
    for keep in (mine, theirs):
        assert not keep[mags < threshold].any()
        assert keep[mags > threshold].all()


def test_half_precision_data_does_tie() -> None:
    """The data above do hold ties at the threshold, so the tie rule is exercised."""
    for dtype in (torch.float16, torch.bfloat16):
        weights = [m.weight.detach() for m in linears(layers(dtype, 0))]
        mags = torch.cat([w.reshape(-1).double().abs() for w in weights])
        k = round(0.5 * mags.numel())
        threshold = torch.sort(mags).values[k - 1]
        assert int((mags == threshold).sum()) > 1


def test_mixed_half_dtypes_compare_exactly(histogram_path: None) -> None:
    """float16 and bfloat16 layers widen to float32 without rounding: one exact order."""
    g = torch.Generator().manual_seed(5)
    weights = [
        (torch.randint(-8, 9, (30, 7), generator=g) / 64).to(torch.float16),
        torch.randn(50, generator=g).to(torch.bfloat16),
        (torch.randint(-8, 9, (25,), generator=g) / 64).to(torch.bfloat16),
        torch.randn(4, 9, generator=g).to(torch.float16),
    ]
    n = sum(w.numel() for w in weights)
    for k in (0, 1, 5, n // 3, n // 2, n - 1, n):
        got = torch.cat([m.reshape(-1) for m in masks_for_count(weights, k)])
        assert torch.equal(got, brute_keep(weights, k)), k
