"""Budget sweeps: one LightningCLI fit per (budget, seed) of one config, and the frontier.

``lightning-sparsity sweep --config CFG.yaml --budgets 50%,25%,10% --seeds 0,1`` (or
:func:`sweep`) runs, from the same YAML config, a dense baseline at the first seed (the
:class:`~lightning_sparsity.SparsityCallback` measuring only) and one fit per budget and seed
with the callback's budget target overridden (``--sparsities`` overrides the pruner's final
sparsity instead). Every run logs to its own version under one TensorBoard root
(``OUTPUT/runs/<run>``) with one HParams entry (budget, seed, pruner, schedule, model and
data settings) and its final metrics, so TensorBoard's HParams dashboard shows the frontier
across runs. At the end, and after every run, ``frontier.csv`` / ``.json`` / ``.md`` and
``frontier.png`` are written atomically from the runs' own results.

Resumable: a run that finished left ``runs/<run>/sweep_run.json`` and is skipped; an
unfinished one resumes from its last checkpoint (``runs/<run>/checkpoints/last.ckpt``). A run
that fails (an exception, a non-finite monitored metric) is recorded with its error; the
sweep goes on and reports failure at the end.

The runs execute in this process one after another (``backend="inprocess"``) or as Ray Tune
trials (``backend="ray"``, the ``ray`` extra), each one Lightning fit.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from lightning_sparsity.budget import format_count, parse_flops

__all__ = [
    "SEEDS",
    "RunSpec",
    "SweepError",
    "collect_results",
    "format_clock",
    "frontier_rows",
    "plan",
    "run_one",
    "sweep",
    "write_frontier",
    "write_json",
]

Mode = Literal["max", "min"]
Backend = Literal["inprocess", "ray"]
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
    """

    name: str
    seed: int
    budget: str | None = None
    sparsity: float | None = None

    @property
    def baseline(self) -> bool:
        """The dense run: no pruning, no budget."""
        return self.budget is None and self.sparsity is None

    @property
    def label(self) -> str:
        """What the frontier groups by: ``"dense"``, the budget, or ``"sparsity 0.8"``."""
        if self.budget is not None:
            return self.budget
        return "dense" if self.sparsity is None else f"sparsity {self.sparsity:g}"

    def directory(self, root: str | Path) -> Path:
        """The run's directory, ``root/runs/<name>``."""
        return Path(root) / "runs" / self.name

    def record(self, **fields: Any) -> dict[str, Any]:
        """The run's result record: the spec, its label, and ``fields``."""
        return {**asdict(self), "label": self.label, **fields}


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
    return f"{value * 100:g}% of dense" if fraction else f"{format_count(value)} FLOPs"


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
) -> list[RunSpec]:
    """The runs of a sweep: the dense baseline (first seed), then per budget, per seed.

    Raises:
        SweepError: for no budgets and no sparsities, both given, an unparsable budget, two
            budgets of one target (``"50%"``, ``"50.0%"``), a sparsity outside ``[0, 1)``, no
            seeds, a seed outside ``[0, 2**32 - 1]`` (what ``seed_everything`` takes),
            repeated values, or two values of one run name.
    """
    errors: list[str] = []
    lists = {"budgets": budgets, "sparsities": sparsities, "seeds": seeds}
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
    for name, values in lists.items():
        if _repeated(values):
            errors.append(f"{name} repeat a value: {list(values)}")
    if errors:
        raise SweepError("; ".join(errors))
    runs = [RunSpec(f"baseline_seed{seeds[0]}", seeds[0])] if baseline else []
    for budget in budgets:
        runs += [RunSpec(f"budget{_safe(budget)}_seed{s}", s, budget=budget) for s in seeds]
    for sp in sparsities:
        runs += [RunSpec(f"sparsity{sp:g}_seed{s}", s, sparsity=float(sp)) for s in seeds]
    _check_names(runs)
    return runs


# ---------------------------------------------------------------------- one run


def _build(config: str, args: Sequence[str], edit: Callable[[Any], None]) -> Any:
    """LightningCLI (``run=False``) on ``config``, its parsed config edited before building."""
    from lightning_sparsity._lightning import pl, submodule

    class RunCLI(submodule("cli").LightningCLI):  # type: ignore[misc]
        def before_instantiate_classes(self) -> None:
            edit(self.config)

    argv, sys.argv = sys.argv, sys.argv[:1]  # the run's arguments are these, not ours
    try:
        return RunCLI(
            pl.LightningModule,
            pl.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=["--config", config, *args],
            run=False,
            parser_kwargs={"exit_on_error": False},
            save_config_callback=None,
        )
    finally:
        sys.argv = argv


def _ns(class_path: str, **init_args: Any) -> Any:
    from jsonargparse import Namespace

    return Namespace(class_path=class_path, init_args=Namespace(**init_args))


def _sparsity_callbacks(config: Any) -> list[Any]:
    callbacks = config.get("trainer.callbacks") or []
    return [cb for cb in callbacks if str(cb.get("class_path", "")).endswith(_CALLBACK)]


def edit_config(config: Any, spec: RunSpec, run_dir: Path, monitor: str | None, mode: Mode) -> None:
    """Point the parsed config of a sweep at one run (in place).

    The logger becomes a TensorBoardLogger at ``run_dir``; a checkpoint (last, and best by
    ``monitor``) goes to ``run_dir/checkpoints``; the SparsityCallback gets the run's budget
    or sparsity (the baseline: no pruner, budget or guard) and HParams entries for the
    sweep.

    Raises:
        SweepError: if the config has no SparsityCallback, or no budget (pruner schedule) to
            override.
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
    args.hparams = {"sweep/run": spec.name, "sweep/seed": spec.seed, "sweep/label": spec.label}
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
        FLOP ratio and nonzero parameters, epochs, the stopping reason, wall seconds.
    """
    run_dir = spec.directory(root)
    run_dir.mkdir(parents=True, exist_ok=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    started = time.monotonic()
    result = spec.record(log_dir=str(run_dir))
    try:
        cli = _build(
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


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a temporary file, then a rename)."""
    write_text(path, json.dumps(data, indent=1, default=str) + "\n")


def write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically (a temporary file, then a rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_result(root: str | Path, spec: RunSpec) -> dict[str, Any] | None:
    """The recorded result of a run, or ``None`` if it has not finished."""
    path = spec.directory(root) / RESULT
    if not path.is_file():
        return None
    return json.loads(path.read_text())


# ---------------------------------------------------------------------- the frontier


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def frontier_rows(results: Sequence[dict[str, Any]], mode: Mode = "max") -> list[dict[str, Any]]:
    """One row per label (dense, each budget or sparsity) over its seeds.

    Per row: runs done and failed; mean ± sample std (n-1) of the monitored metric; the
    means of sparse FLOPs, FLOP ratio and nonzero parameters; the dense baseline's mean
    metric and the difference to it; whether the row is on the Pareto front (no other row
    has at most its sparse FLOPs and a metric at least as good, one of the two strictly).
    """
    labels = list(dict.fromkeys(r["label"] for r in results))
    rows = []
    for label in labels:
        group = [r for r in results if r["label"] == label]
        done = [r for r in group if r["status"] == "done"]
        metric_mean, metric_std = _mean_std(
            [r["metric"] for r in done if r.get("metric") is not None]
        )
        flops = [r["flops_sparse"] for r in done]
        rows.append(
            {
                "label": label,
                "budget": group[0].get("budget"),
                "sparsity": group[0].get("sparsity"),
                "runs": len(done),
                "failed": sum(r["status"] == "failed" for r in group),
                "pending": sum(r["status"] == "missing" for r in group),
                "metric_mean": metric_mean,
                "metric_std": metric_std,
                "flops_sparse": statistics.fmean(flops) if flops else None,
                "flops_ratio": statistics.fmean(r["flops_ratio"] for r in done) if done else None,
                "params_nonzero": statistics.fmean(r["params_nonzero"] for r in done)
                if done
                else None,
            }
        )
    dense = next((r for r in rows if r["label"] == "dense"), None)
    base = None if dense is None else dense["metric_mean"]
    sign = 1.0 if mode == "max" else -1.0
    for row in rows:
        row["baseline_metric"] = base
        row["delta"] = (
            None if base is None or row["metric_mean"] is None else row["metric_mean"] - base
        )
        row["pareto"] = row["metric_mean"] is not None and not any(
            other is not row
            and other["metric_mean"] is not None
            and other["flops_sparse"] <= row["flops_sparse"]
            and sign * other["metric_mean"] >= sign * row["metric_mean"]
            and (
                other["flops_sparse"] < row["flops_sparse"]
                or sign * other["metric_mean"] > sign * row["metric_mean"]
            )
            for other in rows
        )
    return rows


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}g}"
    return str(value)


def frontier_markdown(
    rows: Sequence[dict[str, Any]], failed: Sequence[dict[str, Any]], monitor: str | None
) -> str:
    """The frontier as a markdown table, failed runs listed after it."""
    name = monitor or "metric"
    head = ["run", "done", f"{name} (mean ± std)", "Δ vs dense", "sparse FLOPs", "sparse/dense"]
    lines = [
        "| " + " | ".join([*head, "nonzero params", "Pareto"]) + " |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        metric = (
            "—" if r["metric_mean"] is None else f"{r['metric_mean']:.4f} ± {r['metric_std']:.4f}"
        )
        delta = "—" if r["delta"] is None else f"{r['delta']:+.4f}"
        lines.append(
            f"| {r['label']} | {r['runs']}/{r['runs'] + r['failed'] + r['pending']} | {metric} |"
            f" {delta} |"
            f" {_fmt(r['flops_sparse'])} | {_fmt(r['flops_ratio'])} |"
            f" {_fmt(r['params_nonzero'])} | {'yes' if r['pareto'] else ''} |"
        )
    for r in failed:
        lines.append("")
        if r["status"] == "missing":
            lines.append(f"Not run yet: {r['name']}")
        else:
            lines.append(f"Failed: {r['name']}: {r.get('error', '?')}")
    return "\n".join(lines) + "\n"


def plot_frontier(
    rows: Sequence[dict[str, Any]], path: Path, monitor: str | None, mode: Mode
) -> None:
    """Metric against sparse FLOPs (log x) with error bars, the dense point, the Pareto front."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), constrained_layout=True)
    done = [r for r in rows if r["metric_mean"] is not None and r["flops_sparse"]]
    pruned = [r for r in done if r["label"] != "dense"]
    ax.errorbar(
        [r["flops_sparse"] for r in pruned],
        [r["metric_mean"] for r in pruned],
        yerr=[r["metric_std"] for r in pruned],
        fmt="o",
        capsize=3,
        label="budgets (mean ± std over seeds)",
    )
    for r in pruned:
        ax.annotate(
            r["label"],
            (r["flops_sparse"], r["metric_mean"]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
        )
    dense = [r for r in done if r["label"] == "dense"]
    if dense:
        ax.errorbar(
            [dense[0]["flops_sparse"]], [dense[0]["metric_mean"]], yerr=[dense[0]["metric_std"]],
            fmt="s", color="black", capsize=3, label="dense baseline",
        )  # fmt: skip
    front = sorted((r for r in done if r["pareto"]), key=lambda r: r["flops_sparse"])
    if len(front) > 1:
        ax.plot(
            [r["flops_sparse"] for r in front],
            [r["metric_mean"] for r in front],
            "--",
            color="tab:red",
            label="Pareto front",
        )
    ax.set_xscale("log")
    better = "higher" if mode == "max" else "lower"
    ax.set(
        xlabel="sparse FLOPs per example (log)",
        ylabel=f"{monitor or 'metric'} ({better} is better)",
    )
    ax.set_title("accuracy–FLOPs frontier")
    ax.legend(fontsize=8)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def write_frontier(
    root: str | Path, results: Sequence[dict[str, Any]], monitor: str | None, mode: Mode
) -> list[dict[str, Any]]:
    """``frontier.csv`` / ``.json`` / ``.md`` / ``.png`` in ``root``, each written atomically."""
    import csv
    import io

    root = Path(root)
    rows = frontier_rows(results, mode)
    failed = [r for r in results if r["status"] != "done"]
    write_json(
        root / "frontier.json",
        {"monitor": monitor, "mode": mode, "rows": rows, "runs": list(results)},
    )
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=list(rows[0]) if rows else ["label"], lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows(rows)
    for name, text in (
        ("frontier.csv", buffer.getvalue()),
        ("frontier.md", frontier_markdown(rows, failed, monitor)),
    ):
        write_text(root / name, text)
    if any(r["metric_mean"] is not None for r in rows):
        plot_frontier(rows, root / "frontier.png", monitor, mode)
    return rows


# ---------------------------------------------------------------------- the sweep


def _dry_run(config: str, spec: RunSpec, monitor: str | None, overrides: Sequence[str]) -> None:
    """Build the run and fit one batch (``fast_dev_run``) before any real run.

    So config errors, and a monitor the model never logs, show at once.

    Raises:
        SweepError: naming what is wrong.
    """
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "runs" / "dry_run"
        try:
            cli = _build(
                config,
                [*overrides, "--trainer.fast_dev_run=1"],
                lambda cfg: edit_config(cfg, spec, run_dir, None, "max"),
            )
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        except SweepError:
            raise
        except Exception as err:
            cause: BaseException = err
            while cause.__cause__ is not None:
                cause = cause.__cause__
            raise SweepError(
                f"the config does not make a run ({spec.name}): {type(cause).__name__}:"
                f" {' '.join(str(cause).split())}"
            ) from err
        logged = sorted(cli.trainer.callback_metrics)
    if monitor is not None and monitor not in logged:
        raise SweepError(
            f"--monitor {monitor!r} is never logged by the model (one training and one"
            f" validation batch logged {logged}); log it with self.log or pick one of those"
        )


_MANIFEST = "sweep.json"
_FIXED = ("config", "monitor", "mode", "overrides")


def _manifest(root: Path, manifest: dict[str, Any]) -> None:
    """Record the sweep's arguments; refuse to mix runs of another sweep in one directory.

    Raises:
        SweepError: if ``root`` holds another sweep, or a manifest that is not one.
    """
    path = root / _MANIFEST
    if path.is_file():
        try:
            old = json.loads(path.read_text())
            if not isinstance(old, dict):
                raise ValueError(f"a JSON {type(old).__name__}, not an object")
        except ValueError as err:  # JSONDecodeError is one
            raise SweepError(
                f"{path} is not a sweep's manifest ({err}); pick another --output"
            ) from err
        changed = [k for k in _FIXED if old.get(k) != manifest.get(k)]
        if changed:
            raise SweepError(
                f"{root} holds a sweep with other {', '.join(changed)}"
                f" ({', '.join(f'{k}={old.get(k)!r}' for k in changed)}); pick another --output"
            )
    write_json(path, manifest)


def format_clock(seconds: float) -> str:
    """``75.2`` seconds → ``"1:15"``."""
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}:{secs:02d}"


def sweep(
    config: str | Path,
    budgets: Sequence[str] = (),
    *,
    sparsities: Sequence[float] = (),
    seeds: Sequence[int] = (0,),
    monitor: str | None = None,
    mode: Mode = "max",
    baseline: bool = True,
    output: str | Path = "sparsity_sweeps",
    overrides: Sequence[str] = (),
    backend: Backend = "inprocess",
    address: str | None = None,
    retry_failed: bool = False,
    echo: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run a budget sweep of one config and write its frontier (see the module docstring).

    Args:
        config: a LightningCLI YAML config holding a ``SparsityCallback`` with a budget.
        budgets: budget targets, one run per budget and seed (``"50%"``, ``"1.2G"``).
        sparsities: instead of budgets, final sparsities of the pruner's schedule.
        seeds: ``seed_everything`` values (ints in ``[0, 2**32 - 1]``), one run each.
        monitor: the metric the frontier reports (its last value), e.g. ``"val_acc"``.
        mode: ``"max"`` if a higher ``monitor`` is better, ``"min"`` if lower.
        baseline: include a dense run at the first seed (the callback only measures).
        output: the sweep's directory (TensorBoard root: ``tensorboard --logdir OUTPUT``).
        overrides: more LightningCLI arguments for every run (``--trainer.max_epochs=3``).
        backend: ``"inprocess"`` or ``"ray"`` (Ray Tune trials; ``pip install ray[tune]``).
        address: with ``"ray"``, the cluster to join (``ray.init(address=...)``); ``None``
            starts Ray on this machine.
        retry_failed: run again the runs recorded as failed (finished ones are skipped).
        echo: where progress lines go.

    Returns:
        The results of every run of the plan (also in ``frontier.json``).

    Raises:
        SweepError: before any run, for bad arguments (:func:`plan`: checked before anything
            is written), a config without a SparsityCallback and budget, or a monitor the
            model never logs.
    """
    specs = plan(budgets, seeds, sparsities=sparsities, baseline=baseline)
    if mode not in ("max", "min"):
        raise SweepError(f"`mode` must be 'max' or 'min', got {mode!r}")
    if backend not in ("inprocess", "ray"):
        raise SweepError(f"`backend` must be 'inprocess' or 'ray', got {backend!r}")
    if address is not None and backend != "ray":
        raise SweepError(
            f"--address (the Ray cluster to join) goes with --backend ray, got {address!r} with"
            f" backend {backend!r}"
        )
    if not Path(config).is_file():
        raise SweepError(f"config {str(config)!r} does not exist")
    config = str(Path(config).resolve())
    root = Path(output).resolve()
    if root.exists() and not root.is_dir():
        raise SweepError(f"output {str(output)!r} is a file, not a directory")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SweepError(f"output {str(output)!r}: cannot make the directory: {err}") from err
    _manifest(
        root,
        {
            "config": config,
            "monitor": monitor,
            "mode": mode,
            "overrides": list(overrides),
            "runs": [asdict(s) for s in specs],
        },
    )
    todo = []
    for spec in specs:
        done = load_result(root, spec)
        if done is not None and (done["status"] == "done" or not retry_failed):
            continue
        todo.append(spec)
    if backend == "ray":  # Ray missing: say so before any work
        from lightning_sparsity.sweep_ray import run_ray
    if todo:
        _dry_run(config, next((s for s in todo if not s.baseline), todo[0]), monitor, overrides)
    echo(f"sweep: {len(specs)} runs, {len(specs) - len(todo)} already finished; {root}")
    if backend == "ray":
        run_ray(config, todo, str(root), monitor, mode, overrides, address, echo)
    else:
        started = time.monotonic()
        for i, spec in enumerate(todo, 1):
            elapsed = time.monotonic() - started
            left = (
                f", about {format_clock(elapsed / (i - 1) * (len(todo) - i + 1))} left"
                if i > 1
                else ""
            )
            echo(f"sweep: run {i}/{len(todo)} {spec.name} (elapsed {format_clock(elapsed)}{left})")
            result = run_one(
                config, spec, str(root), monitor=monitor, mode=mode, overrides=overrides
            )
            if result["status"] != "done":
                echo(f"sweep: {spec.name} failed: {result['error']}")
            if i < len(todo):  # the last run's frontier is written below
                write_frontier(root, collect_results(root, specs), monitor, mode)
    results = collect_results(root, specs)
    write_frontier(root, results, monitor, mode)
    failed = [r["name"] for r in results if r["status"] != "done"]
    echo(
        f"sweep: done, {len(results) - len(failed)} of {len(results)} runs; frontier in"
        f" {root / 'frontier.md'}" + (f"; failed: {failed}" if failed else "")
    )
    return results


def collect_results(root: Path, specs: Sequence[RunSpec]) -> list[dict[str, Any]]:
    """The recorded result of every run of a plan; runs not finished are ``"missing"``."""
    out = []
    for spec in specs:
        result = load_result(root, spec)
        out.append(result if result is not None else spec.record(status="missing", error="not run"))
    return out
