"""How numbers and messages are written: one helper per habit, for every table and message.

- :func:`count`: an exact count (FLOPs, parameters), thousands separated: ``1,234,568``;
- :func:`si`: a count at a glance, three digits and a unit: ``1.23M``;
- :func:`number`: any value by a format spec, with a placeholder for ``None``;
- :func:`clock`: seconds as minutes and seconds, ``1:15``;
- :func:`one_line`: text (an error from a library, a config message) on one line.
"""

from __future__ import annotations

__all__ = ["clock", "count", "number", "one_line", "si"]


def count(value: float | None, none: str = "n/a") -> str:
    """A FLOP or parameter count: exact enough to tell 0.2 from 0.

    ``1234567.8`` → ``"1,234,568"``; ``64844.8`` → ``"64,844.8"``; ``0.2`` → ``"0.2"``;
    ``None`` → ``none``.
    """
    if value is None:
        return none
    if abs(value) >= 1e6 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:,.1f}" if abs(value) >= 1 else f"{value:.3g}"


def si(value: float | None) -> str:
    """``1234567`` → ``"1.23M"``; ``None`` → ``"n/a"``."""
    if value is None:
        return "n/a"
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:g}"


def number(value: float | None, spec: str, *, none: str = "n/a", unit: str = "") -> str:
    """``format(value, spec) + unit``, or ``none`` for ``None``: ``number(0.5, ".3f")``."""
    return none if value is None else f"{format(value, spec)}{unit}"


def clock(seconds: float) -> str:
    """``75.2`` seconds → ``"1:15"``."""
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}:{secs:02d}"


def one_line(text: object) -> str:
    """``text``'s lines joined by single spaces, runs of whitespace collapsed."""
    return " ".join(str(text).split())
