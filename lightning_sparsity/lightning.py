"""``SparsityCallback`` subclassing ``lightning.pytorch.Callback`` (the unified package).

``lightning_sparsity.SparsityCallback`` subclasses ``pytorch_lightning.Callback`` when that
package is installed, and ``lightning.pytorch.Trainer`` runs it too; this class is for code
that checks ``isinstance(callback, lightning.pytorch.Callback)``. Same arguments; it needs
only the ``lightning`` package.
"""

from __future__ import annotations

try:
    import lightning.pytorch as L
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "lightning_sparsity.lightning needs the unified `lightning` package (pip install"
        " lightning); lightning_sparsity.SparsityCallback works with pytorch_lightning"
    ) from err

from lightning_sparsity.callback import SparsityCallbackLogic

__all__ = ["SparsityCallback"]


class SparsityCallback(SparsityCallbackLogic, L.Callback):
    """:class:`lightning_sparsity.SparsityCallback` as a ``lightning.pytorch.Callback``."""
