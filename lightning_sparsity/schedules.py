"""Pruning schedules, importable as ``lightning_sparsity.schedules`` (for YAML class paths).

The classes live in :mod:`lightning_sparsity.pruning.schedules`.
"""

from lightning_sparsity.pruning.schedules import (
    Constant,
    Cubic,
    Exponential,
    FromCallable,
    Linear,
    LotteryTicket,
    Schedule,
    Step,
)

__all__ = [
    "Constant",
    "Cubic",
    "Exponential",
    "FromCallable",
    "Linear",
    "LotteryTicket",
    "Schedule",
    "Step",
]
