"""lightning_sparsity: exact sparse FLOPs, TensorBoard curves and FLOP budgets for pruning.

Convention used everywhere in this package: 1 MAC (multiply-accumulate) = 2 FLOPs, as in
``torch.utils.flop_counter`` and Lightning's ``measure_flops``. Time is counted in completed
epochs ``t`` (``0`` = before training) in schedules, budgets, logged steps and files.

Counting, pruning, budgets, the guard and the controller import no Lightning package;
``SparsityCallback`` (loaded on first use) works with ``pytorch_lightning`` or, when only
that is installed, the unified ``lightning`` package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning_sparsity import _moved, schedules
from lightning_sparsity.compact import compact
from lightning_sparsity.control.budget import BudgetDecision, BudgetError, FlopBudget
from lightning_sparsity.control.controller import HistoryPoint, SparsityController
from lightning_sparsity.control.guard import MetricGuard
from lightning_sparsity.control.oneshot import prune_to_flops
from lightning_sparsity.counting import (
    CostModel,
    LayerStats,
    MeasureError,
    SparsityMeter,
    SparsityReport,
    measure,
)
from lightning_sparsity.loggers.resume import resume_version
from lightning_sparsity.pruning import SET, MagnitudePruner, RigL
from lightning_sparsity.speed import SpeedReport, speed
from lightning_sparsity.sweeps import sweep

if TYPE_CHECKING:
    from lightning_sparsity.callback import SparsityCallback

_moved.install()  # lightning_sparsity.budget, .guard, .controller, .oneshot, .sweep_ray

__version__ = "0.1.0"

__all__ = [
    "SET",
    "BudgetDecision",
    "BudgetError",
    "CostModel",
    "FlopBudget",
    "HistoryPoint",
    "LayerStats",
    "MagnitudePruner",
    "MeasureError",
    "MetricGuard",
    "RigL",
    "SparsityCallback",
    "SparsityController",
    "SparsityMeter",
    "SparsityReport",
    "SpeedReport",
    "__version__",
    "compact",
    "measure",
    "prune_to_flops",
    "resume_version",
    "schedules",
    "speed",
    "sweep",
]


def __getattr__(name: str) -> Any:
    """``SparsityCallback`` imports Lightning, so only when it is asked for."""
    if name == "SparsityCallback":
        from lightning_sparsity.callback import SparsityCallback

        return SparsityCallback
    raise AttributeError(f"module 'lightning_sparsity' has no attribute {name!r}")
