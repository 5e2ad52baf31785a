"""The ``lightning-sparsity`` command: ``lightning_sparsity.cli:main`` (see :mod:`.main`).

Also ``python -m lightning_sparsity.cli``.
"""

from lightning_sparsity.cli.main import main
from lightning_sparsity.cli.targets import CliError

__all__ = ["CliError", "main"]
