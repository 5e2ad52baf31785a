"""The training FLOPs a fit logs: each epoch's batches times the step's cost, across a resume.

TinyMLP (fc1 16→32, fc2 32→4), 32 examples an epoch in batches of 16 (43 in the uneven
case: the last batch of 11). Per example, with ``n1``/``n2`` the live weights of fc1/fc2 (FLOPs
count 2 per multiply-add; the input needs no gradient, so fc1 has no input gradient):

    forward 2·(n1 + n2) + fc2's input gradient 2·n2 + weight gradients 2·(n1 + n2)

Dense: what ``FlopCounterMode`` counts around a real forward and backward (measured here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

import lightning_sparsity as ls
from tests.fits import Learning, quiet_trainer, stepped_callback


class Uneven(Learning):
    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(43, 16, generator=g), torch.arange(43) % 4)
        return DataLoader(data, batch_size=16)  # 16 + 16 + 11


def _sparse(n1: int, n2: int) -> int:
    return 2 * (n1 + n2) + 2 * n2 + 2 * (n1 + n2)


def _dense_per_example() -> float:
    model = Learning()
    x, y = torch.randn(8, 16), torch.arange(8) % 4
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / 8


def _run(root: Path, epochs: int, *callbacks: Any, model: Any = None, **trainer: Any) -> Any:
    """A quiet CPU fit of ``model`` (a fresh :class:`Learning`) for ``epochs`` epochs."""
    ckpt = trainer.pop("ckpt_path", None)
    fit = quiet_trainer(root, list(callbacks), epochs, **trainer)
    fit.fit(model or Learning(), ckpt_path=ckpt)
    return fit


def _fit(
    root: Path, epochs: int, ckpt: str | None = None, model: Any = None, **trainer: Any
) -> Any:
    callback = stepped_callback()
    saver = ModelCheckpoint(dirpath=root / "ckpt", save_last=True)
    _run(
        root,
        epochs,
        callback,
        saver,
        model=model,
        ckpt_path=ckpt,
        enable_checkpointing=True,
        **trainer,
    )
    return callback


def test_the_total_after_a_resumed_fit_is_the_steps_that_ran(tmp_path: Path) -> None:
    dense = _dense_per_example()
    assert dense == _sparse(512, 128)  # the closed form above, at full density: 2816
    _fit(tmp_path, 2)
    callback = _fit(tmp_path, 4, ckpt=str(tmp_path / "ckpt" / "last.ckpt"))
    epochs = [_sparse(512, 128), _sparse(358, 90), _sparse(205, 51), _sparse(205, 51)]
    points = callback.history
    assert [p.epoch for p in points] == [0, 1, 2, 3, 4]
    assert [p.train_flops for p in points] == [0] + [32 * e for e in epochs]
    assert [p.train_flops_dense for p in points] == [0] + [32 * dense] * 4
    assert points[-1].train_flops_total == 32 * sum(epochs)
    assert points[-1].train_flops_dense_total == 32 * 4 * dense


def test_a_short_last_batch_counts_its_examples(tmp_path: Path) -> None:
    callback = _fit(tmp_path, 2, model=Uneven())
    assert [p.train_flops for p in callback.history] == [
        0,
        43 * _sparse(512, 128),
        43 * _sparse(358, 90),
    ]


class Manual(Learning):
    """One optimizer stepped by hand: the same forward and backward per batch."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> None:
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(F.cross_entropy(self(batch[0]), batch[1]))
        optimizer.step()


@pytest.mark.parametrize("how", ["accumulate 2", "manual optimization"])
def test_every_micro_batch_counts(tmp_path: Path, how: str) -> None:
    """Accumulating 2 batches per optimizer step, or stepping by hand: each batch still ran
    its forward and backward, so the epochs cost what the first test's do."""
    if how == "accumulate 2":
        callback = _fit(tmp_path, 3, accumulate_grad_batches=2)
    else:
        callback = _fit(tmp_path, 3, model=Manual())
    epochs = [_sparse(512, 128), _sparse(358, 90), _sparse(205, 51)]
    assert [p.train_flops for p in callback.history] == [0] + [32 * e for e in epochs]


class Nonzeros(pl.Callback):
    """Before each batch: the nonzero weights of fc1 and fc2, read off the model."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def on_train_batch_start(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        w1, w2 = pl_module.fc1.weight, pl_module.fc2.weight
        self.seen.append((int((w1 != 0).sum()), int((w2 != 0).sum())))


def _counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Each call of ``SparsityMeter.count_training`` (the ledger's recount) from now on."""
    calls: list[int] = []
    real = ls.SparsityMeter.count_training

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ls.SparsityMeter, "count_training", counted)
    return calls


def test_rigl_growth_steps_count_every_weight_gradient(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RigL at 70% uniform (fc1 154, fc2 38 live), an update every 3 steps until step 7:
    steps 3 and 6 compute the whole weight gradient (2·(512 + 128) per example), the others
    the live entries' (the masks': a grown weight is live at zero). Multiplications count
    the nonzero weights at each step: a grown weight is zero at the step after its growth
    (4, 7) and moves then, so step 5 costs more than step 4 with the same masks.

    Counted at steps 1 (every live weight nonzero: still), 4 (grown zeros), 5 (moved:
    still), 7 and 8: 5 counts. Steps 2 and 3 reuse step 1's count, step 6 step 5's; steps
    3 and 6 take the whole gradient's cost from that same sweep (the weights have not
    changed since)."""
    calls = _counted(monkeypatch)
    pruner = ls.RigL(0.7, allocation="uniform", delta_t=3, end_step=7)
    nonzeros = Nonzeros()
    callback = ls.SparsityCallback(pruner, write_files=False, verbose=False)
    _run(tmp_path, 4, nonzeros, callback)  # 32 examples, 2 batches of 16 an epoch: 8 steps
    assert pruner.updates == 2
    assert len(calls) == 5
    live = 154 + 38
    steps = []
    for t, (z1, z2) in enumerate(nonzeros.seen, start=1):
        grads = 2 * (512 + 128) if t in (3, 6) else 2 * live
        steps.append(2 * (z1 + z2) + 2 * z2 + grads)
    assert nonzeros.seen[3] != nonzeros.seen[4]  # step 4 starts with the grown zeros
    assert [p.train_flops for p in callback.history] == [0] + [
        16 * (steps[i] + steps[i + 1]) for i in (0, 2, 4, 6)
    ]


class HalfZero(Learning):
    """fc2's first 16 input columns initialised to zero: live, trained, moved by step 1."""

    def __init__(self) -> None:
        super().__init__()
        with torch.no_grad():
            self.fc2.weight[:, :16] = 0


def test_a_weight_initialised_to_zero_is_counted_again_once_it_moves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No pruner: every weight trains, its nonzero entries' gradients count. Step 1 runs
    with fc2's 64 zeros (fc2 has 64 nonzeros), step 2 after SGD moved them: the per-step
    cost read off the weights before each batch (2·(n1 + n2) forward, 2·n2 for fc2's input
    gradient, 2·(n1 + n2) weight gradients) differs, and the ledger adds each step's own.
    Counted at steps 1 and 2 (step 1 had a trained entry at zero; step 2 none): 2 counts in
    2 epochs."""
    calls = _counted(monkeypatch)
    nonzeros = Nonzeros()
    callback = ls.SparsityCallback(write_files=False, verbose=False)
    _run(tmp_path, 2, nonzeros, callback, model=HalfZero())
    assert nonzeros.seen[0] == (512, 64)
    assert nonzeros.seen[1] == nonzeros.seen[2] == nonzeros.seen[3] == (512, 128)
    steps = [_sparse(*seen) for seen in nonzeros.seen]
    assert [p.train_flops for p in callback.history] == [0] + [
        16 * (steps[i] + steps[i + 1]) for i in (0, 2)
    ]
    assert len(calls) == 2


def test_off_and_refused_quietly(tmp_path: Path) -> None:
    callback = ls.SparsityCallback(ls.MagnitudePruner(), write_files=False, train_flops=False)
    _run(tmp_path, 1, callback)
    assert callback.history[-1].train_flops is None
    with pytest.raises(TypeError, match="`train_flops` must be a bool"):
        ls.SparsityCallback(train_flops=1)  # type: ignore[arg-type]


def _budget_fit(root: Path, budget: ls.FlopBudget, epochs: int, **trainer: Any) -> Any:
    callback = stepped_callback(budget)
    _run(root, epochs, callback, **trainer)
    return callback


def test_a_training_compute_budget_stops_before_the_epoch_that_would_exceed_it(tmp_path: Path):
    """Epochs cost 32 × (2816, 1972, 1126, 1126, ...) = 90,112, 63,104, 36,032, ...; the
    running totals 90,112, 153,216, 189,248, 225,280, 261,312, 297,344. "50%" of the dense
    run over max_epochs=6 (32 · 2816 · 6 = 540,672) is 270,336: after epoch 5 the next
    epoch would reach 297,344, so the fit ends there."""
    callback = _budget_fit(tmp_path, ls.FlopBudget("50%", count="train"), 6)
    points = callback.history
    assert [p.train_flops_total for p in points] == [
        0,
        90_112,
        153_216,
        189_248,
        225_280,
        261_312,
    ]
    assert callback.stopping_reason == "compute_spent"
    assert points[-1].budget_limit == 270_336
    assert points[-1].budget_value == 261_312
    # an absolute target: 200,000 stops after epoch 3 (189,248 + 36,032 > 200,000)
    callback = _budget_fit(tmp_path / "abs", ls.FlopBudget(200_000, count="train"), 6)
    assert [p.epoch for p in callback.history][-1] == 3


def test_training_budget_settings_that_cannot_work_are_named() -> None:
    with pytest.raises(ValueError, match=r"`by_epoch` and `finetune_epochs` do not apply"):
        ls.FlopBudget("50%", by_epoch=3, count="train")
    with pytest.raises(ValueError, match=r"`finetune_epochs` does not apply \(got 2\)"):
        ls.FlopBudget("50%", by_epoch=3, action="adjust", count="train", finetune_epochs=2)
    with pytest.raises(ValueError, match=r"or by the fit's training FLOPs \(count='train'\)"):
        ls.FlopBudget("50%", by_epoch=3, action="adjust", count="params")


def _adjust_fit(root: Path, budget: ls.FlopBudget, epochs: int) -> Any:
    callback = ls.SparsityCallback(ls.MagnitudePruner(), budget, write_files=False, verbose=False)
    _run(root, epochs, callback)
    return callback


def test_an_adjust_training_budget_lands_on_its_total(tmp_path: Path) -> None:
    """40% of the dense run: 0.4 · 6 epochs · 32 examples · 2816 (FlopCounterMode's step)
    = 216,268.8 training FLOPs. The fit prunes along the cubic curve to epoch 3 and then
    holds, the level chosen again after every epoch; it lands at or under the total, within
    1%, and spends less each epoch than the one before it (the sooner sparse, the cheaper)."""
    callback = _adjust_fit(
        tmp_path, ls.FlopBudget("40%", by_epoch=3, action="adjust", count="train"), 6
    )
    limit = 0.4 * 6 * 32 * _dense_per_example()
    points = callback.history
    assert [p.epoch for p in points] == list(range(7))
    assert points[-1].budget_limit == pytest.approx(limit)
    total = points[-1].train_flops_total
    assert 0.99 * limit <= total <= limit, (total, limit)
    assert total == sum(p.train_flops for p in points)
    spent = [p.train_flops for p in points[1:]]
    assert spent[0] == 32 * _dense_per_example()  # nothing pruned before epoch 1 ends
    assert spent == sorted(spent, reverse=True)
    assert callback.stopping_reason is None


def test_an_unreachable_adjust_training_budget_is_refused_before_training(tmp_path: Path):
    """The pruner's floor keeps one weight per output row (fc1 32 of 512, fc2 4 of 128): a
    step at the floors costs 4·32 + 6·4 = 152 FLOPs per example (fc1 4 per weight: forward
    and weight gradient; fc2 6: also the input gradient), f = 152/2816 of dense. Along the
    cubic curve from dense at epoch 0 to the floors by epoch 5, a 6-epoch fit costs at
    least f + (1 - f)·Σ_{t=0..5} (1 - t/5)³ / 6 = f + (1 - f)·1.8/6 = 33.78% of dense."""
    budget = ls.FlopBudget("25%", by_epoch=5, action="adjust", count="train")
    with pytest.raises(ls.BudgetError, match=r"lowest reachable target is 33\.78% of dense"):
        _adjust_fit(tmp_path, budget, 6)
    with pytest.raises(ValueError, match=r"needs the fit's max_epochs \(got -1\)"):
        _adjust_fit(tmp_path, ls.FlopBudget("50%", by_epoch=2, action="adjust", count="train"), -1)
    # an absolute target is checked once the first epoch's examples are known, before the
    # first prune: 100,000 < 33.78% of 6 · 32 · 2816 = 182,640
    with pytest.raises(ls.BudgetError, match=r"target 100000 \(100,000 FLOPs\) is unreachable"):
        _adjust_fit(tmp_path, ls.FlopBudget(100_000, by_epoch=5, action="adjust", count="train"), 6)


def test_the_totals_reach_tensorboard_and_the_report(tmp_path: Path) -> None:
    from pytorch_lightning.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    callback = stepped_callback(write_files=True)
    logger = TensorBoardLogger(tmp_path, name="tb")
    _run(tmp_path, 3, callback, logger=logger)
    epochs = [_sparse(512, 128), _sparse(358, 90), _sparse(205, 51)]  # as in the first test
    total = 32 * sum(epochs)  # 32 · (2816 + 1972 + 1126) = 189,248
    acc = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0})
    acc.Reload()
    per_epoch = [e.value for e in acc.Scalars("sparsity/train_flops")]
    assert per_epoch == [0] + [32 * e for e in epochs]
    assert [e.value for e in acc.Scalars("sparsity/train_flops_total")][-1] == total
    assert [e.value for e in acc.Scalars("sparsity/final_train_flops_total")] == [total]
    report = (Path(logger.log_dir) / "sparsity_report.md").read_text()
    dense = 3 * 32 * 2816  # 270,336
    assert f"over 3 epochs): sparse 189K, dense 270K ({total / dense:.3f} of dense)" in report


@pytest.mark.parametrize("train_flops", ["example", "step"])
def test_ddp_totals_add_every_rank_and_survive_a_resume(tmp_path: Path, train_flops: str) -> None:
    """Two ranks, 24 and 20 examples an epoch: 44 × (2816, 1972, 1126, 1126) per epoch (the
    schedule of the first test). The checkpoint of step 9 holds the third epoch's batches
    (rank 0's 24 and rank 1's 20 examples, summed on save) before its end: the resumed fit
    counts them once, on one rank, and ends with the same totals on both ranks. Recorded
    (``"step"``), each rank's step is its own batch of 8 or 7 examples, DDP's gradient
    all-reduce in it: the same per example."""
    from tests.fits import run_ranks

    args = ("step",) if train_flops == "step" else ()
    ranks = run_ranks("train_ddp.py", tmp_path, *args, timeout=300)
    epochs = [_sparse(512, 128), _sparse(358, 90), _sparse(205, 51), _sparse(205, 51)]
    expected = [0] + [44 * e for e in epochs]
    for rank in ranks:
        for run in ("whole", "resumed"):
            points = rank[run]
            assert [p["epoch"] for p in points] == list(range(5)), run
            assert [p["train_flops"] for p in points] == expected, run
            assert points[-1]["train_flops_total"] == sum(expected)
            assert points[-1]["train_flops_dense_total"] == 4 * 44 * 2816


def test_an_absolute_training_budget_needs_no_max_epochs(tmp_path: Path) -> None:
    """A fit bounded by steps (max_epochs=-1, max_steps=6: 3 epochs of 2 steps) under an
    absolute training target: epochs cost 90,112, 63,104, 36,032 (as above). 200,000
    holds all three (189,248); 150,000 stops after the first (90,112 + 63,104 > 150,000).
    It was refused as "above the dense model's" (one epoch taken for the whole fit). After
    the third the fit ends by its steps: a fourth epoch (36,032 more) would go past 200,000,
    but none comes, so the budget stops nothing (it said "compute_spent")."""
    for target, epochs in ((200_000, 3), (150_000, 1)):
        callback = _budget_fit(tmp_path, ls.FlopBudget(target, count="train"), -1, max_steps=6)
        assert [p.epoch for p in callback.history][-1] == epochs
        assert callback.history[-1].budget_status == "within"
        assert callback.stopping_reason == (None if epochs == 3 else "compute_spent")


def test_a_prune_that_only_zeroes_is_counted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """3 epochs of 2 batches, prunes at the ends of epochs 1 and 2. The step is counted at
    the first batch (every weight entry is nonzero and trains: the next steps cost the
    same), then once after each prune: 3 counts. A second count after a prune could only
    agree (bench_train_compute: it was half the ledger's time); RigL's counts go on until
    the grown weights have moved (test_rigl_growth_steps_count_every_weight_gradient), and
    a weight initialised to zero is counted again at the next batch (test below)."""
    calls = _counted(monkeypatch)
    callback = _fit(tmp_path, 3)
    assert len(calls) == 3
    epochs = [_sparse(512, 128), _sparse(358, 90), _sparse(205, 51)]
    assert [p.train_flops for p in callback.history] == [0] + [32 * e for e in epochs]


class GAN(pl.LightningModule):
    """A generator g (4→8) and a discriminator d (8→1), two optimizers stepped by hand,
    two backward passes per batch. ``FlopCounterMode`` runs around each training step
    (forwards, backwards and optimizer steps): ``dense`` holds its FLOPs per batch."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.g = torch.nn.Linear(4, 8)
        self.d = torch.nn.Linear(8, 1)
        self.automatic_optimization = False
        self.example_input_array = torch.zeros(1, 4)
        self.dense: list[int] = []

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.g(z)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        (real,) = batch
        ones, zeros = torch.ones(len(real), 1), torch.zeros(len(real), 1)
        opt_g, opt_d = self.optimizers()
        with FlopCounterMode(display=False) as counter:
            fake = self.g(torch.randn(len(real), 4))
            g_loss = F.binary_cross_entropy_with_logits(self.d(fake), ones)
            opt_g.zero_grad()
            self.manual_backward(g_loss)
            opt_g.step()
            d_loss = F.binary_cross_entropy_with_logits(self.d(real), ones)
            d_loss = d_loss + F.binary_cross_entropy_with_logits(self.d(fake.detach()), zeros)
            opt_d.zero_grad()
            self.manual_backward(d_loss)
            opt_d.step()
        self.dense.append(counter.get_total_flops())

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.g.parameters()), torch.optim.Adam(self.d.parameters())

    def train_dataloader(self) -> DataLoader:
        data = TensorDataset(torch.randn(32, 8, generator=torch.Generator().manual_seed(0)))
        return DataLoader(data, batch_size=16)


@pytest.mark.parametrize("train_flops", ["step", True])
def test_a_recorded_step_counts_every_pass_and_optimizer(tmp_path: Path, train_flops: Any) -> None:
    """``train_flops="step"`` on a GAN step: g's forward, d on the fake, the backward of
    g's loss through d and g (d's weight gradient too: autograd computes it, though only g
    steps), d on the real and the detached fake, their backward (no input gradient: the
    inputs need none). Per example, ``ng``/``nd`` the live weights of g/d:

        2·ng + 2·nd  +  2·nd + 2·nd + 2·ng  +  2·(2·nd)  +  2·(2·nd)  =  4·ng + 14·nd

    (240 dense: ng 32, nd 8); 50% uniform after epoch 1: ng 16, nd 4, 120. Dense is what
    FlopCounterMode counted around each real step. ``train_flops=True`` counts the first
    batch as one forward and backward of the model (g alone: 2·32·3 = 192 dense), sees its
    two backward passes, and counts it with the second, recorded: the same."""
    model = GAN()
    pruner = ls.MagnitudePruner(
        schedule=ls.schedules.Step(milestones=[1], sparsities=[0.5]), allocation="uniform"
    )
    callback = ls.SparsityCallback(
        pruner, write_files=False, verbose=False, train_flops=train_flops
    )
    _run(tmp_path, 2, callback, model=model)
    points = callback.history
    assert [p.train_flops_dense for p in points[1:]] == [sum(model.dense[:2]), sum(model.dense[2:])]
    assert [p.train_flops_dense for p in points[1:]] == [32 * 240] * 2
    assert [p.train_flops for p in points[1:]] == [32 * (4 * 32 + 14 * 8), 32 * (4 * 16 + 14 * 4)]
    meter = callback.controller.meter
    assert meter.steps_recorded == 1
    assert meter.training_traces == (0 if train_flops == "step" else 1)  # the example input's


class SkipsFirst(Learning):
    """The first batch's training_step returns None: Lightning runs no backward for it."""

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        loss = super().training_step(batch, batch_idx)
        return None if batch_idx == 0 else loss


@pytest.mark.parametrize("train_flops", [True, "step"])
def test_a_batch_without_a_backward_pass_is_named(tmp_path: Path, train_flops: Any) -> None:
    """The skipped batch is counted as a whole step (2 × 16 × 2816), and said. Recorded,
    its recording is dropped (it saw no backward) and the next batch's step recorded."""
    callback = ls.SparsityCallback(write_files=False, verbose=False, train_flops=train_flops)
    with pytest.warns(UserWarning, match=r"ran no backward pass in a batch"):
        _run(tmp_path, 1, callback, model=SkipsFirst())
    assert [p.train_flops for p in callback.history] == [0, 32 * _sparse(512, 128)]


def test_a_recorded_plain_step_costs_what_the_example_input_does(tmp_path: Path) -> None:
    """One forward and backward per batch (automatic optimization, SGD): the recorded step
    is the closed form of the module docstring, as ``train_flops=True`` counts it; the
    loss (cross-entropy) and SGD's update are not products: they cost nothing here."""
    callback = stepped_callback(train_flops="step")
    _run(tmp_path, 3, callback)
    epochs = [_sparse(512, 128), _sparse(358, 90), _sparse(205, 51)]
    assert [p.train_flops for p in callback.history] == [0] + [32 * e for e in epochs]
    assert callback.controller.meter.training_traces == 0


class Skipped(Learning):
    """Manual optimization through a CPU ``GradScaler``: the first batch's loss is scaled
    past float32 (infinite gradients), so the scaler skips its optimizer step."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**100)
        self.skipped: list[bool] = []

    def training_step(self, batch: Any, batch_idx: int) -> None:
        optimizer = self.optimizers()
        before = self.fc1.weight.detach().clone()
        loss = F.cross_entropy(self(batch[0]), batch[1]) * (1e30 if batch_idx == 0 else 1)
        optimizer.zero_grad()
        self.manual_backward(self.scaler.scale(loss))
        self.scaler.step(optimizer)
        self.scaler.update()
        self.skipped.append(torch.equal(before, self.fc1.weight))


@pytest.mark.parametrize("train_flops", [True, "step"])
def test_a_step_the_scaler_skips_still_ran_its_forward_and_backward(
    tmp_path: Path, train_flops: Any
) -> None:
    """2 batches of 16, no pruner, every weight dense: 32 · 2816 FLOPs in the epoch (the
    closed form), the skipped first step included. Recorded, the scaler's checks and
    updates are elementwise: no op without a formula."""
    model = Skipped()
    callback = ls.SparsityCallback(write_files=False, verbose=False, train_flops=train_flops)
    _run(tmp_path, 1, callback, model=model)
    assert model.skipped == [True, False]
    assert [p.train_flops for p in callback.history] == [0, 32 * _sparse(512, 128)]
    assert callback.controller.meter.measure_training().unsupported == {}


@pytest.mark.parametrize("train_flops", [True, "step"])
def test_mixed_precision_counts_the_same_products(tmp_path: Path, train_flops: Any) -> None:
    """``precision="bf16-mixed"`` (CPU autocast): the products are those of float32, in
    bfloat16 (autocast's casts of the weights carry their zeros): the epochs cost the
    closed form of the module docstring at 30% and 60%."""
    callback = stepped_callback(train_flops=train_flops)
    _run(tmp_path, 3, callback, precision="bf16-mixed")
    epochs = [_sparse(512, 128), _sparse(358, 90), _sparse(205, 51)]
    assert [p.train_flops for p in callback.history] == [0] + [32 * e for e in epochs]


class Fails(Learning):
    def training_step(self, batch: Any, batch_idx: int) -> Any:
        raise RuntimeError("simulated failure")


class SkipsTheFirstEpoch(Learning):
    """``on_train_batch_start`` returns -1 in epoch 0: Lightning skips the rest of it (the
    callbacks' hook ran first: a recording started and its batch never ends)."""

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> Any:
        return -1 if self.current_epoch == 0 else None


def test_a_recording_whose_batch_fails_or_is_skipped_is_stopped(tmp_path: Path) -> None:
    callback = ls.SparsityCallback(write_files=False, verbose=False, train_flops="step")
    with pytest.raises(RuntimeError, match="simulated failure"):
        _run(tmp_path, 1, callback, model=Fails())
    assert torch._C._len_torch_dispatch_stack() == 0  # the recording's mode left
    assert not callback.controller.meter.recording
    callback = ls.SparsityCallback(write_files=False, verbose=False, train_flops="step")
    _run(tmp_path / "skip", 2, callback, model=SkipsTheFirstEpoch())
    assert torch._C._len_torch_dispatch_stack() == 0
    assert [p.train_flops for p in callback.history] == [0, 0, 32 * _sparse(512, 128)]


class MatmulSGD(torch.optim.SGD):
    """SGD whose update multiplies matrices (as Muon's Newton-Schulz steps do)."""

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None if closure is None else closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and p.dim() == 2:
                    p.grad.copy_(p.grad @ p.grad.T @ p.grad)
        super().step()
        return loss


class Orthogonal(Learning):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return MatmulSGD(self.parameters(), lr=0.01)


def test_a_recorded_step_leaves_the_optimizers_update_out(tmp_path: Path) -> None:
    """The update's matmuls run between ``on_before_optimizer_step`` and the end of the
    optimizer's step: not counted, as on the example input (the closed form)."""
    callback = ls.SparsityCallback(write_files=False, verbose=False, train_flops="step")
    _run(tmp_path, 1, callback, model=Orthogonal())
    assert [p.train_flops for p in callback.history] == [0, 32 * _sparse(512, 128)]


class OneBatchGAN(GAN):
    def train_dataloader(self) -> DataLoader:
        data = TensorDataset(torch.randn(32, 8, generator=torch.Generator().manual_seed(0)))
        return DataLoader(data, batch_size=32)


def test_a_batch_owed_its_step_across_an_epoch_end_is_corrected_in_the_next(
    tmp_path: Path,
) -> None:
    """One batch an epoch: epoch 1's batch ran two backward passes, counted as one forward
    and backward of the model until epoch 2's step is recorded (g's forward and weight
    gradient, its input needs none: 2·32·2 = 128 per example dense; the GAN step 240,
    FlopCounterMode's); epoch 2 carries the correction, the total is exact."""
    model = OneBatchGAN()
    callback = ls.SparsityCallback(write_files=False, verbose=False)
    _run(tmp_path, 2, callback, model=model)
    dense = [p.train_flops_dense for p in callback.history]
    assert dense == [0, 32 * 128, 32 * 240 + 32 * (240 - 128)]
    assert callback.history[-1].train_flops_dense_total == sum(model.dense) == 2 * 32 * 240


@pytest.mark.filterwarnings("ignore:.*does not have many workers")
def test_the_digits_demo_counts_the_same_step_both_ways(tmp_path: Path) -> None:
    """The digits CNN (BatchNorm in training mode, Adam, torchmetrics in its training
    step), 4 batches an epoch, pruned to 50% after the first: the step recorded as it runs
    and the example input's step give the same FLOPs in every epoch; dense is
    FlopCounterMode's around a forward and backward of the CNN, per example, times the
    examples; the recorded step meets no op without a formula."""
    from lightning_sparsity.demo import DigitsCNN, DigitsDataModule

    model = DigitsCNN()
    x, y = torch.randn(8, 1, 8, 8), torch.arange(8) % 10
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    per_example = counter.get_total_flops() / 8
    history = {}
    for mode in (True, "step"):
        pruner = ls.MagnitudePruner(schedule=ls.schedules.Step(milestones=[1], sparsities=[0.5]))
        callback = ls.SparsityCallback(pruner, write_files=False, verbose=False, train_flops=mode)
        pl.seed_everything(0, verbose=False)
        trainer = quiet_trainer(tmp_path / str(mode), [callback], 2, limit_train_batches=4)
        trainer.fit(DigitsCNN(), DigitsDataModule())
        history[mode] = [(p.train_flops, p.train_flops_dense) for p in callback.history]
        examples = callback.controller.compute.epoch_examples
    assert history[True] == history["step"]
    dense = examples * per_example
    assert [d for _, d in history[True]] == [0, dense, dense]
    assert history[True][2][0] < history[True][1][0]  # pruned: fewer sparse FLOPs
    assert callback.controller.meter.measure_training().unsupported == {}
