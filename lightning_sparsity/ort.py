"""ONNX export and onnxruntime sessions: one export for every caller.

:func:`export_onnx` writes a model as ONNX (torch's TorchScript exporter, eval mode), its
inputs named ``input`` (``input_0``, ``input_1``, ... for several) and its outputs ``output``
(``output_0``, ...), axis 0 of each dynamic (``batch``). ``lightning-sparsity export`` writes
the compacted model with it; :func:`ort_run` exports into a temporary directory and loads the
file into an onnxruntime ``InferenceSession`` on the CPU provider, which
:func:`lightning_sparsity.speed` (``compact=True``) and ``benchmarks/bench_compact.py`` time.

The ``onnx`` extra installs what they need: ``onnx`` (torch writes ONNX through it) and,
for :func:`ort_run`, ``onnxruntime``; :func:`missing` says which is absent. A session's idle
threads sleep rather than spin, so that they leave the cores to what is timed next.
"""

from __future__ import annotations

import importlib
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from lightning_sparsity.compact import _gap
from lightning_sparsity.counting.trace import _eval_mode

__all__ = ["OrtRun", "export_onnx", "missing", "ort_run"]

_INSTALL = "pip install 'lightning-sparsity[onnx]'"


def missing(*packages: str) -> str | None:
    """Which of ``packages`` cannot be imported, with the install command; ``None``: none.

    ``packages`` default to ``onnx`` and ``onnxruntime``.
    """
    absent = []
    for package in packages or ("onnx", "onnxruntime"):
        try:
            importlib.import_module(package)
        except ImportError:
            absent.append(package)
    if not absent:
        return None
    verb = "is" if len(absent) == 1 else "are"
    return f"{' and '.join(absent)} {verb} not installed ({_INSTALL})"


def _names(prefix: str, n: int) -> list[str]:
    return [prefix] if n == 1 else [f"{prefix}_{i}" for i in range(n)]


def export_onnx(model: nn.Module, inputs: Sequence[Tensor], to: str | Path) -> list[Tensor]:
    """Write ``model`` called on ``inputs`` (positional) as ONNX to ``to``, in eval mode.

    Inputs are named ``input`` (or ``input_0``, ...), outputs ``output`` (or ``output_0``,
    ...), axis 0 of each dynamic. The model's mode flags are restored after.

    Returns:
        The model's own outputs on ``inputs`` (eval mode, no grad), flattened in the order of
        the ONNX outputs: what a session of the file should reproduce.
    """
    args = tuple(inputs)
    with _eval_mode(model), torch.no_grad():
        outputs = [t for t in tree_flatten(model(*args))[0] if isinstance(t, Tensor)]
        input_names = _names("input", len(args))
        output_names = _names("output", len(outputs))
        batch = {
            name: {0: "batch"}
            for name, t in zip([*input_names, *output_names], [*args, *outputs], strict=True)
            if t.dim() > 0
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on the exporter it uses
            torch.onnx.export(
                model,
                args,
                str(to),
                dynamo=False,
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=batch,
            )
    return outputs


@dataclass(frozen=True)
class OrtRun:
    """A model exported to ONNX, loaded in onnxruntime (CPU), with its input: call to run it.

    Attributes:
        session: the ``onnxruntime.InferenceSession``.
        feed: its input, by input name (numpy arrays).
        expected: the torch model's outputs on that input, flattened in output order.
    """

    session: Any
    feed: dict[str, Any]
    expected: list[Tensor]

    def __call__(self) -> list[Any]:
        """One run of the session on the feed: its outputs (numpy arrays)."""
        return list(self.session.run(None, self.feed))

    def gap(self) -> float | None:
        """How far one run's outputs are from torch's, in multiples of the tolerance.

        The tolerance :func:`lightning_sparsity.compact` checks its copy with: ``<= 1`` is
        equal; ``None`` when they cannot be compared (another number or shape of outputs).
        """
        return _gap([torch.from_numpy(out) for out in self()], self.expected)


def ort_run(model: nn.Module, inputs: Sequence[Tensor], threads: int | None = None) -> OrtRun:
    """``model`` in an onnxruntime ``InferenceSession`` (CPU provider), fed ``inputs``.

    Exported by :func:`export_onnx` into a temporary directory, removed once loaded.

    Args:
        model: a model on the CPU.
        inputs: its positional inputs, CPU tensors.
        threads: onnxruntime's intra-op threads (``None``: onnxruntime's default).

    Raises:
        ImportError: without ``onnx`` or ``onnxruntime`` (see :func:`missing`).
        Exception: what the exporter or onnxruntime raises for a model it cannot take.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    # idle threads would spin on after each run, taking cores from whatever runs next (in
    # interleaved timings, torch's forward): they sleep instead
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    with tempfile.TemporaryDirectory(prefix="lightning_sparsity_onnx_") as directory:
        path = Path(directory) / "model.onnx"
        expected = export_onnx(model, inputs, path)
        session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
    taken = {node.name for node in session.get_inputs()}  # the exporter drops unused ones
    feed = {
        name: t.detach().numpy()
        for name, t in zip(_names("input", len(inputs)), inputs, strict=True)
        if name in taken
    }
    return OrtRun(session, feed, expected)
