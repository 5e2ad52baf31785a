"""TensorBoard extras: FLOP series as sibling runs, a custom-scalars layout, hparams.

Works on any logger whose ``experiment`` is a ``SummaryWriter`` (Lightning's
``TensorBoardLogger`` from either ``pytorch_lightning`` or ``lightning``).

TensorBoard colours and names a chart's series by *run* (the custom-scalars chart names a
series ``"tag (run)"`` and colours it by its run; the Scalars dashboard overlays runs in one
card per tag). So series meant to be told apart in one chart are one tag written into sibling
run directories, as Keras writes ``train`` and ``validation``: :class:`SeriesWriters` writes
``sparsity/flops_per_example`` into ``<run>/dense``, ``<run>/sparse``, ``<run>/realizable``
and ``<run>/limit``. The layout (:func:`layout`) is the same for every run, so a sweep's
runs merge into one chart per title.

Two helpers take plain inputs (a directory, a ``SummaryWriter``, a dict) and need no
Lightning: :func:`drop_events_after` removes our stale points from a run directory after a
resume, :func:`write_hparams` writes the one HParams entry TensorBoard will show.
"""

from __future__ import annotations

import contextlib
import logging
import numbers
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.protobuf.message import DecodeError
from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.summary.writer.record_writer import RecordWriter

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

    from lightning_sparsity.control.controller import HistoryPoint

__all__ = [
    "FLOPS_SERIES",
    "SeriesWriters",
    "drop_events_after",
    "flops_series",
    "is_tensorboard",
    "layout",
    "tensorboard_writers",
    "write_hparams",
]

_log = logging.getLogger(__name__)

#: How TensorBoard's writers name event files (its loaders take any name with "tfevents").
_EVENT_FILES = "events.out.tfevents.*"
#: A TFRecord's framing around its data: uint64 length, uint32 crc, ..., uint32 crc.
_FRAMING = 8 + 4 + 4


def is_tensorboard(logger: Any) -> bool:
    """Whether ``logger`` is Lightning's ``TensorBoardLogger`` (from either package)."""
    return type(logger).__name__ == "TensorBoardLogger"


def tensorboard_writers(loggers: Iterable[Any]) -> list[Any]:
    """The ``SummaryWriter`` of every TensorBoard logger among ``loggers``."""
    writers = []
    for logger in loggers:
        if not is_tensorboard(logger):
            continue
        writer = logger.experiment
        if hasattr(writer, "add_custom_scalars"):
            writers.append(writer)
    return writers


def layout(per: str = "example") -> dict[str, Any]:
    """The custom-scalars layout: one chart of the FLOP series, one of sparsity.

    The same for every run (with or without pruner or budget): TensorBoard merges the layouts
    of all runs under its log directory and shows a chart once per distinct content, so runs
    of one sweep that wrote different layouts showed the chart twice.

    Args:
        per: ``"example"`` or ``"batch"``, what the FLOPs are counted for.

    Returns:
        The layout for ``SummaryWriter.add_custom_scalars`` (tags as anchored regexes).
    """
    return {
        "sparsity": {
            f"FLOPs per {per}: dense, sparse, realizable, budget limit": [
                "Multiline",
                [f"^{flops_tag(per)}$"],
            ],
            "sparsity: pruned weights, schedule target, all parameters": [
                "Multiline",
                [
                    f"^sparsity/{name}$"
                    for name in ("pruned_sparsity", "target_sparsity", "param_sparsity")
                ],
            ],
        }
    }


# ---------------------------------------------------------------------- FLOP series

#: the sibling runs of the FLOP chart, in legend order
FLOPS_SERIES = ("dense", "sparse", "realizable", "limit")
#: budget counts whose limit is in FLOPs (drawn as the ``limit`` series)
_FLOP_COUNTS = ("sparse", "realizable", "effective")


def flops_tag(per: str) -> str:
    """The one tag of every FLOP series: ``sparsity/flops_per_example`` (or ``_per_batch``)."""
    return f"sparsity/flops_per_{per}"


def flops_series(point: HistoryPoint) -> dict[str, float]:
    """The FLOP series of one point: series name -> FLOPs (absent series left out).

    ``limit`` is what the budget allows at this point: the scheduled value with
    ``action="adjust"``, else the final limit; only for a budget on FLOPs.
    """
    series: dict[str, float] = {"dense": float(point.flops), "sparse": float(point.flops_sparse)}
    if point.flops_realizable is not None:
        series["realizable"] = float(point.flops_realizable)
    if point.budget_count in _FLOP_COUNTS:
        limit = point.budget_scheduled if point.budget_scheduled is not None else point.budget_limit
        if limit is not None:
            series["limit"] = float(limit)
    return series


class SeriesWriters:
    """One ``SummaryWriter`` per FLOP series, in sibling runs ``<run>/<series>``.

    Each series gets the FLOP tag (:func:`flops_tag`); ``dense``, ``realizable`` and ``limit``
    also ``sparsity/flops_ratio`` (their fraction of dense), so the run's own ratio card
    shows them beside it: the dense reference at 1.0 keeps the start of the curve inside the
    y range TensorBoard keeps when it ignores outliers (the 5th to 95th percentile of the
    card's values). With ``global_step``, the ratio also goes to ``ratio_at_global_step``
    at that step, for the run's copy of its ratio on that axis.
    """

    def __init__(self) -> None:
        self._writers: dict[tuple[str, str], SummaryWriter] = {}

    def write(
        self,
        run: SummaryWriter,
        point: HistoryPoint,
        *,
        global_step: int | None = None,
        ratio_at_global_step: str = "",
    ) -> None:
        """Write one point's series beside the run of ``run`` (a ``SummaryWriter``)."""
        series = flops_series(point)
        dense = series["dense"]
        for name, value in series.items():
            writer = self._writer(run.log_dir, name)
            writer.add_scalar(flops_tag(point.per), value, point.step)
            if name != "sparse":  # the run's own ratio is the sparse one
                ratio = value / dense if dense else 1.0
                writer.add_scalar("sparsity/flops_ratio", ratio, point.step)
                if global_step is not None:
                    writer.add_scalar(ratio_at_global_step, ratio, global_step)
            writer.flush()

    def _writer(self, log_dir: str, name: str) -> SummaryWriter:
        key = (str(log_dir), name)
        if key not in self._writers:
            from torch.utils.tensorboard import SummaryWriter

            self._writers[key] = SummaryWriter(os.path.join(log_dir, name))
        return self._writers[key]

    def directories(self, log_dir: str | os.PathLike[str]) -> list[Path]:
        """The sibling runs of ``log_dir`` that exist (written now or by a former process)."""
        return [Path(log_dir) / name for name in FLOPS_SERIES if (Path(log_dir) / name).is_dir()]

    def live_files(self) -> list[Path]:
        """The event files this object's writers have open."""
        return [Path(w._get_file_writer().event_writer._file_name) for w in self._writers.values()]

    def close(self) -> None:
        """Close every writer (a later point opens new ones)."""
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


# ---------------------------------------------------------------------- resumed runs


def drop_events_after(
    log_dir: str | os.PathLike[str],
    step: int,
    is_ours: Callable[[str], bool],
    *,
    skip: Iterable[str | os.PathLike[str]] = (),
) -> int:
    """Remove our points logged after ``step`` from the event files of a run directory.

    After a run is killed and resumed from a checkpoint, the dead process's event file still
    holds the points it logged after the checkpoint, and the resumed process logs them again:
    two points per step. A ``SummaryWriter(purge_step=...)`` does not fit here: TensorBoard's
    ``SessionLog.START`` purge drops *every* tag at steps >= the purge step, including
    Lightning's own metrics, which are indexed by global step rather than by epoch.

    This rewrites each event file (``events.out.tfevents.*``) directly in ``log_dir`` (not in
    its subdirectories), except those in ``skip``, removing every summary value whose tag
    satisfies ``is_ours`` in an event whose step is greater than ``step``. An event left
    with no value is dropped; every other record (the file-version event, other tags, graphs,
    hparams plugin summaries, the custom-scalars layout) is copied byte for byte. Only files
    that change are rewritten, each atomically (a temporary file in ``log_dir``, then
    ``os.replace`` onto the same name, permissions kept).

    A file is read with TensorBoard's own record reader, which stops at the first record it
    cannot read (a truncated or corrupt record, e.g. the tail a killed writer left behind);
    TensorBoard never shows anything past that point either. Such a file is only rewritten if
    one of its readable records changes, and then the unreadable rest is left out (logged as
    a warning); otherwise it is not touched at all.

    Note that a TensorBoard server that already loaded the stale points keeps showing them
    until it reloads the run from scratch (e.g. is restarted).

    Args:
        log_dir: the run directory (e.g. ``TensorBoardLogger.log_dir``); a local path.
        step: the last valid step; values at greater steps are removed.
        is_ours: whether a summary value's tag is ours. Tags are as stored: a text summary
            ``add_text("sparsity/layers", ...)`` is stored as ``"sparsity/layers/text_summary"``.
        skip: event files not to touch, e.g. the one a live ``SummaryWriter`` of this process
            has open (replacing it would orphan that writer's later writes).

    Returns:
        How many summary values were removed.
    """
    skipped = {Path(path).resolve() for path in skip}
    dropped = 0
    for path in sorted(Path(log_dir).glob(_EVENT_FILES)):
        if path.is_file() and path.resolve() not in skipped:
            dropped += _drop_in_file(path, step, is_ours)
    return dropped


def _drop_in_file(path: Path, step: int, is_ours: Callable[[str], bool]) -> int:
    """Rewrite one event file without our values after ``step``; how many were removed."""
    sizes: list[int] = []  # the data length of each readable record, in order
    changed: dict[int, bytes | None] = {}  # record index -> new data, or None to drop it
    dropped = 0
    for index, record in enumerate(RawEventFileLoader(str(path)).Load()):
        sizes.append(len(record))
        try:
            event = event_pb2.Event.FromString(record)
        except DecodeError:  # a record that is not an Event: not ours to judge, keep it
            continue
        if event.step <= step or not event.HasField("summary"):
            continue
        kept = [value for value in event.summary.value if not is_ours(value.tag)]
        removed = len(event.summary.value) - len(kept)
        if not removed:
            continue
        dropped += removed
        if kept:
            new = event_pb2.Event()
            new.CopyFrom(event)
            new.summary.ClearField("value")
            new.summary.value.extend(kept)
            changed[index] = new.SerializeToString()
        else:
            changed[index] = None
    if not changed:
        return 0
    readable = sum(sizes) + _FRAMING * len(sizes)
    unreadable = path.stat().st_size - readable
    if unreadable > 0:
        _log.warning(
            "%s: left out %d unreadable trailing bytes (a truncated or corrupt record)",
            path,
            unreadable,
        )
    _rewrite(path, sizes, changed)
    return dropped


def _rewrite(path: Path, sizes: list[int], changed: dict[int, bytes | None]) -> None:
    """Copy ``path``'s records to a temporary file with ``changed`` applied, then replace it."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".lightning_sparsity-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as target, open(path, "rb") as source:
            records = RecordWriter(target)
            for index, size in enumerate(sizes):
                raw = source.read(size + _FRAMING)
                if len(raw) != size + _FRAMING or struct.unpack("<Q", raw[:8])[0] != size:
                    raise RuntimeError(f"{path} changed while it was being rewritten")
                if index not in changed:
                    target.write(raw)  # the record exactly as it was
                elif (data := changed[index]) is not None:
                    records.write(data)
            target.flush()
            os.fsync(target.fileno())
        shutil.copymode(path, temp)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


# ---------------------------------------------------------------------- hparams


def write_hparams(
    writer: SummaryWriter,
    hparams: Mapping[str, Any],
    metric_tags: Sequence[str],
    *,
    varying: Sequence[str] = (),
    experiment: bool = True,
) -> None:
    """Write one HParams entry (experiment, session start, session end) into a run.

    TensorBoard keeps only the *first* ``SummaryMetadata`` of each tag in a run, so the
    HParams dashboard shows the first ``_hparams_/*`` summaries written to the run directory
    and ignores any later ones (Lightning's ``log_hyperparams`` included). Call this before
    anything else writes hparams into the run, with every hparam that should be shown.

    Unlike ``SummaryWriter.add_hparams``, this writes into ``writer``'s own run directory (not
    a new subdirectory), so the metrics logged there as scalars are the session's metrics.

    What the dashboard shows first: its server orders the hparams by ``differs`` (set here
    for ``varying``), then by name; its page ticks the first five hparams and the first five
    metrics. So the settings an experiment is about go in ``varying`` and its metric first
    in ``metric_tags``.

    Args:
        writer: a ``torch.utils.tensorboard.SummaryWriter`` (e.g. a ``TensorBoardLogger``'s
            ``experiment``).
        hparams: the hyperparameters. Nested mappings are flattened with ``"/"``; a name with
            a part starting with ``_`` (LightningCLI's ``_class_path``, ``_instantiator``) is
            left out. ``bool`` is kept as a boolean, other real numbers (``int``, ``float``,
            NumPy scalars) as numbers, ``str`` as strings, a tuple or list as the string of
            a list (``(16, 32)`` and ``[16, 32]`` are both ``"[16, 32]"``), and anything else
            (``None`` included) as ``str(value)``.
        metric_tags: the scalar tags declared as the experiment's metrics, in this order; log
            their values with ``writer.add_scalar`` (any step, the last value is shown).
        varying: names of ``hparams`` that differ between the runs compared (a sweep's
            budget, seed and label): listed first and marked ``differs``.
        experiment: write the experiment (columns, their order, the metrics); ``False``
            writes the session only, for a run whose columns another run of the same
            TensorBoard directory declares (TensorBoard takes the experiment of any one run
            that has one).
    """
    start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    flat = {
        name: value
        for name, value in _flatten(hparams).items()
        if not any(part.startswith("_") for part in name.split("/"))
    }
    first = [name for name in dict.fromkeys(varying) if name in flat]
    infos = []
    for name in [*first, *(name for name in flat if name not in first)]:
        value = flat[name]
        if isinstance(value, bool):
            start.hparams[name].bool_value = value
            kind = api_pb2.DATA_TYPE_BOOL
        elif isinstance(value, numbers.Real):
            start.hparams[name].number_value = float(value)
            kind = api_pb2.DATA_TYPE_FLOAT64
        else:
            start.hparams[name].string_value = _as_string(value)
            kind = api_pb2.DATA_TYPE_STRING
        infos.append(api_pb2.HParamInfo(name=name, type=kind, differs=name in first))
    declared = api_pb2.Experiment(
        hparam_infos=infos,
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in metric_tags],
    )
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS)
    file_writer = writer._get_file_writer()
    if experiment:
        file_writer.add_summary(
            _hparams_summary(hparams_metadata.EXPERIMENT_TAG, experiment=declared)
        )
    file_writer.add_summary(
        _hparams_summary(hparams_metadata.SESSION_START_INFO_TAG, session_start_info=start)
    )
    file_writer.add_summary(
        _hparams_summary(hparams_metadata.SESSION_END_INFO_TAG, session_end_info=end)
    )
    writer.flush()


def _as_string(value: Any) -> str:
    """One string per value whatever its container: a tuple is written as the list it equals."""
    if isinstance(value, str):
        return value
    if isinstance(value, (tuple, list)):
        return str([_plain(v) for v in value])
    return str(value)


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def _hparams_summary(tag: str, **content: Any) -> Any:
    """A ``Summary`` with one value: ``tag`` and the hparams plugin's ``content`` as metadata."""
    data = plugin_data_pb2.HParamsPluginData(**content)
    metadata = hparams_metadata.create_summary_metadata(data)
    return summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, metadata=metadata)])


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``values`` with nested mappings flattened into ``"outer/inner"`` keys."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}/"))
        else:
            flat[name] = value
    return flat
