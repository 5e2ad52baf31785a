"""The model's effective parameters ("slots") and their nonzero counts.

A slot is one parameter as the forward pass sees it:

* ``plain``: a registered ``nn.Parameter``; a tied weight is one slot, named by its first
  owner in ``named_modules`` order;
* ``pruned``: a ``torch.nn.utils.prune`` reparametrization; the effective weight is
  ``<name>_orig * <name>_mask`` (the mask buffer is not a parameter);
* ``parametrized``: a ``torch.nn.utils.parametrize`` parametrization (torch.ao.pruning's
  masks included); the effective weight is what the parametrization returns.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize, prune

__all__ = ["Slot", "find_slots"]

SlotKind = Literal["plain", "pruned", "parametrized"]


@dataclass(frozen=True, eq=False)
class Slot:
    """One effective parameter of a model.

    Attributes:
        name: fully qualified name, e.g. ``"layer1.0.conv1.weight"``.
        module_name: fully qualified name of the owning module (``""`` for the root).
        module: the owning module.
        attr: the attribute under which the module's forward reads it.
        kind: how the effective value is produced.
    """

    name: str
    module_name: str
    module: nn.Module
    attr: str
    kind: SlotKind

    def value(self) -> Tensor:
        """The effective weight now (computed for pruned and parametrized slots)."""
        if self.kind == "pruned":
            orig = getattr(self.module, self.attr + "_orig")
            mask = getattr(self.module, self.attr + "_mask")
            return orig * mask
        return getattr(self.module, self.attr)

    def numel(self) -> int:
        """Number of entries of the effective weight."""
        if self.kind == "pruned":
            return getattr(self.module, self.attr + "_orig").numel()
        if self.kind == "parametrized":
            with torch.no_grad(), parametrize.cached():
                return self.value().numel()
        return getattr(self.module, self.attr).numel()

    def is_meta(self) -> bool:
        """Whether the values live on the meta device (no values to count)."""
        if self.kind == "pruned":
            return getattr(self.module, self.attr + "_orig").is_meta
        if self.kind == "parametrized":
            return any(p.is_meta for p in self.module.parametrizations[self.attr].parameters())  # type: ignore[index,union-attr]
        return getattr(self.module, self.attr).is_meta

    def signature(self) -> tuple[object, ...]:
        """What, if changed, invalidates a trace: identity, kind, shape, dtype, device."""
        if self.kind == "plain":
            t: Tensor = getattr(self.module, self.attr)
            if isinstance(t, nn.parameter.UninitializedParameter):  # lazy: set by a forward
                return (self.name, self.kind, id(t), "uninitialized")
            return (self.name, self.kind, id(t), tuple(t.shape), t.dtype, t.device)
        return (self.name, self.kind, id(self.module), self.attr)


def _pruned_names(module: nn.Module) -> Iterator[str]:
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, prune.BasePruningMethod):
            yield hook._tensor_name


def find_slots(model: nn.Module) -> list[Slot]:
    """Every effective parameter of ``model`` once, in ``named_modules`` order.

    Args:
        model: the model.

    Returns:
        The slots; tied parameters appear once.
    """
    slots: list[Slot] = []
    seen: set[int] = set()
    # tensors that only feed a reparametrization are not parameters of their own, also
    # where another module holds the same tensor as a plain parameter (a tied weight)
    for module in model.modules():
        if parametrize.is_parametrized(module):
            seen.update(id(p) for p in module.parametrizations.parameters())  # type: ignore[union-attr]
        seen.update(id(getattr(module, attr + "_orig")) for attr in _pruned_names(module))
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        if parametrize.is_parametrized(module):
            for attr in module.parametrizations:
                slots.append(Slot(prefix + attr, module_name, module, attr, "parametrized"))
        for attr in _pruned_names(module):
            slots.append(Slot(prefix + attr, module_name, module, attr, "pruned"))
        for attr, param in module._parameters.items():
            if param is None or id(param) in seen:
                continue
            seen.add(id(param))
            slots.append(Slot(prefix + attr, module_name, module, attr, "plain"))
    return slots
