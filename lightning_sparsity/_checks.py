"""Argument checks shared by the constructors (messages name the value and what is allowed)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["check_bools", "check_choice", "check_int"]


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
