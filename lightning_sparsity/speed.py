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
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from lightning_sparsity._checks import check_bools, check_int
from lightning_sparsity._shards import is_sharded
from lightning_sparsity._text import number
from lightning_sparsity.counting.meter import measure
from lightning_sparsity.counting.report import SparsityReport
from lightning_sparsity.counting.trace import _eval_mode, call_model
from lightning_sparsity.patterns import conforms, kernel_problem

__all__ = ["Kernel", "LayerSpeed", "SpeedReport", "check_real", "format_speed", "speed"]

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
_HALF = (torch.float16, torch.bfloat16)
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
        if not self.accelerated:
            return (
                f"no layer runs faster with a sparse kernel on {kind}: the measured speed-up"
                f" is 1.00×{flops}"
            )
        kernels = sorted({row.kernel for row in self.layers if row.kernel != "dense"})
        return (
            f"{len(self.accelerated)} of {len(self.layers)} layers run a sparse kernel"
            f" ({', '.join(kernels)}): the forward takes {self.sparse_ms:.3g} ms instead of"
            f" {self.dense_ms:.3g} ms, a measured speed-up of {self.speedup:.2f}×{flops}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready data (with the derived speed-ups)."""
        return {
            **{k: v for k, v in asdict(self).items() if k != "layers"},
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


class _SemiStructured:
    """``F.linear`` with a 2:4 semi-structured weight (cuSPARSELt or CUTLASS)."""

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        from torch.sparse import to_sparse_semi_structured

        self.weight = to_sparse_semi_structured(weight.detach().contiguous())
        self.bias = None if bias is None else bias.detach()

    def __call__(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1]).contiguous()
        return F.linear(flat, self.weight, self.bias).reshape(*x.shape[:-1], -1)


_BUILDERS: dict[Kernel, Callable[[Tensor, Tensor | None], KernelFn]] = {
    "2:4": _SemiStructured,
    "csr": _Csr,
}


def _semi_structured_problem(weight: Tensor) -> str | None:
    """Why the 2:4 kernels cannot run ``weight`` (``None`` if they can)."""
    if weight.device.type != "cuda":
        return "2:4 kernels run on CUDA only"
    if torch.cuda.get_device_capability(weight.device) < (8, 0):
        return "2:4 kernels need compute capability 8.0+ (Ampere or later)"
    if weight.dtype not in _HALF:
        return (
            f"2:4 kernels take float16/bfloat16 here, the weight is {weight.dtype} (cast the"
            " model with .half() or .bfloat16() to time them)"
        )
    problem = kernel_problem(weight, (2, 4))
    if problem is not None:
        return f"not 2:4: {problem}"
    if not bool(conforms(weight, (2, 4))):
        return "not 2:4: some group of 4 weights holds more than 2 nonzeros"
    return None


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
        device_kernels.insert(0, ("2:4", _semi_structured_problem))
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
    contenders: Sequence[Contender], repeats: int, warmup: int, device: torch.device
) -> list[float]:
    """Median milliseconds of each ``fn`` run with its kernels swapped in, runs interleaved."""
    times: list[list[float]] = [[] for _ in contenders]
    for i in range(warmup + repeats):
        for (forwards, fn), out in zip(contenders, times, strict=True):
            with _swapped(forwards):
                _sync(device)
                start = time.perf_counter()
                fn()
                _sync(device)
                elapsed = time.perf_counter() - start
            if i >= warmup:
                out.append(elapsed)
    return [statistics.median(t) * 1e3 for t in times]


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


_META = "speed() needs real weights to time; the model is on the meta device"


def check_real(model: nn.Module) -> None:
    """Refuse a model with a parameter or buffer on meta (shapes only: nothing to move or time).

    Raises:
        ValueError: saying so.
    """
    if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
        raise ValueError(_META)


def _validate(model: object, repeats: object, warmup: object, per_layer: object) -> None:
    type_errors: list[str] = []
    value_errors: list[str] = []
    if not isinstance(model, nn.Module):
        type_errors.append(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    check_int("repeats", repeats, value_errors, 1)
    check_int("warmup", warmup, value_errors)
    check_bools({"per_layer": per_layer}, type_errors)
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
) -> SpeedReport:
    """Time the forward with dense kernels and with the sparse kernels the device has.

    Args:
        model: the model; left as found (weights, parameter objects, mode flags, hooks).
        example_input: a Tensor, a tuple/list of positional arguments, or a dict of kwargs,
            on the model's device.
        repeats: timed runs per median, >= 1.
        warmup: untimed runs before them, >= 0.
        per_layer: time each ``nn.Linear`` alone both ways and keep a sparse kernel only
            where it is faster; ``False``: give every layer that can take one its sparse
            kernel and keep them all only if the whole forward is faster (cheaper: no
            per-layer timings).

    Returns:
        The report: per layer and for the whole forward, measured times and speed-ups beside
        the sparse and realizable FLOP ratios of :func:`lightning_sparsity.measure`.

    Raises:
        TypeError: if ``model`` is not a module, ``per_layer`` not a bool, or
            ``example_input`` not a supported type.
        ValueError: for ``repeats`` < 1 or ``warmup`` < 0 (or not ints), a model on the
            meta device, or an empty batch (``example_input`` of no examples: nothing to
            time, FLOP ratios 0/0).
        MeasureError: if the forward fails on ``example_input``.
    """
    _validate(model, repeats, warmup, per_layer)
    check_real(model)
    counts = measure(model, example_input, per="batch")
    device = _device_of(model, example_input)
    with (
        _eval_mode(model),
        torch.inference_mode(),
        warnings.catch_warnings(),
    ):
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta state")
        layers = _captured(model, example_input)
        rows, chosen = _decide(layers, counts, repeats, warmup, device, per_layer)
        notes: list[str] = []

        def forward() -> object:
            return call_model(model, example_input)

        if chosen:
            dense_ms, sparse_ms = _race([({}, forward), (chosen, forward)], repeats, warmup, device)
            if not per_layer and sparse_ms >= dense_ms:
                notes.append(
                    f"With every sparse kernel swapped in, the forward took {sparse_ms:.3g} ms,"
                    f" dense {dense_ms:.3g} ms: kept dense."
                )
                rows = [_dense(row, "slower as a set: kept dense") for row in rows]
                sparse_ms = dense_ms
            elif sparse_ms >= dense_ms:
                notes.append(
                    "The layers whose sparse kernel won alone did not win together: their"
                    " margins are within the timing noise here (kept, and measured as such)."
                )
        else:
            (dense_ms,) = _race([({}, forward)], repeats, warmup, device)
            sparse_ms = dense_ms
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
            contenders: list[Contender] = [
                ({}, run),
                *(({module: fn}, run) for fn in kernels.values()),
            ]
            dense_ms, *times = _race(contenders, repeats, warmup, device)
            if times:
                best = min(range(len(times)), key=times.__getitem__)
                tried, sparse_ms = list(kernels)[best], times[best]
                if sparse_ms < dense_ms:
                    pick = tried
                else:
                    notes.append(f"{tried} is slower here: kept dense")
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
