"""Lottery-ticket rewinding: the LotteryTicket schedule, the checks, and real fits against a
hand-written iterative magnitude pruning (IMP) loop in plain torch.

The IMP loop below is written from the papers (Frankle & Carbin 2019; Frankle et al. 2020),
not from the library: train, prune ``rate`` of the surviving weights globally by magnitude
(torch.topk), set every parameter back to its copy of epoch ``k`` (pruned entries zero),
train again. Both runs use the same seed, data order and arithmetic, so on the CPU every
weight is bitwise equal and the masks must be identical round by round.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_sparsity as ls
from lightning_sparsity.control.rewind import Rewind
from tests.fits import quiet_trainer

RATE, ROUNDS, PER_ROUND = 0.2, 3, 2
SIZES = (16, 25, 4)  # 400 + 100 = 500 pruned weights: 20% of survivors is a whole number
LR, MOMENTUM, GAMMA = 0.1, 0.9, 0.8


def make_net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(SIZES[0], SIZES[1]), nn.ReLU(), nn.Linear(SIZES[1], SIZES[2]))


def data() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(64, SIZES[0], generator=g), torch.arange(64) % SIZES[2]


def optimizer_and_scheduler(params: Any) -> tuple[torch.optim.SGD, Any]:
    optimizer = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM)
    return optimizer, torch.optim.lr_scheduler.ExponentialLR(optimizer, GAMMA)


class Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = make_net()
        self.example_input_array = torch.zeros(1, SIZES[0])

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> Any:
        optimizer, scheduler = optimizer_and_scheduler(self.parameters())
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(*data()), batch_size=16, shuffle=False)


def effective(model: nn.Module) -> list[Tensor]:
    """The weights and biases as the model computes with them, in registration order."""
    out = []
    for module in model.modules():
        if isinstance(module, nn.Linear):
            orig = getattr(module, "weight_orig", None)
            weight = module.weight if orig is None else orig * module.weight_mask
            out += [weight.detach().clone(), module.bias.detach().clone()]
    return out


# ---------------------------------------------------------------------- the hand-written loop


def hand_imp(k: int, epochs: int, rewind_optimizer: bool) -> dict[str, Any]:
    """IMP with rewinding to epoch ``k``, in plain torch.

    Returns:
        ``masks[t]``: the two weights' keep masks after the prune at epoch ``t``;
        ``rewound[t]``: the effective weights right after that rewind; ``at_k``: the
        weights after ``k`` epochs; ``final``: after the last epoch; ``lrs``: per epoch.
    """
    torch.manual_seed(0)
    net = make_net()
    optimizer, scheduler = optimizer_and_scheduler(net.parameters())
    weights = [net[0].weight, net[2].weight]
    keeps = [torch.ones_like(w, dtype=torch.bool) for w in weights]
    x_all, y_all = data()
    out: dict[str, Any] = {"masks": {}, "rewound": {}, "lrs": []}

    def copy_now() -> tuple[dict, dict, dict]:
        return (
            copy.deepcopy(net.state_dict()),
            copy.deepcopy(optimizer.state_dict()),
            copy.deepcopy(scheduler.state_dict()),
        )

    def mask_momentum() -> None:
        for w, keep in zip(weights, keeps, strict=True):
            state = optimizer.state.get(w, {})
            if "momentum_buffer" in state:
                state["momentum_buffer"].mul_(keep)

    saved = None
    if k == 0:
        saved = copy_now()
        out["at_k"] = [t.clone() for t in net.state_dict().values()]
    for epoch in range(1, epochs + 1):
        out["lrs"].append(optimizer.param_groups[0]["lr"])
        for i in range(0, 64, 16):
            optimizer.zero_grad()
            F.cross_entropy(net(x_all[i : i + 16]), y_all[i : i + 16]).backward()
            for w, keep in zip(weights, keeps, strict=True):
                w.grad.mul_(keep)  # pruned entries get no gradient
            optimizer.step()
            with torch.no_grad():
                for w, keep in zip(weights, keeps, strict=True):
                    w.mul_(keep)
        scheduler.step()
        if epoch == k:
            saved = copy_now()
            out["at_k"] = [t.clone() for t in net.state_dict().values()]
        since = epoch - k
        if since > 0 and since % PER_ROUND == 0 and since // PER_ROUND <= ROUNDS:
            # prune RATE of the survivors: the smallest magnitudes among them, globally
            alive = torch.cat([keep.flatten() for keep in keeps])
            magnitudes = torch.cat([w.detach().abs().flatten() for w in weights])
            n_prune = round(RATE * int(alive.sum()))
            scores = torch.where(alive, magnitudes, torch.tensor(float("inf")))
            pruned = torch.topk(scores, n_prune, largest=False).indices
            flat = alive.clone()
            flat[pruned] = False
            keeps = [
                part.view_as(w) for part, w in zip(flat.split([400, 100]), weights, strict=True)
            ]
            mask_momentum()  # a prune clears the state of what it prunes
            # rewind every parameter to epoch k; pruned entries stay zero
            assert saved is not None
            net.load_state_dict(saved[0])
            with torch.no_grad():
                for w, keep in zip(weights, keeps, strict=True):
                    w.mul_(keep)
            if rewind_optimizer:
                optimizer.load_state_dict(copy.deepcopy(saved[1]))
                scheduler.load_state_dict(copy.deepcopy(saved[2]))
                mask_momentum()
            out["masks"][epoch] = [keep.clone() for keep in keeps]
            out["rewound"][epoch] = effective(net)
    out["final"] = effective(net)
    return out


# ---------------------------------------------------------------------- the Lightning fit


class Recorder(pl.Callback):
    """After SparsityCallback at each epoch end: the masks and effective weights."""

    def __init__(self, callback: ls.SparsityCallback) -> None:
        self.callback = callback
        self.masks: dict[int, list[Tensor]] = {}
        self.weights: dict[int, list[Tensor]] = {}
        self.lrs: list[float] = []

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        epoch = trainer.current_epoch + 1
        assert self.callback.pruning is not None
        masks = self.callback.pruning.masks(pl_module)
        if masks:
            self.masks[epoch] = [masks["net.0.weight"], masks["net.2.weight"]]
        self.weights[epoch] = effective(pl_module)


def lightning_imp(
    tmp_path: Path,
    k: int,
    epochs: int,
    rewind_optimizer: bool,
    storage: str = "inplace",
    ckpt_path: str | None = None,
    **trainer_kwargs: Any,
) -> tuple[Recorder, Net]:
    pl.seed_everything(0, verbose=False)
    model = Net()
    schedule = ls.schedules.LotteryTicket(RATE, ROUNDS, PER_ROUND, rewind_epoch=k)
    pruner = ls.MagnitudePruner(schedule=schedule, mask_storage=storage, min_density=0.0)
    callback = ls.SparsityCallback(pruner, rewind_optimizer=rewind_optimizer, write_files=False)
    recorder = Recorder(callback)
    callbacks = [callback, recorder, *trainer_kwargs.pop("callbacks", [])]
    trainer = quiet_trainer(tmp_path, callbacks, epochs, **trainer_kwargs)
    trainer.fit(model, ckpt_path=ckpt_path)
    return recorder, model


def assert_same(got: list[Tensor], want: list[Tensor], what: str) -> None:
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert torch.equal(a, b), f"{what}: tensor {i} differs by {(a - b).abs().max():.3g}"


PRUNES = lambda k: [k + r * PER_ROUND for r in range(1, ROUNDS + 1)]  # noqa: E731


@pytest.mark.parametrize(
    ("storage", "k", "rewind_optimizer"),
    [("inplace", 1, False), ("prune", 1, True), ("inplace", 0, True)],
)
def test_fit_equals_a_hand_written_imp_loop(
    tmp_path: Path, storage: str, k: int, rewind_optimizer: bool
) -> None:
    epochs = k + (ROUNDS + 1) * PER_ROUND  # the last ticket trains once more
    hand = hand_imp(k, epochs, rewind_optimizer)
    recorder, model = lightning_imp(tmp_path, k, epochs, rewind_optimizer, storage)
    assert sorted(hand["masks"]) == PRUNES(k)
    for t in PRUNES(k):
        assert_same(recorder.masks[t], hand["masks"][t], f"masks after round at epoch {t}")
        kept = [int(m.sum()) for m in recorder.masks[t]]
        r = (t - k) // PER_ROUND
        assert sum(kept) == round(500 * (1 - RATE) ** r)
        # right after the prune: every weight is its epoch-k value, pruned entries zero
        assert_same(recorder.weights[t], hand["rewound"][t], f"rewound weights at epoch {t}")
        at_k = hand["at_k"]
        masks = recorder.masks[t]
        expected = [at_k[0] * masks[0], at_k[1], at_k[2] * masks[1], at_k[3]]
        assert_same(recorder.weights[t], expected, f"epoch-{k} values at epoch {t}")
        if k > 0:  # the Lightning run's own weights at epoch k
            own = recorder.weights[k]
            own_masked = [own[0] * masks[0], own[1], own[2] * masks[1], own[3]]
            assert_same(recorder.weights[t], own_masked, f"own epoch-{k} copy at {t}")
    assert_same(effective(model.net), hand["final"], "final weights")
    assert recorder.lrs == pytest.approx(hand["lrs"], rel=0, abs=0)
    if rewind_optimizer:  # the LR schedule restarts at epoch k after each rewind
        assert recorder.lrs[PRUNES(k)[0]] == pytest.approx(LR * GAMMA**k)


@pytest.mark.filterwarnings("ignore:.*prunes nothing by the fit's last epoch")  # stop=1
@pytest.mark.parametrize("stop", [1, 4])
def test_resume_mid_round_equals_an_uninterrupted_fit(tmp_path: Path, stop: int) -> None:
    """Stop after epoch ``stop`` (1: the copy just taken; 4: in round 2 of the prunes at 3,
    5, 7), resume from the checkpoint."""
    k, epochs = 1, 9
    whole, whole_model = lightning_imp(tmp_path / "whole", k, epochs, True)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    lightning_imp(
        tmp_path / "first", k, stop, True, callbacks=[checkpoint], enable_checkpointing=True
    )
    last = tmp_path / "ckpt" / "last.ckpt"
    state = torch.load(last, weights_only=False)["callbacks"]["SparsityCallback"]["rewind"]
    assert state["epoch"] == k
    assert all(t.device.type == "cpu" for t in state["weights"].values())
    again = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)  # the run goes on
    resumed, resumed_model = lightning_imp(
        tmp_path / "second",
        k,
        epochs,
        True,
        ckpt_path=str(last),
        callbacks=[again],
        enable_checkpointing=True,
    )
    for t in [t for t in PRUNES(k) if t > stop]:
        assert_same(resumed.masks[t], whole.masks[t], f"masks at epoch {t}")
        assert_same(resumed.weights[t], whole.weights[t], f"rewound weights at epoch {t}")
    assert_same(effective(resumed_model), effective(whole_model), "final weights")
    assert resumed.lrs == whole.lrs[stop:]


# ---------------------------------------------------------------------- the Rewind itself


@pytest.mark.parametrize("storage", ["inplace", "prune"])
def test_rewind_reaches_the_forward_and_its_copy_stays_put(storage: str) -> None:
    """The two defects of Lightning's ModelPruning reset (issue #13643 and its fix): the
    reset must reach the next forward under torch's prune reparametrization, and training
    after a reset must not move the copy (a second reset restores the same values)."""
    torch.manual_seed(0)
    net = make_net()
    pruner = ls.MagnitudePruner(mask_storage=storage)
    rewind = Rewind(1, optimizer=True)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9)
    pruner.attach(optimizer)
    rewind.bind([optimizer])
    x, y = data()
    optimizer.zero_grad()
    F.cross_entropy(net(x), y).backward()
    optimizer.step()  # momentum exists from here on
    first = [t.detach().clone() for t in net.state_dict().values()]
    momentum = [optimizer.state[p]["momentum_buffer"].clone() for p in net.parameters()]
    rewind.take(net)
    for _ in range(2):  # two rounds: train, prune, rewind
        for _ in range(3):
            optimizer.zero_grad()
            F.cross_entropy(net(x), y).backward()
            optimizer.step()
        pruner.apply(net, 0.5)
        rewind.apply(net, pruner._masked)
        masks = pruner.masks(net)
        keep0, keep2 = masks["0.weight"], masks["2.weight"]
        want = F.linear(F.relu(F.linear(x, first[0] * keep0, first[1])), first[2] * keep2, first[3])
        assert torch.equal(net(x), want)
        # the momentum of the copy, zero on what is pruned
        keeps = [keep0, torch.ones(SIZES[1]), keep2, torch.ones(SIZES[2])]
        for p, saved, keep in zip(net.parameters(), momentum, keeps, strict=True):
            assert torch.equal(optimizer.state[p]["momentum_buffer"], saved * keep)


def test_the_copy_covers_biases_buffers_and_tied_weights_once() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 4))
    net[2].weight = net[0].weight  # tied
    rewind = Rewind(0)
    rewind.take(net)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    net(torch.randn(8, 4))  # moves the batch-norm statistics
    rewind.apply(net, [])
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert set(rewind.state_dict()["weights"]) == {
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
        "2.bias",
    }


# ---------------------------------------------------------------------- schedule and checks


def test_lottery_ticket_targets_and_epochs() -> None:
    schedule = ls.schedules.LotteryTicket(0.2, rounds=3, epochs_per_round=2, rewind_epoch=1)
    want = {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.2, 4: 0.2, 5: 0.36, 6: 0.36, 7: 0.488, 8: 0.488}
    assert {t: schedule(t) for t in want} == pytest.approx(want)
    assert [t for t in range(12) if schedule.is_pruning_epoch(t)] == [3, 5, 7]
    assert schedule.last_epoch == 7
    assert schedule.peak() == pytest.approx(0.488)
    assert schedule.first_prune(10) == 3
    assert ls.schedules.LotteryTicket(0.5, 2, 3).first_prune(10) == 3  # k = 0
    with pytest.raises(ValueError, match=r"`rate` must be a float in \(0, 1\), got 1.*`rounds`"):
        ls.schedules.LotteryTicket(1, rounds=0, epochs_per_round=1)


def test_lottery_ticket_from_a_config() -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--callback", type=ls.SparsityCallback)
    config = parser.parse_string(
        """
        callback:
          class_path: lightning_sparsity.SparsityCallback
          init_args:
            rewind_optimizer: true
            pruning:
              class_path: lightning_sparsity.MagnitudePruner
              init_args:
                schedule:
                  class_path: lightning_sparsity.schedules.LotteryTicket
                  init_args: {rate: 0.2, rounds: 5, epochs_per_round: 4, rewind_epoch: 1}
        """
    )
    callback = parser.instantiate(config).callback
    assert callback.pruning.schedule == ls.schedules.LotteryTicket(0.2, 5, 4, 1)
    rewind = callback.controller.rewind
    assert rewind is not None
    assert (rewind.epoch, rewind.optimizer) == (1, True)


LOTTERY = ls.schedules.LotteryTicket(0.2, 3, 2, rewind_epoch=1)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"pruning": ls.MagnitudePruner(schedule=LOTTERY), "rewind_epoch": 2},
            ValueError,
            r"`rewind_epoch=2` contradicts the schedule's LotteryTicket\(rewind_epoch=1\)",
        ),
        (
            {
                "pruning": ls.MagnitudePruner(schedule=ls.schedules.Cubic(0.5, 0, 4)),
                "rewind_epoch": 1,
            },
            ValueError,
            "`rewind_epoch=1` must come before the schedule's first prune, but Cubic prunes at"
            " epoch 1",
        ),
        ({"rewind_epoch": 0}, ValueError, r"pass `pruning=MagnitudePruner\(schedule=...\)`"),
        (
            {"pruning": ls.MagnitudePruner(schedule=LOTTERY), "prune_every_n_steps": 5},
            ValueError,
            "`rewind_epoch=1` counts epochs",
        ),
        ({"rewind_optimizer": True}, ValueError, "`rewind_optimizer=True` needs an epoch"),
        ({"rewind_epoch": -1}, ValueError, "`rewind_epoch` must be an int >= 0 or None, got -1"),
        ({"rewind_epoch": 1.5}, ValueError, "`rewind_epoch` must be an int >= 0 or None"),
        (
            {"pruning": ls.MagnitudePruner(schedule=LOTTERY), "rewind_optimizer": "yes"},
            TypeError,
            "`rewind_optimizer` must be a bool, got 'yes'",
        ),
    ],
)
def test_bad_rewind_settings_are_refused(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        ls.SparsityCallback(**kwargs)


def test_rewind_epoch_on_the_callback_with_another_schedule() -> None:
    same = ls.SparsityCallback(ls.MagnitudePruner(schedule=LOTTERY), rewind_epoch=1)
    assert same.controller.rewind is not None
    assert same.controller.rewind.epoch == 1
    step = ls.MagnitudePruner(schedule=ls.schedules.Step([3, 6], [0.5, 0.75]))
    callback = ls.SparsityCallback(step, rewind_epoch=2)
    assert callback.controller.rewind is not None
    assert callback.controller.rewind.epoch == 2
    assert callback._hparams()["rewind/epoch"] == 2
    plain = ls.SparsityCallback(ls.MagnitudePruner(schedule=ls.schedules.Cubic(0.5, 0, 4)))
    assert plain.controller.rewind is None
    assert "rewind_epoch" not in plain.settings()


def test_resume_without_the_copy_is_refused(tmp_path: Path) -> None:
    callback = ls.SparsityCallback(ls.MagnitudePruner(schedule=LOTTERY))
    state = callback.state_dict()
    state["history"] = [
        {
            "epoch": 2,
            "step": 2,
            "global_step": 8,
            "per": "example",
            "flops": 1,
            "flops_sparse": 1,
            "params": 1,
            "params_nonzero": 1,
        }
    ]
    state["rewind"] = {"epoch": 1}
    with pytest.raises(ValueError, match="holds no copy of the weights of that epoch"):
        callback.load_state_dict(state)
    state["rewind"] = {"epoch": 2, "weights": {}}
    with pytest.raises(
        ValueError, match=r"holds the weights after 2 epochs .* keep rewind_epoch=2"
    ):
        callback.load_state_dict(state)


def test_taking_and_writing_back_the_copy_read_nothing_to_the_host() -> None:
    """No host sync at all, whatever the number of layers (each would wait on a GPU)."""
    from tests.test_syncs import count_reads

    torch.manual_seed(0)
    net = nn.Sequential(*[nn.Linear(8, 8) for _ in range(6)])
    optimizer, scheduler = optimizer_and_scheduler(net.parameters())
    net(torch.randn(4, 8)).sum().backward()
    optimizer.step()
    pruner = ls.MagnitudePruner(schedule=ls.schedules.LotteryTicket(0.5, 1, 1))
    pruner.attach(optimizer)
    rewind = Rewind(0, optimizer=True)
    rewind.bind([optimizer], [scheduler])
    with count_reads() as calls:
        rewind.take(net)
    pruner.apply(net, 0.5)
    with count_reads() as more:
        rewind.apply(net, pruner._masked)
    assert calls + more == []
