"""The embedded default: scikit-learn's 8×8 digits and a small CNN, no download needed."""

from lightning_sparsity.demo.data import DigitsDataModule
from lightning_sparsity.demo.model import DigitsCNN

__all__ = ["DigitsCNN", "DigitsDataModule"]
