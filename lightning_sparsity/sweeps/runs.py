"""The runs of a sweep: the plan, each run's config, one fit, and the results on disk.

A run is one LightningCLI fit of the sweep's config (:func:`run_one`), in
``OUTPUT/runs/<name>``, which records its result in ``sweep_run.json`` when it ends, done or
failed; the sweep (:mod:`.sweep`) and the frontier (:mod:`.frontier`) read those files.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from lightning_sparsity._files import write_json
from lightning_sparsity._text import count
from lightning_sparsity.control.budget import parse_flops
from lightning_sparsity.lightning_cli import CliError, sparsity_cli
from lightning_sparsity.pruning.scores import SCORES

__all__ = [
    "RESULT",
    "SEEDS",
    "Mode",
    "RunSpec",
    "SweepError",
    "build_cli",
    "collect_results",
    "edit_config",
    "load_result",
    "parse_config",
    "plan",
    "run_one",
]

Mode = Literal["max", "min"]
_CALLBACK = "SparsityCallback"
RESULT = "sweep_run.json"


class SweepError(ValueError):
    """A sweep that cannot start: a bad budget, a config without what it needs, ..."""


@dataclass(frozen=True)
class RunSpec:
    """One fit of a sweep.

    Attributes:
        name: the run's directory under ``OUTPUT/runs`` (``baseline_seed0``,
            ``budget25%_seed0``, ``sparsity0.8_seed1``).
        seed: ``seed_everything`` of the fit.
        budget: the budget target (``"25%"``, ``"1.2G"``), ``None`` for the baseline.
        sparsity: the pruner's final sparsity instead of a budget.
        score: the pruner's ``score`` (``"taylor"``) in a sweep across criteria (its run name
            ``budget25%_taylor_seed0``); ``"none"`` for that sweep's baseline; ``None``: the
            config's own, as a sweep without ``scores``.
    """

    name: str
    seed: int
    budget: str | None = None
    sparsity: float | None = None
    score: str | None = None

    @property
    def baseline(self) -> bool:
        """The dense run: no pruning, no budget."""
        return self.budget is None and self.sparsity is None

    @property
    def method(self) -> str | None:
        """The pruning criterion the sweep set (``None``: the config's, or the baseline)."""
        return None if self.baseline else self.score

    @property
    def label(self) -> str:
        """What the frontier groups by: ``"dense"``, the budget, or ``"sparsity 0.8"``.

        In a sweep across criteria the criterion comes first: ``"taylor 25%"``.
        """
        if self.budget is not None:
            target = self.budget
        else:
            target = "dense" if self.sparsity is None else f"sparsity {self.sparsity:g}"
        return target if self.method is None else f"{self.method} {target}"

    def directory(self, root: str | Path) -> Path:
        """The run's directory, ``root/runs/<name>``."""
        return Path(root) / "runs" / self.name

    def fields(self) -> dict[str, Any]:
        """The spec as a dict; ``score`` only when set (a sweep without scores is as it was)."""
        out = asdict(self)
        if out["score"] is None:
            del out["score"]
        return out

    def record(self, **fields: Any) -> dict[str, Any]:
        """The run's result record: the spec, its label, and ``fields``."""
        return {**self.fields(), "label": self.label, **fields}


#: what ``seed_everything`` takes: Lightning's ``min_seed_value`` / ``max_seed_value``
#: (lightning_fabric.utilities.seed, numpy's uint32 seeds)
SEEDS = (0, 2**32 - 1)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "%.-_" else "_" for c in text)


def _repeated(values: Sequence[Any]) -> bool:
    """Whether a value comes twice (by ``==``; unhashable values too)."""
    return any(v in values[:i] for i, v in enumerate(values))


def _target_text(target: tuple[float, bool]) -> str:
    value, fraction = target
    return f"{value * 100:g}% of dense" if fraction else f"{count(value)} FLOPs"


def _check_budgets(budgets: Sequence[Any], errors: list[str]) -> None:
    """Each budget parses, and no two spellings name the same target (``50%``, ``50.0%``)."""
    seen: dict[tuple[float, bool], Any] = {}
    for budget in budgets:
        try:
            target = parse_flops(budget)
        except ValueError as err:
            errors.append(f"budget {budget!r}: {err}")
            continue
        first = seen.setdefault(target, budget)
        if first != budget:
            errors.append(
                f"budgets {first!r} and {budget!r} are the same target ({_target_text(target)}):"
                " give each budget once"
            )


def _check_seeds(seeds: Sequence[Any], errors: list[str]) -> None:
    low, high = SEEDS
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not low <= seed <= high:
            errors.append(
                f"a seed must be an int in [{low}, {high}] (what seed_everything takes),"
                f" got {seed!r}"
            )


def _check_scores(scores: Sequence[Any], errors: list[str]) -> None:
    """Each score is a name the pruner's ``score=`` takes (``pruning.scores.SCORES``)."""
    if not scores:
        errors.append(f"the sweep needs at least one score (of {', '.join(SCORES)})")
    for score in scores:
        if score not in SCORES:
            errors.append(f"score {score!r} is not one the pruner takes: {', '.join(SCORES)}")


def _check_names(runs: Sequence[RunSpec]) -> None:
    """Two runs of one directory: the second would be skipped as finished.

    Raises:
        SweepError: naming the two values and the directory they share.
    """
    first: dict[str, RunSpec] = {}
    for spec in runs:
        other = first.setdefault(spec.name, spec)
        if other is not spec:
            kind, a, b = (
                ("budgets", repr(other.budget), repr(spec.budget))
                if spec.budget is not None
                else ("sparsities", repr(other.sparsity), repr(spec.sparsity))
            )
            raise SweepError(
                f"{kind} {a} and {b} share the run {spec.name!r} (its directory and frontier"
                " label): give values that differ in the run name"
            )


def plan(
    budgets: Sequence[str] = (),
    seeds: Sequence[int] = (0,),
    *,
    sparsities: Sequence[float] = (),
    baseline: bool = True,
    scores: Sequence[str] | None = None,
) -> list[RunSpec]:
    """The runs of a sweep: the dense baseline (first seed), then per budget, per seed.

    With ``scores`` (names the pruner's ``score=`` takes): per score, per budget, per seed,
    and still one dense baseline.

    Raises:
        SweepError: for no budgets and no sparsities, both given, an unparsable budget, two
            budgets of one target (``"50%"``, ``"50.0%"``), a sparsity outside ``[0, 1)``, no
            seeds, a seed outside ``[0, 2**32 - 1]`` (what ``seed_everything`` takes), an
            empty ``scores`` or a score the pruner does not take, repeated values, or two
            values of one run name.
    """
    errors: list[str] = []
    lists = {"budgets": budgets, "sparsities": sparsities, "seeds": seeds}
    if scores is not None:
        lists["scores"] = scores
    for name, values in lists.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            errors.append(f"`{name}` must be a list, got {values!r}")
    if errors:
        raise SweepError("; ".join(errors))
    if budgets and sparsities:
        errors.append("give --budgets or --sparsities, not both")
    if not budgets and not sparsities:
        errors.append("the sweep needs budgets (e.g. --budgets 50%,25%) or --sparsities")
    _check_budgets(budgets, errors)
    for s in sparsities:
        if isinstance(s, bool) or not (isinstance(s, (int, float)) and 0 <= s < 1):
            errors.append(f"a sparsity must be in [0, 1), got {s!r}")
    if not seeds:
        errors.append("the sweep needs at least one seed")
    _check_seeds(seeds, errors)
    if scores is not None:
        _check_scores(scores, errors)
    for name, values in lists.items():
        if _repeated(values):
            errors.append(f"{name} repeat a value: {list(values)}")
    if errors:
        raise SweepError("; ".join(errors))
    first = seeds[0]
    none = None if scores is None else "none"  # the baseline of a sweep across criteria
    runs = [RunSpec(f"baseline_seed{first}", first, score=none)] if baseline else []
    for score in [None] if scores is None else scores:
        part = "" if score is None else f"_{_safe(score)}"
        for budget in budgets:
            name = f"budget{_safe(budget)}{part}_seed"
            runs += [RunSpec(f"{name}{s}", s, budget=budget, score=score) for s in seeds]
        for sp in sparsities:
            name = f"sparsity{sp:g}{part}_seed"
            runs += [RunSpec(f"{name}{s}", s, sparsity=float(sp), score=score) for s in seeds]
    _check_names(runs)
    return runs


# ---------------------------------------------------------------------- one run


def build_cli(config: str, args: Sequence[str], edit: Callable[[Any], None]) -> Any:
    """LightningCLI (``run=False``) on ``config``, its parsed config edited before building."""
    argv, sys.argv = sys.argv, sys.argv[:1]  # the run's arguments are these, not ours
    try:
        return sparsity_cli(
            ["--config", config, *args], edit=edit, run=False, save_config_callback=None
        )
    finally:
        sys.argv = argv


_FABRIC = ("lightning_fabric", "lightning.fabric")


class _Parsed(Exception):
    """Carries the parsed config out of LightningCLI before anything is built."""

    def __init__(self, config: Any) -> None:
        super().__init__("parsed")
        self.config = config


def parse_config(config: str, overrides: Sequence[str]) -> Any:
    """The config with ``overrides`` as LightningCLI parses it; nothing is built or written.

    Raises:
        SweepError: if an override is not an option of the config's LightningCLI
            (``unrecognized arguments: --dry-run``) or a value does not parse.
    """

    def stop(parsed: Any) -> None:
        raise _Parsed(parsed)

    # LightningCLI seeds before it builds: its "Seed set to N" is not news here
    seed_logs = [logging.getLogger(f"{p}.utilities.seed") for p in _FABRIC]
    levels = [log.level for log in seed_logs]
    try:
        for log in seed_logs:
            log.setLevel(logging.WARNING)
        build_cli(config, overrides, stop)
    except _Parsed as parsed:
        return parsed.config
    except CliError as err:
        hint = (
            ": neither an option of sweep nor of the config's LightningCLI (see"
            " lightning-sparsity sweep --help)"
            if str(err).startswith("unrecognized arguments")
            else ""
        )
        raise SweepError(f"{err}{hint}") from err
    finally:
        for log, level in zip(seed_logs, levels, strict=True):
            log.setLevel(level)
    raise AssertionError("LightningCLI built the objects without calling edit")  # pragma: no cover


def _ns(class_path: str, **init_args: Any) -> Any:
    from jsonargparse import Namespace

    return Namespace(class_path=class_path, init_args=Namespace(**init_args))


def _sparsity_callbacks(config: Any) -> list[Any]:
    callbacks = config.get("trainer.callbacks") or []
    return [cb for cb in callbacks if str(cb.get("class_path", "")).endswith(_CALLBACK)]


def _set_score(args: Any, spec: RunSpec) -> None:
    """The pruner's ``score`` and ``seed`` set to the run's.

    Raises:
        SweepError: if the callback has no pruner, or one without a ``score`` argument.
    """
    pruning = args.get("pruning")
    if pruning is None:
        raise SweepError(
            f"--scores sets the pruner's score ({spec.score!r}), and the config's"
            " SparsityCallback has no pruner: add pruning (class_path"
            " lightning_sparsity.MagnitudePruner)"
        )
    init = pruning.get("init_args")
    if init is None or "score" not in init:
        raise SweepError(
            f"--scores sets the pruner's score ({spec.score!r}), and the config's pruner"
            f" {str(pruning.class_path).rsplit('.', 1)[-1]} takes no `score`: use"
            " lightning_sparsity.MagnitudePruner"
        )
    init.score = spec.score
    if "seed" in init:
        init.seed = spec.seed


def edit_config(config: Any, spec: RunSpec, run_dir: Path, monitor: str | None, mode: Mode) -> None:
    """Point the parsed config of a sweep at one run (in place).

    The logger becomes a TensorBoardLogger at ``run_dir``; a checkpoint (last, and best by
    ``monitor``) goes to ``run_dir/checkpoints``; the SparsityCallback gets the run's budget
    or sparsity (the baseline: no pruner, budget or guard), in a sweep across criteria the
    pruner's ``score`` and ``seed`` (the run's: each seed draws its own ``random`` scores),
    and HParams entries for the sweep.

    Raises:
        SweepError: if the config has no SparsityCallback, or no budget (pruner schedule) to
            override, or (a run with a score) no pruner that takes ``score``.
    """
    from lightning_sparsity._lightning import submodule

    found = _sparsity_callbacks(config)
    if len(found) != 1:
        raise SweepError(
            f"the config must hold one lightning_sparsity.SparsityCallback in"
            f" trainer.callbacks (found {len(found)}): the sweep overrides its budget"
        )
    args = found[0].init_args
    if spec.baseline:
        args.pruning = args.budget = args.guard = None
    elif spec.budget is not None:
        if args.get("budget") is None:
            raise SweepError(
                "the config's SparsityCallback has no budget to override: add a FlopBudget"
                " (class_path lightning_sparsity.FlopBudget) or sweep --sparsities"
            )
        args.budget.init_args.target = spec.budget
    else:
        schedule = (args.get("pruning") or {}).get("init_args", {}).get("schedule")
        if schedule is None:
            raise SweepError(
                "--sparsities overrides the pruner's schedule, and the config's"
                " SparsityCallback has none: add pruning.init_args.schedule"
            )
        key = "sparsity" if str(schedule.class_path).endswith("Constant") else "final_sparsity"
        schedule.init_args[key] = spec.sparsity
    if spec.method is not None:
        _set_score(args, spec)
    # the settings the sweep varies, in every run (the baseline too) with one type each:
    # TensorBoard's HParams dashboard takes its columns from one run's experiment, and the
    # callback lists these first (the run's name is the session's name already)
    args.hparams = {"sweep/seed": spec.seed, "sweep/label": spec.label}
    if spec.budget is not None or spec.baseline:
        args.hparams["budget/target"] = spec.budget if spec.budget is not None else "none"
    if spec.score is not None:  # beside the budget: the pruner's own entry, "none" for dense
        args.hparams["pruning/score"] = spec.score
    args.hparams_experiment = not spec.baseline  # its columns lack the pruner's and budget's
    loggers = submodule("loggers").__name__
    config["trainer.logger"] = _ns(
        f"{loggers}.TensorBoardLogger",
        save_dir=str(run_dir.parent.parent),
        name=run_dir.parent.name,
        version=run_dir.name,
        default_hp_metric=False,
    )
    checkpoint = {"dirpath": str(run_dir / "checkpoints"), "save_last": True}
    if monitor is not None:
        checkpoint.update(monitor=monitor, mode=mode)
    callbacks = [cb for cb in config["trainer.callbacks"] if "ModelCheckpoint" not in cb.class_path]
    config["trainer.callbacks"] = [
        *callbacks,
        _ns(f"{submodule('callbacks').__name__}.ModelCheckpoint", **checkpoint),
    ]
    config["trainer.enable_checkpointing"] = True
    config["trainer.enable_progress_bar"] = False


def _metric(trainer: Any, monitor: str | None) -> float | None:
    if monitor is None:
        return None
    value = trainer.callback_metrics.get(monitor)
    return None if value is None else float(value)


def run_one(
    config: str,
    spec: RunSpec,
    root: str,
    *,
    monitor: str | None = None,
    mode: Mode = "max",
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Fit one run of a sweep (resuming from its last checkpoint) and record its result.

    Args:
        config: the YAML config.
        spec: the run.
        root: the sweep's output directory; the run lives in ``root/runs/<spec.name>``.
        monitor: the metric the frontier reports (its last logged value).
        mode: ``"max"`` or ``"min"``: which way ``monitor`` is better.
        overrides: more LightningCLI arguments (``--trainer.max_epochs=3``).

    Returns:
        The result, also written to ``runs/<name>/sweep_run.json``: status ``"done"`` or
        ``"failed"`` (with the error), the monitored metric, the last point's sparse FLOPs,
        FLOP ratio and nonzero parameters, epochs, the stopping reason, the total training
        FLOPs of the fit (sparse and dense kernels; ``None`` with ``train_flops=False``),
        wall seconds.
    """
    run_dir = spec.directory(root)
    run_dir.mkdir(parents=True, exist_ok=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    started = time.monotonic()
    result = spec.record(log_dir=str(run_dir))
    try:
        cli = build_cli(
            str(config),
            [f"--seed_everything={spec.seed}", *overrides],
            lambda cfg: edit_config(cfg, spec, run_dir, monitor, mode),
        )
        trainer = cli.trainer
        trainer.fit(
            cli.model, datamodule=cli.datamodule, ckpt_path=str(last) if last.is_file() else None
        )
        callback = next(cb for cb in trainer.callbacks if type(cb).__name__ == _CALLBACK)
        point = callback.history[-1]
        metric = _metric(trainer, monitor)
        result.update(
            status="done",
            metric=metric,
            flops=point.flops,
            flops_sparse=point.flops_sparse,
            flops_ratio=point.flops_ratio,
            params_nonzero=point.params_nonzero,
            param_sparsity=point.param_sparsity,
            epochs=int(trainer.current_epoch),
            stopping_reason=callback.stopping_reason,
            train_flops_total=point.train_flops_total,
            train_flops_dense_total=point.train_flops_dense_total,
        )
        if monitor is not None and (metric is None or not math.isfinite(metric)):
            result.update(status="failed", error=f"{monitor} is {metric} at the end of the fit")
    except Exception as err:  # a failed run is recorded; the sweep goes on
        result.update(
            status="failed",
            error=f"{type(err).__name__}: {err}",
            traceback=traceback.format_exc(limit=8),
        )
    result["wall_s"] = round(time.monotonic() - started, 3)
    write_json(run_dir / RESULT, result)
    return result


def load_result(root: str | Path, spec: RunSpec) -> dict[str, Any] | None:
    """The recorded result of a run, or ``None`` if it has not finished."""
    path = spec.directory(root) / RESULT
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def collect_results(root: Path, specs: Sequence[RunSpec]) -> list[dict[str, Any]]:
    """The recorded result of every run of a plan; runs not finished are ``"missing"``."""
    out = []
    for spec in specs:
        result = load_result(root, spec)
        out.append(result if result is not None else spec.record(status="missing", error="not run"))
    return out
