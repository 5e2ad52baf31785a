"""The selection read in tiny chunks and batched groups equals a stable sort, ties included.

Passes over the weights run in chunks (``chunks.chunk_size``) and per-layer cuts share one
histogram per batch of groups. Shrunk to a few entries and groups here, so chunk and batch
boundaries fall inside tie runs, inside tensors and between them; the truth is a stable sort
of every entry by ``(|x| in float64, tensor index, flat index)``, already pruned ones first.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from lightning_sparsity.pruning import chunks, flops, select

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.fixture(params=["host", "device"])
def tiny_chunks(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of 7 entries on the CPU path, of 5 on the path other devices take."""
    monkeypatch.setattr(chunks, "_HOST_CHUNK", 7)
    monkeypatch.setattr(chunks, "_DEVICE_CHUNK", 5)
    monkeypatch.setattr(select, "_GROUPS_PER_PASS", 3)
    if request.param == "device":
        monkeypatch.setattr(chunks, "_HOST_DEVICES", ())


def grid(dtype: torch.dtype, seed: int = 0, layers: int = 5) -> list[Tensor]:
    """Values on a grid of 9 (long tie runs), zeros of both signs, and one empty tensor."""
    g = torch.Generator().manual_seed(seed)
    out = [(torch.randint(-4, 5, (3 + 2 * i, 4), generator=g) / 8).to(dtype) for i in range(layers)]
    out[1].view(-1)[:5] = -0.0
    return [*out[:2], torch.zeros(0, 4, dtype=dtype), *out[2:]]


def order(tensors: list[Tensor], masks: list[Tensor | None] | None = None) -> Tensor:
    """Flat positions, pruned first to last (a stable sort keeps tensor then flat order)."""
    mags = torch.cat([t.reshape(-1).double().abs() for t in tensors])
    if masks is not None:
        kept = torch.cat(
            [
                torch.ones(t.numel(), dtype=torch.bool) if m is None else m.reshape(-1)
                for t, m in zip(tensors, masks, strict=True)
            ]
        )
        mags[~kept] = -1.0
    return torch.sort(mags, stable=True).indices


def first_pruned(tensors: list[Tensor], n: int, masks: list[Tensor | None] | None = None) -> Tensor:
    keep = torch.ones(sum(t.numel() for t in tensors), dtype=torch.bool)
    keep[order(tensors, masks)[:n]] = False
    return keep


def flat(masks: list[Tensor]) -> Tensor:
    return torch.cat([m.reshape(-1) for m in masks])


@pytest.mark.parametrize("dtype", DTYPES)
def test_count_cuts_split_ties_across_chunks_and_tensors(
    dtype: torch.dtype, tiny_chunks: None
) -> None:
    tensors = grid(dtype)
    n = sum(t.numel() for t in tensors)
    g = torch.Generator().manual_seed(1)
    prior: list[Tensor | None] = [torch.rand(t.shape, generator=g) > 0.3 for t in tensors]
    prior[0] = None
    already = sum(int((m == 0).sum()) for m in prior if m is not None)
    for k in range(already, n + 1, 11):
        got = select.masks_for_count(tensors, k, masks=prior)
        assert torch.equal(flat(got), first_pruned(tensors, k, prior)), k


def test_per_layer_cuts_in_batches_of_groups(tiny_chunks: None) -> None:
    tensors = grid(torch.float16, seed=2, layers=8)
    sources = select.make_sources(tensors, None, None, None)
    targets = [t.numel() * 3 // 5 for t in tensors]
    cuts = select.cuts([([s], float(k)) for s, k in zip(sources, targets, strict=True)], False)
    for t, s, k, cut in zip(tensors, sources, targets, cuts, strict=True):
        (mask,) = select.keep_masks([s], cut)
        assert torch.equal(mask.reshape(-1), first_pruned([t], k))


@pytest.mark.parametrize("target", [0.0, 3.0, 40.5, 97.25, 500.0])
def test_weighted_ties_walk_in_order(target: float, tiny_chunks: None) -> None:
    tensors = grid(torch.float32, seed=3)
    weights = [1.0, 2.5, 4.0, 0.0, 0.75, 1.5]  # dyadic: every partial sum is exact
    per_entry = torch.cat(
        [
            torch.full((t.numel(),), w, dtype=torch.float64)
            for t, w in zip(tensors, weights, strict=True)
        ]
    )
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), per_entry[order(tensors)].cumsum(0)])
    goal = min(target, float(cum[-1]))
    reach = int(torch.nonzero(cum >= goal)[0])
    closest = reach - 1 if reach > 0 and goal - cum[reach - 1] < cum[reach] - goal else reach
    got = select.masks_for_weighted_target(tensors, weights, target)
    assert torch.equal(flat(got), first_pruned(tensors, closest))


def test_fill_gap_keeps_back_ties_in_tensor_then_index_order(tiny_chunks: None) -> None:
    """Equal magnitudes straddle chunks and tensors: the first in (tensor, index) order win."""
    w = [torch.tensor([0.5, 0.25, 0.5, 0.5, 0.125, 0.5, 0.5, 0.5, 0.25]), torch.full((6,), 0.5)]
    keeps = [torch.zeros(9, dtype=torch.bool), torch.zeros(6, dtype=torch.bool)]
    costs = [3.0, 2.0]
    flops.fill_gap(w, [None, None], keeps, costs, gap=14.0)
    # largest first, the 0.5s in (tensor, index) order: four of tensor 0 (3 + 3 + 3 + 3 = 12
    # of 14), then the first of tensor 1 (2); nothing else fits
    assert keeps[0].tolist() == [True, False, True, True, False, True, False, False, False]
    assert keeps[1].tolist() == [True, False, False, False, False, False]
