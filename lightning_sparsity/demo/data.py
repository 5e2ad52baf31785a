"""The embedded default dataset: scikit-learn's 8×8 handwritten digits as a LightningDataModule.

``sklearn.datasets.load_digits`` ships inside scikit-learn (1,797 grayscale 8×8 images, 10
classes, raw pixel values 0..16), so the demo, the configs and the tests run with no download.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Sampler, TensorDataset

from lightning_sparsity._checks import check_int
from lightning_sparsity._lightning import pl

__all__ = ["DIGITS_NUM_CLASSES", "DIGITS_NUM_SAMPLES", "DigitsDataModule", "EpochShuffle"]

#: Number of images in ``load_digits``.
DIGITS_NUM_SAMPLES = 1797
#: Number of classes (the digits 0..9).
DIGITS_NUM_CLASSES = 10
#: Largest raw pixel value in ``load_digits`` (pixels are integers 0..16).
_DIGITS_MAX_PIXEL = 16.0
#: ``numpy`` and ``scikit-learn`` accept seeds in [0, 2**32).
_SEED_LIMIT = 2**32


class DigitsDataModule(pl.LightningDataModule):
    """scikit-learn's 8×8 digits, split into stratified train and validation sets.

    Images are float32 tensors of shape ``(N, 1, 8, 8)`` scaled to [0, 1] (raw values 0..16
    divided by 16); labels are int64 in 0..9. The split is stratified by class and fixed by
    ``seed``: the validation set holds ``ceil(val_fraction * 1797)`` images and each class
    appears in it in proportion to its share of the whole set (within one image).

    Args:
        batch_size: Images per batch, for both loaders.
        val_fraction: Share of the 1,797 images held out for validation, in (0, 1). It must
            leave at least one image per class on each side of the split.
        seed: Seed of the split and of the training loader's shuffling, in [0, 2**32).
        num_workers: ``DataLoader`` worker processes; 0 loads in the main process.

    Raises:
        ValueError: If any argument is out of range or of the wrong type; the message lists
            every bad argument, its value and what is allowed.

    Example:
        >>> dm = DigitsDataModule(batch_size=32, seed=1)
        >>> dm.setup("fit")
        >>> images, labels = next(iter(dm.train_dataloader()))
        >>> tuple(images.shape), labels.dtype
        ((32, 1, 8, 8), torch.int64)
    """

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.2,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        errors = _check_args(batch_size, val_fraction, seed, num_workers)
        if errors:
            raise ValueError("Invalid DigitsDataModule arguments: " + "; ".join(errors))
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.val_fraction = float(val_fraction)
        self.seed = seed
        self.num_workers = num_workers
        self.num_classes = DIGITS_NUM_CLASSES
        self.train_dataset: TensorDataset | None = None
        self.val_dataset: TensorDataset | None = None

    def setup(self, stage: str) -> None:
        """Load the digits and split them; later calls reuse the first split.

        Args:
            stage: The Lightning stage (``"fit"``, ``"validate"``, ...); every stage gets
                the same split.
        """
        if self.train_dataset is not None and self.val_dataset is not None:
            return
        pixels, labels = load_digits(return_X_y=True)
        train_idx, val_idx = train_test_split(
            np.arange(len(labels)),
            test_size=self.val_fraction,
            random_state=self.seed,
            shuffle=True,
            stratify=labels,
        )
        images = torch.as_tensor(pixels / _DIGITS_MAX_PIXEL, dtype=torch.float32)
        images = images.reshape(-1, 1, 8, 8)
        targets = torch.as_tensor(labels, dtype=torch.int64)
        train = torch.as_tensor(np.sort(train_idx))
        val = torch.as_tensor(np.sort(val_idx))
        self.train_dataset = TensorDataset(images[train], targets[train])
        self.val_dataset = TensorDataset(images[val], targets[val])

    def train_dataloader(self) -> DataLoader[tuple[torch.Tensor, ...]]:
        """Shuffled training batches; each epoch's order is fixed by ``seed`` and the epoch.

        Returns:
            A loader whose sampler draws epoch ``e``'s order from ``(seed, e)`` (Lightning
            calls its ``set_epoch``, as for ``DistributedSampler``), so a fit resumed from a
            checkpoint sees the same batches as one that was never interrupted.
        """
        dataset = self._dataset("train")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochShuffle(len(dataset), self.seed),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader[tuple[torch.Tensor, ...]]:
        """Validation batches in a fixed order (no shuffling).

        Returns:
            A loader over the validation split.
        """
        return DataLoader(
            self._dataset("val"),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _dataset(self, split: str) -> TensorDataset:
        if self.train_dataset is None or self.val_dataset is None:
            self.setup("fit")
        dataset = self.train_dataset if split == "train" else self.val_dataset
        assert dataset is not None  # set by setup above
        return dataset


class EpochShuffle(Sampler[int]):
    """A random order of ``range(n)`` per epoch, drawn from ``(seed, epoch)`` alone.

    Args:
        n: How many examples.
        seed: The seed, in [0, 2**32).
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the order of ``epoch`` next (Lightning calls this at each epoch start)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        # one 32-bit seed mixed from both (torch's CPU generator keeps 32 bits of a seed)
        mixed = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
        generator = torch.Generator().manual_seed(mixed)
        return iter(torch.randperm(self.n, generator=generator).tolist())

    def __len__(self) -> int:
        return self.n


def _check_args(
    batch_size: object, val_fraction: object, seed: object, num_workers: object
) -> list[str]:
    """Return one message per bad ``DigitsDataModule`` argument (empty when all are valid)."""
    errors: list[str] = []
    check_int("batch_size", batch_size, errors, 1)
    if (
        isinstance(val_fraction, bool)
        or not isinstance(val_fraction, (int, float))
        or not 0 < val_fraction < 1  # NaN fails this too
    ):
        errors.append(f"`val_fraction` must be in (0, 1), got {val_fraction!r}")
    else:
        # The same rounding as scikit-learn's `train_test_split(test_size=val_fraction)`.
        n_val = math.ceil(val_fraction * DIGITS_NUM_SAMPLES)
        n_train = DIGITS_NUM_SAMPLES - n_val
        if min(n_val, n_train) < DIGITS_NUM_CLASSES:
            errors.append(
                f"`val_fraction` must leave at least {DIGITS_NUM_CLASSES} images (one per class)"
                f" on each side of the split, got {val_fraction!r}: {n_train} train and {n_val}"
                f" val of {DIGITS_NUM_SAMPLES}"
            )
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < _SEED_LIMIT:
        errors.append(f"`seed` must be an int in [0, 2**32), got {seed!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        errors.append(f"`num_workers` must be an int >= 0, got {num_workers!r}")
    return errors
