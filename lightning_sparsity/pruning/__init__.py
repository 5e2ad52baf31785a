"""Magnitude pruning: schedules, the exact global threshold, and the pruner.

Modules: ``pruner`` (MagnitudePruner), ``scores`` (what it ranks by), ``dynamic`` (RigL and
SET: dynamic sparse training), ``select`` (exact global magnitude cuts), ``masks``
(how a mask is stored on a module), ``allocation`` (a sparsity spread over layers), ``rows``
(structured row scores), ``flops`` (pruning to a FLOP target), ``schedules``, ``chunks``
(the slice size of every pass over the weights).
"""

from lightning_sparsity.pruning import schedules, select
from lightning_sparsity.pruning.dynamic import SET, RigL
from lightning_sparsity.pruning.pruner import DEFAULT_INCLUDE_TYPES, MagnitudePruner, erk_densities
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
from lightning_sparsity.pruning.select import (
    Cut,
    kth_smallest_abs,
    masks_for_count,
    masks_for_cut,
    masks_for_weighted_target,
    threshold_for_count,
    threshold_for_weighted_target,
)

__all__ = [
    "DEFAULT_INCLUDE_TYPES",
    "SET",
    "Constant",
    "Cubic",
    "Cut",
    "Exponential",
    "FromCallable",
    "Linear",
    "LotteryTicket",
    "MagnitudePruner",
    "RigL",
    "Schedule",
    "Step",
    "erk_densities",
    "kth_smallest_abs",
    "masks_for_count",
    "masks_for_cut",
    "masks_for_weighted_target",
    "schedules",
    "select",
    "threshold_for_count",
    "threshold_for_weighted_target",
]
