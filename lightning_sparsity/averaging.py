"""Masks through Lightning's weight averaging (``StochasticWeightAveraging``, ``WeightAveraging``).

Both callbacks (``EMAWeightAveraging`` is a ``WeightAveraging``) keep an averaged copy of
the model, a ``deepcopy`` made at ``setup`` (before any pruning), and pair its tensors with
the model's by position: to average after steps or epochs, to swap the average in for
validation, and to copy it into the model when training ends. With masks, three things go
wrong there:

- the copy averages the values pruned entries had before pruning (SWA from its first
  epoch on, EMA decaying them slowly), and the model gets them back at the end: dense
  weights under a history that says 80% are zero;
- the model's mask buffers (``<name>_keep``, ``<name>_mask``) are buffers the copy lacks:
  ``WeightAveraging`` pairs the copy's BatchNorm statistics with masks (a crash);
- ``"prune"`` storage's ``weight_orig`` (kept in ``weight``'s place, see
  :mod:`~lightning_sparsity.pruning.masks`) lines up with the copy's ``weight``.

:class:`AveragedCopies` wraps, on each such callback instance, the methods that pair the
two models (undone by :meth:`AveragedCopies.detach`). Inside them the model's mask buffers
are hidden; after each update the copy's pruned entries are zeroed (so it is the average of
kept entries, and checkpoints holding it are pruned); after the copy replaces the model's
weights the masks are written again and :attr:`AveragedCopies.swapped_in` tells the callback
to count the model again. Lightning-free: the callbacks are recognized by class name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_sparsity.pruning.masks import (
    enforce,
    hidden,
    is_masked,
    multiply_by_keeps,
    remove,
    trained_and_mask,
)

__all__ = ["AveragedCopies", "averaging_kind"]

Masked = Callable[[], Sequence[tuple[nn.Module, str]]]
_PACKAGES = ("pytorch_lightning.", "lightning.pytorch.")
_SWA, _WA = "StochasticWeightAveraging", "WeightAveraging"


def averaging_kind(callback: object) -> str | None:
    """Which of Lightning's weight-averaging callbacks ``callback`` is, if any.

    Returns:
        ``"StochasticWeightAveraging"`` or ``"WeightAveraging"`` (of either Lightning
        package, subclasses such as ``EMAWeightAveraging`` too), else ``None``.
    """
    for cls in type(callback).__mro__:
        if cls.__name__ in (_SWA, _WA) and cls.__module__.startswith(_PACKAGES):
            return cls.__name__
    return None


def _strip(copy: nn.Module) -> None:
    """Drop any masks a copy carries (zeros stay): it must look like an unmasked model."""
    for module in copy.modules():
        for key in list(module._parameters):
            name = key.removesuffix("_orig")
            if is_masked(module, name):
                remove(module, name)


class AveragedCopies:
    """The averaged copies that weight-averaging callbacks keep of a masked model.

    Args:
        model: The model being pruned.
        masked: Returns its masked ``(module, parameter name)`` pairs (they change as it is
            pruned).
    """

    def __init__(self, model: nn.Module, masked: Masked) -> None:
        self.model = model
        self.masked = masked
        self.swapped_in = False
        self._fqns = {id(m): fqn for fqn, m in model.named_modules()}
        self._copies: list[dict[str, nn.Module]] = []
        self._patched: list[tuple[object, str]] = []
        self._moved: dict[tuple[int, int, str], tuple[Tensor, int, Tensor]] = {}

    def attach(self, callbacks: Iterable[object]) -> list[str]:
        """Take over the weight-averaging callbacks among ``callbacks`` (after their setup).

        Returns:
            The class names of those whose averaged copy or methods were not found (another
            Lightning version): their averages are not masked.
        """
        missing: list[str] = []
        for callback in callbacks:
            kind = averaging_kind(callback)
            if kind is None:
                continue
            average: Any = getattr(callback, "_average_model", None)
            copy = getattr(average, "module", None) if kind == _WA else average
            after_update = (lambda c=copy: self._mask(c)) if copy is not None else None
            methods: list[tuple[object, str, Callable[[], None] | None]] = (
                [
                    (average, "update_parameters", after_update),
                    (callback, "_swap_models", None),
                    (callback, "_copy_average_to_current", self._swapped),
                ]
                if kind == _WA
                else [
                    (callback, "update_parameters", after_update),
                    (callback, "transfer_weights", self._swapped),
                ]
            )
            if not isinstance(copy, nn.Module) or not all(
                callable(getattr(obj, attr, None)) for obj, attr, _ in methods
            ):
                missing.append(type(callback).__name__)
                continue
            _strip(copy)
            self._copies.append(dict(copy.named_modules()))
            for obj, attr, after in methods:
                self._patch(obj, attr, after)
        self.mask()
        return missing

    def detach(self) -> None:
        """Give the callbacks their own methods back."""
        for obj, attr in reversed(self._patched):
            if attr in vars(obj):
                delattr(obj, attr)
        self._patched = []
        self._copies = []
        self._moved = {}

    def mask(self) -> None:
        """Zero the pruned entries of every averaged copy (after the masks changed)."""
        for copy in self._copies:
            self._mask(copy)

    # ------------------------------------------------------------------ internals

    def _patch(self, obj: object, attr: str, after: Callable[[], None] | None) -> None:
        """Shadow ``obj.attr`` by an instance attribute that hides the masks around it."""
        original = getattr(obj, attr)

        def patched(*args: Any, **kwargs: Any) -> Any:
            with hidden(self.masked()):
                out = original(*args, **kwargs)
            if after is not None:
                after()
            return out

        object.__setattr__(obj, attr, patched)
        self._patched.append((obj, attr))

    def _swapped(self) -> None:
        """The copy's values replaced the model's: write the zeros again, count again."""
        enforce(self.masked())
        self.swapped_in = True

    def _mask(self, copy: nn.Module | dict[str, nn.Module]) -> None:
        modules = copy if isinstance(copy, dict) else dict(copy.named_modules())
        pairs: list[tuple[Tensor, Tensor]] = []
        for module, name in self.masked():
            target = modules.get(self._fqns.get(id(module), ""))
            tensor = None if target is None else target._parameters.get(name)
            keep = trained_and_mask(module, name)[1]
            if tensor is None or keep is None or tensor.shape != keep.shape:
                continue
            key = (id(modules), id(module), name)
            pairs.append((tensor.detach(), self._on(keep, tensor.device, key)))
        multiply_by_keeps(pairs)

    def _on(self, keep: Tensor, device: torch.device, key: tuple[int, int, str]) -> Tensor:
        """``keep`` on ``device``, copied once per mask (the copy may live on the CPU)."""
        if keep.device == device:
            return keep
        cached = self._moved.get(key)
        if cached is not None and cached[0] is keep and cached[1] == keep._version:
            return cached[2]
        moved = keep.to(device)
        self._moved[key] = (keep, keep._version, moved)
        return moved
