"""Small real LightningModules and quiet Trainers shared by the fit tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Wide(pl.LightningModule):
    """Layers whose FLOPs per weight differ widely (per example, 2 FLOPs per MAC).

    conv1 3→16 3×3 on 16×16: 432 weights × 2·256 = 221,184 FLOPs (512 per weight)
    conv2 16→16 3×3 stride 2 → 8×8: 2,304 weights × 2·64 = 294,912 (128 per weight)
    fc1 1024→64: 65,536 weights × 2 = 131,072 (2 per weight); fc2 64→10: 640 × 2 = 1,280
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.fc1 = nn.Linear(1024, 64)
        self.fc2 = nn.Linear(64, 10)
        self.example_input_array = torch.zeros(1, 3, 16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc2(F.relu(self.fc1(x.flatten(1))))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(64, 3, 16, 16, generator=g), torch.arange(64) % 10)
        return DataLoader(data, batch_size=32)

    def val_dataloader(self) -> DataLoader:
        return self.train_dataloader()


WIDE_DENSE = 221_184 + 294_912 + 131_072 + 1_280  # 648,448


def quiet_trainer(tmp_path: Path, callbacks: list, epochs: int, **kwargs: Any) -> pl.Trainer:
    options: dict[str, Any] = {
        "default_root_dir": tmp_path,
        "max_epochs": epochs,
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        **kwargs,
    }
    return pl.Trainer(callbacks=callbacks, **options)


def two_rank_trainer(root: Path, callbacks: list, epochs: int, **kwargs: Any) -> pl.Trainer:
    """:func:`quiet_trainer` for 2 CPU processes (gloo), under DDP unless ``strategy`` says."""
    return quiet_trainer(root, callbacks, epochs, **{"strategy": "ddp", "devices": 2, **kwargs})


def stepped_callback(*budget: Any, **options: Any) -> Any:
    """A quiet SparsityCallback pruning uniformly to 30% after epoch 1 and 60% after epoch 2.

    Uniform: each layer loses round(s · numel); in TinyMLP 30% leaves fc1 358 and fc2 90 live
    weights, 60% leaves 205 and 51. ``budget``: a FlopBudget; ``options`` override the rest.
    """
    import lightning_sparsity as ls

    schedule = ls.schedules.Step(milestones=[1, 2], sparsities=[0.3, 0.6])
    pruner = ls.MagnitudePruner(schedule=schedule, allocation="uniform")
    quiet = {"write_files": False, "verbose": False}
    return ls.SparsityCallback(pruner, *budget, **{**quiet, **options})


class TinyMixin:
    """fc1 16→32 and fc2 32→4: 2 · (512 + 128) = 1,280 dense FLOPs per example; lr 0.

    Mixed into a ``LightningModule`` of either Lightning package.
    """

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
        return torch.optim.SGD(self.parameters(), lr=0.0)  # type: ignore[attr-defined]

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(32, 16, generator=g), torch.arange(32) % 4)
        return DataLoader(data, batch_size=16)


class TinyMLP(TinyMixin, pl.LightningModule):
    """The model of ``tests/data/v1_tiny_mlp.ckpt`` (see make_v1_checkpoint.py there)."""


class Learning(TinyMLP):
    """TinyMLP, seeded, that learns (SGD 0.1, momentum 0.9): what gradient scores rank by."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        super().__init__()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


ROOT = Path(__file__).resolve().parents[1]


def run_ranks(script: str, tmp_path: Path, *args: str, timeout: int) -> list[dict]:
    """Run ``tests/scripts/<script>`` (it launches 2 ranks) in ``tmp_path``; each rank's
    ``rank<r>.json``. Lightning forks no workers (``PL_DISABLE_FORK``)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PL_DISABLE_FORK": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "scripts" / script), str(tmp_path), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]


def run_killed(script: str, *args: str) -> None:
    """Run ``tests/scripts/<script>`` (a fit that SIGKILLs itself); fail if it was not killed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "scripts" / script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == -9, done.stderr[-3000:]  # SIGKILL


def two_four_fit_parts(tmp_path: Path, include: list[str]) -> tuple[Any, Any]:
    """A SparsityCallback ramping ``include`` to 2:4 over 2 epochs (Cubic to 0.5), and a
    ModelCheckpoint saving ``last.ckpt`` in ``tmp_path``: the parts of a fit to resume."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    import lightning_sparsity as ls

    schedule = ls.schedules.Cubic(0.5, start_epoch=0, end_epoch=2)
    pruner = ls.MagnitudePruner(schedule=schedule, pattern="2:4", include=include)
    callback = ls.SparsityCallback(pruner, write_files=False)
    return callback, ModelCheckpoint(dirpath=tmp_path, save_last=True)
