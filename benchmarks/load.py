"""Competing load for the benchmarks: processes spinning a core each, as DataLoader workers do.

Every benchmark times its figures quiet and beside ``--busy N`` of these, in the same run.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["busy"]


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
