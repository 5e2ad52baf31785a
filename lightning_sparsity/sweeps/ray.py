"""The Ray backend of :func:`lightning_sparsity.sweep`: one Ray Tune trial per run.

``sweep(..., backend="ray")`` (``lightning-sparsity sweep --backend ray``) hands the runs
still to do to :func:`run_ray`. Each run becomes one trial of one ``ray.tune.Tuner``: a
function trainable that calls :func:`lightning_sparsity.sweeps.runs.run_one` (one Lightning fit,
resumed from its last checkpoint if it has one) and reports the run's result. Ray does the
scheduling: every trial asks for ``resources`` (one CPU by default; ``run_ray(...,
resources={"cpu": 4, "gpu": 1})`` for more) and Ray runs as many at once as the cluster holds.
Ray sets a trial's ``OMP_NUM_THREADS`` to its CPUs, so torch runs that many threads: a run's
numbers equal those of an in-process run at the same ``torch.set_num_threads`` (the order of
a float sum depends on the thread count).

Files. The runs write where the in-process backend writes: ``OUTPUT/runs/<run>`` (TensorBoard
version, checkpoints, ``sweep_run.json``), so the frontier is derived the same way, and
``OUTPUT`` must be a directory every node reaches (local Ray: any directory; a cluster: a
shared file system). Ray Tune's own records (trial configs, results, each trial's stdout and
stderr) go to ``OUTPUT/ray/<time>/<run>``; Tune's TensorBoard logger is off, so the HParams
dashboard holds one entry per run, as with the in-process backend.

Working directory. Tune starts every trial in its own trial directory; config and ``OUTPUT``
reach the trials as absolute paths, and a trial moves back to the directory the sweep was
started in when that directory exists on its node, so relative paths inside the YAML config
mean what they mean in-process.

Imports. The trials import this module, so ``lightning_sparsity`` must be importable on every
node (local Ray: the workers run this interpreter and environment; a cluster: install the
package there, or call ``ray.init(address=..., runtime_env=...)`` before the sweep: a Ray
already started is used as it is, and left running).

Failures. A run that fails inside its fit is recorded by ``run_one`` (status ``"failed"``)
and its trial ends normally. A trial that dies (worker killed, node lost, the package missing
on the node) is retried ``max_failures`` times by Tune (the retry resumes from the run's last
checkpoint); then its run is recorded as failed with Ray's error, and the sweep goes on.
``--retry-failed`` runs it again.

Ray is an optional dependency (``pip install 'lightning-sparsity[ray]'``): nothing else in the
package imports it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_sparsity._files import write_json
from lightning_sparsity._text import clock, one_line
from lightning_sparsity.sweeps.runs import RESULT, RunSpec, SweepError, load_result, run_one

if TYPE_CHECKING:
    from types import ModuleType

__all__ = ["DEFAULT_RESOURCES", "run_ray"]

DEFAULT_RESOURCES: Mapping[str, float] = {"cpu": 1}
_INSTALL = "pip install 'lightning-sparsity[ray]'"


def _ray() -> ModuleType:
    """``ray``, with Tune.

    Raises:
        SweepError: one line saying how to install it.
    """
    try:
        import ray
        import ray.tune  # the extra is ray[tune]
    except ImportError as err:
        raise SweepError(
            f"backend='ray' needs Ray Tune, which is not installed ({err}): {_INSTALL}"
        ) from err
    return ray


@dataclass(frozen=True)
class _Job:
    """What every trial of one sweep shares (absolute paths)."""

    config: str
    root: str
    monitor: str | None
    mode: str
    overrides: tuple[str, ...]
    cwd: str


def _trial(config: dict[str, Any], job: _Job) -> dict[str, Any]:
    """The function trainable: one run of the sweep, in a Ray worker."""
    if os.path.isdir(job.cwd):  # Tune started us in the trial directory
        os.chdir(job.cwd)
    spec = RunSpec(**config["run"])
    return run_one(
        job.config,
        spec,
        job.root,
        monitor=job.monitor,
        mode=job.mode,  # type: ignore[arg-type]
        overrides=job.overrides,
    )


def _run_name(trial: Any) -> str:
    return str(trial.config["run"]["name"])


def _message(text: str) -> str:
    """The line of a Ray error that says what happened.

    A traceback (an exception in the trial): its exception line; else (a dead worker): the
    first line, e.g. ``The actor died unexpectedly before finishing this task.``
    """
    lines = [line for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("Failure # ")]  # Tune's header
    if any(line.startswith("Traceback") for line in lines):
        return [line for line in lines if not line[0].isspace()][-1]
    return lines[0].strip() if lines else "the Ray trial failed"


def _failed(root: str, spec: RunSpec, error: str | None) -> dict[str, Any]:
    """Record a run whose trial ended without its result: Ray's error, or ``None``: no file."""
    if error is None:
        message = (
            f"the trial ended without writing its result to {root}: on a cluster, OUTPUT"
            " must be a file system every node shares"
        )
    else:
        message = _message(error)
        if "No module named 'lightning_sparsity" in error:
            message += ": install lightning_sparsity on every Ray node (or give a runtime_env)"
    run_dir = spec.directory(root)
    run_dir.mkdir(parents=True, exist_ok=True)
    result = spec.record(
        log_dir=str(run_dir),
        status="failed",
        error=f"Ray trial: {message}",
        traceback="\n".join((error or "").splitlines()[-20:]),
    )
    write_json(run_dir / RESULT, result)
    return result


def _error_text(trial: Any) -> str:
    """Tune's record of a trial's error (its ``error.txt``, on the driver)."""
    path = trial.error_file
    if path and os.path.isfile(path):
        return Path(path).read_text()
    return "the Ray trial failed"


def _progress(
    ray: ModuleType,
    total: int,
    root: str,
    echo: Callable[[str], None],
    after_run: Callable[[], None],
) -> Any:
    """A Tune callback: a line per trial started and ended; ``after_run`` after each run."""

    class Progress(ray.tune.Callback):  # type: ignore[name-defined]
        def __init__(self) -> None:
            self.started = time.monotonic()
            self.begun: dict[str, float] = {}
            self.ended = 0

        def __getstate__(self) -> dict[str, Any]:
            return {}  # Tune pickles its run config (tuner.pkl); echo need not be picklable

        def _elapsed(self) -> str:
            elapsed = time.monotonic() - self.started
            left = ""
            if 0 < self.ended < total:
                left = f", about {clock(elapsed / self.ended * (total - self.ended))} left"
            return f"elapsed {clock(elapsed)}{left}"

        def on_trial_start(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            name = _run_name(trial)
            self.begun[name] = time.monotonic()
            echo(f"sweep: trial {len(self.begun)}/{total} {name} started ({self._elapsed()})")

        def _end(self, trial: Any, what: str) -> None:
            self.ended += 1
            name = _run_name(trial)
            took = clock(time.monotonic() - self.begun.get(name, self.started))
            echo(
                f"sweep: trial {name} {what} in {took}; {self.ended}/{total} ended"
                f" ({self._elapsed()})"
            )
            after_run()

        def on_trial_complete(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            result = trial.last_result or {}
            status = result.get("status", "ended")
            self._end(trial, status if status != "failed" else f"failed: {result.get('error')}")

        def on_trial_error(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            spec = RunSpec(**trial.config["run"])
            if load_result(root, spec) is None:  # the worker died before run_one wrote it
                result = _failed(root, spec, _error_text(trial))
                self._end(trial, f"died: {result['error']}")
            else:
                self._end(trial, "ended with a Ray error after its run")

    return Progress()


@contextlib.contextmanager
def _no_tune_tensorboard() -> Iterator[None]:
    """Tune's default loggers without its TensorBoard one: one HParams entry per run.

    Tune reads ``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS`` when the Tuner starts; its CSV and JSON
    loggers (what Tune's own result analysis reads) are given back explicitly.
    """
    key = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"
    old = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def _local_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def run_ray(
    config: str,
    specs: Sequence[RunSpec],
    root: str,
    monitor: str | None,
    mode: str,
    overrides: Sequence[str],
    address: str | None,
    echo: Callable[[str], None],
    after_run: Callable[[], None] = lambda: None,
    *,
    resources: Mapping[str, float] | None = None,
    max_failures: int = 0,
) -> list[dict[str, Any]]:
    """Run ``specs`` as Ray Tune trials (see the module docstring); results land in ``root``.

    Args:
        config: the YAML config (absolute path).
        specs: the runs to do.
        root: the sweep's directory (absolute path), shared by every node.
        monitor: the metric the frontier reports.
        mode: ``"max"`` or ``"min"``.
        overrides: more LightningCLI arguments for every run.
        address: the Ray cluster (``"auto"``, ``"ray://host:10001"``); ``None`` starts Ray on
            this machine with its CPUs. A Ray this process already started is used as is.
        echo: where progress lines go.
        after_run: called on the driver after each trial ends (the sweep writes its frontier).
        resources: what one trial asks Ray for (default ``{"cpu": 1}``; e.g. ``{"cpu": 4,
            "gpu": 1}``).
        max_failures: how often Tune retries a trial whose worker died.

    Returns:
        The results of ``specs``, in order.

    Raises:
        SweepError: if Ray is not installed, the cluster cannot be reached, or (local Ray) a
            trial asks for more CPUs or GPUs than the machine has.
    """
    if not specs:
        return []
    ray = _ray()
    from ray import tune

    resources = dict(DEFAULT_RESOURCES if resources is None else resources)
    for name, path in (("config", config), ("root", root)):
        if not os.path.isabs(path):
            raise SweepError(
                f"the Ray trials start in their own directories: {name} {path!r} must be an"
                " absolute path"
            )
    started_here = not ray.is_initialized()
    if started_here:
        options: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,  # each trial's output: OUTPUT/ray/<time>/<run>/std*
            "logging_level": logging.WARNING,
        }
        try:
            if address is None:
                ray.init(num_cpus=_local_cpus(), **options)
            else:
                ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, ValueError) as err:
            where = "start Ray on this machine" if address is None else f"reach Ray at {address!r}"
            raise SweepError(f"cannot {where}: {one_line(err)}") from err
    try:
        cluster = ray.cluster_resources()
        short = {
            name: (amount, cluster.get(name.upper(), 0.0))
            for name, amount in resources.items()
            if name in ("cpu", "gpu") and amount > cluster.get(name.upper(), 0.0)
        }
        if short and address is None:  # a cluster may grow (autoscaling); this machine won't
            raise SweepError(
                f"a trial asks for {resources}, more than this machine's Ray has:"
                + ", ".join(f" {have:g} {name.upper()}s" for name, (_, have) in short.items())
            )
        echo(
            f"sweep: Ray {ray.__version__} {'on this machine' if address is None else address}"
            f" ({cluster.get('CPU', 0):g} CPUs, {cluster.get('GPU', 0):g} GPUs); {len(specs)}"
            f" trials, each {resources}"
        )
        job = _Job(config, root, monitor, mode, tuple(overrides), os.getcwd())
        trainable = tune.with_resources(tune.with_parameters(_trial, job=job), resources)
        from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

        tuner = tune.Tuner(
            trainable,
            param_space={"run": tune.grid_search([spec.fields() for spec in specs])},
            tune_config=tune.TuneConfig(
                trial_name_creator=_run_name, trial_dirname_creator=_run_name
            ),
            run_config=tune.RunConfig(
                name=time.strftime("%Y-%m-%d_%H-%M-%S"),
                storage_path=str(Path(root) / "ray"),
                failure_config=tune.FailureConfig(max_failures=max_failures),
                callbacks=[
                    CSVLoggerCallback(),
                    JsonLoggerCallback(),
                    _progress(ray, len(specs), root, echo, after_run),
                ],
                log_to_file=True,
                sync_config=tune.SyncConfig(sync_artifacts=True),  # the std* files
                verbose=0,
            ),
        )
        with _no_tune_tensorboard():
            tuner.fit()
    finally:
        if started_here:
            ray.shutdown()
    results = []
    for spec in specs:
        result = load_result(root, spec)
        if result is None:  # a trial that left no result (its worker died): failed
            result = _failed(root, spec, None)
        results.append(result)
    return results
