"""Benchmark the training-FLOPs count of one step on a CNN and a transformer (CPU).

Per model, medians over ``--repeats`` runs, the tools interleaved round-robin so that
drift hits them alike, each as a ratio to ``FlopCounterMode`` run around one real forward
+ ``backward()`` in training mode (what a dense count of a step costs with torch's own
counter):

* ``first``: ``SparsityMeter(model, x).measure_training()``, a fresh meter each run: the
  forward trace, the training trace (forward + loss + backward under the dispatch mode)
  and the first count;
* ``recount``: the cached ``meter.measure_training()`` on the model pruned to 80 % zeros
  per conv/linear weight (one sweep of nonzero counts, realizable FLOPs on);
* ``bare step``: the forward + ``backward()`` alone, for scale.

It then checks the dense count against ``FlopCounterMode``'s (the CNN: equal; the
transformer: FlopCounterMode has no formula for the CPU flash attention, so its own
attention formulas are added) and prints the step's columns. Quiet runs only (nothing else
busy on the CPU). Usage::

    python benchmarks/bench_train_flops.py [--repeats N]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from models import resnet50
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

import lightning_sparsity as ls

SPARSITY = 0.8


def transformer() -> tuple[nn.Module, Tensor, int]:
    """Four encoder layers (d=256, 8 heads, MLP 1024) on 2 x 128 tokens; extra FLOPs."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(256, 8, 1024, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
    x = torch.randn(2, 128, 256)
    q = (2, 8, 128, 32)  # batch, heads, tokens, head dim: FlopCounterMode's formulas
    attention = 4 * (sdpa_flop_count(q, q, q) + sdpa_backward_flop_count(q, q, q, q))
    return model, x, attention


def cnn() -> tuple[nn.Module, Tensor, int]:
    torch.manual_seed(0)
    return resnet50(), torch.randn(1, 3, 224, 224), 0


def flop_counter_step(model: nn.Module, x: Tensor) -> int:
    model.train()
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def prune_(model: nn.Module) -> None:
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                if name.endswith("weight") and p.dim() > 1:
                    p.mul_((torch.rand_like(p) >= SPARSITY).to(p.dtype))


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench(name: str, make: Callable[[], tuple[nn.Module, Tensor, int]], repeats: int) -> None:
    model, x, uncounted = make()
    flop_counter_step(model, x)  # warm-up
    expected = flop_counter_step(model, x) + uncounted
    meter = ls.SparsityMeter(model, x, per="batch")
    first = meter.measure_training()
    assert first.total.flops == expected, (first.total.flops, expected)
    prune_(model)
    meter.measure_training()  # the first count after pruning probes every weight

    def bare_step() -> None:
        model(x).sum().backward()
        model.zero_grad(set_to_none=True)

    tools: dict[str, Callable[[], Any]] = {
        "FlopCounterMode": lambda: flop_counter_step(model, x),
        "bare step": bare_step,
        "first": lambda: ls.SparsityMeter(model, x, per="batch").measure_training(),
        "recount": meter.measure_training,
    }
    times: dict[str, list[float]] = {tool: [] for tool in tools}
    for _ in range(repeats):
        for tool, fn in tools.items():
            times[tool].append(timed(fn))
    base = statistics.median(times["FlopCounterMode"])
    cost = meter.measure_training()
    print(
        f"\n{name}: one step on {tuple(x.shape)}: dense {first.total.flops:.4g} FLOPs,"
        f" FlopCounterMode's {expected - uncounted:.4g} + {uncounted:.4g} (attention,"
        " which it has no formula for on CPU, by its own formulas)"
    )
    print("| tool | median s | x FlopCounterMode |")
    print("| --- | ---: | ---: |")
    for tool, values in times.items():
        median = statistics.median(values)
        print(f"| {tool} | {median:.3f} | {median / base:.2f} |")
    print(f"\nat {SPARSITY:.0%} zeros per weight (per batch):")
    print("| part | dense | sparse | realizable |")
    print("| --- | ---: | ---: | ---: |")
    for part in ("forward", "grad_inputs", "grad_weights", "total"):
        step = getattr(cost, part)
        print(
            f"| {part} | {step.flops:.4g} | {step.flops_sparse:.4g} | {step.flops_realizable:.4g} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()},"
          f" {torch.get_num_threads()} threads, medians of {args.repeats}")  # fmt: skip
    bench("ResNet-50", cnn, args.repeats)
    bench("Transformer encoder (4 layers)", transformer, args.repeats)


if __name__ == "__main__":
    main()
