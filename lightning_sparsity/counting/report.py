"""``SparsityReport``: pure data, per-layer rows plus totals.

FLOPs count 2 per MAC. ``per`` says whether FLOPs are per example (the default: the
example input's FLOPs divided by its batch size) or per batch (the input as given).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from lightning_sparsity._text import number, si

__all__ = ["LayerStats", "SparsityReport", "StepFlops", "TrainingCost"]

Per = Literal["example", "batch"]


@dataclass(frozen=True)
class LayerStats:
    """Counts for one module (its own parameters, the FLOPs of ops run inside it).

    Attributes:
        name: fully qualified module name (``""`` is the root; ``"total"`` for totals).
        type: the module's class name.
        params: entries of the module's own effective parameters (tied ones once).
        params_nonzero: nonzero entries among them; ``None`` on the meta device.
        flops: dense FLOPs of the ops executed directly in this module.
        flops_sparse: the same, skipping multiplications by a zero weight; ``None`` on the
            meta device.
        flops_effective: multiplications with both operands nonzero (×2); ``None`` unless
            measured with ``activations=True``.
        flops_realizable: what real kernels execute for the weights' patterns (2:4 weights at
            half their FLOPs, removed rows and input channels skipped, unstructured zeros
            not); ``None`` unless counted (``realizable=``).
    """

    name: str
    type: str
    params: int
    params_nonzero: int | None
    flops: int | float
    flops_sparse: int | float | None
    flops_effective: int | float | None = None
    flops_realizable: int | float | None = None

    @property
    def density(self) -> float | None:
        """``params_nonzero / params`` (1.0 for a module without parameters)."""
        if self.params_nonzero is None:
            return None
        return self.params_nonzero / self.params if self.params else 1.0

    @property
    def sparsity(self) -> float | None:
        """``1 - density``: the fraction of zero parameters."""
        density = self.density
        return None if density is None else 1.0 - density

    @property
    def realizable_ratio(self) -> float | None:
        """``flops_realizable / flops`` (1.0 for a module without FLOPs)."""
        return self._of_dense(self.flops_realizable)

    @property
    def flops_ratio(self) -> float | None:
        """``flops_sparse / flops`` (1.0 for a module without FLOPs)."""
        return self._of_dense(self.flops_sparse)

    def _of_dense(self, value: int | float | None) -> float | None:
        return _of_dense(value, self.flops)


def _of_dense(value: int | float | None, dense: int | float) -> float | None:
    """``value / dense``: 1.0 where there are no FLOPs, ``None`` where it was not counted."""
    if value is None:
        return None
    return value / dense if dense else 1.0


_COLUMNS = [f.name for f in fields(LayerStats)]


@dataclass(frozen=True)
class SparsityReport:
    """Per-layer rows and their totals.

    Attributes:
        layers: one row per module that owns parameters or runs counted ops.
        total: the sums over ``layers``.
        per: ``"example"`` or ``"batch"``: what the FLOPs are counted for.
        batch_size: the number of examples in the example input (``batch_size=``, else the
            length of a list of tensors given as the first argument, else dim 0 of the first
            tensor): per example, what the FLOPs were divided by; per batch, only stated, and
            ``None`` where it could not be told (the input's shapes disagree with the batch
            sizes its convolutions or recurrent layers ran on, or nothing has a batch dim).
        unsupported: aten ops met in the forward pass with no formula, and how often; their
            cost is not in any FLOP column.
        parameters: every effective parameter by name → ``(entries, nonzero entries)``
            (``None`` nonzero on the meta device).
        forms: with realizable FLOPs, what each weight of 2+ dims realizes: ``"dense"``,
            ``"2:4"``, ``"rows 48/64, inputs 16/16"`` (compacted), ``"unstructured"``,
            ``"zero"``.
        constants_kept: with realizable FLOPs, per weight, the input channels whose producing
            rows are all dead but which it still reads, so they count: a nonzero constant a
            convolution reads through zero padding (folding it into the bias would not be
            exact at the border), or a trail that does not keep it one constant.
    """

    layers: tuple[LayerStats, ...]
    total: LayerStats
    per: Per = "example"
    batch_size: int | None = 1
    unsupported: dict[str, int] = field(default_factory=dict)
    parameters: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    forms: dict[str, str] = field(default_factory=dict)
    constants_kept: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_layers(
        cls,
        layers: Sequence[LayerStats],
        *,
        per: Per = "example",
        batch_size: int | None = 1,
        unsupported: dict[str, int] | None = None,
        known: frozenset[str] = frozenset({"params_nonzero", "flops_sparse"}),
        parameters: dict[str, tuple[int, int | None]] | None = None,
        forms: dict[str, str] | None = None,
        constants_kept: dict[str, int] | None = None,
    ) -> SparsityReport:
        """Build a report, summing ``layers`` into ``total``.

        ``known`` names the optional columns that were measured; the others total ``None``
        (with no layers, nothing else says whether they were).
        """

        def add(name: str) -> Any:
            values = [getattr(row, name) for row in layers]
            missing = name not in known or any(v is None for v in values)
            return None if missing else sum(values)

        total = LayerStats(
            name="total",
            type="",
            params=sum(row.params for row in layers),
            params_nonzero=add("params_nonzero"),
            flops=sum(row.flops for row in layers),
            flops_sparse=add("flops_sparse"),
            flops_effective=add("flops_effective"),
            flops_realizable=add("flops_realizable"),
        )
        return cls(
            tuple(layers),
            total,
            per,
            batch_size,
            dict(unsupported or {}),
            dict(parameters or {}),
            dict(forms or {}),
            dict(constants_kept or {}),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SparsityReport:
        """A report from its :meth:`to_dict` (read back from ``to_json``).

        Keys the report does not know are left out; fields the data lacks take defaults.
        """
        names = {f.name for f in fields(LayerStats)}

        def row(values: dict[str, Any]) -> LayerStats:
            return LayerStats(**{k: v for k, v in values.items() if k in names})

        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        values["layers"] = tuple(row(r) for r in data["layers"])
        values["total"] = row(data["total"])
        values["parameters"] = {k: tuple(v) for k, v in data.get("parameters", {}).items()}
        return cls(**values)

    def sparsity_of(self, names: Iterable[str]) -> float | None:
        """The fraction of zeros among the named parameters (e.g. a pruner's targets)."""
        sizes = [self.parameters[name] for name in names]
        total = sum(n for n, _ in sizes)
        if any(nnz is None for _, nnz in sizes) or not total:
            return None
        return 1.0 - sum(nnz or 0 for _, nnz in sizes) / total

    def emptied(self, names: Iterable[str]) -> list[str]:
        """The named parameters that hold entries but no nonzero one (sorted)."""
        return sorted(
            name for name in names if self.parameters[name][0] and self.parameters[name][1] == 0
        )

    def layer(self, name: str) -> LayerStats:
        """The row of module ``name``.

        Raises:
            KeyError: if no row has that name; the message lists the names.
        """
        for row in self.layers:
            if row.name == name:
                return row
        raise KeyError(f"no layer named {name!r}; layers are {[r.name for r in self.layers]}")

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready data."""
        return {
            "per": self.per,
            "batch_size": self.batch_size,
            "total": asdict(self.total),
            "layers": [asdict(row) for row in self.layers],
            "unsupported": dict(self.unsupported),
            "parameters": {name: list(v) for name, v in self.parameters.items()},
            "forms": dict(self.forms),
            "constants_kept": dict(self.constants_kept),
        }

    def to_json(self, path: str | Path | None = None) -> str:
        """JSON text of :meth:`to_dict`, also written to ``path`` if given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    def to_csv(self, path: str | Path | None = None) -> str:
        """CSV text, one row per layer then ``total``, also written to ``path`` if given."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=[*_COLUMNS, "density"], lineterminator="\n")
        writer.writeheader()
        for row in (*self.layers, self.total):
            writer.writerow({**asdict(row), "density": row.density})
        text = buffer.getvalue()
        if path is not None:
            Path(path).write_text(text)
        return text

    def _flops_basis(self) -> str:
        """One sentence on what the FLOPs count for: per example (divided by what) or batch."""
        if self.batch_size is None:  # per batch, where the number of examples is unclear
            return f"FLOPs per {self.per}: the example input's FLOPs as given (2 FLOPs = 1 MAC)."
        if self.per == "example":
            return (
                "FLOPs per example: the example input's FLOPs divided by its batch size"
                f" {self.batch_size:,} (2 FLOPs = 1 MAC)."
            )
        examples = "example" if self.batch_size == 1 else "examples"
        return (
            f"FLOPs per batch of {self.batch_size:,} {examples}: the example input's FLOPs as"
            " given (2 FLOPs = 1 MAC)."
        )

    def to_markdown(self) -> str:
        """A per-layer table with totals, FLOPs in human units."""
        effective = self.total.flops_effective is not None
        realizable = self.total.flops_realizable is not None
        head = ["layer", "type", "params", "nonzero", "density", "FLOPs", "sparse FLOPs"]
        head += ["sparse/dense", *(["realizable FLOPs"] if realizable else [])]
        head += ["effective FLOPs"] if effective else []
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in (*self.layers, self.total):
            name = "**total**" if row is self.total else (row.name or "<root>")
            cells = [
                name,
                row.type,
                f"{row.params:,}",
                number(row.params_nonzero, ","),
                number(row.density, ".3f"),
                si(row.flops),
                si(row.flops_sparse),
                number(row.flops_ratio, ".3f"),
            ]
            if realizable:
                cells.append(si(row.flops_realizable))
            if effective:
                cells.append(si(row.flops_effective))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines.append(self._flops_basis())
        shaped = {n: f for n, f in self.forms.items() if f not in ("dense", "unstructured")}
        if shaped:
            lines.append(
                "Realizable: " + ", ".join(f"{n} {f}" for n, f in shaped.items()) + "; other"
                " zeros are unstructured (no dense kernel skips them)."
            )
        if self.constants_kept:
            lines.append(
                "Kept: "
                + ", ".join(f"{n} reads {k} dead channels" for n, k in self.constants_kept.items())
                + " that it cannot drop (a nonzero constant through zero padding, which reads 0"
                " at the border, or not one constant after an average over zero padding), so"
                " they count."
            )
        if self.unsupported:
            ops = ", ".join(f"{op} ×{n}" for op, n in sorted(self.unsupported.items()))
            lines.append(f"Not counted (no formula): {ops}.")
        return "\n".join(lines)


@dataclass(frozen=True)
class StepFlops:
    """FLOPs of (a part of) one training step, in the inference report's three columns.

    Attributes:
        flops: dense: what dense kernels execute (the backward as autograd runs it).
        flops_sparse: skipping every multiplication by a zero weight (forward, activation
            gradients) and the gradients of entries that are not trained (weight
            gradients); ``None`` on the meta device.
        flops_realizable: what N:M kernels and compacted layers execute; ``None`` unless
            counted (``realizable=``).
    """

    flops: int | float
    flops_sparse: int | float | None
    flops_realizable: int | float | None = None

    @property
    def flops_ratio(self) -> float | None:
        """``flops_sparse / flops`` (1.0 without FLOPs)."""
        return _of_dense(self.flops_sparse, self.flops)

    @property
    def realizable_ratio(self) -> float | None:
        """``flops_realizable / flops`` (1.0 without FLOPs)."""
        return _of_dense(self.flops_realizable, self.flops)


@dataclass(frozen=True)
class TrainingCost:
    """What one training step on the example input costs (``SparsityMeter.measure_training``).

    One step is one forward and one backward of the example input; with gradient
    accumulation an optimizer step runs ``k`` of them. FLOPs are per example or per batch
    of the example input as ``per`` says, like :class:`SparsityReport`'s.

    Attributes:
        total: the sum of the three parts.
        forward: the forward pass (in training mode) and the loss.
        grad_inputs: backward products passing gradients to activations (through a weight:
            ``grad_x = grad_y · W``, sparse skips W's zeros; or between activations:
            attention's, dense in every column).
        grad_weights: backward products computing weight gradients (``grad_W = grad_yᵀ ·
            x``); sparse counts the entries that are trained (by default the nonzero ones
            of every weight that requires a gradient).
        per: ``"example"`` or ``"batch"``.
        batch_size: as :attr:`SparsityReport.batch_size`.
        unsupported: aten ops met in the step with no formula, and how often.
    """

    total: StepFlops
    forward: StepFlops
    grad_inputs: StepFlops
    grad_weights: StepFlops
    per: Per = "example"
    batch_size: int | None = 1
    unsupported: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data: the parts' columns, ``per``, ``batch_size``, ``unsupported``."""
        return {
            "per": self.per,
            "batch_size": self.batch_size,
            **{
                part: asdict(getattr(self, part))
                for part in ("total", "forward", "grad_inputs", "grad_weights")
            },
            "unsupported": dict(self.unsupported),
        }
