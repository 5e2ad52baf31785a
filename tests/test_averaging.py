"""Masks through Lightning's weight averaging and other wholesale writes (issue #14, defects 1, 4).

Lightning's ``StochasticWeightAveraging`` and ``EMAWeightAveraging`` keep an averaged copy
made before pruning and copy it into the model when training ends: the pruned entries came
back (a history saying 80% zeros, a model with none) and ``"prune"`` storage crashed inside
Lightning. Any callback that writes dense values into pruned weights is warned about by
name and undone. Truths here are brute force: the masks are the top-k of the initial
weights (``tests.mask_fits.top_k_keep``), counts are nonzeros read position by position.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import EMAWeightAveraging, StochasticWeightAveraging
from torch.utils.data import DataLoader, TensorDataset

import lightning_sparsity as ls
from tests.mask_fits import (
    MLP,
    WEIGHTS,
    BeforePruning,
    callback,
    effective,
    hand_flops_sparse,
    hand_params_nonzero,
    make,
    reference_keeps,
    trainer,
)


class ValidatedMLP(MLP):
    """MLP with a validation loop: ``WeightAveraging`` swaps its average in for validation."""

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def val_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(2)
        return DataLoader(TensorDataset(torch.randn(16, 16, generator=g), torch.arange(16) % 4))


class ZerosDuringValidation(pl.Callback):
    """Records, at each validation's end, how many entries the masks prune are nonzero in the
    model (under ``WeightAveraging`` the model then holds the average)."""

    def __init__(self, sparsity: ls.SparsityCallback) -> None:
        self.sparsity = sparsity
        self.seen: list[int] = []

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self.sparsity.pruning is not None
        weights, masks = effective(pl_module), self.sparsity.pruning.masks(pl_module)
        self.seen.append(sum(int((weights[n][~masks[n]] != 0).sum()) for n in masks))


def assert_pruned_and_counted(model, keeps, sparsity: ls.SparsityCallback):
    """Zeros exactly where ``keeps`` prunes; the last point equals a fresh measure and brute
    force. Returns the last point."""
    weights = effective(model)
    for name in WEIGHTS:
        assert torch.equal(weights[name] != 0, keeps[name]), name
    last = sparsity.history[-1]
    fresh = ls.measure(model, model.example_input_array).total
    assert last.params_nonzero == fresh.params_nonzero == hand_params_nonzero(model)
    assert last.flops_sparse == fresh.flops_sparse == hand_flops_sparse(model)
    return last


AVERAGING = {
    # SWA averages from the first epoch on; EMA after every step
    "swa": lambda: StochasticWeightAveraging(swa_lrs=1e-2, swa_epoch_start=1),
    "ema": lambda: EMAWeightAveraging(decay=0.9),
}


@pytest.mark.parametrize("storage", ["inplace", "prune"])
@pytest.mark.parametrize("averaging", sorted(AVERAGING))
def test_the_averaged_model_stays_pruned_and_is_counted(
    tmp_path: Path, averaging: str, storage: str
) -> None:
    # pruned after epoch 1, when the average already holds the weights before pruning
    model = make(ValidatedMLP)
    sparsity = callback(storage, start_epoch=1)
    before, probe = BeforePruning(), ZerosDuringValidation(sparsity)
    fit = trainer(tmp_path, 3, [before, sparsity, AVERAGING[averaging](), probe])
    fit.fit(model)

    keeps = before.keeps
    assert probe.seen[1:] == [0, 0]  # the average swapped in for validation is pruned too
    last = assert_pruned_and_counted(model, keeps, sparsity)
    # 2 FLOPs per kept weight: 512 - round(0.8 * 512) = 102 of fc1, 128 - 102 = 26 of fc2
    assert last.flops_sparse == 2 * (102 + 26)

    # a checkpoint saved after the swap holds plain, pruned weights (both copies the
    # averaging callbacks put there), and loads into a fresh, unpruned model as they are
    path = tmp_path / "after_swap.ckpt"
    fit.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    for key in ("state_dict", "current_model_state"):
        state = checkpoint.get(key)
        if state is None:
            continue
        assert not any(k.endswith(("_orig", "_mask", "_keep")) for k in state), key
        for name in WEIGHTS:
            assert torch.equal(state[name] != 0, keeps[name]), (key, name)
    loaded = ValidatedMLP.load_from_checkpoint(path)
    assert ls.measure(loaded, loaded.example_input_array).total.params_nonzero == (
        last.params_nonzero
    )


def test_averaged_values_are_the_average_of_the_masked_weights(tmp_path: Path) -> None:
    # EMA by hand, as torch's AveragedModel documents it: the first update copies the model
    # (a_1 = w_1), then a_k = d a_{k-1} + (1 - d) w_k, with w_k the masked weights after
    # optimizer step k (Lightning's EMAWeightAveraging updates after every step)
    decay = 0.9
    model = make(ValidatedMLP)
    keeps = reference_keeps(model)

    class Record(pl.Callback):
        def __init__(self) -> None:
            self.after_steps: list[dict[str, torch.Tensor]] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.after_steps.append(effective(pl_module))

    record = Record()
    # the recorder runs before the averaging's update of each step, which sees the same weights
    fit = trainer(
        tmp_path, 1, [callback("inplace"), record, EMAWeightAveraging(decay=decay)], max_steps=4
    )
    fit.fit(model)
    assert len(record.after_steps) == 4
    expected = {n: record.after_steps[0][n].clone() for n in WEIGHTS}
    for weights in record.after_steps[1:]:
        for n in WEIGHTS:
            expected[n] = decay * expected[n] + (1 - decay) * weights[n]
    got = effective(model)
    for n in WEIGHTS:
        torch.testing.assert_close(got[n], expected[n], rtol=1e-5, atol=1e-6)
        assert torch.equal(got[n] != 0, keeps[n])


class DenseWrite(pl.Callback):
    """At the start of epoch ``at``, loads a state_dict saved before pruning (dense)."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.saved: dict[str, torch.Tensor] = {}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.saved = {k: v.clone() for k, v in pl_module.state_dict().items()}

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.at:
            with torch.no_grad():
                for name, param in pl_module.named_parameters():
                    if name in self.saved:
                        param.copy_(self.saved[name])


def test_a_callback_writing_dense_values_is_named_and_undone(tmp_path: Path) -> None:
    model = make(MLP)
    keeps = reference_keeps(model)
    # what the write breaks: pruned entries whose saved (initial) value is nonzero
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    broken = {n: int((initial[n][~keeps[n]] != 0).sum()) for n in WEIGHTS}
    sparsity = callback("inplace")
    fit = trainer(tmp_path, 2, [DenseWrite(at=1), sparsity])
    named = rf"fc1\.weight \({broken['fc1.weight']}\), fc2\.weight \({broken['fc2.weight']}\)"
    with pytest.warns(UserWarning, match=rf"at the start of epoch 1, .*{named}"):
        fit.fit(model)
    assert_pruned_and_counted(model, keeps, sparsity)


class DictBatches(MLP):
    """Batches are dicts ``{"x": ..., "y": ...}``: the default input rule cannot read them."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self(batch["x"]), batch["y"])

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(48, 16, generator=g), torch.arange(48) % 4
        return DataLoader([{"x": a, "y": b} for a, b in zip(x, y, strict=True)], batch_size=8)


def no_input_fit(tmp_path: Path, input_from_batch: Any) -> tuple[pl.Trainer, DictBatches]:
    model = make(DictBatches)
    model.example_input_array = None  # the callback must take the input from a batch
    sparsity = ls.SparsityCallback(
        callback().pruning, input_from_batch=input_from_batch, write_files=False
    )
    return trainer(tmp_path, 1, [sparsity]), model


def test_input_from_batch_returning_none_is_refused_at_the_first_batch(tmp_path: Path) -> None:
    fit, model = no_input_fit(tmp_path, lambda batch: None)
    with pytest.raises(TypeError, match=r"input_from_batch returned None for a batch of type dict"):
        fit.fit(model)
    assert fit.global_step == 0  # refused before the first optimizer step


def test_an_error_inside_input_from_batch_says_where_it_came_from(tmp_path: Path) -> None:
    fit, model = no_input_fit(tmp_path, lambda batch: batch["image"])
    with pytest.raises(KeyError, match="image") as info:
        fit.fit(model)
    notes = getattr(info.value, "__notes__", [])
    assert any("raised inside input_from_batch" in note for note in notes), notes
    assert fit.global_step == 0
