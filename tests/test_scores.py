"""``score=``: every criterion's masks against a brute force written here, round by round.

The brute force computes each score from its definition (numpy, from the weights, gradients
and layer inputs recorded in a plain training loop) and picks the pruned entries by sorting:
already pruned first, then the lowest score, ties by (tensor, flat index).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn

import lightning_sparsity as ls
from tests.score_fit import Net, fit

SCORES = ["magnitude", "random", "taylor", "movement", "wanda"]
NAMES = ["0.weight", "2.weight"]


def _effective(layer: nn.Module) -> torch.Tensor:
    """The weight the layer computes with now (``"prune"`` storage's ``layer.weight`` is
    only recomputed at the next forward)."""
    if hasattr(layer, "weight_orig"):
        return (layer.weight_orig * layer.weight_mask).detach()
    return layer.weight.detach()


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32))


class Record:
    """What the brute force needs, recorded by hand around a plain training loop."""

    def __init__(self) -> None:
        self.wg: dict[str, list[np.ndarray]] = {n: [] for n in NAMES}  # w * g per step
        self.sq: dict[str, np.ndarray] = {n: np.zeros(32) for n in NAMES}  # sum x_j^2

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]


def _train(model: nn.Sequential, opt: Any, record: Record, steps: int, gen: torch.Generator):
    for _ in range(steps):
        x = torch.randn(9, 32, generator=gen)
        with torch.no_grad():  # the layer inputs, by hand
            h = torch.relu(x @ _effective(model[0]).T + model[0].bias)
        for name, inp in zip(NAMES, (x, h), strict=True):
            record.sq[name] += (inp.double().numpy() ** 2).sum(0)
        loss = (model(x) - 1.0).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        for name, layer in zip(NAMES, (model[0], model[2]), strict=True):
            trained = getattr(layer, "weight_orig", layer.weight)  # mask_storage="prune"
            w = trained.detach().numpy().astype(np.float32)
            g = trained.grad.numpy().astype(np.float32)
            record.wg[name].append(w * g)
        opt.step()


def _reference(score: str, model: nn.Sequential, record: Record, seed: int) -> list[np.ndarray]:
    """Each weight's scores from the criterion's definition."""
    out = []
    for name, layer in zip(NAMES, (model[0], model[2]), strict=True):
        w = _effective(layer).numpy().astype(np.float64)
        if score == "magnitude":
            s = np.abs(w)
        elif score == "random":
            g = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}".encode()))
            s = torch.rand(w.shape, generator=g).double().numpy()
        elif score == "taylor":
            acc = np.zeros(w.shape, np.float32)
            for wg in record.wg[name]:
                acc = acc + np.abs(wg)
            s = acc.astype(np.float64)
        elif score == "movement":
            acc = np.zeros(w.shape, np.float32)
            for wg in record.wg[name]:
                acc = acc - wg
            s = acc.astype(np.float64)
        else:  # wanda: |w_ij| * ||x_j||_2
            s = np.abs(w) * np.sqrt(record.sq[name])[None, :]
        out.append(s)
    return out


def _brute_global(
    scores: list[np.ndarray], keeps: list[np.ndarray], count: int
) -> list[np.ndarray]:
    """Prune ``count`` entries over all tensors: already pruned first, then lowest score."""
    flat = np.concatenate([s.ravel() for s in scores])
    alive = np.concatenate([k.ravel() for k in keeps]).astype(np.int64)
    order = np.lexsort((np.arange(flat.size), flat, alive))  # last key first
    keep = np.ones(flat.size, bool)
    keep[order[:count]] = False
    out, start = [], 0
    for s in scores:
        out.append(keep[start : start + s.size].reshape(s.shape))
        start += s.size
    return out


def _rows(scores: np.ndarray, keep: np.ndarray, count: int) -> np.ndarray:
    """Prune ``count`` rows of one layer: pruned rows first, then the lowest sum of scores
    (the L1 norm of the nonnegative ones; signed movement scores sum as they are)."""
    l1 = np.where(keep, scores, 0.0).sum(1)
    order = np.lexsort((np.arange(len(l1)), l1, keep.any(1).astype(np.int64)))
    out = keep.copy()
    out[order[:count]] = False
    return out


def _two_four(scores: np.ndarray, keep: np.ndarray, fraction: float) -> np.ndarray:
    """Per layer: prune ``fraction`` of the groups of 4 inputs to 2:4, lowest loss (the sum
    of a group's 2 lowest scores) first; a pruned group keeps its 2 highest."""
    s = np.where(keep, scores, -np.inf).reshape(-1, 4)
    k = keep.reshape(-1, 4)
    losses = np.sort(s, axis=1)[:, :2].sum(1)
    pruned_groups = k.sum(1) <= 2
    order = np.lexsort((np.arange(len(losses)), losses, (~pruned_groups).astype(np.int64)))
    chosen = np.zeros(len(losses), bool)
    chosen[order[: round(fraction * len(losses))]] = True
    out = k.copy()
    for gi in np.flatnonzero(chosen):
        top = np.argsort(-s[gi], kind="stable")[:2]
        out[gi] = False
        out[gi, top] = k[gi, top]
    return out.reshape(scores.shape)


def _masks(model: nn.Sequential) -> list[np.ndarray]:
    return [(_effective(layer) != 0).numpy() for layer in (model[0], model[2])]


def _two_rounds(score: str, make: Callable[[Any], ls.MagnitudePruner], prune: Any, brute: Any):
    """Train, prune, train, prune: the pruner's masks equal the brute force's each round."""
    model, record, gen = _model(), Record(), torch.Generator().manual_seed(1)
    pruner = make(None)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    pruner.observe(model)
    pruner.attach(opt)
    for round_, (steps, sparsity) in enumerate([(3, 0.3), (2, 0.6)]):
        _train(model, opt, record, steps, gen)
        expected = brute(_reference(score, model, record, seed=7), _masks(model), sparsity)
        prune(pruner, model, sparsity)
        got = _masks(model)
        for name, e, g in zip(NAMES, expected, got, strict=True):
            assert np.array_equal(e, g), (score, round_, name, int((e != g).sum()))
        record.reset()


@pytest.mark.parametrize("storage", ["inplace", "prune"])
@pytest.mark.parametrize("score", SCORES)
def test_global_entries_equal_a_brute_force(score: str, storage: str) -> None:
    def brute(scores: list[np.ndarray], keeps: list[np.ndarray], s: float) -> list[np.ndarray]:
        return _brute_global(scores, keeps, round(s * sum(x.size for x in scores)))

    _two_rounds(
        score,
        lambda _: ls.MagnitudePruner(
            score=score,
            seed=7,
            min_density=0.0,
            mask_storage=storage,  # type: ignore[arg-type]
        ),
        lambda p, m, s: p.apply(m, s),
        brute,
    )


@pytest.mark.parametrize("score", SCORES)
def test_uniform_rows_equal_a_brute_force(score: str) -> None:
    def brute(scores: list[np.ndarray], keeps: list[np.ndarray], s: float) -> list[np.ndarray]:
        return [_rows(x, k, round(s * x.shape[0])) for x, k in zip(scores, keeps, strict=True)]

    _two_rounds(
        score,
        lambda _: ls.MagnitudePruner(
            score=score, seed=7, structured=True, allocation="uniform", min_density=0.0
        ),
        lambda p, m, s: p.apply(m, s),
        brute,
    )


@pytest.mark.parametrize("score", SCORES)
def test_uniform_two_four_groups_equal_a_brute_force(score: str) -> None:
    def brute(scores: list[np.ndarray], keeps: list[np.ndarray], s: float) -> list[np.ndarray]:
        return [_two_four(x, k, s / 0.5) for x, k in zip(scores, keeps, strict=True)]

    def prune(p: ls.MagnitudePruner, m: nn.Module, s: float) -> None:
        p.apply(m, s * 0.8)  # at most half the weights: 0.24, then 0.48

    _two_rounds(
        score,
        lambda _: ls.MagnitudePruner(
            score=score, seed=7, pattern="2:4", allocation="uniform", min_density=0.0
        ),
        prune,
        lambda sc, k, s: brute(sc, k, s * 0.8),
    )


@pytest.mark.parametrize("score", SCORES)
def test_flop_targets_land_and_prune_the_lowest_scores(score: str) -> None:
    """A FLOP target: within one weight's cost of the target (magnitude's tolerance), and
    every entry pruned scores at most what every kept entry scores."""
    model, record, gen = _model(), Record(), torch.Generator().manual_seed(1)
    pruner = ls.MagnitudePruner(score=score, seed=7, min_density=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    pruner.observe(model)
    pruner.attach(opt)
    _train(model, opt, record, 3, gen)
    scores = _reference(score, model, record, seed=7)
    costs = {"0.weight": 6.0, "2.weight": 2.0}  # FLOPs per nonzero weight
    dense = 32 * 32 * (6.0 + 2.0)
    target = 0.45 * dense
    got = pruner.apply_flop_target(model, target, costs)
    masks = _masks(model)
    counted = sum(costs[n] * m.sum() for n, m in zip(NAMES, masks, strict=True))
    assert got == counted  # what it says it reached is what the masks hold
    assert abs(got - target) <= max(costs.values())
    pruned = np.concatenate([s[~m] for s, m in zip(scores, masks, strict=True)])
    kept = np.concatenate([s[m] for s, m in zip(scores, masks, strict=True)])
    assert pruned.max() <= kept.min() * (1 + 1e-6) + 1e-12


def test_random_scores_depend_on_the_seed_and_stay_nested() -> None:
    """Seeds draw different masks; a second prune keeps the first one's zeros (one ranking)."""
    a, b = _model(), _model()
    ls.MagnitudePruner(score="random", seed=1).apply(a, 0.5)
    ls.MagnitudePruner(score="random", seed=2).apply(b, 0.5)
    assert not all(np.array_equal(x, y) for x, y in zip(_masks(a), _masks(b), strict=True))
    first = _masks(a)
    ls.MagnitudePruner(score="random", seed=1).apply(a, 0.7)
    assert all((~f <= ~s).all() for f, s in zip(first, _masks(a), strict=True))


def test_a_callable_score_and_its_bad_returns() -> None:
    """A function ranks like the brute force; a wrong shape is named."""

    def by_column(fqn: str, weight: torch.Tensor, state: Any) -> torch.Tensor:
        return torch.arange(weight.shape[1], dtype=torch.float32).expand_as(weight) - 3.0

    model = _model()
    ls.MagnitudePruner(score=by_column, min_density=0.0).apply(model, 0.25)
    # the lowest columns go first in both layers: 0.25 * 2048 = 512 = 2 layers * 32 rows * 8
    for mask in _masks(model):
        assert not mask[:, :8].any()
        assert mask[:, 8:].all()

    def wrong(fqn: str, weight: torch.Tensor, state: Any) -> torch.Tensor:
        return weight.flatten()

    with pytest.raises(ValueError, match=r"0\.weight: shape \(1024,\), the weight \(32, 32\)"):
        ls.MagnitudePruner(score=wrong).apply(_model(), 0.5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"score": "taylr"}, "`score` must be one of ('magnitude', 'random', 'taylor',"),
        ({"score": lambda w: w}, "must take (fqn, weight, state)"),
        ({"seed": -1}, "`seed` must be an int >= 0, got -1"),
    ],
)
def test_bad_settings_are_named(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ls.MagnitudePruner(**kwargs)


@pytest.mark.parametrize("score", ["taylor", "movement", "wanda"])
def test_a_prune_without_collected_data_says_what_to_do(score: str) -> None:
    with pytest.raises(ValueError, match=f"score='{score}' ranks by .* none were"):
        ls.MagnitudePruner(score=score).apply(_model(), 0.5)


def test_wanda_names_layers_it_cannot_score() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.LSTM(8, 8))
    pruner = ls.MagnitudePruner(score="wanda", parameters=[r"0\.weight", r"1\.weight_ih_l0"])
    with pytest.raises(ValueError, match=r"1\.weight_ih_l0: not a layer's `weight`"):
        pruner.observe(model)


def test_wanda_on_a_grouped_convolution_equals_its_definition() -> None:
    """Conv2d(4 -> 6, groups=2): entry (o, c) reads input channel (o // 3) * 2 + c."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, groups=2)
    pruner = ls.MagnitudePruner(score="wanda", min_density=0.0)
    pruner.observe(conv)
    x = torch.randn(5, 4, 7, 7)
    conv(x)
    norms = x.double().pow(2).sum((0, 2, 3)).sqrt().numpy()
    w = conv.weight.detach().double().numpy()
    expected = np.empty_like(w)
    for o in range(6):
        for c in range(2):
            expected[o, c] = np.abs(w[o, c]) * norms[(o // 3) * 2 + c]
    (keep,) = _brute_global([expected], [np.ones(w.shape, bool)], round(0.5 * w.size))
    pruner.apply(conv, 0.5)
    assert np.array_equal((conv.weight.detach() != 0).numpy(), keep)


# ---------------------------------------------------------------------------- a real fit


@pytest.mark.parametrize("score", ["taylor", "wanda"])
def test_a_resume_between_prunes_continues_the_accumulation(tmp_path: Path, score: str) -> None:
    """Stopped after epoch 3 (accumulating since the prune at 2), resumed from its checkpoint
    to epoch 5: the masks and weights equal an uninterrupted run's. A resume that lost the
    accumulators would rank by epoch 4's steps alone."""
    whole = fit(tmp_path / "whole", score, 5)
    fit(tmp_path / "cut", score, 3)
    resumed = fit(tmp_path / "cut", score, 5, ckpt=str(tmp_path / "cut" / "ckpt" / "last.ckpt"))
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a.detach() != 0, b.detach() != 0)
        torch.testing.assert_close(a, b)
    sparsity = (whole.fc1.weight == 0).float().mean() + (whole.fc2.weight == 0).float().mean()
    assert sparsity > 0  # it did prune


class RecordGrads(pl.Callback):
    """``w · g`` of each weight where Lightning says the gradients are final."""

    def __init__(self) -> None:
        self.wg: dict[str, list[np.ndarray]] = {"fc1.weight": [], "fc2.weight": []}

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        for name in self.wg:
            p = pl_module.get_parameter(name)
            self.wg[name].append(p.detach().numpy() * p.grad.numpy())


@pytest.mark.parametrize("score", ["taylor", "movement"])
def test_a_fit_ranks_by_the_gradients_each_step_stepped_with(tmp_path: Path, score: str) -> None:
    """Lightning steps with a closure (forward and backward inside ``optimizer.step``): the
    scores are the gradients of each step, recorded by ``on_before_optimizer_step``; a hook
    reading them before the closure would see the previous step's (and none at step 1)."""
    schedule = ls.schedules.Step(milestones=[2], sparsities=[0.5])
    pruner = ls.MagnitudePruner(schedule=schedule, score=score, min_density=0.0)
    record = RecordGrads()
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        callbacks=[record, ls.SparsityCallback(pruner, write_files=False, verbose=False)],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = Net()
    trainer.fit(model)
    assert len(record.wg["fc1.weight"]) == 6  # 2 epochs of 3 batches
    sign = 1.0 if score == "movement" else None
    scores = []
    for name in ("fc1.weight", "fc2.weight"):
        acc = np.zeros(record.wg[name][0].shape, np.float32)
        for wg in record.wg[name]:
            acc = acc - wg if sign else acc + np.abs(wg)
        scores.append(acc.astype(np.float64))
    total = sum(s.size for s in scores)
    expected = _brute_global(scores, [np.ones(s.shape, bool) for s in scores], round(0.5 * total))
    for e, layer in zip(expected, (model.fc1, model.fc2), strict=True):
        assert np.array_equal(e, (layer.weight.detach() != 0).numpy())


@pytest.mark.ddp
@pytest.mark.parametrize(
    "score", ["taylor", "wanda", pytest.param("random", marks=pytest.mark.slow)]
)
def test_ddp_ranks_with_different_data_prune_the_same_weights(tmp_path: Path, score: str) -> None:
    """Each rank trains on its half of the data: taylor's gradients are averaged by DDP
    before the step, wanda's input norms are summed over the ranks at the prune, random
    draws from the seed and the name: identical masks, 70% of 640 weights pruned."""
    from tests.fits import run_ranks

    ranks = run_ranks("scores_ddp.py", tmp_path, score, timeout=300)
    assert ranks[0]["masks_sha"] == ranks[1]["masks_sha"]
    assert ranks[0]["pruned"] == round(0.7 * (16 * 32 + 32 * 4))


def test_a_schedule_pruning_before_the_first_step_is_refused_at_fit_start(tmp_path: Path) -> None:
    """Constant(s, start_epoch=0) prunes before training: taylor has nothing to rank by yet;
    refused when the fit starts, before any epoch, naming the schedule."""
    schedule = ls.schedules.Constant(0.5, start_epoch=0)
    pruner = ls.MagnitudePruner(schedule=schedule, score="taylor")
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ls.SparsityCallback(pruner, write_files=False, verbose=False)],
    )
    model = Net()
    with pytest.raises(ValueError, match=r"prunes at epoch 0, before any step; start it at"):
        trainer.fit(model)
    assert trainer.global_step == 0


@pytest.mark.slow
@pytest.mark.parametrize("score", ["taylor", "wanda"])
def test_a_fit_killed_mid_accumulation_resumes_as_if_never_killed(tmp_path: Path, score: str):
    """SIGKILL after the first step of epoch 4 (steps since the prune at epoch 2 in the
    accumulators); resumed from the last epoch-end checkpoint, Lightning runs epoch 4 again
    from its start: masks and weights equal an uninterrupted run's."""
    from tests.score_fit import killed_and_resumed

    whole, resumed = killed_and_resumed(tmp_path, score)
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
