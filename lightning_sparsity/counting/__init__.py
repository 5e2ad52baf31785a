"""Counting: per-op formulas, the dispatch-mode trace, effective parameters, the report."""

from lightning_sparsity.counting.meter import CostModel, SparsityMeter, measure
from lightning_sparsity.counting.report import LayerStats, SparsityReport, StepFlops, TrainingCost
from lightning_sparsity.counting.trace import MeasureError

__all__ = [
    "CostModel",
    "LayerStats",
    "MeasureError",
    "SparsityMeter",
    "SparsityReport",
    "StepFlops",
    "TrainingCost",
    "measure",
]
