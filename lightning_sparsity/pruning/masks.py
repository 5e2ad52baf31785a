"""Mask storage: how a keep mask lives on a module, behind a few plain functions.

The pruner reads and writes masks only through this interface, so the storage can change
without touching the pruning math:

- :func:`trained_and_mask`, :func:`trained`, :func:`effective`, :func:`is_masked`,
  :func:`storage_of` read;
- :func:`mask_dtype` says which dtype :func:`set_mask` stores a mask in (the pruner builds
  masks in it to skip a conversion);
- :func:`set_mask` installs a mask, :func:`remove` drops it (plain zeros remain);
- :func:`enforce` and :func:`mask_grads` keep ``"inplace"`` masks through optimizer steps;
- :func:`reapply` finds and undoes writes that broke masks (one host sync);
- :func:`hidden` shows modules without their mask buffers (for code that zips
  ``parameters()``/``buffers()`` of a model and of an unmasked copy: weight averaging);
- :func:`nonzero_counts` counts the nonzeros of effective weights in one host sync;
- :func:`plain_state` turns a ``state_dict`` of ``"prune"``-masked weights into plain ones;
- :func:`param_name` and :func:`locate` map between ``(module FQN, name)`` and a parameter's
  FQN (``"layer1.conv.weight"``), masked or not.

Two storages:

``"inplace"`` (the default): one ``bool`` buffer per masked parameter (``<name>_keep``, not
persistent: it is not in the ``state_dict``) and the zeros written into the parameter
itself. Every reader of the weight sees them — fused kernels, ``nn.MultiheadAttention``'s
fast path, cuDNN/mkldnn RNNs, a weight tied to several modules — and ``state_dict``,
checkpoints and counting see plain weights. The gradients of pruned entries are zeroed as
they are produced (a post-accumulate-grad hook on the parameter, which reads the module's
current mask), so clipping, Adam's moments and factored optimizers never see them, whether
the step runs inside ``optimizer.step(closure)`` (Lightning's automatic optimization) or
after a manual backward, with gradient accumulation or AMP. Momentum and moments built up
before a prune are cleared on what it prunes (:func:`mask_state`, for the optimizers the
pruner is attached to), and :func:`enforce` writes the zeros again after each step. Cost
per masked weight: the 1-byte mask. Sharded weights (FSDP2's ``DTensor``) are masked on
their local shard; FSDP2 calls the gradient hook on the sharded gradient after its
reduce-scatter.

``"prune"``: the :mod:`torch.nn.utils.prune` reparametrization. The parameter ``weight``
becomes ``weight_orig`` (the same :class:`~torch.nn.Parameter`, still trained), the buffer
``weight_mask`` (1 = keep, in the weight's dtype) is added, and a forward pre-hook sets
``module.weight = weight_orig * weight_mask`` before every forward, so
:func:`torch.nn.utils.prune.remove` works and ``weight_orig`` keeps the values of pruned
entries. ``weight_orig`` takes ``weight``'s place among the module's parameters (and
:func:`remove` puts ``weight`` back there), so ``model.parameters()`` keeps its order and
lines up with an unmasked copy's. The chain rule zeroes the gradients of pruned entries.
Only the module's own forward sees the mask (not a tied reader, not MHA reading
``out_proj.weight``). A load-state-dict pre-hook lets a masked module load a plain
checkpoint (``weight`` with its zeros in place): the mask is taken as its nonzeros (the
mask it replaces is kept aside, for :func:`reapply` to notice a dense load). Cost per
masked weight: the mask in the weight's dtype (4 bytes per float32 entry) and the
materialized effective weight (another copy, recomputed before every forward).
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from lightning_sparsity._shards import is_sharded, local, reduce_counts
from lightning_sparsity.pruning.chunks import as_factor, chunk_size, count_nonzero

__all__ = [
    "STORAGES",
    "Storage",
    "effective",
    "enforce",
    "hidden",
    "is_masked",
    "locate",
    "mask_dtype",
    "mask_grads",
    "mask_state",
    "multiply_by_keeps",
    "nonzero_counts",
    "param_name",
    "plain_state",
    "reapply",
    "remove",
    "set_mask",
    "storage_of",
    "trained",
    "trained_and_mask",
]

Storage = Literal["inplace", "prune"]
STORAGES: tuple[Storage, ...] = ("inplace", "prune")
_KEEP = "_keep"  # suffix of an "inplace" mask buffer
_GRAD_HOOKS = "_lightning_sparsity_grad_hooks"  # module attribute: {name: _MaskGrad}
_REPLACED = "_lightning_sparsity_replaced"  # module attribute: {name: mask a plain load replaced}


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
    current = getattr(module, name + "_mask")
    _own(module, _REPLACED)[name] = current != 0  # for reapply(): did the load change it?
    state_dict[key + "_mask"] = (weight != 0).to(current.dtype)


def _own(module: nn.Module, attribute: str) -> dict[str, Any]:
    """A private dict of ``module`` keyed by parameter name (created empty when missing).

    ``_REPLACED``: the masks loads of plain weights replaced (see :func:`reapply`);
    ``_GRAD_HOOKS``: the gradient hooks of ``"inplace"`` masks.
    """
    found: dict[str, Any] | None = module.__dict__.get(attribute)
    if found is None:
        found = {}
        object.__setattr__(module, attribute, found)
    return found


class _MaskGrad:
    """Post-accumulate-grad hook of an ``"inplace"``-masked parameter: ``grad *= keep``.

    It reads the module's mask buffer when called (so a new mask needs no new hook) and
    masks the local shard of a sharded gradient. It holds its module and parameter weakly;
    a copy (``deepcopy``, pickling) is inert: :func:`set_mask` on the copy installs its own.
    """

    def __init__(self, module: nn.Module, name: str, param: Tensor) -> None:
        self.module: Any = weakref.ref(module)
        self.param: Any = weakref.ref(param)
        self.name = name
        self.dense = False  # let the whole gradient through (RigL's growth step)
        self.handle: Any = param.register_post_accumulate_grad_hook(self)

    def __call__(self, param: Tensor) -> None:
        if self.dense:
            return
        module = self.module()
        keep = None if module is None else module._buffers.get(self.name + _KEEP)
        if keep is None or param.grad is None or self.param() is not param:
            return
        with torch.no_grad():
            _zero_pruned(local(param.grad), keep)

    def bound_to(self, param: Tensor | None) -> bool:
        """Whether this hook is registered on ``param`` (a copy's hook is on no parameter)."""
        return param is not None and self.param() is param

    def remove(self) -> None:
        """Unregister (nothing for a copy)."""
        if self.handle is not None:
            self.handle.remove()
        self.handle = None

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.name = state["name"]
        self.dense = False
        self.module = self.param = lambda: None
        self.handle = None


def _hook_grads(module: nn.Module, name: str) -> None:
    """One gradient-masking hook on the parameter ``name`` (kept when the mask changes)."""
    param = module._parameters[name]
    hooks = _own(module, _GRAD_HOOKS)
    hook = hooks.get(name)
    if hook is not None and hook.bound_to(param):
        return
    if hook is not None:
        hook.remove()
    if param is not None and param.requires_grad:
        hooks[name] = _MaskGrad(module, name, param)


def dense_grads(params: Iterable[tuple[nn.Module, str]], on: bool) -> None:
    """Let backward's whole gradients through the ``"inplace"`` masks of ``params`` (or not).

    While on, pruned entries keep their gradients (what RigL grows by); the caller zeroes
    them before the optimizer steps (:func:`mask_grads`).
    """
    for module, name in params:
        hook = module.__dict__.get(_GRAD_HOOKS, {}).get(name)
        if hook is not None:
            hook.dense = on


def _unhook_grads(module: nn.Module, name: str) -> None:
    hook = module.__dict__.get(_GRAD_HOOKS, {}).pop(name, None)
    if hook is not None:
        hook.remove()


def _rename(items: dict[str, Any], old: str, new: str, index: int | None = None) -> None:
    """Rename the key ``old`` of ``items`` in place, keeping its position (or moving it).

    So iterating the dict keeps its order; ``index``: move the key there instead.
    """
    pairs = [(new if k == old else k, v) for k, v in items.items()]
    if index is not None:
        moved = next(i for i, (k, _) in enumerate(pairs) if k == new)
        pairs.insert(index, pairs.pop(moved))
    items.clear()
    items.update(pairs)


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
    module.__dict__.get(_REPLACED, {}).pop(name, None)
    if storage == "inplace":
        module.register_buffer(name + _KEEP, keep, persistent=False)
        with torch.no_grad():
            _zero_pruned(local(module._parameters[name]), keep)  # type: ignore[arg-type]
        _hook_grads(module, name)
        return
    if current is None:
        if is_sharded(module._parameters[name]):
            raise ValueError(
                f"mask_storage='prune' cannot mask the sharded parameter {name!r}; use the"
                " default mask_storage='inplace'"
            )
        # what prune.BasePruningMethod.apply does, without its ones_like mask and extra
        # product, and with weight_orig in weight's place (parameters() keeps its order)
        _rename(module._parameters, name, name + "_orig")
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

    See :func:`~lightning_sparsity.pruning.chunks.chunk_size`: one multiply of a whole
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
    module.__dict__.get(_REPLACED, {}).pop(name, None)
    if storage == "inplace":
        del module._buffers[name + _KEEP]
        _unhook_grads(module, name)
    elif storage == "prune":
        index = list(module._parameters).index(name + "_orig")
        prune.remove(module, name)  # registers `name` last: back to weight_orig's place
        _rename(module._parameters, name, name, index)


def _inplace(params: Iterable[tuple[nn.Module, str]]) -> list[tuple[Tensor, Tensor]]:
    """``(parameter, keep)`` of the ``"inplace"``-masked ones among ``params``."""
    out: list[tuple[Tensor, Tensor]] = []
    for module, name in params:
        keep = module._buffers.get(name + _KEEP)
        param = module._parameters.get(name)
        if keep is not None and param is not None:
            out.append((param, keep))
    return out


def multiply_by_keeps(pairs: Sequence[tuple[Tensor, Tensor]]) -> None:
    """Multiply each tensor (this process's shard of it) by its keep mask, in place.

    One fused multiply for all of them; no host sync.
    """
    if pairs:
        with torch.no_grad():
            torch._foreach_mul_([local(t) for t, _ in pairs], [k for _, k in pairs])


def enforce(params: Iterable[tuple[nn.Module, str]]) -> None:
    """Write the zeros of ``"inplace"`` masks into their parameters again (after a step).

    One fused multiply over all of them; no host sync.
    """
    multiply_by_keeps(_inplace(params))


def mask_grads(params: Iterable[tuple[nn.Module, str]]) -> None:
    """Zero the gradients of pruned entries of ``"inplace"``-masked parameters now.

    Backward's gradients are masked as they are accumulated already (:func:`set_mask`
    installs the hook); this is for gradients written some other way. No host sync.
    """
    multiply_by_keeps([(p.grad, k) for p, k in _inplace(params) if p.grad is not None])


def mask_state(optimizers: Iterable[Any], params: Iterable[tuple[nn.Module, str]]) -> None:
    """Zero the optimizer state of pruned entries (momentum, Adam's moments) of ``params``.

    State built up before a prune would otherwise stay on the pruned entries: harmless while
    their gradients are masked and :func:`enforce` writes the zeros again, but it is state a
    pruned entry should not have (it moves ``"prune"``'s ``weight_orig``, and a regrown
    weight would start with it). Elementwise state only (tensors of the parameter's shape);
    factored state such as Adafactor's row and column moments cannot be split by entry.
    One fused multiply; no host sync.

    Args:
        optimizers: Optimizers whose ``state`` is keyed by the parameters.
        params: ``(module, parameter name)`` pairs; unmasked ones are skipped.
    """
    pairs: list[tuple[Tensor, Tensor]] = []
    for module, name in params:
        param = trained(module, name)
        keep = trained_and_mask(module, name)[1] if param is not None else None
        if param is None or keep is None:
            continue
        for optimizer in optimizers:
            for value in optimizer.state.get(param, {}).values():
                if isinstance(value, Tensor) and value.shape == param.shape:
                    pairs.append((value, keep))
    multiply_by_keeps(pairs)


def _mask_buffer(module: nn.Module, name: str) -> str | None:
    """The key of the mask buffer of the parameter ``name`` in ``module._buffers``, if any."""
    storage = storage_of(module, name)
    if storage is None:
        return None
    return name + (_KEEP if storage == "inplace" else "_mask")


@contextlib.contextmanager
def hidden(params: Iterable[tuple[nn.Module, str]]) -> Iterator[None]:
    """Take the mask buffers of ``params`` off their modules for the duration of the block.

    Code that pairs ``model.buffers()`` with those of an unmasked copy (Lightning's
    ``WeightAveraging`` averages and swaps parameters and buffers by position) then sees
    the same buffers on both. Parameters need nothing: both storages keep their order.
    Buffers replaced inside the block keep their new value; the masks go back in place.

    Args:
        params: ``(module, parameter name)`` pairs; unmasked ones are skipped.
    """
    taken: list[tuple[nn.Module, list[str], dict[str, Tensor]]] = []
    for module, name in params:
        key = _mask_buffer(module, name)
        if key is None:
            continue
        order = list(module._buffers)
        taken.append((module, order, {key: module._buffers.pop(key)}))  # type: ignore[dict-item]
    try:
        yield
    finally:
        for module, order, masks in reversed(taken):
            now = dict(module._buffers)
            module._buffers.clear()
            for key in order:
                if key in masks:
                    module._buffers[key] = masks[key]
                elif key in now:
                    module._buffers[key] = now.pop(key)
            module._buffers.update(now)


def reapply(params: Sequence[tuple[nn.Module, str]]) -> list[int]:
    """Find writes that broke the masks of ``params`` and undo them; one host sync.

    ``"inplace"``: the pruned entries that hold a nonzero again (a callback copied dense
    values into the weight, loaded a dense ``state_dict``, ...) are zeroed. ``"prune"``: a
    load of plain weights takes the mask as their nonzeros (see :func:`set_mask`); the mask
    it replaced is installed again. Sharded weights are counted over all ranks (one
    all-reduce), so every rank gets the same counts.

    Args:
        params: ``(module, parameter name)`` pairs; unmasked ones count 0.

    Returns:
        Per pair, how many entries disagreed with the mask (0: none; nothing written).
    """
    if not params:
        return []
    counts: list[Tensor] = []
    replaced: list[Tensor | None] = []
    for module, name in params:
        storage = storage_of(module, name)
        tensor, mask = trained_and_mask(module, name)
        old = module.__dict__.get(_REPLACED, {}).get(name) if storage == "prune" else None
        replaced.append(old)
        if storage == "inplace":
            counts.append(count_nonzero(tensor) - count_nonzero(tensor, mask))
        elif old is not None:
            counts.append(((mask != 0) != old).count_nonzero())
        else:
            counts.append(torch.zeros((), dtype=torch.int64, device=tensor.device))
    whole = [trained(module, name) for module, name in params]
    found: list[int] = reduce_counts(torch.stack(counts), whole).tolist()  # type: ignore[arg-type]
    enforce([pair for pair, count in zip(params, found, strict=True) if count])
    for (module, name), old, count in zip(params, replaced, found, strict=True):
        if old is not None:
            module.__dict__[_REPLACED].pop(name, None)
            if count:
                set_mask(module, name, old, "prune")
    return found


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
