"""lightning_sparsity: exact sparse FLOPs, TensorBoard curves and FLOP budgets for pruning.

Convention used everywhere in this package: 1 MAC (multiply-accumulate) = 2 FLOPs, as in
``torch.utils.flop_counter`` and Lightning's ``measure_flops``.
"""

from lightning_sparsity import schedules
from lightning_sparsity.budget import BudgetDecision, FlopBudget
from lightning_sparsity.callback import SparsityCallback
from lightning_sparsity.counting import (
    CostModel,
    LayerStats,
    MeasureError,
    SparsityMeter,
    SparsityReport,
    measure,
)
from lightning_sparsity.oneshot import prune_to_flops
from lightning_sparsity.pruning import MagnitudePruner

__version__ = "0.1.0"

__all__ = [
    "BudgetDecision",
    "CostModel",
    "FlopBudget",
    "LayerStats",
    "MagnitudePruner",
    "MeasureError",
    "SparsityCallback",
    "SparsityMeter",
    "SparsityReport",
    "__version__",
    "measure",
    "prune_to_flops",
    "schedules",
]
