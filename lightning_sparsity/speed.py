"""Measured speed: a model's forward with dense kernels against the sparse kernels the device has.

FLOP counts say what sparsity could save; this times what it does save. :func:`speed` runs
the forward (eval mode, ``torch.inference_mode``) with the weights as they are (dense kernels,
zeros included), then with sparse kernels swapped in for the layers that can use them, and
puts the measured speed-up beside the FLOP ratios of :func:`lightning_sparsity.measure`.

The sparse kernels, per device:

* CPU: ``nn.Linear`` with a ``torch.sparse`` CSR weight, computed as
  ``torch.sparse.addmm(bias, W_csr, xᵀ)ᵀ`` (MKL's sparse × dense; float32 / float64 only:
  MKL has no half-precision kernel). Measured with torch 2.13 on a 2-core AVX-512 machine,
  4096×4096 at batch 64 and 50-95% zeros, this was the fastest path: ``F.linear(x, W_csr)``
  (dense × CSC; it also fails under ``inference_mode`` for a weight made outside it) was
  3-4× slower, ``torch.addmm(b, x, W_csrᵀ)`` and COO ``torch.sparse.mm`` 10-35× slower.
* CUDA: ``nn.Linear`` whose weight conforms to 2:4 and fits the kernels' shape rules
  (:func:`lightning_sparsity.patterns.kernel_problem`), as
  ``torch.sparse.to_sparse_semi_structured`` (cuSPARSELt, compute capability 8.0+), for
  float16 / bfloat16 weights. A float32 weight is not given the 2:4 kernel: torch's default
  backend (cuSPARSELt) does not take float32, and CUTLASS's float32 2:4 kernel computes in
  TF32, which would change the numbers; cast the model (``.half()``, ``.bfloat16()``) to
  time it. CSR (cuSPARSE) is tried too.
* Convolutions: no torch sparse kernel runs them; they are timed, and counted, as dense.

A sparse kernel is kept only where it wins: each layer is timed alone, both ways, on the
input it received in the forward (captured with a hook), and keeps its sparse kernel only if
that is faster (``per_layer=False``: all or nothing, decided on the whole forward). Before
timing, each kernel's output is checked against the dense layer's on that input. Timings are
medians over ``repeats`` runs after ``warmup``, dense and sparse runs interleaved, on the same
input; on CUDA each run ends with ``torch.cuda.synchronize``.

With ``compact=True`` the whole forward is also timed against the compacted model's
(:func:`lightning_sparsity.compact`) in eager torch, in the same interleaved runs, and,
where onnxruntime is installed and the model is on the CPU, both models exported to ONNX
(:mod:`lightning_sparsity.ort`) run in onnxruntime after their outputs are checked against
torch's; the report puts the speed-ups beside the ratio of their dense FLOPs
(:class:`CompactSpeed`).

The model is left as found: its weights are never written (the sparse kernels hold copies),
the swapped ``forward`` attributes and the capture hooks are removed, mode flags restored.
(A reparametrization that sets the weight in a forward pre-hook, as ``torch.nn.utils.prune``
does, sets it here as any forward would.)
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from lightning_sparsity._checks import check_bools, check_int
from lightning_sparsity._shards import is_sharded
from lightning_sparsity._text import count, number, one_line
from lightning_sparsity.compact import compact as compact_model
from lightning_sparsity.counting.meter import measure
from lightning_sparsity.counting.report import SparsityReport
from lightning_sparsity.counting.trace import _eval_mode, call_model
from lightning_sparsity.ort import OrtRun, missing, ort_run
from lightning_sparsity.patterns import SemiStructuredLinear, semi_structured_problem

__all__ = [
    "CompactSpeed",
    "Kernel",
    "LayerSpeed",
    "SpeedReport",
    "check_real",
    "format_speed",
    "medians",
    "speed",
]

Kernel = Literal["dense", "csr", "2:4"]

_CONVS = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
_CONV_NOTE = "convolution: no torch sparse kernel runs it; timed and counted as dense"
_CSR_DTYPES = {"cpu": (torch.float32, torch.float64)}  # MKL; CUDA: whatever cuSPARSE takes
#: how far a sparse kernel's output may stray from the dense layer's, relative to its largest
#: value (summation order differs; half precision rounds each product)
_TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4}
_HALF_TOLERANCE = 1e-2
_KERNEL_ERRORS = (RuntimeError, TypeError, ValueError)  # a kernel this build or shape lacks


@dataclass(frozen=True)
class LayerSpeed:
    """One ``nn.Linear`` or convolution, timed alone on the input it got in the forward.

    Attributes:
        name: the module's fully qualified name.
        type: its class name.
        kernel: what it runs with in the sparse forward: ``"dense"``, ``"csr"`` or ``"2:4"``.
        tried: the sparse kernel timed against dense (the fastest of those that ran), or
            ``None`` if none could run (``note`` says why).
        dense_ms: the layer's median time with its dense kernel, per call; ``None`` unless
            timed alone (``per_layer=True``).
        sparse_ms: the same with ``tried``.
        flops_ratio: the layer's sparse / dense FLOPs (every zero weight skipped).
        realizable_ratio: its realizable / dense FLOPs (2:4 at half, removed rows and inputs).
        calls: how often the forward called it (timed on its first call's input).
        note: why it runs dense, or what else was found.
    """

    name: str
    type: str
    kernel: Kernel
    tried: Kernel | None
    dense_ms: float | None
    sparse_ms: float | None
    flops_ratio: float | None
    realizable_ratio: float | None
    calls: int = 1
    note: str = ""

    @property
    def speedup(self) -> float | None:
        """Measured ``dense_ms / sparse_ms`` of ``tried`` (below 1: the sparse kernel lost)."""
        if self.dense_ms is None or self.sparse_ms is None:
            return None
        return self.dense_ms / self.sparse_ms


@dataclass(frozen=True)
class CompactSpeed:
    """The compacted model (:func:`lightning_sparsity.compact`) against the masked one.

    Whole forwards on the same input, timed in the same interleaved runs as
    :attr:`SpeedReport.dense_ms`; onnxruntime (CPU provider) runs both models exported to
    ONNX the same way, each checked against torch's output first.

    Attributes:
        flops_dense: the masked model's dense FLOPs, per batch.
        flops_compact: the compacted model's dense FLOPs, per batch (what
            ``FlopCounterMode`` counts on it).
        eager_dense_ms: median forward of the masked model in eager torch (the same number
            as :attr:`SpeedReport.dense_ms`).
        eager_compact_ms: the same for the compacted model.
        ort_dense_ms: median run of the masked model's ONNX in onnxruntime; ``None`` when
            onnxruntime was not timed (``ort_note`` says why).
        ort_compact_ms: the same for the compacted model.
        ort_dense_gap: the largest difference of onnxruntime's outputs from torch's for the
            masked model, in multiples of the tolerance (``<= 1``: equal); ``None`` if not
            compared.
        ort_compact_gap: the same for the compacted model.
        ort_note: why onnxruntime was not timed (not installed, not on the CPU, an output
            that differs from torch's, an export that failed), else empty.
    """

    flops_dense: int | float
    flops_compact: int | float
    eager_dense_ms: float
    eager_compact_ms: float
    ort_dense_ms: float | None = None
    ort_compact_ms: float | None = None
    ort_dense_gap: float | None = None
    ort_compact_gap: float | None = None
    ort_note: str = ""

    @property
    def flops_ratio(self) -> float | None:
        """``flops_dense / flops_compact``: how many times fewer FLOPs (``None`` if 0)."""
        return self.flops_dense / self.flops_compact if self.flops_compact else None

    @property
    def eager_speedup(self) -> float:
        """Measured ``eager_dense_ms / eager_compact_ms``."""
        return self.eager_dense_ms / self.eager_compact_ms

    @property
    def ort_speedup(self) -> float | None:
        """Measured ``ort_dense_ms / ort_compact_ms`` (``None`` if onnxruntime was not timed)."""
        if self.ort_dense_ms is None or self.ort_compact_ms is None:
            return None
        return self.ort_dense_ms / self.ort_compact_ms

    @property
    def clause(self) -> str:
        """Its part of :attr:`SpeedReport.summary`."""
        ort = "" if self.ort_speedup is None else f", {self.ort_speedup:.2f}× in onnxruntime"
        return (
            f"; compacted: dense FLOPs {number(self.flops_ratio, '.2f', unit='×')} fewer,"
            f" a measured speed-up of {self.eager_speedup:.2f}× in eager torch{ort}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data, with the derived ratios."""
        return {
            **asdict(self),
            "flops_ratio": self.flops_ratio,
            "eager_speedup": self.eager_speedup,
            "ort_speedup": self.ort_speedup,
        }

    def to_markdown(self) -> list[str]:
        """Its table (onnxruntime's columns only where it was timed) and a line on onnxruntime."""
        head = ["model", "dense FLOPs", "FLOPs dense/compacted", "eager ms", "speed-up (eager)"]
        masked = ["masked (as is)", count(self.flops_dense), "1.00×"]
        masked += [number(self.eager_dense_ms, ".3g"), "1.00×"]
        small = ["compacted", count(self.flops_compact), number(self.flops_ratio, ".2f", unit="×")]
        small += [number(self.eager_compact_ms, ".3g"), f"{self.eager_speedup:.2f}×"]
        if self.ort_speedup is None:
            ort = f"onnxruntime not timed: {self.ort_note}."
        else:
            head += ["onnxruntime ms", "speed-up (onnxruntime)"]
            masked += [number(self.ort_dense_ms, ".3g"), "1.00×"]
            small += [number(self.ort_compact_ms, ".3g"), f"{self.ort_speedup:.2f}×"]
            ort = (
                "onnxruntime (CPU provider) runs both models exported to ONNX; their outputs"
                " equal torch's on the example input (largest differences"
                f" {number(self.ort_dense_gap, '.2g')} and {number(self.ort_compact_gap, '.2g')}"
                " of the tolerance)."
            )
        table = [head, masked, small]
        lines = ["| " + " | ".join(row) + " |" for row in table]
        lines.insert(1, "|" + "---|" * len(head))
        return ["", *lines, "", ort]


@dataclass(frozen=True)
class SpeedReport:
    """Measured dense and sparse forward times beside the FLOP ratios.

    Attributes:
        device: where it ran (``"cpu"``, ``"cuda:0"``).
        threads: torch's intra-op threads (CPU), else ``None``.
        repeats: timed runs per median.
        warmup: untimed runs before them.
        per_layer: whether each layer was timed alone (else: all or nothing, on the whole).
        layers: the ``nn.Linear`` and convolution layers the forward ran, in module order.
        dense_ms: median time of the whole forward with dense kernels.
        sparse_ms: the same with the chosen sparse kernels; equal to ``dense_ms`` (not timed
            again) when no layer uses one.
        flops_ratio: the whole model's sparse / dense FLOPs.
        realizable_ratio: its realizable / dense FLOPs.
        notes: sentences on what was not accelerated and why.
        compact: with ``speed(..., compact=True)``, the compacted model's times beside its
            FLOP ratio; else ``None``.
    """

    device: str
    threads: int | None
    repeats: int
    warmup: int
    per_layer: bool
    layers: tuple[LayerSpeed, ...]
    dense_ms: float
    sparse_ms: float
    flops_ratio: float | None
    realizable_ratio: float | None
    notes: tuple[str, ...] = ()
    compact: CompactSpeed | None = None

    @property
    def accelerated(self) -> list[str]:
        """The layers that run a sparse kernel in the sparse forward."""
        return [row.name for row in self.layers if row.kernel != "dense"]

    @property
    def speedup(self) -> float:
        """Measured ``dense_ms / sparse_ms`` of the whole forward (1.0 if nothing swapped)."""
        return self.dense_ms / self.sparse_ms if self.sparse_ms else 1.0

    @property
    def summary(self) -> str:
        """One sentence: what was accelerated and the measured speed-up beside the FLOPs."""
        kind = self.device.split(":")[0]
        flops = _flops_clause(self.flops_ratio, self.realizable_ratio)
        compacted = "" if self.compact is None else self.compact.clause
        if not self.accelerated:
            return (
                f"no layer runs faster with a sparse kernel on {kind}: the measured speed-up"
                f" is 1.00×{flops}{compacted}"
            )
        kernels = sorted({row.kernel for row in self.layers if row.kernel != "dense"})
        return (
            f"{len(self.accelerated)} of {len(self.layers)} layers run a sparse kernel"
            f" ({', '.join(kernels)}): the forward takes {self.sparse_ms:.3g} ms instead of"
            f" {self.dense_ms:.3g} ms, a measured speed-up of {self.speedup:.2f}×{flops}"
        ) + compacted

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready data (with the derived speed-ups)."""
        return {
            **{k: v for k, v in asdict(self).items() if k != "layers"},
            "compact": None if self.compact is None else self.compact.to_dict(),
            "notes": list(self.notes),
            "speedup": self.speedup,
            "accelerated": self.accelerated,
            "summary": self.summary,
            "layers": [{**asdict(row), "speedup": row.speedup} for row in self.layers],
        }

    def to_markdown(self) -> str:
        """A per-layer table (measured speed-up beside the FLOP ratios), totals, notes."""
        head = ["layer", "type", "kernel", "tried", "dense ms", "sparse ms"]
        head += ["speed-up (measured)", "sparse/dense FLOPs", "realizable/dense FLOPs", "note"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in self.layers:
            cells = [row.name or "<root>", row.type, row.kernel, row.tried or "—"]
            cells += [
                number(row.dense_ms, ".3g"),
                number(row.sparse_ms, ".3g"),
                number(row.speedup, ".2f", unit="×"),
            ]
            cells += [number(row.flops_ratio, ".3f"), number(row.realizable_ratio, ".3f"), row.note]
            lines.append("| " + " | ".join(cells) + " |")
        kernels = ", ".join(sorted({r.kernel for r in self.layers if r.kernel != "dense"}))
        total = ["**whole forward**", "", kernels or "dense", "", number(self.dense_ms, ".3g")]
        total += [
            number(self.sparse_ms, ".3g"),
            number(self.speedup, ".2f", unit="×"),
            number(self.flops_ratio, ".3f"),
        ]
        total += [number(self.realizable_ratio, ".3f"), ""]
        lines.append("| " + " | ".join(total) + " |")
        threads = f", {self.threads} threads" if self.threads is not None else ""
        how = "each layer alone, then the whole forward" if self.per_layer else "whole forward"
        lines += [
            "",
            f"On {self.device}{threads}: medians of {self.repeats} runs after {self.warmup}"
            f" warm-up ({how}; eval mode, torch.inference_mode, dense and sparse runs"
            " interleaved on the same input); ms per forward, per call for a layer.",
            self.summary[0].upper() + self.summary[1:] + ".",
            *self.notes,
        ]
        if self.compact is not None:
            lines += self.compact.to_markdown()
        return "\n".join(lines)


def format_speed(report: SpeedReport) -> str:
    """The markdown table of ``report`` (:meth:`SpeedReport.to_markdown`), for the CLI."""
    return report.to_markdown()


def _flops_clause(flops: float | None, realizable: float | None) -> str:
    parts = []
    if flops is not None:
        parts.append(f"sparse/dense {flops:.3f}")
    if realizable is not None:
        parts.append(f"realizable/dense {realizable:.3f}")
    return f" (FLOPs: {', '.join(parts)})" if parts else ""


# ---------------------------------------------------------------------- the sparse kernels

KernelFn = Callable[[Tensor], Tensor]


class _Csr:
    """``y = x Wᵀ + b`` as ``(W_csr xᵀ + b)ᵀ``: sparse × dense, the output a transposed view."""

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        self.weight = weight.detach().to_sparse_csr()
        self.bias = None if bias is None else bias.detach().reshape(-1, 1)

    def __call__(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1]).t()
        if self.bias is None:
            out = torch.sparse.mm(self.weight, flat)
        else:
            out = torch.sparse.addmm(self.bias, self.weight, flat)
        return out.t().reshape(*x.shape[:-1], -1)


_BUILDERS: dict[Kernel, Callable[[Tensor, Tensor | None], KernelFn]] = {
    "2:4": SemiStructuredLinear,
    "csr": _Csr,
}


def _csr_problem(weight: Tensor) -> str | None:
    """Why CSR is not tried for ``weight`` (``None`` if it is)."""
    allowed = _CSR_DTYPES.get(weight.device.type)
    if allowed is not None and weight.dtype not in allowed:
        names = "/".join(str(d).removeprefix("torch.") for d in allowed)
        return f"CSR on {weight.device.type} takes {names}, the weight is {weight.dtype}"
    return None


def _candidates(module: nn.Linear) -> tuple[list[Kernel], list[str]]:
    """The sparse kernels worth trying on ``module`` (a Linear), and why the others are not."""
    weight = module.weight
    if is_sharded(weight):
        return [], ["sharded weight: timed dense"]
    if type(module).forward is not nn.Linear.forward or "forward" in module.__dict__:
        return [], ["its forward is not nn.Linear's: timed dense"]
    if weight.layout != torch.strided or type(weight) not in (Tensor, nn.Parameter):
        return [], [f"its weight is already a {type(weight).__name__} ({weight.layout})"]
    if int(torch.count_nonzero(weight)) == weight.numel():
        return [], ["no zero weights"]
    kernels: list[Kernel] = []
    reasons: list[str] = []
    device_kernels: list[tuple[Kernel, Callable[[Tensor], str | None]]] = [("csr", _csr_problem)]
    if weight.device.type == "cuda":
        device_kernels.insert(0, ("2:4", semi_structured_problem))
    for kernel, problem_of in device_kernels:
        problem = problem_of(weight)
        if problem is None:
            kernels.append(kernel)
        else:
            reasons.append(problem)
    return kernels, reasons


def _wrong(out: Tensor, ref: Tensor) -> str | None:
    """How far a kernel's output strays from the dense output, if too far."""
    tolerance = _TOLERANCE.get(ref.dtype, _HALF_TOLERANCE)
    error = (out.double() - ref.double()).abs().max()
    scale = ref.double().abs().max()
    if bool(error <= tolerance * scale):
        return None
    return f"its output differs from the dense layer's by {float(error):.3g} of {float(scale):.3g}"


def _built(module: nn.Linear, kernel: Kernel, x: Tensor) -> tuple[KernelFn | None, str]:
    """The kernel for ``module``, checked on ``x``, or ``None`` and why it cannot run."""
    bias = module.bias if isinstance(module.bias, Tensor) else None
    try:
        fn = _BUILDERS[kernel](module.weight, bias)
        out = fn(x)
    except _KERNEL_ERRORS as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return None, f"{kernel} failed: {type(err).__name__}: {first}"
    wrong = _wrong(out, module(x))
    return (None, f"{kernel} rejected: {wrong}") if wrong else (fn, "")


# ---------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _swapped(forwards: Mapping[nn.Module, KernelFn]) -> Iterator[None]:
    """``module.forward`` set to the kernel for each module, and restored after."""
    absent = object()
    saved = {module: module.__dict__.get("forward", absent) for module in forwards}
    try:
        for module, fn in forwards.items():
            module.forward = fn
        yield
    finally:
        for module, before in saved.items():
            if before is absent:
                module.__dict__.pop("forward", None)
            else:
                module.forward = before


Contender = tuple[Mapping[nn.Module, KernelFn], Callable[[], object]]


def _race(
    contenders: Mapping[str, Contender], repeats: int, warmup: int, device: torch.device
) -> dict[str, float]:
    """Median milliseconds of each ``fn`` run with its kernels swapped in, runs interleaved."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for i in range(warmup + repeats):
        for name, (forwards, fn) in contenders.items():
            with _swapped(forwards):
                _sync(device)
                start = time.perf_counter()
                fn()
                _sync(device)
                elapsed = time.perf_counter() - start
            if i >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def medians(
    runs: Mapping[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Median milliseconds of each run, the runs interleaved (drifting load hits all alike).

    The timing :func:`speed` uses, for callers timing their own functions
    (``benchmarks/bench_compact.py``).

    Args:
        runs: what to time, by name.
        repeats: timed runs of each.
        warmup: untimed runs of each before them.
        device: a CUDA device to synchronize around each run (``None``: the CPU, none).
    """
    contenders: dict[str, Contender] = {name: ({}, fn) for name, fn in runs.items()}
    return _race(contenders, repeats, warmup, device or torch.device("cpu"))


# ---------------------------------------------------------------------- speed()


@dataclass
class _Layer:
    """A layer while it is being decided."""

    name: str
    module: nn.Module
    x: Tensor
    calls: int = 1


def _captured(model: nn.Module, example_input: Any) -> list[_Layer]:
    """The Linear and convolution layers the forward runs, each with its first input."""
    layers: dict[nn.Module, _Layer] = {}
    names = {module: name for name, module in model.named_modules()}

    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        if module in layers:
            layers[module].calls += 1
        elif args and isinstance(args[0], Tensor):
            layers[module] = _Layer(names[module], module, args[0])

    handles = [
        m.register_forward_pre_hook(hook) for m in names if isinstance(m, (nn.Linear, *_CONVS))
    ]
    try:
        call_model(model, example_input)
    finally:
        for handle in handles:
            handle.remove()
    order = {module: i for i, module in enumerate(names)}
    return sorted(layers.values(), key=lambda layer: order[layer.module])


def _device_of(model: nn.Module, example_input: Any) -> torch.device:
    for p in model.parameters():
        return p.device
    leaves, _ = tree_flatten(example_input)
    return next((t.device for t in leaves if isinstance(t, Tensor)), torch.device("cpu"))


class _CompactRuns:
    """With ``compact=True``: the compacted model, its FLOPs, and the onnxruntime sessions."""

    def __init__(self, model: nn.Module, example_input: Any, device: torch.device) -> None:
        self.notes: list[str] = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.small = compact_model(model, example_input)
        for w in caught:  # compact's own warnings (layers kept dense) become notes
            if str(w.message).startswith("compact:"):
                self.notes.append(f"{w.message}.")
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        self.flops = measure(self.small, example_input, per="batch").total.flops
        self.sessions: dict[str, OrtRun] = {}
        self.gaps: dict[str, float | None] = {}
        self.ort_note = self._onnxruntime(model, example_input, device)

    def _onnxruntime(self, model: nn.Module, example_input: Any, device: torch.device) -> str:
        """Load both models in onnxruntime and check them; why not timed (``""``: timed)."""
        absent = missing()
        if absent is not None:
            return absent
        if device.type != "cpu":
            return f"it is timed on the CPU only, the model is on {device}"
        inputs = [example_input] if isinstance(example_input, Tensor) else example_input
        if not isinstance(inputs, (tuple, list)) or not all(isinstance(t, Tensor) for t in inputs):
            return (
                "it is fed a Tensor or a tuple of Tensors (positional inputs), the example"
                f" input is a {type(example_input).__name__}"
            )
        problems = []
        sessions = {}
        for label, which in (("dense", model), ("compacted", self.small)):
            try:
                sessions[label] = ort_run(which, inputs, threads=torch.get_num_threads())
                self.gaps[label] = gap = sessions[label].gap()
            except Exception as err:  # what the exporter or onnxruntime refuses
                problems.append(
                    f"the {label} model failed in ONNX export or onnxruntime:"
                    f" {type(err).__name__}: {one_line(err)}"
                )
                continue
            if gap is None:
                problems.append(f"onnxruntime's outputs of the {label} model are not torch's")
            elif gap > 1:
                problems.append(
                    f"onnxruntime's output of the {label} model differs from torch's by"
                    f" {gap:.3g} times the tolerance"
                )
        if problems:
            return "; ".join(problems)
        self.sessions = sessions
        return ""

    def contenders(self, example_input: Any) -> dict[str, Contender]:
        """The compacted forward and the sessions, to time beside the dense forward."""
        small = functools.partial(call_model, self.small, example_input)
        return {
            "compacted": ({}, small),
            **{f"ort {k}": ({}, run) for k, run in self.sessions.items()},
        }

    def result(self, flops_dense: float, ms: Mapping[str, float]) -> CompactSpeed:
        """The report's part, from the medians of the race (by contender name)."""
        return CompactSpeed(
            flops_dense=flops_dense,
            flops_compact=self.flops,
            eager_dense_ms=ms["dense"],
            eager_compact_ms=ms["compacted"],
            ort_dense_ms=ms.get("ort dense"),
            ort_compact_ms=ms.get("ort compacted"),
            ort_dense_gap=self.gaps.get("dense"),
            ort_compact_gap=self.gaps.get("compacted"),
            ort_note=self.ort_note,
        )


_META = "speed() needs real weights to time; the model is on the meta device"


def check_real(model: nn.Module) -> None:
    """Refuse a model with a parameter or buffer on meta (shapes only: nothing to move or time).

    Raises:
        ValueError: saying so.
    """
    if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
        raise ValueError(_META)


def _validate(
    model: object, repeats: object, warmup: object, per_layer: object, compact: object
) -> None:
    type_errors: list[str] = []
    value_errors: list[str] = []
    if not isinstance(model, nn.Module):
        type_errors.append(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    check_int("repeats", repeats, value_errors, 1)
    check_int("warmup", warmup, value_errors)
    check_bools({"per_layer": per_layer, "compact": compact}, type_errors)
    if type_errors or value_errors:
        message = "; ".join(type_errors + value_errors)
        raise TypeError(message) if type_errors else ValueError(message)


def speed(
    model: nn.Module,
    example_input: Any,
    *,
    repeats: int = 20,
    warmup: int = 3,
    per_layer: bool = True,
    compact: bool = False,
) -> SpeedReport:
    """Time the forward with dense kernels and with the sparse kernels the device has.

    With ``compact``, also the compacted model (:func:`lightning_sparsity.compact`) against
    the masked one as it is, whole forwards in eager torch and, where ``onnxruntime`` is
    installed and the model is on the CPU, both exported to ONNX and run in onnxruntime (CPU
    provider, torch's thread count), each session's outputs first checked against torch's
    on ``example_input``: one that differs (or fails to export or load) is reported in
    :attr:`CompactSpeed.ort_note`, and onnxruntime is not timed.

    Args:
        model: the model; left as found (weights, parameter objects, mode flags, hooks).
        example_input: a Tensor, a tuple/list of positional arguments, or a dict of kwargs,
            on the model's device (onnxruntime takes Tensor inputs only: a Tensor or a
            tuple/list of them).
        repeats: timed runs per median, >= 1.
        warmup: untimed runs before them, >= 0.
        per_layer: time each ``nn.Linear`` alone both ways and keep a sparse kernel only
            where it is faster; ``False``: give every layer that can take one its sparse
            kernel and keep them all only if the whole forward is faster (cheaper: no
            per-layer timings).
        compact: also time the compacted model (:attr:`SpeedReport.compact`), in the same
            interleaved runs as the whole forward.

    Returns:
        The report: per layer and for the whole forward, measured times and speed-ups beside
        the sparse and realizable FLOP ratios of :func:`lightning_sparsity.measure`; with
        ``compact``, the compacted model's times beside its FLOP ratio.

    Raises:
        TypeError: if ``model`` is not a module, ``per_layer`` or ``compact`` not a bool, or
            ``example_input`` not a supported type.
        ValueError: for ``repeats`` < 1 or ``warmup`` < 0 (or not ints), a model on the
            meta device, an empty batch (``example_input`` of no examples: nothing to
            time, FLOP ratios 0/0), and with ``compact`` what :func:`~lightning_sparsity.compact`
            refuses (a sharded model, a compacted copy that computes something else).
        MeasureError: if the forward fails on ``example_input``.
    """
    _validate(model, repeats, warmup, per_layer, compact)
    check_real(model)
    counts = measure(model, example_input, per="batch")
    device = _device_of(model, example_input)
    notes: list[str] = []
    small = _CompactRuns(model, example_input, device) if compact else None
    if small is not None:
        notes += small.notes
    with (
        _eval_mode(model),
        torch.inference_mode(),
        warnings.catch_warnings(),
    ):
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta state")
        layers = _captured(model, example_input)
        rows, chosen = _decide(layers, counts, repeats, warmup, device, per_layer)

        def forward() -> object:
            return call_model(model, example_input)

        contenders: dict[str, Contender] = {"dense": ({}, forward)}
        if chosen:
            contenders["sparse"] = (chosen, forward)
        if small is not None:
            contenders.update(small.contenders(example_input))
        ms = _race(contenders, repeats, warmup, device)
        dense_ms = ms["dense"]
        sparse_ms = ms.get("sparse", dense_ms)
        if chosen and not per_layer and sparse_ms >= dense_ms:
            notes.append(
                f"With every sparse kernel swapped in, the forward took {sparse_ms:.3g} ms,"
                f" dense {dense_ms:.3g} ms: kept dense."
            )
            rows = [_dense(row, "slower as a set: kept dense") for row in rows]
            sparse_ms = dense_ms
        elif chosen and sparse_ms >= dense_ms:
            notes.append(
                "The layers whose sparse kernel won alone did not win together: their"
                " margins are within the timing noise here (kept, and measured as such)."
            )
    if any(isinstance(layer.module, _CONVS) for layer in layers):
        notes.append("Convolutions run dense: no torch sparse kernel runs them (counted as dense).")
    return SpeedReport(
        device=str(device),
        threads=torch.get_num_threads() if device.type == "cpu" else None,
        repeats=repeats,
        warmup=warmup,
        per_layer=per_layer,
        layers=tuple(rows),
        dense_ms=dense_ms,
        sparse_ms=sparse_ms,
        flops_ratio=counts.total.flops_ratio,
        realizable_ratio=counts.total.realizable_ratio,
        notes=tuple(notes),
        compact=None if small is None else small.result(counts.total.flops, ms),
    )


def _dense(row: LayerSpeed, note: str) -> LayerSpeed:
    """``row`` back on the dense kernel, saying why."""
    if row.kernel == "dense":
        return row
    return replace(row, kernel="dense", note="; ".join(p for p in (row.note, note) if p))


def _decide(
    layers: Sequence[_Layer],
    counts: SparsityReport,
    repeats: int,
    warmup: int,
    device: torch.device,
    per_layer: bool,
) -> tuple[list[LayerSpeed], dict[nn.Module, KernelFn]]:
    """Per layer: which kernel runs it (timed alone with ``per_layer``), and the row."""
    ratios = {row.name: (row.flops_ratio, row.realizable_ratio) for row in counts.layers}
    rows: list[LayerSpeed] = []
    chosen: dict[nn.Module, KernelFn] = {}
    for layer in layers:
        module, x = layer.module, layer.x
        flops_ratio, realizable_ratio = ratios.get(layer.name, (None, None))
        notes: list[str] = []
        kernels: dict[Kernel, KernelFn] = {}
        if isinstance(module, nn.Linear):
            names, notes = _candidates(module)
            for kernel in names:
                fn, why = _built(module, kernel, x)
                if fn is None:
                    notes.append(why)
                else:
                    kernels[kernel] = fn
        else:
            notes.append(_CONV_NOTE)
        if layer.calls > 1:
            notes.append(f"called {layer.calls}× per forward; timed on its first input")
        dense_ms = sparse_ms = None
        tried: Kernel | None = None
        pick: Kernel = "dense"
        if per_layer:
            run = functools.partial(module, x)
            contenders: dict[str, Contender] = {"dense": ({}, run)}
            contenders.update({kernel: ({module: fn}, run) for kernel, fn in kernels.items()})
            times = _race(contenders, repeats, warmup, device)
            dense_ms = times.pop("dense")
            if times:
                best: Kernel = min(kernels, key=times.__getitem__)
                tried, sparse_ms = best, times[best]
                if sparse_ms < dense_ms:
                    pick = best
                else:
                    notes.append(f"{best} is slower here: kept dense")
        elif kernels:
            tried = pick = next(iter(kernels))
        if pick != "dense":
            chosen[module] = kernels[pick]
        rows.append(
            LayerSpeed(
                name=layer.name,
                type=type(module).__name__,
                kernel=pick,
                tried=tried,
                dense_ms=dense_ms,
                sparse_ms=sparse_ms,
                flops_ratio=flops_ratio,
                realizable_ratio=realizable_ratio,
                calls=layer.calls,
                note="; ".join(notes),
            )
        )
    return rows, chosen
