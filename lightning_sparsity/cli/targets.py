"""A command's TARGET built into an ``nn.Module``.

TARGET is ``package.module:factory``, or a LightningModule class with ``--checkpoint``;
what goes wrong is a :class:`CliError` (one line, exit 2).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from lightning_sparsity._text import one_line
from lightning_sparsity.lightning_cli import CliError, read_checkpoint

__all__ = ["CliError", "load_target"]


def _shape_text(shape: Any) -> str:
    return str(tuple(shape))


def _few(keys: Sequence[str], n: int = 3) -> str:
    more = f", ... ({len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _misfit(state: dict[str, Any], cls: Any, hparams: Any) -> str | None:
    """How a checkpoint's ``state_dict`` differs from ``cls`` built from ``hparams``.

    Returns ``None`` if the model cannot be built or no difference is found.
    """
    kwargs = dict(hparams) if isinstance(hparams, dict) else {}
    try:
        params = inspect.signature(cls).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            kwargs = {k: v for k, v in kwargs.items() if k in params}
        model = cls(**kwargs)
        expected = {k: v.shape for k, v in model.state_dict().items()}
        given = {k: getattr(v, "shape", None) for k, v in state.items()}
        shapes = [k for k in expected if k in given and given[k] != expected[k]]
        # torch's own key matching (module hooks included), once the misfits are set aside
        keys = model.load_state_dict(
            {k: v for k, v in state.items() if k not in shapes}, strict=False
        )
    except Exception:
        return None
    missing = [k for k in keys.missing_keys if k not in shapes]
    unexpected = list(keys.unexpected_keys)
    parts = []
    if shapes:
        k = shapes[0]
        more = f" (and {len(shapes) - 1} more shape mismatches)" if len(shapes) > 1 else ""
        parts.append(
            f"{k} has shape {_shape_text(given[k])} in the checkpoint,"
            f" {_shape_text(expected[k])} in the model{more}"
        )
    if missing:
        parts.append(f"{len(missing)} missing keys ({_few(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({_few(unexpected)})")
    return "; ".join(parts) or None


def _checkpoint_problem(path: str, cls: Any, target: str, err: Exception) -> str | None:
    """Say in one line why loading checkpoint ``path`` into ``cls`` raised ``err``.

    Returns ``None`` when the failure is not a problem of the file (then it is re-raised).

    Raises:
        CliError: If the file cannot be read at all (see :func:`_read_checkpoint`).
    """
    ckpt = read_checkpoint(path)
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        keys = (
            f"its keys: {_few([str(k) for k in ckpt])}"
            if isinstance(ckpt, dict)
            else f"a {type(ckpt).__name__}"
        )
        return f"checkpoint {path!r} is not a Lightning checkpoint: no 'state_dict' ({keys})"
    if isinstance(err, RuntimeError) and "Error(s) in loading state_dict" in str(err):
        why = _misfit(state, cls, ckpt.get("hyper_parameters"))
        return f"checkpoint {path!r} does not fit {target}: {why or one_line(str(err))}"
    if isinstance(err, (TypeError, ValueError)):
        return (
            f"cannot build {target} from checkpoint {path!r} (its hyper_parameters):"
            f" {type(err).__name__}: {one_line(str(err))}"
        )
    return None


def load_target(target: str, checkpoint: str | None = None) -> nn.Module:
    """Import ``package.module:attr`` and build the model from it.

    Raises:
        CliError: if the target cannot be imported or does not give an ``nn.Module``.
    """
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise CliError(f"TARGET must look like package.module:factory, got {target!r}")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise CliError(f"cannot import {target!r}: {err}") from err
    if checkpoint is not None:
        if not hasattr(obj, "load_from_checkpoint"):
            raise CliError(f"--checkpoint needs a LightningModule class, {target!r} is not one")
        if not Path(checkpoint).is_file():
            what = "is a directory, not a file" if Path(checkpoint).is_dir() else "does not exist"
            raise CliError(f"checkpoint {checkpoint!r} {what}")
        try:
            model = obj.load_from_checkpoint(checkpoint, map_location="cpu")
        except Exception as err:
            problem = _checkpoint_problem(checkpoint, obj, target, err)
            if problem is None:
                raise
            raise CliError(problem) from err
    elif callable(obj) and not isinstance(obj, nn.Module):
        try:
            model = obj()
        except Exception as err:
            raise CliError(f"calling {target} failed: {type(err).__name__}: {err}") from err
    else:
        model = obj
    if not isinstance(model, nn.Module):
        raise CliError(f"{target!r} gave a {type(model).__name__}, not a torch.nn.Module")
    return model
