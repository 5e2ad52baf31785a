"""Every weight prunable: attention, LSTM and GRU weights named and pruned in a real fit,
checked against explicit computations; masks at one byte per weight."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import warnings
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_sparsity as ls
from tests import brute
from tests.fits import quiet_trainer

E, HEADS, L = 16, 2, 5  # embedding, heads, tokens

NAMED = [r"mha\.in_proj_weight", r"mha\.out_proj\.weight", r"(lstm|gru)\.weight_(ih|hh)_l0"]


class Mixed(pl.LightningModule):
    """Self-attention over L tokens, then a time-major LSTM and GRU, then a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(E, HEADS, batch_first=True)
        self.lstm = nn.LSTM(E, 12)
        self.gru = nn.GRU(12, 8)
        self.head = nn.Linear(8, 4)
        self.example_input_array = torch.zeros(1, L, E)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.mha(x, x, x, need_weights=False)[0]
        h = self.lstm(a.transpose(0, 1))[0]  # [L, B, 12]
        return self.head(self.gru(h)[0][-1])

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(32, L, E, generator=g), torch.arange(32) % 4)
        return DataLoader(data, batch_size=8)


def attention_by_hand(mha: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    """Self-attention written out: projections, per-head softmax(q kᵀ / √d) v, out-projection."""
    q, k, v = (x @ mha.in_proj_weight.t() + mha.in_proj_bias).chunk(3, dim=-1)
    d = E // HEADS

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(t.shape[0], L, HEADS, d).transpose(1, 2)

    p = torch.softmax(heads(q) @ heads(k).transpose(-2, -1) / math.sqrt(d), dim=-1)
    o = (p @ heads(v)).transpose(1, 2).reshape(x.shape[0], L, E)
    return o @ mha.out_proj.weight.t() + mha.out_proj.bias


@pytest.mark.filterwarnings("ignore:.*does not have many workers")
def test_attention_and_recurrent_weights_pruned_in_a_fit(tmp_path: Any) -> None:
    torch.manual_seed(0)
    model = Mixed()
    # uniform 0.5 before training (t = 0), then two epochs of SGD with momentum
    pruner = ls.MagnitudePruner(
        schedule=ls.schedules.Constant(0.5, start_epoch=0), allocation="uniform", parameters=NAMED
    )
    callback = ls.SparsityCallback(pruner, write_files=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="not pruning")
        quiet_trainer(tmp_path, [callback], 2, limit_val_batches=0).fit(model)
    pruned = {
        "mha.in_proj_weight": model.mha.in_proj_weight,
        "mha.out_proj.weight": model.mha.out_proj.weight,
        **{
            f"{m}.weight_{k}_l0": getattr(model, m).__getattr__(f"weight_{k}_l0")
            for m in ("lstm", "gru")
            for k in ("ih", "hh")
        },
    }
    assert pruner.target_names(model) == set(pruned)
    # the zeros survived 8 optimizer steps with momentum: exactly round(0.5 n) per weight
    for name, w in pruned.items():
        assert int((w == 0).sum()) == round(0.5 * w.numel()), name
    assert [p.pruning for p in callback.history] == ["pruned", None, None]

    model.eval()
    x = torch.randn(1, L, E, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        # MHA's fused fast path (eval, no grad) reads the zeroed weights
        a = model.mha(x, x, x, need_weights=False)[0]
        torch.testing.assert_close(a, attention_by_hand(model.mha, x))
        # the mkldnn LSTM and the GRU read them too: step by step with explicit products
        lstm, gru = model.lstm, model.gru
        lstm_sparse, _, h = brute.recurrent_products(
            a.transpose(0, 1), lstm.weight_ih_l0, lstm.weight_hh_l0,
            lstm.bias_ih_l0, lstm.bias_hh_l0, "lstm",
        )  # fmt: skip
        torch.testing.assert_close(lstm(a.transpose(0, 1))[0][:, 0], h[:, 0])
        gru_sparse, _, g = brute.recurrent_products(
            h, gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0, "gru"
        )
        torch.testing.assert_close(gru(h)[0], g)
    # sparse FLOPs by hand: each in-projection weight meets L tokens, the scores and
    # attention-times-values are dense (2·L·L·E each), out-projection L tokens, the head once
    nnz = {name: int(w.count_nonzero()) for name, w in pruned.items()}
    by_hand = (
        2 * L * nnz["mha.in_proj_weight"]
        + 2 * (2 * L * L * E)
        + 2 * L * nnz["mha.out_proj.weight"]
        + lstm_sparse
        + gru_sparse
        + 2 * int(model.head.weight.count_nonzero())
    )
    report = ls.measure(model, x)
    assert report.total.flops_sparse == by_hand
    assert callback.history[-1].flops_sparse == by_hand
    assert report.total.flops_sparse < report.total.flops


def test_an_unreachable_budget_names_the_weights_that_make_the_floor() -> None:
    model = Mixed()
    # the default pruner takes only Linear weights: attention's out-projection and the head
    with pytest.raises(
        ValueError, match=r"unreachable.*mha\.in_proj_weight \(not pruned\)"
    ) as info:
        ls.prune_to_flops(model, model.example_input_array, "30%")
    assert "lstm.weight_ih_l0 (not pruned)" in str(info.value)
    assert r"parameters=['mha\\.in_proj_weight'" in str(info.value)
    # naming them makes 30% reachable
    pruner = ls.MagnitudePruner(parameters=[*NAMED, r"head\.weight"])
    report = ls.prune_to_flops(model, model.example_input_array, "30%", pruner=pruner)
    assert report.total.flops_sparse <= 0.3 * report.total.flops


def rss_bytes() -> int:
    """Resident memory of this process, after giving freed heap memory back to the OS."""
    gc.collect()
    with contextlib.suppress(OSError):  # not glibc: measure as is
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.skipif(not hasattr(ctypes, "CDLL"), reason="needs ctypes")
def test_inplace_masks_cost_one_byte_per_pruned_weight() -> None:
    # 3 × 4096² = 50,331,648 weights (201 MB in float32)
    model = nn.Sequential(*[nn.Linear(4096, 4096, bias=False) for _ in range(3)])
    n = sum(p.numel() for p in model.parameters())
    before = rss_bytes()
    pruner = ls.MagnitudePruner()
    pruner.apply(model, 0.8)
    after = rss_bytes()
    # before: a mask in the weight's dtype plus the materialized weight: 8 bytes per weight
    assert (after - before) / n <= 1.1
    assert sum(int((p == 0).sum()) for p in model.parameters()) == round(0.8 * n)
    keeps = [m.weight_keep for m in model]
    assert sum(k.numel() * k.element_size() for k in keeps) == n  # the masks: 1 byte each
