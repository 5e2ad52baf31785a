"""The ``lightning-sparsity`` command, run as a real process."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import lightning_sparsity as ls
from lightning_sparsity.cli import main
from lightning_sparsity.demo import DigitsCNN

SCRIPT = Path(sys.executable).parent / "lightning-sparsity"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd, timeout=300, check=False
    )


def test_count_json_equals_measure() -> None:
    done = run("count", "lightning_sparsity.demo:DigitsCNN", "--input-shape", "1,1,8,8", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    expected = ls.measure(DigitsCNN(), torch.zeros(1, 1, 8, 8))
    assert data["total"]["flops"] == expected.total.flops
    assert data["total"]["params"] == expected.total.params
    assert [row["name"] for row in data["layers"]] == [row.name for row in expected.layers]


def test_count_table_from_a_checkpoint(tmp_path: Path) -> None:
    model = DigitsCNN()
    with torch.no_grad():
        model.fc.weight[:, :32] = 0  # half of the classifier
    trainer = pl.Trainer(
        max_epochs=0, logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    done = run(
        "count",
        "lightning_sparsity.demo:DigitsCNN",
        "--input-shape",
        "1,1,8,8",
        "--checkpoint",
        str(tmp_path / "m.ckpt"),
    )
    assert done.returncode == 0, done.stderr
    expected = ls.measure(model, torch.zeros(1, 1, 8, 8))
    assert "| fc | Linear | 650 | 330 |" in done.stdout  # 640 + 10 bias, 320 + 10 nonzero
    assert f"{expected.total.params_nonzero:,}" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nomodule:thing", "--input-shape", "1,2"], "cannot import 'nomodule:thing'"),
        (["torch", "--input-shape", "1,2"], "TARGET must look like package.module:factory"),
        (["torch.nn:Linear", "--input-shape", "1,2"], "calling torch.nn:Linear failed: TypeError"),
        (["lightning_sparsity.demo:DigitsCNN", "--input-shape", "1,x"], "--input-shape must be"),
        (
            ["lightning_sparsity.demo:DigitsCNN", "--input-shape", "1,3,8,8"],
            r"DigitsCNN forward failed on the example input \(Tensor\(1, 3, 8, 8\)",
        ),
    ],
)
def test_count_errors_are_one_clear_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) if "input-shape must" in message else nullcontext():
        assert main(["count", *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(message, err), err


def test_demo_end_to_end(tmp_path: Path) -> None:
    done = run("demo", "--epochs", "3", "--limit-batches", "3", "--output", str(tmp_path / "o"))
    assert done.returncode == 0, done.stderr
    assert f"tensorboard --logdir {tmp_path / 'o'}" in done.stdout
    run_dir = tmp_path / "o" / "demo" / "version_0"
    assert (run_dir / "sparsity_curves.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads((run_dir / "sparsity_report.json").read_text())
    history = json.loads((run_dir / "sparsity_history.json").read_text())
    assert [row["epoch"] for row in history] == [0, 1, 2, 3]
    assert history[-1]["flops_sparse"] == report["total"]["flops_sparse"]
    # the default budget, 20% of dense, reached at the deadline (epoch 1 of 3) and kept
    limit = 0.2 * history[0]["flops"]
    assert history[-1]["budget_limit"] == pytest.approx(limit)
    assert [row["budget_status"] for row in history[1:]] == ["over", "within", "within"]
    assert limit * 0.995 < history[-1]["flops_sparse"] <= limit
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    assert len(acc.Scalars("sparsity/flops_sparse_per_example")) == 4


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
@pytest.mark.parametrize(
    ("config", "limit"), [("digits_budget.yaml", 0.2), ("digits_schedule.yaml", 0.3)]
)
def test_fit_from_each_yaml_config(tmp_path: Path, config: str, limit: float) -> None:
    path = Path(__file__).resolve().parents[1] / "configs" / config
    args = ["fit", "--config", str(path), "--trainer.max_epochs=2"]
    args += ["--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]
    args += [
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    assert main(args) == 0
    (run,) = tmp_path.glob("*/version_0")
    history = json.loads((run / "sparsity_history.json").read_text())
    assert [row["epoch"] for row in history] == [0, 1, 2]
    assert history[-1]["budget_limit"] == pytest.approx(limit * history[0]["flops"])
    assert history[-1]["flops_sparse"] < history[0]["flops"]  # the configured pruner pruned


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget", "150%"], r"percentage must be in \(0, 100\], got '150%'"),
        (["--epochs", "0"], "`epochs` must be >= 1, got 0"),
        (["--budget", "none", "--final-sparsity", "1.0"], "`final_sparsity` must be a float"),
    ],
)
def test_demo_option_errors_are_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lightning-sparsity: error: ")
    assert re.search(message, err), err
