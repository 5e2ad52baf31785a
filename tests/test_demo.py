from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import LightningCLI
from sklearn.datasets import load_digits
from torch.utils.flop_counter import FlopCounterMode

from lightning_sparsity.demo import DigitsCNN, DigitsDataModule

N_DIGITS = 1797  # published size of scikit-learn's digits


def _quiet_trainer(**kwargs: object) -> pl.Trainer:
    return pl.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        deterministic=True,
        **kwargs,
    )


def _setup(**kwargs: object) -> DigitsDataModule:
    dm = DigitsDataModule(**kwargs)  # type: ignore[arg-type]
    dm.setup("fit")
    return dm


def _tensors(dm: DigitsDataModule, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = dm.train_dataset if split == "train" else dm.val_dataset
    assert dataset is not None
    images, labels = dataset.tensors
    return images, labels


def _rows(images: torch.Tensor, labels: torch.Tensor) -> Counter[tuple[int, ...]]:
    """Multiset of (raw pixels 0..16 ..., label) rows."""
    raw = (images.reshape(len(images), 64) * 16).round().to(torch.int64)
    return Counter((*r, int(y)) for r, y in zip(raw.tolist(), labels.tolist(), strict=True))


# ---------------------------------------------------------------- data: the split


@pytest.mark.parametrize(
    ("val_fraction", "n_val"),
    [
        (0.2, 360),  # ceil(0.2 * 1797) = ceil(359.4) = 360
        (0.5, 899),  # ceil(898.5) = 899
        (0.1, 180),  # ceil(179.7) = 180
        (0.9, 1618),  # ceil(1617.3) = 1618
    ],
)
def test_split_sizes_add_up(val_fraction: float, n_val: int) -> None:
    dm = _setup(val_fraction=val_fraction)
    assert dm.val_dataset is not None
    assert dm.train_dataset is not None
    assert len(dm.val_dataset) == n_val
    assert len(dm.train_dataset) == N_DIGITS - n_val


@pytest.mark.parametrize(("val_fraction", "seed"), [(0.2, 0), (0.2, 7), (0.5, 3), (0.05, 11)])
def test_split_is_stratified(val_fraction: float, seed: int) -> None:
    _, y = load_digits(return_X_y=True)
    class_counts = np.bincount(y, minlength=10)
    dm = _setup(val_fraction=val_fraction, seed=seed)
    _, val_labels = _tensors(dm, "val")
    val_counts = np.bincount(val_labels.numpy(), minlength=10)
    expected = class_counts * len(val_labels) / N_DIGITS
    assert len(val_counts) == 10
    assert np.all(val_counts >= 1)
    assert np.all(np.abs(val_counts - expected) < 1), (val_counts, expected)


def test_split_is_a_partition_of_the_digits() -> None:
    x, y = load_digits(return_X_y=True)
    expected = _rows(torch.as_tensor(x / 16), torch.as_tensor(y))
    dm = _setup(seed=5)
    got = _rows(*_tensors(dm, "train")) + _rows(*_tensors(dm, "val"))
    assert got == expected


def test_split_is_deterministic_by_seed() -> None:
    a, b, c = _setup(seed=1), _setup(seed=1), _setup(seed=2)
    for split in ("train", "val"):
        for ta, tb in zip(_tensors(a, split), _tensors(b, split), strict=True):
            assert torch.equal(ta, tb)
    assert _rows(*_tensors(a, "val")) != _rows(*_tensors(c, "val"))


def test_setup_twice_keeps_the_split() -> None:
    dm = _setup(seed=3)
    before = _tensors(dm, "val")
    dm.setup("validate")
    after = _tensors(dm, "val")
    assert all(x is y for x, y in zip(before, after, strict=True))


# ---------------------------------------------------------------- data: tensors and loaders


@pytest.mark.parametrize("split", ["train", "val"])
def test_tensor_shapes_dtypes_and_range(split: str) -> None:
    images, labels = _tensors(_setup(), split)
    assert images.dtype == torch.float32
    assert images.shape == (len(labels), 1, 8, 8)
    assert labels.dtype == torch.int64
    assert labels.shape == (len(images),)
    # raw pixels are the integers 0..16; both ends occur in every split of this size
    assert images.min().item() == 0.0
    assert images.max().item() == 1.0
    assert torch.equal(images * 16, (images * 16).round())
    assert set(labels.tolist()) == set(range(10))


@pytest.mark.parametrize(
    ("batch_size", "n_train_batches", "n_val_batches"), [(64, 23, 6), (100, 15, 4)]
)
def test_loader_batches(batch_size: int, n_train_batches: int, n_val_batches: int) -> None:
    # 1437 train / 360 val: ceil(1437 / 64) = 23, ceil(360 / 64) = 6, ceil(1437 / 100) = 15
    dm = _setup(batch_size=batch_size)
    train = list(dm.train_dataloader())
    val = list(dm.val_dataloader())
    assert len(train) == n_train_batches
    assert len(val) == n_val_batches
    images, labels = train[0]
    assert images.shape == (batch_size, 1, 8, 8)
    assert labels.shape == (batch_size,)


def test_train_loader_shuffles_by_seed_and_val_loader_does_not() -> None:
    def order(dm: DigitsDataModule, loader: str) -> torch.Tensor:
        batches = dm.train_dataloader() if loader == "train" else dm.val_dataloader()
        return torch.cat([images for images, _ in batches])

    a, b = _setup(seed=4), _setup(seed=4)
    train_images, _ = _tensors(a, "train")
    val_images, _ = _tensors(a, "val")
    first = order(a, "train")
    assert not torch.equal(first, train_images)  # shuffled
    assert torch.equal(first, order(b, "train"))  # same seed, same order
    assert torch.equal(first, order(a, "train"))  # each new loader restarts from the seed
    assert torch.equal(order(a, "val"), val_images)  # not shuffled
    # each epoch its own order, drawn from (seed, epoch) alone: a resumed fit sees the
    # batches an uninterrupted one sees
    loader = a.train_dataloader()
    loader.sampler.set_epoch(3)
    third = torch.cat([images for images, _ in loader])
    assert not torch.equal(third, first)
    fresh = b.train_dataloader()
    fresh.sampler.set_epoch(3)
    assert torch.equal(torch.cat([images for images, _ in fresh]), third)
    assert sorted(third.flatten().tolist()) == sorted(first.flatten().tolist())


# ---------------------------------------------------------------- data: validation


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "`batch_size` must be an int >= 1, got 0"),
        ({"batch_size": 2.5}, "`batch_size` must be an int >= 1, got 2.5"),
        ({"batch_size": True}, "`batch_size` must be an int >= 1, got True"),
        ({"val_fraction": 1.5}, r"`val_fraction` must be in \(0, 1\), got 1.5"),
        ({"val_fraction": 0}, r"`val_fraction` must be in \(0, 1\), got 0"),
        ({"val_fraction": 1.0}, r"`val_fraction` must be in \(0, 1\), got 1.0"),
        ({"val_fraction": float("nan")}, r"`val_fraction` must be in \(0, 1\), got nan"),
        ({"val_fraction": "0.2"}, r"`val_fraction` must be in \(0, 1\), got '0.2'"),
        # ceil(0.004 * 1797) = 8 val images < 10 classes
        ({"val_fraction": 0.004}, r"one per class.*got 0.004: 1789 train and 8 val of 1797"),
        # ceil(0.996 * 1797) = 1790 val, 7 train
        ({"val_fraction": 0.996}, r"one per class.*got 0.996: 7 train and 1790 val of 1797"),
        ({"seed": -1}, r"`seed` must be an int in \[0, 2\*\*32\), got -1"),
        ({"seed": 2**32}, r"`seed` must be an int in \[0, 2\*\*32\), got 4294967296"),
        ({"num_workers": -1}, "`num_workers` must be an int >= 0, got -1"),
    ],
)
def test_datamodule_rejects_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DigitsDataModule(**kwargs)  # type: ignore[arg-type]


def test_datamodule_reports_every_bad_argument_at_once() -> None:
    with pytest.raises(
        ValueError, match=r"`batch_size` .*got 0; `val_fraction` .*got 2; `seed` .*; `num_workers`"
    ):
        DigitsDataModule(batch_size=0, val_fraction=2, seed=-5, num_workers=-1)


# ---------------------------------------------------------------- model


@pytest.mark.parametrize("batch_norm", [True, False])
@pytest.mark.parametrize("channels", [(16, 32, 64), (4, 8, 2)])
def test_model_shapes_and_parameter_count(channels: tuple[int, int, int], batch_norm: bool) -> None:
    c1, c2, c3 = channels
    model = DigitsCNN(channels=channels, batch_norm=batch_norm)
    # 3x3 conv weights 9 * c_in * c_out; BatchNorm: weight + bias per channel; conv bias
    # only without BatchNorm; linear head c3 * 10 + 10
    conv_weights = 9 * (1 * c1 + c1 * c2 + c2 * c3)
    per_channel = 2 if batch_norm else 1
    expected = conv_weights + per_channel * (c1 + c2 + c3) + c3 * 10 + 10
    assert sum(p.numel() for p in model.parameters()) == expected
    assert torch.equal(model.example_input_array, torch.zeros(1, 1, 8, 8))
    assert model(torch.rand(5, 1, 8, 8)).shape == (5, 10)


def test_model_dense_flops_match_torch_flop_counter() -> None:
    model = DigitsCNN().eval()
    with FlopCounterMode(display=False) as counter:
        model(model.example_input_array)
    flops = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    # 2 FLOPs per MAC; a 3x3 conv with padding 1 costs c_in * c_out * 9 * H * W MACs
    assert flops["DigitsCNN.conv1"] == 2 * 1 * 16 * 9 * 64  # 18,432
    assert flops["DigitsCNN.conv2"] == 2 * 16 * 32 * 9 * 64  # 589,824
    assert flops["DigitsCNN.conv3"] == 2 * 32 * 64 * 9 * 16  # 589,824 (after 2x2 max pool)
    assert flops["DigitsCNN.fc"] == 2 * 64 * 10  # 1,280
    assert counter.get_total_flops() == 1_199_360


def test_model_saves_hyperparameters() -> None:
    model = DigitsCNN(lr=3e-3, channels=(4, 8, 16), batch_norm=False)
    assert dict(model.hparams) == {"lr": 3e-3, "channels": (4, 8, 16), "batch_norm": False}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": 0}, "`lr` must be a finite number > 0, got 0"),
        ({"lr": -1e-3}, "`lr` must be a finite number > 0, got -0.001"),
        ({"lr": float("inf")}, "`lr` must be a finite number > 0, got inf"),
        ({"lr": "1e-2"}, "`lr` must be a finite number > 0, got '1e-2'"),
        ({"channels": (16, 32)}, r"`channels` must be three ints >= 1, got \(16, 32\)"),
        ({"channels": (16, 0, 64)}, r"`channels` must be three ints >= 1, got \(16, 0, 64\)"),
        ({"channels": (16, 32.0, 64)}, r"`channels` must be three ints >= 1, got \(16, 32.0, 64\)"),
        ({"channels": "abc"}, "`channels` must be three ints >= 1, got 'abc'"),
        ({"batch_norm": 1}, "`batch_norm` must be a bool, got 1"),
    ],
)
def test_model_rejects_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DigitsCNN(**kwargs)  # type: ignore[arg-type]


def test_model_reports_every_bad_argument_at_once() -> None:
    with pytest.raises(ValueError, match=r"`lr` .*; `channels` .*; `batch_norm`"):
        DigitsCNN(lr=0, channels=(1, 2), batch_norm="yes")  # type: ignore[arg-type]


def test_cli_builds_both_from_config_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.argv", ["lightning-sparsity"])
    cli = LightningCLI(
        DigitsCNN,
        DigitsDataModule,
        run=False,
        args=[
            "--model.lr=0.003",
            "--model.channels=[4, 8, 16]",
            "--model.batch_norm=false",
            "--data.batch_size=32",
            "--data.val_fraction=0.25",
            "--data.seed=9",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
        ],
    )
    assert isinstance(cli.model, DigitsCNN)
    assert isinstance(cli.datamodule, DigitsDataModule)
    # LightningCLI records the parsed config as hparams: YAML lists stay lists
    hparams = {k: cli.model.hparams[k] for k in ("lr", "channels", "batch_norm")}
    assert hparams == {"lr": 0.003, "channels": [4, 8, 16], "batch_norm": False}
    assert cli.model.conv3.weight.shape == (16, 8, 3, 3)
    assert (cli.datamodule.batch_size, cli.datamodule.val_fraction) == (32, 0.25)
    assert cli.datamodule.seed == 9


# ---------------------------------------------------------------- a real fit


@pytest.fixture(scope="module")
def fitted() -> tuple[pl.Trainer, DigitsCNN, DigitsDataModule]:
    pl.seed_everything(0, verbose=False)
    trainer = _quiet_trainer(max_epochs=5)
    model, dm = DigitsCNN(), DigitsDataModule(seed=0)
    trainer.fit(model, dm)
    return trainer, model, dm


def test_fit_reaches_ninety_percent_in_five_epochs(
    fitted: tuple[pl.Trainer, DigitsCNN, DigitsDataModule],
) -> None:
    trainer, _, _ = fitted
    assert trainer.current_epoch == 5
    assert {"train_loss", "val_loss", "val_acc"} <= set(trainer.callback_metrics)
    assert trainer.callback_metrics["val_acc"].item() > 0.9


def test_logged_val_acc_is_plain_accuracy(
    fitted: tuple[pl.Trainer, DigitsCNN, DigitsDataModule],
) -> None:
    trainer, model, dm = fitted
    images, labels = _tensors(dm, "val")
    model.eval()
    with torch.no_grad():
        predictions = model(images).argmax(dim=1)
    correct = (predictions == labels).sum().item()
    assert trainer.callback_metrics["val_acc"].item() == pytest.approx(correct / len(labels))


def test_checkpoint_round_trip(
    fitted: tuple[pl.Trainer, DigitsCNN, DigitsDataModule], tmp_path: Path
) -> None:
    trainer, model, dm = fitted
    path = tmp_path / "digits.ckpt"
    trainer.save_checkpoint(path)
    restored = DigitsCNN.load_from_checkpoint(path)
    assert dict(restored.hparams) == dict(model.hparams)
    images, _ = _tensors(dm, "val")
    model.eval()
    restored.eval()
    with torch.no_grad():
        assert torch.equal(restored(images), model(images))
    (result,) = _quiet_trainer().validate(restored, DigitsDataModule(seed=0), verbose=False)
    assert result["val_acc"] == pytest.approx(trainer.callback_metrics["val_acc"].item())
