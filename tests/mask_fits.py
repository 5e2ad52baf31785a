"""Tiny trainable modules and brute-force references for the tests of masks in real fits
(gradient masking, weight averaging, dense writes into pruned weights)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_sparsity as ls
from lightning_sparsity.pruning import masks
from tests.fits import quiet_trainer

SPARSITY = 0.8
WEIGHTS = ("fc1.weight", "fc2.weight")

OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
    "adam": lambda params: torch.optim.Adam(params, lr=1e-2),
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=1e-2),
    "adafactor": lambda params: torch.optim.Adafactor(params, lr=1e-2),
}


class MLP(pl.LightningModule):
    """fc1 16→32 (→ BatchNorm1d with ``norm``), ReLU, fc2 32→4; 48 examples in batches of 8.

    ``manual``: manual optimization (backward, clip by norm to ``clip``, step).
    """

    def __init__(
        self, optimizer: str = "adam", *, norm: bool = False, manual: bool = False, clip=None
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.norm = nn.BatchNorm1d(32) if norm else nn.Identity()
        self.fc2 = nn.Linear(32, 4)
        self.example_input_array = torch.zeros(1, 16)
        self.optimizer_name = optimizer
        self.automatic_optimization = not manual
        self.clip = clip

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.relu(self.norm(self.fc1(x))))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        if self.automatic_optimization:
            return loss
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(loss)
        if self.clip is not None:
            self.clip_gradients(opt, gradient_clip_val=self.clip, gradient_clip_algorithm="norm")
        opt.step()
        return None

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return OPTIMIZERS[self.optimizer_name](self.parameters())

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(1)
        data = TensorDataset(torch.randn(48, 16, generator=g), torch.arange(48) % 4)
        return DataLoader(data, batch_size=8)


class HandMasked(MLP):
    """The reference: fixed masks written into the weights at train start, and the gradients
    multiplied by them after every backward (no library involved)."""

    def __init__(self, keeps: dict[str, Tensor], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keeps = keeps

    def on_train_start(self) -> None:
        params = dict(self.named_parameters())
        with torch.no_grad():
            for name, keep in self.keeps.items():
                params[name].mul_(keep)

    def on_after_backward(self) -> None:
        params = dict(self.named_parameters())
        for name, keep in self.keeps.items():
            params[name].grad.mul_(keep)


class BeforePruning(pl.Callback):
    """Brute-force masks from the weights just before the prune at the end of epoch 1 (listed
    before the sparsity callback, so its epoch-end hook runs first)."""

    def __init__(self) -> None:
        self.keeps: dict[str, torch.Tensor] = {}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 0:
            self.keeps = reference_keeps(pl_module)


def make(cls: type[MLP], *args: Any, seed: int = 0, **kwargs: Any) -> MLP:
    torch.manual_seed(seed)
    return cls(*args, **kwargs)


def top_k_keep(weight: Tensor, sparsity: float = SPARSITY) -> Tensor:
    """Brute force: keep the ``numel - round(sparsity * numel)`` largest magnitudes."""
    flat = weight.detach().abs().flatten()
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    kept = flat.numel() - round(sparsity * flat.numel())
    keep[torch.sort(flat, descending=True).indices[:kept]] = True
    return keep.view_as(weight)


def reference_keeps(model: nn.Module) -> dict[str, Tensor]:
    """The masks uniform magnitude pruning to SPARSITY gives the model's weights now."""
    params = dict(model.named_parameters())
    return {name: top_k_keep(params[name]) for name in WEIGHTS}


def pruner(storage: str = "inplace", start_epoch: int = 0) -> ls.MagnitudePruner:
    """Uniform pruning to SPARSITY after ``start_epoch`` epochs, no floors (plain top-k)."""
    return ls.MagnitudePruner(
        schedule=ls.schedules.Constant(SPARSITY, start_epoch=start_epoch),
        allocation="uniform",
        min_density=0.0,
        mask_storage=storage,
    )


def callback(storage: str = "inplace", start_epoch: int = 0) -> ls.SparsityCallback:
    return ls.SparsityCallback(pruner(storage, start_epoch), write_files=False, verbose=False)


def trainer(tmp_path: Path, epochs: int, callbacks: list, **kwargs: Any) -> pl.Trainer:
    return quiet_trainer(tmp_path, callbacks, epochs, deterministic=True, **kwargs)


def modules(model: nn.Module, names=WEIGHTS) -> dict[str, tuple[nn.Module, str]]:
    found = masks.locate(model, names)
    assert all(v is not None for v in found.values())
    return found  # type: ignore[return-value]


def effective(model: nn.Module, names=WEIGHTS) -> dict[str, Tensor]:
    """The weights the model computes with (pruned entries zero), by name."""
    return {n: masks.effective(m, p).clone() for n, (m, p) in modules(model, names).items()}


def trained(model: nn.Module, names=WEIGHTS) -> dict[str, Tensor]:
    """The tensors the optimizer updates (``weight_orig`` under ``"prune"``), by name."""
    return {n: masks.trained(m, p) for n, (m, p) in modules(model, names).items()}


def hand_params_nonzero(model: nn.Module) -> int:
    """Brute force: nonzero entries of every parameter the model computes with."""
    total = 0
    for module in model.modules():
        for key, value in module._parameters.items():
            name = key.removesuffix("_orig")
            if masks.is_masked(module, name):
                value = masks.effective(module, name)
            total += int((value != 0).sum())
    return total


def hand_flops_sparse(model: nn.Module) -> int:
    """Brute force for MLP: 2 FLOPs per nonzero weight of fc1 and fc2 per example (BN and
    ReLU count nothing here: the meter counts only multiplications by weights)."""
    weights = effective(model)
    return sum(2 * int((w != 0).sum()) for w in weights.values())


def elementwise_state_on_pruned(
    optimizer: torch.optim.Optimizer, model: nn.Module, keeps: dict[str, Tensor]
) -> dict[str, int]:
    """Per ``"weight/state key"``: nonzero optimizer-state entries on pruned entries
    (state tensors of the parameter's shape only: Adafactor's row/column factors are not
    elementwise)."""
    out: dict[str, int] = {}
    for name, tensor in trained(model).items():
        for key, value in optimizer.state.get(tensor, {}).items():
            if isinstance(value, Tensor) and value.shape == tensor.shape:
                out[f"{name}/{key}"] = int((value[~keeps[name]] != 0).sum())
    return out
