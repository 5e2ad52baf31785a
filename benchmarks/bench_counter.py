"""Benchmark the FLOP counter on ResNet-50 (batch 1, 224×224, CPU).

Times, as medians over ``--repeats`` runs after a warm-up, with the runs of the tools
compared in one table interleaved round-robin so that drift hits them alike:

* ``SparsityMeter(model, x)`` (the trace), a fresh meter each run, and
  ``SparsityMeter(model, x).measure()`` (the first count, what ``ls.measure`` costs), against
  ``torch.utils.flop_counter.FlopCounterMode`` under ``no_grad`` (goal ≤ 1×) and a bare
  forward under ``no_grad`` (goal ≤ 1.5×);
* the cached ``meter.measure()`` (realizable FLOPs on, the default) on the dense model and
  on the model pruned to 80 % zeros per conv/linear weight, against a bare sweep
  ``sum(p.count_nonzero() for p in params).item()`` (goal ≤ 1.5×);
* fvcore, ptflops and thop, where installed, against ``FlopCounterMode``.

``--busy N`` times everything beside N processes spinning on the CPU (DataLoader workers).

Then the counts: dense FLOPs of every tool (fvcore, ptflops and thop report MACs: shown
×2), before and after pruning, and ours: dense, sparse and their ratio, the sparse count
checked against an independent one from forward hooks. Usage::

    python benchmarks/bench_counter.py [--repeats N] [--busy N]
"""

from __future__ import annotations

import argparse
import copy
import functools
import logging
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from load import busy
from models import RESNET50_MACS, RESNET50_PARAMS, resnet50
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

import lightning_sparsity as ls

SPARSITY = 0.8
INPUT_SHAPE = (1, 3, 224, 224)

Counter = Callable[[nn.Module, Tensor], float]  # a peer: model, input -> MACs


# ----------------------------------------------------------------------------- peers


def _fvcore() -> Counter | None:
    try:
        from fvcore.nn import FlopCountAnalysis
    except ImportError:
        return None
    logging.getLogger("fvcore").setLevel(logging.ERROR)  # "unsupported operator" notes

    def count(model: nn.Module, x: Tensor) -> float:
        return float(FlopCountAnalysis(model, x).total())

    return count


def _ptflops() -> Counter | None:
    try:
        from ptflops import get_model_complexity_info
    except ImportError:
        return None

    def count(model: nn.Module, x: Tensor) -> float:
        macs, _ = get_model_complexity_info(
            model, tuple(x.shape[1:]), as_strings=False, print_per_layer_stat=False
        )
        return float(macs)

    return count


def _thop() -> Counter | None:
    try:
        from thop import profile
    except ImportError:
        return None

    def count(model: nn.Module, x: Tensor) -> float:
        macs, _ = profile(model, inputs=(x,), verbose=False)
        return float(macs)

    return count


def load_peers() -> dict[str, Counter | None]:
    """The optional peer counters by name; ``None`` where the package is not installed."""
    with warnings.catch_warnings():  # thop imports distutils, fvcore scripts a function
        warnings.simplefilter("ignore", DeprecationWarning)
        return {"fvcore": _fvcore(), "ptflops": _ptflops(), "thop": _thop()}


# ----------------------------------------------------------------------------- helpers


def flop_counter(model: nn.Module, x: Tensor) -> int:
    """Dense FLOPs by ``torch.utils.flop_counter`` (the baseline)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def forward(model: nn.Module, x: Tensor) -> None:
    """A bare forward under ``no_grad``: what any trace must at least run."""
    with torch.no_grad():
        model(x)


def sweep(model: nn.Module) -> int:
    """The bare nonzero sweep: what any per-epoch recount must at least do."""
    return int(sum(p.count_nonzero() for p in model.parameters()).item())  # type: ignore[union-attr]


def time_group(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int, inner: int = 1
) -> dict[str, float]:
    """Median seconds per call of each function, runs interleaved round-robin."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for run in range(warmup + repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            elapsed = (time.perf_counter() - start) / inner
            if run >= warmup:
                samples[name].append(elapsed)
    return {name: statistics.median(values) for name, values in samples.items()}


@torch.no_grad()
def prune_smallest(model: nn.Module, sparsity: float) -> None:
    """Zero the ``sparsity`` fraction of smallest-magnitude entries of each conv/linear weight."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            flat = module.weight.view(-1)
            k = round(sparsity * flat.numel())
            flat[flat.abs().topk(k, largest=False).indices] = 0


@torch.no_grad()
def hooked_sparse_flops(model: nn.Module, x: Tensor) -> int:
    """Sparse FLOPs counted independently: 2 × output positions × nnz(weight) per layer."""
    total = 0

    def hook(module: nn.Module, _: Any, out: Tensor) -> None:
        nonlocal total
        positions = out.numel() // out.shape[1]  # N × spatial (Linear: N)
        total += 2 * positions * int(module.weight.count_nonzero())  # type: ignore[operator]

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return total


def row(what: str, seconds: float, base: float, vs: str, goal: float | None = None) -> str:
    """One aligned timing line: median ms, ratio to the baseline, goal."""
    ratio = seconds / base
    verdict = ""
    if goal is not None:
        verdict = f"goal ≤ {goal:g}×: {'met' if ratio <= goal else 'MISSED'}"
    return f"  {what:<40}{seconds * 1e3:>10.2f} ms{ratio:>8.2f}×  vs {vs:<16}{verdict}".rstrip()


def count_line(what: str, dense: float | None, pruned: float | None, note: str = "") -> str:
    """One aligned count line (FLOPs, 2 per MAC)."""

    def fmt(v: float | None) -> str:
        return "—" if v is None else f"{v:,.0f}"

    return f"  {what:<26}{fmt(dense):>18}{fmt(pruned):>18}  {note}".rstrip()


# ----------------------------------------------------------------------------- main


def main() -> None:
    """Run the benchmark and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    parser.add_argument("--busy", type=int, default=0, help="spinning processes while timing")
    args = parser.parse_args()
    with busy(args.busy):
        run(args.repeats, args.warmup, args.busy)


def run(repeats: int, warmup: int, spinners: int) -> None:
    """Time and count, beside ``spinners`` busy processes."""

    torch.manual_seed(0)
    model = resnet50().eval()
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == RESNET50_PARAMS, f"ResNet-50 has {n_params:,} parameters"
    x = torch.randn(INPUT_SHAPE)
    peers = load_peers()

    print(
        f"machine: {os.cpu_count()} CPUs ({platform.machine()}), torch {torch.__version__},"
        f" {torch.get_num_threads()} intra-op threads, Python {platform.python_version()},"
        f" load average {os.getloadavg()[0]:.2f} (other work on these CPUs skews times)"
        + (f", {spinners} busy processes while timing" if spinners else ", quiet")
    )
    source = "torchvision" if type(model).__module__.startswith("torchvision") else "fallback"
    print(
        f"model: ResNet-50 ({source}), {n_params:,} params, input {list(INPUT_SHAPE)};"
        f" median of {repeats} runs after {warmup} warm-up"
    )
    for name, peer in peers.items():
        if peer is None:
            print(f"note: {name} is not installed, skipped (pip install {name})")

    # --- dense: the trace against FlopCounterMode, and the peers
    unpruned = ls.measure(model, x).total
    dense = unpruned.flops
    expected = 2 * RESNET50_MACS
    verdict = "matches" if dense == expected else f"DOES NOT MATCH (off by {dense - expected:+,})"
    print(
        f"dense FLOPs: {dense:,} vs 2 × {RESNET50_MACS:,} MACs (torchvision _ops 4.09 G): {verdict}"
    )

    copies = {name: copy.deepcopy(model) for name, peer in peers.items() if peer is not None}
    fns: dict[str, Callable[[], Any]] = {
        "FlopCounterMode": lambda: flop_counter(model, x),
        "forward": lambda: forward(model, x),
        "SparsityMeter(model, x)": lambda: ls.SparsityMeter(model, x),
        "first count": lambda: ls.SparsityMeter(model, x).measure(),
    }
    for name, peer in peers.items():
        if peer is not None:
            fns[name] = functools.partial(peer, copies[name], x)
    times = time_group(fns, repeats, warmup)
    base = times["FlopCounterMode"]

    print(f"\n  {'time per call':<40}{'median':>13}{'ratio':>9}")
    trace_s, first_s = times["SparsityMeter(model, x)"], times["first count"]
    print(row("FlopCounterMode (no_grad)", base, base, "itself"))
    print(row("bare forward (no_grad)", times["forward"], base, "FlopCounterMode"))
    print(row("SparsityMeter(model, x) (trace)", trace_s, base, "FlopCounterMode", 1))
    print(row("SparsityMeter(model, x) (trace)", trace_s, times["forward"], "bare forward", 1.5))
    print(row("  .measure() (first count)", first_s, base, "FlopCounterMode", 1))
    print(row("  .measure() (first count)", first_s, times["forward"], "bare forward", 1.5))
    for name in copies:
        print(row(name, times[name], base, "FlopCounterMode"))

    # --- the cached recount against a bare sweep, dense and pruned
    meter = ls.SparsityMeter(model, x)
    recounts = {"sweep": lambda: sweep(model), "measure": meter.measure}
    for state in ("dense", "pruned"):
        if state == "pruned":
            prune_smallest(model, SPARSITY)
        cheap = time_group(recounts, repeats, warmup, inner=5)
        print(
            row(
                f"meter.measure() (cached, {state})",
                cheap["measure"],
                cheap["sweep"],
                "bare sweep",
                1.5,
            )
        )
        print(
            row(f"bare nonzero sweep + .item() ({state})", cheap["sweep"], cheap["sweep"], "itself")
        )
    assert meter.traces == 1, "measure() re-traced an unchanged model"

    # --- counts, dense and after pruning
    report = meter.measure()
    total = report.total
    retraced = ls.measure(model, x).total
    hooked = hooked_sparse_flops(model, x)
    pruned_copies = {name: copy.deepcopy(model) for name in copies}
    print(f"\n  {'FLOPs (= 2 × MACs)':<26}{'dense model':>18}{'pruned model':>18}")
    print(count_line("ours: dense", dense, total.flops))
    print(
        count_line(
            "ours: sparse",
            unpruned.flops_sparse,
            total.flops_sparse,
            f"pruned sparse/dense {total.flops_ratio:.4f}",
        )
    )
    print(count_line("FlopCounterMode", flop_counter(model, x), None, "dense only"))
    for name, peer in peers.items():
        if peer is None:
            print(count_line(name, None, None, "not installed"))
            continue
        peer_dense, peer_pruned = 2 * peer(copies[name], x), 2 * peer(pruned_copies[name], x)
        print(count_line(f"{name} (MACs × 2)", peer_dense, peer_pruned, "counts zero weights"))
    print(
        f"\npruned: {total.params_nonzero:,} of {total.params:,} params nonzero"
        f" ({total.sparsity:.2%} zeros overall, {SPARSITY:.0%} of each conv/linear weight)"
    )
    same = total == retraced and total.flops_sparse == hooked
    print(
        f"sparse check: cached {total.flops_sparse:,}, re-traced {retraced.flops_sparse:,},"
        f" forward hooks {hooked:,}: {'agree' if same else 'DISAGREE'}"
    )


if __name__ == "__main__":
    main()
