"""A real DDP fit (gloo, 2 CPU processes) pruning lottery tickets with rewinding.

Run as ``python ddp_rewind_fit.py OUT_DIR``; Lightning's ``ddp`` launcher re-runs this
script for rank 1. Each rank writes ``rank<N>.json``: digests of its masks and weights
after each prune, and whether its rewound weights are its own epoch-k weights, masked.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.distributed as dist

import lightning_sparsity as ls
from tests.fits import two_rank_trainer
from tests.test_rewind import PER_ROUND, RATE, ROUNDS, Net, Recorder


def digest(tensors: list[torch.Tensor]) -> str:
    flat = torch.cat([t.detach().flatten().to(torch.float64) for t in tensors])
    return hashlib.sha256(flat.numpy().tobytes()).hexdigest()


def main(out: Path) -> None:
    warnings.filterwarnings("ignore")
    pl.seed_everything(0, verbose=False)
    k = 1
    schedule = ls.schedules.LotteryTicket(RATE, ROUNDS, PER_ROUND, rewind_epoch=k)
    pruner = ls.MagnitudePruner(schedule=schedule, min_density=0.0)
    callback = ls.SparsityCallback(pruner, rewind_optimizer=True, write_files=False)
    recorder = Recorder(callback)
    trainer = two_rank_trainer(out, [callback, recorder], k + (ROUNDS + 1) * PER_ROUND)
    trainer.fit(Net())
    at_k = recorder.weights[k]
    prunes = [p.epoch for p in callback.history if p.pruning == "pruned"]
    rewound_ok = {}
    for t in prunes:
        m0, m2 = recorder.masks[t]
        want = [at_k[0] * m0, at_k[1], at_k[2] * m2, at_k[3]]
        got = recorder.weights[t]
        rewound_ok[t] = all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    result = {
        "rank": trainer.global_rank,
        "prunes": prunes,
        "masks": {t: digest(m) for t, m in recorder.masks.items()},
        "weights": {t: digest(w) for t, w in recorder.weights.items()},
        "rewound_ok": rewound_ok,
        "lrs": recorder.lrs,
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))
    dist.barrier()  # both files written; out without teardown (see ddp_fit.py)
    os._exit(0)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
