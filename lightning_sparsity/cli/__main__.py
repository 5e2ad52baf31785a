"""``python -m lightning_sparsity.cli``."""

from lightning_sparsity.cli.main import main

raise SystemExit(main())
