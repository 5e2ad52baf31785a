"""Which logger versions a checkpoint's run was logged to, so a resumed fit continues that run.

Lightning's ``TensorBoardLogger`` and ``CSVLogger`` pick the next free ``version_N`` for every
fit, a resumed one too, so TensorBoard would show a resumed run as two runs. The callback
keeps its fit's loggers and their versions in its checkpoint state; :func:`resume_version`
reads them back for the logger of the resumed fit (``version=...``), which then writes into
the same directory. Lightning fixes a logger's version before any callback hook runs, so the
callback cannot move it itself: the ``lightning-sparsity fit`` command does it for you.

Knows nothing of Lightning: plain values out of a checkpoint file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["Logged", "logged_versions", "resume_version", "same_root", "saved_versions"]

#: one logger of a fit: ``{"type": "TensorBoardLogger", "version": 0, "root": "/abs/logs/run"}``
#: (``root``: the directory its versions are in, ``save_dir/name``, where it has one)
Logged = dict[str, Any]

_KEY = "SparsityCallback"


def logged_versions(loggers: Iterable[Any]) -> list[Logged]:
    """Each logger's class name, version and root (``None`` where it has no such value)."""
    out: list[Logged] = []
    for logger in loggers:
        version = getattr(logger, "version", None)
        plain = isinstance(version, (int, str)) and not isinstance(version, bool)
        root = getattr(logger, "root_dir", None)
        out.append(
            {
                "type": type(logger).__name__,
                "version": version if plain else None,
                "root": None if root is None else str(Path(root).resolve()),
            }
        )
    return out


def same_root(root: str | Path, logged: Logged) -> bool:
    """Whether ``root`` (``save_dir/name``) is the directory of the logged versions."""
    saved = logged.get("root")
    return saved is not None and Path(root).resolve() == Path(saved)


def saved_versions(ckpt_path: str | Path) -> list[Logged]:
    """The loggers the fit of a checkpoint logged to, from its SparsityCallback state (or ``[]``).

    Raises:
        FileNotFoundError: if there is no such file; what ``torch.load`` raises for a file it
            cannot read.
    """
    states = _load(ckpt_path).get("callbacks") or {}
    for key, state in states.items():
        if isinstance(key, str) and key.startswith(_KEY) and isinstance(state, Mapping):
            loggers = state.get("loggers")
            if isinstance(loggers, list):
                return [dict(logged) for logged in loggers if isinstance(logged, Mapping)]
    return []


def _load(path: str | Path) -> Mapping[str, Any]:
    """The checkpoint's dict, its tensors memory-mapped where the format allows (not read)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # not a zip archive (the legacy format cannot be mapped)
        return torch.load(path, map_location="cpu", weights_only=True)


def resume_version(ckpt_path: str | Path | None, logger: int = 0) -> int | str | None:
    """The version the run of ``ckpt_path`` was logged to, for the logger of its resumed fit.

    ``TensorBoardLogger(save_dir, name=..., version=resume_version(ckpt_path))`` then logs the
    resumed fit into the same directory as the fit it resumes: one run in TensorBoard, its
    history files and report in one place.

    Args:
        ckpt_path: a checkpoint written by a fit with a ``SparsityCallback``; ``None`` (a new
            fit) gives ``None``, which is also the loggers' default (the next free version).
        logger: which of the trainer's loggers (``0``: the first, ``trainer.logger``).

    Returns:
        The version, or ``None`` when the checkpoint does not know it (no SparsityCallback
        state, written before this version of the library, or a fit without that logger).
    """
    if ckpt_path is None:
        return None
    saved = saved_versions(ckpt_path)
    return saved[logger].get("version") if 0 <= logger < len(saved) else None
