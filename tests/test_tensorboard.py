"""loggers/tensorboard.py on real event files, read back with TensorBoard's own readers."""

from __future__ import annotations

import io
import logging
import os
import stat
from pathlib import Path

import pytest
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
from tensorboard.summary.writer.record_writer import RecordWriter
from torch.utils.tensorboard import SummaryWriter

from lightning_sparsity.loggers.tensorboard import drop_events_after, layout, write_hparams

OURS = ("sparsity/", "sparsity_layers/", "budget/")
TEXT = "sparsity/layers/text_summary"  # how add_text("sparsity/layers", ...) is stored
EXPERIMENT, START = "_hparams_/experiment", "_hparams_/session_start_info"


def ours(tag: str) -> bool:
    return tag.startswith(OURS)


def accumulate(log_dir: Path | str) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def points(acc: EventAccumulator, tag: str) -> list[tuple[int, float | str]]:
    """(step, value) of a scalar or text tag, sorted by step (file order is by name)."""
    if tag == TEXT:
        rows = [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(tag)]
    else:
        rows = [(e.step, e.value) for e in acc.Scalars(tag)]
    return sorted(rows, key=lambda row: row[0])


def records(path: Path) -> list[bytes]:
    return list(RawEventFileLoader(str(path)).Load())


def framed(data: bytes) -> bytes:
    buffer = io.BytesIO()
    RecordWriter(buffer).write(data)
    return buffer.getvalue()


def event_files(log_dir: Path) -> list[Path]:
    return sorted(log_dir.glob("events.out.tfevents.*"))


def log_ours(writer: SummaryWriter, steps: range, offset: float) -> None:
    for step in steps:
        writer.add_scalar("sparsity/a", offset + step, step)
        writer.add_scalar("budget/b", offset + 10 + step, step)
        writer.add_text("sparsity/layers", f"table {offset + step}", step)


def dead_run(log_dir: Path, suffix: str = "") -> Path:
    """What the killed process left: our tags at epochs 0..5, train_loss at global steps 0..40."""
    existing = set(event_files(log_dir))
    writer = SummaryWriter(log_dir, filename_suffix=suffix)
    writer.add_custom_scalars(layout())
    for step in range(41):
        writer.add_scalar("train_loss", 1.0 / (step + 1), step)
    log_ours(writer, range(6), offset=0)
    writer.close()
    [path] = set(event_files(log_dir)) - existing
    return path


def test_purge_step_would_destroy_lightnings_global_step_metrics(tmp_path: Path) -> None:
    """Why drop_events_after exists: a SessionLog.START purge drops every tag at steps >= s."""
    dead_run(tmp_path)
    acc = accumulate(tmp_path)
    assert [s for s, _ in points(acc, "sparsity/a")] == [0, 1, 2, 3, 4, 5]
    resumed = SummaryWriter(tmp_path, purge_step=4)
    log_ours(resumed, range(4, 7), offset=100)
    resumed.close()
    acc = accumulate(tmp_path)
    assert [s for s, _ in points(acc, "sparsity/a")] == [0, 1, 2, 3, 4, 5, 6]
    # ... but Lightning's metric, indexed by global step, lost everything from step 4 on
    assert [s for s, _ in points(acc, "train_loss")] == [0, 1, 2, 3]


def test_without_dropping_a_resume_duplicates_our_points(tmp_path: Path) -> None:
    dead_run(tmp_path)
    resumed = SummaryWriter(tmp_path)
    log_ours(resumed, range(4, 7), offset=100)
    resumed.close()
    steps = [s for s, _ in points(accumulate(tmp_path), "sparsity/a")]
    assert steps == [0, 1, 2, 3, 4, 4, 5, 5, 6]


def test_drop_then_resume_gives_one_point_per_step(tmp_path: Path) -> None:
    dead_run(tmp_path)
    dropped = drop_events_after(tmp_path, 3, ours)
    assert dropped == 3 * 2  # three tags, steps 4 and 5
    resumed = SummaryWriter(tmp_path)
    log_ours(resumed, range(4, 7), offset=100)
    resumed.close()

    acc = accumulate(tmp_path)
    old, new = range(4), range(4, 7)
    assert points(acc, "sparsity/a") == [(s, s) for s in old] + [(s, 100 + s) for s in new]
    assert points(acc, "budget/b") == [(s, 10 + s) for s in old] + [(s, 110 + s) for s in new]
    texts = [(s, f"table {s}") for s in old] + [(s, f"table {100 + s}") for s in new]
    assert points(acc, TEXT) == texts
    assert points(acc, "train_loss") == [(s, pytest.approx(1.0 / (s + 1))) for s in range(41)]
    assert "custom_scalars__config__" in acc.Tags()["tensors"]


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")  # add_graph
def test_rewrite_keeps_other_records_byte_for_byte(tmp_path: Path) -> None:
    writer = SummaryWriter(tmp_path)
    write_hparams(writer, {"lr": 0.1}, ["sparsity/a"])
    writer.add_graph(torch.nn.Linear(3, 2), torch.zeros(1, 3))
    for step in range(8):
        writer.add_scalar("train_loss", float(step), step)
        writer.add_scalar("sparsity/a", float(step), step)
    mixed = summary_pb2.Summary(
        value=[
            summary_pb2.Summary.Value(tag="sparsity/a", simple_value=-1.0),
            summary_pb2.Summary.Value(tag="val_acc", simple_value=0.5),
        ]
    )
    writer._get_file_writer().add_summary(mixed, 6)
    writer.close()
    [path] = event_files(tmp_path)
    os.chmod(path, 0o640)
    before = records(path)

    assert drop_events_after(tmp_path, 3, ours) == 4 + 1  # steps 4..7, and the mixed event

    after = records(path)
    assert path.read_bytes() == b"".join(framed(r) for r in after)  # nothing else in the file
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left

    def stale(record: bytes) -> bool:
        event = event_pb2.Event.FromString(record)
        values = event.summary.value
        return event.step > 3 and len(values) > 0 and all(ours(v.tag) for v in values)

    kept = [r for r in before if not stale(r)]
    mixed_at = next(
        i for i, r in enumerate(kept) if len(event_pb2.Event.FromString(r).summary.value) == 2
    )
    assert len(after) == len(kept)
    assert after[:mixed_at] + after[mixed_at + 1 :] == kept[:mixed_at] + kept[mixed_at + 1 :]
    rewritten = event_pb2.Event.FromString(after[mixed_at])
    assert rewritten.step == 6
    assert [(v.tag, v.simple_value) for v in rewritten.summary.value] == [("val_acc", 0.5)]
    assert event_pb2.Event.FromString(after[0]).file_version == "brain.Event:2"

    acc = accumulate(tmp_path)
    assert acc.Graph() is not None
    assert START in acc.PluginTagToContent("hparams")
    assert [s for s, _ in points(acc, "train_loss")] == list(range(8))
    assert [s for s, _ in points(acc, "sparsity/a")] == [0, 1, 2, 3]

    # idempotent: nothing left to drop, the file is not touched again
    data, inode = path.read_bytes(), path.stat().st_ino
    assert drop_events_after(tmp_path, 3, ours) == 0
    assert path.read_bytes() == data
    assert path.stat().st_ino == inode


def test_files_without_stale_points_are_not_touched(tmp_path: Path) -> None:
    clean = SummaryWriter(tmp_path, filename_suffix=".clean")
    log_ours(clean, range(4), offset=0)
    for step in range(41):  # not ours: any step is fine
        clean.add_scalar("train_loss", 0.0, step)
    clean.close()
    [clean_path] = event_files(tmp_path)
    stale_path = dead_run(tmp_path, suffix=".stale")
    data, status = clean_path.read_bytes(), clean_path.stat()

    assert drop_events_after(tmp_path, 3, ours) == 6

    assert clean_path.read_bytes() == data
    assert (clean_path.stat().st_ino, clean_path.stat().st_mtime_ns) == (
        status.st_ino,
        status.st_mtime_ns,
    )
    assert max(event_pb2.Event.FromString(r).step for r in records(stale_path)) == 40


def test_subdirectories_and_skipped_files_are_not_touched(tmp_path: Path) -> None:
    live = SummaryWriter(tmp_path, filename_suffix=".live")  # this process's open writer
    log_ours(live, range(6), offset=0)
    live.flush()
    live_path = Path(live._get_file_writer().event_writer._file_name)
    skipped = dead_run(tmp_path, suffix=".skipped")
    nested = dead_run(tmp_path / "version_0" / "sub")
    other = dead_run(tmp_path, suffix=".other")
    untouched = {p: p.read_bytes() for p in (live_path, skipped, nested)}

    # paths as str, and spelled differently from the glob's (resolved before comparing)
    skip = [str(live_path), tmp_path / "." / skipped.name]
    assert drop_events_after(tmp_path, 3, ours, skip=skip) == 6

    assert {p: p.read_bytes() for p in untouched} == untouched
    assert max(event_pb2.Event.FromString(r).step for r in records(other)) == 40
    log_ours(live, range(6, 8), offset=0)  # the live writer still writes to its file
    live.close()
    assert max(event_pb2.Event.FromString(r).step for r in records(live_path)) == 7


DAMAGE = {
    "truncated": lambda record: record[:-5],  # a killed writer stopped mid-record
    "corrupt": lambda record: record[:-1] + bytes([record[-1] ^ 0xFF]),  # wrong data crc
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_unreadable_trailing_record_does_not_crash(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = dead_run(tmp_path, suffix=".damaged")
    clean = records(path)
    tail = framed(event_pb2.Event(step=5, wall_time=1.0).SerializeToString())
    tail = DAMAGE[damage](tail)
    with path.open("ab") as file:
        file.write(tail)
    data = path.read_bytes()
    assert drop_events_after(tmp_path, 5, ours) == 0  # nothing to drop: left as it is
    assert path.read_bytes() == data

    with caplog.at_level(logging.WARNING, logger="lightning_sparsity.loggers.tensorboard"):
        assert drop_events_after(tmp_path, 3, ours) == 6

    assert "unreadable trailing bytes" in caplog.text
    after = records(path)
    assert path.read_bytes() == b"".join(framed(r) for r in after)  # the damaged tail is gone
    assert len(after) == len(clean) - 6
    acc = accumulate(tmp_path)
    assert [s for s, _ in points(acc, "sparsity/a")] == [0, 1, 2, 3]
    assert len(points(acc, "train_loss")) == 41


def test_missing_directory_drops_nothing(tmp_path: Path) -> None:
    assert drop_events_after(tmp_path / "nowhere", 0, ours) == 0


# ---------------------------------------------------------------------- hparams

HPARAMS = {
    "pruning": {"type": "Cubic", "schedule": {"final_sparsity": 0.8, "end_epoch": 10}},
    "budget/target": "25%",
    "per_layer": True,
    "seed": None,
    "sizes": [1, 2],
}
FLAT = {
    "pruning/type": ("string_value", "Cubic"),
    "pruning/schedule/final_sparsity": ("number_value", 0.8),
    "pruning/schedule/end_epoch": ("number_value", 10.0),
    "budget/target": ("string_value", "25%"),
    "per_layer": ("bool_value", True),
    "seed": ("string_value", "None"),
    "sizes": ("string_value", "[1, 2]"),
}
METRICS = ["sparsity/final_flops_ratio", "sparsity/final_param_sparsity"]


def hparams_shown(acc: EventAccumulator) -> tuple[dict, list[str]]:
    """What the HParams plugin reads: the plugin_data of the first metadata of each tag."""
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content[START]).session_start_info
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content[EXPERIMENT]).experiment
    values = {
        k: (v.WhichOneof("kind"), getattr(v, v.WhichOneof("kind")))
        for k, v in start.hparams.items()
    }
    return values, [m.name.tag for m in experiment.metric_infos]


def test_only_the_first_hparams_write_counts(tmp_path: Path) -> None:
    """The bug: Lightning writes its hparams at fit start, ours at fit end are ignored."""
    logger = TensorBoardLogger(tmp_path, name="tb")
    logger.log_hyperparams({"lr": 0.1})
    write_hparams(logger.experiment, HPARAMS, METRICS)
    logger.finalize("success")
    values, metrics = hparams_shown(accumulate(logger.log_dir))
    assert values == {"lr": ("number_value", 0.1)}
    assert metrics == ["hp_metric"]


def test_write_hparams_before_lightning_is_what_tensorboard_shows(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path, name="tb")
    write_hparams(logger.experiment, HPARAMS, METRICS)
    logger.log_hyperparams({"lr": 0.1})  # what Lightning does for save_hyperparameters()
    for i, tag in enumerate(METRICS):
        logger.experiment.add_scalar(tag, 0.25 + i, 3)
    logger.finalize("success")

    # Lightning's session_start_info is in the file ...
    [path] = event_files(Path(logger.log_dir))
    starts = [
        plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
        for r in records(path)
        for v in event_pb2.Event.FromString(r).summary.value
        if v.tag == START
    ]
    assert ["lr" in s.session_start_info.hparams for s in starts] == [False, True]
    # ... but the first one, ours, is what TensorBoard reads
    acc = accumulate(logger.log_dir)
    values, metrics = hparams_shown(acc)
    assert values == FLAT
    assert metrics == METRICS
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        acc.PluginTagToContent("hparams")[EXPERIMENT]
    ).experiment
    kinds = {i.name: api_pb2.DataType.Name(i.type) for i in experiment.hparam_infos}
    assert kinds["per_layer"] == "DATA_TYPE_BOOL"
    assert kinds["pruning/schedule/end_epoch"] == "DATA_TYPE_FLOAT64"
    assert kinds["seed"] == "DATA_TYPE_STRING"
    assert [points(acc, tag) for tag in METRICS] == [[(3, 0.25)], [(3, 1.25)]]


def test_hparams_dashboard_session_group(tmp_path: Path) -> None:
    """The HParams plugin's own backend lists one session with our hparams and metrics."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import backend_context, list_session_groups

    logger = TensorBoardLogger(tmp_path, name="tb")
    write_hparams(logger.experiment, HPARAMS, METRICS)
    logger.log_hyperparams({"lr": 0.1})
    for i, tag in enumerate(METRICS):
        logger.experiment.add_scalar(tag, 0.25 + i, 3)
    logger.finalize("success")

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(tmp_path))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(tmp_path))
    tb_context = base_plugin.TBContext(
        logdir=str(tmp_path), data_provider=provider, multiplexer=multiplexer
    )
    request = api_pb2.ListSessionGroupsRequest(
        start_index=0,
        slice_size=10,
        allowed_statuses=[api_pb2.STATUS_SUCCESS, api_pb2.STATUS_UNKNOWN],
        aggregation_type=api_pb2.AGGREGATION_AVG,
    )
    handler = list_session_groups.Handler(
        context.RequestContext(), backend_context.Context(tb_context), "", request
    )
    [group] = handler.run().session_groups
    assert group.name == "tb/version_0"
    assert set(group.hparams) == set(FLAT)
    assert group.hparams["per_layer"].bool_value is True
    metrics = {m.name.tag: m.value for m in group.metric_values}
    assert metrics == {METRICS[0]: 0.25, METRICS[1]: 1.25}
