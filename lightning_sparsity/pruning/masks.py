"""Mask storage: how a keep mask lives on a module, behind a few plain functions.

The pruner reads and writes masks only through this interface, so the storage can change
without touching the pruning math:

- :func:`trained_and_mask`, :func:`trained`, :func:`effective`, :func:`is_masked`,
  :func:`storage_of` read;
- :func:`mask_dtype` says which dtype :func:`set_mask` stores a mask in (the pruner builds
  masks in it to skip a conversion);
- :func:`set_mask` installs a mask, :func:`remove` drops it (plain zeros remain);
- :func:`enforce` and :func:`mask_grads` keep ``"inplace"`` masks through optimizer steps;
- :func:`nonzero_counts` counts the nonzeros of effective weights in one host sync;
- :func:`plain_state` turns a ``state_dict`` of ``"prune"``-masked weights into plain ones;
- :func:`param_name` and :func:`locate` map between ``(module FQN, name)`` and a parameter's
  FQN (``"layer1.conv.weight"``), masked or not.

Two storages:

``"inplace"`` (the default): one ``bool`` buffer per masked parameter (``<name>_keep``, not
persistent: it is not in the ``state_dict``) and the zeros written into the parameter
itself. Every reader of the weight sees them — fused kernels, ``nn.MultiheadAttention``'s
fast path, cuDNN/mkldnn RNNs, a weight tied to several modules — and ``state_dict``,
checkpoints and counting see plain weights. An optimizer step may move pruned entries
(momentum, Adam's moments): :func:`mask_grads` zeroes their gradients before it and
:func:`enforce` writes the zeros again after it. Cost per masked weight: the 1-byte mask.
Sharded weights (FSDP2's ``DTensor``) are masked on their local shard.

``"prune"``: the :mod:`torch.nn.utils.prune` reparametrization. The parameter ``weight``
becomes ``weight_orig`` (the same :class:`~torch.nn.Parameter`, still trained), the buffer
``weight_mask`` (1 = keep, in the weight's dtype) is added, and a forward pre-hook sets
``module.weight = weight_orig * weight_mask`` before every forward, so
:func:`torch.nn.utils.prune.remove` works and ``weight_orig`` keeps the values of pruned
entries. Only the module's own forward sees the mask (not a tied reader, not MHA reading
``out_proj.weight``). A load-state-dict pre-hook lets a masked module load a plain
checkpoint (``weight`` with its zeros in place): the mask is taken as its nonzeros. Cost per
masked weight: the mask in the weight's dtype (4 bytes per float32 entry) and the
materialized effective weight (another copy, recomputed before every forward).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from lightning_sparsity._shards import is_sharded, local, reduce_counts
from lightning_sparsity.pruning.select import as_factor, chunk_size

__all__ = [
    "STORAGES",
    "Storage",
    "effective",
    "enforce",
    "is_masked",
    "locate",
    "mask_dtype",
    "mask_grads",
    "nonzero_counts",
    "param_name",
    "plain_state",
    "remove",
    "set_mask",
    "storage_of",
    "trained",
    "trained_and_mask",
]

Storage = Literal["inplace", "prune"]
STORAGES: tuple[Storage, ...] = ("inplace", "prune")
_KEEP = "_keep"  # suffix of an "inplace" mask buffer


# ---------------------------------------------------------------------- reading


def _pruning_hook(module: nn.Module, name: str) -> prune.BasePruningMethod | None:
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, prune.BasePruningMethod) and hook._tensor_name == name:
            return hook
    return None


def storage_of(module: nn.Module, name: str) -> Storage | None:
    """How the parameter ``name`` of ``module`` is masked, or ``None`` when it is not."""
    if name + _KEEP in module._buffers:
        return "inplace"
    if _pruning_hook(module, name) is not None:
        return "prune"
    return None


def is_masked(module: nn.Module, name: str) -> bool:
    """Whether the parameter ``name`` of ``module`` carries a mask installed by :func:`set_mask`.

    Args:
        module: The module that owns the parameter.
        name: The parameter's name on the module (``"weight"``).

    Returns:
        ``True`` once a mask is installed, until :func:`remove`.
    """
    return storage_of(module, name) is not None


def trained_and_mask(module: nn.Module, name: str) -> tuple[Tensor, Tensor | None]:
    """The trained tensor (this process's shard) and its keep mask (``None``: not masked).

    Args:
        module: The module that owns the parameter.
        name: The parameter's name on the module.

    Returns:
        The values the optimizer updates (for ``"inplace"``, pruned entries are zero), and
        the mask (nonzero = keep) or ``None``.

    Raises:
        KeyError: If ``module`` has no parameter ``name``.
    """
    if name + "_orig" in module._parameters and name + "_mask" in module._buffers:
        return module._parameters[name + "_orig"], module._buffers[name + "_mask"]  # type: ignore[return-value]
    return local(module._parameters[name]), module._buffers.get(name + _KEEP)  # type: ignore[arg-type]


def trained(module: nn.Module, name: str) -> Tensor | None:
    """The parameter ``name`` of ``module`` as trained (masked or not), or ``None``.

    Args:
        module: The module.
        name: The parameter's name on the module.

    Returns:
        The parameter the optimizer updates (a whole ``DTensor`` when sharded), or ``None``
        when ``module`` has no such parameter of its own.
    """
    return module._parameters.get(name + "_orig", module._parameters.get(name))


def effective(module: nn.Module, name: str) -> Tensor:
    """The weight the module computes with (its pruned entries zero), detached, local.

    Args:
        module: The module that owns the parameter.
        name: The parameter's name on the module.

    Returns:
        For ``"prune"``, the trained tensor times its mask (a new tensor); else the
        parameter itself (its local shard when sharded).
    """
    tensor, mask = trained_and_mask(module, name)
    if storage_of(module, name) == "prune":
        return tensor.detach() * mask  # type: ignore[operator]
    return tensor.detach()


def nonzero_counts(params: Sequence[tuple[nn.Module, str]]) -> list[int]:
    """The nonzeros of each effective weight, in one host sync (and one all-reduce if sharded).

    Args:
        params: ``(module, parameter name)`` pairs, at least one.

    Returns:
        One count per pair (over all shards of a sharded weight).
    """
    counts = torch.stack([effective(m, n).count_nonzero() for m, n in params])
    whole = [trained(module, name) for module, name in params]
    return reduce_counts(counts, whole).tolist()  # type: ignore[arg-type]


def mask_dtype(weight: Tensor) -> torch.dtype:
    """The dtype masks are built in for :func:`set_mask`: ``bool`` (1 byte per entry)."""
    return torch.bool


# ---------------------------------------------------------------------- writing


def _load_plain(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any, name: str
) -> None:
    """Let a ``"prune"``-masked module load a plain checkpoint (``weight``, zeros in place).

    Checkpoints written through SparsityCallback hold plain weights; the mask is taken as
    their nonzeros. A reparametrized state (``weight_orig``/``weight_mask``) loads as usual.
    """
    key = prefix + name
    if storage_of(module, name) != "prune" or key not in state_dict:
        return
    if key + "_orig" in state_dict or key + "_mask" in state_dict:
        return
    weight = state_dict.pop(key)
    state_dict[key + "_orig"] = weight
    state_dict[key + "_mask"] = (weight != 0).to(getattr(module, name + "_mask").dtype)


def set_mask(module: nn.Module, name: str, keep: Tensor, storage: Storage = "inplace") -> None:
    """Install ``keep`` as the mask of a parameter, replacing the current one.

    Args:
        module: The module that owns the parameter.
        name: The parameter's name on the module.
        keep: 1 = keep, 0 = prune; the shape of the parameter's local part, on its device.
            ``"inplace"`` stores it as is (not copied; bool for 1 byte per entry);
            ``"prune"`` in the weight's dtype, as ``torch.nn.utils.prune`` does.
        storage: ``"inplace"`` (zeros written into the parameter, a bool buffer) or
            ``"prune"`` (``torch.nn.utils.prune``'s reparametrization).

    Raises:
        ValueError: For ``"prune"`` on a sharded parameter (its forward sees the unsharded
            weight FSDP2 gathers, not ``weight_orig * weight_mask``).
    """
    current = storage_of(module, name)
    if current is not None and current != storage:
        remove(module, name)
    if storage == "inplace":
        module.register_buffer(name + _KEEP, keep, persistent=False)
        with torch.no_grad():
            _zero_pruned(local(module._parameters[name]), keep)  # type: ignore[arg-type]
        return
    if current is None:
        if is_sharded(module._parameters[name]):
            raise ValueError(
                f"mask_storage='prune' cannot mask the sharded parameter {name!r}; use the"
                " default mask_storage='inplace'"
            )
        # what prune.BasePruningMethod.apply does, without its ones_like mask and extra product
        orig = module._parameters[name]
        module.register_parameter(name + "_orig", orig)
        del module._parameters[name]
        hook = prune.Identity()
        hook._tensor_name = name
        module.register_forward_pre_hook(hook)
        module.register_load_state_dict_pre_hook(functools.partial(_load_plain, name=name))
    orig = getattr(module, name + "_orig")
    keep = keep.to(dtype=orig.dtype)
    module.register_buffer(name + "_mask", keep)
    setattr(module, name, keep * orig)  # as the hook computes it


def _zero_pruned(weight: Tensor, keep: Tensor) -> None:
    """``weight *= keep`` in place, in chunks that run on the calling thread on CPU.

    See :func:`~lightning_sparsity.pruning.select.chunk_size`: one multiply of a whole
    weight is an OpenMP region, which waits a scheduler time slice at its barrier whenever
    another process holds a core.
    """
    factor = as_factor(keep)
    if not weight.is_contiguous():
        weight.mul_(factor)
        return
    flat, factors = weight.view(-1), factor.reshape(-1)
    step = chunk_size(weight.device)
    for a in range(0, flat.numel(), step):
        flat[a : a + step].mul_(factors[a : a + step])


def remove(module: nn.Module, name: str) -> None:
    """Drop the mask of a parameter; plain zeros remain (``prune.remove`` for ``"prune"``).

    Nothing happens when the parameter carries no mask.

    Args:
        module: The module that owns the parameter.
        name: The parameter's name on the module.
    """
    storage = storage_of(module, name)
    if storage == "inplace":
        del module._buffers[name + _KEEP]
    elif storage == "prune":
        prune.remove(module, name)


def _inplace(params: Iterable[tuple[nn.Module, str]]) -> list[tuple[Tensor, Tensor]]:
    """``(parameter, keep)`` of the ``"inplace"``-masked ones among ``params``."""
    out: list[tuple[Tensor, Tensor]] = []
    for module, name in params:
        keep = module._buffers.get(name + _KEEP)
        param = module._parameters.get(name)
        if keep is not None and param is not None:
            out.append((param, keep))
    return out


def enforce(params: Iterable[tuple[nn.Module, str]]) -> None:
    """Write the zeros of ``"inplace"`` masks into their parameters again (after a step).

    One fused multiply over all of them; no host sync.
    """
    pairs = _inplace(params)
    if pairs:
        with torch.no_grad():
            torch._foreach_mul_([local(p) for p, _ in pairs], [k for _, k in pairs])


def mask_grads(params: Iterable[tuple[nn.Module, str]]) -> None:
    """Zero the gradients of pruned entries of ``"inplace"``-masked parameters (before a step).

    So momentum and adaptive moments do not build up on them. No host sync.
    """
    pairs = [(p.grad, k) for p, k in _inplace(params) if p.grad is not None]
    if pairs:
        with torch.no_grad():
            torch._foreach_mul_([local(g) for g, _ in pairs], [k for _, k in pairs])


def plain_state(state_dict: dict[str, Any], names: Iterable[str]) -> None:
    """In a ``state_dict``, replace ``"prune"`` pairs ``<name>_orig``/``_mask`` by ``<name>``.

    The plain weight holds the zeros in place, so a fresh, unpruned model loads it.
    """
    for name in names:
        if name + "_orig" in state_dict and name + "_mask" in state_dict:
            state_dict[name] = state_dict.pop(name + "_orig") * state_dict.pop(name + "_mask")


# ---------------------------------------------------------------------- names


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
