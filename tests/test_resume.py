"""Kill -9 and resume: every point once, the same masks and budget state as a run that
was never interrupted (a real subprocess SIGKILLed at several points)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.fits import run_killed
from tests.resume_fit import fit

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*does not have many workers",
    "ignore:.*resuming from a checkpoint that ended before the epoch ended",
    "ignore:.*could be due to a crash.*",
)

# (every_n_train_steps, hook, at, killer after SparsityCallback); 4 batches per epoch
CASES = {
    # killed at step 10; the last checkpoint (step 9) is in the middle of the third epoch
    "mid-epoch": (3, "batch_end", 10, False),
    # killed at step 12 before its checkpoint: the last one (step 8) was saved on the
    # second epoch's last batch, before that epoch's end hook ran — the point of epoch 2,
    # its pruning step and budget decision are not in it
    "last batch": (4, "batch_end", 12, False),
    # killed in the third epoch's end hook before SparsityCallback ran: the checkpoint of
    # step 12 lacks the point of epoch 3
    "epoch end, before": (4, "epoch_end", 2, False),
    # killed after SparsityCallback logged the point of epoch 3 to TensorBoard and the
    # history files: the checkpoint of step 12 lacks it, so it is taken again on resume
    "epoch end, after": (4, "epoch_end", 2, True),
    # checkpoints at the end of validation, before the epoch's end hooks; killed after
    # SparsityCallback logged the point of epoch 3: Lightning runs that epoch's end hook
    # again on resume, which logged the point a second time to TensorBoard
    "validation end": (0, "epoch_end", 2, True),
}


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory):
    trainer, model, callback = fit(tmp_path_factory.mktemp("whole"), every=4)
    return trainer, model, callback


def killed(out: Path, every: int, hook: str, at: int, after: bool) -> None:
    run_killed("kill_fit.py", str(out), str(every), hook, str(at), "after" if after else "before")


# the two kills that reproduced the defects run by default; the others in the slow suite
DEFAULT = ("last batch", "validation end")


@pytest.mark.parametrize(
    "case", [c if c in DEFAULT else pytest.param(c, marks=pytest.mark.slow) for c in CASES]
)
def test_resume_after_sigkill_equals_an_uninterrupted_run(
    case: str, tmp_path: Path, whole: tuple
) -> None:
    every, hook, at, after = CASES[case]
    killed(tmp_path, every, hook, at, after)
    trainer, model, callback = fit(tmp_path, every, resume=True)
    whole_trainer, whole_model, whole_callback = whole

    def rows(cb) -> list[dict]:
        return [p.to_dict() for p in cb.history]

    expected = rows(whole_callback)
    assert [p.epoch for p in callback.history] == list(range(len(expected)))  # no gap, no twice
    assert rows(callback) == expected
    assert trainer.current_epoch == whole_trainer.current_epoch
    assert callback.stopping_reason == whole_callback.stopping_reason == "finetune_done"
    assert callback.budget.state_dict() == whole_callback.budget.state_dict()
    masks, whole_masks = callback.pruning.masks(model), whole_callback.pruning.masks(whole_model)
    assert masks.keys() == whole_masks.keys()
    assert all(torch.equal(masks[k], whole_masks[k]) for k in masks)

    run = tmp_path / "tb" / "version_0"
    assert json.loads((run / "sparsity_history.json").read_text()) == expected
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    prefixes = ("sparsity/", "budget/", "sparsity_global_step/")
    ours = [t for t in acc.Tags()["scalars"] if t.startswith(prefixes)]
    assert len(ours) >= 10
    assert "sparsity_global_step/flops_ratio" in ours  # at the global step: its own cut-off
    for tag in ours:
        steps = [e.step for e in acc.Scalars(tag)]
        assert len(steps) == len(set(steps)), f"{tag} has two points at one step: {steps}"
    for series in ("dense", "sparse", "realizable", "limit"):  # the FLOP chart's sibling runs
        sibling = EventAccumulator(str(run / series), size_guidance={"scalars": 0})
        sibling.Reload()
        steps = sorted(e.step for e in sibling.Scalars("sparsity/flops_per_example"))
        assert steps == [p["step"] for p in expected], series
        if series != "sparse":
            at_global = sibling.Scalars("sparsity_global_step/flops_ratio")
            assert sorted(e.step for e in at_global) == [p["global_step"] for p in expected]
    # TensorBoard reads event files in name order (start second, host, pid): a resume in the
    # same second as the kill, with a lower pid, is read first, so order by step
    curve = sorted(acc.Scalars("sparsity/flops_sparse_per_example"), key=lambda e: e.step)
    assert [e.step for e in curve] == [p["step"] for p in expected]
    assert [e.value for e in curve] == pytest.approx([p["flops_sparse"] for p in expected])
