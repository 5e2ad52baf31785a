"""Magnitude pruning to an exact sparsity or a FLOP target.

Sparsity is the fraction of zeros among the pruned weights (the :meth:`MagnitudePruner.targets`),
a float in ``[0, 1)``.

The pruner chooses the weights, validates its settings and keeps its state; the rest lives
beside it: how masks are stored on a module in :mod:`.masks` (by default a bool mask and the
zeros written into the weight; optionally :mod:`torch.nn.utils.prune`'s reparametrization),
how a sparsity is spread over layers in :mod:`.allocation`, rows for structured pruning in
:mod:`.rows`, pruning to a FLOP target in :mod:`.flops`, and the exact global magnitude cut
in :mod:`.select`.

Pruning is monotone: scores are computed on the effective (masked) weights and already
pruned entries are always pruned first, so a weight once pruned stays pruned. A target below
the current sparsity prunes nothing more (with a warning).
"""

from __future__ import annotations

import re
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, cast

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.utils import parametrize

from lightning_sparsity._checks import binds, check_bools, check_choice, check_int, import_path
from lightning_sparsity._settings import Settings
from lightning_sparsity._shards import nonfinite, shard_group
from lightning_sparsity.patterns import (
    PATTERN_LAYOUT,
    Pattern,
    conforms,
    group_losses,
    group_view,
    kernel_problem,
    layout_problem,
    parse_pattern,
    pattern_keep,
)
from lightning_sparsity.pruning import flops, select
from lightning_sparsity.pruning import masks as storage
from lightning_sparsity.pruning.allocation import (
    ALLOCATIONS,
    Allocation,
    erk_densities,
    flop_scales,
    layer_sparsities,
)
from lightning_sparsity.pruning.floors import allowed, entry_floors, floor_count, floored
from lightning_sparsity.pruning.masks import STORAGES, Storage, param_name
from lightning_sparsity.pruning.rows import expand_rows, row_scales, row_scores
from lightning_sparsity.pruning.schedules import Schedule
from lightning_sparsity.pruning.scores import SCORES, ScoreFn, ScoreName, Scores
from lightning_sparsity.pruning.select import Cut, Source

__all__ = ["DEFAULT_INCLUDE_TYPES", "DEFAULT_MIN_DENSITY", "MagnitudePruner", "erk_densities"]

#: the least fraction of each pruned weight that stays nonzero by default (at least one entry)
DEFAULT_MIN_DENSITY = 0.01

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
ParameterFilter = Callable[[str, Tensor], bool]

_TIED = (
    "tied to several modules: with mask_storage='prune' the mask (a forward pre-hook) would not"
    " reach every reader (the default 'inplace' masks reach them all)"
)
_BYPASSED = (
    "read by nn.MultiheadAttention without its module's forward: with mask_storage='prune' the"
    " mask (a forward pre-hook) would not reach that reader (the default 'inplace' masks do)"
)
_COMPUTED = (
    "computed by a parametrization (weight_norm, spectral_norm): it has no entries of its own"
    " to zero"
)


def _split(targets: list[Target]) -> tuple[list[Tensor], list[Tensor | None]]:
    """The trained tensors and the current keep masks of the targets."""
    pairs = [storage.trained_and_mask(module, name) for _, module, name in targets]
    return [p[0] for p in pairs], [p[1] for p in pairs]


@contextmanager
def _named_nonfinite(targets: list[Target]) -> Iterator[None]:
    """Say which weights hold inf/NaN when a selection meets them (one more sync, then)."""
    try:
        yield
    except select.NonFiniteError as err:
        named = [(param_name(f, n), storage.effective(m, n)) for f, m, n in targets]
        sizes = {
            param_name(f, n): cast(Tensor, storage.trained(m, n)).numel() for f, m, n in targets
        }
        bad = nonfinite(named)
        listed = ", ".join(f"{k} ({c} of {sizes[k]})" for k, c in bad.items())
        raise ValueError(
            f"MagnitudePruner: cannot rank weights holding inf or NaN: {listed}. The training"
            " diverged (e.g. precision='16-true' with Adam: try 'bf16-mixed' or '16-mixed', a"
            " lower learning rate or gradient clipping)"
        ) from err


def _whole(targets: list[Target]) -> tuple[list[Tensor], Any]:
    """The targets' parameters as the model holds them, and their process group.

    Sharded, the parameters are ``DTensor`` s (of global shapes) and the process group is the one
    their ``Shard(0)`` chunks are split over; else plain tensors and ``None``.
    """
    whole = [cast(Tensor, storage.trained(module, name)) for _, module, name in targets]
    meta = [param_name(f, n) for (f, _, n), w in zip(targets, whole, strict=True) if w.is_meta]
    if meta:
        listed = ", ".join(meta[:5]) + (f" and {len(meta) - 5} more" if len(meta) > 5 else "")
        raise ValueError(
            f"MagnitudePruner: cannot rank weights on the meta device (shapes, no values):"
            f" {listed}; build or load the model's weights first"
        )
    return whole, shard_group(whole)


def fraction(value: object, *, closed: bool) -> bool:
    """Whether ``value`` is a number in ``[0, 1]`` (``closed``) or ``[0, 1)``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return 0.0 <= value <= 1.0 if closed else 0.0 <= value < 1.0


def _per_layer_groups(
    sources: list[Source], per_layer: list[float], sizes: list[int], floors: list[int]
) -> list[tuple[list[Source], int]]:
    """One selection group per layer, pruning ``round(s_l * size_l)`` of layer ``l``.

    ``sizes`` are entries (or rows, or N:M groups) over all ranks; no layer prunes more
    than ``size_l - floors_l``.
    """
    return [
        ([src], min(round(s * n), n - k))
        for src, s, n, k in zip(sources, per_layer, sizes, floors, strict=True)
    ]


def after_grads(then: Callable[[], None]) -> Callable[..., Any]:
    """A step pre-hook that calls ``then()`` once the step's gradients are final.

    ``optimizer.step()`` after ``backward()``: right away. ``optimizer.step(closure)`` (what
    Lightning calls; the closure runs the forward and backward): after the closure, so the
    gradients are this step's (Lightning's gradient clipping included). A step that AMP's
    scaler skips never calls the optimizer: nothing is added.
    """

    def hook(optimizer: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # torch passes step's own arguments, the optimizer first
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
        if closure is None:
            then()
            return None

        def closure_then() -> Any:
            loss = closure()
            then()
            return loss

        if "closure" in kwargs:
            return args, {**kwargs, "closure": closure_then}
        return (args[0], closure_then, *args[2:]), kwargs

    return hook


class _Forget:
    """A handle whose ``remove()`` takes an optimizer off a pruner's attached ones."""

    def __init__(self, attached: list[weakref.ReferenceType[Any]], ref: weakref.ReferenceType[Any]):
        self._attached = attached
        self._ref = ref

    def remove(self) -> None:
        self._attached[:] = [r for r in self._attached if r is not self._ref]


class MagnitudePruner(Settings):
    r"""Prunes the smallest-magnitude weights of chosen layers to a target sparsity or FLOPs.

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
        parameters: Name any parameters instead of ``include_types``/``parameter_name``:
            regexes matched in full against parameter FQNs (``"encoder.layers.0.self_attn.
            in_proj_weight"``, ``r".*lstm\.weight_(ih|hh)_l\d+"``), or a function
            ``(fqn, parameter) -> bool`` (like Lightning's ``parameters_to_prune`` /
            ``filter_parameters_to_prune``). ``include``/``exclude`` still filter by module.
        mask_storage: ``"inplace"`` (default): a bool mask per pruned weight and the zeros
            written into the weight itself, reaching every reader (fused attention, RNN
            kernels, tied weights); keep them through training with :meth:`attach` (the
            callback does). ``"prune"``: ``torch.nn.utils.prune``'s reparametrization
            (``weight_orig`` × ``weight_mask``), for code that expects it. See
            :mod:`lightning_sparsity.pruning.masks` for what each costs.
        pattern: ``"N:M"`` (``"2:4"``): prune in the semi-structured pattern GPUs run fast,
            at most N nonzeros in every group of M consecutive weights along the input: a
            Linear's ``in_features``, a conv's input channels at each kernel position (the
            runtimes' layout, :mod:`lightning_sparsity.patterns`). A sparsity ``s`` prunes the
            fraction ``s / ((M - N) / M)`` of all groups (so at most ``(M - N) / M``): the
            groups whose ``M - N`` smallest magnitudes sum least (globally, or per layer with
            ``"uniform"``), keeping their N largest. Layers whose shape cannot carry it (or
            the 2:4 kernels cannot take) stay dense, named in a warning.
        min_density: The least fraction of each pruned weight that stays nonzero, so no
            prune empties a layer (which would disconnect the model): its largest entries,
            and while ``> 0`` at least one per row (dim 0: every output unit keeps its
            largest input weight, so the output still depends on the input). With
            ``structured=True`` it counts rows (at least one), with ``pattern`` a floor
            above ``N / M`` keeps that many groups whole. Global targets stay exact: the
            others are pruned in their place. ``0`` allows empty layers (a warning names
            them).
        max_sparsity: A cap on each layer's sparsity: one number for every layer, or
            ``{regex: number}`` over parameter FQNs (matched in full, the first match wins;
            like Torch-Pruning's ``pruning_ratio_dict``); a layer's floor is then
            ``max(min_density, 1 - cap)``.
        score: What weights are ranked by (lowest pruned first), in every allocation,
            granularity and FLOP target: ``"magnitude"`` (default), ``"random"`` (seeded),
            ``"taylor"`` (``Σ|w·g|`` over the steps since the last prune), ``"movement"``
            (``−Σ w·g``), ``"wanda"`` (``|w|·‖x‖₂`` of the layer inputs seen), or a function
            ``(fqn, weight, state) -> scores``; see :mod:`lightning_sparsity.pruning.scores`.
            The accumulating ones need :meth:`observe` and :meth:`attach` (the callback
            calls both).
        seed: The seed of ``score="random"`` (an int >= 0).

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
        parameters: list[str] | ParameterFilter | None = None,
        mask_storage: Storage = "inplace",
        pattern: str | None = None,
        min_density: float = DEFAULT_MIN_DENSITY,
        max_sparsity: float | Mapping[str, float] | None = None,
        score: ScoreName | ScoreFn = "magnitude",
        seed: int = 0,
    ) -> None:
        errors: list[str] = []
        if schedule is not None and not isinstance(schedule, Schedule):
            errors.append(f"`schedule` must be a Schedule or None, got {schedule!r}")
        check_choice("allocation", allocation, ALLOCATIONS, errors)
        flags = {
            "structured": structured,
            "keep_first_dense": keep_first_dense,
            "keep_last_dense": keep_last_dense,
        }
        check_bools(flags, errors)
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
            for regex in regexes:
                try:
                    patterns[arg].append(re.compile(regex))
                except re.error as err:
                    errors.append(f"`{arg}` holds an invalid regex {regex!r}: {err}")
        if not isinstance(parameter_name, str) or not parameter_name.isidentifier():
            errors.append(f"`parameter_name` must be an identifier, got {parameter_name!r}")
        named: list[re.Pattern[str]] = []
        if callable(parameters) and not binds(parameters, 2):
            errors.append(
                "`parameters` as a function must take (name, parameter) and return a bool;"
                f" {getattr(parameters, '__name__', parameters)!r} does not take two arguments"
            )
        if parameters is not None and not callable(parameters):
            if isinstance(parameters, str) or not all(isinstance(p, str) for p in parameters):
                errors.append(
                    "`parameters` must be a list of regexes over parameter names, a function"
                    f" (name, parameter) -> bool, or None; got {parameters!r}"
                )
            else:
                for regex in parameters:
                    try:
                        named.append(re.compile(regex))
                    except re.error as err:
                        errors.append(f"`parameters` holds an invalid regex {regex!r}: {err}")
        check_choice("mask_storage", mask_storage, STORAGES, errors)
        parsed: Pattern | None = None
        if pattern is not None:
            try:
                parsed = parse_pattern(pattern)
            except ValueError as err:
                errors.append(str(err))
            if structured is True:
                errors.append(f"`pattern={pattern!r}` prunes within rows; not with structured=True")
            if allocation in ("erk", "flops"):
                errors.append(
                    f"`pattern={pattern!r}` takes allocation 'global' or 'uniform', got"
                    f" {allocation!r}"
                )
        if not fraction(min_density, closed=False):
            errors.append(f"`min_density` must be a number in [0, 1), got {min_density!r}")
        caps: list[tuple[re.Pattern[str], float]] = []
        if isinstance(max_sparsity, Mapping):
            for regex, cap in max_sparsity.items():
                if not isinstance(regex, str):
                    errors.append(f"`max_sparsity` keys must be regex strings, got {regex!r}")
                    continue
                try:
                    compiled = re.compile(regex)
                except re.error as err:
                    errors.append(f"`max_sparsity` holds an invalid regex {regex!r}: {err}")
                    continue
                if not fraction(cap, closed=True):
                    errors.append(
                        f"`max_sparsity[{regex!r}]` must be a number in [0, 1], got {cap!r}"
                    )
                    continue
                caps.append((compiled, float(cap)))
        elif max_sparsity is not None:
            if fraction(max_sparsity, closed=True):
                caps.append((re.compile(".*"), float(max_sparsity)))
            else:
                errors.append(
                    "`max_sparsity` must be a number in [0, 1], a {regex: number} dict over"
                    f" parameter names, or None; got {max_sparsity!r}"
                )
        if (
            parsed is not None
            and schedule is not None
            and isinstance(schedule, Schedule)
            and (schedule.peak() or 0.0) > (parsed[1] - parsed[0]) / parsed[1]
        ):
            n, m = parsed
            errors.append(
                f"the schedule reaches sparsity {schedule.peak():g}, but with pattern"
                f" {pattern!r} at most {(m - n) / m:g} of the weights can be pruned"
                f" ({m - n} of every {m})"
            )
        if callable(score):
            if not binds(score, 3):
                errors.append(
                    "`score` as a function must take (fqn, weight, state) and return the"
                    f" scores; {getattr(score, '__name__', score)!r} does not take three"
                    " arguments"
                )
        else:
            check_choice("score", score, SCORES, errors)
        check_int("seed", seed, errors)
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
        self.parameters = parameters
        self.mask_storage: Storage = mask_storage
        self.pattern = pattern
        self.min_density = float(min_density)
        self.max_sparsity = (
            dict(max_sparsity) if isinstance(max_sparsity, Mapping) else max_sparsity
        )
        self.score = score
        self.seed = seed
        self._scorer = Scores(score, seed)
        self._caps = caps
        self._pattern = parsed
        self._include = patterns["include"]
        self._exclude = patterns["exclude"]
        self._named = named
        self.last_sparsity: float | None = None
        #: bumped whenever the masks change (what a cached count of them goes by)
        self.generation = 0
        self._model: weakref.ReferenceType[nn.Module] | None = None
        self._masked: list[tuple[nn.Module, str]] = []
        self._attached: list[weakref.ReferenceType[Any]] = []  # attach()ed optimizers
        self._loaded: dict[str, Any] = {}
        self._warned: set[str] = set()
        self._skipped: dict[str, str] = {}  # left out by the last targets(), and why

    # ------------------------------------------------------------------ selection of layers
    def _candidates(self, model: nn.Module) -> Iterator[Target]:
        """``(module FQN, module, name)`` of every parameter the settings name."""
        for fqn, module in model.named_modules():
            if self._include and not any(p.search(fqn) for p in self._include):
                continue
            if any(p.search(fqn) for p in self._exclude):
                continue
            if self.parameters is None:
                if any(cls.__name__ in self.include_types for cls in type(module).__mro__):
                    yield fqn, module, self.parameter_name
                continue
            for key in list(module._parameters):
                base = key.removesuffix("_orig")  # "prune" storage renames the parameter
                name = base if storage.storage_of(module, base) == "prune" else key
                tensor = storage.trained(module, name)
                if tensor is None:
                    continue
                full = param_name(fqn, name)
                if callable(self.parameters):
                    chosen = bool(self.parameters(full, tensor))
                else:
                    chosen = any(p.fullmatch(full) for p in self._named)
                if chosen:
                    yield fqn, module, name

    def targets(self, model: nn.Module) -> list[Target]:
        """The pruned parameters as ``(module FQN, module, parameter name)``, in registration order.

        Args:
            model: The model.

        Returns:
            The chosen parameters: those ``parameters`` names, or else the
            ``parameter_name`` of modules that are (subclasses of) an ``include_types``
            class; modules filtered by ``include``/``exclude``;
            ``keep_first_dense``/``keep_last_dense`` applied. A parameter shared by several
            modules is chosen once, under its first owner. Left out, with a warning once
            naming why: a weight computed by a parametrization (``weight_norm``,
            ``spectral_norm``), which has no entries of its own to zero; with
            ``mask_storage="prune"`` also a weight tied to several modules and the layers
            inside ``nn.MultiheadAttention`` (it reads ``out_proj.weight`` without calling
            ``out_proj``), since that mask would not reach every reader.
        """
        chosen: list[Target] = []
        skipped: dict[str, str] = {}  # parameter -> why it is left out
        owners: dict[int, int] = {}
        bypassed: set[int] = set()
        for module in model.modules():
            for key in {id(p) for p in module.parameters(recurse=False)}:
                owners[key] = owners.get(key, 0) + 1
            if isinstance(module, nn.MultiheadAttention):
                bypassed.update(id(m) for m in module.modules() if m is not module)
        seen: set[int] = set()
        reparametrize = self.mask_storage == "prune"
        for fqn, module, name in self._candidates(model):
            param = storage.trained(module, name)
            if param is None:
                if parametrize.is_parametrized(module, name) or hasattr(module, name + "_v"):
                    skipped[param_name(fqn, name)] = _COMPUTED
                continue
            problem = (
                None
                if self._pattern is None
                else layout_problem(module) or kernel_problem(param, self._pattern)
            )
            if problem is not None:
                skipped[param_name(fqn, name)] = f"pattern {self.pattern}: {problem}"
            elif reparametrize and owners.get(id(param), 0) > 1:
                skipped[param_name(fqn, name)] = _TIED
            elif reparametrize and id(module) in bypassed:
                skipped[param_name(fqn, name)] = _BYPASSED
            elif id(param) not in seen:  # a shared parameter once, under its first owner
                seen.add(id(param))
                chosen.append((fqn, module, name))
        self._skipped = skipped
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
        return {param_name(fqn, name) for fqn, _, name in self.targets(model)}

    def _targets_or_raise(self, model: nn.Module) -> list[Target]:
        targets = self.targets(model)
        if not targets:
            named = (
                f"parameters={self.parameters!r}"
                if self.parameters is not None
                else f"include_types={self.include_types} with a {self.parameter_name!r} parameter"
            )
            if self._skipped:
                dropped = "; ".join(f"{k!r}: {why}" for k, why in self._skipped.items())
                raise ValueError(
                    f"no parameter to prune: {named}, include={self.include},"
                    f" exclude={self.exclude} matched {len(self._skipped)}, every one left"
                    f" out: {dropped}"
                )
            raise ValueError(
                f"no parameter to prune: nothing matches {named}, include={self.include},"
                f" exclude={self.exclude} (after keep_first_dense/keep_last_dense)"
            )
        return targets

    def check(self, model: nn.Module) -> None:
        """Refuse, before any training step, settings that cannot prune ``model``.

        Raises:
            ValueError: If no parameter is chosen (saying which rule left out those that
                matched), the schedule asks for more sparsity than the per-layer floors
                leave prunable, or a ``score`` that collects during training cannot score a
                chosen layer or would prune before the first step.
        """
        targets = self._targets_or_raise(model)
        if self._scorer.accumulates:
            self._scorer.problems_or_raise(targets)
            if self.schedule is not None and self.schedule.first_prune(0) == 0:
                raise ValueError(
                    f"MagnitudePruner: score={self.score!r} ranks by what training collects,"
                    f" but the schedule {self.schedule!r} prunes at epoch 0, before any step;"
                    " start it at epoch 1 or later, or use score='magnitude' or 'random'"
                )
        peak = None if self.schedule is None else self.schedule.peak()
        if peak is None or not peak:
            return
        floors = self.floor_densities(model)
        whole, _ = _whole(targets)
        numels = [w.numel() for w in whole]
        names = [param_name(f, n) for f, _, n in targets]
        if self.allocation == "uniform":
            most = min(1.0 - floors[n] for n in names)
        else:
            kept = sum(floors[n] * k for n, k in zip(names, numels, strict=True))
            most = 1.0 - kept / max(1, sum(numels))
        if self._pattern is None and peak > most + 1e-9:
            raise ValueError(
                f"MagnitudePruner: the schedule reaches sparsity {peak:g}, but the per-layer"
                f" floors (min_density={self.min_density:g}, max_sparsity="
                f"{self.max_sparsity!r}, allocation={self.allocation!r}) leave at most"
                f" {most:.6g} of these weights prunable; lower the floors or the schedule"
            )

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
            epoch: Completed epochs ``t`` (or pruning steps): the schedule's time.
            flops_per_nonzero: Needed for ``allocation="flops"`` (see :meth:`apply`).

        Returns:
            The target applied, or ``None`` when the schedule skips this epoch.

        Raises:
            ValueError: If the pruner has no schedule, ``epoch`` is not an int >= 0, or see
                :meth:`apply`.
        """
        if self.schedule is None:
            raise ValueError("MagnitudePruner.step needs a `schedule`, got None")
        errors: list[str] = []
        check_int("epoch", epoch, errors)
        if errors:
            raise ValueError("MagnitudePruner.step: " + "; ".join(errors))
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
        with _named_nonfinite(targets):
            self._apply(model, targets, sparsity, flops_per_nonzero)
        self.last_sparsity = float(sparsity)

    def _apply(
        self,
        model: nn.Module,
        targets: list[Target],
        sparsity: float,
        flops_per_nonzero: Mapping[str, float] | None,
    ) -> None:
        tensors, current = _split(targets)
        whole, process_group = _whole(targets)
        scores = self._scorer.of(targets, tensors, process_group)
        numels = [w.numel() for w in whole]  # over all ranks: the same scales
        scales = self._flop_scales(targets, numels, flops_per_nonzero)
        per_layer = layer_sparsities(self.allocation, sparsity, [tuple(w.shape) for w in whole])
        densities = self._floor_densities(targets)
        if self._pattern is not None:
            keeps = self._pattern_keeps(scores, current, sparsity, whole, process_group, densities)
        elif self.structured:
            keeps = self._structured_keeps(
                tensors,
                scores,
                current,
                sparsity,
                scales,
                per_layer,
                whole,
                process_group,
                densities,
            )
        else:
            sources = select.make_sources(scores, current, scales, None, group=process_group)
            floors = entry_floors(densities, whole)
            wanted = round(sparsity * sum(numels))

            def cut(protected: list[int]) -> list[Tensor]:
                if per_layer is not None:
                    groups = _per_layer_groups(sources, per_layer, numels, protected)
                else:
                    groups = [(sources, int(allowed(wanted, sources, numels, protected)))]
                masks: list[Tensor] = []
                for (chosen, _), found in zip(groups, self._count_cuts(groups), strict=True):
                    masks += select.keep_masks(chosen, found)
                return masks

            keeps, protected = floored(sources, numels, floors, whole, cut, rows=True)
            if per_layer is None:
                self._warn_floors(allowed(wanted, sources, numels, protected), wanted, "entries")
        self._install(model, [(m, n) for _, m, n in targets], keeps)
        self._scorer.reset()

    def _cap(self, name: str) -> float | None:
        """The ``max_sparsity`` of a parameter FQN: the first regex matching it in full."""
        return next((cap for regex, cap in self._caps if regex.fullmatch(name)), None)

    def _floor_densities(self, targets: list[Target]) -> list[float]:
        """Per target, the least density pruning may leave: ``min_density`` or its cap."""
        out = []
        for fqn, _, name in targets:
            cap = self._cap(param_name(fqn, name))
            out.append(self.min_density if cap is None else max(self.min_density, 1.0 - cap))
        return out

    def _group_floors(self, densities: list[float], groups: list[int]) -> list[int]:
        """N:M groups to keep dense per layer so each keeps its floor density.

        A layer in the pattern keeps ``N / M`` already; a floor above it keeps the fraction
        ``(d - N / M) / ((M - N) / M)`` of its groups whole.
        """
        assert self._pattern is not None
        n, m = self._pattern
        return [
            floor_count((d - n / m) / ((m - n) / m), g) if d > n / m else 0
            for d, g in zip(densities, groups, strict=True)
        ]

    def floor_densities(self, model: nn.Module) -> dict[str, float]:
        """The least fraction of each pruned parameter that pruning leaves nonzero.

        What no target (a sparsity, a FLOP target, a budget) can take below: the
        ``min_density`` / ``max_sparsity`` floor of each layer (counted in the unit pruned:
        entries, rows, or with ``pattern`` the N of every M plus the groups a floor above
        ``N / M`` keeps whole).

        Args:
            model: The model.

        Returns:
            ``{parameter FQN: density}`` for every parameter this pruner prunes.
        """
        targets = self.targets(model)
        whole, _ = _whole(targets)
        densities = self._floor_densities(targets)
        out = {}
        for (fqn, _, name), w, d in zip(targets, whole, densities, strict=True):
            numel = w.numel()
            if not numel:
                out[param_name(fqn, name)] = 0.0
            elif self._pattern is not None:
                n, m = self._pattern
                groups = numel // m
                (dense,) = self._group_floors([d], [groups])
                out[param_name(fqn, name)] = (n * (groups - dense) + m * dense) / numel
            elif self.structured:
                rows = w.shape[0] if w.dim() else 1
                out[param_name(fqn, name)] = floor_count(d, rows) / rows
            else:
                (kept,) = entry_floors([d], [w])
                out[param_name(fqn, name)] = kept / numel
        return out

    def warn_emptied(self, emptied: Sequence[str]) -> None:
        """Warn (once per set of weights) that pruning left these weights all zero.

        A layer without a weight passes nothing on: the model's output no longer depends on
        what flows through it. The default floors never do this; ``min_density=0`` or a
        ``max_sparsity`` of 1 can.
        """
        key = f"emptied:{sorted(emptied)}"
        if not emptied or key in self._warned:
            return
        self._warned.add(key)
        warnings.warn(
            f"pruning left no nonzero weight in {sorted(emptied)}: those layers disconnect the"
            " model (its output no longer depends on its input through them); keep a floor"
            f" with min_density > 0 (now {self.min_density:g}) and max_sparsity < 1",
            UserWarning,
            stacklevel=3,
        )

    def _warn_floors(self, allowed: float, wanted: float, unit: str) -> None:
        """Say once per target when the per-layer floors hold a global target back."""
        key = f"floors:{wanted}"
        if allowed >= wanted or key in self._warned:
            return
        self._warned.add(key)
        warnings.warn(
            f"the per-layer floors (min_density={self.min_density:g}, max_sparsity="
            f"{self.max_sparsity!r}) let at most {allowed:g} {unit} be pruned, not the"
            f" {wanted:g} the target asks; lower them to prune further",
            UserWarning,
            stacklevel=3,
        )

    def _group_sources(
        self,
        tensors: list[Tensor],
        current: list[Tensor | None],
        weights: list[float] | None,
        process_group: dist.ProcessGroup | None,
    ) -> list[Source]:
        """One score per N:M group (the magnitude pruning it removes), already pruned ones out.

        Sharded (``Shard(0)``: whole rows, so whole groups, per rank), the scores are the
        local groups' and the selection's histograms are all-reduced over ``process_group``.
        """
        assert self._pattern is not None
        n, m = self._pattern
        losses = [group_losses(t, k, self._pattern) for t, k in zip(tensors, current, strict=True)]
        # a group is pruned when it holds at most N live entries
        live = [None if k is None else group_view(k != 0, m).sum(1) > n for k in current]
        return select.make_sources(losses, live, None, weights, group=process_group)

    def _pattern_keeps(
        self,
        tensors: list[Tensor],
        current: list[Tensor | None],
        sparsity: float,
        whole: list[Tensor],
        process_group: dist.ProcessGroup | None,
        densities: list[float],
    ) -> list[Tensor]:
        """Prune the fraction ``sparsity / ((M - N) / M)`` of the groups to N:M."""
        assert self._pattern is not None
        n, m = self._pattern
        if sparsity > (m - n) / m:
            raise ValueError(
                f"with pattern {self.pattern!r} at most {(m - n) / m:g} of the weights can be"
                f" pruned, got sparsity {sparsity!r}"
            )
        fraction = sparsity * m / (m - n)
        sources = self._group_sources(tensors, current, None, process_group)
        counts = [w.numel() // m for w in whole]  # groups over all ranks
        floors = self._group_floors(densities, counts)
        if self.allocation == "uniform":
            groups = _per_layer_groups(sources, [fraction] * len(sources), counts, floors)
        else:
            wanted = round(fraction * sum(counts))

            def cut(protected: list[int]) -> list[Tensor]:
                count = int(allowed(wanted, sources, counts, protected))
                (found,) = self._count_cuts([(sources, count)])
                return select.keep_masks(sources, found)

            kept, protected = floored(sources, counts, floors, whole, cut)
            self._warn_floors(allowed(wanted, sources, counts, protected), wanted, "N:M groups")
            return self._to_pattern(tensors, current, [~keep for keep in kept])
        prune: list[Tensor] = []
        for (chosen, _), found in zip(groups, self._count_cuts(groups), strict=True):
            prune += [~keep for keep in select.keep_masks(chosen, found)]
        return self._to_pattern(tensors, current, prune)

    def _to_pattern(
        self, tensors: list[Tensor], current: list[Tensor | None], prune: list[Tensor]
    ) -> list[Tensor]:
        """Keep masks that bring the groups ``prune`` marks (one bool per group) to N:M."""
        assert self._pattern is not None
        return [
            pattern_keep(t, k, self._pattern, p)
            for t, k, p in zip(tensors, current, prune, strict=True)
        ]

    def _install(
        self, model: nn.Module, params: list[tuple[nn.Module, str]], keeps: list[Tensor]
    ) -> None:
        """Set the masks of ``(module, name)`` pairs; remember the model for :meth:`state_dict`."""
        for (module, name), keep in zip(params, keeps, strict=True):
            storage.set_mask(module, name, keep, self.mask_storage)
        self.generation += 1
        self._model = weakref.ref(model)
        self._masked = [(m, n) for _, m, n in self.targets(model) if storage.is_masked(m, n)]
        storage.mask_state(self._optimizers(), self._masked)

    def _count_cuts(self, groups: list[tuple[list[Source], int]]) -> list[Cut]:
        """Exact-count cuts; a target below what is already pruned prunes nothing more."""
        cuts = select.cuts([(sources, float(count)) for sources, count in groups], weighted=False)
        clamped = sum(count < cut.already for (_, count), cut in zip(groups, cuts, strict=True))
        if clamped:
            warnings.warn(
                f"the target prunes fewer weights than already pruned in {clamped} group(s);"
                " pruning is monotone, so those keep their current masks",
                UserWarning,
                stacklevel=3,
            )
        return cuts

    def _flop_scales(
        self,
        targets: list[Target],
        numels: list[int],
        flops_per_nonzero: Mapping[str, float] | None,
    ) -> list[float] | None:
        if self.allocation != "flops":
            return None
        names = [param_name(fqn, name) for fqn, _, name in targets]
        return flop_scales(names, numels, flops_per_nonzero)

    def _structured_keeps(
        self,
        tensors: list[Tensor],
        scores: list[Tensor],
        current: list[Tensor | None],
        sparsity: float,
        scales: list[float] | None,
        per_layer: list[float] | None,
        whole: list[Tensor],
        process_group: Any,
        densities: list[float],
    ) -> list[Tensor]:
        """Row (dim 0) masks from the row norms of the effective entries' ``scores``."""
        norms, row_keeps, row_sizes = row_scores(scores, current, self.norm)
        rows = [w.shape[0] if w.dim() else 1 for w in whole]
        floors = [floor_count(d, n) for d, n in zip(densities, rows, strict=True)]
        if per_layer is not None:
            groups = _per_layer_groups(
                select.make_sources(norms, row_keeps, None, None, group=process_group),
                per_layer,
                rows,
                floors,
            )
            cuts = self._count_cuts(groups)
            row_masks = [select.keep_masks(g, c)[0] for (g, _), c in zip(groups, cuts, strict=True)]
        else:
            factors = row_scales(row_sizes, self.norm)
            if scales is not None:
                factors = [a * b for a, b in zip(factors, scales, strict=True)]
            wanted = round(sparsity * sum(w.numel() for w in whole))
            weights = [float(n) for n in row_sizes]
            sources = select.make_sources(norms, row_keeps, factors, weights, group=process_group)

            def cut(protected: list[int]) -> list[Tensor]:
                target = allowed(wanted, sources, rows, protected)
                return select.keep_masks(sources, self._weighted_cut(sources, target))

            row_masks, protected = floored(sources, rows, floors, whole, cut)
            self._warn_floors(allowed(wanted, sources, rows, protected), wanted, "entries")
        return expand_rows(tensors, current, row_masks)

    @staticmethod
    def _weighted_cut(sources: list[Source], target: float) -> Cut:
        """Weighted cut; a target below what is already pruned prunes nothing more."""
        (cut,) = select.cuts([(sources, float(target))], weighted=True)
        if target < cut.already:
            warnings.warn(
                f"the target ({target:g}) asks for less than is already pruned"
                f" ({cut.already:g}); pruning is monotone, so the masks are kept",
                UserWarning,
                stacklevel=3,
            )
        return cut

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
        flops.check_flop_arguments(target_flops, fixed_flops, flops_per_nonzero)
        targets = self._targets_or_raise(model)
        with _named_nonfinite(targets):
            return self._apply_flop_target(
                model, targets, target_flops, flops_per_nonzero, fixed_flops, not_above
            )

    def _apply_flop_target(
        self,
        model: nn.Module,
        targets: list[Target],
        target_flops: float,
        flops_per_nonzero: Mapping[str, float],
        fixed_flops: float,
        not_above: bool,
    ) -> float:
        names = [param_name(fqn, name) for fqn, _, name in targets]
        tensors, current = _split(targets)
        whole, process_group = _whole(targets)
        scores = self._scorer.of(targets, tensors, process_group)
        costs = [float(flops_per_nonzero.get(n, 0.0)) for n in names]
        if self._pattern is not None:  # whole groups: each removes M - N weights' FLOPs
            others = flops.other_flops(model, flops_per_nonzero, set(names), group=process_group)
            n, m = self._pattern
            all_dense = (
                fixed_flops + others + sum(c * w.numel() for c, w in zip(costs, whole, strict=True))
            )
            sources = self._group_sources(
                scores, current, [(m - n) * c for c in costs], process_group
            )
            counts = [w.numel() // m for w in whole]
            floors = self._group_floors(self._floor_densities(targets), counts)
            wanted = float(all_dense - target_flops)

            def cut(protected: list[int]) -> list[Tensor]:
                remove = allowed(wanted, sources, counts, protected)
                (found,) = select.cuts([(sources, remove)], weighted=True, reach=not_above)
                return select.keep_masks(sources, found)

            kept, _ = floored(sources, counts, floors, whole, cut)
            keeps = self._to_pattern(scores, current, [~keep for keep in kept])
            params = [(m_, n_) for _, m_, n_ in targets]
            self._install(model, params, keeps)
            self._scorer.reset()
            nnz = storage.nonzero_counts(params)
            return fixed_flops + others + sum(c * z for c, z in zip(costs, nnz, strict=True))
        densities = self._floor_densities(targets)
        rows = [w.shape[0] if w.dim() else 1 for w in whole]
        result = flops.flop_target(
            tensors,
            current,
            costs,
            target_flops,
            fixed_flops,
            flops.other_flops_tensor(model, flops_per_nonzero, set(names), group=process_group),
            norm=self.norm if self.structured else None,
            not_above=not_above,
            numels=[w.numel() for w in whole],
            group=process_group,
            floors=[floor_count(d, r) for d, r in zip(densities, rows, strict=True)]
            if self.structured
            else entry_floors(densities, whole),
            whole=whole,
            scores=scores,
        )
        self._install(model, [(m, n) for _, m, n in targets], result.keeps)
        self._scorer.reset()
        return result.flops

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
            _, mask = storage.trained_and_mask(module, name)
            if mask is not None:
                out[param_name(fqn, name)] = mask != 0
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
        found = storage.locate(model, masks)
        errors, params, keeps = [], [], []
        for key, mask in masks.items():
            where = found[key]
            if where is None:
                errors.append(f"{key!r} names no parameter of the model")
                continue
            tensor, _ = storage.trained_and_mask(*where)
            if tuple(mask.shape) != tuple(tensor.shape):
                errors.append(
                    f"mask {key!r} has shape {tuple(mask.shape)}, the parameter"
                    f" {tuple(tensor.shape)}"
                )
                continue
            params.append(where)
            keeps.append((mask != 0).to(device=tensor.device, dtype=storage.mask_dtype(tensor)))
        if errors:
            raise ValueError("apply_masks: " + "; ".join(errors))
        self._install(model, params, keeps)

    def snapshot(self, model: nn.Module) -> dict[str, dict[str, Tensor]]:
        """The current masks, to :meth:`revert` to later (the metric guard's ``"restore"``).

        With ``"inplace"`` storage pruning zeroes the weights themselves, so the snapshot
        also copies the pruned weights' values (as large as those weights): reverting brings
        the entries pruned since back with the values they had. With ``"prune"`` the
        hidden ``weight_orig`` keeps them.

        Returns:
            ``{"masks": {fqn: bool}, "values": {fqn: tensor}}`` (``values`` empty for
            ``"prune"``).
        """
        values = {}
        if self.mask_storage == "inplace":
            values = {
                param_name(f, n): storage.effective(m, n).clone() for f, m, n in self.targets(model)
            }
        return {"masks": self.masks(model), "values": values}

    def revert(self, model: nn.Module, snapshot: Mapping[str, Mapping[str, Tensor]]) -> None:
        """Go back to a :meth:`snapshot`: its masks, and the values of entries pruned since."""
        self.apply_masks(model, snapshot["masks"])
        found = storage.locate(model, snapshot.get("values", {}))
        with torch.no_grad():
            for name, values in snapshot.get("values", {}).items():
                where = found[name]
                if where is None:
                    continue
                weight, keep = storage.trained_and_mask(*where)
                revive = weight == 0
                if keep is not None:
                    revive &= keep != 0
                weight.copy_(torch.where(revive, values.to(weight.device), weight))

    def restore(self, model: nn.Module) -> None:
        """Install the masks read by :meth:`load_state_dict` (then forget them).

        ``"prune"`` states carry the masks; ``"inplace"`` states name the masked weights,
        whose masks are their nonzeros (the checkpoint holds the zeros in place).

        Args:
            model: The model the state was saved from (same architecture).

        Raises:
            ValueError: See :meth:`apply_masks`.
        """
        loaded, self._loaded = self._loaded, {}
        if "masks" in loaded:
            masks = dict(loaded["masks"])
        else:
            names = list(loaded.get("masked", ()))
            found = storage.locate(model, names)
            missing = [n for n in names if found[n] is None]
            if missing:
                raise ValueError(f"restore: {missing} name no parameter of the model")
            masks = {n: storage.trained_and_mask(*found[n])[0] != 0 for n in names}  # type: ignore[misc]
        self.apply_masks(model, masks)
        if self._pattern is not None and loaded.get("pattern_layout") != PATTERN_LAYOUT:
            self._warn_old_layout(masks)

    def _warn_old_layout(self, masks: Mapping[str, Tensor]) -> None:
        """Name the convolutions whose N:M masks predate the channels-last layout.

        Before it, a conv's groups ran along its flattened ``in_channels · kh · kw`` row, a
        layout no runtime runs. Such masks load as they are and count as what they are;
        later prunes keep their zeros and group along the input channels. One host read.
        """
        assert self._pattern is not None
        convs = [(n, k) for n, k in masks.items() if k.dim() > 2]
        if not convs:
            return
        fits = torch.stack([conforms(k.to(torch.bool), self._pattern) for _, k in convs])
        old = [n for (n, _), ok in zip(convs, fits.tolist(), strict=True) if not ok]
        if old:
            warnings.warn(
                f"the checkpoint's {self.pattern} masks of {old} were made before"
                " lightning_sparsity grouped convolutions along their input channels (the"
                " layout ASP and TensorRT run): they load as they are and count as what they"
                " are (not 2:4); further pruning keeps their zeros and groups channels last",
                UserWarning,
                stacklevel=2,
            )

    @property
    def dense_gradients(self) -> bool:
        """Whether the coming optimizer step computes every weight gradient.

        RigL's growth steps do; otherwise the masks' zeros have none.
        """
        return False

    def make_permanent(self, model: nn.Module) -> None:
        """Drop the masks; the zeros stay in the weights (``prune.remove`` for ``"prune"``).

        Args:
            model: The model.
        """
        for _, module, name in self.targets(model):
            storage.remove(module, name)
        self._masked = []
        self.generation += 1

    # ------------------------------------------------------------------ through training
    def enforce(self) -> None:
        """Write the zeros of ``"inplace"`` masks into the weights again (after a step).

        An optimizer step may move pruned entries (momentum, Adam's moments): call this after
        each ``optimizer.step()``, or let :meth:`attach` do it. No host sync.
        """
        storage.enforce(self._masked)

    def mask_grads(self) -> None:
        """Zero the gradients of pruned entries now; no host sync.

        Not needed for gradients that backward produces: ``"inplace"`` masks zero them as
        they are accumulated (a hook on each masked parameter), and ``"prune"`` gets zeros
        from the chain rule. For gradients written some other way (``param.grad = ...``).
        """
        storage.mask_grads(self._masked)

    def attach(self, optimizer: Any) -> list[Any]:
        """Keep ``"inplace"`` masks through ``optimizer``'s steps (no Lightning needed).

        Registers a step post-hook (:meth:`enforce`) that writes the zeros again after each
        step; it follows whatever this pruner masks later. Each later prune also zeroes the
        optimizer's state on the entries it prunes (:func:`.masks.mask_state`: momentum,
        Adam's moments), so no state builds up on pruned entries. Gradients need no hook
        here: the masks zero those of pruned entries where backward accumulates them,
        before clipping and the step, also inside ``optimizer.step(closure)``.

        Returns:
            The handles; ``handle.remove()`` on each detaches the optimizer.
        """
        ref = weakref.ref(optimizer)
        self._attached.append(ref)
        storage.mask_state([optimizer], self._masked)
        handles = [
            optimizer.register_step_post_hook(lambda *_: self.enforce()),
            _Forget(self._attached, ref),
        ]
        if self._scorer.accumulates:
            stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
            scorer = self._scorer
            hook = after_grads(lambda: scorer.accumulate(stepped))
            handles.append(optimizer.register_step_pre_hook(hook))
        return handles

    def observe(self, model: nn.Module, total_steps: int | None = None) -> list[Any]:
        """Start collecting what ``score`` ranks by on ``model`` (nothing for the others).

        ``total_steps``: the optimizer steps the fit will run, when known (the callback
        passes Lightning's estimate); dynamic sparse training (:class:`RigL`) ends its
        updates at a fraction of it.

        ``"taylor"`` / ``"movement"``: the accumulators of the pruned weights, filled by the
        step pre-hook :meth:`attach` registers; ``"wanda"``: forward pre-hooks on the pruned
        layers summing their inputs' squares (in training mode). What a checkpoint's state
        held (:meth:`load_state_dict`) continues here. The callback calls it at train start.

        Returns:
            The hook handles; ``handle.remove()`` on each stops the collection.

        Raises:
            ValueError: if the score cannot rank a chosen parameter (``"wanda"``: layers
                other than Linear and convolutions), naming it.
        """
        if not self._scorer.accumulates:
            return []
        return self._scorer.observe(self._targets_or_raise(model), storage.trained)

    def sync_scores(self) -> None:
        """Sum what the ranks collected (``"wanda"``'s input norms) so rank 0 holds it.

        Every DDP rank must call it (the callback does at each epoch end, before checkpoints
        are written); a no-op in one process and for the other scores.
        """
        self._scorer.sync()

    def _optimizers(self) -> list[Any]:
        """The optimizers attached now (alive, not detached)."""
        return [o for o in (ref() for ref in self._attached) if o is not None]

    def state_dict(self) -> dict[str, Any]:
        """Plain values, and the masks: their names for ``"inplace"``, themselves for ``"prune"``.

        With ``"inplace"`` a mask is the nonzeros of its weight, which the checkpoint keeps;
        with ``"prune"`` the boolean masks are copied to the CPU.

        Returns:
            ``{"last_sparsity": ..., "mask_storage": ..., "masks": {fqn: bool tensor}}`` or
            ``{..., "masked": [fqn, ...]}``.
        """
        model = self._model() if self._model is not None else None
        if model is None:
            kept = {"last_sparsity": self.last_sparsity, **self._loaded}
            scores = self._scorer.state_dict()
            return {**kept, "scores": scores} if scores else kept
        state: dict[str, Any] = {
            "last_sparsity": self.last_sparsity,
            "mask_storage": self.mask_storage,
        }
        if self._pattern is not None:  # the grouping the N:M masks were made in
            state["pattern_layout"] = PATTERN_LAYOUT
        scores = self._scorer.state_dict()
        if scores:
            state["scores"] = scores
        if self.mask_storage == "prune":
            state["masks"] = {k: m.cpu() for k, m in self.masks(model).items()}
        else:
            state["masked"] = [
                param_name(f, n) for f, m, n in self.targets(model) if storage.is_masked(m, n)
            ]
        return state

    def reset(self) -> None:
        """Forget the last model pruned and any state read by :meth:`load_state_dict`."""
        self.last_sparsity = None
        self._model = None
        self._masked = []
        self._loaded = {}
        self._scorer = Scores(self.score, self.seed)

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Read a :meth:`state_dict`; call :meth:`restore` to put its masks on a model.

        Args:
            state_dict: As returned by :meth:`state_dict` (of either storage).
        """
        self.last_sparsity = state_dict.get("last_sparsity")
        keys = ("masks", "masked", "pattern_layout")
        self._loaded = {k: v for k, v in state_dict.items() if k in keys}
        if state_dict.get("scores"):
            self._scorer.load_state_dict(state_dict["scores"])

    #: whether a budget with ``action="adjust"`` may set this pruner's targets
    takes_targets: ClassVar[bool] = True
    #: whether its masks bring weights back (live at zero until they train): a prune that
    #: only zeroes leaves nonzeros that stay where they are
    regrows: ClassVar[bool] = False

    _SETTINGS: ClassVar[tuple[str, ...]] = (
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
        "parameters",
        "mask_storage",
        "pattern",
        "min_density",
        "max_sparsity",
        "score",
        "seed",
    )

    def settings(self) -> dict[str, Any]:
        """The constructor arguments (the schedule as its own settings; compared on resume)."""
        out = super().settings()
        if "schedule" in out:
            out["schedule"] = None if self.schedule is None else self.schedule.settings()
        for key in ("include_types", "include", "exclude"):
            out[key] = None if out[key] is None else list(out[key])
        if callable(self.parameters):  # a function, by its import path
            out["parameters"] = import_path(self.parameters)
        elif self.parameters is not None:
            out["parameters"] = list(self.parameters)
        if "score" in out:
            out["score"] = self._scorer.name
        return out
