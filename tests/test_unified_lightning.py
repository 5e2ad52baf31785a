"""The callback under the unified ``lightning`` package's Trainer."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as L
import pytest
from lightning.pytorch.loggers import TensorBoardLogger

import lightning_sparsity as ls
from lightning_sparsity.lightning import SparsityCallback
from tests.fits import TinyMixin


class Tiny(TinyMixin, L.LightningModule):
    """The tiny MLP of tests.fits as a ``lightning.pytorch`` module."""


@pytest.mark.filterwarnings("ignore:.*does not have many workers")
def test_lightning_pytorch_trainer_takes_the_unified_callback(tmp_path: Path) -> None:
    pruner = ls.MagnitudePruner(schedule=ls.schedules.Linear(0.5, start_epoch=0, end_epoch=1))
    callback = SparsityCallback(pruner)
    assert isinstance(callback, L.Callback)
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = L.Trainer(
        max_epochs=2, logger=logger, callbacks=[callback], enable_progress_bar=False
    )
    trainer.fit(Tiny())
    # dense: 2 * (16*32 + 32*4) = 1,280; Linear to 0.5 after 1 epoch halves the weights
    assert [point.flops for point in callback.history] == [1_280] * 3
    assert [point.flops_sparse for point in callback.history] == [1_280, 640, 640]
    history = json.loads((Path(logger.log_dir) / "sparsity_history.json").read_text())
    assert history == [point.to_dict() for point in callback.history]
    with pytest.raises(TypeError, match="`pruning` must be a MagnitudePruner"):
        SparsityCallback(pruning="cubic")  # type: ignore[arg-type]
