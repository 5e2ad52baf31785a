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
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
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
    plan,
    run_one,
)

__all__ = ["sweep"]

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


def _check(
    config: str | Path, output: str | Path, mode: str, backend: str, address: str | None
) -> tuple[str, Path]:
    """The config's absolute path and the output directory (made), once the options agree.

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
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SweepError(f"output {str(output)!r}: cannot make the directory: {err}") from err
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
    config, root = _check(config, output, mode, backend, address)
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
    todo = [s for s in specs if _to_run(load_result(root, s), retry_failed)]
    if backend == "ray":  # Ray missing: say so before any work
        from lightning_sparsity.sweeps.ray import run_ray

    def frontier() -> None:  # of every run finished so far
        write_frontier(root, collect_results(root, specs), monitor, mode)

    if todo:
        _dry_run(config, next((s for s in todo if not s.baseline), todo[0]), monitor, overrides)
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
