"""Where does a CSR weight beat the dense kernel on this CPU? ls.speed on a large MLP.

The MLP is three ``Linear(W, W)`` layers with ReLUs between (W = 4096 by default), each
pruned by magnitude to the same sparsity (``MagnitudePruner(allocation="uniform")``). For
every sparsity and batch size, :func:`lightning_sparsity.speed.speed` times each layer alone
with its dense kernel and with a CSR weight (``torch.sparse.addmm``, MKL), then the whole
forward with the winners; the table gives the medians, the measured speed-ups beside the
FLOP ratio, and how many layers kept CSR.

``--busy N`` starts N processes that spin a core each (``while True: pass``) for the run,
the machine other jobs share; they are stopped at the end.

    python benchmarks/bench_speed.py [--sparsities 0.5,0.8,0.9,0.95] [--batches 64]
        [--width 4096] [--repeats 10] [--warmup 3] [--busy 0] [--threads N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from load import busy
from torch import nn

from lightning_sparsity import MagnitudePruner
from lightning_sparsity.speed import SpeedReport, speed


def mlp(width: int, sparsity: float) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, width),
    )
    if sparsity > 0:
        MagnitudePruner(allocation="uniform").apply(model, sparsity)
    return model.eval()


def floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def row(sparsity: float, batch: int, report: SpeedReport) -> dict[str, object]:
    layers = report.layers
    return {
        "sparsity": sparsity,
        "batch": batch,
        "layer_dense_ms": [r.dense_ms for r in layers],
        "layer_csr_ms": [r.sparse_ms for r in layers],
        "layer_speedup": [r.speedup for r in layers],
        "csr_layers": len(report.accelerated),
        "dense_ms": report.dense_ms,
        "sparse_ms": report.sparse_ms,
        "speedup": report.speedup,
        "flops_ratio": report.flops_ratio,
    }


def fmt(values: object) -> str:
    if not isinstance(values, list):
        return "n/a"
    return " / ".join("n/a" if v is None else f"{v:.3g}" for v in values)


def table(rows: list[dict[str, object]]) -> str:
    head = [
        "sparsity",
        "batch",
        "FLOPs sparse/dense",
        "per layer: dense ms",
        "per layer: CSR ms",
        "per layer: measured dense/CSR",
        "layers on CSR",
        "forward dense ms",
        "forward chosen ms",
        "forward speed-up",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            f"{r['sparsity']:.0%}",
            str(r["batch"]),
            f"{r['flops_ratio']:.3f}",
            fmt(r["layer_dense_ms"]),
            fmt(r["layer_csr_ms"]),
            fmt(r["layer_speedup"]),
            f"{r['csr_layers']}/3",
            f"{r['dense_ms']:.3g}",
            f"{r['sparse_ms']:.3g}",
            f"{r['speedup']:.2f}×",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sparsities", type=floats, default=[0.5, 0.8, 0.9, 0.95])
    parser.add_argument("--batches", type=ints, default=[64])
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--busy", type=int, default=0, help="processes spinning a core each")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--json", action="store_true", help="also print the rows as JSON")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows = []
    won_at: list[tuple[float, int, bool]] = []
    with busy(args.busy):
        load = os.getloadavg()[0]
        for batch in args.batches:
            x = torch.randn(batch, args.width, generator=torch.Generator().manual_seed(1))
            for sparsity in args.sparsities:
                report = speed(
                    mlp(args.width, sparsity), x, repeats=args.repeats, warmup=args.warmup
                )
                rows.append(row(sparsity, batch, report))
                won_at.append((sparsity, batch, bool(report.accelerated)))
                print(f"  {sparsity:.0%} batch {batch}: {report.summary}", file=sys.stderr)
    print(
        f"MLP 3 × Linear({args.width}, {args.width}), torch {torch.__version__},"
        f" {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, {args.busy} busy"
        f" processes, load average {load:.2f} at start; medians of {args.repeats} runs after"
        f" {args.warmup} warm-up, dense and CSR interleaved"
    )
    print(table(rows))
    for batch in args.batches:
        wins = [f"{s:.0%}" for s, b, won in won_at if b == batch and won]
        where = "at " + ", ".join(wins) + " sparsity" if wins else "at none of these sparsities"
        print(f"batch {batch}: CSR kept (won alone) in some layer {where}")
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
