"""Global magnitude pruning to 80%: MagnitudePruner vs torch.nn.utils.prune, quiet and busy.

The peer is ``prune.global_unstructured(..., pruning_method=prune.L1Unstructured)``, the path
Lightning's ``ModelPruning(use_global_unstructured=True)`` takes. Both prune the same
conv + linear weights of a fresh copy of the model per repeat (ResNet-50, or MobileNetV3-small:
many small tensors); the runs of the two alternate, and the reported times are medians.

Twice: on a quiet machine, then with ``--busy N`` processes spinning (``while True: pass``,
started and stopped by this script) that compete for the cores, as DataLoader workers do
during training. Every ratio is taken between runs in the same process under the same load.

Memory: torch's CPU allocations are invisible to tracemalloc, so on CPU the script reads the
process's resident set from /proc (VmRSS before and after, VmHWM for the peak, reset through
/proc/self/clear_refs); the peak minus the RSS after the call is the transient (temporaries).
On CUDA it reads torch.cuda.max_memory_allocated the same way.

    python benchmarks/bench_pruning.py [--model resnet50|mobilenet_v3_small] [--repeats 5]
        [--busy 2] [--device cpu|cuda] [--threads N]
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
from load import busy
from models import MOBILENET_V3_SMALL_PARAMS, RESNET50_PARAMS, mobilenet_v3_small, resnet50
from torch import nn
from torch.nn.utils import prune

from lightning_sparsity.pruning import MagnitudePruner, chunks, kth_smallest_abs, select

SPARSITY = 0.8
MODELS = {
    "resnet50": ("ResNet-50", resnet50, RESNET50_PARAMS),
    "mobilenet_v3_small": ("MobileNetV3-small", mobilenet_v3_small, MOBILENET_V3_SMALL_PARAMS),
}


def conv_linear_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def prune_ours(model: nn.Module) -> None:
    """The default pruner: per-layer floors (1% of each layer, every row's largest) kept."""
    MagnitudePruner().apply(model, SPARSITY)


def prune_ours_no_floors(model: nn.Module) -> None:
    """torch's rule exactly: the smallest 80% over all weights, nothing kept back."""
    MagnitudePruner(min_density=0.0).apply(model, SPARSITY)


def prune_torch(model: nn.Module) -> None:
    params = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=SPARSITY)


def select_only(model: nn.Module) -> None:
    """What the pruner asks of the selection: the cut and the masks, nothing installed."""
    weights = conv_linear_weights(model)
    sources = select.make_sources(weights, None, None, None)
    k = round(SPARSITY * sum(w.numel() for w in weights))
    (cut,) = select.cuts([(sources, float(k))], weighted=False)
    select.keep_masks(sources, cut)


METHODS = {
    "ours": prune_ours,
    "torch": prune_torch,
    "ours-select-and-masks": select_only,
    "ours-no-floors": prune_ours_no_floors,
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[nn.Module], None], base: nn.Module) -> float:
    device = next(base.parameters()).device
    model = copy.deepcopy(base)
    sync(device)
    start = time.perf_counter()
    fn(model)
    sync(device)
    return time.perf_counter() - start


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


def memory_in_child(name: str, model: str) -> tuple[float, float]:
    """Measure on CPU in a fresh process, where malloc hands every large block back to the OS
    (fixed mmap threshold), so the resident set follows the live allocations."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(64 * 1024))
    out = subprocess.run(
        [sys.executable, __file__, "--model", model, "--memory-of", name],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    peak, kept = json.loads(out.strip().splitlines()[-1])
    return peak, kept


def our_masks(model: nn.Module) -> list[torch.Tensor]:
    return list(MagnitudePruner().masks(model).values())


def torch_masks(model: nn.Module) -> list[torch.Tensor]:
    return [b != 0 for n, b in model.named_buffers() if n.endswith("weight_mask")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="resnet50")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--busy", type=int, default=2, help="spinning processes (0: quiet only)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--memory-of", choices=sorted(METHODS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    title, build, params = MODELS[args.model]
    torch.manual_seed(0)
    base = build().to(device)
    assert sum(p.numel() for p in base.parameters()) == params
    if args.memory_of:  # child process of memory_in_child
        print(json.dumps(memory(METHODS[args.memory_of], base)))
        return
    weights = conv_linear_weights(base)
    n_weights = sum(w.numel() for w in weights)
    print(
        f"{title}: {params:,} parameters, {n_weights:,} conv+linear weights in"
        f" {len(weights)} tensors; device {device}, torch {torch.__version__},"
        f" {torch.get_num_threads()} CPU threads, {os.cpu_count()} cores"
    )

    print(f"\nglobal magnitude pruning to {SPARSITY:.0%}, medians of {args.repeats} (ms):")
    print(
        f"  {'load':22s} {'MagnitudePruner.apply':>22s} {'global_unstructured':>20s}"
        f" {'speed-up':>9s}   {'selection + masks':>18s} {'speed-up':>9s}"
        f"   {'apply, min_density=0':>21s} {'speed-up':>9s}"
    )
    for spinners in [0] + ([args.busy] if args.busy else []):
        times: dict[str, list[float]] = {name: [] for name in METHODS}
        with busy(spinners):
            for _ in range(args.repeats):  # interleaved: drifting load hits all alike
                for name, fn in METHODS.items():
                    times[name].append(timed(fn, base))
        ours, peer, sel, bare = (statistics.median(times[n]) for n in METHODS)
        load = "quiet" if spinners == 0 else f"{spinners} busy processes"
        print(
            f"  {load:22s} {ours * 1e3:22.1f} {peer * 1e3:20.1f} {peer / ours:8.1f}x"
            f"   {sel * 1e3:18.1f} {peer / sel:8.1f}x   {bare * 1e3:21.1f} {peer / bare:8.1f}x"
        )

    m_ours, m_bare, m_peer = copy.deepcopy(base), copy.deepcopy(base), copy.deepcopy(base)
    prune_ours(m_ours)
    prune_ours_no_floors(m_bare)
    prune_torch(m_peer)
    k = round(SPARSITY * n_weights)
    threshold = float(kth_smallest_abs(weights, k))
    differ, differ_at_ties = 0, 0
    for w, a, b in zip(weights, our_masks(m_bare), torch_masks(m_peer), strict=True):
        diff = a != b
        differ += int(diff.sum())
        differ_at_ties += int((w.detach().abs()[diff] == threshold).sum())
    pruned = {
        "ours (default floors)": sum(int((~m).sum()) for m in our_masks(m_ours)),
        "ours (min_density=0)": sum(int((~m).sum()) for m in our_masks(m_bare)),
        "torch": sum(int((~m).sum()) for m in torch_masks(m_peer)),
    }
    print(
        "\nweights pruned: " + ", ".join(f"{n} {c:,}" for n, c in pruned.items()) + ";"
        f" round({SPARSITY} * N) = {k:,}"
    )
    print(
        f"same rule (min_density=0): masks differ from torch's in {differ} entries,"
        f" {differ_at_ties} of them tied at the threshold |w| = {threshold!r} (topk breaks"
        " ties arbitrarily, ours by tensor then index)"
    )
    pairs = zip(our_masks(m_ours), our_masks(m_bare), strict=True)
    kept_back = sum(int((a & ~b).sum()) for a, b in pairs)
    print(
        f"the default floors keep {kept_back:,} weights that the bare cut prunes (every row's"
        " largest, at least 1% of each layer) and prune as many of the next smallest elsewhere"
    )
    del m_ours, m_bare, m_peer

    sel, kth = [], []
    for _ in range(args.repeats):
        sync(device)
        start = time.perf_counter()
        cut = select.threshold_for_count(weights, k)
        sync(device)
        sel.append(time.perf_counter() - start)
        start = time.perf_counter()
        value = torch.kthvalue(torch.cat([w.detach().reshape(-1) for w in weights]).abs(), k)
        sync(device)
        kth.append(time.perf_counter() - start)
    assert cut.threshold == float(value.values)
    print(
        f"threshold only (quiet): radix select {statistics.median(sel) * 1e3:.1f} ms,"
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
        peak, kept = (
            memory_in_child(name, args.model)
            if device.type == "cpu"
            else memory(METHODS[name], base)
        )
        print(
            f"  {name:22s} peak +{peak:7.1f}  retained +{kept:7.1f}  transient {peak - kept:7.1f}"
        )
    print(
        f"  (all conv+linear weights: {weights_mib:.1f} MiB; ours retains a 1-byte mask per"
        " weight, torch a mask in the weight's dtype and the masked weights)"
    )
    chunk = chunks.chunk_size(device)
    print(
        f"  ours reads the weights in chunks of {chunk:,} entries; its temporaries are two"
        " chunk buffers and one histogram with its running sums (about 1 MiB)"
    )


if __name__ == "__main__":
    main()
