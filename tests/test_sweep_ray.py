"""The Ray backend of the sweep: Ray Tune trials on a local Ray, compared with in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from lightning_sparsity.cli import main
from lightning_sparsity.demo import DigitsCNN
from lightning_sparsity.sweeps import sweep
from tests.test_sweep import CONFIG, config

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*does not have many workers",
    "ignore:.*is smaller than the logging interval",
)


class DiesInEpoch1(DigitsCNN):
    """The worker process ends in its second epoch (after the sweep's one-batch dry run)."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.current_epoch == 1:
            os._exit(3)  # no exception to catch: Ray sees its worker die
        return super().training_step(batch, batch_idx)


@pytest.fixture
def ray_tune() -> Iterator[Any]:
    """Ray Tune, with no Ray left running after the test."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    pytest.importorskip("ray.tune", reason="the ray extra is not installed")
    assert not ray.is_initialized()
    yield ray
    assert not ray.is_initialized()  # run_ray shut down the Ray it started


def test_the_package_does_not_import_ray() -> None:
    code = (
        "import sys, lightning_sparsity, lightning_sparsity.sweeps, lightning_sparsity.cli;"
        " print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"


def test_backend_ray_without_ray_is_one_line_before_any_run(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    out = tmp_path / "out"
    code = main(
        ["sweep", "--config", str(config(tmp_path)), "--budgets", "50%", "--output", str(out),
         "--backend", "ray"]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("lightning-sparsity: error: backend='ray' needs Ray Tune")
    assert err.endswith("pip install 'lightning-sparsity[ray]'")
    assert not list(out.glob("runs/*"))  # no run started


def _workers_import_this_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Ray workers import the package from this tree, not an installed copy elsewhere.

    A worker starts a fresh interpreter: without this, an environment whose editable install
    points at another checkout runs that checkout's code in the trials.
    """
    paths = [str(ROOT), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))


def _same(run: dict[str, Any]) -> dict[str, Any]:
    """A run's result less what differs between two backends (its directory, its time)."""
    return {k: v for k, v in run.items() if k not in ("log_dir", "wall_s")}


@pytest.mark.slow  # Ray starts in seconds: in .ci/run's slow suite
def test_ray_trials_write_the_frontier_of_the_inprocess_sweep(
    tmp_path: Path, ray_tune: Any, monkeypatch
) -> None:
    _workers_import_this_tree(monkeypatch)
    cfg = config(tmp_path)
    monkeypatch.chdir(tmp_path)  # relative config and output, resolved by the sweep
    lines: list[str] = []
    args: dict[str, Any] = {"seeds": [0], "monitor": "val_acc", "baseline": False}
    results = sweep(
        cfg.name, ["50%", "20%"], output="ray", backend="ray", echo=lines.append, **args
    )
    assert [(r["name"], r["status"]) for r in results] == [
        ("budget50%_seed0", "done"),
        ("budget20%_seed0", "done"),
    ]
    # each trial got one CPU, so its torch ran one thread: the same numbers as in-process at
    # one thread (a float sum's order depends on the thread count)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = sweep(cfg, ["50%", "20%"], output="inprocess", echo=lambda s: None, **args)
    finally:
        torch.set_num_threads(threads)

    assert [_same(r) for r in results] == [_same(r) for r in expected]
    ray_dir, inprocess = tmp_path / "ray", tmp_path / "inprocess"
    frontier = json.loads((ray_dir / "frontier.json").read_text())
    assert frontier["rows"] == json.loads((inprocess / "frontier.json").read_text())["rows"]
    assert [_same(r) for r in frontier["runs"]] == [_same(r) for r in expected]
    for name in ("frontier.csv", "frontier.md"):
        assert (ray_dir / name).read_text() == (inprocess / name).read_text()
    assert (ray_dir / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the runs live where the in-process backend puts them, each one TensorBoard version;
    # Tune's own records (its TensorBoard logger off) and each trial's output beside them
    for run in results:
        assert Path(run["log_dir"]) == ray_dir / "runs" / run["name"]
        assert len(list(Path(run["log_dir"]).glob("events.out.tfevents.*"))) == 1
    (tune_dir,) = (ray_dir / "ray").iterdir()
    assert not list(tune_dir.rglob("events.out.tfevents.*"))
    for run in results:
        trial = json.loads((tune_dir / run["name"] / "result.json").read_text().splitlines()[-1])
        assert trial["flops_sparse"] == run["flops_sparse"]
        assert "Trainer.fit` stopped" in (tune_dir / run["name"] / "stderr").read_text()
    # "sweep: trial K/2 NAME started (...)", numbered as Tune starts them: the two trials
    # run side by side (1 CPU each), so either may start first
    starts = [line.split()[2:4] for line in lines if " started " in line]
    assert sorted(number for number, _ in starts) == ["1/2", "2/2"]
    assert sorted(name for _, name in starts) == ["budget20%_seed0", "budget50%_seed0"]
    assert sum(" done in " in line for line in lines) == 2
    assert "2/2 ended" in "\n".join(lines)


@pytest.mark.slow
def test_a_trial_whose_worker_dies_is_recorded_and_the_sweep_goes_on(
    tmp_path: Path, ray_tune: Any, monkeypatch
) -> None:
    # the workers import this test module
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    text = CONFIG.replace("lightning_sparsity.demo.DigitsCNN", f"{__name__}.DiesInEpoch1")
    lines: list[str] = []
    results = sweep(
        config(tmp_path, text), ["50%"], seeds=[0], baseline=False, output=tmp_path / "out",
        backend="ray", echo=lines.append,
    )  # fmt: skip
    (run,) = results
    assert run["status"] == "failed"
    assert run["error"].startswith("Ray trial: ")
    assert run["error"] == "Ray trial: The actor died unexpectedly before finishing this task."
    frontier = json.loads((tmp_path / "out" / "frontier.json").read_text())
    assert frontier["runs"] == results
    assert "Failed: budget50%_seed0: Ray trial:" in (tmp_path / "out" / "frontier.md").read_text()
    # its last checkpoint (after epoch 0) is there for --retry-failed to resume from
    assert (tmp_path / "out" / "runs" / "budget50%_seed0" / "checkpoints" / "last.ckpt").is_file()
    assert any("budget50%_seed0 died:" in line for line in lines)


@pytest.mark.slow
def test_ray_trials_sweep_across_scores_as_the_inprocess_sweep(
    tmp_path: Path, ray_tune: Any, monkeypatch
) -> None:
    # the plan is the sweep's: the score travels in each trial's RunSpec
    _workers_import_this_tree(monkeypatch)
    cfg = config(tmp_path)
    args: dict[str, Any] = {"seeds": [1], "scores": ["magnitude", "random"], "monitor": "val_acc"}
    results = sweep(cfg, ["20%"], output=tmp_path / "ray", backend="ray", echo=lambda s: None,
                    **args)  # fmt: skip
    assert [(r["name"], r["status"], r["score"]) for r in results] == [
        ("baseline_seed1", "done", "none"),
        ("budget20%_magnitude_seed1", "done", "magnitude"),
        ("budget20%_random_seed1", "done", "random"),
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a trial's torch runs on its 1 CPU
    try:
        expected = sweep(cfg, ["20%"], output=tmp_path / "inprocess", echo=lambda s: None, **args)
    finally:
        torch.set_num_threads(threads)
    assert [_same(r) for r in results] == [_same(r) for r in expected]
    assert results[1]["params_nonzero"] != results[2]["params_nonzero"]  # two criteria
    for name in ("frontier.csv", "frontier.md"):
        assert (tmp_path / "ray" / name).read_text() == (tmp_path / "inprocess" / name).read_text()
