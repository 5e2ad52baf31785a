"""SparsityCallback under real DDP processes (strategy="ddp", gloo, 2 CPU ranks)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.ddp
def test_ddp_ranks_agree_on_masks_and_stop_and_rank_zero_logs_once(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PL_DISABLE_FORK": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "scripts" / "ddp_fit.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["masks_sha"] == ranks[1]["masks_sha"]
    assert ranks[0]["global_step"] == ranks[1]["global_step"]
    assert ranks[0]["stopping_reason"] == ranks[1]["stopping_reason"] == "finetune_done"
    assert ranks[0]["history"] == ranks[1]["history"]
    epochs = [row["epoch"] for row in ranks[0]["history"]]
    assert epochs == list(range(len(epochs)))
    assert ranks[0]["current_epoch"] < 19  # the budget stopped it before max_epochs

    log_dir = tmp_path / "csv" / "version_0"
    with open(log_dir / "metrics.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r["sparsity/flops_ratio"]]
    assert steps == epochs  # logged once per point: rank zero only
    history = json.loads((log_dir / "sparsity_history.json").read_text())
    assert [row["epoch"] for row in history] == epochs
    assert (log_dir / "sparsity_curves.png").exists()
