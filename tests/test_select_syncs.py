"""Host syncs of a pruning step: a constant number, whatever the number of layers.

On CPU nothing waits for a device, so the syncs are counted where they would happen on CUDA:
every call that reads a tensor back to Python (``item``, ``tolist``, ``cpu``, ``numpy``,
``bool``, ``int``, ``float``, ``index``), wrapped to count; and, outside those reads, every
ATen op that reads a device value back by itself on CUDA (``_local_scalar_dense``, as
indexing with a 0-d tensor does; ``nonzero``, boolean masks, ``bincount``, ...), seen by a
dispatch mode. The selection runs its device code path (``chunks._HOST_DEVICES = ()``), as
on CUDA.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_sparsity.pruning import MagnitudePruner, chunks

READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")
# ATen ops that read a value back to the host on CUDA
SYNCING_OPS = {
    "aten::_local_scalar_dense",
    "aten::nonzero",
    "aten::masked_select",
    "aten::bincount",
    "aten::_unique2",
    "aten::unique_consecutive",
    "aten::unique_dim",
}


class _SyncingOps(TorchDispatchMode):
    """Records ops that sync on CUDA, unless a counted read is running (``depth``)."""

    def __init__(self, depth: list[int]) -> None:
        super().__init__()
        self.depth = depth
        self.seen: list[str] = []

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        name = func._schema.name
        indexed_by_mask = name in ("aten::index", "aten::index_put", "aten::index_put_") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] or ()
        )
        repeat = name == "aten::repeat_interleave" and (kwargs or {}).get("output_size") is None
        if not self.depth[0] and (name in SYNCING_OPS or indexed_by_mask or repeat):
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


@contextmanager
def counted_syncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, list[str]]]:
    """Count reads to the host, and ops that would sync on CUDA outside them."""
    out: dict[str, list[str]] = {"reads": [], "ops": []}
    depth = [0]
    with monkeypatch.context() as patch:
        for name in READS:
            original = getattr(torch.Tensor, name)

            def read(self: torch.Tensor, *args: Any, _f: Any = original, _n: str = name) -> Any:
                if not depth[0]:
                    out["reads"].append(_n)
                depth[0] += 1
                try:
                    return _f(self, *args)
                finally:
                    depth[0] -= 1

            patch.setattr(torch.Tensor, name, read)
        patch.setattr(chunks, "_HOST_DEVICES", ())
        mode = _SyncingOps(depth)
        with mode:
            yield out
        out["ops"] = mode.seen


class Net(nn.Module):
    """``layers`` weights: convolutions, then linear layers."""

    def __init__(self, layers: int) -> None:
        super().__init__()
        convs = layers // 2
        self.convs = nn.ModuleList(
            [nn.Conv2d(3 if i == 0 else 6, 6, 3, padding=1) for i in range(convs)]
        )
        self.linears = nn.ModuleList([nn.Linear(24, 24) for _ in range(layers - convs)])


def costs(model: nn.Module) -> dict[str, float]:
    """FLOPs per nonzero weight: a conv entry costs more than a linear one."""
    return {
        name: (2.0 * 64 if ".convs." in f".{name}" else 2.0)
        for name, p in model.named_parameters()
        if name.endswith("weight")
    }


def dense_flops(model: nn.Module) -> float:
    params = dict(model.named_parameters())
    return sum(c * params[n].numel() for n, c in costs(model).items())


Step = Callable[..., object]


def _flop_target(**settings: Any) -> Step:
    def step(model: nn.Module, sparsity: float, **floors: Any) -> object:
        pruner = MagnitudePruner(**settings, **floors)
        return pruner.apply_flop_target(
            model, (1 - sparsity) * dense_flops(model), costs(model), not_above=True
        )

    return step


STEPS: dict[str, Step] = {
    "global": lambda m, s, **f: MagnitudePruner(allocation="global", **f).apply(m, s),
    "uniform": lambda m, s, **f: MagnitudePruner(allocation="uniform", **f).apply(m, s),
    "erk": lambda m, s, **f: MagnitudePruner(allocation="erk", **f).apply(m, s),
    "flops-allocation": lambda m, s, **f: MagnitudePruner(allocation="flops", **f).apply(
        m, s, flops_per_nonzero=costs(m)
    ),
    "structured-global": lambda m, s, **f: MagnitudePruner(structured=True, **f).apply(m, s),
    "structured-uniform": lambda m, s, **f: MagnitudePruner(
        structured=True, allocation="uniform", **f
    ).apply(m, s),
    "flop-target-not-above": _flop_target(),
    # the last layer is kept dense: its FLOPs are "others", counted on the device
    "flop-target-others-not-above": _flop_target(keep_last_dense=True),
    "structured-flop-target": _flop_target(structured=True),
}
CASES = list(STEPS)


def syncs_per_step(
    name: str, layers: int, monkeypatch: pytest.MonkeyPatch, **floors: Any
) -> tuple[list[int], list[str]]:
    torch.manual_seed(0)
    model = Net(layers)
    step = STEPS[name]
    reads, ops = [], []
    for sparsity in (0.5, 0.7):  # the second step starts from masks
        with counted_syncs(monkeypatch) as seen:
            step(model, sparsity, **floors)
        reads.append(len(seen["reads"]))
        ops += seen["ops"]
    return reads, ops


FLOP_TARGETS = {"flop-target-not-above", "flop-target-others-not-above", "structured-flop-target"}


@pytest.mark.parametrize("name", CASES)
def test_a_pruning_step_syncs_at_most_twice_whatever_the_layers(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # without floors: the cut, and for a FLOP target the nonzeros it leaves
    few, few_ops = syncs_per_step(name, 4, monkeypatch, min_density=0.0)
    many, many_ops = syncs_per_step(name, 40, monkeypatch, min_density=0.0)
    assert few == many, f"host reads per step grow with the layers: {few} (4) vs {many} (40)"
    assert max(many) <= 2, f"host reads per step: {many}"
    assert few_ops == many_ops == [], f"ops that sync on CUDA: {many_ops}"


@pytest.mark.parametrize("name", CASES)
def test_floors_add_a_bounded_number_of_syncs_whatever_the_layers(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # per round of pruning.floors.floored (at most 3): a cut, a check of every floor, a
    # protection of the broken ones; a FLOP target reads its nonzeros once more
    most = 8 if name in FLOP_TARGETS else 7
    few, few_ops = syncs_per_step(name, 4, monkeypatch)
    many, many_ops = syncs_per_step(name, 40, monkeypatch)
    assert max(few + many) <= most, f"host reads per step: {few} (4 layers), {many} (40)"
    assert few_ops == many_ops == [], f"ops that sync on CUDA: {many_ops}"
