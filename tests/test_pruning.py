import copy
import math
import re
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from lightning_sparsity.pruning import (
    Cubic,
    MagnitudePruner,
    chunks,
    erk_densities,
    kth_smallest_abs,
    masks,
    masks_for_count,
    masks_for_cut,
    masks_for_weighted_target,
    threshold_for_count,
    threshold_for_weighted_target,
)

# ---------------------------------------------------------------- brute force references


def flat(tensors):
    return torch.cat([t.detach().reshape(-1).double() for t in tensors])


def brute_order(tensors, prior=None, scales=None):
    """Indices into the concatenation, pruned first to last: already pruned entries first,
    then by (|x| * scale, tensor index, flat index) -- a stable sort keeps the concatenation
    order (tensor, then flat index) among equal magnitudes."""
    scales = scales or [1.0] * len(tensors)
    score = torch.cat(
        [t.detach().reshape(-1).double().abs() * s for t, s in zip(tensors, scales, strict=True)]
    )
    if prior is not None:
        score[~flat(prior).bool()] = -1.0
    return torch.sort(score, stable=True).indices


def brute_masks(tensors, n_pruned, order):
    keep = torch.ones(sum(t.numel() for t in tensors), dtype=torch.bool)
    keep[order[:n_pruned]] = False
    return list(torch.split(keep, [t.numel() for t in tensors]))


def cat_masks(masks):
    return torch.cat([m.reshape(-1) for m in masks])


def tied_data(dtype, seed=0):
    """Many exact ties and zeros (multiples of 0.5 in [-2, 2]) plus continuous values."""
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randint(-4, 5, (7, 11), generator=g) * 0.5).to(dtype),
        torch.randn(3, 2, 5, generator=g).to(dtype),
        torch.zeros(13, dtype=dtype),
        (torch.randint(-2, 3, (40,), generator=g) * 0.5).to(dtype),
    ]


DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.fixture(params=["bincount", "sync-free"])
def histogram_path(request, monkeypatch):
    """Run on CPU both the bincount path and the one used on CUDA (no host syncs)."""
    monkeypatch.setattr(chunks, "_HOST_DEVICES", ("cpu",) if request.param == "bincount" else ())


# ---------------------------------------------------------------- select.py


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [0, 1, 13, 14, 60, 100, 130, 159, 160])
def test_masks_for_count_equal_brute_force(dtype, k, histogram_path):
    tensors = tied_data(dtype)
    assert sum(t.numel() for t in tensors) == 160  # 77 + 30 + 13 + 40
    masks = masks_for_count(tensors, k)
    expected = brute_masks(tensors, k, brute_order(tensors))
    assert [m.shape for m in masks] == [t.shape for t in tensors]
    assert torch.equal(cat_masks(masks), cat_masks(expected))
    assert int((~cat_masks(masks)).sum()) == k


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 14, 100, 160])
def test_kth_smallest_abs_equals_kthvalue(dtype, k):
    tensors = tied_data(dtype, seed=1)
    value = kth_smallest_abs(tensors, k)
    assert value.dtype == dtype
    assert float(value) == float(torch.kthvalue(flat(tensors).abs(), k).values)


def test_large_random_float32_equals_kthvalue():
    g = torch.Generator().manual_seed(3)
    tensors = [torch.randn(n, generator=g) for n in (100_000, 30_000, 5)]
    k = 104_001
    assert float(kth_smallest_abs(tensors, k)) == float(
        torch.kthvalue(flat(tensors).abs(), k).values
    )
    masks = masks_for_count(tensors, k)
    assert torch.equal(cat_masks(masks), cat_masks(brute_masks(tensors, k, brute_order(tensors))))


def test_mixed_dtypes_compare_exactly():
    # 1 + 2**-20 is a float32 but no float16: in float16 it would tie with 1.0
    tensors = [torch.tensor([1.0, 3.0], dtype=torch.float16), torch.tensor([1 + 2**-20, 0.5])]
    assert threshold_for_count(tensors, 2).threshold == 1.0
    masks = masks_for_count(tensors, 3)
    assert [m.tolist() for m in masks] == [[False, True], [False, False]]


@pytest.mark.parametrize("k", [27, 28, 40, 90, 107])
def test_already_pruned_entries_go_first(k, histogram_path):
    tensors = tied_data(torch.float32, seed=2)[:2]
    g = torch.Generator().manual_seed(5)
    prior = [torch.rand(t.shape, generator=g) > 0.25 for t in tensors]
    n_prior = sum(int((~p).sum()) for p in prior)
    assert (n_prior, sum(t.numel() for t in tensors)) == (27, 107)
    masks = masks_for_count(tensors, k, masks=prior)
    expected = brute_masks(tensors, k, brute_order(tensors, prior))
    assert torch.equal(cat_masks(masks), cat_masks(expected))
    # monotone: everything pruned before is still pruned
    assert not (cat_masks(masks) & ~cat_masks(prior)).any()


def test_scales_multiply_scores():
    tensors = tied_data(torch.float32, seed=4)[:2]
    masks = masks_for_count(tensors, 50, scales=[0.25, 2.0])
    expected = brute_masks(tensors, 50, brute_order(tensors, scales=[0.25, 2.0]))
    assert torch.equal(cat_masks(masks), cat_masks(expected))


def brute_weighted(tensors, weights, target, order):
    """The prefix of `order` a weighted cut must prune: n* = the first prefix whose weight
    reaches the target (capped at the total); the prefix before it if strictly closer."""
    per_entry = torch.cat(
        [
            torch.full((t.numel(),), w, dtype=torch.float64)
            for t, w in zip(tensors, weights, strict=True)
        ]
    )
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), per_entry[order].cumsum(0)])
    goal = min(target, float(cum[-1]))
    n_star = int(torch.nonzero(cum >= goal)[0])
    n = n_star - 1 if n_star > 0 and goal - cum[n_star - 1] < cum[n_star] - goal else n_star
    return n, cum


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("target", [0.0, 0.25, 1.0, 7.5, 40.0, 101.25, 250.0, 1e6])
def test_weighted_target_equals_brute_force(dtype, target, histogram_path):
    tensors = tied_data(dtype, seed=6)
    weights = [1.0, 2.5, 0.0, 0.75]  # dyadic: every partial sum is exact
    order = brute_order(tensors)
    n, cum = brute_weighted(tensors, weights, target, order)
    masks = masks_for_weighted_target(tensors, weights, target)
    assert torch.equal(cat_masks(masks), cat_masks(brute_masks(tensors, n, order)))
    # closest: no prefix of the order is nearer to the target
    got = sum(w * int((~m).sum()) for w, m in zip(weights, masks, strict=True))
    assert abs(got - min(target, float(cum[-1]))) == float((cum - min(target, cum[-1])).abs().min())


@pytest.mark.parametrize("k", [1, 60, 61, 159])
def test_cut_reports_threshold_and_ties(k):
    tensors = tied_data(torch.float32, seed=8)
    cut = threshold_for_count(tensors, k)
    magnitudes = flat(tensors).abs()
    t = float(torch.kthvalue(magnitudes, k).values)
    # of the entries tied at the k-th value, those needed to reach k are pruned
    assert (cut.threshold, cut.tied, cut.ties) == (
        t,
        int((magnitudes == t).sum()),
        k - int((magnitudes < t).sum()),
    )
    assert torch.equal(
        cat_masks(masks_for_cut(tensors, cut)), cat_masks(masks_for_count(tensors, k))
    )


def test_weighted_cut_and_masks_for_cut_agree():
    tensors = tied_data(torch.float32, seed=9)
    cut = threshold_for_weighted_target(tensors, [1.0, 2.0, 0.5, 0.25], 33.0)
    assert torch.equal(
        cat_masks(masks_for_cut(tensors, cut)),
        cat_masks(masks_for_weighted_target(tensors, [1.0, 2.0, 0.5, 0.25], 33.0)),
    )


def test_weightless_entries_are_never_worth_pruning():
    tensors = tied_data(torch.float32, seed=10)
    masks = masks_for_weighted_target(tensors, [0.0] * 4, 10.0)
    assert bool(cat_masks(masks).all())


def test_weighted_target_with_already_pruned():
    tensors = tied_data(torch.float32, seed=7)[:2]
    prior = [
        torch.ones_like(tensors[0], dtype=torch.bool),
        torch.zeros_like(tensors[1], dtype=torch.bool),
    ]
    weights = [1.0, 3.0]
    # all 30 entries of tensor 1 are pruned already: 30 * 3.0 = 90 of the target
    order = brute_order(tensors, prior)
    n, _ = brute_weighted(tensors, weights, 90.0 + 20.0, order)
    assert n == 30 + 20
    masks = masks_for_weighted_target(tensors, weights, 110.0, masks=prior)
    assert torch.equal(cat_masks(masks), cat_masks(brute_masks(tensors, n, order)))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda t: masks_for_count(t, 161),
            ValueError,
            r"`k` must be an int in \[0, 160\].*got 161",
        ),
        (lambda t: masks_for_count(t, -1), ValueError, r"`k` must be an int in \[0, 160\].*got -1"),
        (
            lambda t: masks_for_count(
                t, 5, masks=[torch.zeros(7, 11, dtype=torch.bool), None, None, None]
            ),
            ValueError,
            r"`k` must be an int in \[77, 160\]",
        ),
        (lambda t: kth_smallest_abs(t, 0), ValueError, r"`k` must be an int in \[1, 160\], got 0"),
        (
            lambda t: masks_for_count([torch.arange(3)], 1),
            TypeError,
            r"tensors\[0\] must be float16",
        ),
        (lambda t: masks_for_count([], 0), ValueError, r"at least one tensor"),
        (
            lambda t: masks_for_count(t, 1, scales=[1.0]),
            ValueError,
            r"`scales` must have one entry per tensor \(4\), got 1",
        ),
        (
            lambda t: masks_for_count(t, 1, scales=[1.0, 0.0, 1.0, 1.0]),
            ValueError,
            r"`scales\[1\]` must be finite and > 0, got 0\.0",
        ),
        (
            lambda t: masks_for_count(
                t, 1, masks=[torch.ones(3, dtype=torch.bool), None, None, None]
            ),
            ValueError,
            r"masks\[0\] must have the shape of tensors\[0\] \(7, 11\), got \(3,\)",
        ),
        (
            lambda t: masks_for_weighted_target(t, [1.0, -1.0, 0.0, 0.0], 3.0),
            ValueError,
            r"`weights\[1\]` must be finite and >= 0, got -1\.0",
        ),
        (
            lambda t: masks_for_weighted_target(t, [1.0] * 4, math.inf),
            ValueError,
            r"`target` must be a finite number, got inf",
        ),
        (
            lambda t: masks_for_count([torch.tensor([1.0, math.nan])], 1),
            ValueError,
            r"non-finite values: found 1 inf/NaN",
        ),
        (
            lambda t: masks_for_count([torch.tensor([-math.inf, 2.0, 1.0])], 1),
            ValueError,
            r"non-finite values: found 1 inf/NaN",
        ),
    ],
)
def test_select_errors(call, error, match):
    with pytest.raises(error, match=match):
        call(tied_data(torch.float32))


# ---------------------------------------------------------------- the pruner


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2)
        )
        self.norm = nn.BatchNorm1d(64)
        self.head = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.head(self.norm(self.features(x).flatten(1)))


LAYERS = ["features.0", "features.2", "head.0", "head.2"]


def make_net(seed=0):
    torch.manual_seed(seed)
    return Net()


def weights(model, names=LAYERS):
    modules = dict(model.named_modules())
    return [modules[n].weight for n in names]


def zeros(t):
    return int((t == 0).sum())


def test_targets_default_types_in_registration_order():
    model = make_net()
    assert [(fqn, name) for fqn, _, name in MagnitudePruner().targets(model)] == [
        (n, "weight") for n in LAYERS
    ]
    assert [
        f for f, _, _ in MagnitudePruner(keep_first_dense=True, keep_last_dense=True).targets(model)
    ] == LAYERS[1:3]
    assert [f for f, _, _ in MagnitudePruner(include=[r"^head\."]).targets(model)] == LAYERS[2:]
    assert [f for f, _, _ in MagnitudePruner(exclude=[r"\.0$"]).targets(model)] == [
        "features.2",
        "head.2",
    ]
    assert [f for f, _, _ in MagnitudePruner(include_types=["BatchNorm1d"]).targets(model)] == [
        "norm"
    ]


def test_targets_include_subclasses_and_tied_weights_once():
    class MyLinear(nn.Linear):
        pass

    model = nn.Sequential(nn.Linear(4, 4), MyLinear(4, 4), nn.Linear(4, 4))
    model[2].weight = model[0].weight  # tied
    # inplace masks write the zeros into the shared tensor: every reader sees them, so the
    # weight is pruned once, under its first owner
    pruner = MagnitudePruner()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [f for f, _, _ in pruner.targets(model)] == ["0", "1"]
    pruner.apply(model, 0.5)
    assert zeros(model[2].weight) == zeros(model[0].weight) > 0
    # a prune mask (forward pre-hook) on one owner would not reach the other: left out
    reparametrized = MagnitudePruner(mask_storage="prune")
    with pytest.warns(
        UserWarning, match=r"not pruning \['0.weight', '2.weight'\]: tied to several modules"
    ):
        assert [f for f, _, _ in reparametrized.targets(model)] == ["1"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per pruner
        assert [f for f, _, _ in reparametrized.targets(model)] == ["1"]


def test_non_contiguous_tensors_use_logical_flat_order():
    g = torch.Generator().manual_seed(11)
    tensors = [(torch.randint(-3, 4, (6, 5), generator=g) * 0.5).t(), torch.randn(4, generator=g)]
    assert not tensors[0].is_contiguous()
    masks = masks_for_count(tensors, 17)
    assert torch.equal(cat_masks(masks), cat_masks(brute_masks(tensors, 17, brute_order(tensors))))


@pytest.mark.parametrize(
    ("storage", "mask"), [("inplace", "weight_keep"), ("prune", "weight_mask")]
)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_pruner_keeps_the_weight_dtype(dtype, storage, mask):
    model = make_net().to(dtype)
    before = [w.detach().clone() for w in weights(model)]
    MagnitudePruner(mask_storage=storage).apply(model, 0.65)
    assert {w.dtype for w in weights(model)} == {dtype}
    # inplace: 1-byte bool masks; prune: masks in the weight's dtype, as torch's
    assert {
        getattr(m, mask).dtype for m in dict(model.named_modules()).values() if hasattr(m, mask)
    } == {torch.bool if storage == "inplace" else dtype}
    k = round(0.65 * 3736)
    expected = brute_masks(before, k, brute_order(before))
    assert torch.equal(cat_masks([w != 0 for w in weights(model)]), cat_masks(expected))


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.8, 0.999])
def test_global_reaches_exact_sparsity_like_brute_force(sparsity):
    model = make_net()
    before = [w.detach().clone() for w in weights(model)]
    n = sum(w.numel() for w in before)
    MagnitudePruner(min_density=0.0).apply(model, sparsity)  # no per-layer floor
    k = round(sparsity * n)
    after = weights(model)
    assert sum(zeros(w) for w in after) == k
    expected = brute_masks(before, k, brute_order(before))
    assert torch.equal(cat_masks([w != 0 for w in after]), cat_masks(expected))


def test_uniform_reaches_exact_sparsity_per_layer():
    model = make_net()
    MagnitudePruner(allocation="uniform").apply(model, 0.55)
    # 216 * .55 = 118.8, 1152 * .55 = 633.6, 2048 * .55 = 1126.4, 320 * .55 = 176
    assert [zeros(w) for w in weights(model)] == [119, 634, 1126, 176]


def test_erk_densities_match_rigl_formula():
    # no layer saturates: eps = d * sum(n) / sum(raw * n), density_l = eps * (sum dims / prod dims)
    eps = 0.1 * 20000 / (200 / 10000 * 10000 + 250 / 10000 * 10000)
    assert erk_densities([(100, 100), (50, 200)], 0.1) == pytest.approx([eps * 0.02, eps * 0.025])
    # the (10, 20) layer would get 0.15 * 0.5 * 11000 / 106 = 7.8 > 1: kept dense, and the
    # other keeps the rest: (0.5 * 11000 - 200) / 10800
    assert erk_densities([(10, 20), (30, 40, 3, 3)], 0.5) == pytest.approx([1.0, 5300 / 10800])
    assert erk_densities([(10, 20), (30, 40, 3, 3)], 1.0) == [1.0, 1.0]
    with pytest.raises(ValueError, match=r"`density` must be in \(0, 1\], got 0\.0"):
        erk_densities([(10, 20)], 0.0)
    with pytest.raises(
        ValueError, match=r"every shape must be non-empty, got \[\(10, 20\), \(\)\]"
    ):
        erk_densities([(10, 20), ()], 0.5)


def test_erk_allocation_prunes_per_layer_counts():
    model = make_net()
    shapes = [tuple(w.shape) for w in weights(model)]
    densities = erk_densities(shapes, 1 - 0.7)
    MagnitudePruner(allocation="erk").apply(model, 0.7)
    expected = [round((1 - d) * math.prod(s)) for d, s in zip(densities, shapes, strict=True)]
    assert [zeros(w) for w in weights(model)] == expected
    # the total lands within rounding of the target
    assert abs(sum(expected) - 0.7 * sum(math.prod(s) for s in shapes)) <= len(shapes) / 2


def test_first_and_last_layer_kept_dense():
    model = make_net()
    pruner = MagnitudePruner(keep_first_dense=True, keep_last_dense=True)
    pruner.apply(model, 0.6)
    first, middle1, middle2, last = weights(model)
    assert (zeros(first), zeros(last)) == (0, 0)
    assert not hasattr(model.features[0], "weight_mask")
    assert zeros(middle1) + zeros(middle2) == round(0.6 * (1152 + 2048))


def effective_zeros_mask(model):
    return [w.detach() == 0 for w in weights(model)]


def test_prune_masks_survive_real_optimizer_steps():
    model = make_net()
    pruner = MagnitudePruner(mask_storage="prune")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))
    for _ in range(2):  # momentum builds up before pruning
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    pruner.apply(model, 0.5)
    # the same optimizer goes on: weight_orig is the very Parameter it holds, momentum and all
    assert model.features[0].weight_orig is optimizer.param_groups[0]["params"][0]
    pruned = effective_zeros_mask(model)
    orig_before = [m.weight_orig.detach().clone() for m in (model.features[0], model.head[2])]
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    model(x)  # the forward pre-hook refreshes the effective weights
    for was_pruned, w in zip(pruned, weights(model), strict=True):
        assert (w.detach()[was_pruned] == 0).all()
    # weight decay moved the hidden originals of pruned entries: only the mask keeps them at 0
    orig_after = [model.features[0].weight_orig, model.head[2].weight_orig]
    moved = [
        int((a.detach() != b)[p].sum())
        for a, b, p in zip(orig_after, orig_before, (pruned[0], pruned[3]), strict=True)
    ]
    assert min(moved) > 0
    assert sum(zeros(w) for w in weights(model)) == round(0.5 * 3736)


def sgd_steps(model, optimizer, n):
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))
    for _ in range(n):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def moved_zeros(pruned, model):
    """How many pruned entries are no longer zero."""
    return sum(int((w.detach()[p] != 0).sum()) for p, w in zip(pruned, weights(model), strict=True))


@pytest.mark.parametrize("attach", [True, False])
def test_inplace_masks_through_optimizer_steps(attach):
    torch.manual_seed(0)
    model = make_net()
    pruner = MagnitudePruner()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    sgd_steps(model, optimizer, 2)  # momentum builds up before pruning
    pruner.apply(model, 0.5)
    pruned = effective_zeros_mask(model)
    if attach:
        handles = pruner.attach(optimizer)
    sgd_steps(model, optimizer, 3)
    moved = sum(
        int((w.detach()[p] != 0).sum()) for p, w in zip(pruned, weights(model), strict=True)
    )
    if not attach:  # momentum moves the zeros: the hooks are what keeps them
        assert moved > 0
        return
    assert moved == 0
    assert sum(zeros(w) for w in weights(model)) == round(0.5 * 3736)
    # the gradients of pruned entries were zeroed before each step, and attaching cleared
    # the momentum they had built up
    for p, w in zip(pruned, weights(model), strict=True):
        assert (w.grad[p] == 0).all()
        assert (optimizer.state[w]["momentum_buffer"][p] == 0).all()
    # attached, a later prune clears the momentum of what it prunes: its zeros stay
    pruner.apply(model, 0.6)
    pruned = effective_zeros_mask(model)
    sgd_steps(model, optimizer, 2)
    assert moved_zeros(pruned, model) == 0
    for handle in handles:
        handle.remove()
    # detached, the next prune leaves the momentum of what it prunes, which moves it
    pruner.apply(model, 0.7)
    pruned = effective_zeros_mask(model)
    sgd_steps(model, optimizer, 1)
    assert moved_zeros(pruned, model) > 0


def test_prune_remove_after_our_pruning_keeps_zeros_in_place():
    model = make_net()
    pruner = MagnitudePruner()
    pruner.apply(model, 0.75)
    masks = pruner.masks(model)
    assert list(masks) == [f"{n}.weight" for n in LAYERS]
    generation = pruner.generation
    pruner.make_permanent(model)
    assert not prune.is_pruned(model)
    assert pruner.masks(model) == {}
    assert pruner.generation == generation + 1  # the masks changed: a cached count is stale
    for name, w in zip(LAYERS, weights(model), strict=True):
        assert isinstance(w, nn.Parameter)
        assert torch.equal(w.detach() != 0, masks[f"{name}.weight"])
    assert sum(zeros(w) for w in weights(model)) == round(0.75 * 3736)
    assert not any(n.endswith(("_orig", "_mask")) for n in model.state_dict())


@pytest.mark.parametrize("storage", ["inplace", "prune"])
def test_reprune_higher_is_monotone_and_does_not_stack_hooks(storage):
    model = make_net()
    pruner = MagnitudePruner(mask_storage=storage)
    pruner.apply(model, 0.5)
    first = effective_zeros_mask(model)
    effective = [w.detach().clone() for w in weights(model)]
    # the trained values of pruned entries grow large (the hidden originals, or the zeros
    # moved by an optimizer without enforce): they must stay pruned anyway
    with torch.no_grad():
        for module in (model.features[0], model.head[0]):
            trained, mask = masks.trained_and_mask(module, "weight")
            trained[mask == 0] = 100.0
    pruner.apply(model, 0.7)
    second = effective_zeros_mask(model)
    assert all((b | ~a).all() for a, b in zip(first, second, strict=True))  # a pruned -> b pruned
    # brute force: the old zeros first, then the live weights by magnitude
    k = round(0.7 * 3736)
    expected = brute_masks(effective, k, brute_order(effective, prior=[~z for z in first]))
    assert torch.equal(cat_masks([~z for z in second]), cat_masks(expected))
    # one prune.Identity hook per pruned module, not a growing PruningContainer
    hooks = {
        name: [
            type(h) for h in m._forward_pre_hooks.values() if isinstance(h, prune.BasePruningMethod)
        ]
        for name, m in model.named_modules()
    }
    expected = {n: [prune.Identity] for n in LAYERS} if storage == "prune" else {}
    assert {n: h for n, h in hooks.items() if h} == expected


def test_lower_target_warns_and_keeps_masks():
    model = make_net()
    pruner = MagnitudePruner()
    pruner.apply(model, 0.6)
    before = effective_zeros_mask(model)
    with pytest.warns(UserWarning, match="monotone"):
        pruner.apply(model, 0.2)
    assert all(torch.equal(a, b) for a, b in zip(before, effective_zeros_mask(model), strict=True))


@pytest.mark.parametrize("storage", ["inplace", "prune"])
def test_torch_pruned_parameter_is_repruned(storage):
    model = make_net()
    prune.l1_unstructured(model.head[0], "weight", amount=0.9)
    already = model.head[0].weight_mask == 0
    MagnitudePruner(mask_storage=storage).apply(model, 0.5)
    assert (model.head[0].weight.detach()[already] == 0).all()
    assert sum(zeros(w) for w in weights(model)) == round(0.5 * 3736)
    hooks = [
        h
        for h in model.head[0]._forward_pre_hooks.values()
        if isinstance(h, prune.BasePruningMethod)
    ]
    # prune: torch's mask replaced in place, not stacked; inplace: folded into the weight
    assert len(hooks) == (1 if storage == "prune" else 0)


def test_state_dict_round_trip_through_a_file(tmp_path):
    model = make_net()
    fresh = copy.deepcopy(model)
    pruner = MagnitudePruner(allocation="uniform", mask_storage="prune")
    pruner.apply(model, 0.4)
    torch.save(pruner.state_dict(), tmp_path / "pruner.pt")
    other = MagnitudePruner(allocation="uniform", mask_storage="prune")
    other.load_state_dict(torch.load(tmp_path / "pruner.pt"))
    assert other.last_sparsity == 0.4
    other.restore(fresh)  # prune states carry the masks
    for a, b in zip(weights(model), weights(fresh), strict=True):
        assert torch.equal(a, b)
    assert other.state_dict()["masks"].keys() == pruner.state_dict()["masks"].keys()
    # a state from before masks were saved loads with defaults
    older = MagnitudePruner()
    older.load_state_dict({})
    assert older.last_sparsity is None
    assert older.state_dict() == {"last_sparsity": None}


def test_inplace_state_names_the_masked_weights_whose_zeros_are_their_masks(tmp_path):
    model = make_net()
    pruner = MagnitudePruner(allocation="uniform")
    pruner.apply(model, 0.4)
    state = pruner.state_dict()
    assert state == {
        "last_sparsity": 0.4,
        "mask_storage": "inplace",
        "masked": [f"{n}.weight" for n in LAYERS],
    }
    # a checkpoint holds the weights with their zeros; the masks come back from them
    torch.save({"model": model.state_dict(), "pruner": state}, tmp_path / "ckpt.pt")
    saved = torch.load(tmp_path / "ckpt.pt")
    fresh = make_net()
    fresh.load_state_dict(saved["model"])
    other = MagnitudePruner(allocation="uniform")
    other.load_state_dict(saved["pruner"])
    other.restore(fresh)
    assert {k: v.tolist() for k, v in other.masks(fresh).items()} == {
        k: v.tolist() for k, v in pruner.masks(model).items()
    }
    # and a prune state restores into inplace masks (storage is the pruner's choice)
    reparametrized = MagnitudePruner(allocation="uniform", mask_storage="prune")
    reparametrized.apply(model2 := make_net(), 0.4)
    inplace = MagnitudePruner(allocation="uniform")
    inplace.load_state_dict(reparametrized.state_dict())
    target = make_net()
    inplace.restore(target)
    assert [zeros(w) for w in weights(target)] == [zeros(w) for w in weights(model2)]
    assert not prune.is_pruned(target)


def test_step_follows_the_schedule():
    model = make_net()
    pruner = MagnitudePruner(
        schedule=Cubic(final_sparsity=0.8, start_epoch=0, end_epoch=4, frequency=2)
    )
    applied = [pruner.step(model, epoch) for epoch in range(6)]
    # 0.8 + (0 - 0.8) * (1 - 2/4)**3 = 0.7 at epoch 2
    assert applied == [0.0, None, pytest.approx(0.7), None, 0.8, None]
    assert sum(zeros(w) for w in weights(model)) == round(0.8 * 3736)


def test_a_parameters_function_of_the_wrong_arity_and_meta_weights_are_named():
    # were "<lambda>() takes 1 positional argument but 2 were given" at the first prune, and
    # "Cannot copy out of meta tensor; no data!" from inside the selection
    with pytest.raises(
        ValueError, match=r"`parameters` as a function must take \(name, parameter\)"
    ):
        MagnitudePruner(parameters=lambda name: True)
    MagnitudePruner(parameters=lambda name, p: p.dim() > 1)  # two arguments: fine
    meta = nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 2)).to("meta")
    with pytest.raises(
        ValueError, match=r"cannot rank weights on the meta device.*: 0.weight, 1.weight"
    ):
        MagnitudePruner().apply(meta, 0.5)


@pytest.mark.parametrize("epoch", [-1, 2.5, "3", True, None])
def test_step_refuses_an_epoch_that_is_not_a_count(epoch):
    # was: -1 and 2.5 returned None (nothing pruned, nothing said), "3" a TypeError inside
    # the schedule's comparison
    model = make_net()
    pruner = MagnitudePruner(schedule=Cubic(final_sparsity=0.8, start_epoch=0, end_epoch=4))
    with pytest.raises(
        ValueError,
        match=rf"MagnitudePruner.step: `epoch` must be an int >= 0, got {re.escape(repr(epoch))}",
    ):
        pruner.step(model, epoch)
    assert sum(zeros(w) for w in weights(model)) == 0


def rows_all_or_nothing(w):
    rows = w.detach().reshape(w.shape[0], -1)
    return bool(((rows != 0).all(1) | (rows == 0).all(1)).all())


def test_structured_uniform_removes_the_smallest_rows_per_layer():
    model = make_net()
    before = [w.detach().clone() for w in weights(model)]
    MagnitudePruner(allocation="uniform", structured=True, norm=2.0).apply(model, 0.5)
    for b, w in zip(before, weights(model), strict=True):
        assert rows_all_or_nothing(w)
        # the round(0.5 * rows) smallest L2 rows, ties by row index
        norms = b.reshape(b.shape[0], -1).norm(dim=1)
        smallest = torch.sort(norms, stable=True).indices[: round(0.5 * b.shape[0])]
        dead = (w.detach().reshape(w.shape[0], -1) == 0).all(1)
        assert torch.equal(torch.nonzero(dead).squeeze(1), smallest.sort().values)


def test_structured_global_lands_closest_to_the_entry_count():
    model = make_net()
    before = [w.detach().clone() for w in weights(model)]
    MagnitudePruner(structured=True, norm=2.0).apply(model, 0.5)
    # brute force: rows of all layers by ||row||_2 / sqrt(row size), pruned until the pruned
    # entries are closest to round(0.5 * 3736) = 1868
    row_sizes = [b[0].numel() for b in before]
    scores = [
        b.reshape(b.shape[0], -1).norm(dim=1) / math.sqrt(s)
        for b, s in zip(before, row_sizes, strict=True)
    ]
    order = brute_order(scores)
    n, _ = brute_weighted(scores, [float(s) for s in row_sizes], 1868.0, order)
    expected_rows = brute_masks(scores, n, order)
    got_rows = [(w.detach().reshape(w.shape[0], -1) != 0).any(1) for w in weights(model)]
    assert torch.equal(cat_masks(got_rows), cat_masks(expected_rows))
    assert all(rows_all_or_nothing(w) for w in weights(model))
    # asking for less afterwards changes nothing
    with pytest.warns(UserWarning, match="monotone"):
        MagnitudePruner(structured=True, norm=2.0).apply(model, 0.2)
    assert torch.equal(
        cat_masks([w != 0 for w in weights(model)]),
        cat_masks(
            [
                r.reshape(-1, *[1] * (b.dim() - 1)).expand_as(b)
                for r, b in zip(expected_rows, before, strict=True)
            ]
        ),
    )


def test_structured_flop_target_removes_rows_closest_to_the_target():
    model = make_net()
    before = [w.detach().clone() for w in weights(model)]
    costs = {
        "features.0.weight": 36.0,
        "features.2.weight": 16.0,
        "head.0.weight": 1.0,
        "head.2.weight": 1.0,
    }
    dense = 36.0 * 216 + 16.0 * 1152 + 2048 + 320  # = 28576
    achieved = MagnitudePruner(structured=True).apply_flop_target(model, 0.5 * dense, costs)
    # brute force: rows by ||row||_1 / row size, each row removing cost * row size FLOPs
    row_sizes = [b[0].numel() for b in before]
    scores = [
        b.reshape(b.shape[0], -1).norm(p=1, dim=1) / s
        for b, s in zip(before, row_sizes, strict=True)
    ]
    order = brute_order(scores)
    row_costs = [c * s for c, s in zip(costs.values(), row_sizes, strict=True)]
    n, _ = brute_weighted(scores, row_costs, 0.5 * dense, order)
    got_rows = [(w.detach().reshape(w.shape[0], -1) != 0).any(1) for w in weights(model)]
    assert torch.equal(cat_masks(got_rows), cat_masks(brute_masks(scores, n, order)))
    assert all(rows_all_or_nothing(w) for w in weights(model))
    assert achieved == sum(
        c * int((w != 0).sum()) for c, w in zip(costs.values(), weights(model), strict=True)
    )
    assert abs(achieved - 0.5 * dense) <= max(row_costs) / 2


def test_flops_allocation_prunes_costly_layers_harder():
    model = make_net()
    before = [w.detach().clone() for w in weights(model)]
    costs = {
        "features.0.weight": 72.0,
        "features.2.weight": 32.0,
        "head.0.weight": 1.0,
        "head.2.weight": 1.0,
    }
    MagnitudePruner(allocation="flops", min_density=0.0).apply(model, 0.5, flops_per_nonzero=costs)
    # brute force: scores |w| * mean / cost, mean = sum(cost * numel) / sum(numel)
    numels = [b.numel() for b in before]
    cost = list(costs.values())
    mean = sum(c * n for c, n in zip(cost, numels, strict=True)) / sum(numels)
    order = brute_order(before, scales=[mean / c for c in cost])
    expected = brute_masks(before, round(0.5 * 3736), order)
    assert torch.equal(cat_masks([w != 0 for w in weights(model)]), cat_masks(expected))
    # and it removes more FLOPs than plain global magnitude pruning at the same sparsity
    plain = make_net()
    MagnitudePruner().apply(plain, 0.5)

    def flops(m):
        return sum(c * int((w != 0).sum()) for c, w in zip(cost, weights(m), strict=True))

    assert flops(model) < flops(plain)


def test_apply_flop_target_lands_within_one_weight_of_brute_force():
    model = make_net()
    before = [w.detach().clone() for w in weights(model)]
    # head.2 is left out of the cost map: it costs nothing and is cut at the same threshold
    costs = {"features.0.weight": 36.0, "features.2.weight": 16.0, "head.0.weight": 1.0}
    fixed = 500.0
    dense = fixed + 36.0 * 216 + 16.0 * 1152 + 1.0 * 2048  # = 28756
    target = 0.3 * dense
    achieved = MagnitudePruner().apply_flop_target(model, target, costs, fixed_flops=fixed)
    # brute force over the sorted weights: the prefix whose removed FLOPs are closest
    order = brute_order(before)
    n, _ = brute_weighted(before, [36.0, 16.0, 1.0, 0.0], dense - target, order)
    expected = brute_masks(before, n, order)
    assert torch.equal(cat_masks([w != 0 for w in weights(model)]), cat_masks(expected))
    measured = fixed + sum(
        c * int((w != 0).sum()) for c, w in zip([36.0, 16.0, 1.0], weights(model)[:3], strict=True)
    )
    assert achieved == measured
    assert abs(achieved - target) <= 36.0 / 2  # within half the costliest weight


def test_apply_flop_target_not_above_reaches_the_target_then_fills_the_gap():
    model = make_net()
    before = [w.detach().clone() for w in weights(model)]
    costs = {"features.0.weight": 36.0, "features.2.weight": 16.0, "head.0.weight": 1.0}
    dense = 36.0 * 216 + 16.0 * 1152 + 1.0 * 2048  # = 28256
    target = 0.3 * dense
    achieved = MagnitudePruner().apply_flop_target(model, target, costs, not_above=True)
    # brute force: walk the sorted weights, removing FLOPs until dense - removed <= target,
    # then walk back from the largest removed weight, keeping those whose cost still fits
    order = brute_order(before)
    per_entry = torch.cat(
        [torch.full((b.numel(),), c) for b, c in zip(before, [36.0, 16.0, 1.0, 0.0], strict=True)]
    )
    flat_costs = per_entry[order].tolist()
    removed, n = 0.0, 0
    while dense - removed > target:
        removed += flat_costs[n]
        n += 1
    keep = torch.ones(per_entry.numel(), dtype=torch.bool)
    keep[order[:n]] = False
    gap = target - (dense - removed)
    for j in reversed(range(n)):
        if 0 < flat_costs[j] <= gap:
            keep[order[j]] = True
            gap -= flat_costs[j]
    assert torch.equal(cat_masks([w != 0 for w in weights(model)]), keep)
    assert achieved == target - gap
    assert target - 1.0 < achieved <= target  # within the cheapest weight's cost


def test_apply_flop_target_is_monotone_and_warns_when_unreachable():
    model = make_net()
    costs = {"features.0.weight": 36.0, "features.2.weight": 16.0}
    pruner = MagnitudePruner(min_density=0.0)  # tests/test_floors.py: with floors
    first = pruner.apply_flop_target(model, 10_000.0, costs, fixed_flops=100.0)
    zeros_before = effective_zeros_mask(model)
    # a higher target prunes nothing more, quietly, and reports where the model stands
    assert pruner.apply_flop_target(model, 20_000.0, costs, fixed_flops=100.0) == first
    assert all(
        torch.equal(a, b) for a, b in zip(zeros_before, effective_zeros_mask(model), strict=True)
    )
    with pytest.warns(
        UserWarning, match=r"target_flops=50 is below what pruning .* \(100: weight-free ops"
    ):
        achieved = pruner.apply_flop_target(model, 50.0, costs, fixed_flops=100.0)
    assert achieved == 100.0  # every weight that costs FLOPs is gone
    assert zeros(model.features[0].weight) + zeros(model.features[2].weight) == 216 + 1152


def test_apply_flop_target_counts_dense_layers_in_the_map():
    model = make_net()
    pruner = MagnitudePruner(keep_first_dense=True)
    costs = {
        "features.0.weight": 36.0,
        "features.2.weight": 16.0,
        "head.0.weight": 1.0,
        "head.2.weight": 1.0,
    }
    achieved = pruner.apply_flop_target(model, 10_000.0, costs)
    assert zeros(model.features[0].weight) == 0  # kept dense, but its 36 * 216 = 7776 count
    measured = sum(
        c * int((w != 0).sum()) for c, w in zip(costs.values(), weights(model), strict=True)
    )
    assert achieved == measured
    assert abs(achieved - 10_000.0) <= 16.0 / 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"allocation": "random"},
            r"`allocation` must be one of \('global', 'uniform', 'erk', 'flops'\), got 'random'",
        ),
        ({"norm": 0}, r"`norm` must be a number > 0 \(inf allowed\), got 0"),
        ({"structured": "yes"}, r"`structured` must be a bool, got 'yes'"),
        (
            {"include_types": "Linear"},
            r"`include_types` must be a non-empty list of class names, got 'Linear'",
        ),
        ({"include": ["("]}, r"`include` holds an invalid regex '\('"),
        ({"exclude": "head"}, r"`exclude` must be a list of regex strings or None, got 'head'"),
        ({"schedule": 0.5}, r"`schedule` must be a Schedule or None, got 0\.5"),
        (
            {"parameter_name": "weight.x"},
            r"`parameter_name` must be an identifier, got 'weight\.x'",
        ),
        (
            {"allocation": "x", "norm": -1},
            r"`allocation` must be one of .*; `norm` must be a number > 0",
        ),
    ],
)
def test_pruner_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MagnitudePruner(**kwargs)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda m: MagnitudePruner().apply(m, 1.0),
            r"`sparsity` must be a float in \[0, 1\), got 1\.0",
        ),
        (
            lambda m: MagnitudePruner(include=["nothing"]).apply(m, 0.5),
            r"no parameter to prune.*include=\['nothing'\]",
        ),
        (
            lambda m: MagnitudePruner(allocation="flops").apply(m, 0.5),
            r'allocation="flops" needs `flops_per_nonzero`, got None',
        ),
        (
            lambda m: MagnitudePruner(allocation="flops").apply(
                m, 0.5, flops_per_nonzero={"head.0.weight": 1.0}
            ),
            r"needs a finite cost > 0 .* got \{'features.0.weight': None",
        ),
        (
            lambda m: MagnitudePruner().step(m, 0),
            r"MagnitudePruner.step needs a `schedule`, got None",
        ),
        (
            lambda m: MagnitudePruner().apply_masks(m, {"head.9.weight": torch.ones(1)}),
            r"'head\.9\.weight' names no parameter",
        ),
        (
            lambda m: MagnitudePruner().apply_masks(m, {"head.0.weight": torch.ones(3)}),
            r"mask 'head\.0\.weight' has shape \(3,\), the parameter \(32, 64\)",
        ),
        (
            lambda m: MagnitudePruner().apply_flop_target(m, -1.0, {}),
            r"`target_flops` must be a finite number >= 0, got -1\.0",
        ),
        (
            lambda m: MagnitudePruner().apply_flop_target(m, 1.0, {"nope.weight": 1.0}),
            r"names no parameter of the model: \['nope\.weight'\]",
        ),
        (
            lambda m: MagnitudePruner().apply_flop_target(m, 1.0, {"head.0.weight": math.nan}),
            r"`flops_per_nonzero\['head\.0\.weight'\]` must be a finite",
        ),
    ],
)
def test_pruner_call_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call(make_net())
