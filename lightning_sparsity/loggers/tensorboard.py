"""TensorBoard extras: a custom-scalars layout, the per-layer text table, hparams.

Works on any logger whose ``experiment`` is a ``SummaryWriter`` (Lightning's
``TensorBoardLogger`` from either ``pytorch_lightning`` or ``lightning``).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

__all__ = ["hparams_of", "is_tensorboard", "layout", "tensorboard_writers"]


def is_tensorboard(logger: Any) -> bool:
    """Whether ``logger`` is Lightning's ``TensorBoardLogger`` (from either package)."""
    return type(logger).__name__ == "TensorBoardLogger"


def tensorboard_writers(loggers: Iterable[Any]) -> list[Any]:
    """The ``SummaryWriter`` of every TensorBoard logger among ``loggers``."""
    writers = []
    for logger in loggers:
        if not is_tensorboard(logger):
            continue
        writer = logger.experiment
        if hasattr(writer, "add_custom_scalars"):
            writers.append(writer)
    return writers


def layout(flops_tags: list[str], sparsity_tags: list[str]) -> dict[str, Any]:
    """The custom-scalars layout: one chart of FLOPs (dense, sparse, budget), one of sparsity.

    Args:
        flops_tags: scalar tags drawn together on the FLOPs chart.
        sparsity_tags: scalar tags drawn together on the sparsity chart.

    Returns:
        The layout for ``SummaryWriter.add_custom_scalars``.
    """
    return {
        "sparsity": {
            "FLOPs: dense vs sparse vs budget": ["Multiline", flops_tags],
            "sparsity: pruned weights vs schedule": ["Multiline", sparsity_tags],
        }
    }


def hparams_of(obj: Any, prefix: str) -> dict[str, Any]:
    """The constructor arguments of a config object (pruner, schedule, budget) for HParams.

    Scalars are kept, nested config objects (a pruner's schedule) are flattened with their
    own prefix, anything else is left out.
    """
    if obj is None:
        return {}
    values: dict[str, Any] = {f"{prefix}/type": type(obj).__name__}
    for key in inspect.signature(type(obj)).parameters:
        value = getattr(obj, key, None)
        if isinstance(value, (bool, int, float, str)):
            values[f"{prefix}/{key}"] = value
        elif hasattr(value, "__dict__") and not (
            inspect.isroutine(value) or inspect.isclass(value) or inspect.ismodule(value)
        ):
            values.update(hparams_of(value, f"{prefix}/{key}"))
    return values
