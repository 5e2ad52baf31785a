"""``prune_to_flops``: prune a model to a FLOP target in one shot, without training."""

from __future__ import annotations

from typing import Any

from torch import nn

from lightning_sparsity.control.budget import FlopBudget
from lightning_sparsity.counting import SparsityMeter, SparsityReport
from lightning_sparsity.pruning import MagnitudePruner

__all__ = ["prune_to_flops"]


def prune_to_flops(
    model: nn.Module,
    example_input: Any,
    target: float | int | str,
    *,
    pruner: MagnitudePruner | None = None,
    batch_size: int | None = None,
) -> SparsityReport:
    """Prune ``model`` so its sparse FLOPs per example land on ``target``.

    One global magnitude threshold, weighted by each weight's FLOP cost (from one trace of
    the model on ``example_input``): the smallest weights go first until the sparse FLOPs
    reach the target; then the largest of those weights whose cost fits in what is left are
    kept back: the result lands at or below the target, usually by less than the cheapest
    pruned weight's FLOP cost and never by more than the costliest's. Every pruned layer
    keeps at least the pruner's floor (``min_density``, ``max_sparsity``), and a target
    below what the floors leave is refused. The masks are the pruner's (``pruner.
    make_permanent(model)`` drops them; the zeros stay).

    Args:
        model: the model, pruned in place.
        example_input: a Tensor, a tuple/list of positional arguments, or a dict of kwargs.
        target: sparse FLOPs per example (``1.2e9`` or ``"1.2G"``) or ``"N%"`` of dense.
        pruner: which weights and how (structured, include/exclude, ...); default: the
            weights of every conv and linear layer.
        batch_size: the example input's batch size (default: dim 0 of its first tensor).

    Returns:
        The report after pruning.

    Raises:
        TypeError: if ``pruner`` is not a ``MagnitudePruner``.
        ValueError: for a bad target, one above the dense FLOPs, one below what pruning
            can reach (the FLOPs of weight-free ops, of weights that are not pruned and of
            the pruned ones' floors), a pruner that chooses no weight, or a model on the meta
            device.
    """
    budget = FlopBudget(target)  # a bad target fails before any work
    if pruner is not None and not isinstance(pruner, MagnitudePruner):
        raise TypeError(f"`pruner` must be a MagnitudePruner or None, got {type(pruner).__name__}")
    if any(p.is_meta for p in model.parameters()):
        raise ValueError("prune_to_flops needs real weights to rank; the model is on meta")
    pruner = pruner if pruner is not None else MagnitudePruner()
    meter = SparsityMeter(model, example_input, batch_size=batch_size)
    cost = meter.cost_model()
    pruner.check(model)
    limit = budget.start(meter.measure(), cost, pruner.floor_densities(model))
    pruner.apply_flop_target(model, limit, cost.flops_per_nonzero, cost.fixed_flops, not_above=True)
    report = meter.measure()
    pruner.warn_emptied(report.emptied(pruner.target_names(model)))
    return report
