"""What the pruner ranks weights by: the ``score=`` criteria and what they accumulate.

Every criterion gives one score per weight entry (higher = kept longer); the pruner then
ranks these scores exactly as it ranks magnitudes, so every allocation, granularity (rows
score by the norm of their entries' scores, N:M groups by the ``M - N`` smallest) and FLOP
target treats them alike. Already pruned entries are pruned first whatever their score,
so pruning stays monotone.

==============  =========================================================================
``magnitude``   ``|w|`` (the default; the weights themselves are ranked, nothing copied)
``random``      a fixed uniform draw per entry from ``seed`` and the parameter's name
                (``torch.Generator(device).manual_seed(crc32(f"{seed}:{fqn}"))``, then
                ``torch.rand(shape)``): the same on every rank, after every resume, and
                nested from one prune to the next (the baseline every paper needs)
``taylor``      ``Σ_t |w_t · g_t|`` over the optimizer steps since the last prune
                (first-order Taylor importance; Molchanov et al. 2019)
``movement``    ``−Σ_t w_t · g_t`` over the same steps (Sanh et al. 2020): weights moving
                toward zero score low; scores may be negative
``wanda``       ``|w_ij| · ‖x_j‖₂``, ``‖x_j‖₂² = Σ x_j²`` over every input row the layer saw
                in training mode since the last prune (Sun et al. 2023). Linear: ``x_j`` is
                input feature ``j``; convolutions: input channel ``j`` over the batch and
                every position (the per-channel extension; a kernel tap reads shifted
                positions of the same channel)
callable        ``fn(fqn, weight, state) -> scores`` of the weight's shape (``state``:
                :class:`ScoreState`); any finite values, higher = kept
==============  =========================================================================

``g_t`` is the gradient the optimizer steps with (after gradient accumulation, unscaled under
AMP; a step the scaler skips adds nothing), read by a step pre-hook that
:meth:`MagnitudePruner.attach` registers; inputs by forward pre-hooks that
:meth:`MagnitudePruner.observe` registers. Accumulators live beside the weights, in
``float32`` or wider, updated on the device without a host sync; they are zeroed after each
prune and travel in the pruner's state (checkpoints) so a resume continues them.

Distributed: under DDP the gradients are averaged before the step, so ``taylor`` and
``movement`` accumulate the same values on every rank; ``wanda``'s input norms differ per
rank and are all-reduced (summed) at each prune and by :meth:`Scores.sync` (the callback
calls it at every epoch end, before checkpoints are written, so a resumed run holds the sum).
Sharded (FSDP2) weights accumulate ``taylor``/``movement`` on their local chunks; those
accumulators are not kept in checkpoints (a resume starts them again, with a warning);
``wanda``'s per-feature sums are whole on every rank and summed over all of them.

Signed scores (``movement``, callables) are shifted by the smallest score over all pruned
weights (in ``float64``) before ranking: the order is kept, the ranking sees values ``>= 0``.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lightning_sparsity._checks import import_path
from lightning_sparsity._shards import is_sharded, local

__all__ = [
    "SCORES",
    "ScoreFn",
    "ScoreName",
    "ScoreState",
    "Scores",
    "random_scores",
    "rows_of_rank",
]

ScoreName = Literal["magnitude", "random", "taylor", "movement", "wanda"]
SCORES: tuple[ScoreName, ...] = ("magnitude", "random", "taylor", "movement", "wanda")
_GRADS = ("taylor", "movement")
_INPUTS = ("wanda",)

Target = tuple[str, nn.Module, str]  # (module FQN, module, parameter name)


@dataclass(frozen=True)
class ScoreState:
    """What a callable score sees besides the weight.

    Attributes:
        steps: Optimizer steps since the last prune (those :meth:`MagnitudePruner.attach`
            saw).
        seed: The pruner's ``seed``.
        module: The module that owns the weight (its ``.grad`` is the last step's).
    """

    steps: int
    seed: int
    module: nn.Module


ScoreFn = Callable[[str, Tensor, ScoreState], Tensor]


def random_scores(seed: int, fqn: str, shape: Sequence[int], device: torch.device) -> Tensor:
    """The ``random`` criterion's scores of one whole weight (see the module docstring)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(zlib.crc32(f"{seed}:{fqn}".encode()))
    return torch.rand(tuple(shape), generator=generator, device=device, dtype=torch.float32)


def rows_of_rank(whole: Tensor) -> tuple[int, int]:
    """The first row and the row count of this rank's ``Shard(0)`` chunk (``torch.chunk``)."""
    rows = whole.shape[0]
    mesh = whole.device_mesh  # type: ignore[attr-defined]
    size, rank = mesh.size(0), mesh.get_local_rank(0)
    per = -(-rows // size)
    first = min(rank * per, rows)
    return first, max(0, min(rows, first + per) - first)


def _wanda_layout(module: nn.Module) -> str | None:
    """Why a module's ``weight`` has no wanda score, or ``None``."""
    if isinstance(module, nn.Linear):
        return None
    if isinstance(module, nn.modules.conv._ConvNd):
        if module.transposed and module.groups != 1:
            return "a grouped transposed convolution"
        return None
    return f"{type(module).__name__} (wanda reads the inputs of Linear and convolution layers)"


class Scores:
    """The criterion of one pruner, its accumulators and the hooks that fill them."""

    def __init__(self, score: ScoreName | ScoreFn, seed: int) -> None:
        self.score = score
        self.seed = seed
        self.steps = 0  # optimizer steps (taylor, movement) or forwards (wanda) accumulated
        self._sums: dict[str, Tensor] = {}  # parameter FQN -> accumulator (local shard)
        self._params: dict[str, Tensor] = {}  # parameter FQN -> the parameter stepped
        self._modules: dict[str, nn.Module] = {}
        self._loaded: dict[str, Any] = {}
        self._sharded = False

    # ------------------------------------------------------------------ what is needed
    @property
    def name(self) -> str:
        """The criterion's name (a callable's import path)."""
        return import_path(self.score) if callable(self.score) else str(self.score)

    @property
    def accumulates(self) -> bool:
        """Whether the criterion collects gradients or inputs between prunes."""
        return self.score in _GRADS or self.score in _INPUTS

    def problems(self, targets: Sequence[Target]) -> list[str]:
        """Pruned parameters this criterion cannot score, with why."""
        if self.score not in _INPUTS:
            return []
        out = []
        for fqn, module, name in targets:
            why = "not a layer's `weight`" if name != "weight" else _wanda_layout(module)
            if why is not None:
                out.append(f"{_pname(fqn, name)}: {why}")
        return out

    def problems_or_raise(self, targets: Sequence[Target]) -> None:
        """Raise a ValueError naming the targets this criterion cannot score."""
        bad = self.problems(targets)
        if bad:
            raise ValueError(
                f"MagnitudePruner: score={self.name!r} cannot score {'; '.join(bad)}; prune"
                " those with another score, or leave them out (exclude=, include_types=)"
            )

    # ------------------------------------------------------------------ accumulation
    def observe(
        self, targets: Sequence[Target], trained: Callable[[nn.Module, str], Any]
    ) -> list[Any]:
        """Set up the accumulators of ``targets``; for ``wanda``, hooks on their modules.

        Returns the hook handles (``handle.remove()`` detaches them).

        Raises:
            ValueError: if ``wanda`` cannot score a target (named).
        """
        if not self.accumulates:
            return []
        self.problems_or_raise(targets)
        handles = []
        sums: dict[str, Tensor] = {}
        for fqn, module, name in targets:
            key = _pname(fqn, name)
            param = trained(module, name)
            self._sharded |= self.score in _GRADS and is_sharded(param)  # local chunks
            self._params[key] = param
            self._modules[key] = module
            mine = local(param.detach())
            dtype = torch.promote_types(mine.dtype, torch.float32)
            if self.score in _GRADS:
                shape: tuple[int, ...] = tuple(mine.shape)
            else:
                shape = (_in_features(module),)
            old = self._sums.get(key)
            if old is not None and tuple(old.shape) == shape and old.device == mine.device:
                sums[key] = old
            else:
                sums[key] = torch.zeros(shape, dtype=dtype, device=mine.device)
            if self.score in _INPUTS:
                handles.append(module.register_forward_pre_hook(self._input_hook(key)))
        self._sums = sums
        self._take_loaded()
        return handles

    def _input_hook(self, key: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if not module.training or not args or not isinstance(args[0], Tensor):
                return
            x = args[0].detach()
            acc = self._sums[key]
            if isinstance(module, nn.Linear):
                flat = x.reshape(-1, x.shape[-1])
                acc.add_(torch.linalg.vector_norm(flat, 2, dim=0, dtype=acc.dtype).square_())
            else:  # channels at dim 1 (dim 0 of an unbatched input)
                dim = 1 if x.dim() == module.weight.dim() else 0  # type: ignore[operator]
                dims = [d for d in range(x.dim()) if d != dim]
                acc.add_(torch.linalg.vector_norm(x, 2, dim=dims, dtype=acc.dtype).square_())
            if key == next(iter(self._sums)):
                self.steps += 1

        return hook

    def accumulate(self, parameters: set[int] | None = None) -> None:
        """Add this step's ``w · g`` of the observed weights (of ``parameters`` if given).

        Called before the optimizer steps (:meth:`MagnitudePruner.attach` registers it); no
        host sync. Weights without a gradient this step add nothing.
        """
        if self.score not in _GRADS or not self._sums:
            return
        counted = False
        for key, acc in self._sums.items():
            param = self._params[key]
            if parameters is not None and id(param) not in parameters:
                continue
            grad = param.grad
            if grad is None:
                continue
            w, g = local(param.detach()), local(grad.detach())
            if self.score == "movement":
                acc.addcmul_(w, g, value=-1.0)
            else:
                acc.add_(torch.mul(w, g).abs_())
            counted = True
        if counted:
            self.steps += 1

    def sync(self) -> None:
        """Sum ``wanda``'s input norms over the ranks: rank 0 holds the sum, others 0.

        Idempotent in the sum; a no-op in one process and for the other criteria. Every
        rank must call it.
        """
        if self.score not in _INPUTS or not self._sums or not _world():
            return
        self._summed_inputs(keep=dist.get_rank() == 0)

    def reset(self) -> None:
        """Forget what was accumulated (after a prune); the accumulators stay allocated."""
        for acc in self._sums.values():
            acc.zero_()
        self.steps = 0

    # ------------------------------------------------------------------ scores
    def of(
        self, targets: Sequence[Target], tensors: Sequence[Tensor], group: Any = None
    ) -> list[Tensor]:
        """The scores of ``targets`` (their trained ``tensors``, local shards), higher = kept.

        ``group``: the process group the weights are sharded over (signed scores shift by
        the smallest over all ranks).

        ``magnitude`` returns ``tensors`` themselves (the ranking takes ``|x|``).

        Raises:
            ValueError: if the criterion needs data it has not seen since the last prune,
                or a callable returns a wrong shape, dtype or device.
        """
        if self.score == "magnitude":
            return list(tensors)
        if self.score == "random":
            return [
                self._random(fqn, m, n, t) for (fqn, m, n), t in zip(targets, tensors, strict=True)
            ]
        if callable(self.score):
            return _shifted(self._called(targets, tensors), group)
        missing = [_pname(f, n) for f, _, n in targets if _pname(f, n) not in self._sums]
        if missing or self.steps == 0:
            what = "gradients" if self.score in _GRADS else "layer inputs"
            how = (
                "train with the pruner attached to the optimizer (pruner.observe(model) and"
                " pruner.attach(optimizer); SparsityCallback does both)"
                if self.score in _GRADS
                else "run forwards in training mode (model.train()) after"
                " pruner.observe(model) (SparsityCallback observes the training batches)"
            )
            listed = f" (not observed: {missing[:3]})" if missing else ""
            raise ValueError(
                f"MagnitudePruner: score={self.score!r} ranks by {what} accumulated since the"
                f" last prune, and none were{listed}: {how}. A schedule's first prune must"
                " come after a training step"
            )
        if self.score in _INPUTS:
            if _world():  # input features are whole on every rank (DDP and FSDP2)
                self._summed_inputs()
            return [
                _wanda(m, t, self._sums[_pname(f, n)], _first_row(m, n))
                for (f, m, n), t in zip(targets, tensors, strict=True)
            ]
        sums = [self._sums[_pname(f, n)] for f, _, n in targets]
        return _shifted(sums, group) if self.score == "movement" else sums

    def _summed_inputs(self, keep: bool = True) -> None:
        """All-reduce (sum) the input norms; ``keep=False`` zeroes this rank's after."""
        flat = torch.cat([s.reshape(-1) for s in self._sums.values()])
        dist.all_reduce(flat)
        if not keep:
            flat.zero_()
        start = 0
        for acc in self._sums.values():
            acc.copy_(flat[start : start + acc.numel()].view_as(acc))
            start += acc.numel()

    def _random(self, fqn: str, module: nn.Module, name: str, tensor: Tensor) -> Tensor:
        whole = _trained_param(module, name)
        key = _pname(fqn, name)
        if whole is not None and is_sharded(whole):
            first, rows = rows_of_rank(whole)
            full = random_scores(self.seed, key, tuple(whole.shape), tensor.device)
            return full[first : first + rows]
        return random_scores(self.seed, key, tuple(tensor.shape), tensor.device)

    def _called(self, targets: Sequence[Target], tensors: Sequence[Tensor]) -> list[Tensor]:
        fn = self.score
        assert callable(fn)
        out, errors = [], []
        for (fqn, module, name), t in zip(targets, tensors, strict=True):
            key = _pname(fqn, name)
            s = fn(key, t.detach(), ScoreState(self.steps, self.seed, module))
            if not isinstance(s, Tensor):
                errors.append(f"{key}: returned {type(s).__name__}, not a Tensor")
            elif tuple(s.shape) != tuple(t.shape):
                errors.append(f"{key}: shape {tuple(s.shape)}, the weight {tuple(t.shape)}")
            elif s.device != t.device:
                errors.append(f"{key}: on {s.device}, the weight on {t.device}")
            else:
                out.append(s.detach())
        if errors:
            raise ValueError(
                f"MagnitudePruner: score={self.name} must return one float score per weight"
                f" entry (the weight's shape and device): {'; '.join(errors)}"
            )
        return out

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The accumulators (CPU copies) and the step count; empty when nothing accumulates."""
        if not self.accumulates:
            return {}
        if self._sharded:
            return {"steps": self.steps, "sums": {}, "sharded": True}
        if self._loaded and not self._sums:  # read, not yet observed: pass it on
            return dict(self._loaded)
        return {"steps": self.steps, "sums": {k: v.cpu() for k, v in self._sums.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Read :meth:`state_dict`; the accumulators are filled at the next :meth:`observe`."""
        self._loaded = dict(state)
        if self._sums:
            self._take_loaded()

    def _take_loaded(self) -> None:
        loaded, self._loaded = self._loaded, {}
        if not loaded:
            return
        if loaded.get("sharded"):
            import warnings

            warnings.warn(
                f"score={self.name!r}: the checkpoint holds no accumulators of sharded weights;"
                " they start again from this resume",
                UserWarning,
                stacklevel=4,
            )
            return
        for key, saved in dict(loaded.get("sums", {})).items():
            acc = self._sums.get(key)
            if acc is not None and tuple(acc.shape) == tuple(saved.shape):
                acc.copy_(saved.to(acc.device, acc.dtype))
        self.steps = int(loaded.get("steps", 0))


def _pname(fqn: str, name: str) -> str:
    return f"{fqn}.{name}" if fqn else name


def _trained_param(module: nn.Module, name: str) -> Tensor | None:
    return module._parameters.get(name + "_orig", module._parameters.get(name))


def _world() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _in_features(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.in_features
    assert isinstance(module, nn.modules.conv._ConvNd)
    return module.in_channels


def _first_row(module: nn.Module, name: str) -> int:
    """The first row this rank holds of a ``Shard(0)`` weight (0 for a whole one)."""
    whole = _trained_param(module, name)
    return rows_of_rank(whole)[0] if whole is not None and is_sharded(whole) else 0


def _wanda(module: nn.Module, weight: Tensor, squares: Tensor, first: int) -> Tensor:
    """``|w_ij| · ‖x_j‖₂`` of one layer's rows from ``first``.

    ``squares``: the layer inputs' ``Σ x_j²`` per feature.
    """
    norms = squares.sqrt()
    w = weight.detach().abs().to(norms.dtype)
    if isinstance(module, nn.Linear):
        return w * norms
    assert isinstance(module, nn.modules.conv._ConvNd)
    extra = (1,) * (w.dim() - 2)
    rows = w.shape[0]
    if module.transposed:  # weight [in, out / groups, *k]: dim 0 reads input channel j
        return w * norms[first : first + rows].view(rows, 1, *extra)
    groups = module.groups
    out, per = module.out_channels, module.in_channels // groups
    # entry (o, c) reads channel (o // (out / groups)) * per + c
    table = norms.view(groups, 1, per).expand(groups, out // groups, per).reshape(out, per)
    return w * table[first : first + rows].view(rows, per, *extra)


def _shifted(scores: list[Tensor], group: Any) -> list[Tensor]:
    """Signed scores as ``s - min(min s, 0)`` in ``float64``: the order kept, ``>= 0``.

    The minimum stays on the device (sharded: all-reduced over ``group``): no host sync.
    """
    device = scores[0].device
    lows = [s.min().to(torch.float64) for s in scores if s.numel()]
    low = torch.stack(lows).min() if lows else torch.zeros((), dtype=torch.float64, device=device)
    if group is not None:
        dist.all_reduce(low, op=dist.ReduceOp.MIN, group=group)
    low = torch.clamp(low, max=0.0)
    return [s.to(torch.float64) - low for s in scores]
