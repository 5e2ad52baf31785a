"""Objects built from plain constructor arguments: their settings, and a repr of them."""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = ["Settings"]


class Settings:
    """``settings()`` (compared on resume, logged to HParams) and ``repr`` from ``_SETTINGS``.

    Subclasses list their constructor arguments in ``_SETTINGS`` and keep each as an
    attribute of the same name.
    """

    _SETTINGS: ClassVar[tuple[str, ...]] = ()

    def settings(self) -> dict[str, Any]:
        """The constructor arguments by name."""
        return {name: getattr(self, name) for name in self._SETTINGS}

    def __repr__(self) -> str:
        args = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._SETTINGS)
        return f"{type(self).__name__}({args})"
