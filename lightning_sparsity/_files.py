"""Files written atomically: a temporary file beside the target, then a rename.

A reader (TensorBoard, a resumed sweep, ``lightning-sparsity report``) sees the old file or
the new one, never half of one, even if the process is killed mid-write.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["write_json", "write_text"]


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: str | Path, data: Any, indent: int = 1) -> None:
    """Write ``data`` as JSON (non-JSON values by ``str``) to ``path`` atomically."""
    write_text(path, json.dumps(data, indent=indent, default=str) + "\n")
