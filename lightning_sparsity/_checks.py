"""Argument checks shared by the constructors (messages name the value and what is allowed)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["binds", "check_bools", "check_choice", "check_int", "import_path"]


def check_int(
    name: str, value: object, errors: list[str], minimum: int = 0, *, optional: bool = False
) -> None:
    """Append "`name` must be an int >= minimum[ or None], got value" to ``errors`` if bad.

    ``bool`` is not accepted as an int; with ``optional``, ``None`` is.
    """
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        none = " or None" if optional else ""
        errors.append(f"`{name}` must be an int >= {minimum}{none}, got {value!r}")


def check_choice(name: str, value: object, allowed: Iterable[object], errors: list[str]) -> None:
    """Append "`name` must be one of allowed, got value" to ``errors`` if bad."""
    allowed = tuple(allowed)
    if value not in allowed:
        errors.append(f"`{name}` must be one of {allowed}, got {value!r}")


def check_bools(flags: Mapping[str, object], errors: list[str]) -> None:
    """Append "`name` must be a bool, got value" to ``errors`` for each flag that is not."""
    errors += [
        f"`{k}` must be a bool, got {v!r}" for k, v in flags.items() if not isinstance(v, bool)
    ]


def binds(fn: Callable[..., Any], count: int) -> bool:
    """Whether ``fn`` takes ``count`` positional arguments (true when its signature is unknown)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without one
        return True
    try:
        signature.bind(*([None] * count))
    except TypeError:
        return False
    return True


def import_path(fn: Callable[..., Any]) -> str:
    """A function by its import path (``module.qualname``), as settings record it."""
    return f"{fn.__module__}.{getattr(fn, '__qualname__', repr(fn))}"
