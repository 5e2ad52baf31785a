"""Magnitude pruning to an exact sparsity or a FLOP target, with prune-compatible masks.

Sparsity is the fraction of zeros among the pruned weights (the :meth:`MagnitudePruner.targets`),
a float in ``[0, 1)``.

Masks use the :mod:`torch.nn.utils.prune` reparametrization: the parameter ``weight``
becomes ``weight_orig`` (still trained), the buffer ``weight_mask`` (1 = keep, in the weight's
dtype) is added, and a forward pre-hook (a :class:`torch.nn.utils.prune.Identity`) sets
``module.weight = weight_orig * weight_mask`` before every forward. So
:func:`torch.nn.utils.prune.remove` works, and a masked weight stays zero through optimizer
steps (``weight_orig`` may move; the effective weight does not). Re-pruning replaces the mask
buffer in place of stacking pruning containers.

Pruning is monotone: scores are computed on the effective (masked) weights and already
pruned entries are always pruned first, so a weight once pruned stays pruned. A target below
the current sparsity prunes nothing more (with a warning).
"""

from __future__ import annotations

import functools
import math
import re
import warnings
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize, prune

from lightning_sparsity.pruning.schedules import Schedule
from lightning_sparsity.pruning.select import Cut, _cuts, _keep_masks, _Source, _sources

__all__ = ["DEFAULT_INCLUDE_TYPES", "MagnitudePruner", "erk_densities"]

Allocation = Literal["global", "uniform", "erk", "flops"]
ALLOCATIONS: tuple[str, ...] = get_args(Allocation)
DEFAULT_INCLUDE_TYPES = (
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "Linear",
)

Target = tuple[str, nn.Module, str]

_TIED = "tied to several modules, its prune mask (a forward pre-hook) would not reach every reader"
_BYPASSED = (
    "read by nn.MultiheadAttention without its module's forward, its prune mask (a forward"
    " pre-hook) would not reach that reader"
)
_COMPUTED = (
    "computed by a parametrization (weight_norm, spectral_norm): it has no entries of its own"
    " to zero"
)


def erk_densities(shapes: Sequence[Sequence[int]], density: float) -> list[float]:
    """Erdős–Rényi-Kernel layer densities (Evci et al. 2020, RigL), as in RigL's code.

    A layer's density is ``eps * sum(shape) / prod(shape)``, with ``eps`` set so the kept
    weights add up to ``density * sum(numel)``. Layers whose density would exceed 1 are kept
    dense (largest raw density first) and ``eps`` is solved again for the rest.

    Args:
        shapes: The weight shapes, e.g. ``(out, in, kh, kw)`` for a 2-D convolution.
        density: The overall fraction of weights to keep, in ``(0, 1]``.

    Returns:
        One density in ``(0, 1]`` per shape.

    Raises:
        ValueError: If ``density`` is not in ``(0, 1]`` or a shape is empty.
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"`density` must be in (0, 1], got {density!r}")
    if any(len(s) == 0 or math.prod(s) == 0 for s in shapes):
        raise ValueError(f"every shape must be non-empty, got {[tuple(s) for s in shapes]}")
    numels = [math.prod(s) for s in shapes]
    raw = [sum(s) / n for s, n in zip(shapes, numels, strict=True)]
    dense: set[int] = set()
    while len(dense) < len(shapes):
        sparse = [i for i in range(len(shapes)) if i not in dense]
        rhs = sum(density * numels[i] for i in sparse) - sum(
            (1.0 - density) * numels[i] for i in dense
        )
        eps = rhs / sum(raw[i] * numels[i] for i in sparse)
        top = max(raw[i] for i in sparse)
        if eps * top <= 1.0:
            return [1.0 if i in dense else eps * raw[i] for i in range(len(shapes))]
        dense.update(i for i in sparse if raw[i] == top)
    return [1.0] * len(shapes)


def _pruning_hook(module: nn.Module, name: str) -> prune.BasePruningMethod | None:
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, prune.BasePruningMethod) and hook._tensor_name == name:
            return hook
    return None


def _orig_and_mask(module: nn.Module, name: str) -> tuple[Tensor, Tensor | None]:
    """The trained tensor and the current keep mask (``None`` when not pruned)."""
    if name + "_orig" in module._parameters and name + "_mask" in module._buffers:
        return module._parameters[name + "_orig"], module._buffers[name + "_mask"]  # type: ignore[return-value]
    return module._parameters[name], None  # type: ignore[return-value]


def _orig_param(module: nn.Module, name: str) -> Tensor | None:
    """The parameter ``name`` of ``module`` (its ``_orig`` when pruned), or ``None``."""
    return module._parameters.get(name + "_orig", module._parameters.get(name))


def _split(targets: list[Target]) -> tuple[list[Tensor], list[Tensor | None]]:
    pairs = [_orig_and_mask(module, name) for _, module, name in targets]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _expand_rows(
    origs: list[Tensor], masks: list[Tensor | None], row_masks: list[Tensor]
) -> list[Tensor]:
    """Entry masks (weight dtype) from row masks, combined with the current masks."""
    keeps = []
    for orig, mask, row_mask in zip(origs, masks, row_masks, strict=True):
        shape = (-1,) + (1,) * (orig.dim() - 1)
        keep = row_mask.reshape(shape).expand_as(orig).to(orig.dtype)
        keeps.append(keep if mask is None else keep * mask)
    return keeps


def _effective(module: nn.Module, name: str) -> Tensor:
    orig, mask = _orig_and_mask(module, name)
    return orig.detach() if mask is None else orig.detach() * mask


def _param_name(fqn: str, name: str) -> str:
    """``"layer1.conv"`` + ``"weight"`` → ``"layer1.conv.weight"`` (the root has no prefix)."""
    return f"{fqn}.{name}" if fqn else name


def _load_plain(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any, name: str
) -> None:
    """Let a pruned module load a plain checkpoint (``weight`` with its zeros in place).

    Checkpoints written through SparsityCallback hold plain weights; the mask is taken as
    their nonzeros. A reparametrized state (``weight_orig``/``weight_mask``) loads as usual.
    """
    key = prefix + name
    if _pruning_hook(module, name) is None or key not in state_dict:
        return
    if key + "_orig" in state_dict or key + "_mask" in state_dict:
        return
    weight = state_dict.pop(key)
    state_dict[key + "_orig"] = weight
    state_dict[key + "_mask"] = (weight != 0).to(getattr(module, name + "_mask").dtype)


def _fill_gap(
    origs: list[Tensor],
    masks: Sequence[Tensor | None],
    keeps: list[Tensor],
    costs: list[float],
    gap: float,
) -> None:
    """Keep back just-pruned weights, largest first, whose cost fits in ``gap`` (in place).

    After the shortest magnitude prefix that reaches a FLOP target, the sparse FLOPs sit up
    to one (costly) weight below it; restoring the largest of the weights this step pruned
    whose FLOP cost still fits closes the gap to under the cheapest such cost.
    """
    candidates: list[tuple[float, int, int]] = []  # (|w|, tensor index, flat index)
    for t, (orig, mask, keep, cost) in enumerate(zip(origs, masks, keeps, costs, strict=True)):
        if not 0 < cost <= gap:
            continue
        newly = (keep == 0) & (orig != 0)
        if mask is not None:
            newly &= mask != 0
        scores = torch.where(newly, orig.abs(), torch.full_like(orig, -1.0)).reshape(-1)
        k = min(int(gap // cost), int(newly.sum()))
        if k:
            values, index = torch.topk(scores.float(), k)
            candidates += [(v, t, i) for v, i in zip(values.tolist(), index.tolist(), strict=True)]
    candidates.sort(key=lambda c: (-c[0], c[1], c[2]))  # largest first; ties in a fixed order
    for _, t, i in candidates:
        if costs[t] <= gap:
            keeps[t].view(-1)[i] = 1
            gap -= costs[t]


def _set_mask(module: nn.Module, name: str, keep: Tensor) -> None:
    """Install ``keep`` (weight dtype) as the prune mask, reusing an existing reparametrization."""
    if _pruning_hook(module, name) is None:
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


class MagnitudePruner:
    """Prunes the smallest-magnitude weights of chosen layers to a target sparsity or FLOPs.

    Knows nothing of Lightning: call :meth:`apply` (or :meth:`step` with a schedule) yourself,
    or let ``SparsityCallback`` do it.

    Allocation of a sparsity ``s`` over the chosen weights (``N`` entries in all; layers
    kept dense are not among them; ``round`` is Python's, half to even):

    - ``"global"``: one magnitude threshold over all of them; exactly ``round(s * N)``
      entries are pruned.
    - ``"uniform"``: every layer gets ``round(s * numel)`` pruned entries.
    - ``"erk"``: layer densities from :func:`erk_densities`; layer ``l`` gets
      ``round((1 - d_l) * numel_l)`` pruned entries.
    - ``"flops"``: one threshold on ``|w| * mean_cost / cost_l``, where ``cost_l`` is the
      layer's FLOPs per nonzero weight and ``mean_cost`` its weight-count-weighted mean over
      the chosen layers: layers that cost more FLOPs per weight are pruned harder, so the same
      sparsity removes more FLOPs. Exactly ``round(s * N)`` entries are pruned.

    With ``structured=True`` whole rows along dim 0 (output channels / features) are pruned,
    scored by their ``norm``-norm. Per layer (``"uniform"``, ``"erk"``):
    ``round(s_l * rows)`` rows. Globally (``"global"``, ``"flops"``): rows of different
    layers compare by the normalized norm ``||row||_p / row_numel ** (1 / p)``, and rows are
    removed until the pruned entries land closest to ``round(s * N)``.

    Args:
        schedule: Target sparsity per epoch, for :meth:`step` and the callback.
        allocation: One of ``("global", "uniform", "erk", "flops")``.
        structured: Prune whole rows (dim 0) instead of single weights.
        norm: The ``p`` of the row norm for structured pruning, > 0 (``inf`` allowed).
        include_types: Module class names whose parameter is pruned.
        include: Regexes; if given, a module is pruned only if its fully qualified name
            matches one of them (``re.search``: anchor with ``^``/``$``).
        exclude: Regexes; modules whose name matches one of them are never pruned.
        keep_first_dense: Leave the first chosen layer (registration order) dense.
        keep_last_dense: Leave the last chosen layer dense.
        parameter_name: The parameter of each module to prune.

    Raises:
        ValueError: If any argument is invalid; all problems are reported at once.
    """

    def __init__(
        self,
        schedule: Schedule | None = None,
        allocation: Allocation = "global",
        structured: bool = False,
        norm: float = 1.0,
        include_types: Sequence[str] = DEFAULT_INCLUDE_TYPES,
        include: list[str] | None = None,
        exclude: list[str] | None = None,
        keep_first_dense: bool = False,
        keep_last_dense: bool = False,
        parameter_name: str = "weight",
    ) -> None:
        errors: list[str] = []
        if schedule is not None and not isinstance(schedule, Schedule):
            errors.append(f"`schedule` must be a Schedule or None, got {schedule!r}")
        if allocation not in ALLOCATIONS:
            errors.append(f"`allocation` must be one of {ALLOCATIONS}, got {allocation!r}")
        flags = {
            "structured": structured,
            "keep_first_dense": keep_first_dense,
            "keep_last_dense": keep_last_dense,
        }
        errors += [
            f"`{k}` must be a bool, got {v!r}" for k, v in flags.items() if not isinstance(v, bool)
        ]
        if isinstance(norm, bool) or not isinstance(norm, (int, float)) or not norm > 0:
            errors.append(f"`norm` must be a number > 0 (inf allowed), got {norm!r}")
        if (
            isinstance(include_types, str)
            or not include_types
            or not all(isinstance(t, str) for t in include_types)
        ):
            errors.append(
                f"`include_types` must be a non-empty list of class names, got {include_types!r}"
            )
        patterns: dict[str, list[re.Pattern[str]]] = {}
        for arg, regexes in (("include", include), ("exclude", exclude)):
            patterns[arg] = []
            if regexes is None:
                continue
            if isinstance(regexes, str) or not all(isinstance(p, str) for p in regexes):
                errors.append(f"`{arg}` must be a list of regex strings or None, got {regexes!r}")
                continue
            for pattern in regexes:
                try:
                    patterns[arg].append(re.compile(pattern))
                except re.error as err:
                    errors.append(f"`{arg}` holds an invalid regex {pattern!r}: {err}")
        if not isinstance(parameter_name, str) or not parameter_name.isidentifier():
            errors.append(f"`parameter_name` must be an identifier, got {parameter_name!r}")
        if errors:
            raise ValueError("MagnitudePruner: " + "; ".join(errors))
        self.schedule = schedule
        self.allocation: Allocation = allocation
        self.structured = structured
        self.norm = float(norm)
        self.include_types = tuple(include_types)
        self.include = include
        self.exclude = exclude
        self.keep_first_dense = keep_first_dense
        self.keep_last_dense = keep_last_dense
        self.parameter_name = parameter_name
        self._include = patterns["include"]
        self._exclude = patterns["exclude"]
        self.last_sparsity: float | None = None
        self._model: weakref.ReferenceType[nn.Module] | None = None
        self._loaded_masks: dict[str, Tensor] = {}
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ selection of layers
    def targets(self, model: nn.Module) -> list[Target]:
        """The pruned parameters as ``(module FQN, module, parameter name)``, in registration order.

        Args:
            model: The model.

        Returns:
            The chosen parameters: modules that are (subclasses of) an ``include_types``
            class, pass ``include``/``exclude`` and hold the parameter;
            ``keep_first_dense``/``keep_last_dense`` applied. Left out, with a warning once
            naming why: a parameter tied to several modules, and the layers inside
            ``nn.MultiheadAttention`` (it reads ``out_proj.weight`` without calling
            ``out_proj``), since the mask would not reach every reader; a weight computed
            by a parametrization (``weight_norm``, ``spectral_norm``), which has no entries
            of its own to zero.
        """
        name = self.parameter_name
        chosen: list[Target] = []
        skipped: dict[str, str] = {}  # parameter -> why it is left out
        owners: dict[int, int] = {}
        bypassed: set[int] = set()
        for module in model.modules():
            for key in {id(p) for p in module.parameters(recurse=False)}:
                owners[key] = owners.get(key, 0) + 1
            if isinstance(module, nn.MultiheadAttention):
                bypassed.update(id(m) for m in module.modules() if m is not module)
        for fqn, module in model.named_modules():
            if not (
                any(cls.__name__ in self.include_types for cls in type(module).__mro__)
                and (not self._include or any(p.search(fqn) for p in self._include))
                and not any(p.search(fqn) for p in self._exclude)
            ):
                continue
            param = _orig_param(module, name)
            if param is None:
                if parametrize.is_parametrized(module, name) or hasattr(module, name + "_v"):
                    skipped[_param_name(fqn, name)] = _COMPUTED
                continue
            if owners.get(id(param), 0) > 1:
                skipped[_param_name(fqn, name)] = _TIED
            elif id(module) in bypassed:
                skipped[_param_name(fqn, name)] = _BYPASSED
            else:
                chosen.append((fqn, module, name))
        new = {k: why for k, why in skipped.items() if k not in self._warned}
        if new:
            self._warned.update(new)
            reasons = "; ".join(
                f"{sorted(k for k, w in new.items() if w == why)}: {why}"
                for why in dict.fromkeys(new.values())
            )
            warnings.warn(f"not pruning {reasons}", UserWarning, stacklevel=2)
        if self.keep_last_dense and chosen:
            chosen = chosen[:-1]
        if self.keep_first_dense and chosen:
            chosen = chosen[1:]
        return chosen

    def target_names(self, model: nn.Module) -> set[str]:
        """The fully qualified names of the pruned parameters (``"layer1.conv.weight"``)."""
        return {_param_name(fqn, name) for fqn, _, name in self.targets(model)}

    def _targets_or_raise(self, model: nn.Module) -> list[Target]:
        targets = self.targets(model)
        if not targets:
            raise ValueError(
                f"no parameter to prune: no module matches include_types={self.include_types},"
                f" include={self.include}, exclude={self.exclude} with a"
                f" {self.parameter_name!r} parameter (after keep_first_dense/keep_last_dense)"
            )
        return targets

    # ------------------------------------------------------------------ pruning
    def step(
        self,
        model: nn.Module,
        epoch: int,
        *,
        flops_per_nonzero: Mapping[str, float] | None = None,
    ) -> float | None:
        """Prune to ``schedule(epoch)`` if ``epoch`` is a pruning epoch of the schedule.

        Args:
            model: The model.
            epoch: The 0-based epoch that just ended.
            flops_per_nonzero: Needed for ``allocation="flops"`` (see :meth:`apply`).

        Returns:
            The target applied, or ``None`` when the schedule skips this epoch.

        Raises:
            ValueError: If the pruner has no schedule, or see :meth:`apply`.
        """
        if self.schedule is None:
            raise ValueError("MagnitudePruner.step needs a `schedule`, got None")
        if not self.schedule.is_pruning_epoch(epoch):
            return None
        sparsity = self.schedule(epoch)
        self.apply(model, sparsity, flops_per_nonzero=flops_per_nonzero)
        return sparsity

    def apply(
        self,
        model: nn.Module,
        sparsity: float,
        *,
        flops_per_nonzero: Mapping[str, float] | None = None,
    ) -> None:
        """Prune the chosen weights to ``sparsity`` (see the class docstring for the rounding).

        Args:
            model: The model; its chosen parameters get (or keep) prune masks.
            sparsity: Target fraction of zeros in ``[0, 1)``.
            flops_per_nonzero: FLOPs per nonzero weight keyed by parameter FQN
                (``"features.0.weight"``); required by ``allocation="flops"``.

        Raises:
            ValueError: If ``sparsity`` is out of range, no parameter is chosen, or
                ``allocation="flops"`` lacks a positive cost for a chosen parameter.
        """
        if (
            isinstance(sparsity, bool)
            or not isinstance(sparsity, (int, float))
            or not 0.0 <= sparsity < 1.0
        ):
            raise ValueError(f"`sparsity` must be a float in [0, 1), got {sparsity!r}")
        targets = self._targets_or_raise(model)
        scales = self._flop_scales(targets, flops_per_nonzero)
        origs, masks = _split(targets)
        per_layer: list[float] | None = None
        if self.allocation == "uniform":
            per_layer = [float(sparsity)] * len(targets)
        elif self.allocation == "erk":
            densities = erk_densities([tuple(o.shape) for o in origs], 1.0 - sparsity)
            per_layer = [1.0 - d for d in densities]
        if self.structured:
            keeps = self._structured_keeps(origs, masks, sparsity, scales, per_layer)
        else:
            sources = _sources(origs, masks, scales, None)
            if per_layer is not None:
                groups = [
                    ([src], round(s * src.tensor.numel()))
                    for src, s in zip(sources, per_layer, strict=True)
                ]
            else:
                groups = [(sources, round(sparsity * sum(o.numel() for o in origs)))]
            keeps = []
            for (group, _), cut in zip(groups, self._count_cuts(groups), strict=True):
                keeps += _keep_masks(group, cut, [src.tensor.dtype for src in group])
        for (_, module, name), keep in zip(targets, keeps, strict=True):
            _set_mask(module, name, keep)
        self.last_sparsity = float(sparsity)
        self._model = weakref.ref(model)

    def _count_cuts(self, groups: list[tuple[list[_Source], int]]) -> list[Cut]:
        """Exact-count cuts; a target below what is already pruned prunes nothing more."""
        clamped = 0
        fixed = []
        for sources, count in groups:
            pruned = sum(s.excluded for s in sources)
            clamped += count < pruned
            fixed.append((sources, float(max(count, pruned))))
        if clamped:
            warnings.warn(
                f"the target prunes fewer weights than already pruned in {clamped} group(s);"
                " pruning is monotone, so those keep their current masks",
                UserWarning,
                stacklevel=3,
            )
        return _cuts(fixed, weighted=False)

    def _flop_scales(
        self, targets: list[Target], flops_per_nonzero: Mapping[str, float] | None
    ) -> list[float] | None:
        if self.allocation != "flops":
            return None
        if flops_per_nonzero is None:
            raise ValueError('allocation="flops" needs `flops_per_nonzero`, got None')
        names = [_param_name(fqn, name) for fqn, _, name in targets]
        bad = {
            n: flops_per_nonzero.get(n)
            for n in names
            if not (
                isinstance(flops_per_nonzero.get(n), (int, float))
                and math.isfinite(flops_per_nonzero[n])
                and flops_per_nonzero[n] > 0
            )
        }
        if bad:
            raise ValueError(
                'allocation="flops" needs a finite cost > 0 in `flops_per_nonzero` for every'
                f" pruned parameter, got {bad}"
            )
        costs = [float(flops_per_nonzero[n]) for n in names]
        numels = [_orig_and_mask(m, n)[0].numel() for _, m, n in targets]
        mean = sum(c * k for c, k in zip(costs, numels, strict=True)) / sum(numels)
        return [mean / c for c in costs]

    def _structured_keeps(
        self,
        origs: list[Tensor],
        masks: list[Tensor | None],
        sparsity: float,
        scales: list[float] | None,
        per_layer: list[float] | None,
    ) -> list[Tensor]:
        """Row (dim 0) masks from the effective weights' row norms."""
        scores, row_keeps, row_sizes = self._row_scores(origs, masks)
        if per_layer is not None:
            sources = _sources(scores, row_keeps, None, None)
            groups = [
                ([src], round(s * src.tensor.numel()))
                for src, s in zip(sources, per_layer, strict=True)
            ]
            cuts = self._count_cuts(groups)
            row_masks = [_keep_masks(g, c)[0] for (g, _), c in zip(groups, cuts, strict=True)]
        else:
            row_scales = [1.0 / n ** (1.0 / self.norm) for n in row_sizes]
            if scales is not None:
                row_scales = [a * b for a, b in zip(row_scales, scales, strict=True)]
            target = round(sparsity * sum(o.numel() for o in origs))
            weights = [float(n) for n in row_sizes]
            row_masks = self._weighted_keeps(scores, row_keeps, weights, target, row_scales)
        return _expand_rows(origs, masks, row_masks)

    def _row_scores(
        self, origs: list[Tensor], masks: list[Tensor | None]
    ) -> tuple[list[Tensor], list[Tensor | None], list[int]]:
        """Per layer: the ``norm``-norms of the effective rows, the live rows, the row size."""
        scores: list[Tensor] = []
        row_keeps: list[Tensor | None] = []
        for orig, mask in zip(origs, masks, strict=True):
            rows = orig.shape[0] if orig.dim() else 1
            eff = orig.detach() if mask is None else orig.detach() * mask
            scores.append(torch.linalg.vector_norm(eff.reshape(rows, -1), ord=self.norm, dim=1))
            row_keeps.append(None if mask is None else (mask.reshape(rows, -1) != 0).any(1))
        return (
            scores,
            row_keeps,
            [o.numel() // s.numel() for o, s in zip(origs, scores, strict=True)],
        )

    def _weighted_keeps(
        self,
        tensors: list[Tensor],
        masks: Sequence[Tensor | None],
        weights: list[float],
        target: float,
        scales: list[float] | None,
        dtypes: list[torch.dtype] | None = None,
        warn: bool = True,
        reach: bool = False,
    ) -> list[Tensor]:
        sources = _sources(tensors, masks, scales, weights)
        already = sum(s.excluded * s.weight for s in sources)
        if warn and target < already:
            warnings.warn(
                f"the target ({target:g}) asks for less than is already pruned ({already:g});"
                " pruning is monotone, so the masks are kept",
                UserWarning,
                stacklevel=3,
            )
        (cut,) = _cuts([(sources, float(target))], weighted=True, reach=reach)
        return _keep_masks(sources, cut, dtypes)

    def apply_flop_target(
        self,
        model: nn.Module,
        target_flops: float,
        flops_per_nonzero: Mapping[str, float],
        fixed_flops: float = 0.0,
        *,
        not_above: bool = False,
    ) -> float:
        """Choose the global magnitude threshold whose sparse FLOPs land closest to a target.

        Sparse FLOPs are ``fixed_flops + sum(flops_per_nonzero[p] * nnz(p))`` over the
        parameters in ``flops_per_nonzero``. Pruned parameters missing from it cost 0 (they
        are still cut at the same threshold); entries for parameters that are not pruned
        (e.g. a first layer kept dense) count with their current nonzeros. The smallest
        weights are pruned first until the removed FLOPs are closest to what the target asks
        (within one weight's cost; see
        :func:`~lightning_sparsity.pruning.select.threshold_for_weighted_target`). With
        ``structured=True`` whole rows are removed (scores as in the class docstring). The
        cut is always global: ``allocation`` does not apply. Monotone: a target above the
        current FLOPs prunes nothing more (silently: the returned FLOPs say where it stands).

        Args:
            model: The model.
            target_flops: The sparse FLOPs wanted.
            flops_per_nonzero: FLOPs per nonzero weight keyed by parameter FQN.
            fixed_flops: FLOPs that no weight here changes (weight-free ops, ...).
            not_above: land at or below the target instead of closest to it (what a budget
                needs): the shortest magnitude prefix that reaches it, then the largest of
                the weights this call pruned whose FLOP cost fits in what is left are kept
                back: below the target, usually by less than the cheapest pruned cost.

        Returns:
            The sparse FLOPs after pruning, under the same cost model.

        Raises:
            ValueError: If a number is not finite or negative, a key of
                ``flops_per_nonzero`` names no parameter of ``model``, or no parameter is
                chosen.
        """
        errors = [
            f"`{arg}` must be a finite number >= 0, got {value!r}"
            for arg, value in (("target_flops", target_flops), ("fixed_flops", fixed_flops))
            if isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not (math.isfinite(value) and value >= 0)
        ]
        errors += [
            f"`flops_per_nonzero[{k!r}]` must be a finite number >= 0, got {v!r}"
            for k, v in flops_per_nonzero.items()
            if isinstance(v, bool)
            or not isinstance(v, (int, float))
            or not (math.isfinite(v) and v >= 0)
        ]
        if errors:
            raise ValueError("apply_flop_target: " + "; ".join(errors))
        targets = self._targets_or_raise(model)
        names = [_param_name(fqn, name) for fqn, _, name in targets]
        others = self._other_flops(model, flops_per_nonzero, set(names))
        origs, masks = _split(targets)
        costs = [float(flops_per_nonzero.get(n, 0.0)) for n in names]
        all_dense = (
            fixed_flops + others + sum(c * o.numel() for c, o in zip(costs, origs, strict=True))
        )
        if target_flops < fixed_flops + others:
            warnings.warn(
                f"target_flops={target_flops:g} is below what pruning these weights can reach"
                f" ({fixed_flops + others:g}); pruning every weight that costs FLOPs",
                UserWarning,
                stacklevel=2,
            )
        remove = all_dense - target_flops
        if self.structured:
            keeps = self._structured_flop_keeps(origs, masks, costs, remove, not_above)
        else:
            dtypes = [o.dtype for o in origs]
            keeps = self._weighted_keeps(
                origs, masks, costs, remove, None, dtypes, warn=False, reach=not_above
            )
            if not_above:
                kept = sum(
                    c * int(((o != 0) & (k != 0)).sum())
                    for c, o, k in zip(costs, origs, keeps, strict=True)
                )
                _fill_gap(origs, masks, keeps, costs, target_flops - fixed_flops - others - kept)
        for (_, module, name), keep in zip(targets, keeps, strict=True):
            _set_mask(module, name, keep)
        self._model = weakref.ref(model)
        nnz = torch.stack([_effective(m, n).count_nonzero() for _, m, n in targets]).tolist()
        return fixed_flops + others + sum(c * z for c, z in zip(costs, nnz, strict=True))

    def _structured_flop_keeps(
        self,
        origs: list[Tensor],
        masks: list[Tensor | None],
        costs: list[float],
        remove: float,
        not_above: bool = False,
    ) -> list[Tensor]:
        scores, row_keeps, row_sizes = self._row_scores(origs, masks)
        scales = [1.0 / n ** (1.0 / self.norm) for n in row_sizes]
        weights = [c * n for c, n in zip(costs, row_sizes, strict=True)]
        row_masks = self._weighted_keeps(
            scores, row_keeps, weights, remove, scales, warn=False, reach=not_above
        )
        return _expand_rows(origs, masks, row_masks)

    @staticmethod
    def _other_flops(
        model: nn.Module, flops_per_nonzero: Mapping[str, float], pruned: set[str]
    ) -> float:
        others = [k for k in flops_per_nonzero if k not in pruned]
        if not others:
            return 0.0
        modules = dict(model.named_modules())
        tensors, unknown = [], []
        for key in others:
            fqn, _, name = key.rpartition(".")
            module = modules.get(fqn)
            if module is None or _orig_param(module, name) is None:
                unknown.append(key)
            else:
                tensors.append(_effective(module, name).count_nonzero())
        if unknown:
            raise ValueError(f"`flops_per_nonzero` names no parameter of the model: {unknown}")
        nnz = torch.stack(tensors).tolist()
        return sum(flops_per_nonzero[k] * z for k, z in zip(others, nnz, strict=True))

    # ------------------------------------------------------------------ masks and state
    def masks(self, model: nn.Module) -> dict[str, Tensor]:
        """The boolean keep masks (True = keep) of the pruned targets, keyed by parameter FQN.

        Args:
            model: The model.

        Returns:
            ``{"features.0.weight": mask, ...}`` for every target that carries a mask.
        """
        out = {}
        for fqn, module, name in self.targets(model):
            _, mask = _orig_and_mask(module, name)
            if mask is not None:
                out[_param_name(fqn, name)] = mask != 0
        return out

    def apply_masks(self, model: nn.Module, masks: Mapping[str, Tensor]) -> None:
        """Install the given keep masks (they replace current ones), e.g. from a checkpoint.

        Args:
            model: The model.
            masks: Keep masks (nonzero = keep) keyed by parameter FQN.

        Raises:
            ValueError: If a key names no parameter of ``model`` or a mask's shape differs
                from its parameter's (all problems are reported at once).
        """
        modules = dict(model.named_modules())
        errors, resolved = [], []
        for key, mask in masks.items():
            fqn, _, name = key.rpartition(".")
            module = modules.get(fqn)
            if module is None or _orig_param(module, name) is None:
                errors.append(f"{key!r} names no parameter of the model")
                continue
            orig, _ = _orig_and_mask(module, name)
            if tuple(mask.shape) != tuple(orig.shape):
                errors.append(
                    f"mask {key!r} has shape {tuple(mask.shape)}, the parameter {tuple(orig.shape)}"
                )
                continue
            resolved.append((module, name, (mask != 0).to(device=orig.device, dtype=orig.dtype)))
        if errors:
            raise ValueError("apply_masks: " + "; ".join(errors))
        for module, name, keep in resolved:
            _set_mask(module, name, keep)
        self._model = weakref.ref(model)

    def restore(self, model: nn.Module) -> None:
        """Install the masks read by :meth:`load_state_dict` (then forget them).

        Args:
            model: The model the state was saved from (same architecture).

        Raises:
            ValueError: See :meth:`apply_masks`.
        """
        self.apply_masks(model, self._loaded_masks)
        self._loaded_masks = {}

    def make_permanent(self, model: nn.Module) -> None:
        """Fold the masks into the weights (``torch.nn.utils.prune.remove``): plain zeros remain.

        Args:
            model: The model.
        """
        for _, module, name in self.targets(model):
            if _pruning_hook(module, name) is not None:
                prune.remove(module, name)

    def state_dict(self) -> dict[str, Any]:
        """Plain values plus the boolean masks (on CPU) of the last model pruned.

        Returns:
            ``{"last_sparsity": float | None, "masks": {fqn: bool tensor}}``.
        """
        model = self._model() if self._model is not None else None
        masks = self.masks(model) if model is not None else dict(self._loaded_masks)
        return {
            "last_sparsity": self.last_sparsity,
            "masks": {k: m.cpu() for k, m in masks.items()},
        }

    def reset(self) -> None:
        """Forget the last model pruned and any state read by :meth:`load_state_dict`."""
        self.last_sparsity = None
        self._model = None
        self._loaded_masks = {}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Read a :meth:`state_dict`; call :meth:`restore` to put its masks on a model.

        Args:
            state_dict: As returned by :meth:`state_dict`.
        """
        self.last_sparsity = state_dict.get("last_sparsity")
        self._loaded_masks = dict(state_dict.get("masks", {}))

    _SETTINGS = (
        "schedule",
        "allocation",
        "structured",
        "norm",
        "include_types",
        "include",
        "exclude",
        "keep_first_dense",
        "keep_last_dense",
        "parameter_name",
    )

    def settings(self) -> dict[str, Any]:
        """The constructor arguments (the schedule as its own settings; compared on resume)."""
        out: dict[str, Any] = {k: getattr(self, k) for k in self._SETTINGS}
        out["schedule"] = None if self.schedule is None else self.schedule.settings()
        for key in ("include_types", "include", "exclude"):
            out[key] = None if out[key] is None else list(out[key])
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._SETTINGS)
        return f"{type(self).__name__}({args})"
