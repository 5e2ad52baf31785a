"""What to do at a point of the curve: budget, guard, controller, one-shot (Lightning-free).

- :mod:`.budget`: :class:`FlopBudget` (a FLOP or parameter limit, a deadline, an action);
- :mod:`.guard`: :class:`MetricGuard` (pause or undo pruning when a metric drops);
- :mod:`.controller`: :class:`SparsityController`, one point at a time
  (:class:`HistoryPoint`); the callback only calls it;
- :mod:`.oneshot`: :func:`prune_to_flops`, no training;
- :mod:`.rewind`: :class:`~.rewind.Rewind`, the copy of epoch ``k`` written back after each
  prune (lottery tickets).
"""

from lightning_sparsity.control.budget import BudgetDecision, BudgetError, FlopBudget, parse_flops
from lightning_sparsity.control.controller import HistoryPoint, Outcome, SparsityController
from lightning_sparsity.control.guard import MetricGuard
from lightning_sparsity.control.oneshot import prune_to_flops

__all__ = [
    "BudgetDecision",
    "BudgetError",
    "FlopBudget",
    "HistoryPoint",
    "MetricGuard",
    "Outcome",
    "SparsityController",
    "parse_flops",
    "prune_to_flops",
]
