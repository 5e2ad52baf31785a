"""The callback's contract in real fits: resume with changed settings, re-fit, the guard,
monitoring, HParams, validation at fit start, inputs and odd modules."""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from torch import nn

import lightning_sparsity as ls
from lightning_sparsity.demo import DigitsCNN, DigitsDataModule
from tests.fits import WIDE_DENSE, TinyMLP, Wide, quiet_trainer

pytestmark = pytest.mark.filterwarnings("ignore:.*does not have many workers")
WEIGHTS = ("conv1", "conv2", "fc1", "fc2")


def linear_pruner(final: float = 0.8, end: int = 4) -> ls.MagnitudePruner:
    schedule = ls.schedules.Linear(final, start_epoch=0, end_epoch=end)
    return ls.MagnitudePruner(schedule=schedule, allocation="uniform")


def events(log_dir: str | Path) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


# ------------------------------------------------------------------ resume with other settings


def checkpointed_fit(tmp_path: Path, callback: ls.SparsityCallback, epochs: int, **kw: Any):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = quiet_trainer(tmp_path, [callback, checkpoint], epochs, enable_checkpointing=True)
    trainer.fit(Wide(), **kw)
    return trainer


def test_resume_with_a_changed_setting_keeps_the_state_and_names_the_change(
    tmp_path: Path,
) -> None:
    first = ls.SparsityCallback(linear_pruner(), ls.FlopBudget("40%", finetune_epochs=2))
    checkpointed_fit(tmp_path, first, epochs=2)
    dense = first.history[0]
    assert dense.flops_sparse == WIDE_DENSE

    # before: the state key held every scalar setting, so this dropped the state silently
    # and the "dense" point 0 of the resumed run held the pruned model
    second = ls.SparsityCallback(linear_pruner(), ls.FlopBudget("40%", finetune_epochs=5))
    with pytest.warns(UserWarning, match=r"changed settings \(budget/finetune_epochs: 2 -> 5\)"):
        checkpointed_fit(tmp_path, second, epochs=4, ckpt_path=str(tmp_path / "ckpt/last.ckpt"))
    assert [p.epoch for p in second.history] == [0, 1, 2, 3, 4]
    assert second.history[0] == dense
    assert second.history[:3] == first.history


def test_resume_refuses_a_change_that_mixes_two_meanings(tmp_path: Path) -> None:
    checkpointed_fit(tmp_path, ls.SparsityCallback(linear_pruner()), epochs=1)
    other_axis = ls.SparsityCallback(linear_pruner(), step="global_step")
    with pytest.raises(ValueError, match=r"cannot resume .* step: 'epoch' -> 'global_step'"):
        checkpointed_fit(tmp_path, other_axis, epochs=2, ckpt_path=str(tmp_path / "ckpt/last.ckpt"))


def test_callbacks_that_differ_only_in_a_list_argument_need_names(tmp_path: Path) -> None:
    # before: list arguments were not in the key, so these two shared one checkpoint slot
    a = ls.SparsityCallback(ls.MagnitudePruner(include=["conv"]))
    b = ls.SparsityCallback(ls.MagnitudePruner(include=["fc"]))
    with pytest.raises(RuntimeError, match=r"`callback.state_key` must be unique"):
        quiet_trainer(tmp_path, [a, b], 1)  # Lightning refuses it; `name=` tells them apart
    a = ls.SparsityCallback(ls.MagnitudePruner(include=["conv"]), name="convs")
    b = ls.SparsityCallback(ls.MagnitudePruner(include=["fc"]), name="linears")
    assert (a.state_key, b.state_key) == ("SparsityCallback[convs]", "SparsityCallback[linears]")


# ------------------------------------------------------------------ re-fit


def test_a_reused_callback_starts_a_new_fit_clean(tmp_path: Path) -> None:
    callback = ls.SparsityCallback(linear_pruner(end=2), ls.FlopBudget("70%", finetune_epochs=0))
    logger = CSVLogger(tmp_path, name="csv")
    first = quiet_trainer(tmp_path, [callback], 3, logger=logger)
    first.fit(Wide())
    assert callback.stopping_reason == "finetune_done"
    stopped_at = [p.epoch for p in callback.history]

    # before: the second fit logged "already stopped", trained 0 steps and wrote the first
    # model's report into the new run's directory
    torch.manual_seed(1)
    second_model = Wide()
    logger = CSVLogger(tmp_path, name="csv")
    second = quiet_trainer(tmp_path, [callback], 3, logger=logger)
    second.fit(second_model)
    assert second.global_step > 0
    assert [p.epoch for p in callback.history] == stopped_at  # [0, 1, ...], not appended
    assert callback.history[0].flops_sparse == WIDE_DENSE  # the new model, dense at start
    report = ls.measure(second_model, second_model.example_input_array)
    assert callback.report == report
    assert (Path(logger.log_dir) / "sparsity_report.json").read_text().strip() == report.to_json()


def test_a_reused_measuring_callback_does_not_append_to_the_old_history(tmp_path: Path) -> None:
    callback = ls.SparsityCallback(write_files=False)
    quiet_trainer(tmp_path, [callback], 3).fit(Wide())
    quiet_trainer(tmp_path, [callback], 3).fit(Wide())
    # before: [0, 1, 2, 3, 1, 2, 3]
    assert [p.epoch for p in callback.history] == [0, 1, 2, 3]


# ------------------------------------------------------------------ the guard in a fit


class Scripted(Wide):
    """Logs ``score`` from a script: the value of validation epoch e is ``values[e]``."""

    def __init__(self, values: list[float]) -> None:
        super().__init__()
        self.values = values

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("score", float(self.values[self.current_epoch]))


def guarded_fit(tmp_path: Path, guard: ls.MetricGuard, values: list[float]) -> list:
    callback = ls.SparsityCallback(linear_pruner(), guard=guard, write_files=False)
    trainer = quiet_trainer(tmp_path, [callback], len(values), limit_val_batches=1)
    trainer.fit(Scripted(values))
    return callback.history


# Linear to 0.8 over 4 epochs (uniform): 0.2, 0.4, 0.6, 0.8 after 1..4 epochs. The guard
# sees the validation of the epoch just ended: values[t - 1] at the point of epoch t.
GUARD_CASES = {
    # higher is better: 0.4 is 0.2 below the best 0.6 (max_drop 0.05): trips at t = 3
    "max": ([0.5, 0.6, 0.4, 0.7, 0.7], "max"),
    # lower is better: 1.2 is 0.3 above the best 0.9 (max_drop 0.1): trips at t = 3; a
    # higher-is-better guard paused while this loss improved and pruned when it rose
    "min": ([1.0, 0.9, 1.2, 0.8, 0.8], "min"),
}


@pytest.mark.parametrize("action", ["pause", "restore"])
@pytest.mark.parametrize("case", list(GUARD_CASES))
def test_the_guard_holds_pruning_in_a_fit(tmp_path: Path, case: str, action: str) -> None:
    values, mode = GUARD_CASES[case]
    max_drop = 0.05 if mode == "max" else 0.1
    guard = ls.MetricGuard("score", mode=mode, max_drop=max_drop, action=action)  # type: ignore[arg-type]
    history = guarded_fit(tmp_path, guard, values)
    held = "paused" if action == "pause" else "restored"
    assert [p.pruning for p in history] == [None, "pruned", "pruned", held, "pruned", None]
    assert [p.guard_value for p in history[1:5]] == pytest.approx(values[:4])
    # pausing keeps the masks of t = 2 (0.4); restoring goes back to the last masks the
    # guard accepted: those in place before the pruning at t = 2 (0.2)
    at_three = 0.4 if action == "pause" else 0.2
    expected = [0.0, 0.2, 0.4, at_three, 0.8, 0.8]
    assert [p.pruned_sparsity for p in history] == pytest.approx(expected, abs=1e-3)


def test_the_guard_is_strict_about_a_missing_metric(tmp_path: Path) -> None:
    guard = ls.MetricGuard("val_loss", mode="min", max_drop=0.1)
    with pytest.raises(RuntimeError, match=r"'val_loss' is not among the logged metrics"):
        guarded_fit(tmp_path, guard, [0.5, 0.5])
    lenient = ls.MetricGuard("val_loss", mode="min", max_drop=0.1, strict=False)
    with pytest.warns(UserWarning, match="'val_loss' is not among the logged metrics"):
        history = guarded_fit(tmp_path, lenient, [0.5, 0.5])
    assert [p.pruning for p in history] == [None, "pruned", "pruned"]


# ------------------------------------------------------------------ monitoring


def test_sparsity_numbers_drive_checkpointing_early_stopping_and_the_progress_bar(
    tmp_path: Path,
) -> None:
    callback = ls.SparsityCallback(linear_pruner(end=3), ls.FlopBudget("10%"))
    best = ModelCheckpoint(tmp_path / "ckpt", monitor="sparsity/flops_ratio", mode="min")
    stop = EarlyStopping(monitor="sparsity/flops_ratio", mode="min", patience=1)
    logger = CSVLogger(tmp_path, name="csv")
    trainer = quiet_trainer(
        tmp_path, [callback, best, stop], 10, logger=logger, enable_checkpointing=True
    )
    trainer.fit(Wide())
    ratios = [p.flops_ratio for p in callback.history]
    # the ratio falls for 3 epochs, then holds: with patience 1 the first epoch without
    # improvement (the point of epoch 4) stops the fit
    assert ratios[3] < ratios[2] < ratios[1] < ratios[0]
    assert ratios[4] == ratios[3]
    assert [p.epoch for p in callback.history] == [0, 1, 2, 3, 4]
    assert float(best.best_model_score) == pytest.approx(min(ratios), rel=1e-6)
    assert trainer.progress_bar_metrics["sparsity/flops_ratio"] == pytest.approx(ratios[-1])
    assert "budget/slack" in trainer.progress_bar_metrics
    metrics = trainer.callback_metrics
    assert float(metrics["sparsity/flops_sparse_per_example"]) == callback.history[-1].flops_sparse
    assert float(metrics["sparsity/param_sparsity"]) == pytest.approx(
        callback.history[-1].param_sparsity
    )
    # not logged twice: the CSV has the ratio once per point, at the point's step
    import csv

    with open(Path(logger.log_dir) / "metrics.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("sparsity/flops_ratio")]
    assert steps == [p.step for p in callback.history]


def test_a_status_line_per_point(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    callback = ls.SparsityCallback(linear_pruner(end=2), ls.FlopBudget("50%"), write_files=False)
    with caplog.at_level(logging.INFO):
        quiet_trainer(tmp_path, [callback], 2).fit(Wide())
    lines = [
        r.getMessage() for r in caplog.records if "lightning_sparsity: epoch" in r.getMessage()
    ]
    assert len(lines) == 3  # the start and two epochs
    assert lines[0].startswith("lightning_sparsity: epoch 0: sparse FLOPs 648,448 per example")
    assert "budget over, slack -1.000" in lines[0]  # a stop budget: against its limit
    assert "pruning pruned" in lines[1]


def test_the_status_lines_of_an_adjust_budget_say_what_happened(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    budget = ls.FlopBudget("25%", by_epoch=2, action="adjust")
    callback = ls.SparsityCallback(ls.MagnitudePruner(), budget, per_layer=False)
    logger = TensorBoardLogger(tmp_path, name="tb")
    with caplog.at_level(logging.INFO):
        quiet_trainer(tmp_path, [callback], 4, logger=logger).fit(Wide())
    lines = [
        r.getMessage() for r in caplog.records if "lightning_sparsity: epoch" in r.getMessage()
    ]
    assert len(lines) == 5
    # epoch 0: the dense model, where the FLOP curve starts; was "budget over, slack -300.0%"
    assert "budget on schedule, slack +0.000" in lines[0]
    assert "budget within" in lines[2]
    # the limit is met at the deadline: the pruner holds it and prunes nothing more; every
    # line said "pruning pruned"
    assert [p.pruning for p in callback.history] == [None, "pruned", "pruned", None, None]
    assert ["pruning pruned" in line for line in lines] == [False, True, True, False, False]
    # one unit: the fraction of the limit in force, in TensorBoard as in the terminal
    logged = [e.value for e in events(logger.log_dir).Scalars("budget/slack")]
    assert logged == pytest.approx([p.budget_slack for p in callback.history])
    printed = [float(line.split("slack ")[1].split(",")[0]) for line in lines]
    assert printed == pytest.approx(logged, abs=5e-4)


def test_a_one_batch_check_does_not_warn_about_the_deadline(tmp_path: Path) -> None:
    # a sweep's pre-check (fast_dev_run: max_epochs becomes 1) warned "FlopBudget(by_epoch=4)
    # is after the fit's last epoch (max_epochs=1)" before every sweep
    budget = ls.FlopBudget("50%", by_epoch=4, action="adjust")
    callback = ls.SparsityCallback(ls.MagnitudePruner(), budget, write_files=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*after the fit's last epoch.*")
        quiet_trainer(tmp_path, [callback], 4, fast_dev_run=1).fit(Wide())
    assert [p.epoch for p in callback.history] == [0, 1]


# ------------------------------------------------------------------ HParams


def test_one_hparams_entry_holds_the_module_data_and_sparsity_settings(tmp_path: Path) -> None:
    # DigitsCNN and DigitsDataModule call save_hyperparameters(): Lightning writes their
    # entry at fit start; before, TensorBoard showed only that one (lr, batch_size and
    # hp_metric = -1), none of the pruner, budget or final sparsity
    callback = ls.SparsityCallback(
        ls.MagnitudePruner(), ls.FlopBudget("50%", by_epoch=1, action="adjust"), per_layer=False
    )
    logger = TensorBoardLogger(tmp_path, name="tb")  # default_hp_metric=True
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=1,
        logger=logger,
        callbacks=[callback, ModelCheckpoint(tmp_path / "ckpt", monitor="val_acc", mode="max")],
        limit_train_batches=2,
        limit_val_batches=1,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(DigitsCNN(), DigitsDataModule())
    acc = events(logger.log_dir)

    def plugin(tag: str) -> Any:  # as the HParams plugin reads it: the first metadata
        content = acc.SummaryMetadata(tag).plugin_data.content
        return plugin_data_pb2.HParamsPluginData.FromString(content)

    hparams = plugin("_hparams_/session_start_info").session_start_info.hparams
    assert hparams["lr"].number_value == 0.01  # the module's
    assert hparams["batch_size"].number_value == 64  # the data module's
    assert hparams["pruning/type"].string_value == "MagnitudePruner"
    assert hparams["pruning/allocation"].string_value == "global"
    assert hparams["budget/target"].string_value == "50%"
    assert hparams["budget/by_epoch"].number_value == 1
    tags = [m.name.tag for m in plugin("_hparams_/experiment").experiment.metric_infos]
    assert tags == [
        "val_acc",  # the checkpoint's monitor first: the HParams table ticks five metrics
        "sparsity/final_flops_ratio",
        "sparsity/final_param_sparsity",
        "sparsity/final_flops_sparse_per_example",
        "budget/final_slack",
    ]
    for tag in tags:
        assert acc.Scalars(tag), tag  # each metric has a value to show
    ratio = acc.Scalars("sparsity/final_flops_ratio")[-1].value
    assert ratio == pytest.approx(callback.history[-1].flops_ratio)


# ------------------------------------------------------------------ checked at fit start


def test_nan_weights_are_named_before_any_training(tmp_path: Path) -> None:
    model = Wide()
    with torch.no_grad():
        model.conv2.weight[0, 0, 0, 0] = math.nan
        model.fc2.bias[3] = math.inf
    trainer = quiet_trainer(tmp_path, [ls.SparsityCallback(linear_pruner())], 2)
    with pytest.raises(
        ValueError, match=r"inf or NaN before training: \['conv2.weight', 'fc2.bias'\]"
    ):
        trainer.fit(model)
    assert trainer.global_step == 0


def test_a_bare_number_budget_fails_at_fit_start_with_a_hint(tmp_path: Path) -> None:
    callback = ls.SparsityCallback(linear_pruner(), ls.FlopBudget("20", by_epoch=3))
    trainer = quiet_trainer(tmp_path, [callback], 3)
    # before: 20 FLOPs was accepted and failed only at the deadline ("294 > 20")
    with pytest.raises(ValueError, match=r"target '20' is 20 sparse FLOPs.*did you mean '20%'"):
        trainer.fit(Wide())
    assert trainer.global_step == 0


def test_a_deadline_after_max_epochs_is_warned_about(tmp_path: Path) -> None:
    budget = ls.FlopBudget("50%", by_epoch=8, action="adjust")
    callback = ls.SparsityCallback(ls.MagnitudePruner(), budget, write_files=False)
    with pytest.warns(UserWarning, match=r"by_epoch=8\) is after the fit's last epoch"):
        quiet_trainer(tmp_path, [callback], 2).fit(Wide())


def test_a_schedule_that_starts_after_max_epochs_is_warned_about(tmp_path: Path) -> None:
    # was silent: the fit ended with nothing pruned
    late = ls.MagnitudePruner(schedule=ls.schedules.Constant(0.5, start_epoch=5))
    callback = ls.SparsityCallback(late, write_files=False)
    with pytest.warns(UserWarning, match=r"schedule \(Constant\) prunes nothing by the fit's last"):
        quiet_trainer(tmp_path, [callback], 2).fit(Wide())
    assert callback.history[-1].params_nonzero == callback.history[0].params_nonzero
    # one that prunes at the last point (t = max_epochs) is not warned about
    on_time = ls.MagnitudePruner(schedule=ls.schedules.Constant(0.5, start_epoch=2))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*prunes nothing.*")
        quiet_trainer(tmp_path, [ls.SparsityCallback(on_time, write_files=False)], 2).fit(Wide())


def test_a_schedule_beside_an_adjust_budget_is_refused() -> None:
    # before: the schedule was silently ignored (and still logged to HParams as if used)
    pruner = ls.MagnitudePruner(schedule=ls.schedules.Cubic(0.8, start_epoch=0, end_epoch=4))
    with pytest.raises(ValueError, match=r"sets the pruning targets itself; the pruner's sch"):
        ls.SparsityCallback(pruner, ls.FlopBudget("25%", by_epoch=4, action="adjust"))


# ------------------------------------------------------------------ paths without a test


def test_global_step_axis(tmp_path: Path) -> None:
    callback = ls.SparsityCallback(linear_pruner(end=2), step="global_step", per_layer=False)
    logger = TensorBoardLogger(tmp_path, name="tb")
    quiet_trainer(tmp_path, [callback], 3, logger=logger).fit(Wide())  # 2 batches per epoch
    assert [(p.epoch, p.step, p.global_step) for p in callback.history] == [
        (0, 0, 0),
        (1, 2, 2),
        (2, 4, 4),
        (3, 6, 6),
    ]
    steps = [e.step for e in events(logger.log_dir).Scalars("sparsity/flops_ratio")]
    assert steps == [0, 2, 4, 6]


class DictBatches(Wide):
    def forward(self, image: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(image)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return nn.functional.cross_entropy(self(batch["image"]), batch["label"])

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        pass

    def train_dataloader(self) -> Any:
        images, labels = super().train_dataloader().dataset.tensors
        examples = [{"image": x, "label": y} for x, y in zip(images, labels, strict=True)]
        return torch.utils.data.DataLoader(examples, batch_size=32)


def test_input_from_batch_and_dict_inputs(tmp_path: Path) -> None:
    model = DictBatches()
    model.example_input_array = None  # type: ignore[assignment]
    taken = ls.SparsityCallback(input_from_batch=lambda b: b["image"], write_files=False)
    as_kwargs = ls.SparsityCallback(
        example_input={"image": torch.zeros(1, 3, 16, 16)}, write_files=False, name="kwargs"
    )
    quiet_trainer(tmp_path, [taken, as_kwargs], 1, limit_val_batches=0).fit(model)
    for callback in (taken, as_kwargs):
        assert [p.flops for p in callback.history] == [WIDE_DENSE, WIDE_DENSE]
        assert callback.report is not None
        assert callback.report.batch_size == 1
    # the training FLOPs count the dict batches' examples on both paths (all 64 of them)
    dense = [c.history[-1].train_flops_dense for c in (taken, as_kwargs)]
    assert dense[0] == dense[1] > 0


def test_torch_compiled_modules(tmp_path: Path) -> None:
    model = Wide()
    model.fc1 = torch.compile(model.fc1, backend="eager")  # type: ignore[assignment]
    callback = ls.SparsityCallback(linear_pruner(0.5, end=1), write_files=False)
    quiet_trainer(tmp_path, [callback], 2).fit(model)
    assert callback.history[0].flops_sparse == WIDE_DENSE
    # the compiled layer is pruned and counted like the others: uniform 0.5 halves every
    # weight, so the sparse FLOPs are half the dense ones
    assert int(model.fc1._orig_mod.weight.count_nonzero()) == 65_536 // 2
    assert callback.history[-1].flops_sparse == WIDE_DENSE // 2


class FrozenAndUnused(Wide):
    def __init__(self) -> None:
        super().__init__()
        self.conv1.requires_grad_(False)  # frozen
        self.spare = nn.Linear(10, 10)  # never called


def test_frozen_and_unused_parameters(tmp_path: Path) -> None:
    model = FrozenAndUnused()
    callback = ls.SparsityCallback(linear_pruner(0.5, end=1), write_files=False)
    quiet_trainer(tmp_path, [callback], 2).fit(model)
    last = callback.history[-1]
    # params: Wide's 69,018 (432+16 + 2,304+16 + 65,536+64 + 640+10) + spare's 110
    assert last.params == 69_018 + 110
    assert last.flops == WIDE_DENSE  # the unused layer runs nothing
    # uniform 0.5 on every conv/linear weight, spare and the frozen conv1 too
    assert int(model.spare.weight.count_nonzero()) == 50
    assert int(model.conv1.weight.count_nonzero()) == 216
    assert last.flops_sparse == ls.measure(model, torch.zeros(1, 3, 16, 16)).total.flops_sparse


class NormedLayers(Wide):
    def __init__(self) -> None:
        super().__init__()
        self.fc2 = nn.utils.parametrizations.weight_norm(nn.Linear(64, 10))
        self.conv2 = nn.utils.parametrizations.spectral_norm(nn.Conv2d(16, 16, 3, 2, 1))


def test_weight_norm_and_spectral_norm_layers(tmp_path: Path) -> None:
    model = NormedLayers()
    callback = ls.SparsityCallback(linear_pruner(0.5, end=1), write_files=False)
    with pytest.warns(UserWarning, match=r"not pruning .*conv2.weight.*fc2.weight.*parametriz"):
        quiet_trainer(tmp_path, [callback], 1).fit(model)
    last = callback.history[-1]
    assert last.flops == WIDE_DENSE
    assert last.flops_sparse == ls.measure(model, torch.zeros(1, 3, 16, 16)).total.flops_sparse
    assert int(model.fc1.weight.count_nonzero()) == 65_536 // 2


# ------------------------------------------------------------------ older checkpoints


# Lightning names the old key before any callback can map it to the new one
@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_a_checkpoint_of_the_first_version_resumes(tmp_path: Path) -> None:
    # written by the code before the version field (tests/data/make_v1_checkpoint.py):
    # 2 epochs, Linear(0.75, 0, 3) uniform, then counted in 0-based epoch indices, so
    # the end of the second epoch pruned to schedule(1) = 0.25; a budget "40%" of 1,280
    ckpt = Path(__file__).parent / "data" / "v1_tiny_mlp.ckpt"
    schedule = ls.schedules.Linear(0.75, start_epoch=0, end_epoch=3)
    pruner = ls.MagnitudePruner(schedule=schedule, allocation="uniform")
    callback = ls.SparsityCallback(pruner, ls.FlopBudget("40%", finetune_epochs=1))
    model = TinyMLP()
    trainer = quiet_trainer(tmp_path, [callback], 6, limit_val_batches=0)
    trainer.fit(model, ckpt_path=str(ckpt))
    history = callback.history
    assert [p.epoch for p in history] == [0, 1, 2, 3, 4]
    # the first version's points as recorded, with the 25% masks re-applied on resume
    assert [p.flops_sparse for p in history[:3]] == [1_280, 1_280, 960]
    assert [p.global_step for p in history[:3]] == [None, None, None]
    # then schedule(3) = 0.75: 2 * (0.25 * 512 + 0.25 * 128) = 320 <= 512, within at
    # epoch 3; one fine-tune epoch, stop
    assert [p.target_sparsity for p in history[3:]] == [0.75, 0.75]
    assert [p.flops_sparse for p in history[3:]] == [320, 320]
    assert [p.budget_status for p in history] == [None, "over", "over", "within", "within"]
    assert callback.stopping_reason == "finetune_done"
    assert callback.budget.reached_epoch == 3
