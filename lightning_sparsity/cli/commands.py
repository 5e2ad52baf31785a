"""What each subcommand of ``lightning-sparsity`` does (the parser is :mod:`.main`).

User errors raise :class:`~lightning_sparsity.cli.targets.CliError`: one line, exit 2.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from lightning_sparsity._text import one_line
from lightning_sparsity.cli.targets import CliError, load_target
from lightning_sparsity.control.budget import BudgetError

__all__ = [
    "count",
    "demo",
    "export",
    "lightning_cli",
    "run_report",
    "run_speed",
    "run_sweep",
    "speed_command",
]


def _input(make: Callable[..., torch.Tensor], shape: Sequence[int], **kwargs: Any) -> torch.Tensor:
    """``make(shape, **kwargs)``, or a :class:`CliError` when it cannot be allocated."""
    try:
        return make(tuple(shape), **kwargs)
    except RuntimeError as err:  # out of memory, too many elements
        raise CliError(f"cannot make an input of shape {tuple(shape)}: {one_line(err)}") from err


def count(args: argparse.Namespace) -> int:
    """The ``count`` subcommand."""
    from lightning_sparsity.counting import MeasureError, measure

    model = load_target(args.target, args.checkpoint)
    # where the model is: a factory building on meta gets its dense counts (no values)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = _input(torch.zeros, args.input_shape, device=device)
    try:
        report = measure(model, x, per="batch" if args.per_batch else "example")
    except MeasureError as err:
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
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise CliError(f"--output {args.output!r} is a file, not a directory for the logs")
    try:  # the options, checked before anything runs
        demo_callback(**options)
    except ValueError as err:
        raise CliError(str(err)) from err
    try:  # a budget the model cannot have is found once the fit traces it
        run_demo(output=output, limit_batches=args.limit_batches, **options)
    except BudgetError as err:
        raise CliError(str(err)) from err
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    """The ``sweep`` subcommand: exit 1 if a run failed, 2 if the sweep cannot start.

    ``--plan`` (``--dry-run``) prints what the sweep would do and exits 0.
    """
    from lightning_sparsity.sweeps import SweepError, sweep, sweep_plan

    overrides = list(args.overrides)
    bad = [o for o in overrides if not o.startswith("--")]
    if bad:
        raise CliError(f"unrecognized arguments {bad}: LightningCLI overrides start with --")
    options: dict[str, Any] = {
        "sparsities": args.sparsities,
        "seeds": args.seeds,
        "scores": args.scores,
        "monitor": args.monitor,
        "mode": args.mode,
        "baseline": not args.no_baseline,
        "output": args.output,
        "overrides": overrides,
        "backend": args.backend,
        "address": args.address,
        "retry_failed": args.retry_failed,
    }
    try:
        if args.plan:
            print(sweep_plan(args.config, args.budgets, **options).to_text(), end="")
            return 0
        results = sweep(
            args.config, args.budgets, **options, echo=lambda line: print(line, flush=True)
        )
    except SweepError as err:
        raise CliError(str(err)) from err
    return 1 if any(r["status"] != "done" for r in results) else 0


def run_report(args: argparse.Namespace) -> int:
    """The ``report`` subcommand: render again, print where the files are."""
    from lightning_sparsity.cli.render import ReportError, render

    try:
        paths = render(args.logdir)
    except ReportError as err:
        raise CliError(str(err)) from err
    for path in paths:
        print(path)
    return 0


def speed_command(
    target: str,
    input_shape: tuple[int, ...],
    repeats: int,
    *,
    device: str = "cpu",
    dtype: str | None = None,
    checkpoint: str | None = None,
    compact: bool = False,
) -> int:
    """``lightning-sparsity speed TARGET --input-shape ...``: print the table, return 0.

    The model comes from TARGET as for ``count`` (``package.module:factory``, or a
    LightningModule class with ``checkpoint``), the input is ``torch.randn(input_shape)``
    (seed 0) in the model's dtype.

    Args:
        target: ``package.module:factory``, or a LightningModule class.
        input_shape: the input's shape, batch first.
        repeats: timed runs per median.
        device: where to time (``"cpu"``, ``"cuda"``).
        dtype: cast the model first (``"float16"``, ``"bfloat16"``: what the 2:4 kernels take).
        checkpoint: a Lightning checkpoint to load the LightningModule class ``target`` from.
        compact: also time the compacted model (eager torch, and onnxruntime where installed).

    Raises:
        CliError: if the target or checkpoint cannot be loaded or the target builds on the
            meta device, an option is bad, the forward fails, or (``compact``) the model
            cannot be compacted.
    """
    from lightning_sparsity.counting.trace import MeasureError
    from lightning_sparsity.speed import check_real, format_speed, speed

    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype is not None and dtype not in dtypes:
        raise CliError(f"--dtype must be one of {tuple(dtypes)}, got {dtype!r}")
    try:
        where = torch.device(device)
    except RuntimeError as err:
        raise CliError(f"--device {device!r}: {err}") from err
    if where.type not in ("cpu", "cuda"):  # the devices with sparse kernels here
        raise CliError(f"--device must be cpu or cuda (cuda:N), got {device!r}")
    if where.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {device!r}: CUDA is not available")
    if where.type == "cuda" and (where.index or 0) >= torch.cuda.device_count():
        raise CliError(
            f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA devices"
            f" (cuda:0 to cuda:{torch.cuda.device_count() - 1})"
        )
    model = load_target(target, checkpoint)
    try:  # before .to(), which cannot copy out of meta
        check_real(model)
    except ValueError as err:
        raise CliError(f"{target} builds its model on the meta device: {err}") from err
    model = model.to(device=where)
    if dtype is not None:
        model = model.to(dtype=dtypes[dtype])
    floating = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    generator = torch.Generator().manual_seed(0)
    x = _input(torch.randn, input_shape, generator=generator, dtype=floating or torch.float32)
    try:
        report = speed(model, x.to(where), repeats=repeats, compact=compact)
    except (MeasureError, ValueError) as err:
        raise CliError(str(err)) from err
    print(format_speed(report))
    return 0


def export(args: argparse.Namespace) -> int:
    """The ``export`` subcommand: compact the model, write it as ``.onnx`` or ``.pt``."""
    import warnings

    from lightning_sparsity.compact import compact
    from lightning_sparsity.counting import MeasureError, measure
    from lightning_sparsity.ort import export_onnx, missing

    to = Path(args.to)
    if to.suffix not in (".onnx", ".pt"):
        raise CliError(f"--to must name a .onnx or .pt file, got {args.to!r}")
    absent = missing("onnx") if to.suffix == ".onnx" else None  # torch.onnx writes through it
    if absent is not None:
        raise CliError(f"--to {args.to!r}: {absent}")
    model = load_target(args.target, args.checkpoint).eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = _input(torch.randn, args.input_shape, generator=torch.Generator().manual_seed(0))
    x = x.to(device)
    try:
        before = measure(model, x, per="batch").total
        with warnings.catch_warnings(record=True) as kept:
            warnings.simplefilter("always")
            small = compact(model, x)
    except (MeasureError, ValueError) as err:
        raise CliError(str(err)) from err
    after = measure(small, x, per="batch").total
    to.parent.mkdir(parents=True, exist_ok=True)
    if to.suffix == ".pt":
        torch.save(small, to)
    else:
        export_onnx(small, (x,), to)
    for w in kept:
        print(f"note: {w.message}")
    print(
        f"compacted: FLOPs {after.flops:,} of {before.flops:,} dense"
        f" ({after.flops / before.flops:.3f}; realizable {before.flops_realizable:,}),"
        f" parameters {after.params:,} of {before.params:,}; wrote {to}"
    )
    return 0


def run_speed(args: argparse.Namespace) -> int:
    """The ``speed`` subcommand."""
    return speed_command(
        args.target,
        args.input_shape,
        args.repeats,
        device=args.device,
        dtype=args.dtype,
        checkpoint=args.checkpoint,
        compact=args.compact,
    )


def lightning_cli(argv: Sequence[str] | None) -> int:
    """``fit`` / ``validate`` / ``test`` / ``predict``: LightningCLI, configured by YAML.

    Model, data and callbacks are given by ``class_path`` in the config (see ``configs/``).

    Args:
        argv: The arguments, subcommand first; ``None`` reads ``sys.argv`` (the console
            script: LightningCLI warns when given ``args`` beside a command line).

    Raises:
        CliError: On a config or option error, or an error building the configured objects.
    """
    from lightning_sparsity.lightning_cli import sparsity_cli

    sparsity_cli(
        argv,
        parser_kwargs={"prog": "lightning-sparsity"},
        save_config_kwargs={"overwrite": True},
    )
    return 0
