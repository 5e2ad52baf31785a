"""Mask storage: how a keep mask lives on a module, behind a few plain functions.

The pruner reads and writes masks only through this interface, so the storage can change
without touching the pruning math:

- :func:`trained_and_mask`, :func:`trained`, :func:`effective`, :func:`is_masked` read;
- :func:`mask_dtype` says which dtype :func:`set_mask` stores a mask in (the pruner builds
  masks in it to skip a conversion);
- :func:`set_mask` installs a mask, :func:`remove` folds it in (plain zeros remain);
- :func:`nonzero_counts` counts the nonzeros of effective weights in one host sync;
- :func:`param_name` and :func:`locate` map between ``(module FQN, name)`` and a parameter's
  FQN (``"layer1.conv.weight"``), masked or not.

Storage today: the :mod:`torch.nn.utils.prune` reparametrization. The parameter ``weight``
becomes ``weight_orig`` (the same :class:`~torch.nn.Parameter`, still trained: an optimizer
that holds it goes on), the buffer ``weight_mask`` (1 = keep, in the weight's dtype) is added,
and a forward pre-hook (a :class:`torch.nn.utils.prune.Identity`) sets
``module.weight = weight_orig * weight_mask`` before every forward. So
:func:`torch.nn.utils.prune.remove` works, and a masked weight stays zero through optimizer
steps (``weight_orig`` may move; the effective weight does not). Re-pruning replaces the mask
buffer in place of stacking pruning containers. A load-state-dict pre-hook lets a masked
module load a plain checkpoint (``weight`` with its zeros in place): the mask is taken as its
nonzeros.

Cost per masked weight, beside the trained weight itself: the mask, in the weight's dtype
(as large as the weight: 4 bytes per float32 entry), and the materialized effective weight
``weight_orig * weight_mask`` (another copy, recomputed before every forward).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

__all__ = [
    "effective",
    "is_masked",
    "locate",
    "mask_dtype",
    "nonzero_counts",
    "param_name",
    "remove",
    "set_mask",
    "trained",
    "trained_and_mask",
]


def _pruning_hook(module: nn.Module, name: str) -> prune.BasePruningMethod | None:
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, prune.BasePruningMethod) and hook._tensor_name == name:
            return hook
    return None


def is_masked(module: nn.Module, name: str) -> bool:
    """Whether the parameter ``name`` of ``module`` carries a mask installed by :func:`set_mask`.

    Args:
        module: The module that owns the parameter.
        name: The parameter's name on the module (``"weight"``).

    Returns:
        ``True`` once a mask is installed, until :func:`remove`.
    """
    return _pruning_hook(module, name) is not None


def trained_and_mask(module: nn.Module, name: str) -> tuple[Tensor, Tensor | None]:
    """The trained tensor and the current keep mask (``None`` when not masked).

    Args:
        module: The module that owns the parameter.
        name: The parameter's name on the module.

    Returns:
        The parameter the optimizer updates, and its mask (nonzero = keep) or ``None``.

    Raises:
        KeyError: If ``module`` has no parameter ``name``.
    """
    if name + "_orig" in module._parameters and name + "_mask" in module._buffers:
        return module._parameters[name + "_orig"], module._buffers[name + "_mask"]  # type: ignore[return-value]
    return module._parameters[name], None  # type: ignore[return-value]


def trained(module: nn.Module, name: str) -> Tensor | None:
    """The parameter ``name`` of ``module`` as trained (masked or not), or ``None``.

    Args:
        module: The module.
        name: The parameter's name on the module.

    Returns:
        The parameter the optimizer updates, or ``None`` when ``module`` has no such
        parameter of its own.
    """
    return module._parameters.get(name + "_orig", module._parameters.get(name))


def effective(module: nn.Module, name: str) -> Tensor:
    """The weight the module computes with (its pruned entries zero), detached.

    Args:
        module: The module that owns the parameter.
        name: The parameter's name on the module.

    Returns:
        The trained tensor times its mask (a new tensor), or the trained tensor when not
        masked.
    """
    orig, mask = trained_and_mask(module, name)
    return orig.detach() if mask is None else orig.detach() * mask


def nonzero_counts(params: Sequence[tuple[nn.Module, str]]) -> list[int]:
    """The nonzeros of each effective weight, read back in one host sync.

    Args:
        params: ``(module, parameter name)`` pairs, at least one.

    Returns:
        One count per pair.
    """
    return torch.stack([effective(m, n).count_nonzero() for m, n in params]).tolist()


def mask_dtype(weight: Tensor) -> torch.dtype:
    """The dtype :func:`set_mask` stores the mask of ``weight`` in (today: the weight's own)."""
    return weight.dtype


def _load_plain(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any, name: str
) -> None:
    """Let a masked module load a plain checkpoint (``weight`` with its zeros in place).

    Checkpoints written through SparsityCallback hold plain weights; the mask is taken as
    their nonzeros. A reparametrized state (``weight_orig``/``weight_mask``) loads as usual.
    """
    key = prefix + name
    if not is_masked(module, name) or key not in state_dict:
        return
    if key + "_orig" in state_dict or key + "_mask" in state_dict:
        return
    weight = state_dict.pop(key)
    state_dict[key + "_orig"] = weight
    state_dict[key + "_mask"] = (weight != 0).to(getattr(module, name + "_mask").dtype)


def set_mask(module: nn.Module, name: str, keep: Tensor) -> None:
    """Install ``keep`` as the mask of a parameter, replacing the current one.

    Args:
        module: The module that owns the parameter.
        name: The parameter's name on the module.
        keep: 1 = keep, 0 = prune; the parameter's shape, on its device, in
            :func:`mask_dtype`. Stored as is (not copied).
    """
    if not is_masked(module, name):
        # what prune.BasePruningMethod.apply does, without its ones_like mask and extra product
        orig = module._parameters[name]
        module.register_parameter(name + "_orig", orig)
        del module._parameters[name]
        hook = prune.Identity()
        hook._tensor_name = name
        module.register_forward_pre_hook(hook)
        module.register_load_state_dict_pre_hook(functools.partial(_load_plain, name=name))
    module.register_buffer(name + "_mask", keep)
    orig = getattr(module, name + "_orig")
    setattr(module, name, keep.to(dtype=orig.dtype) * orig)  # as the hook computes it


def remove(module: nn.Module, name: str) -> None:
    """Fold the mask into the parameter (``torch.nn.utils.prune.remove``): plain zeros remain.

    Nothing happens when the parameter carries no mask.

    Args:
        module: The module that owns the parameter.
        name: The parameter's name on the module.
    """
    if is_masked(module, name):
        prune.remove(module, name)


def param_name(fqn: str, name: str) -> str:
    """``"layer1.conv"`` + ``"weight"`` → ``"layer1.conv.weight"`` (the root has no prefix)."""
    return f"{fqn}.{name}" if fqn else name


def locate(model: nn.Module, keys: Iterable[str]) -> dict[str, tuple[nn.Module, str] | None]:
    """Resolve parameter FQNs (as :func:`param_name` writes them) to ``(module, name)``.

    Args:
        model: The model.
        keys: Parameter FQNs, e.g. ``"features.0.weight"``; a masked parameter goes by its
            plain name.

    Returns:
        Per key, in order: its module and parameter name, or ``None`` when ``model`` has no
        such parameter.
    """
    modules = dict(model.named_modules())
    out: dict[str, tuple[nn.Module, str] | None] = {}
    for key in keys:
        fqn, _, name = key.rpartition(".")
        module = modules.get(fqn)
        out[key] = None if module is None or trained(module, name) is None else (module, name)
    return out
