"""The ``lightning-sparsity`` command.

* ``lightning-sparsity count TARGET --input-shape 1,3,224,224 [--checkpoint CKPT] [--json]``
  profiles a model: TARGET is ``package.module:factory`` (a callable returning an
  ``nn.Module``, or a LightningModule class when ``--checkpoint`` is given).
* ``lightning-sparsity demo`` prunes a small CNN on the embedded digits data with
  :class:`~lightning_sparsity.SparsityCallback` and prints where the logs are.
* ``lightning-sparsity fit --config configs/digits_budget.yaml`` (also ``validate``,
  ``test``, ``predict``): LightningCLI, every object built from the YAML config.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["main"]


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if not shape or any(n < 1 for n in shape):
        raise argparse.ArgumentTypeError(
            f"--input-shape must be positive ints separated by commas, e.g. 1,3,224,224;"
            f" got {text!r}"
        )
    return shape


def load_target(target: str, checkpoint: str | None = None) -> nn.Module:
    """Import ``package.module:attr`` and build the model from it.

    Raises:
        CliError: if the target cannot be imported or does not give an ``nn.Module``.
    """
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise CliError(f"TARGET must look like package.module:factory, got {target!r}")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise CliError(f"cannot import {target!r}: {err}") from err
    if checkpoint is not None:
        if not hasattr(obj, "load_from_checkpoint"):
            raise CliError(f"--checkpoint needs a LightningModule class, {target!r} is not one")
        if not Path(checkpoint).is_file():
            raise CliError(f"checkpoint {checkpoint!r} does not exist")
        model = obj.load_from_checkpoint(checkpoint, map_location="cpu")
    elif callable(obj) and not isinstance(obj, nn.Module):
        try:
            model = obj()
        except Exception as err:
            raise CliError(f"calling {target} failed: {type(err).__name__}: {err}") from err
    else:
        model = obj
    if not isinstance(model, nn.Module):
        raise CliError(f"{target!r} gave a {type(model).__name__}, not a torch.nn.Module")
    return model


def count(args: argparse.Namespace) -> int:
    """The ``count`` subcommand."""
    import lightning_sparsity as ls

    model = load_target(args.target, args.checkpoint)
    x = torch.zeros(args.input_shape)
    try:
        report = ls.measure(model, x, per="batch" if args.per_batch else "example")
    except ls.MeasureError as err:
        raise CliError(str(err)) from err
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.to_markdown())
    return 0


def demo(args: argparse.Namespace) -> int:
    """The ``demo`` subcommand."""
    from lightning_sparsity.demo.run import demo_callback, run_demo

    budget = None if args.budget.lower() == "none" else args.budget
    try:  # the options, checked before anything runs
        demo_callback(epochs=args.epochs, budget=budget, final_sparsity=args.final_sparsity)
    except ValueError as err:
        raise CliError(str(err)) from err
    run_demo(
        output=Path(args.output),
        epochs=args.epochs,
        budget=budget,
        final_sparsity=args.final_sparsity,
        limit_batches=args.limit_batches,
    )
    return 0


def parser() -> argparse.ArgumentParser:
    """The argument parser."""
    top = argparse.ArgumentParser(
        prog="lightning-sparsity",
        description="Exact sparse FLOPs and nonzero parameters for pruning (2 FLOPs = 1 MAC).",
        epilog="fit / validate / test / predict --config FILE: LightningCLI (see configs/)",
    )
    sub = top.add_subparsers(dest="command", required=True)
    c = sub.add_parser("count", help="per-layer table of a model's FLOPs and nonzero parameters")
    c.add_argument("target", help="package.module:factory, or a LightningModule class")
    c.add_argument("--input-shape", type=_shape, required=True, help="e.g. 1,3,224,224")
    c.add_argument("--checkpoint", help="a Lightning checkpoint for the LightningModule TARGET")
    c.add_argument("--json", action="store_true", help="print JSON instead of a table")
    c.add_argument("--per-batch", action="store_true", help="FLOPs per batch, not per example")
    c.set_defaults(func=count)
    d = sub.add_parser("demo", help="prune a small CNN on the embedded digits data")
    d.add_argument("--output", default="sparsity_runs", help="log directory (sparsity_runs)")
    d.add_argument("--epochs", type=int, default=12, help="training epochs (12)")
    d.add_argument(
        "--budget",
        default="20%",
        help="sparse FLOPs per example to reach ('20%%' of dense, '250K'); 'none': a schedule",
    )
    d.add_argument(
        "--final-sparsity", type=float, default=0.8, help="with --budget none: cubic target"
    )
    d.add_argument(
        "--limit-batches", type=int, default=None, help="batches per epoch (for a quick check)"
    )
    d.set_defaults(func=demo)
    return top


LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def lightning_cli(argv: Sequence[str]) -> int:
    """``fit`` / ``validate`` / ``test`` / ``predict``: LightningCLI, configured by YAML.

    Model, data and callbacks are given by ``class_path`` in the config (see ``configs/``).
    """
    from pytorch_lightning import LightningDataModule, LightningModule
    from pytorch_lightning.cli import LightningCLI

    LightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=list(argv),
        save_config_kwargs={"overwrite": True},
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lightning-sparsity``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHTNING_SUBCOMMANDS:
        return lightning_cli(argv)
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as err:
        print(f"lightning-sparsity: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
