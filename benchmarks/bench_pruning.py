"""Global magnitude pruning of a ResNet-50 to 80%: MagnitudePruner vs torch.nn.utils.prune.

The peer is ``prune.global_unstructured(..., pruning_method=prune.L1Unstructured)``, the path
Lightning's ``ModelPruning(use_global_unstructured=True)`` takes. Both prune the same
conv + linear weights of a fresh copy of the model per repeat; the reported time is the median.

Memory: torch's CPU allocations are invisible to tracemalloc, so on CPU the script reads the
process's resident set from /proc (VmRSS before and after, VmHWM for the peak, reset through
/proc/self/clear_refs); the peak minus the RSS after the call is the transient (temporaries).
On CUDA it reads torch.cuda.max_memory_allocated the same way.

    python benchmarks/bench_pruning.py [--repeats 5] [--device cpu|cuda] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from models import RESNET50_PARAMS, resnet50
from torch import nn
from torch.nn.utils import prune

from lightning_sparsity.pruning import MagnitudePruner, kth_smallest_abs, threshold_for_count

SPARSITY = 0.8


def prune_ours(model: nn.Module) -> None:
    MagnitudePruner().apply(model, SPARSITY)


def prune_torch(model: nn.Module) -> None:
    params = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=SPARSITY)


def select_only(model: nn.Module) -> None:
    weights = conv_linear_weights(model)
    threshold_for_count(weights, round(SPARSITY * sum(w.numel() for w in weights)))


def conv_linear_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


METHODS = {"ours": prune_ours, "torch": prune_torch, "ours-threshold-only": select_only}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[nn.Module], None], base: nn.Module, repeats: int) -> list[float]:
    device = next(base.parameters()).device
    times = []
    for _ in range(repeats):
        model = copy.deepcopy(base)
        sync(device)
        start = time.perf_counter()
        fn(model)
        sync(device)
        times.append(time.perf_counter() - start)
        del model
    return times


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def memory(fn: Callable[[nn.Module], None], model: nn.Module) -> tuple[float, float]:
    """(peak above the start, retained after) in MiB, for one call."""
    device = next(model.parameters()).device
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn(model)
        sync(device)
        peak, after = torch.cuda.max_memory_allocated(device), torch.cuda.memory_allocated(device)
        return (peak - before) / 2**20, (after - before) / 2**20
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = _status_kib("VmRSS")
    fn(model)
    peak, after = _status_kib("VmHWM"), _status_kib("VmRSS")
    return (peak - before) / 1024, (after - before) / 1024


def memory_in_child(name: str) -> tuple[float, float]:
    """Measure on CPU in a fresh process, where malloc hands every large block back to the OS
    (fixed mmap threshold), so the resident set follows the live allocations."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(64 * 1024))
    out = subprocess.run(
        [sys.executable, __file__, "--memory-of", name],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    peak, kept = json.loads(out.strip().splitlines()[-1])
    return peak, kept


def masks_of(model: nn.Module) -> list[torch.Tensor]:
    return [b for n, b in model.named_buffers() if n.endswith("weight_mask")]


def zeros(model: nn.Module) -> int:
    return sum(int((b == 0).sum()) for n, b in model.named_buffers() if n.endswith("weight_mask"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--memory-of", choices=sorted(METHODS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    base = resnet50().to(device)
    assert sum(p.numel() for p in base.parameters()) == RESNET50_PARAMS
    if args.memory_of:  # child process of memory_in_child
        print(json.dumps(memory(METHODS[args.memory_of], base)))
        return
    weights = conv_linear_weights(base)
    n_weights = sum(w.numel() for w in weights)
    print(
        f"ResNet-50: {sum(p.numel() for p in base.parameters()):,} parameters,"
        f" {n_weights:,} conv+linear weights in {len(weights)} tensors; device {device},"
        f" torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
    )

    ours, peer = [], []
    for _ in range(args.repeats):  # interleaved, so drifting machine load hits both alike
        ours += timed(prune_ours, base, 1)
        peer += timed(prune_torch, base, 1)
    t_ours, t_peer = statistics.median(ours), statistics.median(peer)
    print(f"\nglobal magnitude pruning to {SPARSITY:.0%}, median of {args.repeats}:")
    print(f"  MagnitudePruner.apply           {t_ours * 1e3:9.1f} ms")
    print(f"  prune.global_unstructured (L1)  {t_peer * 1e3:9.1f} ms")
    print(f"  speed-up                        {t_peer / t_ours:9.1f} x")

    m_ours, m_peer = copy.deepcopy(base), copy.deepcopy(base)
    prune_ours(m_ours)
    prune_torch(m_peer)
    k = round(SPARSITY * n_weights)
    threshold = float(kth_smallest_abs(weights, k))
    differ, differ_at_ties = 0, 0
    for w, a, b in zip(weights, masks_of(m_ours), masks_of(m_peer), strict=True):
        diff = a != b
        differ += int(diff.sum())
        differ_at_ties += int((w.detach().abs()[diff] == threshold).sum())
    print(
        f"\nweights pruned: ours {zeros(m_ours):,}, torch {zeros(m_peer):,},"
        f" round({SPARSITY} * N) = {k:,}"
    )
    print(
        f"masks differ in {differ} entries, {differ_at_ties} of them tied at the threshold"
        f" |w| = {threshold!r} (topk breaks ties arbitrarily, ours by tensor then index)"
    )
    del m_ours, m_peer

    # the threshold alone: radix select vs torch.kthvalue on a concatenation
    sel, kth = [], []
    for _ in range(args.repeats):
        sync(device)
        start = time.perf_counter()
        cut = threshold_for_count(weights, k)
        sync(device)
        sel.append(time.perf_counter() - start)
        start = time.perf_counter()
        value = torch.kthvalue(torch.cat([w.detach().reshape(-1) for w in weights]).abs(), k)
        sync(device)
        kth.append(time.perf_counter() - start)
    assert cut.threshold == float(value.values)
    print(
        f"threshold only: radix select {statistics.median(sel) * 1e3:.1f} ms,"
        f" torch.kthvalue(cat(|w|)) {statistics.median(kth) * 1e3:.1f} ms (same value)"
    )

    what = (
        "torch.cuda.max_memory_allocated"
        if device.type == "cuda"
        else "RSS of a fresh process via /proc (VmHWM, VmRSS)"
    )
    print(f"\nmemory, {what}, one call each (MiB):")
    weights_mib = n_weights * weights[0].element_size() / 2**20
    for name in METHODS:
        peak, kept = memory_in_child(name) if device.type == "cpu" else memory(METHODS[name], base)
        print(
            f"  {name:20s} peak +{peak:7.1f}  retained +{kept:7.1f}  transient {peak - kept:7.1f}"
        )
    print(
        f"  (all conv+linear weights: {weights_mib:.1f} MiB; what pruning retains is the masks"
        " and the masked weights, 2 x that, plus whatever the method keeps referenced)"
    )
    largest = max(w.numel() for w in weights)
    print(
        f"  ours allocates per-tensor temporaries only; the largest tensor has {largest:,}"
        f" entries ({largest * 4 / 2**20:.1f} MiB in float32)"
    )


if __name__ == "__main__":
    main()
