"""N:M (2:4) semi-structured pruning against brute force; the kernels' layout rules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import lightning_sparsity as ls
from lightning_sparsity.patterns import SEMI_STRUCTURED_MIN, conforms, kernel_problem
from tests.fits import quiet_trainer, two_four_fit_parts

pytestmark = pytest.mark.filterwarnings("ignore:.*does not have many workers")


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        # 16 output, 16 input channels: what ASP takes for 2:4 (multiples of 8 and 16);
        # groups of 4 input channels at each of 16 · 3 · 3 positions: 16 · 9 · 4 = 576
        nn.Conv2d(16, 16, 3, padding=1),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 64),  # 64 × 256: fits the fp32 2:4 kernels (multiples of 32)
        nn.ReLU(),
        nn.Linear(64, 10),  # 10 rows: not a multiple of 32, left dense
    )


def groups(weight: torch.Tensor) -> torch.Tensor:
    """Groups of 4 as the runtimes lay them out. A Linear: along each row. A conv, as ASP's
    ``create_mask`` (m4n2_1d) does: ``(K, C, R, S)`` permuted to ``(R, S, K, C)``, rows of
    ``C`` cut into groups of 4 (4 consecutive input channels at one kernel position)."""
    w = weight.detach()
    if w.dim() == 4:
        w = w.permute(2, 3, 0, 1).reshape(-1, w.shape[1])
    return w.reshape(w.shape[0], -1).reshape(-1, 4)


def brute_keep(weight: torch.Tensor) -> torch.Tensor:
    """Per group of 4: keep the 2 largest |w|, the lower index on a tie (loops, no sort)."""
    out = torch.zeros(groups(weight).shape, dtype=torch.bool)
    for g, values in enumerate(groups(weight).abs().tolist()):
        ranked = sorted(range(4), key=lambda i: (-values[i], i))
        for i in ranked[:2]:
            out[g, i] = True
    return out


def loss(group: list[float]) -> float:
    return sum(sorted(abs(v) for v in group)[:2])


def test_two_four_on_linear_and_conv_layers_with_a_dense_layer_named() -> None:
    model = make_model()
    before = {i: model[i].weight.detach().clone() for i in (0, 2)}
    pruner = ls.MagnitudePruner(pattern="2:4")
    with pytest.warns(UserWarning, match=r"not pruning \['4.weight'\]: pattern 2:4: its shape"):
        pruner.apply(model, 0.5)  # the largest a 2:4 pattern allows: every group
    for i, w in before.items():
        after = groups(model[i].weight)
        assert ((after != 0).sum(1) <= 2).all()  # every group of 4 has at least 2 zeros
        assert torch.equal(after != 0, brute_keep(w))  # the 2 largest kept
        assert bool(conforms(model[i].weight, (2, 4)))
    assert int(model[4].weight.count_nonzero()) == 640  # left dense


def test_a_lower_sparsity_prunes_the_cheapest_groups_first() -> None:
    model = make_model()
    weights = [model[0].weight.detach().clone(), model[2].weight.detach().clone()]
    with pytest.warns(UserWarning, match="not pruning"):
        ls.MagnitudePruner(pattern="2:4").apply(model, 0.25)  # half of all groups
    # brute force: groups ranked by the magnitude 2:4 removes, (loss, layer, index)
    ranked = sorted(
        (loss(g), layer, index)
        for layer, w in enumerate(weights)
        for index, g in enumerate(groups(w).tolist())
    )
    total = len(ranked)
    chosen = {(layer, index) for _, layer, index in ranked[: round(0.5 * total)]}
    for layer, i in enumerate((0, 2)):
        live = (groups(model[i].weight) != 0).sum(1)
        pruned = {index for index, n in enumerate(live.tolist()) if n <= 2}
        assert pruned == {index for lay, index in chosen if lay == layer}
    n = sum(w.numel() for w in weights)
    zeros = sum(int((model[i].weight == 0).sum()) for i in (0, 2))
    assert zeros == 2 * round(0.5 * total) == round(0.25 * n)


def test_uniform_prunes_the_same_fraction_of_groups_per_layer_and_is_monotone() -> None:
    model = make_model()
    pruner = ls.MagnitudePruner(pattern="2:4", allocation="uniform")
    with pytest.warns(UserWarning, match="not pruning"):
        pruner.apply(model, 0.25)
    first = [(groups(model[i].weight) != 0).sum(1) <= 2 for i in (0, 2)]
    # 16 · 9 · 4 = 576 and 64 · 64 = 4096 groups: half of each
    assert [int(f.sum()) for f in first] == [288, 2048]
    pruner.apply(model, 0.375)  # three quarters of the groups, the first half kept
    second = [(groups(model[i].weight) != 0).sum(1) <= 2 for i in (0, 2)]
    assert [int(s.sum()) for s in second] == [432, 3072]
    assert all(bool((s | ~f).all()) for f, s in zip(first, second, strict=True))


def test_pattern_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match=r"`pattern` must be 'N:M' with 1 <= N < M .*got '4:2'"):
        ls.MagnitudePruner(pattern="4:2")
    with pytest.raises(ValueError, match="not with structured=True"):
        ls.MagnitudePruner(pattern="2:4", structured=True)
    with pytest.raises(ValueError, match="takes allocation 'global' or 'uniform', got 'erk'"):
        ls.MagnitudePruner(pattern="2:4", allocation="erk")
    with pytest.raises(ValueError, match=r"at most 0.5 of the weights can be pruned, got .*0.6"):
        ls.MagnitudePruner(pattern="2:4", include=["^2$"]).apply(make_model(), 0.6)


def test_the_semi_structured_layout_rules_on_the_masks() -> None:
    model = nn.Sequential(nn.Linear(128, 64), nn.Linear(64, 96).half())
    ls.MagnitudePruner(pattern="2:4").apply(model, 0.5)
    for layer in model:
        w = layer.weight
        rows_min, cols_min = SEMI_STRUCTURED_MIN[w.dtype]
        # what to_sparse_semi_structured checks: 2-D, contiguous, each dimension a
        # multiple of the dtype's minimum, and 2:4 in every group of 4 along a row
        assert w.dim() == 2
        assert w.is_contiguous()
        assert w.shape[0] % rows_min == 0
        assert w.shape[1] % cols_min == 0
        assert bool(conforms(w, (2, 4)))
    assert kernel_problem(torch.zeros(10, 64), (2, 4)) is not None
    # a conv's groups run along its input channels: 32 cut into groups of 4, 3 do not (the
    # old layout grouped 3 · 3 · 3 = 27 weights of a row, no runtime's)
    assert kernel_problem(torch.zeros(64, 32, 3, 3), (2, 4)) is None
    assert "3 input channels are not a multiple of 4" in (
        kernel_problem(torch.zeros(64, 3, 3, 3), (2, 4)) or ""
    )
    # 2:4 on a conv: ASP's rule, output and input channels multiples of (8, 16)
    assert "not multiples of (8, 16)" in (kernel_problem(torch.zeros(64, 8, 3, 3), (2, 4)) or "")
    assert "not multiples of (8, 16)" in (kernel_problem(torch.zeros(12, 16, 1, 1), (2, 4)) or "")
    assert kernel_problem(torch.zeros(64, 8, 3, 3), (1, 4)) is None  # other N:M: C % M only


@pytest.mark.skipif(not torch.cuda.is_available(), reason="to_sparse_semi_structured needs CUDA")
def test_the_masks_convert_to_semi_structured_on_cuda() -> None:  # pragma: no cover
    layer = nn.Linear(128, 64).half().cuda()
    ls.MagnitudePruner(pattern="2:4").apply(nn.Sequential(layer), 0.5)
    sparse = torch.sparse.to_sparse_semi_structured(layer.weight.detach())
    x = torch.randn(32, 128, dtype=torch.half, device="cuda")
    torch.testing.assert_close(torch.mm(x, sparse.t()), x @ layer.weight.detach().t())


def test_two_four_in_a_fit_with_a_checkpoint_resume(tmp_path: Path) -> None:
    from tests.fits import Wide

    # fc1 (64 × 1024) fits the fp32 2:4 kernels; the other layers are not included
    callback, checkpoint = two_four_fit_parts(tmp_path, ["fc1"])
    quiet_trainer(tmp_path, [callback, checkpoint], 1, enable_checkpointing=True).fit(Wide())
    callback, checkpoint = two_four_fit_parts(tmp_path, ["fc1"])
    model = Wide()
    trainer = quiet_trainer(tmp_path, [callback, checkpoint], 3, enable_checkpointing=True)
    trainer.fit(model, ckpt_path=str(tmp_path / "last.ckpt"))
    # cubic: 0.5 - 0.5 (1 - t/2)^3 = 0.4375 after 1 epoch, 0.5 after 2: 87.5% then all groups
    assert [p.pruned_sparsity for p in callback.history] == pytest.approx([0.0, 0.4375, 0.5, 0.5])
    assert bool(conforms(model.fc1.weight, (2, 4)))  # held through the resume and training
