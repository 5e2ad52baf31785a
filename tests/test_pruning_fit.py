"""The pruner inside real fits: schedule, checkpoints, resume, fresh models, the counter."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.nn.utils import prune

import lightning_sparsity as ls
from tests.fits import Wide, quiet_trainer

pytestmark = pytest.mark.filterwarnings("ignore:.*does not have many workers")
WEIGHTS = ("conv1", "conv2", "fc1", "fc2")


def effective_weights(model: Wide) -> dict[str, torch.Tensor]:
    return {name: getattr(model, name).weight.detach().clone() for name in WEIGHTS}


def pruned_fraction(model: Wide) -> float:
    weights = effective_weights(model).values()
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


@pytest.mark.parametrize("storage", ["inplace", "prune"])
def test_counter_reads_the_pruner_masks(storage: str) -> None:
    model = Wide()
    ls.MagnitudePruner(allocation="uniform", mask_storage=storage).apply(model, 0.5)  # type: ignore[arg-type]
    report = ls.measure(model, model.example_input_array)
    nnz = {name: int(w.count_nonzero()) for name, w in effective_weights(model).items()}
    # round(0.5 * numel) pruned per layer: 216, 1152, 32768, 320 nonzero
    assert nnz == {"conv1": 216, "conv2": 1_152, "fc1": 32_768, "fc2": 320}
    # FLOPs per nonzero weight: 512, 128, 2, 2
    assert report.total.flops_sparse == 512 * 216 + 128 * 1_152 + 2 * 32_768 + 2 * 320
    if storage == "prune":
        for name in WEIGHTS:
            prune.remove(getattr(model, name), "weight")
        assert ls.measure(model, model.example_input_array) == report


def test_schedule_followed_in_a_fit_and_masks_survive_optimizer_steps(tmp_path: Path) -> None:
    pruner = ls.MagnitudePruner(schedule=ls.schedules.Cubic(0.8, start_epoch=0, end_epoch=3))
    callback = ls.SparsityCallback(pruner, write_files=False)
    model = Wide()
    quiet_trainer(tmp_path, [callback], epochs=5).fit(model)
    # after t completed epochs, cubic: 0.8 + (0 - 0.8)(1 - t/3)^3 = 0, 0.563, 0.763, 0.8, ...
    expected = [0.0, 0.8 - 0.8 * (2 / 3) ** 3, 0.8 - 0.8 * (1 / 3) ** 3, 0.8, 0.8, 0.8]
    assert [p.target_sparsity for p in callback.history] == pytest.approx(expected)
    # the first epoch end prunes already (the schedule moves at t0 + 1 = 1)
    assert [p.pruning for p in callback.history] == [None, *["pruned"] * 3, None, None]
    # after five epochs of SGD with momentum and weight decay the effective zeros hold
    n = sum(getattr(model, name).weight.numel() for name in WEIGHTS)
    assert pruned_fraction(model) == round(0.8 * n) / n
    # the logged sparsity of the pruned weights is the schedule's, to one weight
    pruned = [p.pruned_sparsity for p in callback.history]
    assert pruned == pytest.approx([round(t * n) / n for t in expected])


def test_resume_continues_the_schedule_with_the_same_masks(tmp_path: Path) -> None:
    def parts() -> tuple[ls.SparsityCallback, ModelCheckpoint]:
        schedule = ls.schedules.Linear(0.75, start_epoch=0, end_epoch=3)
        callback = ls.SparsityCallback(ls.MagnitudePruner(schedule=schedule), write_files=False)
        return callback, ModelCheckpoint(dirpath=tmp_path, save_last=True)

    callback, checkpoint = parts()
    first_model = Wide()
    trainer = quiet_trainer(tmp_path, [callback, checkpoint], 2, enable_checkpointing=True)
    trainer.fit(first_model)
    masks_before = effective_weights(first_model)

    callback, checkpoint = parts()
    resumed_model = Wide()  # fresh and unpruned
    resumed = quiet_trainer(tmp_path, [callback, checkpoint], 4, enable_checkpointing=True)
    resumed.fit(resumed_model, ckpt_path=str(tmp_path / "last.ckpt"))
    # every weight pruned before the resume is still zero after it
    after = effective_weights(resumed_model)
    for name in WEIGHTS:
        assert not (after[name][masks_before[name] == 0]).any(), name
    # Linear: 0.75 * t / 3 after t = 0..4 epochs: 0, 0.25, 0.5, 0.75, 0.75 — none re-pruned
    # or skipped across the resume
    targets = [p.target_sparsity for p in callback.history]
    assert targets == pytest.approx([0.0, 0.25, 0.5, 0.75, 0.75])
    assert [p.pruning for p in callback.history] == [None, "pruned", "pruned", "pruned", None]
    n = sum(w.numel() for w in after.values())
    assert pruned_fraction(resumed_model) == round(0.75 * n) / n


@pytest.mark.parametrize("storage", ["inplace", "prune"])
def test_pruned_checkpoint_loads_into_a_fresh_model_and_exports_plain_weights(
    tmp_path: Path, storage: str
) -> None:
    schedule = ls.schedules.Constant(0.6, start_epoch=1)
    pruner = ls.MagnitudePruner(schedule=schedule, mask_storage=storage)  # type: ignore[arg-type]
    callback = ls.SparsityCallback(pruner, write_files=False)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    model = Wide()
    quiet_trainer(tmp_path, [callback, checkpoint], 1, enable_checkpointing=True).fit(model)

    state = torch.load(tmp_path / "last.ckpt", weights_only=False)["state_dict"]
    assert "conv1.weight" in state
    assert not any(key.endswith(("_orig", "_mask")) for key in state)  # plain weights
    fresh = Wide.load_from_checkpoint(tmp_path / "last.ckpt")  # the normal Lightning path
    for name, w in effective_weights(model).items():
        assert torch.equal(getattr(fresh, name).weight.detach(), w)
    assert ls.measure(fresh, fresh.example_input_array) == ls.measure(
        model, model.example_input_array
    )
    # in memory: the bool mask beside the zeroed weight, or the reparametrization;
    # make_permanent drops them, the zeros stay
    mask = "weight_keep" if storage == "inplace" else "weight_orig"
    assert hasattr(model.conv1, mask)
    pruner.make_permanent(model)
    assert not hasattr(model.conv1, mask)
    assert isinstance(model.conv1.weight, torch.nn.Parameter)
    assert torch.equal(model.conv1.weight.detach(), fresh.conv1.weight.detach())


def test_prune_every_n_steps_counts_schedule_time_in_pruning_steps(tmp_path: Path) -> None:
    # 2 batches per epoch, a pruning step every 1 optimizer step: 2 schedule steps per epoch
    schedule = ls.schedules.Linear(0.6, start_epoch=0, end_epoch=3)
    callback = ls.SparsityCallback(
        ls.MagnitudePruner(schedule=schedule, allocation="uniform"),
        prune_every_n_steps=1,
        write_files=False,
    )
    model = Wide()
    quiet_trainer(tmp_path, [callback], epochs=2).fit(model)
    # Linear: 0.6 * k / 3 after k = 0..3 pruning steps; after the first epoch k = 2: 0.4,
    # after the second k = 4: 0.6
    targets = [p.target_sparsity for p in callback.history]
    assert targets == pytest.approx([0.0, 0.4, 0.6])
    nnz = {name: int(w.count_nonzero()) for name, w in effective_weights(model).items()}
    numel = {name: getattr(model, name).weight.numel() for name in WEIGHTS}
    assert nnz == {name: n - round(0.6 * n) for name, n in numel.items()}


def test_prune_every_n_steps_is_validated() -> None:
    with pytest.raises(ValueError, match="`prune_every_n_steps` must be an int >= 1 or None"):
        ls.SparsityCallback(prune_every_n_steps=0)
    with pytest.raises(ValueError, match="a FlopBudget with action='adjust' steers at epoch"):
        ls.SparsityCallback(
            ls.MagnitudePruner(),
            ls.FlopBudget("50%", by_epoch=2, action="adjust"),
            prune_every_n_steps=5,
        )


class TinyTransformer(Wide):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
        self.example_input_array = torch.zeros(1, 3, 16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))  # [B, 16, 8, 8]
        h = self.encoder(h.flatten(2).transpose(1, 2))  # 64 tokens of 16
        return self.fc2(torch.relu(self.fc1(h.flatten(1))))


@pytest.mark.parametrize("storage", ["inplace", "prune"])
def test_transformer_fit_with_the_default_pruner(tmp_path: Path, storage: str) -> None:
    schedule = ls.schedules.Linear(0.5, start_epoch=0, end_epoch=1)
    pruner = ls.MagnitudePruner(schedule=schedule, mask_storage=storage)  # type: ignore[arg-type]
    callback = ls.SparsityCallback(pruner, write_files=False)
    model = TinyTransformer()
    out_proj = model.encoder.self_attn.out_proj
    if storage == "prune":  # MHA reads out_proj.weight without calling out_proj
        with pytest.warns(UserWarning, match=r"not pruning \['encoder.self_attn.out_proj.we"):
            quiet_trainer(tmp_path, [callback], epochs=3).fit(model)  # several backward passes
        assert hasattr(model.encoder.linear1, "weight_orig")
        assert not hasattr(out_proj, "weight_orig")
    else:  # the zeros are in the weight: every reader sees them
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="not pruning")
            quiet_trainer(tmp_path, [callback], epochs=3).fit(model)
        assert int(out_proj.weight.count_nonzero()) < out_proj.weight.numel()
        # the global cut at 0.5, held through two more epochs of training
        targets = [getattr(m, n) for _, m, n in pruner.targets(model)]
        total = sum(t.numel() for t in targets)
        assert sum(int((t == 0).sum()) for t in targets) == round(0.5 * total)
    assert (
        callback.history[-1].flops_sparse
        == ls.measure(model, model.example_input_array).total.flops_sparse
    )
