"""RigL and SET: every update's drop and grow sets against a brute force of the paper's rule.

The brute force (numpy) takes the weights and the *dense* gradients, recomputed here with
``torch.autograd.grad`` on fresh copies of the weights (no mask hook involved), and applies
the rule of Evci et al. 2020: every ΔT steps before T_end, per layer, drop the
``k = round(α/2 · (1 + cos(π t / T_end)) · n)`` live weights of smallest ``|w|``, grow the
``k`` inactive ones (the dropped ones included) of largest ``|g|`` (SET: of a seeded draw).
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn

import lightning_sparsity as ls
from tests.fits import Learning

NAMES = ["0.weight", "2.weight"]


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 40), nn.ReLU(), nn.Linear(40, 6))


def _dense_grads(model: nn.Sequential, x: torch.Tensor) -> list[np.ndarray]:
    """The loss's gradient w.r.t. each weight, every entry, on detached copies."""
    w0 = model[0].weight.detach().clone().requires_grad_(True)
    w2 = model[2].weight.detach().clone().requires_grad_(True)
    out = F.linear(F.relu(F.linear(x, w0, model[0].bias.detach())), w2, model[2].bias.detach())
    loss = (out - 1.0).pow(2).mean()
    return [g.numpy() for g in torch.autograd.grad(loss, [w0, w2])]


def _rule(w: np.ndarray, g: np.ndarray, live: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """RigL's drop and grow on one layer: the mask after the drop, and after the growth."""
    flat_w, flat_g, flat_live = np.abs(w).ravel(), np.abs(g).ravel(), live.ravel()
    index = np.arange(flat_w.size)
    alive = np.flatnonzero(flat_live)
    by_magnitude = alive[np.lexsort((alive, flat_w[alive]))]  # smallest |w| first
    kept = flat_live.copy()
    kept[by_magnitude[:k]] = False
    candidates = index[~kept]
    by_score = candidates[np.lexsort((candidates, flat_g[candidates]))][::-1]  # largest first
    new = kept.copy()
    new[by_score[:k]] = True
    return kept.reshape(w.shape), new.reshape(w.shape)


def _keeps(pruner: ls.MagnitudePruner, model: nn.Module) -> list[np.ndarray]:
    masks = pruner.masks(model)
    return [masks[n].numpy() for n in NAMES]


@pytest.mark.parametrize("method", ["rigl", "set"])
def test_every_update_equals_the_brute_force_rule(method: str) -> None:
    delta_t, end, alpha, seed = 3, 16, 0.4, 11
    model = _model()
    cls = ls.RigL if method == "rigl" else ls.SET
    pruner = cls(
        0.75, allocation="uniform", delta_t=delta_t, end_step=end, drop_fraction=alpha, seed=seed
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner.observe(model)
    pruner.attach(opt)
    masks = _keeps(pruner, model)
    live = [int(m.sum()) for m in masks]
    assert live == [round(0.25 * 24 * 40), round(0.25 * 40 * 6)]  # uniform: 240, 60
    gen = torch.Generator().manual_seed(2)
    updates = moved = 0
    for t in range(1, 21):
        x = torch.randn(10, 24, generator=gen)
        weights = [model[0].weight.detach().numpy().copy(), model[2].weight.detach().numpy().copy()]
        dense = _dense_grads(model, x)
        loss = (model(x) - 1.0).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        now = _keeps(pruner, model)
        if t % delta_t or t >= end:
            assert all(np.array_equal(a, b) for a, b in zip(masks, now, strict=True)), t
            continue
        updates += 1
        f = alpha / 2 * (1 + math.cos(math.pi * t / end))
        for i, name in enumerate(NAMES):
            k = round(f * live[i])
            if method == "rigl":
                score = dense[i]
            else:
                gen_t = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}:{t}".encode()))
                score = torch.rand(weights[i].shape, generator=gen_t).numpy()
            kept, expected = _rule(weights[i], score, masks[i], k)
            assert np.array_equal(now[i], expected), (t, name, int((now[i] != expected).sum()))
            assert int(now[i].sum()) == live[i]  # the layer's sparsity holds
            layer = model[0] if i == 0 else model[2]
            grown = expected & ~masks[i]  # inactive before, live now: start at zero
            assert (layer.weight.detach().numpy()[grown] == 0).all()
            regrown = expected & ~kept & masks[i]  # dropped and grown again: never inactive
            assert grown.sum() + regrown.sum() == k
            assert (opt.state[layer.weight]["momentum_buffer"].numpy()[grown] == 0).all()
            moved += k
        masks = now
    assert updates == pruner.updates == len([t for t in range(1, 21) if t % 3 == 0 and t < 16])
    assert moved > 100  # the updates did move connections


def test_erk_first_masks_and_settings_errors() -> None:
    model = _model()
    pruner = ls.RigL(0.8, end_step=10)  # erk by default
    pruner.observe(model)
    densities = ls.pruning.erk_densities([(40, 24), (6, 40)], 0.2)
    got = [m.mean() for m in _keeps(pruner, model)]
    for d, g, n in zip(densities, got, (960, 240), strict=True):
        assert abs(g - d) <= 1 / n
    with pytest.raises(ValueError, match=r"`delta_t` must be an int >= 1, got 0"):
        ls.RigL(delta_t=0)
    with pytest.raises(ValueError, match=r"`grow` must be one of \('gradient', 'random'\)"):
        ls.RigL(grow="magnitude")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"end_step=None takes end_fraction"):
        ls.RigL().observe(_model())
    with pytest.raises(ValueError, match=r"keeps its sparsity and moves connections"):
        ls.SparsityCallback(ls.RigL(), ls.FlopBudget("50%", by_epoch=3, action="adjust"))


# ---------------------------------------------------------------------------- real fits


def _fit(root: Path, epochs: int, method: str = "rigl", ckpt: str | None = None) -> Any:
    cls = ls.RigL if method == "rigl" else ls.SET
    pruner = cls(0.7, allocation="uniform", delta_t=2, end_step=10, seed=3)
    callback = ls.SparsityCallback(pruner, write_files=False, verbose=False)
    trainer = pl.Trainer(
        default_root_dir=root,
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        callbacks=[callback, ModelCheckpoint(dirpath=root / "ckpt", save_last=True)],
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )
    model = Learning()
    trainer.fit(model, ckpt_path=ckpt)
    return model, pruner, callback


@pytest.mark.parametrize("method", ["rigl", "set"])
def test_a_resumed_fit_moves_the_masks_as_an_uninterrupted_one(tmp_path: Path, method: str):
    """TinyMLP data: 2 steps an epoch; updates at steps 2, 4, 6, 8. Stopped after epoch 2
    (step 4), resumed to epoch 5: the masks and weights equal an uninterrupted run's."""
    whole, pruner, callback = _fit(tmp_path / "whole", 5, method)
    _fit(tmp_path / "cut", 2, method)
    resumed, again, _ = _fit(tmp_path / "cut", 5, method, str(tmp_path / "cut/ckpt/last.ckpt"))
    assert pruner.updates == 4
    assert again.step_count == pruner.step_count == 10
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    masks = pruner.masks(whole)
    assert [int(m.sum()) for m in masks.values()] == [round(0.3 * 512), round(0.3 * 128)]
    # the curve: at every point at most the masks' 30% of each weight and the 36 biases
    most = round(0.3 * 512) + round(0.3 * 128) + 36
    assert all(p.params_nonzero <= most for p in callback.history)
    assert callback.history[0].params_nonzero <= most  # the first masks before any step


@pytest.mark.ddp
@pytest.mark.parametrize("method", ["rigl", pytest.param("set", marks=pytest.mark.slow)])
def test_ddp_ranks_with_different_data_move_the_same_connections(tmp_path: Path, method: str):
    """Each rank's half of the data gives its own gradients; DDP averages them before the
    step, where the update reads them: the same masks on both ranks after 3 updates."""
    from tests.fits import run_ranks

    ranks = run_ranks("scores_ddp.py", tmp_path, method, timeout=300)
    assert ranks[0]["masks_sha"] == ranks[1]["masks_sha"]
    assert ranks[0]["updates"] == ranks[1]["updates"] == 3
    assert ranks[0]["pruned"] == round(0.7 * (16 * 32 + 32 * 4))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["rigl", "set"])
def test_a_fit_killed_between_updates_resumes_as_if_never_killed(tmp_path: Path, method: str):
    """3 steps an epoch, updates at steps 2, 4, 6, 8, 10: SIGKILL after step 8 (the update
    in the middle of epoch 3); resumed from the checkpoint of epoch 2 (step 6), Lightning
    runs epoch 3 again: masks and weights equal an uninterrupted run's."""
    from tests.score_fit import killed_and_resumed

    whole, resumed = killed_and_resumed(tmp_path, method, kill_at=8)
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.equal(whole.fc1.weight != 0, resumed.fc1.weight != 0)
