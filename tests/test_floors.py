"""A pruned model still works: per-layer floors, the floors in budgets, refusals at fit start.

Issue #14, defects 3, 5 and 8. Every expected mask here comes from a brute force written in
this file (stable sorts over the weights), every expected FLOP count from a closed form in a
comment.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import lightning_sparsity as ls
from lightning_sparsity.pruning import MagnitudePruner
from tests.fits import Wide, quiet_trainer


class CNN(nn.Module):
    """2 convs and 2 linears on 1x8x8 (per example, 2 FLOPs per MAC):

    conv1 1->8 3x3 pad 1: 72 weights x 2 * 64 = 9,216; conv2 8->16 3x3 pad 1: 1,152 x 128 =
    147,456; fc1 1024->32: 32,768 x 2 = 65,536; fc2 32->10: 320 x 2 = 640. Dense 222,848.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * 8 * 8, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
    )


def pattern_mlp() -> nn.Module:
    """Every weight fits the 2:4 kernels' shape rule (multiples of 32 x 32 in float32)."""
    return nn.Sequential(
        nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32)
    )


def weights(model: nn.Module) -> dict[str, Tensor]:
    return {
        name: p.detach()
        for name, p in model.named_parameters()
        if name.endswith("weight") and p.dim() > 1
    }


def floor_entries(w: Tensor, density: float = 0.01) -> int:
    """max(ceil(d * numel), rows), as the README states the default floor."""
    return min(w.numel(), max(math.ceil(density * w.numel()), w.shape[0]))


def brute_floored_keep(
    tensors: list[Tensor], prune: int, scales: list[float], density: float = 0.01
) -> list[Tensor]:
    """Prune ``prune`` entries globally, smallest ``|w| * scale`` first, under the floors.

    Per layer the floor is each row's largest |w| (the first on a draw) and then the largest
    others up to ``floor_entries``, ties to the lower flat index; the rest of all layers are
    ranked by (score, layer, flat index) with one stable sort, and the first ``prune`` go.
    """
    scores, protected = [], []
    for w, scale in zip(tensors, scales, strict=True):
        flat = w.reshape(-1).double().abs() * scale
        rows = flat.view(w.shape[0], -1)
        chosen = torch.zeros(flat.numel(), dtype=torch.bool)
        chosen[torch.arange(w.shape[0]) * rows.shape[1] + rows.argmax(1)] = True  # first max
        rest = torch.where(chosen, -math.inf, flat)
        order = torch.sort(-rest, stable=True).indices  # largest first, lower index first
        chosen[order[: floor_entries(w, density) - int(chosen.sum())]] = True
        scores.append(torch.where(chosen, math.inf, flat))
        protected.append(chosen)
    order = torch.sort(torch.cat(scores), stable=True).indices
    keep = torch.ones(order.numel(), dtype=torch.bool)
    keep[order[:prune]] = False
    return [
        k.view(w.shape)
        for k, w in zip(keep.split([w.numel() for w in tensors]), tensors, strict=True)
    ]


def assert_floors_hold(model: nn.Module, density: float = 0.01) -> None:
    for name, w in weights(model).items():
        nnz = int((w != 0).sum())
        assert nnz >= floor_entries(w, density), f"{name}: {nnz} nonzeros"
        rows_alive = (w.reshape(w.shape[0], -1) != 0).any(1)
        assert bool(rows_alive.all()), f"{name}: a row lost every weight"


def output_depends_on_input(model: nn.Module, shape: tuple[int, ...]) -> bool:
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        out = model(torch.randn(16, *shape, generator=g))
    return bool((out.std(0) > 1e-6).any())


# ------------------------------------------------------------------ defect 8: collapse


def test_flop_weighted_allocation_kept_both_convs_and_equals_brute_force() -> None:
    x = torch.zeros(1, 1, 8, 8)
    torch.manual_seed(0)
    bare = CNN()
    cost = ls.SparsityMeter(bare, x).cost_model()
    # without a floor (the old behaviour, now opt-in) FLOP weighting empties both convs
    MagnitudePruner(allocation="flops", min_density=0.0).apply(
        bare, 0.8, flops_per_nonzero=cost.flops_per_nonzero
    )
    assert int((bare.conv1.weight != 0).sum()) == 0
    assert int((bare.conv2.weight != 0).sum()) == 0

    torch.manual_seed(0)
    model = CNN()
    before = [w.clone() for w in weights(model).values()]
    MagnitudePruner(allocation="flops").apply(model, 0.8, flops_per_nonzero=cost.flops_per_nonzero)
    assert_floors_hold(model)
    n = sum(w.numel() for w in before)
    after = list(weights(model).values())
    assert sum(int((w == 0).sum()) for w in after) == round(0.8 * n)  # still exact
    # scores |w| * mean / cost_l, mean = sum(cost * numel) / sum(numel)
    costs = [cost.flops_per_nonzero[name] for name in weights(model)]
    mean = sum(c * w.numel() for c, w in zip(costs, before, strict=True)) / n
    expected = brute_floored_keep(before, round(0.8 * n), [mean / c for c in costs])
    for w, keep in zip(after, expected, strict=True):
        assert torch.equal(w != 0, keep)
    assert output_depends_on_input(model, (1, 8, 8))


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.99])
def test_global_floors_equal_brute_force(sparsity: float) -> None:
    torch.manual_seed(1)
    model = mlp()
    before = [w.clone() for w in weights(model).values()]
    n = sum(w.numel() for w in before)
    most = n - sum(floor_entries(w) for w in before)
    wanted = round(sparsity * n)
    if wanted > most:
        with pytest.warns(UserWarning, match=r"per-layer floors .* at most"):
            MagnitudePruner().apply(model, sparsity)
    else:
        MagnitudePruner().apply(model, sparsity)
    expected = brute_floored_keep(before, min(wanted, most), [1.0] * len(before))
    for w, keep in zip(weights(model).values(), expected, strict=True):
        assert torch.equal(w != 0, keep)
    assert_floors_hold(model)


@pytest.mark.parametrize("allocation", ["uniform", "erk"])
def test_per_layer_allocations_stop_at_the_floor(allocation: str) -> None:
    torch.manual_seed(2)
    model = CNN()
    before = {k: w.clone() for k, w in weights(model).items()}
    MagnitudePruner(allocation=allocation).apply(model, 0.995)
    assert_floors_hold(model)
    for name, w in weights(model).items():
        # layer l prunes min(round(s_l * n_l), n_l - floor_l): at uniform 0.995 every layer
        # is held at its floor
        if allocation == "uniform":
            assert int((w != 0).sum()) == floor_entries(before[name])
    assert output_depends_on_input(model, (1, 8, 8))


def test_mlp_flop_target_keeps_the_wide_layers() -> None:
    torch.manual_seed(0)
    bare = mlp()
    # the case: global magnitude at initialisation ranks whole layers by fan-in
    ls.prune_to_flops(bare, torch.zeros(1, 64), "5%", pruner=MagnitudePruner(min_density=0.0))
    assert int((bare[2].weight != 0).sum()) == 0
    assert int((bare[4].weight != 0).sum()) == 0
    assert not output_depends_on_input(bare, (64,))

    torch.manual_seed(0)
    model = mlp()
    report = ls.prune_to_flops(model, torch.zeros(1, 64), "5%")
    # dense 2 * (64*512 + 512*512 + 512*10) = 600,064; 5% = 30,003.2, landed at or below,
    # by less than the costliest weight's 2 FLOPs
    assert report.total.flops == 600_064
    assert 30_003.2 - 2 <= report.total.flops_sparse <= 30_003.2
    assert_floors_hold(model)
    assert output_depends_on_input(model, (64,))


def test_an_emptied_layer_is_warned_about() -> None:
    torch.manual_seed(0)
    model = mlp()
    with pytest.warns(UserWarning, match=r"no nonzero weight in \['2\.weight', '4\.weight'\]"):
        ls.prune_to_flops(model, torch.zeros(1, 64), "5%", pruner=MagnitudePruner(min_density=0.0))


def test_max_sparsity_caps_a_layer() -> None:
    torch.manual_seed(0)
    model = CNN()
    pruner = MagnitudePruner(max_sparsity={r"fc1\.weight": 0.5, r".*": 0.97})
    pruner.apply(model, 0.45)
    w = weights(model)
    # fc1 keeps at least 50% of its 32,768 weights: 16,384
    assert int((w["fc1.weight"] != 0).sum()) >= 16_384
    for name in ("conv1.weight", "conv2.weight", "fc2.weight"):
        assert int((w[name] != 0).sum()) >= math.ceil(0.03 * w[name].numel())
    total = sum(t.numel() for t in w.values())
    assert sum(int((t == 0).sum()) for t in w.values()) == round(0.45 * total)
    assert pruner.floor_densities(model)["fc1.weight"] == 0.5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_density": 1.0}, r"`min_density` must be a number in \[0, 1\), got 1\.0"),
        ({"min_density": "0.1"}, r"`min_density` must be a number in \[0, 1\), got '0\.1'"),
        ({"max_sparsity": 1.5}, r"`max_sparsity` must be a number in \[0, 1\]"),
        ({"max_sparsity": {"(": 0.5}}, r"`max_sparsity` holds an invalid regex '\('"),
        ({"max_sparsity": {"fc": -0.1}}, r"`max_sparsity\['fc'\]` must be a number in \[0, 1\]"),
    ],
)
def test_bad_floors_are_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MagnitudePruner(**kwargs)


# ------------------------------------------------------------------ property


def _prunes() -> list[tuple[str, Any, Any, tuple[int, ...]]]:
    """(id, model factory, prune(model, x), input shape) for every default kind of prune."""
    cases: list[tuple[str, Any, Any, tuple[int, ...]]] = []
    for allocation in ("global", "uniform", "erk", "flops"):
        for structured in (False, True):

            def prune(m: nn.Module, x: Tensor, a: str = allocation, s: bool = structured) -> None:
                costs = ls.SparsityMeter(m, x).cost_model().flops_per_nonzero
                MagnitudePruner(allocation=a, structured=s).apply(m, 0.999, flops_per_nonzero=costs)

            cases.append((f"{allocation}-structured={structured}", CNN, prune, (1, 8, 8)))
    for allocation in ("global", "uniform"):

        def nm(m: nn.Module, x: Tensor, a: str = allocation) -> None:
            MagnitudePruner(pattern="2:4", allocation=a).apply(m, 0.5)

        cases.append((f"2:4-{allocation}", pattern_mlp, nm, (64,)))
    for structured in (False, True):

        def target(m: nn.Module, x: Tensor, s: bool = structured) -> None:
            pruner = MagnitudePruner(structured=s)
            floor = ls.SparsityMeter(m, x).cost_model().floor(pruner.floor_densities(m))
            ls.prune_to_flops(m, x, floor * 1.0001, pruner=pruner)  # just above the floor

        cases.append((f"flop-target-structured={structured}", CNN, target, (1, 8, 8)))

    def nm_target(m: nn.Module, x: Tensor) -> None:
        ls.prune_to_flops(m, x, "51%", pruner=MagnitudePruner(pattern="2:4"))

    cases.append(("flop-target-2:4", pattern_mlp, nm_target, (64,)))
    return cases


@pytest.mark.filterwarnings("ignore:the per-layer floors")
@pytest.mark.parametrize(
    ("factory", "prune", "shape"), [c[1:] for c in _prunes()], ids=[c[0] for c in _prunes()]
)
def test_every_default_prune_keeps_floors_and_the_model_connected(
    factory: Any, prune: Any, shape: tuple[int, ...]
) -> None:
    torch.manual_seed(3)
    model = factory()
    x = torch.zeros(1, *shape)
    prune(model, x)
    # the least density each layer may reach: entries (at least one per row), rows with
    # structured=True, N of every M with a pattern (floor_densities is checked against a
    # closed form in the budget tests)
    floors = MagnitudePruner().floor_densities(model)
    for name, w in weights(model).items():
        assert int((w != 0).sum()) >= round(floors[name] * w.numel()) > 0, name
    assert output_depends_on_input(model, shape)


# ------------------------------------------------------------------ defect 3: the N:M floor


def test_prune_to_flops_refuses_a_target_below_the_pattern_floor() -> None:
    model = pattern_mlp()
    # 2:4 keeps half of every weight: the floor is 2 * (64*64 + 64*64 + 64*32) / 2 = 10,240
    # FLOPs of 20,480 = 50.00% of dense
    with pytest.raises(
        ValueError,
        match=r"'10%' .* unreachable: .* has 10,240 sparse FLOPs; the lowest reachable target"
        r" is 50\.00% of dense .*an N:M pattern keeps N of every M",
    ):
        ls.prune_to_flops(model, torch.zeros(1, 64), "10%", pruner=MagnitudePruner(pattern="2:4"))
    assert all(int((w == 0).sum()) == 0 for w in weights(model).values())  # nothing pruned


def test_an_adjust_budget_below_the_pattern_floor_fails_at_fit_start(tmp_path: Path) -> None:
    class PatternWide(Wide):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(1024, 64)
            self.fc2 = nn.Linear(64, 32)  # 32 rows: the 2:4 kernels take it

    callback = ls.SparsityCallback(
        MagnitudePruner(pattern="2:4"),
        ls.FlopBudget("10%", by_epoch=3, action="adjust"),
        write_files=False,
    )
    trainer = quiet_trainer(tmp_path, [callback], epochs=3)
    with pytest.raises(ValueError, match=r"'10%' .* unreachable.*N:M pattern keeps N of every M"):
        trainer.fit(PatternWide())
    assert trainer.global_step == 0


# ------------------------------------------------------------------ defect 5: at fit start


def test_a_schedule_beyond_the_pattern_is_refused_at_construction() -> None:
    with pytest.raises(
        ValueError, match=r"the schedule reaches sparsity 0\.6, but with pattern '2:4' at most 0\.5"
    ):
        MagnitudePruner(pattern="2:4", schedule=ls.schedules.Cubic(0.6, start_epoch=0, end_epoch=4))


def test_a_schedule_beyond_the_floors_is_refused_at_fit_start(tmp_path: Path) -> None:
    pruner = MagnitudePruner(schedule=ls.schedules.Constant(0.999, start_epoch=1))
    trainer = quiet_trainer(tmp_path, [ls.SparsityCallback(pruner, write_files=False)], epochs=2)
    with pytest.raises(ValueError, match=r"reaches sparsity 0\.999, but the per-layer floors"):
        trainer.fit(Wide())
    assert trainer.global_step == 0


def test_parameters_matching_nothing_are_refused_before_any_step(tmp_path: Path) -> None:
    pruner = MagnitudePruner(
        parameters=[r"encoder\..*"], schedule=ls.schedules.Constant(0.5, start_epoch=1)
    )
    trainer = quiet_trainer(tmp_path, [ls.SparsityCallback(pruner, write_files=False)], epochs=2)
    with pytest.raises(ValueError, match=r"no parameter to prune: nothing matches parameters="):
        trainer.fit(Wide())
    assert trainer.global_step == 0


def test_matches_dropped_by_the_shape_rule_are_named_before_any_step(tmp_path: Path) -> None:
    pruner = MagnitudePruner(
        parameters=[r"fc2\.weight"],  # 10 x 64: not a multiple of (32, 32)
        pattern="2:4",
        schedule=ls.schedules.Constant(0.5, start_epoch=1),
    )
    trainer = quiet_trainer(tmp_path, [ls.SparsityCallback(pruner, write_files=False)], epochs=2)
    with pytest.raises(
        ValueError,
        match=r"matched 1, every one left out: 'fc2\.weight': pattern 2:4: its shape \(10, 64\)"
        r" is not a multiple of \(32, 32\)",
    ):
        trainer.fit(Wide())
    assert trainer.global_step == 0


# ------------------------------------------------------------------ defect 7: inf/NaN named


class Diverge(pl.Callback):
    """Writes inf and NaN into fc1.weight at the end of epoch 1, as a diverging fit would."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        with torch.no_grad():
            pl_module.fc1.weight[0, :3] = torch.tensor([math.inf, -math.inf, math.nan])


def test_a_diverged_weight_is_named_when_pruning_meets_it(tmp_path: Path) -> None:
    pruner = MagnitudePruner(schedule=ls.schedules.Linear(0.5, start_epoch=0, end_epoch=2))
    callbacks = [Diverge(), ls.SparsityCallback(pruner, write_files=False)]
    trainer = quiet_trainer(tmp_path, callbacks, epochs=2)
    # fc1 is 1024 -> 64: 65,536 entries, 3 of them written non-finite
    with pytest.raises(
        ValueError, match=r"cannot rank weights holding inf or NaN: fc1\.weight \(3 of 65536\)"
    ):
        trainer.fit(Wide())
