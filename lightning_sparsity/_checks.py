"""Argument checks shared by the constructors (messages name the value and what is allowed)."""

from __future__ import annotations

__all__ = ["check_int"]


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
