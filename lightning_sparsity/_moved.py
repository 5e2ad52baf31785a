"""Old import paths of modules that moved, kept so user code, configs and pickles still work.

``import lightning_sparsity.budget`` (and ``from lightning_sparsity.budget import
FlopBudget``, a YAML ``class_path: lightning_sparsity.budget.FlopBudget``, a pickle naming the
old module) gets the module at its new path: the same module object, imported when first
asked for, so an old path costs nothing until used.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType

__all__ = ["MOVED", "install"]

#: old module path -> where it lives now
MOVED = {
    "lightning_sparsity.budget": "lightning_sparsity.control.budget",
    "lightning_sparsity.controller": "lightning_sparsity.control.controller",
    "lightning_sparsity.guard": "lightning_sparsity.control.guard",
    "lightning_sparsity.oneshot": "lightning_sparsity.control.oneshot",
    "lightning_sparsity.sweep_ray": "lightning_sparsity.sweeps.ray",
}


class _Alias(importlib.abc.Loader):
    """Loads an old path as the module at its new path (that module, not a copy)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)
        self.spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self.spec  # the import system set the old path's spec on it


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        new = MOVED.get(fullname)
        return None if new is None else importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    """Put the finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
