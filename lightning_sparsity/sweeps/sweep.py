"""Budget sweeps: one LightningCLI fit per (budget, seed) of one config, and the frontier.

``lightning-sparsity sweep --config CFG.yaml --budgets 50%,25%,10% --seeds 0,1`` (or
:func:`sweep`) runs, from the same YAML config, a dense baseline at the first seed (the
:class:`~lightning_sparsity.SparsityCallback` measuring only) and one fit per budget and seed
with the callback's budget target overridden (``--sparsities`` overrides the pruner's final
sparsity instead). ``--scores magnitude,random,taylor`` adds an axis: one fit per pruning
criterion, budget and seed, each with the pruner's ``score`` (and its ``seed``: the run's)
set, and still one dense baseline; the frontier draws one line per criterion.

Every run logs to its own version under one TensorBoard root
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
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from lightning_sparsity._files import write_json
from lightning_sparsity._text import clock, one_line
from lightning_sparsity.sweeps.frontier import write_frontier
from lightning_sparsity.sweeps.runs import (
    Mode,
    RunSpec,
    SweepError,
    build_cli,
    collect_results,
    edit_config,
    load_result,
    parse_config,
    plan,
    run_one,
)

__all__ = ["PlannedRun", "SweepPlan", "sweep", "sweep_plan"]

Backend = Literal["inprocess", "ray"]


def _dry_run(config: str, spec: RunSpec, monitor: str | None, overrides: Sequence[str]) -> None:
    """Build the run and fit one batch (``fast_dev_run``) before any real run.

    So config errors, and a monitor the model never logs, show at once.

    Raises:
        SweepError: naming what is wrong.
    """
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "runs" / "dry_run"
        try:
            cli = build_cli(
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
                f" {one_line(cause)}"
            ) from err
        logged = sorted(cli.trainer.callback_metrics)
    if monitor is not None and monitor not in logged:
        raise SweepError(
            f"--monitor {monitor!r} is never logged by the model (one training and one"
            f" validation batch logged {logged}); log it with self.log or pick one of those"
        )


_MANIFEST = "sweep.json"
_CALLBACK_KEY = "SparsityCallback"
_FIXED = ("config", "monitor", "mode", "overrides")


def _check_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """Refuse to mix runs of another sweep in one directory; read only.

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


def _start(root: Path, manifest: dict[str, Any]) -> None:
    """Make the output directory and record the sweep's arguments: the first write.

    Raises:
        SweepError: if the directory cannot be made.
    """
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SweepError(f"output {str(root)!r}: cannot make the directory: {err}") from err
    write_json(root / _MANIFEST, manifest)


def _manifest_of(
    config: str, monitor: str | None, mode: str, overrides: Sequence[str], specs: Sequence[RunSpec]
) -> dict[str, Any]:
    return {
        "config": config,
        "monitor": monitor,
        "mode": mode,
        "overrides": list(overrides),
        "runs": [s.fields() for s in specs],
    }


def _check(
    config: str | Path, output: str | Path, mode: str, backend: str, address: str | None
) -> tuple[str, Path]:
    """The config's absolute path and the output directory (not made), once the options agree.

    Raises:
        SweepError: naming the bad option.
    """
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
    root = Path(output).resolve()
    if root.exists() and not root.is_dir():
        raise SweepError(f"output {str(output)!r} is a file, not a directory")
    return str(Path(config).resolve()), root


def _to_run(result: dict[str, Any] | None, retry_failed: bool) -> bool:
    """Whether a run with this recorded result (``None``: none yet) runs now."""
    return result is None or (result["status"] != "done" and retry_failed)


def _run_here(
    config: str,
    todo: Sequence[RunSpec],
    root: Path,
    monitor: str | None,
    mode: Mode,
    overrides: Sequence[str],
    echo: Callable[[str], None],
    frontier: Callable[[], None],
) -> None:
    """The runs one after another in this process; the frontier after each but the last."""
    started = time.monotonic()
    for i, spec in enumerate(todo, 1):
        elapsed = time.monotonic() - started
        left = f", about {clock(elapsed / (i - 1) * (len(todo) - i + 1))} left" if i > 1 else ""
        echo(f"sweep: run {i}/{len(todo)} {spec.name} (elapsed {clock(elapsed)}{left})")
        result = run_one(config, spec, str(root), monitor=monitor, mode=mode, overrides=overrides)
        if result["status"] != "done":
            echo(f"sweep: {spec.name} failed: {result['error']}")
        if i < len(todo):  # the sweep writes the last run's
            frontier()


def sweep(
    config: str | Path,
    budgets: Sequence[str] = (),
    *,
    sparsities: Sequence[float] = (),
    seeds: Sequence[int] = (0,),
    scores: Sequence[str] | None = None,
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
        scores: pruning criteria (names the pruner's ``score=`` takes: ``"magnitude"``,
            ``"random"``, ``"taylor"``, ...), one run per score, budget and seed, each
            setting the pruner's ``score`` and its ``seed`` to the run's; ``None``: the
            config's pruner as it is (run names without a score).
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
        SweepError: before any run and before anything is written, for bad arguments
            (:func:`plan`), an override the config's LightningCLI does not know, an output
            that holds another sweep, a config without a SparsityCallback and budget, or a
            monitor the model never logs.
    """
    specs = plan(budgets, seeds, sparsities=sparsities, baseline=baseline, scores=scores)
    config, root = _check(config, output, mode, backend, address)
    manifest = _manifest_of(config, monitor, mode, overrides, specs)
    _check_manifest(root, manifest)
    parse_config(config, overrides)  # an unknown flag is the parser's error
    todo = [s for s in specs if _to_run(load_result(root, s), retry_failed)]
    if backend == "ray":  # Ray missing: say so before any work
        from lightning_sparsity.sweeps.ray import run_ray

    def frontier() -> None:  # of every run finished so far
        write_frontier(root, collect_results(root, specs), monitor, mode)

    if todo:
        _dry_run(config, next((s for s in todo if not s.baseline), todo[0]), monitor, overrides)
    _start(root, manifest)  # nothing is written before this point
    echo(f"sweep: {len(specs)} runs, {len(specs) - len(todo)} already finished; {root}")
    if backend == "ray":
        run_ray(config, todo, str(root), monitor, mode, overrides, address, echo, frontier)
    else:
        _run_here(config, todo, root, monitor, mode, overrides, echo, frontier)
    results = collect_results(root, specs)
    write_frontier(root, results, monitor, mode)
    failed = [r["name"] for r in results if r["status"] != "done"]
    echo(
        f"sweep: done, {len(results) - len(failed)} of {len(results)} runs; frontier in"
        f" {root / 'frontier.md'}" + (f"; failed: {failed}" if failed else "")
    )
    return results


# ---------------------------------------------------------------------- the plan

#: a change of one config key: (key, the config's value, the run's value)
Change = tuple[str, str, str]
_ABSENT = object()


def _class(path: Any) -> str:
    return str(path).rsplit(".", 1)[-1]


def _plain(value: Any) -> Any:
    """A parsed config as plain values; a list of ``class_path`` items keyed by class name."""
    from jsonargparse import Namespace

    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, dict):
        if "class_path" in value:  # Class(init_args...): the init_args one level up
            args = value.get("init_args") or {}
            args = args.as_dict() if isinstance(args, Namespace) else dict(args)
            return {"class_path": value["class_path"], **{k: _plain(v) for k, v in args.items()}}
        return {k: _plain(v) for k, v in value.items()}
    if (
        isinstance(value, list)
        and value
        and all(isinstance(v, (dict, Namespace)) and "class_path" in v for v in value)
    ):
        keyed: dict[str, Any] = {}
        for item in value:
            name = _class(item["class_path"])
            keyed[name if name not in keyed else f"{name}#{len(keyed)}"] = _plain(item)
        return keyed
    return value


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "(absent)"
    if isinstance(value, dict) and "class_path" in value:
        args = [f"{k}={v!r}" for k, v in value.items() if k != "class_path" and v is not None]
        more = ", ..." if len(args) > 5 else ""
        return f"{_class(value['class_path'])}({', '.join(args[:5])}{more})"
    return repr(value)


def _diff(old: Any, new: Any, key: str = "") -> list[Change]:
    """The keys whose values differ between two plain configs, with both values shown."""
    both = isinstance(old, dict) and isinstance(new, dict)
    if both and old.get("class_path") == new.get("class_path"):
        changes: list[Change] = []
        for k in dict.fromkeys([*old, *new]):
            sub = f"{key}.{k}" if key else str(k)
            changes += _diff(old.get(k, _ABSENT), new.get(k, _ABSENT), sub)
        return changes
    if old == new:
        return []
    if isinstance(old, dict) and "class_path" in old and new is not _ABSENT:
        return [(key, _class(old["class_path"]), _show(new))]  # replaced: not every default
    return [(key, _show(old), _show(new))]


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep's plan.

    Attributes:
        spec: the run.
        status: ``"done"``, ``"failed"``, ``"started"`` (a checkpoint, no result) or
            ``"to run"``.
        note: what the status says more: the metric, the error, the checkpoint.
        runs: whether the sweep runs it (a failed run: only with ``retry_failed``).
        changes: how this run's config differs from the config, beyond every run's changes.
    """

    spec: RunSpec
    status: str
    note: str
    runs: bool
    changes: tuple[Change, ...]


@dataclass(frozen=True)
class SweepPlan:
    """What :func:`sweep` would do with the same arguments; nothing run, nothing written.

    Attributes:
        config: the config's absolute path.
        output: the sweep's directory.
        overrides: the LightningCLI overrides of every run.
        common: how every run's config differs from the config (logger, checkpoints).
        runs: the runs, in order.
    """

    config: str
    output: Path
    overrides: tuple[str, ...]
    common: tuple[Change, ...]
    runs: tuple[PlannedRun, ...]

    def to_text(self) -> str:
        """The plan as the ``sweep --plan`` command prints it."""
        todo = sum(r.runs for r in self.runs)
        finished = sum(r.status in ("done", "failed") for r in self.runs)
        lines = [
            f"sweep plan: {len(self.runs)} runs, {finished} finished, {todo} to run"
            " (nothing run, nothing written)",
            f"  config:    {self.config}",
            f"  overrides: {' '.join(self.overrides) or '(none)'}",
            f"  OUTPUT:    {self.output}",
            "every run, against the config:",
            *(f"  {k}: {old} -> {new}" for k, old, new in self.common),
            "the runs (status, then how each differs from the config):",
        ]
        width = max(len(r.spec.name) for r in self.runs)
        for run in self.runs:
            note = f" ({run.note})" if run.note else ""
            lines.append(f"  {run.spec.name:<{width}}  {run.status}{note}")
            lines += [f"      {k}: {old} -> {new}" for k, old, new in run.changes]
        return "\n".join(lines) + "\n"


def _status(root: Path, spec: RunSpec, monitor: str | None, retry_failed: bool) -> PlannedRun:
    result = load_result(root, spec)
    if result is None:
        last = spec.directory(root) / "checkpoints" / "last.ckpt"
        if last.is_file():
            note = f"resumes from {last.relative_to(root)}"
            return PlannedRun(spec, "started", note, True, ())
        return PlannedRun(spec, "to run", "", True, ())
    if result["status"] == "done":
        metric = result.get("metric")
        note = "" if monitor is None or metric is None else f"{monitor} {metric:.4f}"
        return PlannedRun(spec, "done", note, False, ())
    again = "runs again" if retry_failed else "kept; --retry-failed runs it again"
    return PlannedRun(spec, "failed", f"{result.get('error')}; {again}", retry_failed, ())


def sweep_plan(
    config: str | Path,
    budgets: Sequence[str] = (),
    *,
    sparsities: Sequence[float] = (),
    seeds: Sequence[int] = (0,),
    scores: Sequence[str] | None = None,
    monitor: str | None = None,
    mode: Mode = "max",
    baseline: bool = True,
    output: str | Path = "sparsity_sweeps",
    overrides: Sequence[str] = (),
    backend: Backend = "inprocess",
    address: str | None = None,
    retry_failed: bool = False,
) -> SweepPlan:
    """The runs :func:`sweep` would make, how their configs differ, and which are finished.

    The same arguments as :func:`sweep`, checked the same way (the config parsed with the
    overrides and edited for every run), but no fit runs (not the one-batch check either)
    and nothing is written.

    Raises:
        SweepError: what :func:`sweep` refuses before its one-batch check.
    """
    specs = plan(budgets, seeds, sparsities=sparsities, baseline=baseline, scores=scores)
    config, root = _check(config, output, mode, backend, address)
    _check_manifest(root, _manifest_of(config, monitor, mode, overrides, specs))
    parsed = parse_config(config, overrides)
    original = _plain(parsed)
    edited: list[tuple[RunSpec, list[Change]]] = []
    for spec in specs:
        run_config = parsed.clone()
        edit_config(run_config, spec, spec.directory(root), monitor, mode)
        run_config.seed_everything = spec.seed
        changes = [
            (key, *(v.replace(str(root), "OUTPUT").replace(spec.name, "<run>") for v in values))
            for key, *values in _diff(original, _plain(run_config))
            if not key.endswith(f"{_CALLBACK_KEY}.hparams")  # the run, seed, label: shown
        ]
        edited.append((spec, changes))  # type: ignore[arg-type]
    common = [c for c in edited[0][1] if all(c in changes for _, changes in edited)]
    runs = [
        replace(
            _status(root, spec, monitor, retry_failed),
            changes=tuple(c for c in changes if c not in common),
        )
        for spec, changes in edited
    ]
    return SweepPlan(config, root, tuple(overrides), tuple(common), tuple(runs))
