"""The callback under the unified ``lightning`` package's Trainer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_sparsity as ls
from lightning_sparsity.lightning import SparsityCallback


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 4)
        self.example_input_array = torch.zeros(1, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(0)
        return DataLoader(TensorDataset(torch.randn(32, 16, generator=g), torch.arange(32) % 4))


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
