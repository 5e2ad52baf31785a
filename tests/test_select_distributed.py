"""Sharded selection: two real processes (gloo, CPU) holding row chunks of every weight.

Each weight is split by rows as FSDP2's ``Shard(0)`` splits it (``ceil(rows / 2)`` rows on
rank 0, the rest, possibly none, on rank 1). The masks the two ranks build on their chunks,
put back together along dim 0, must equal the single-process masks of the whole weights, for
every kind of cut: counts, per-layer counts, weighted FLOP cuts (closest, and ``not_above``
with ``fill_gap``), and structured rows; on data with many exact ties (a coarse grid, also in
half precision) that straddle the shard boundary, and with already pruned entries. The
number of collectives per selection must not grow with the number of weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

from lightning_sparsity.pruning import flops, select
from lightning_sparsity.pruning.rows import expand_rows, row_scales, row_scores

WORLD = 2
SHAPES = [(7, 5), (9, 3, 2), (1, 6), (12,), (4, 4, 3), (5, 1)]
COSTS = [36.0, 16.0, 4.0, 1.0, 0.0, 2.0]  # FLOPs per nonzero: integers, so sums are exact
Shard = Callable[[Tensor], Tensor]
Case = Callable[[Shard, "dist.ProcessGroup | None", int], list[Tensor] | list[float]]


def weights(dtype: torch.dtype, layers: int, seed: int = 0) -> list[Tensor]:
    """Gaussian weights, half their entries (random positions) on a grid of 9 values: exact
    ties in every dtype, on both sides of every shard boundary; some zeros of both signs."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(layers):
        t = torch.randn(SHAPES[i % len(SHAPES)], generator=g)
        flat = t.view(-1)
        grid = torch.rand(flat.numel(), generator=g) < 0.5
        flat[grid] = torch.randint(-4, 5, (int(grid.sum()),), generator=g) / 8
        flat[torch.rand(flat.numel(), generator=g) < 0.05] = -0.0
        out.append(t.to(dtype))
    return out


def pruned(tensors: list[Tensor], seed: int = 1) -> list[Tensor | None]:
    """Masks that already prune about a fifth of the entries (one weight left unmasked)."""
    g = torch.Generator().manual_seed(seed)
    return [
        None if i == 1 else torch.rand(t.shape, generator=g) > 0.2 for i, t in enumerate(tensors)
    ]


def row_chunk(t: Tensor, rank: int, world: int) -> Tensor:
    """This rank's ``Shard(0)`` chunk: ``ceil(rows / world)`` rows each, the last ones short."""
    step = math.ceil(t.shape[0] / world)
    return t[rank * step : (rank + 1) * step]


def _each(shard: Shard, tensors: list[Tensor | None]) -> list[Tensor | None]:
    return [None if t is None else shard(t) for t in tensors]


# ------------------------------------------------------------------------------ cases
# Each case runs on whole weights (shard = identity, group None) and on one rank's chunks;
# it returns masks (compared after putting the chunks together) and host numbers (equal).


def count_case(dtype: torch.dtype, layers: int = 4) -> Case:
    def run(shard: Shard, group: dist.ProcessGroup | None, _: int) -> list[Tensor]:
        full = weights(dtype, layers)
        prior = pruned(full)
        n = sum(t.numel() for t in full)
        already = sum(int((m == 0).sum()) for m in prior if m is not None)
        out: list[Tensor] = []
        for k in (already, already + 1, n // 3, n // 2, n // 2 + 1, n - 3, n):
            out += select.masks_for_count(
                [shard(t) for t in full], k, masks=_each(shard, prior), group=group
            )
        return out

    return run


def per_layer_case(layers: int = 4) -> Case:
    def run(shard: Shard, group: dist.ProcessGroup | None, _: int) -> list[Tensor]:
        full = weights(torch.float16, layers)
        prior = pruned(full)
        sources = select.make_sources(
            [shard(t) for t in full], _each(shard, prior), None, None, group=group
        )
        groups = [([s], round(0.55 * t.numel())) for s, t in zip(sources, full, strict=True)]
        cuts = select.cuts([(g, float(k)) for g, k in groups], weighted=False)
        return [m for (g, _), c in zip(groups, cuts, strict=True) for m in select.keep_masks(g, c)]

    return run


def flop_case(not_above: bool, norm: float | None = None, layers: int = 4) -> Case:
    def run(shard: Shard, group: dist.ProcessGroup | None, _: int) -> list[Tensor] | list[float]:
        full = weights(torch.float32, layers, seed=3)
        prior = pruned(full, seed=4)
        costs = [COSTS[i % len(COSTS)] for i in range(layers)]
        dense = 100.0 + sum(c * t.numel() for c, t in zip(costs, full, strict=True))
        out: list[Tensor] | list[float] = []
        for fraction in (0.7, 0.45, 0.2):
            result = flops.flop_target(
                [shard(t) for t in full],
                _each(shard, prior),
                costs,
                fraction * dense,
                100.0,
                torch.tensor(50.0, dtype=torch.float64),
                norm=norm,
                not_above=not_above,
                numels=[t.numel() for t in full],
                group=group,
            )
            out += [*result.keeps, torch.tensor([result.flops], dtype=torch.float64)]  # type: ignore[list-item]
        return out

    return run


def rows_count_case(layers: int = 4) -> Case:
    """The pruner's global structured count: rows until the pruned entries land closest."""

    def run(shard: Shard, group: dist.ProcessGroup | None, _: int) -> list[Tensor]:
        full = weights(torch.float32, layers, seed=5)
        prior = pruned(full, seed=6)
        trained, current = [shard(t) for t in full], _each(shard, prior)
        scores, live, sizes = row_scores(trained, current, 2.0)
        sources = select.make_sources(
            scores, live, row_scales(sizes, 2.0), [float(s) for s in sizes], group=group
        )
        target = round(0.6 * sum(t.numel() for t in full))
        (cut,) = select.cuts([(sources, float(target))], weighted=True)
        return expand_rows(trained, current, select.keep_masks(sources, cut))

    return run


def live_zeros_case() -> Case:
    """Counts that land among live exact zeros (RigL's grown weights start at 0): the cut's
    threshold is 0, its ties split, below the already pruned zeros. A rank subtracting the
    already pruned of all ranks at every radix level counted those ties negative."""

    def run(shard: Shard, group: dist.ProcessGroup | None, _: int) -> list[Tensor]:
        g = torch.Generator().manual_seed(7)
        full, prior = [], []
        for shape in SHAPES[:4]:
            t = torch.randn(shape, generator=g)
            keep = torch.rand(shape, generator=g) < 0.5
            grown = ~keep & (torch.rand(shape, generator=g) < 0.3)
            keep |= grown
            full.append(torch.where(keep & ~grown, t, torch.zeros(())))
            prior.append(keep)
        already = sum(int((~k).sum()) for k in prior)
        zeros = sum(int(((t == 0) & k).sum()) for t, k in zip(full, prior, strict=True))
        assert zeros > 6
        out: list[Tensor] = []
        for k in (already + 1, already + zeros // 3, already + zeros - 1):
            out += select.masks_for_count(
                [shard(t) for t in full], k, masks=_each(shard, prior), group=group
            )
        return out

    return run


CASES: dict[str, Case] = {
    "live-zeros": live_zeros_case(),
    "count-float32": count_case(torch.float32),
    "count-float16": count_case(torch.float16),
    "count-bfloat16": count_case(torch.bfloat16),
    "count-float64": count_case(torch.float64),
    "per-layer": per_layer_case(),
    "flops-closest": flop_case(not_above=False),
    "flops-not-above": flop_case(not_above=True),
    "rows-flops": flop_case(not_above=True, norm=1.0),
    "rows-count": rows_count_case(),
}
# the same selections over 40 weights: as many collectives as over 4
SCALED: dict[str, tuple[Case, Case]] = {
    "count": (count_case(torch.float32, 4), count_case(torch.float32, 40)),
    "per-layer": (per_layer_case(4), per_layer_case(40)),
    "flops-not-above": (flop_case(True, layers=4), flop_case(True, layers=40)),
    "rows-count": (rows_count_case(4), rows_count_case(40)),
}


def _worker(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    calls = {"n": 0}
    originals = {name: getattr(dist, name) for name in ("all_reduce", "all_gather")}

    def counted(fn: Callable[..., object]) -> Callable[..., object]:
        def call(*args: object, **kwargs: object) -> object:
            calls["n"] += 1
            return fn(*args, **kwargs)

        return call

    for name, fn in originals.items():
        setattr(dist, name, counted(fn))
    try:
        group = dist.group.WORLD

        def shard(t: Tensor) -> Tensor:
            return row_chunk(t, rank, WORLD)

        results: dict[str, object] = {}
        for name, case in CASES.items():
            results[name] = case(shard, group, rank)
        collectives: dict[str, list[int]] = {}
        for name, cases in SCALED.items():
            collectives[name] = []
            for case in cases:
                calls["n"] = 0
                case(shard, group, rank)
                collectives[name].append(calls["n"])
        torch.save({"results": results, "collectives": collectives}, Path(out) / f"{rank}.pt")
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, dict[str, object]]]:
    """What each of the two ranks computed on its chunks (one spawn for every case)."""
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(_worker, args=(str(out / "store"), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"{r}.pt") for r in range(WORLD)]


def _identity(t: Tensor) -> Tensor:
    return t


@pytest.mark.parametrize("name", list(CASES))
def test_sharded_masks_equal_one_process(
    name: str, ranks: list[dict[str, dict[str, object]]]
) -> None:
    expected = CASES[name](_identity, None, 0)
    parts = [r["results"][name] for r in ranks]
    assert all(len(p) == len(expected) for p in parts)  # type: ignore[arg-type]
    for i, want in enumerate(expected):
        got = torch.cat([p[i] for p in parts], dim=0)  # type: ignore[index]
        if want.dtype == torch.float64:
            # the sparse FLOPs: the same number on every rank, and the one-process number
            assert all(torch.equal(p[i], want) for p in parts), (name, i)  # type: ignore[index]
            continue
        assert got.shape == want.shape, (name, i)
        assert torch.equal(got, want), (name, i, int((got != want).sum()))


def test_the_data_ties_across_the_shard_boundary() -> None:
    """Ties at the cut do straddle the chunks, so the rank order of ties is exercised."""
    full = weights(torch.float16, 4)
    n = sum(t.numel() for t in full)
    cut = select.threshold_for_count(full, n // 2)
    assert cut.ties < cut.tied
    for t in full[:2]:
        halves = [row_chunk(t, r, WORLD).abs() == cut.threshold for r in range(WORLD)]
        assert all(bool(h.any()) for h in halves)


@pytest.mark.parametrize("name", list(SCALED))
def test_collectives_do_not_grow_with_the_number_of_weights(
    name: str, ranks: list[dict[str, dict[str, object]]]
) -> None:
    counts = [r["collectives"][name] for r in ranks]
    assert counts[0] == counts[1]
    few, many = counts[0]  # type: ignore[misc]
    assert few == many > 0
