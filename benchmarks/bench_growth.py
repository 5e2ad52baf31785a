"""Growth: how counting and pruning scale from ResNet-18 to a 1B-parameter MLP (CPU, batch 1).

The ladder (``--sizes`` picks a subset; ``growth_models.py`` says what each one is)::

    resnet18 resnet50 resnet152 vit_b_16 vit_l_16 gpt2 gpt2_medium mlp_134m mlp_537m mlp_1b

Images are 224×224, GPT inputs 1,024 tokens (GPT-2's context), MLP inputs one vector.
Per size, each phase in a fresh process (so RSS readings start clean):

* ``count``: the trace, a fresh ``SparsityMeter(model, x)``, and the first count, a fresh
  ``SparsityMeter(model, x).measure()`` (what ``ls.measure`` costs), against
  ``torch.utils.flop_counter.FlopCounterMode`` under ``no_grad`` on the same input and a bare
  forward under ``no_grad``; the cached ``meter.measure()`` against a bare
  ``sum(p.count_nonzero() for p in params).item()`` sweep, on the dense model and after
  ``MagnitudePruner().apply(model, 0.8)``; the dense and sparse FLOPs the meter reports, and
  ``FlopCounterMode``'s dense count.
* ``prune``: global magnitude pruning to 80 % of the weights ``MagnitudePruner()`` chooses
  (conv + linear ``weight`` s) with ``MagnitudePruner().apply`` against
  ``torch.nn.utils.prune.global_unstructured(..., L1Unstructured)`` on the same weights
  (the path Lightning's ``ModelPruning`` takes), each call on a freshly built model (same
  seed), the two interleaved.
* ``mem-ours`` / ``mem-torch``: one pruning call; RSS before, after (persistent) and the
  peak (VmHWM, reset through /proc/self/clear_refs) read from /proc, in a process whose
  malloc hands large blocks back to the OS (``MALLOC_MMAP_THRESHOLD_``), as in
  ``bench_pruning.py``. Reported in bytes per pruned weight (the ``N`` weights pruning
  covers): ours should keep ~1 (a bool mask), torch 12 (a float mask, the materialised
  masked weight, and the global mask, which each layer's ``CustomFromMask`` hook keeps
  alive through its slice of it).

Times are medians over the size's repeats (after one warm-up for the counting phase, in
which the tools' runs alternate), ratios between runs in the same process. A phase that
would not fit in the RAM available is skipped before it starts, saying how much it needs
(from the bytes per weight measured on smaller sizes); as a backstop a child caps its
address space at what is available, so an underestimate ends in an allocation error, not
the OOM killer. ``--busy N`` runs the timing phases with N processes spinning on the CPU;
``--phases count`` runs only the counting phase.

    python benchmarks/bench_growth.py [--sizes resnet18,gpt2] [--quick] [--repeats N]
        [--busy N] [--threads N] [--phases count,prune,mem-ours,mem-torch]
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from bench_counter import flop_counter, forward, sweep, time_group
from growth_models import (
    GPT2_MEDIUM_PARAMS,
    GPT2_PARAMS,
    RESNET18_MACS_G,
    RESNET18_PARAMS,
    RESNET152_MACS_G,
    RESNET152_PARAMS,
    VIT_B_16_MACS_G,
    VIT_B_16_PARAMS,
    VIT_L_16_MACS_G,
    VIT_L_16_PARAMS,
    gpt2,
    gpt2_medium,
    mlp,
    resnet18,
    resnet152,
    vit_b_16,
    vit_l_16,
)
from load import busy
from models import RESNET50_MACS, RESNET50_PARAMS, resnet50
from torch import Tensor, nn
from torch.nn.utils import prune

import lightning_sparsity as ls

SPARSITY = 0.8
TOKENS = 1024  # GPT-2's context
VOCAB = 50257
GIB = 2**30
#: what the parent leaves free when it decides whether a phase fits
MARGIN = 1.5 * GIB
#: planning figures, bytes per pruned weight at the peak of one call beyond the float32
#: weights, a little above what this benchmark measures (the table shows the measured ones):
#: ours ~1.0 (the bool masks; the selection reads the weights in chunks), torch ~50.6 (|w|
#: concatenated, a ones vector, the global mask and its clone, |scores|, topk's values,
#: int64 indices and its (value, index) scratch, then a mask per layer and the masked weights)
PLAN_PEAK = {"ours": 1.5, "torch": 52.0}


@dataclass(frozen=True)
class Size:
    """One rung of the ladder."""

    title: str
    build: Callable[[], nn.Module]
    params: int  # published (or closed-form) parameter count, asserted
    kind: str  # "image", "tokens" or "vector"
    repeats: int  # timed runs of the counting phase
    prune_repeats: int  # timed pruning calls per method (1: one call each, no median)
    check: Callable[[], int] | None  # dense FLOPs in closed form (2 per MAC), if exact
    published_gmacs: float | None = None  # published MACs, rounded as published
    width: int = 0  # MLP width


def _gpt_flops(layers: int, d: int) -> int:
    # per token 12·L·d² MACs in the blocks (qkv 3d², out d², MLP 8d²) + V·d in the LM head;
    # attention 2·T²·d per layer (scores + attn @ v over all heads, the causal half included)
    return 2 * (TOKENS * (12 * layers * d * d + VOCAB * d) + 2 * layers * TOKENS**2 * d)


def _vit_flops(layers: int, d: int) -> int:
    # patch conv 196·(3·16·16)·d; per token and block qkv 3d², out d², MLP 8d² over 197 tokens;
    # attention 2·197²·d per block; the head d·1000 on the class token
    return 2 * (196 * 768 * d + layers * (197 * 12 * d * d + 2 * 197**2 * d) + d * 1000)


def _mlp_params(width: int, depth: int = 8) -> int:
    return depth * (width * width + width)


def _mlp_flops(width: int, depth: int = 8) -> int:
    return 2 * depth * width * width  # batch 1: one MAC per weight


SIZES: dict[str, Size] = {
    "resnet18": Size("ResNet-18", resnet18, RESNET18_PARAMS, "image", 5, 5, None, RESNET18_MACS_G),
    "resnet50": Size(
        "ResNet-50", resnet50, RESNET50_PARAMS, "image", 5, 5, lambda: 2 * RESNET50_MACS, 4.089
    ),
    "resnet152": Size(
        "ResNet-152", resnet152, RESNET152_PARAMS, "image", 5, 3, None, RESNET152_MACS_G
    ),
    "vit_b_16": Size(
        "ViT-B/16", vit_b_16, VIT_B_16_PARAMS, "image", 5, 3, lambda: _vit_flops(12, 768), 17.564
    ),
    "vit_l_16": Size(
        "ViT-L/16", vit_l_16, VIT_L_16_PARAMS, "image", 3, 1, lambda: _vit_flops(24, 1024), 61.555
    ),
    "gpt2": Size("GPT-2 (12×768)", gpt2, GPT2_PARAMS, "tokens", 3, 2, lambda: _gpt_flops(12, 768)),
    "gpt2_medium": Size(
        "GPT-2 medium (24×1024)",
        gpt2_medium,
        GPT2_MEDIUM_PARAMS,
        "tokens",
        2,
        1,
        lambda: _gpt_flops(24, 1024),
    ),
    **{
        name: Size(
            f"MLP 8×{width}",
            functools.partial(mlp, width),
            _mlp_params(width),
            "vector",
            count_repeats,
            prune_repeats,
            functools.partial(_mlp_flops, width),
            width=width,
        )
        for name, width, count_repeats, prune_repeats in [
            ("mlp_134m", 4096, 5, 2),
            ("mlp_537m", 8192, 3, 1),
            ("mlp_1b", 11264, 3, 1),
        ]
    },
}
assert round(_vit_flops(12, 768) / 2e9, 3) == VIT_B_16_MACS_G
assert round(_vit_flops(24, 1024) / 2e9, 3) == VIT_L_16_MACS_G
#: the smoke run: the smallest of each family, one repeat each
QUICK = ("resnet18", "vit_b_16", "gpt2", "mlp_134m")
PHASES = ("count", "prune", "mem-ours", "mem-torch")


# ----------------------------------------------------------------------------- helpers


def example(size: Size) -> Tensor:
    """Batch 1: an image, 1,024 tokens or one vector."""
    gen = torch.Generator().manual_seed(1)
    if size.kind == "image":
        return torch.randn(1, 3, 224, 224, generator=gen)
    if size.kind == "tokens":
        return torch.randint(0, VOCAB, (1, TOKENS), generator=gen)
    return torch.randn(1, size.width, generator=gen)


def build(size: Size) -> nn.Module:
    """The model, freshly initialised with seed 0, in eval mode."""
    torch.manual_seed(0)
    return size.build().eval()


def targets(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """The weights ``MagnitudePruner()`` prunes; torch prunes the same ones."""
    return [(module, name) for _, module, name in ls.MagnitudePruner().targets(model)]


def prune_ours(model: nn.Module) -> None:
    ls.MagnitudePruner().apply(model, SPARSITY)


def prune_torch(model: nn.Module) -> None:
    prune.global_unstructured(targets(model), pruning_method=prune.L1Unstructured, amount=SPARSITY)


METHODS = {"ours": prune_ours, "torch": prune_torch}


def pruned_count(name: str, model: nn.Module) -> int:
    """Weights the method pruned (its mask's zeros)."""
    if name == "ours":
        return sum(int((~m).sum()) for m in ls.MagnitudePruner().masks(model).values())
    return sum(int((b == 0).sum()) for n, b in model.named_buffers() if n.endswith("_mask"))


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def mem_available() -> int:
    """Bytes the kernel says can be allocated without swapping (MemAvailable)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise KeyError("MemAvailable")


def cap_address_space() -> None:
    """Let this process grow by what is available, no more: an allocation error, not OOM."""
    limit = status_kib("VmSize") * 1024 + mem_available() - GIB // 2
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


# ----------------------------------------------------------------------------- child phases


def phase_count(size: Size, repeats: int) -> dict[str, Any]:
    model, x = build(size), example(size)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == size.params, f"{size.title} has {n_params:,} parameters"
    n_weights = sum(getattr(m, n).numel() for m, n in targets(model))
    zeros = sum(int((getattr(m, n) == 0).sum()) for m, n in targets(model))

    times = time_group(
        {
            "fcm": lambda: flop_counter(model, x),
            "forward": lambda: forward(model, x),
            "trace": lambda: ls.SparsityMeter(model, x),
            "first": lambda: ls.SparsityMeter(model, x).measure(),
        },
        repeats,
        warmup=1,
    )
    fcm_flops = flop_counter(model, x)
    meter = ls.SparsityMeter(model, x)
    lean = ls.SparsityMeter(model, x, realizable=False)  # nonzero counts only
    recounts = {"sweep": lambda: sweep(model), "measure": meter.measure, "lean": lean.measure}
    inner = 5 if n_params < 10**8 else 1
    dense = time_group(recounts, repeats, 1, inner)
    dense_report = meter.measure().total

    prune_ours(model)
    sparse = time_group(recounts, repeats, 1, inner)  # the warm-up takes any re-trace
    report = meter.measure().total
    return {
        "params": n_params,
        "weights": n_weights,
        "zeros_at_init": zeros,
        "trace_s": times["trace"],
        "first_s": times["first"],
        "fcm_s": times["fcm"],
        "forward_s": times["forward"],
        "sweep_dense_s": dense["sweep"],
        "measure_dense_s": dense["measure"],
        "sweep_sparse_s": sparse["sweep"],
        "measure_sparse_s": sparse["measure"],
        "lean_dense_s": dense["lean"],
        "lean_sparse_s": sparse["lean"],
        "retraces": meter.traces + lean.traces - 2,
        "flops": dense_report.flops,
        "flops_sparse_dense": dense_report.flops_sparse,
        "flops_sparse": report.flops_sparse,
        "flops_fcm": fcm_flops,
        "params_nonzero": report.params_nonzero,
        "peak_rss": status_kib("VmHWM") * 1024,
    }


def phase_prune(size: Size, repeats: int, methods: list[str]) -> dict[str, Any]:
    samples: dict[str, list[float]] = {name: [] for name in methods}
    counts: dict[str, int] = {}
    for run in range(repeats):  # interleaved, a fresh model per call
        for name in methods:
            model = build(size)
            start = time.perf_counter()
            METHODS[name](model)
            samples[name].append(time.perf_counter() - start)
            if run == repeats - 1:
                counts[name] = pruned_count(name, model)
            del model
            gc.collect()
    return {
        "times": {name: statistics.median(values) for name, values in samples.items()},
        "pruned": counts,
    }


def phase_memory(size: Size, name: str) -> dict[str, Any]:
    warm = mlp(64, 2)  # one-time costs (code pages, thread pools) out of the reading
    METHODS[name](warm)
    del warm
    model = build(size)
    n_weights = sum(getattr(m, n).numel() for m, n in targets(model))
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = status_kib("VmRSS")
    start = time.perf_counter()
    METHODS[name](model)
    seconds = time.perf_counter() - start
    peak, after = status_kib("VmHWM"), status_kib("VmRSS")
    return {
        "weights": n_weights,
        "pruned": pruned_count(name, model),
        "kept_per_weight": (after - before) * 1024 / n_weights,
        "peak_per_weight": (peak - before) * 1024 / n_weights,
        "peak_bytes": (peak - before) * 1024,
        "cold_s": seconds,
    }


def child(args: argparse.Namespace) -> None:
    cap_address_space()
    size = SIZES[args.size]
    try:
        if args.child == "count":
            out = phase_count(size, args.repeats)
        elif args.child == "prune":
            out = phase_prune(size, args.repeats, args.methods.split(","))
        else:
            out = phase_memory(size, args.child.removeprefix("mem-"))
    except (MemoryError, RuntimeError) as err:  # the address-space cap reached
        if "memory" not in str(err).lower() and not isinstance(err, MemoryError):
            raise
        out = {"error": f"out of memory: {str(err).splitlines()[0][:120]}"}
    print(json.dumps(out))


# ----------------------------------------------------------------------------- parent


def run_child(name: str, phase: str, repeats: int, threads: int | None, **extra: str) -> dict:
    cmd = [sys.executable, __file__, "--child", phase, "--size", name, "--repeats", str(repeats)]
    if threads:
        cmd += ["--threads", str(threads)]
    for key, value in extra.items():
        cmd += [f"--{key}", value]
    env = dict(os.environ)
    if phase.startswith("mem-"):  # large blocks go back to the OS: RSS follows live memory
        env["MALLOC_MMAP_THRESHOLD_"] = str(64 * 1024)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": f"{phase} exited with {done.returncode}: {tail[:160]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def needs(phase: str, size: Size) -> float:
    """Bytes a phase is planned to need: the float32 weights plus what the phase adds."""
    weights = 4 * size.params
    if phase == "count":
        return weights + 1.5 * size.params  # + the bool masks and a count_nonzero temporary
    return weights + PLAN_PEAK[phase.removeprefix("mem-")] * size.params


def fits(phase: str, size: Size) -> tuple[bool, str]:
    need, have = needs(phase, size), mem_available() - MARGIN
    why = f"needs ~{need / GIB:.1f} GiB, {have / GIB:.1f} GiB available (after a margin)"
    return need <= have, why


def measure_size(name: str, args: argparse.Namespace) -> dict[str, Any]:
    size = SIZES[name]
    repeats = args.repeats or (1 if args.quick else size.repeats)
    prune_repeats = args.repeats or (1 if args.quick else size.prune_repeats)
    out: dict[str, Any] = {"name": name, "notes": [], "load": os.getloadavg()[0]}
    started = time.perf_counter()
    ok, why = fits("count", size)
    if not ok:
        out["notes"].append(f"skipped: the model and its masks do not fit ({why})")
        return out
    phases = args.phases.split(",")
    methods = ["ours"]
    ok, why = fits("mem-torch", size)
    if ok:
        methods.append("torch")
    elif "mem-torch" in phases or "prune" in phases:
        out["notes"].append(f"torch's global_unstructured skipped: {why}")
    with busy(args.busy):
        out["count"] = run_child(name, "count", repeats, args.threads)
        for method in methods:
            if f"mem-{method}" in phases:
                out[f"mem-{method}"] = run_child(name, f"mem-{method}", 1, args.threads)
        # not the memory processes' calls: their malloc hands every block over 64 KiB back to
        # the OS, and the page faults slow ours 2.5x (ViT-L/16: 5.2 s there, 2.1 s here)
        if "prune" in phases:
            joined = ",".join(methods)
            out["prune"] = run_child(name, "prune", prune_repeats, args.threads, methods=joined)
            out["prune"]["single"] = prune_repeats == 1
    out["seconds"] = time.perf_counter() - started
    return out


# ----------------------------------------------------------------------------- report


def ms(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds * 1e3:,.0f}" if seconds >= 0.1 else f"{seconds * 1e3:,.1f}"


def ratio(a: float | None, b: float | None) -> str:
    return "—" if a is None or b is None else f"{a / b:.2f}×"


def gflops(value: int | None) -> str:
    return "—" if value is None else f"{value / 1e9:,.2f}"


def big(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 10**9 else f"{n / 1e6:.1f}M"


def print_pruning(ok: list[dict[str, Any]]) -> None:
    """The pruning table: time against torch, bytes per weight kept and at the peak."""
    print(
        f"\n### Global magnitude pruning to {SPARSITY:.0%}: time (ms, medians) and memory"
        " (bytes per pruned weight: persistent = RSS after − before, peak = VmHWM − RSS"
        " before)\n"
    )
    print(
        "| model | pruned weights | MagnitudePruner.apply | global_unstructured | speed-up"
        " | ours persistent | ours peak | torch persistent | torch peak | torch peak GiB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in ok:
        times = r.get("prune", {}).get("times", {})
        mark = " †" if r.get("prune", {}).get("single") else ""
        torch_mark = mark if "torch" in times else ""
        mo, mt = r.get("mem-ours", {}), r.get("mem-torch", {})

        def b(m: dict[str, Any], key: str) -> str:
            return f"{m[key]:.2f}" if key in m else "—"

        torch_gib = f"{mt['peak_bytes'] / GIB:.1f}" if "peak_bytes" in mt else "—"
        print(
            f"| {SIZES[r['name']].title} | {big(r['count']['weights'])}"
            f" | {ms(times.get('ours'))}{mark} | {ms(times.get('torch'))}{torch_mark}"
            f" | {ratio(times.get('torch'), times.get('ours'))}"
            f" | {b(mo, 'kept_per_weight')} | {b(mo, 'peak_per_weight')}"
            f" | {b(mt, 'kept_per_weight')} | {b(mt, 'peak_per_weight')} | {torch_gib} |"
        )

    print("\n† one call each (on a fresh model) instead of a median")


def print_tables(results: list[dict[str, Any]]) -> None:
    ok = [r for r in results if "error" not in r.get("count", {"error": ""})]
    print(
        "\n### The first count (ms, medians): the trace (`SparsityMeter(model, x)`) and the"
        " first count (`SparsityMeter(model, x).measure()`, as `ls.measure`) vs"
        " FlopCounterMode and a bare forward, both under `no_grad`\n"
    )
    print(
        "| model | params | forward | FlopCounterMode | trace | × FlopCounterMode | × forward"
        " | first count | × FlopCounterMode | × forward |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in ok:
        c = r["count"]
        print(
            f"| {SIZES[r['name']].title} | {big(c['params'])} | {ms(c['forward_s'])}"
            f" | {ms(c['fcm_s'])} | {ms(c['trace_s'])} | {ratio(c['trace_s'], c['fcm_s'])}"
            f" | {ratio(c['trace_s'], c['forward_s'])} | {ms(c['first_s'])}"
            f" | {ratio(c['first_s'], c['fcm_s'])} | {ratio(c['first_s'], c['forward_s'])} |"
        )
    print(
        "\n### The cached recount (ms, medians): default `measure()`, and with"
        " `realizable=False` (nonzero counts only), vs a bare nonzero sweep, × = ratio to the"
        " sweep\n"
    )
    print(
        "| model | pruned weights | sweep dense | measure dense | realizable=False | sweep 80%"
        " | measure 80% | realizable=False |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in ok:
        c = r["count"]

        def vs(key: str, base: str, c: dict[str, Any] = c) -> str:
            return f"{ms(c[key])} ({ratio(c[key], c[base])})"

        print(
            f"| {SIZES[r['name']].title} | {big(c['weights'])}"
            f" | {ms(c['sweep_dense_s'])} | {vs('measure_dense_s', 'sweep_dense_s')}"
            f" | {vs('lean_dense_s', 'sweep_dense_s')} | {ms(c['sweep_sparse_s'])}"
            f" | {vs('measure_sparse_s', 'sweep_sparse_s')}"
            f" | {vs('lean_sparse_s', 'sweep_sparse_s')} |"
        )

    if any(phase in r for r in ok for phase in PHASES[1:]):
        print_pruning(ok)
    print(
        "\n### FLOPs per example (G, 2 per MAC): ours dense / sparse, FlopCounterMode's dense,"
        " and the checks\n"
    )
    print(
        "| model | ours dense | FlopCounterMode | ours sparse, dense model | ours sparse, 80%"
        " | sparse / dense | check of ours dense |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in ok:
        size, c = SIZES[r["name"]], r["count"]
        checks = []
        if size.published_gmacs is not None:
            ours = round(c["flops"] / 2e9, 3)
            verdict = "=" if ours == size.published_gmacs else "≠"
            checks.append(f"{ours:.3f} GMACs {verdict} published {size.published_gmacs:.3f}")
        if size.check is not None:
            expected = size.check()
            verdict = "exact" if expected == c["flops"] else f"off by {c['flops'] - expected:+,}"
            checks.append(f"closed form: {verdict}")
        print(
            f"| {size.title} | {gflops(c['flops'])} | {gflops(c['flops_fcm'])}"
            f" | {gflops(c['flops_sparse_dense'])} | {gflops(c['flops_sparse'])}"
            f" | {c['flops_sparse'] / c['flops']:.3f} | {'; '.join(checks) or '—'} |"
        )

    print("\n### Notes per size\n")
    for r in results:
        size = SIZES[r["name"]]
        c = r.get("count", {})
        lines = list(r["notes"])
        for phase in PHASES:
            if "error" in r.get(phase, {}):
                lines.append(f"{phase}: {r[phase]['error']}")
        if "flops" in c:
            if c["zeros_at_init"]:
                lines.append(
                    f"{c['zeros_at_init']:,} weights are exactly 0 at initialisation, so the"
                    " dense model's sparse FLOPs are already below its dense FLOPs"
                )
            if c["flops_fcm"] != c["flops"]:
                lines.append(
                    f"FlopCounterMode misses {(c['flops'] - c['flops_fcm']) / 1e9:,.2f} GFLOPs"
                    f" ({1 - c['flops_fcm'] / c['flops']:.1%})"
                )
            if c["retraces"]:
                lines.append(f"the meters re-traced {c['retraces']} times after pruning")
            lines.append(f"count phase peak RSS {c['peak_rss'] / GIB:.2f} GiB")
        pruned = r.get("prune", {}).get("pruned", {})
        if pruned and len(set(pruned.values())) > 1:
            lines.append(f"methods pruned different counts: {pruned}")
        elif pruned:
            who = "both" if len(pruned) > 1 else "ours"
            lines.append(f"{who} pruned {next(iter(pruned.values())):,} weights")
        if "seconds" in r:
            lines.append(f"{r['seconds']:.0f} s wall, load average {r['load']:.2f} at start")
        print(f"- **{size.title}**: " + "; ".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=None, help=f"comma-separated, of {', '.join(SIZES)}")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {', '.join(QUICK)}")
    parser.add_argument("--repeats", type=int, default=None, help="override every size's")
    parser.add_argument("--busy", type=int, default=0, help="spinning processes while timing")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--phases", default=",".join(PHASES), help=f"comma-separated, of {', '.join(PHASES)}"
    )
    parser.add_argument("--child", choices=PHASES, help=argparse.SUPPRESS)
    parser.add_argument("--size", choices=sorted(SIZES), help=argparse.SUPPRESS)
    parser.add_argument("--methods", default="ours,torch", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child(args)
        return

    names = args.sizes.split(",") if args.sizes else list(QUICK if args.quick else SIZES)
    unknown = [n for n in names if n not in SIZES]
    if unknown:
        parser.error(f"unknown sizes {unknown}; choose from {list(SIZES)}")
    odd = [p for p in args.phases.split(",") if p not in PHASES]
    if odd:
        parser.error(f"unknown phases {odd}; choose from {list(PHASES)}")
    print(
        f"machine: {os.cpu_count()} CPUs ({platform.machine()}), torch {torch.__version__},"
        f" {torch.get_num_threads()} intra-op threads, Python {platform.python_version()},"
        f" {mem_available() / GIB:.1f} GiB available, load average"
        f" {', '.join(f'{v:.2f}' for v in os.getloadavg())}"
        + (f", {args.busy} busy processes while timing" if args.busy else ", quiet")
    )
    results = []
    started = time.perf_counter()
    for name in names:
        print(f"  {name} ...", flush=True)
        results.append(measure_size(name, args))
    print_tables(results)
    print(
        f"\ntotal {time.perf_counter() - started:.0f} s; load average at the end"
        f" {', '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )


if __name__ == "__main__":
    main()
