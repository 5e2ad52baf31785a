"""``SparsityCallback`` for the unified ``lightning`` package (``lightning.pytorch.Trainer``).

``lightning_sparsity.SparsityCallback`` subclasses ``pytorch_lightning.Callback``, which
``lightning.pytorch.Trainer`` does not accept; this one subclasses
``lightning.pytorch.Callback`` and behaves the same.
"""

from __future__ import annotations

try:
    import lightning.pytorch as L
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "lightning_sparsity.lightning needs the unified `lightning` package"
        " (pip install lightning); with `pytorch_lightning` use lightning_sparsity.SparsityCallback"
    ) from err

from lightning_sparsity.callback import SparsityCallbackLogic

__all__ = ["SparsityCallback"]


class SparsityCallback(SparsityCallbackLogic, L.Callback):
    """:class:`lightning_sparsity.SparsityCallback` for ``lightning.pytorch.Trainer``."""
