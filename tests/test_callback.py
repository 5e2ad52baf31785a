"""SparsityCallback in real fits: TensorBoard and CSV read back, checkpoints resumed."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint, ModelPruning
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2

import lightning_sparsity as ls
from lightning_sparsity.demo import DigitsCNN, DigitsDataModule

KEY = "sparsity/flops_sparse_per_example"


class Recorder(pl.Callback):
    """Counts the model independently (ls.measure) right after SparsityCallback's epoch end."""

    def __init__(self) -> None:
        self.reports: list[ls.SparsityReport] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.reports.append(ls.measure(pl_module, pl_module.example_input_array))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.reports.append(ls.measure(pl_module, pl_module.example_input_array))


def trainer(tmp_path: Path, callbacks: list, logger: Any, epochs: int = 3, **kw: Any) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=epochs,
        accelerator="cpu",
        logger=logger,
        callbacks=callbacks,
        limit_train_batches=4,
        limit_val_batches=2,
        enable_progress_bar=False,
        enable_model_summary=False,
        **{"enable_checkpointing": False, **kw},
    )


def model_pruning() -> ModelPruning:
    return ModelPruning("l1_unstructured", amount=0.3, use_global_unstructured=True, verbose=0)


def layout_charts(acc: EventAccumulator) -> dict[str, list[str]]:
    """The custom-scalars layout read back: chart title → its tags."""
    config = acc.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0]
    parsed = layout_pb2.Layout.FromString(config)
    return {c.title: list(c.multiline.tag) for cat in parsed.category for c in cat.chart}


def scalars(log_dir: str | Path) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


@pytest.mark.filterwarnings("ignore:.*does not have many workers")
def test_tensorboard_curves_equal_measure_at_each_epoch(tmp_path: Path) -> None:
    recorder = Recorder()
    callback = ls.SparsityCallback(table_every_n_epochs=2)
    logger = TensorBoardLogger(tmp_path, name="tb")
    fit = trainer(tmp_path, [model_pruning(), callback, recorder], logger)
    fit.fit(DigitsCNN(), DigitsDataModule())

    acc = scalars(logger.log_dir)
    events = acc.Scalars(KEY)
    assert [e.step for e in events] == [0, 1, 2, 3]  # the dense start, then one per epoch
    expected = [r.total.flops_sparse for r in recorder.reports]
    assert [e.value for e in events] == pytest.approx(expected, rel=1e-7)  # float32 storage
    assert expected[3] < expected[2] < expected[1] < expected[0]  # ModelPruning really pruned
    dense = [e.value for e in acc.Scalars("sparsity/flops_dense_per_example")]
    assert dense == [recorder.reports[0].total.flops] * 4
    nonzero = [e.value for e in acc.Scalars("sparsity/params_nonzero")]
    assert nonzero == [r.total.params_nonzero for r in recorder.reports]
    layer = acc.Scalars("sparsity_layers/conv1/density")
    assert [e.value for e in layer] == pytest.approx(
        [r.layer("conv1").density for r in recorder.reports]
    )

    # custom-scalars layout: the FLOP series (sibling runs of one tag) share one chart
    charts = layout_charts(acc)
    assert charts["FLOPs per example: dense, sparse, realizable, budget limit"] == [
        "^sparsity/flops_per_example$"
    ]
    # the per-layer table as text at epochs 0 and 2, and at fit end (step 3)
    texts = acc.Tensors("sparsity/layers/text_summary")
    assert [t.step for t in texts] == [0, 2, 3]
    last = texts[-1].tensor_proto.string_val[0].decode()
    assert "| conv1 | Conv2d |" in last
    assert f"{recorder.reports[-1].total.params_nonzero:,}" in last


@pytest.mark.filterwarnings("ignore:.*does not have many workers")
def test_csv_logger_gets_the_same_values_and_files_are_written(tmp_path: Path) -> None:
    recorder = Recorder()
    callback = ls.SparsityCallback(per_layer=False)
    logger = CSVLogger(tmp_path, name="csv")
    trainer(tmp_path, [model_pruning(), callback, recorder], logger).fit(
        DigitsCNN(), DigitsDataModule()
    )
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get(KEY)]
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3]
    assert [float(r[KEY]) for r in rows] == [r.total.flops_sparse for r in recorder.reports]
    assert not any(key.startswith("sparsity_layers/") for key in rows[0])

    directory = Path(logger.log_dir)
    history = json.loads((directory / "sparsity_history.json").read_text())
    assert [row["flops_sparse"] for row in history] == [
        r.total.flops_sparse for r in recorder.reports
    ]
    with open(directory / "sparsity_history.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1, 2, 3]
    report = json.loads((directory / "sparsity_report.json").read_text())
    assert report["total"]["flops_sparse"] == recorder.reports[-1].total.flops_sparse
    assert (directory / "sparsity_report.md").read_text().startswith("| layer |")
    png = (directory / "sparsity_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


class NoExampleCNN(DigitsCNN):
    def __init__(self) -> None:
        super().__init__()
        self.example_input_array = None


@pytest.mark.filterwarnings("ignore:.*does not have many workers")
def test_input_taken_from_the_first_batch(tmp_path: Path) -> None:
    callback = ls.SparsityCallback(write_files=False)
    trainer(tmp_path, [callback], logger=False, epochs=1).fit(NoExampleCNN(), DigitsDataModule())
    dense = ls.measure(DigitsCNN(), torch.zeros(1, 1, 8, 8)).total.flops
    assert [point.flops for point in callback.history] == [dense, dense]
    assert callback.report is not None
    assert callback.report.batch_size == 1


class DictBatches(DigitsDataModule):
    def train_dataloader(self) -> Any:
        return [{"image": x, "label": y} for x, y in super().train_dataloader()]


@pytest.mark.filterwarnings("ignore:.*does not have many workers")
def test_unusable_batch_says_what_to_do(tmp_path: Path) -> None:
    callback = ls.SparsityCallback(write_files=False)
    with pytest.raises(TypeError, match=r"set `example_input_array`.*input_from_batch"):
        trainer(tmp_path, [callback], logger=False, epochs=1).fit(NoExampleCNN(), DictBatches())


@pytest.mark.filterwarnings("ignore:.*does not have many workers")
def test_resume_continues_the_curves_without_gaps_or_duplicates(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = ls.SparsityCallback()
    trainer(
        tmp_path, [model_pruning(), first, checkpoint], logger, epochs=2, enable_checkpointing=True
    ).fit(DigitsCNN(), DigitsDataModule())
    assert [point.epoch for point in first.history] == [0, 1, 2]

    second = ls.SparsityCallback()
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    callbacks = [model_pruning(), second, ModelCheckpoint(dirpath=tmp_path / "ckpt")]
    resumed = trainer(tmp_path, callbacks, logger, epochs=4, enable_checkpointing=True)
    resumed.fit(DigitsCNN(), DigitsDataModule(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert [point.epoch for point in second.history] == [0, 1, 2, 3, 4]
    assert second.history[:3] == first.history
    steps = [e.step for e in scalars(logger.log_dir).Scalars(KEY)]
    assert steps == [0, 1, 2, 3, 4]
    history = json.loads((Path(logger.log_dir) / "sparsity_history.json").read_text())
    assert [row["epoch"] for row in history] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"step": "batch"}, ValueError, r"`step` must be one of \('epoch', 'global_step'\)"),
        ({"table_every_n_epochs": -1}, ValueError, "`table_every_n_epochs` must be an int >= 0"),
        ({"pruning": "cubic"}, TypeError, "`pruning` must be a MagnitudePruner.*got str"),
        ({"input_from_batch": 3}, TypeError, "`input_from_batch` must be callable, got int"),
        # was "Cannot copy out of meta tensor; no data!" from the first epoch's hook
        (
            {"example_input": torch.zeros(2, 8, device="meta")},
            ValueError,
            "`example_input` holds a tensor on the meta device",
        ),
    ],
)
def test_bad_arguments(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        ls.SparsityCallback(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"pruning": "cubic"}, TypeError, "`pruning` must be a MagnitudePruner.*got str"),
        ({"guard": 0.9}, TypeError, "`guard` must be a MetricGuard.*got 0.9"),
        (
            {"budget": ls.FlopBudget("25%", by_epoch=3, action="adjust")},
            ValueError,
            "action='adjust' steers the pruner; pass `pruning=",
        ),
        ({"prune_every_n_steps": 0}, ValueError, "`prune_every_n_steps` must be an int >= 1"),
    ],
)
def test_the_lightning_free_controller_refuses_what_the_callback_refuses(
    kwargs: dict, error: type, match: str
) -> None:
    # was accepted by SparsityController (the callback alone checked how the pieces combine)
    with pytest.raises(error, match="SparsityController: .*" + match):
        ls.SparsityController(**kwargs)
    with pytest.raises(error, match=match):
        ls.SparsityCallback(**kwargs)


@pytest.mark.filterwarnings("ignore:.*does not have many workers")
def test_hparams_with_final_metrics_and_budget_on_the_flops_chart(tmp_path: Path) -> None:
    from tensorboard.plugins.hparams import plugin_data_pb2

    pruner = ls.MagnitudePruner(schedule=ls.schedules.Cubic(0.8, start_epoch=0, end_epoch=2))
    callback = ls.SparsityCallback(pruner, ls.FlopBudget("50%", by_epoch=2), per_layer=False)
    logger = TensorBoardLogger(tmp_path, name="tb", default_hp_metric=False)
    trainer(tmp_path, [callback], logger, epochs=3).fit(DigitsCNN(), DigitsDataModule())

    acc = scalars(logger.log_dir)
    content = acc.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert start.hparams["pruning/schedule/final_sparsity"].number_value == 0.8
    assert start.hparams["pruning/schedule/type"].string_value == "Cubic"
    assert start.hparams["budget/target"].string_value == "50%"
    assert start.hparams["budget/action"].string_value == "stop"
    content = acc.SummaryMetadata("_hparams_/experiment").plugin_data.content
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content).experiment
    metrics = [m.name.tag for m in experiment.metric_infos]
    assert metrics == [
        "sparsity/final_flops_ratio",
        "sparsity/final_param_sparsity",
        "sparsity/final_flops_sparse_per_example",
        "budget/final_slack",
    ]
    final = acc.Scalars("sparsity/final_flops_ratio")[-1].value
    assert final == pytest.approx(callback.history[-1].flops_ratio)

    charts = layout_charts(acc)
    assert charts["FLOPs per example: dense, sparse, realizable, budget limit"] == [
        "^sparsity/flops_per_example$"
    ]
    assert charts["sparsity: pruned weights, schedule target, all parameters"] == [
        "^sparsity/pruned_sparsity$",
        "^sparsity/target_sparsity$",
        "^sparsity/param_sparsity$",
    ]
    limit = [e.value for e in acc.Scalars("budget/limit")]
    assert limit == pytest.approx([0.5 * callback.history[0].flops] * 4)
    # the chart's limit line: the `limit` sibling run (action="stop": the final limit)
    drawn = [
        e.value
        for e in scalars(Path(logger.log_dir) / "limit").Scalars("sparsity/flops_per_example")
    ]
    assert drawn == pytest.approx(limit)


class CrashesInEpoch2(DigitsCNN):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.current_epoch == 2:
            raise RuntimeError("simulated crash")
        return super().training_step(batch, batch_idx)


@pytest.mark.filterwarnings("ignore:.*does not have many workers")
def test_a_crash_keeps_the_history_of_finished_epochs(tmp_path: Path) -> None:
    pruner = ls.MagnitudePruner(schedule=ls.schedules.Linear(0.5, start_epoch=0, end_epoch=3))
    callback = ls.SparsityCallback(pruner)
    logger = CSVLogger(tmp_path, name="csv")
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer(tmp_path, [callback], logger, epochs=4).fit(CrashesInEpoch2(), DigitsDataModule())
    directory = Path(logger.log_dir)
    with open(directory / "sparsity_history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]  # the start and epochs 0 and 1
    assert [float(r["flops_sparse"]) for r in rows] == [
        point.flops_sparse for point in callback.history
    ]
    assert json.loads((directory / "sparsity_history.json").read_text()) == [
        point.to_dict() for point in callback.history
    ]
    assert (directory / "sparsity_curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"per_layer": "no"}, "`per_layer` must be a bool, got 'no'"),
        ({"write_files": None}, "`write_files` must be a bool, got None"),
        ({"example_input": 3}, "`example_input` must be a Tensor.*got int"),
    ],
)
def test_bad_argument_types(kwargs: dict, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        ls.SparsityCallback(**kwargs)


def test_validate_with_best_checkpoint_after_a_pruned_fit(tmp_path: Path) -> None:
    pruner = ls.MagnitudePruner(schedule=ls.schedules.Constant(0.5))
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss")
    fit = trainer(
        tmp_path, [ls.SparsityCallback(pruner), checkpoint], False, 2, enable_checkpointing=True
    )
    model = DigitsCNN()
    fit.fit(model, DigitsDataModule())
    results = fit.validate(model, DigitsDataModule(), ckpt_path="best", verbose=False)
    assert results[0]["val_acc"] > 0.1  # ran on the loaded plain-weight checkpoint
    weights = [getattr(model, n).weight for n in ("conv1", "conv2", "conv3", "fc")]
    n = sum(w.numel() for w in weights)
    assert sum(int(w.count_nonzero()) for w in weights) == n - round(0.5 * n)  # still pruned


def test_true_double_precision_with_example_input_array(tmp_path: Path) -> None:
    callback = ls.SparsityCallback(write_files=False)
    fit = trainer(tmp_path, [callback], False, 1, precision="64-true")
    fit.fit(DigitsCNN(), DigitsDataModule())
    assert (
        callback.history[-1].flops == ls.measure(DigitsCNN(), torch.zeros(1, 1, 8, 8)).total.flops
    )


def test_two_callbacks_in_one_trainer_and_no_files_without_a_logger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    measure_only = ls.SparsityCallback(name="measure")
    schedule = ls.schedules.Constant(0.5, start_epoch=1)
    pruning = ls.SparsityCallback(ls.MagnitudePruner(schedule=schedule), name="prune")
    assert measure_only.state_key != pruning.state_key
    trainer(tmp_path, [pruning, measure_only], False, 1).fit(DigitsCNN(), DigitsDataModule())
    for key in ("flops_sparse", "params_nonzero"):  # the measuring one sees the pruning
        assert getattr(measure_only.history[-1], key) == getattr(pruning.history[-1], key)
    assert pruning.history[-1].flops_sparse < pruning.history[0].flops_sparse
    assert not list(tmp_path.glob("sparsity_*"))  # logger=False: Lightning logs nothing
