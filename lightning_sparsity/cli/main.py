"""The ``lightning-sparsity`` command.

* ``lightning-sparsity count TARGET --input-shape 1,3,224,224 [--checkpoint CKPT] [--json]``
  profiles a model: TARGET is ``package.module:factory`` (a callable returning an
  ``nn.Module``, or a LightningModule class when ``--checkpoint`` is given).
* ``lightning-sparsity demo`` prunes a small CNN on the embedded digits data with
  :class:`~lightning_sparsity.SparsityCallback` and prints where the logs are.
* ``lightning-sparsity fit --config configs/digits_budget.yaml`` (also ``validate``,
  ``test``, ``predict``): LightningCLI, every object built from the YAML config.
* ``lightning-sparsity sweep --config CFG --budgets 50%,25% --seeds 0,1 --monitor val_acc``:
  one fit per budget and seed (``--scores magnitude,random``: and per pruning criterion),
  then the frontier files (:mod:`lightning_sparsity.sweeps`);
  ``--plan`` (``--dry-run``) lists the runs, their configs' differences and what is finished.
* ``lightning-sparsity report LOGDIR``: a sweep's frontier files, or a run's curves and report,
  written again from the files in LOGDIR (:mod:`lightning_sparsity.cli.render`).
* ``lightning-sparsity export TARGET --input-shape 1,3,224,224 --to model.onnx``: the
  compacted model (:func:`lightning_sparsity.compact`) as ONNX (the ``onnx`` extra) or ``.pt``.
* ``lightning-sparsity speed TARGET --input-shape 64,4096 [--repeats 20] [--device cuda
  --dtype float16] [--checkpoint CKPT] [--compact]``: dense vs sparse-kernel forward times
  beside the FLOP ratios (CSR on CPU, 2:4 on CUDA; :mod:`lightning_sparsity.speed`); with
  ``--compact`` the compacted model's too, in eager torch and onnxruntime.

The working directory is on the import path, as with ``python -m`` (a TARGET or a config's
``class_path`` in the user's own folder); ``--version`` prints the version.

User errors (a bad option or config value, an unreadable or unfitting checkpoint) are one line
``lightning-sparsity: error: ...`` on stderr and exit status 2. Errors raised while training
keep their traceback; so do config errors when ``JSONARGPARSE_DEBUG=true``.

Here: the parser and the entry point; :mod:`.commands` runs each subcommand, :mod:`.targets`
builds TARGET's model, :mod:`.render` is ``report``; the LightningCLI of ``fit`` is
:mod:`lightning_sparsity.lightning_cli`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from lightning_sparsity.cli import commands
from lightning_sparsity.cli.targets import CliError

__all__ = ["LIGHTNING_SUBCOMMANDS", "main", "parser"]

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")


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


def _list(kind: type) -> Any:
    def parse(text: str) -> list[Any]:
        try:
            return [kind(part.strip()) for part in text.split(",") if part.strip()]
        except ValueError as err:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a comma-separated list: {err}"
            ) from err

    return parse


def _version() -> str:
    """The installed distribution's version (``lightning_sparsity.__version__``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lightning-sparsity")
    except PackageNotFoundError:  # a source tree that was never installed
        return "(not installed)"


def _working_directory_importable() -> None:
    """Put the working directory first on the import path, as ``python -m`` does.

    So ``count mymodels:mlp`` and a config's ``class_path: mymodels.Net`` find a user's own
    module from the console script too (its ``sys.path[0]`` is the script's folder).
    """
    here = os.getcwd()
    if "" not in sys.path and here not in sys.path:
        sys.path.insert(0, here)


def parser() -> argparse.ArgumentParser:
    """The argument parser."""
    top = argparse.ArgumentParser(
        prog="lightning-sparsity",
        description="Exact sparse FLOPs and nonzero parameters for pruning (2 FLOPs = 1 MAC).",
        epilog="fit / validate / test / predict --config FILE: LightningCLI (see configs/)",
    )
    top.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = top.add_subparsers(dest="command", required=True)
    c = sub.add_parser("count", help="per-layer table of a model's FLOPs and nonzero parameters")
    c.add_argument("target", help="package.module:factory, or a LightningModule class")
    c.add_argument("--input-shape", type=_shape, required=True, help="e.g. 1,3,224,224")
    c.add_argument("--checkpoint", help="a Lightning checkpoint for the LightningModule TARGET")
    c.add_argument("--json", action="store_true", help="print JSON instead of a table")
    c.add_argument("--per-batch", action="store_true", help="FLOPs per batch, not per example")
    c.set_defaults(func=commands.count)
    d = sub.add_parser("demo", help="prune a small CNN on the embedded digits data")
    d.add_argument("--output", default="sparsity_runs", help="log directory (sparsity_runs)")
    d.add_argument("--epochs", type=int, default=12, help="training epochs (12)")
    d.add_argument(
        "--budget",
        default=None,
        help="sparse FLOPs per example to reach ('20%%' of dense, '250K'); 'none': a schedule",
    )
    d.add_argument(
        "--final-sparsity", type=float, default=0.8, help="with --budget none: cubic target"
    )
    d.add_argument("--pattern", help="prune N:M (e.g. 2:4) by a cubic schedule instead of a budget")
    d.add_argument(
        "--limit-batches", type=int, default=None, help="batches per epoch (for a quick check)"
    )
    d.set_defaults(func=commands.demo)
    w = sub.add_parser(
        "sweep",
        help="one fit per budget and seed of a config, then the accuracy-FLOPs frontier",
        epilog="other --options (e.g. --trainer.max_epochs=3) go to every run's LightningCLI",
    )
    w.add_argument("--config", required=True, help="a LightningCLI YAML with a SparsityCallback")
    w.add_argument("--budgets", type=_list(str), default=[], help="e.g. 50%%,25%%,10%%")
    w.add_argument(
        "--sparsities", type=_list(float), default=[], help="instead: final sparsities, 0.5,0.8"
    )
    w.add_argument("--seeds", type=_list(int), default=[0], help="e.g. 0,1,2 (0)")
    w.add_argument(
        "--scores",
        type=_list(str),
        default=None,
        help="pruning criteria, one run each: e.g. magnitude,random,taylor (the config's)",
    )
    w.add_argument("--monitor", help="the metric the frontier reports, e.g. val_acc")
    w.add_argument("--mode", choices=("max", "min"), default="max", help="better is higher/lower")
    w.add_argument("--no-baseline", action="store_true", help="skip the dense runs")
    w.add_argument("--output", default="sparsity_sweeps", help="directory (sparsity_sweeps)")
    w.add_argument("--backend", choices=("inprocess", "ray"), default="inprocess")
    w.add_argument("--address", help="with --backend ray: the cluster (ray.init(address=...))")
    w.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    w.add_argument(
        "--plan",
        "--dry-run",
        dest="plan",
        action="store_true",
        help="list the runs, how each config differs and what is finished; run and write nothing",
    )
    w.set_defaults(func=commands.run_sweep)
    r = sub.add_parser(
        "report",
        help="write a sweep's frontier, or a run's curves and report, again from its files",
    )
    r.add_argument(
        "logdir", help="a sweep's --output (sweep.json) or a run's log dir (sparsity_history.json)"
    )
    r.set_defaults(func=commands.run_report)
    e = sub.add_parser(
        "export", help="write the compacted model (dead rows and channels removed) as .onnx or .pt"
    )
    e.add_argument("target", help="package.module:factory, or a LightningModule class")
    e.add_argument("--input-shape", type=_shape, required=True, help="e.g. 1,3,224,224")
    e.add_argument("--checkpoint", help="a Lightning checkpoint for the LightningModule TARGET")
    e.add_argument("--to", required=True, help="model.onnx (needs the onnx extra) or model.pt")
    e.set_defaults(func=commands.export)
    s = sub.add_parser(
        "speed", help="time the forward with dense vs sparse kernels (CSR on CPU, 2:4 on CUDA)"
    )
    s.add_argument("target", help="package.module:factory, or a LightningModule class")
    s.add_argument("--input-shape", type=_shape, required=True, help="e.g. 64,4096")
    s.add_argument("--checkpoint", help="a Lightning checkpoint for the LightningModule TARGET")
    s.add_argument(
        "--compact",
        action="store_true",
        help="also time the compacted model (eager torch; onnxruntime with the onnx extra)",
    )
    s.add_argument("--repeats", type=int, default=20, help="timed runs per median (20)")
    s.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    s.add_argument(
        "--dtype",
        choices=("float32", "float16", "bfloat16"),
        help="cast the model first (the 2:4 kernels take float16/bfloat16)",
    )
    s.set_defaults(func=commands.run_speed)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lightning-sparsity``."""
    args = list(sys.argv[1:] if argv is None else argv)
    _working_directory_importable()
    try:
        if args and args[0] in LIGHTNING_SUBCOMMANDS:
            return commands.lightning_cli(None if argv is None else args)
        if args and args[0] == "sweep":  # the rest are LightningCLI overrides
            parsed, rest = parser().parse_known_args(args)
            parsed.overrides = rest
        else:
            parsed = parser().parse_args(args)
        return int(parsed.func(parsed))
    except CliError as err:
        print(f"lightning-sparsity: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
