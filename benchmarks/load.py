"""Competing load for the benchmarks: processes spinning a core each, as DataLoader workers do.

Every benchmark times its figures quiet and beside ``--busy N`` of these, in the same run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["Others", "busy", "busy_beside_others"]


@contextmanager
def busy(n: int) -> Iterator[None]:
    """``n`` processes spinning on the CPU for the duration (started, given half a second to
    get going, and killed after)."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(0.5 if n else 0.0)
        yield
    finally:
        for p in spinners:
            p.kill()
        for p in spinners:
            p.wait()


@dataclass
class Others:
    """The CPU that processes other than this one and its spinners used during a block."""

    cores: float = float("nan")  # their CPU seconds / the block's wall seconds; set at its end

    def __str__(self) -> str:
        return f"others {self.cores:.2f} cores"


def _cpu_seconds() -> float:
    """CPU seconds spent busy (not idle, not waiting for I/O) on all CPUs since boot."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    """CPU seconds of this process and of its children that have been waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@contextmanager
def busy_beside_others(n: int) -> Iterator[Others]:
    """:func:`busy`, measuring what the rest of the machine ran meanwhile.

    The load average cannot say it: it lags a minute behind, and counts this process and
    its spinners. Here the CPU the machine spent busy (``/proc/stat``) less this process's
    and its spinners' (waited for, so in its children's times) is known when the block ends.
    """
    others = Others()
    cpu, own, start = _cpu_seconds(), _own_seconds(), time.perf_counter()
    with busy(n):
        yield others
    wall = time.perf_counter() - start
    others.cores = max(0.0, (_cpu_seconds() - cpu) - (_own_seconds() - own)) / wall
