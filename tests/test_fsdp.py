"""FSDP2 (fully_shard under Lightning's ModelParallelStrategy, 2 CPU ranks over gloo): every
rank's curve and the gathered masks equal one process on the same model."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fits import quiet_trainer, run_ranks
from tests.fsdp_cases import CASES, SAME_AS_ONE_PROCESS, Frozen, masks_digest, state_on_pruned


def one_process(case: str, tmp_path: Path) -> dict:
    import torch

    torch.manual_seed(0)
    model = Frozen()
    callback = CASES[case]()
    trainer = quiet_trainer(tmp_path, [callback], 4, limit_val_batches=0)
    trainer.fit(model)
    return {
        "history": [p.to_dict() for p in callback.history],
        "masks": masks_digest(callback.pruning.masks(model)),
        "state_on_pruned": state_on_pruned(trainer.optimizers[0], callback.pruning, model),
    }


@pytest.mark.ddp
@pytest.mark.parametrize(
    "case",
    # the adjust budget in the default suite; the two schedules in the slow one (.ci/run)
    [pytest.param(c, marks=pytest.mark.slow) if c != "adjust" else c for c in SAME_AS_ONE_PROCESS],
)
def test_fsdp2_fit_equals_one_process(case: str, tmp_path: Path) -> None:
    ranks = run_ranks("fsdp_fit.py", tmp_path, case, timeout=600)
    single = one_process(case, tmp_path)

    def curve(history: list[dict]) -> list[tuple]:
        return [(p["epoch"], p["params_nonzero"], p["flops_sparse"]) for p in history]

    for rank in ranks:
        assert curve(rank["history"]) == curve(single["history"])
        assert rank["masks"] == single["masks"]
        assert rank["state_on_pruned"] == 0  # momentum cleared on each rank's pruned shard
    assert single["state_on_pruned"] == 0
    assert curve(single["history"])[-1][2] < curve(single["history"])[0][2]  # it pruned


@pytest.mark.ddp
@pytest.mark.slow
def test_fsdp2_rigl_ranks_agree_and_each_layer_keeps_its_count(tmp_path: Path) -> None:
    """RigL on Shard(0) weights: drop and grow cut over both ranks' shards without a
    gather; the gathered masks agree and every layer keeps round(0.2 * numel) weights."""
    ranks = run_ranks("fsdp_fit.py", tmp_path, "rigl", timeout=600)
    assert ranks[0]["masks"] == ranks[1]["masks"]
    assert ranks[0]["live"] == [round(0.2 * n) for n in (432, 2304, 65536, 640)]
    assert ranks[0]["updates"] == 2  # steps 1 and 2 (end_step 3)
    assert ranks[0]["state_on_pruned"] == 0


def test_flattening_strategies_are_refused_naming_what_is_supported() -> None:
    from pytorch_lightning.strategies import DDPStrategy, FSDPStrategy, ModelParallelStrategy

    from lightning_sparsity.callback import check_strategy

    with pytest.raises(ValueError, match=r"does not support FSDPStrategy: FSDP1 flattens.*FSDP2"):
        check_strategy(FSDPStrategy())

    class DeepSpeedStrategy:  # deepspeed is not installed: its class, by name
        pass

    with pytest.raises(ValueError, match=r"DeepSpeedStrategy: DeepSpeed ZeRO flattens"):
        check_strategy(DeepSpeedStrategy())
    check_strategy(DDPStrategy())  # supported: no error
    check_strategy(ModelParallelStrategy())
