"""The example scripts do what their comments promise."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.filterwarnings("ignore:.*does not have many workers")
def test_budget_fit_stops_three_epochs_after_the_budget_is_met(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    # before: the comment promised a stop 3 epochs after the budget was met, but no
    # finetune_epochs was set and all 10 epochs ran
    done = runpy.run_path(str(ROOT / "examples" / "budget_fit.py"))
    callback, trainer = done["callback"], done["trainer"]
    statuses = [p.budget_status for p in callback.history]
    met = statuses.index("within")
    assert met <= 5  # landed on 25% by the deadline, epoch 5
    assert statuses[met:] == ["within"] * 4  # the epoch it was met, then 3 of fine-tuning
    assert trainer.current_epoch == met + 3 < 20
    assert callback.stopping_reason == "finetune_done"
    assert (tmp_path / "sparsity_runs" / "budget_fit").is_dir()


def test_count_model_ends_with_readable_lines(capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(str(ROOT / "examples" / "count_model.py"))
    last = capsys.readouterr().out.rstrip().splitlines()[-1]
    assert not last.startswith("LayerStats("), last  # was the dataclass's repr
    assert last.startswith("on 8 random inputs: sparse FLOPs"), last
