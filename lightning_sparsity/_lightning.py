"""Whichever PyTorch Lightning is installed: ``pytorch_lightning``, else ``lightning.pytorch``.

Only the callback, the demo and the CLI import this; counting, pruning, budgets and the
controller import no Lightning package.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["pl", "submodule"]

try:
    import pytorch_lightning as pl
except ImportError:  # pragma: no cover - depends on the environment
    try:
        import lightning.pytorch as pl  # type: ignore[no-redef]
    except ImportError as err:
        raise ImportError(
            "lightning_sparsity's callback, demo and CLI need PyTorch Lightning: install"
            " `pytorch-lightning` or `lightning` (pip install 'lightning-sparsity[pl]')"
        ) from err


def submodule(name: str) -> ModuleType:
    """``submodule("loggers")``: ``pytorch_lightning.loggers`` or ``lightning.pytorch.loggers``."""
    return importlib.import_module(f"{pl.__name__}.{name}")
