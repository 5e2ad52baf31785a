"""TensorBoard extras: a custom-scalars layout, the per-layer text table, hparams.

Works on any logger whose ``experiment`` is a ``SummaryWriter`` (Lightning's
``TensorBoardLogger`` from either ``pytorch_lightning`` or ``lightning``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["layout", "tensorboard_writers"]


def tensorboard_writers(loggers: Iterable[Any]) -> list[Any]:
    """The ``SummaryWriter`` of every TensorBoard logger among ``loggers``."""
    writers = []
    for logger in loggers:
        if type(logger).__name__ != "TensorBoardLogger":
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
            "sparsity: parameters vs schedule": ["Multiline", sparsity_tags],
        }
    }


def hparams_of(obj: Any, prefix: str) -> dict[str, Any]:
    """Plain scalar attributes of a config object (a schedule, a budget) for HParams."""
    if obj is None:
        return {}
    values: dict[str, Any] = {f"{prefix}/type": type(obj).__name__}
    items: Mapping[str, Any] = vars(obj) if hasattr(obj, "__dict__") else {}
    for key, value in items.items():
        if key.startswith("_"):
            continue
        if isinstance(value, (bool, int, float, str)):
            values[f"{prefix}/{key}"] = value
        elif hasattr(value, "__dict__") and not callable(value):
            values.update(hparams_of(value, f"{prefix}/{key}"))
    return values
