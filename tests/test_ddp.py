"""SparsityCallback under real DDP processes (strategy="ddp", gloo, 2 CPU ranks)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.fits import run_ranks


@pytest.mark.ddp
def test_ddp_ranks_agree_on_masks_and_stop_and_rank_zero_logs_once(tmp_path: Path) -> None:
    ranks = run_ranks("ddp_fit.py", tmp_path, timeout=300)
    assert ranks[0]["masks_sha"] == ranks[1]["masks_sha"]
    assert ranks[0]["global_step"] == ranks[1]["global_step"]
    assert ranks[0]["stopping_reason"] == ranks[1]["stopping_reason"] == "finetune_done"
    assert ranks[0]["history"] == ranks[1]["history"]
    # the guard's value is the worst rank's (each rank's val_acc is its own half of the
    # data), the same in every rank's history; the guard is asked from epoch 1 on
    guarded = [(row["epoch"], row["guard_value"]) for row in ranks[0]["history"]]
    local = list(zip(ranks[0]["local_val_acc"], ranks[1]["local_val_acc"], strict=True))
    assert any(a != b for a, b in local)  # the ranks did see different values
    for epoch, value in guarded:
        if value is not None:
            assert value == min(local[epoch - 1])
    assert any(value is not None for _, value in guarded)
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


@pytest.mark.ddp
@pytest.mark.slow  # two processes: about a minute on a busy 2-core machine
def test_ddp_ranks_rewind_alike(tmp_path: Path) -> None:
    """LotteryTicket rounds at epochs 3, 5, 7 with rewinding to epoch 1 (and the optimizer)."""
    ranks = run_ranks("ddp_rewind_fit.py", tmp_path, timeout=300)
    assert ranks[0]["prunes"] == ranks[1]["prunes"] == [3, 5, 7]
    assert ranks[0]["masks"] == ranks[1]["masks"]
    assert ranks[0]["weights"] == ranks[1]["weights"]  # every epoch end, rewound ones too
    assert all(ranks[0]["rewound_ok"].values())
    assert all(ranks[1]["rewound_ok"].values())
    assert ranks[0]["lrs"] == ranks[1]["lrs"]
