"""What TensorBoard shows of a run, read back through TensorBoard's own plugins (issue 17).

The FLOP series are sibling runs of one tag (a legend of run names, one colour each), one
custom-scalars layout whatever the run, an HParams experiment with the varying settings and
the monitored metric first, and curves that line up with per-step metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard import context
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, backend_context, metadata
from torch.utils.tensorboard import SummaryWriter

import lightning_sparsity as ls
from lightning_sparsity.demo import DigitsCNN, DigitsDataModule
from lightning_sparsity.loggers.tensorboard import FLOPS_SERIES, write_hparams
from tests.tb_views import experiment_shown, layout_shown, scalar_tags, tb_context, ticked

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*does not have many workers",
    "ignore:.*is smaller than the logging interval",
    "ignore:.*is after the fit's last epoch",
)

FLOPS = "sparsity/flops_per_example"
BATCHES = 3  # training batches per epoch: global step = 3 * epoch


def fit(root: Path, callback: Any, *, epochs: int = 2, monitor: str | None = None) -> Path:
    """A tiny real fit logging to ``root/tb/version_0``; its log dir."""
    logger = TensorBoardLogger(root, name="tb", default_hp_metric=False)
    callbacks: list[Any] = [callback]
    if monitor is not None:
        callbacks.append(ModelCheckpoint(root / "ckpt", monitor=monitor, mode="max"))
    pl.Trainer(
        default_root_dir=root,
        max_epochs=epochs,
        accelerator="cpu",
        logger=logger,
        callbacks=callbacks,
        limit_train_batches=BATCHES,
        limit_val_batches=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=monitor is not None,
    ).fit(DigitsCNN(), DigitsDataModule())
    return Path(logger.log_dir)


def budget_callback(**kw: Any) -> Any:
    budget = ls.FlopBudget("20%", by_epoch=2, action="adjust")
    return ls.SparsityCallback(ls.MagnitudePruner(), budget, per_layer=False, verbose=False, **kw)


def accumulate(log_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


# ---------------------------------------------------------------------- defect 2


def test_flop_series_are_sibling_runs_of_one_tag(tmp_path: Path) -> None:
    callback = budget_callback()
    log_dir = fit(tmp_path, callback, epochs=3)
    history = callback.history

    # TensorBoard's runs: the run and one sibling run per series, each its own colour
    runs = {run for run, tags in scalar_tags(tmp_path).items() if FLOPS in tags}
    assert runs == {f"tb/version_0/{name}" for name in FLOPS_SERIES}
    expected = {
        "dense": [p.flops for p in history],
        "sparse": [p.flops_sparse for p in history],
        "realizable": [p.flops_realizable for p in history],
        "limit": [p.budget_scheduled for p in history],  # the limit along the schedule
    }
    for name, values in expected.items():
        events = accumulate(log_dir / name).Scalars(FLOPS)
        assert [e.step for e in events] == [0, 1, 2, 3]
        assert [e.value for e in events] == pytest.approx(values, rel=1e-6)  # float32
    assert expected["limit"][-1] == pytest.approx(0.2 * history[0].flops)
    # the old tags stay in the run itself
    main = accumulate(log_dir)
    assert [e.value for e in main.Scalars("sparsity/flops_sparse_per_example")] == (
        pytest.approx(expected["sparse"], rel=1e-6)
    )
    assert FLOPS not in main.Tags()["scalars"]


def test_one_layout_for_a_baseline_and_a_budget_run(tmp_path: Path) -> None:
    """A sweep's dense baseline and budget runs wrote two layouts: two FLOP charts."""
    fit(tmp_path / "baseline", ls.SparsityCallback(per_layer=False, verbose=False))
    fit(tmp_path / "budget", budget_callback())
    layout = layout_shown(tmp_path)
    charts = {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart}
    assert charts == {
        "FLOPs per example: dense, sparse, realizable, budget limit": [f"^{FLOPS}$"],
        "sparsity: pruned weights, schedule target, all parameters": [
            "^sparsity/pruned_sparsity$",
            "^sparsity/target_sparsity$",
            "^sparsity/param_sparsity$",
        ],
    }
    # the baseline has no limit series: only the budget run's siblings have one
    runs = scalar_tags(tmp_path)
    assert "baseline/tb/version_0/limit" not in runs
    assert FLOPS in runs["budget/tb/version_0/limit"]


# ---------------------------------------------------------------------- defect 3


def test_write_hparams_drops_internals_one_type_varying_first(tmp_path: Path) -> None:
    hparams = {
        "_class_path": "lightning_sparsity.demo.DigitsCNN",
        "_instantiator": "pytorch_lightning.cli.instantiate_module",
        "batch_norm": True,
        "batch_size": 64,
        "channels": (16, 32, 64),
        "model": {"_class_path": "x", "depth": 2},
        "sweep/seed": 1,
        "sweep/label": "20%",
        "budget/target": "20%",
    }
    varying = ["sweep/label", "sweep/seed", "budget/target"]
    metrics = ["val_acc", "sparsity/final_flops_ratio"]
    for run, channels in (("a", (16, 32, 64)), ("b", [16, 32, 64])):
        writer = SummaryWriter(tmp_path / run)
        write_hparams(writer, {**hparams, "channels": channels}, metrics, varying=varying)
        writer.close()

    experiment = experiment_shown(tmp_path)
    kinds = {i.name: api_pb2.DataType.Name(i.type) for i in experiment.hparam_infos}
    assert kinds == {
        "batch_norm": "DATA_TYPE_BOOL",
        "batch_size": "DATA_TYPE_FLOAT64",
        "channels": "DATA_TYPE_STRING",
        "model/depth": "DATA_TYPE_FLOAT64",
        "sweep/seed": "DATA_TYPE_FLOAT64",
        "sweep/label": "DATA_TYPE_STRING",
        "budget/target": "DATA_TYPE_STRING",
    }
    columns, shown_metrics = ticked(experiment)
    assert columns[:3] == ["budget/target", "sweep/label", "sweep/seed"]
    assert shown_metrics == metrics

    # one value (and type) per setting in every session: a tuple and a list are one list
    backend = backend_context.Context(tb_context(tmp_path))
    contents = backend.hparams_metadata(context.RequestContext(), "")
    values = set()
    for run in ("a", "b"):
        start = contents[run]["_hparams_/session_start_info"]
        hp = metadata.parse_session_start_info_plugin_data(start).hparams
        values.add((hp["channels"].WhichOneof("kind"), hp["channels"].string_value))
    assert values == {("string_value", "[16, 32, 64]")}


def test_callback_hparams_put_the_sweep_and_the_monitor_first(tmp_path: Path) -> None:
    hparams = {"sweep/seed": 0, "sweep/label": "20%", "budget/target": "20%"}
    fit(tmp_path, budget_callback(hparams=hparams), epochs=1, monitor="val_acc")
    experiment = experiment_shown(tmp_path)
    columns, metrics = ticked(experiment)
    assert columns[:3] == ["budget/target", "sweep/label", "sweep/seed"]
    assert metrics[0] == "val_acc"
    assert not [i.name for i in experiment.hparam_infos if i.name.split("/")[-1][0] == "_"]


# ---------------------------------------------------------------------- defect 4


def test_epoch_curves_also_at_the_global_step(tmp_path: Path) -> None:
    callback = budget_callback()
    log_dir = fit(tmp_path, callback, epochs=3)
    acc = accumulate(log_dir)
    history = callback.history
    # the epoch axis, as before
    assert [e.step for e in acc.Scalars("sparsity/flops_ratio")] == [0, 1, 2, 3]
    # the same points at the global step, the axis of val_acc and train_loss
    steps = [p.global_step for p in history]
    assert steps == [0, BATCHES, 2 * BATCHES, 3 * BATCHES]
    for tag, values in {
        "sparsity_global_step/flops_ratio": [p.flops_ratio for p in history],
        "sparsity_global_step/param_sparsity": [p.param_sparsity for p in history],
        "sparsity_global_step/pruned_sparsity": [p.pruned_sparsity for p in history],
    }.items():
        events = acc.Scalars(tag)
        assert [e.step for e in events] == steps, tag
        assert [e.value for e in events] == pytest.approx(values, rel=1e-6), tag
    # Lightning logs epoch-end metrics at the step of the epoch's last batch, one before
    val_steps = [e.step for e in acc.Scalars("val_acc")]
    assert [s + 1 for s in val_steps] == steps[1:]
    # the dense reference at 1.0 on that axis too (outlier clipping keeps the start)
    dense = accumulate(log_dir / "dense").Scalars("sparsity_global_step/flops_ratio")
    assert [(e.step, e.value) for e in dense] == [(s, 1.0) for s in steps]


def test_global_step_axis_writes_no_copy(tmp_path: Path) -> None:
    log_dir = fit(tmp_path, budget_callback(step="global_step"), epochs=1)
    tags = accumulate(log_dir).Tags()["scalars"]
    assert not [t for t in tags if t.startswith("sparsity_global_step/")]


def test_ratio_keeps_epoch_zero_under_outlier_clipping(tmp_path: Path) -> None:
    """TensorBoard's default y range drops values outside the 5th-95th percentile of a card.

    The dense sibling holds 1.0 at every point of the `sparsity/flops_ratio` card, so the
    start (1.0) stays inside it; the budget status is text (neither smoothed nor clipped).
    """
    callback = budget_callback()
    log_dir = fit(tmp_path, callback, epochs=3)
    ratio = [e.value for e in accumulate(log_dir).Scalars("sparsity/flops_ratio")]
    dense = [e.value for e in accumulate(log_dir / "dense").Scalars("sparsity/flops_ratio")]
    assert dense == [1.0] * len(ratio)
    assert ratio[0] == 1.0
    card = sorted(ratio + dense)

    def quantile(values: list[float], q: float) -> float:  # d3.quantile, as TensorBoard's
        i = (len(values) - 1) * q
        low = int(i)
        high = min(low + 1, len(values) - 1)
        return values[low] + (values[high] - values[low]) * (i - low)

    assert quantile(sorted(ratio), 0.95) < 1.0  # the run alone: its start was clipped
    assert quantile(card, 0.05) <= min(ratio)  # with the dense sibling: all kept
    assert quantile(card, 0.95) >= 1.0
    texts = accumulate(log_dir).Tensors("budget/status/text_summary")
    assert [t.step for t in texts] == [0, 1, 2, 3]
    last = texts[-1].tensor_proto.string_val[0].decode()
    assert last.startswith(f"epoch 3: {callback.history[-1].budget_status}")
