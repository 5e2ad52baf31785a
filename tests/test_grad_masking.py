"""Gradients of pruned entries are masked where backward produces them (issue #14, defect 2).

Lightning's automatic optimization runs backward inside ``optimizer.step(closure)``, after
the step's pre-hooks: a mask applied there came too late (clipping saw the pruned entries'
gradients, Adam's moments built up on them, Adafactor's factors mixed them into every kept
weight). Each fit is compared with a plain LightningModule that writes fixed masks (top-k by
brute force) into its weights and multiplies its gradients by them after every backward.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from pytorch_lightning.callbacks import StochasticWeightAveraging

import lightning_sparsity as ls
from tests.mask_fits import (
    MLP,
    WEIGHTS,
    BeforePruning,
    HandMasked,
    callback,
    effective,
    elementwise_state_on_pruned,
    hand_flops_sparse,
    hand_params_nonzero,
    make,
    reference_keeps,
    trained,
    trainer,
)

CLIP = 0.05  # binds: the gradients' norm is about 0.5 at the first step


def library_fit(tmp_path, optimizer: str, storage: str, manual: bool, epochs: int = 2, **kwargs):
    model = make(MLP, optimizer, manual=manual, clip=CLIP if manual else None)
    keeps = reference_keeps(model)  # pruning happens before the first step
    sparsity = callback(storage)
    fit = trainer(tmp_path / "library", epochs, [sparsity], **kwargs)
    fit.fit(model)
    return model, keeps, sparsity, fit


def reference_fit(tmp_path, keeps, optimizer: str, manual: bool, epochs: int = 2, **kwargs):
    model = make(HandMasked, keeps, optimizer, manual=manual, clip=CLIP if manual else None)
    fit = trainer(tmp_path / "reference", epochs, [], **kwargs)
    fit.fit(model)
    return model, fit


CLIP_NORM = {"gradient_clip_val": CLIP, "gradient_clip_algorithm": "norm"}
CASES = [
    # optimizer, storage, manual optimization, Trainer options
    pytest.param("adam", "inplace", False, {}, id="adam"),
    pytest.param("adafactor", "inplace", False, {}, id="adafactor"),
    pytest.param("sgd", "inplace", False, CLIP_NORM, id="sgd-clip-norm"),
    pytest.param("sgd", "inplace", True, {}, id="sgd-manual-clip-norm"),
    pytest.param("adam", "inplace", False, {"accumulate_grad_batches": 3}, id="adam-accumulate"),
    pytest.param("adam", "prune", False, {}, id="adam-prune"),
    pytest.param("sgd", "prune", False, CLIP_NORM, id="sgd-clip-norm-prune"),
]


@pytest.mark.parametrize(("optimizer", "storage", "manual", "options"), CASES)
def test_kept_weights_and_optimizer_state_match_gradients_masked_by_hand(
    tmp_path, optimizer, storage, manual, options
):
    model, keeps, sparsity, fit = library_fit(tmp_path, optimizer, storage, manual, **options)
    reference, reference_trainer = reference_fit(tmp_path, keeps, optimizer, manual, **options)

    assert sparsity.pruning.masks(model).keys() == keeps.keys()
    for name, mask in sparsity.pruning.masks(model).items():
        assert torch.equal(mask, keeps[name]), name  # the library pruned the brute-force top-k
    ours, theirs = effective(model), effective(reference)
    for name in WEIGHTS:
        assert (ours[name][~keeps[name]] == 0).all()
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-6, atol=1e-7)
    for name in ("fc1.bias", "fc2.bias"):
        torch.testing.assert_close(
            dict(model.named_parameters())[name],
            dict(reference.named_parameters())[name],
            rtol=1e-6,
            atol=1e-7,
        )
    # the library's optimizer state holds nothing on pruned entries, as the reference's
    state = elementwise_state_on_pruned(fit.optimizers[0], model, keeps)
    assert state == dict.fromkeys(state, 0)
    assert (
        state.keys()
        == elementwise_state_on_pruned(reference_trainer.optimizers[0], reference, keeps).keys()
    )


def test_prune_storage_gets_zero_gradients_from_the_chain_rule(tmp_path):
    model = make(MLP, "sgd")
    keeps = reference_keeps(model)
    fit = trainer(tmp_path, 1, [callback("prune")], max_steps=1)
    fit.fit(model)
    for name, tensor in trained(model).items():
        assert tensor.grad is not None
        assert (tensor.grad[~keeps[name]] == 0).all()
        assert (tensor.grad[keeps[name]] != 0).any()  # (ReLU zeroes some of the rest)
        assert (tensor[~keeps[name]] != 0).all()  # weight_orig keeps the pruned values


def test_one_gradient_hook_per_weight_and_none_after_make_permanent(tmp_path):
    model = make(MLP)
    sparsity = callback("inplace")
    fit = trainer(tmp_path, 1, [sparsity], max_steps=1)
    fit.fit(model)
    sparsity.pruning.apply(model, 0.9)  # a new mask: the hook stays, reads the new mask
    for tensor in trained(model).values():
        assert len(tensor._post_accumulate_grad_hooks) == 1
    sparsity.pruning.make_permanent(model)
    for tensor in trained(model).values():
        assert not tensor._post_accumulate_grad_hooks


# ------------------------------------------------------------------ the property matrix

OPTIMIZER_NAMES = ("sgd", "adam", "adamw", "adafactor")
PRECISIONS = ("32-true", "bf16-mixed")
STORAGES = ("inplace", "prune")
MODES = ("plain", "accumulate", "clip", "swa")
# a corner of the matrix that names every value at least twice (the rest is slow)
FAST = {
    ("sgd", "32-true", "inplace", "plain"),
    ("adam", "bf16-mixed", "inplace", "accumulate"),
    ("adamw", "32-true", "prune", "clip"),
    ("adafactor", "bf16-mixed", "inplace", "swa"),
    ("adam", "32-true", "prune", "swa"),
    ("sgd", "bf16-mixed", "prune", "accumulate"),
    ("adafactor", "32-true", "prune", "plain"),
    ("adamw", "bf16-mixed", "inplace", "clip"),
}
MATRIX = [
    pytest.param(*combo, id="-".join(combo), marks=() if combo in FAST else pytest.mark.slow)
    for combo in itertools.product(OPTIMIZER_NAMES, PRECISIONS, STORAGES, MODES)
]


def mode_options(mode: str) -> tuple[dict, list]:
    if mode == "accumulate":
        return {"accumulate_grad_batches": 3}, []
    if mode == "clip":
        return CLIP_NORM, []
    if mode == "swa":
        return {}, [StochasticWeightAveraging(swa_lrs=1e-2, swa_epoch_start=1)]
    return {}, []


@pytest.mark.parametrize(("optimizer", "precision", "storage", "mode"), MATRIX)
def test_after_any_fit_zeros_counts_and_optimizer_state_agree_with_the_masks(
    tmp_path, optimizer, precision, storage, mode
):
    # pruned after epoch 1: the optimizer's state and SWA's average hold the weights' past
    model = make(MLP, optimizer)
    options, extra = mode_options(mode)
    sparsity = callback(storage, start_epoch=1)
    before = BeforePruning()
    fit = trainer(tmp_path, 2, [before, sparsity, *extra], precision=precision, **options)
    fit.fit(model)

    keeps = before.keeps
    masks = sparsity.pruning.masks(model)
    assert all(torch.equal(masks[n], keeps[n]) for n in WEIGHTS)  # brute-force top-k
    for name, weight in effective(model).items():
        assert torch.equal(weight != 0, keeps[name]), name  # zeros exactly where pruned
    fresh = ls.measure(model, model.example_input_array).total
    last = sparsity.history[-1]
    assert (last.params_nonzero, last.flops_sparse) == (fresh.params_nonzero, fresh.flops_sparse)
    assert last.params_nonzero == hand_params_nonzero(model)
    assert last.flops_sparse == hand_flops_sparse(model)
    state = elementwise_state_on_pruned(fit.optimizers[0], model, keeps)
    assert state == dict.fromkeys(state, 0)
    if optimizer != "adafactor":  # (its factors of 2-D weights are not elementwise)
        assert state
