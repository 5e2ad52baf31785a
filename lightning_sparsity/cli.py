"""The ``lightning-sparsity`` command.

* ``lightning-sparsity count TARGET --input-shape 1,3,224,224 [--checkpoint CKPT] [--json]``
  profiles a model: TARGET is ``package.module:factory`` (a callable returning an
  ``nn.Module``, or a LightningModule class when ``--checkpoint`` is given).
* ``lightning-sparsity demo`` prunes a small CNN on the embedded digits data with
  :class:`~lightning_sparsity.SparsityCallback` and prints where the logs are.
* ``lightning-sparsity fit --config configs/digits_budget.yaml`` (also ``validate``,
  ``test``, ``predict``): LightningCLI, every object built from the YAML config.
* ``lightning-sparsity sweep --config CFG --budgets 50%,25% --seeds 0,1 --monitor val_acc``:
  one fit per budget and seed, then the frontier files (:mod:`lightning_sparsity.sweeps`).
* ``lightning-sparsity report LOGDIR``: a sweep's frontier files, or a run's curves and report,
  written again from the files in LOGDIR (:mod:`lightning_sparsity.report`).
* ``lightning-sparsity speed TARGET --input-shape 64,4096 [--repeats 20] [--device cuda
  --dtype float16]``: dense vs sparse-kernel forward times beside the FLOP ratios (CSR on CPU,
  2:4 on CUDA; :mod:`lightning_sparsity.speed`).

User errors (a bad option or config value, an unreadable or unfitting checkpoint) are one line
``lightning-sparsity: error: ...`` on stderr and exit status 2. Errors raised while training
keep their traceback; so do config errors when ``JSONARGPARSE_DEBUG=true``.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import re
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
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


def _one_line(text: str) -> str:
    """``text`` with its lines joined by spaces and runs of whitespace collapsed."""
    return " ".join(text.split())


def _debug() -> bool:
    """Whether to keep tracebacks of config errors: ``JSONARGPARSE_DEBUG=true``."""
    return os.environ.get("JSONARGPARSE_DEBUG", "").lower() == "true"


def _read_checkpoint(path: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: nothing in the file is executed.

    Raises:
        CliError: Saying why the file cannot be read: empty, truncated, damaged, not written
            by ``torch.save``, or holding objects the weights-only unpickler refuses.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        name = f"checkpoint {path!r}"
        text = str(err)
        with open(path, "rb") as f:
            head = f.read(4)
        if not head:
            raise CliError(f"{name} is empty") from err
        if zipfile.is_zipfile(path):
            refused = re.search(r"WeightsUnpickler error: ([^\n]*?\.)(?:\s|$)", text)
            if refused:
                raise CliError(
                    f"{name} holds objects that torch.load(weights_only=True) refuses:"
                    f" {refused.group(1)} Load it in Python only if you trust its source"
                ) from err
            raise CliError(f"{name} is damaged: {type(err).__name__}: {_one_line(text)}") from err
        if head == b"PK\x03\x04":  # a zip archive without its end: cut short
            raise CliError(
                f"{name} is truncated (a zip archive without its end: not fully written?)"
            ) from err
        raise CliError(
            f"{name} is not a readable checkpoint (not an archive written by torch.save)"
        ) from err


def _shape_text(shape: Any) -> str:
    return str(tuple(shape))


def _few(keys: Sequence[str], n: int = 3) -> str:
    more = f", ... ({len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _misfit(state: dict[str, Any], cls: Any, hparams: Any) -> str | None:
    """How a checkpoint's ``state_dict`` differs from ``cls`` built from ``hparams``.

    Returns ``None`` if the model cannot be built or no difference is found.
    """
    kwargs = dict(hparams) if isinstance(hparams, dict) else {}
    try:
        params = inspect.signature(cls).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            kwargs = {k: v for k, v in kwargs.items() if k in params}
        model = cls(**kwargs)
        expected = {k: v.shape for k, v in model.state_dict().items()}
        given = {k: getattr(v, "shape", None) for k, v in state.items()}
        shapes = [k for k in expected if k in given and given[k] != expected[k]]
        # torch's own key matching (module hooks included), once the misfits are set aside
        keys = model.load_state_dict(
            {k: v for k, v in state.items() if k not in shapes}, strict=False
        )
    except Exception:
        return None
    missing = [k for k in keys.missing_keys if k not in shapes]
    unexpected = list(keys.unexpected_keys)
    parts = []
    if shapes:
        k = shapes[0]
        more = f" (and {len(shapes) - 1} more shape mismatches)" if len(shapes) > 1 else ""
        parts.append(
            f"{k} has shape {_shape_text(given[k])} in the checkpoint,"
            f" {_shape_text(expected[k])} in the model{more}"
        )
    if missing:
        parts.append(f"{len(missing)} missing keys ({_few(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({_few(unexpected)})")
    return "; ".join(parts) or None


def _checkpoint_problem(path: str, cls: Any, target: str, err: Exception) -> str | None:
    """Say in one line why loading checkpoint ``path`` into ``cls`` raised ``err``.

    Returns ``None`` when the failure is not a problem of the file (then it is re-raised).

    Raises:
        CliError: If the file cannot be read at all (see :func:`_read_checkpoint`).
    """
    ckpt = _read_checkpoint(path)
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        keys = (
            f"its keys: {_few([str(k) for k in ckpt])}"
            if isinstance(ckpt, dict)
            else f"a {type(ckpt).__name__}"
        )
        return f"checkpoint {path!r} is not a Lightning checkpoint: no 'state_dict' ({keys})"
    if isinstance(err, RuntimeError) and "Error(s) in loading state_dict" in str(err):
        why = _misfit(state, cls, ckpt.get("hyper_parameters"))
        return f"checkpoint {path!r} does not fit {target}: {why or _one_line(str(err))}"
    if isinstance(err, (TypeError, ValueError)):
        return (
            f"cannot build {target} from checkpoint {path!r} (its hyper_parameters):"
            f" {type(err).__name__}: {_one_line(str(err))}"
        )
    return None


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
        try:
            model = obj.load_from_checkpoint(checkpoint, map_location="cpu")
        except Exception as err:
            problem = _checkpoint_problem(checkpoint, obj, target, err)
            if problem is None:
                raise
            raise CliError(problem) from err
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
    # where the model is: a factory building on meta gets its dense counts (no values)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.zeros(args.input_shape, device=device)
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

    if args.budget is None:  # 20% by default; a pattern prunes by a schedule
        args.budget = "none" if args.pattern is not None else "20%"
    budget = None if args.budget.lower() == "none" else args.budget
    options = {
        "epochs": args.epochs,
        "budget": budget,
        "final_sparsity": args.final_sparsity,
        "pattern": args.pattern,
    }
    if args.limit_batches is not None and args.limit_batches < 1:
        raise CliError(
            f"--limit-batches must be an int >= 1 (batches per epoch), got {args.limit_batches}"
        )
    try:  # the options, checked before anything runs
        demo_callback(**options)
    except ValueError as err:
        raise CliError(str(err)) from err
    run_demo(output=Path(args.output), limit_batches=args.limit_batches, **options)
    return 0


def _list(kind: type) -> Any:
    def parse(text: str) -> list[Any]:
        try:
            return [kind(part.strip()) for part in text.split(",") if part.strip()]
        except ValueError as err:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a comma-separated list: {err}"
            ) from err

    return parse


def run_sweep(args: argparse.Namespace) -> int:
    """The ``sweep`` subcommand: exit 1 if a run failed, 2 if the sweep cannot start."""
    from lightning_sparsity.sweeps import SweepError, sweep

    overrides = list(args.overrides)
    bad = [o for o in overrides if not o.startswith("--")]
    if bad:
        raise CliError(f"unrecognized arguments {bad}: LightningCLI overrides start with --")
    try:
        results = sweep(
            args.config,
            args.budgets,
            sparsities=args.sparsities,
            seeds=args.seeds,
            monitor=args.monitor,
            mode=args.mode,
            baseline=not args.no_baseline,
            output=args.output,
            overrides=overrides,
            backend=args.backend,
            address=args.address,
            retry_failed=args.retry_failed,
            echo=lambda line: print(line, flush=True),
        )
    except SweepError as err:
        raise CliError(str(err)) from err
    return 1 if any(r["status"] != "done" for r in results) else 0


def run_report(args: argparse.Namespace) -> int:
    """The ``report`` subcommand: render again, print where the files are."""
    from lightning_sparsity.report import ReportError, render

    try:
        paths = render(args.logdir)
    except ReportError as err:
        raise CliError(str(err)) from err
    for path in paths:
        print(path)
    return 0


def run_speed(args: argparse.Namespace) -> int:
    """The ``speed`` subcommand."""
    from lightning_sparsity.speed import speed_command

    return speed_command(
        args.target, args.input_shape, args.repeats, device=args.device, dtype=args.dtype
    )


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
    d.set_defaults(func=demo)
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
    w.add_argument("--monitor", help="the metric the frontier reports, e.g. val_acc")
    w.add_argument("--mode", choices=("max", "min"), default="max", help="better is higher/lower")
    w.add_argument("--no-baseline", action="store_true", help="skip the dense runs")
    w.add_argument("--output", default="sparsity_sweeps", help="directory (sparsity_sweeps)")
    w.add_argument("--backend", choices=("inprocess", "ray"), default="inprocess")
    w.add_argument("--address", help="with --backend ray: the cluster (ray.init(address=...))")
    w.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    w.set_defaults(func=run_sweep)
    r = sub.add_parser(
        "report",
        help="write a sweep's frontier, or a run's curves and report, again from its files",
    )
    r.add_argument(
        "logdir", help="a sweep's --output (sweep.json) or a run's log dir (sparsity_history.json)"
    )
    r.set_defaults(func=run_report)
    s = sub.add_parser(
        "speed", help="time the forward with dense vs sparse kernels (CSR on CPU, 2:4 on CUDA)"
    )
    s.add_argument("target", help="package.module:factory")
    s.add_argument("--input-shape", type=_shape, required=True, help="e.g. 64,4096")
    s.add_argument("--repeats", type=int, default=20, help="timed runs per median (20)")
    s.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    s.add_argument(
        "--dtype",
        choices=("float32", "float16", "bfloat16"),
        help="cast the model first (the 2:4 kernels take float16/bfloat16)",
    )
    s.set_defaults(func=run_speed)
    return top


LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")

_UNION = "Does not validate against any of the Union subtypes"
_PARSER_KEY = re.compile(r'Parser key "([^"]+)":\s*(.*)')
_CLASS_PATH = re.compile(r"Problem with given class_path '([^']+)':\s*(.*)")


@dataclass
class _Node:
    text: str
    children: list[_Node] = field(default_factory=list)


def _tree(message: str) -> list[_Node]:
    """The lines of a jsonargparse error as a tree, by indentation (``- `` bullets nest)."""
    root = _Node("")
    stack: list[tuple[int, _Node]] = [(-1, root)]
    for line in message.splitlines():
        text = line.lstrip(" ")
        if not text:
            continue
        indent = len(line) - len(text)
        if text.startswith("- "):
            text, indent = text[2:], indent + 2
        while stack[-1][0] >= indent:
            stack.pop()
        node = _Node(text)
        stack[-1][1].children.append(node)
        stack.append((indent, node))
    return root.children


def _type_names(text: str) -> str:
    """``[<class 'int'>, <class 'NoneType'>]`` as ``int or None``."""
    names = re.sub(r"<class '(?:\w+\.)*(\w+)'>", r"\1", text.strip("[]"))
    return " or ".join(n.strip() for n in names.replace("NoneType", "None").split(", "))


def _condense(nodes: list[_Node]) -> tuple[list[str], str]:
    """The key path and the innermost message of a jsonargparse error tree."""
    for node in nodes:
        match = _PARSER_KEY.match(node.text) or _CLASS_PATH.match(node.text)
        if match:
            path, message = ([], match.group(2)) if match.group(2) else _condense(node.children)
            return [match.group(1), *path], message
    if any(node.text == _UNION for node in nodes):
        by_head = {node.text.split(":", 1)[0]: node for node in nodes}
        errors = by_head["Errors"].children if "Errors" in by_head else []
        specific = [e for e in errors if _PARSER_KEY.match(e.text) or _CLASS_PATH.match(e.text)]
        if specific:
            return _condense(specific[:1])
        subtypes = by_head["Subtypes"].text.split(":", 1)[1] if "Subtypes" in by_head else ""
        given = by_head["Given value"].text.split(":", 1)[1] if "Given value" in by_head else ""
        return [], f"expected {_type_names(subtypes.strip())}, got {given.strip()!r}"
    lines: list[str] = []

    def flatten(ns: list[_Node]) -> None:
        for n in ns:
            if not n.text.startswith("Given value type:"):
                lines.append(n.text)
            flatten(n.children)

    flatten(nodes)
    return [], "; ".join(lines)


def _config_error(message: str) -> str:
    """One line for a (possibly deeply nested) jsonargparse error message.

    Keeps the innermost message and the path of keys and class paths leading to it, e.g.
    ``trainer.callbacks > lightning_sparsity.SparsityCallback > pruning > ... > allocation:
    Expected a typing.Literal[...]. Got value: globl``.
    """
    try:
        path, inner = _condense(_tree(message))
    except Exception:  # an unexpected layout: fall back to the whole message
        path, inner = [], ""
    text = " > ".join(path) + ": " + inner if path else inner or message
    return _one_line(re.sub(r"<class '(?:\w+\.)*(\w+)'>", r"\1", text))


def _root_cause(err: BaseException) -> BaseException:
    while err.__cause__ is not None:
        err = err.__cause__
    return err


def _cli_class() -> type:
    """LightningCLI whose parse and instantiation errors become :class:`CliError`."""
    from lightning_sparsity._lightning import submodule

    cli = submodule("cli")
    misconfiguration = submodule("utilities.exceptions").MisconfigurationException
    user_errors = (ValueError, TypeError, FileNotFoundError, misconfiguration)

    class SparsityCLI(cli.LightningCLI):  # type: ignore[name-defined]
        """Reports config errors as one line (needs ``exit_on_error=False`` parsers)."""

        def parse_arguments(self, parser: Any, args: Any) -> None:
            try:
                super().parse_arguments(parser, args)
            except argparse.ArgumentError as err:
                if _debug():
                    raise
                raise CliError(_config_error(str(err))) from err

        def _parse_ckpt_path(self) -> None:
            try:
                super()._parse_ckpt_path()  # reads the hyperparameters of --ckpt_path
            except argparse.ArgumentError as err:
                if _debug():
                    raise
                raise CliError(f"--ckpt_path hyperparameters: {_config_error(str(err))}") from err
            except Exception:
                subcommand = self.config.get("subcommand")
                path = self.config[subcommand].get("ckpt_path") if subcommand else None
                if path and Path(path).is_file():
                    _read_checkpoint(str(path))  # raises CliError if the file is the problem
                raise

        def instantiate_classes(self) -> None:
            try:
                super().instantiate_classes()
            except Exception as err:
                root = _root_cause(err)
                if not isinstance(root, user_errors) or _debug():
                    raise
                raise CliError(_one_line(str(root))) from err

    return SparsityCLI


def lightning_cli(argv: Sequence[str] | None) -> int:
    """``fit`` / ``validate`` / ``test`` / ``predict``: LightningCLI, configured by YAML.

    Model, data and callbacks are given by ``class_path`` in the config (see ``configs/``).

    Args:
        argv: The arguments, subcommand first; ``None`` reads ``sys.argv`` (the console
            script: LightningCLI warns when given ``args`` beside a command line).

    Raises:
        CliError: On a config or option error, or an error building the configured objects.
    """
    from lightning_sparsity._lightning import pl

    _cli_class()(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=None if argv is None else list(argv),
        parser_kwargs={"exit_on_error": False, "prog": "lightning-sparsity"},
        save_config_kwargs={"overwrite": True},
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lightning-sparsity``."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] in LIGHTNING_SUBCOMMANDS:
            return lightning_cli(None if argv is None else args)
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
