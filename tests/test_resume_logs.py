"""A resumed fit continues the run it resumes: one log directory, one run in TensorBoard.

Read back with TensorBoard's own ``EventAccumulator``, as TensorBoard shows the runs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import lightning_sparsity as ls
from tests.fits import Wide, quiet_trainer

pytestmark = pytest.mark.filterwarnings("ignore:.*does not have many workers")


def steps(log_dir: Path, tag: str = "sparsity/flops_ratio") -> list[int]:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return sorted(e.step for e in acc.Scalars(tag))


def fit(tmp_path: Path, epochs: int, version: int | str | None = None, ckpt: str | None = None):
    """A pruned fit of Wide logged to ``tmp_path/run/version_N``, checkpointed every epoch."""
    schedule = ls.schedules.Linear(0.8, start_epoch=0, end_epoch=4)
    callback = ls.SparsityCallback(ls.MagnitudePruner(schedule=schedule), per_layer=False)
    logger = TensorBoardLogger(tmp_path, name="run", version=version)
    checkpoint = ModelCheckpoint(save_top_k=-1)  # in the logger's version/checkpoints
    trainer = quiet_trainer(
        tmp_path, [callback, checkpoint], epochs, logger=logger, enable_checkpointing=True
    )
    trainer.fit(Wide(), ckpt_path=ckpt)
    return trainer, callback


def test_resume_version_continues_the_run_in_its_directory(tmp_path: Path) -> None:
    first, _ = fit(tmp_path, 2)
    ckpt = str(Path(first.log_dir) / "checkpoints" / "epoch=1-step=4.ckpt")
    assert ls.resume_version(ckpt) == 0
    # before: the resumed fit wrote version_1: TensorBoard showed two runs (0-2 and 3-4)
    second, callback = fit(tmp_path, 4, version=ls.resume_version(ckpt), ckpt=ckpt)
    run = tmp_path / "run" / "version_0"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["version_0"]
    assert second.log_dir == str(run)
    assert steps(run) == [0, 1, 2, 3, 4]
    history = json.loads((run / "sparsity_history.json").read_text())
    assert [row["epoch"] for row in history] == [0, 1, 2, 3, 4]
    assert (run / "sparsity_report.md").is_file()
    assert history[-1]["params_nonzero"] == callback.history[-1].params_nonzero


@pytest.mark.filterwarnings("ignore:The dirpath has changed")
def test_resume_into_a_new_version_says_how_to_continue_the_run(tmp_path: Path) -> None:
    first, _ = fit(tmp_path, 1)
    ckpt = str(Path(first.log_dir) / "checkpoints" / "epoch=0-step=2.ckpt")
    with pytest.warns(UserWarning, match=r"logs as a new one \(TensorBoardLogger version 0 -> 1\)"):
        fit(tmp_path, 2, ckpt=ckpt)
    # another logger root (save_dir, name) is the user's choice: nothing to say
    schedule = ls.schedules.Linear(0.8, start_epoch=0, end_epoch=4)
    callback = ls.SparsityCallback(ls.MagnitudePruner(schedule=schedule), per_layer=False)
    elsewhere = CSVLogger(tmp_path, name="elsewhere")
    with pytest.warns() as warned:
        quiet_trainer(tmp_path, [callback], 2, logger=elsewhere).fit(Wide(), ckpt_path=ckpt)
    assert not [w for w in warned if "logs as a new one" in str(w.message)]


def test_resuming_a_finished_run_says_so_and_adds_no_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, _ = fit(tmp_path, 2)
    ckpt = str(Path(first.log_dir) / "checkpoints" / "epoch=1-step=4.ckpt")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pytorch_lightning"):  # the demo quiets it
        again, _ = fit(tmp_path, 2, version=ls.resume_version(ckpt), ckpt=ckpt)
    said = [r.getMessage() for r in caplog.records if "lightning_sparsity" in r.getMessage()]
    assert said == [
        "lightning_sparsity: the run is finished (max_epochs=2 reached at epoch 2): nothing to"
        f" train; its logs are in {first.log_dir}; raise max_epochs to train on"
    ]
    assert again.global_step == first.global_step
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["version_0"]
    assert steps(tmp_path / "run" / "version_0") == [0, 1, 2]


def test_resume_version_without_a_checkpoint_or_its_state(tmp_path: Path) -> None:
    assert ls.resume_version(None) is None  # a new fit: the loggers' default
    first, _ = fit(tmp_path, 1, version="named")
    ckpt = Path(first.log_dir) / "checkpoints" / "epoch=0-step=2.ckpt"
    assert ls.resume_version(ckpt) == "named"
    assert ls.resume_version(ckpt, logger=1) is None  # the fit had one logger
    state = torch.load(ckpt, weights_only=True)
    del state["callbacks"]  # a checkpoint of a fit without SparsityCallback
    torch.save(state, tmp_path / "plain.ckpt")
    assert ls.resume_version(tmp_path / "plain.ckpt") is None
