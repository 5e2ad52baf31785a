"""Count a model's dense and sparse FLOPs and nonzero parameters, before and after pruning.

python examples/count_model.py
"""

import torch
from torch import nn

import lightning_sparsity as ls

model = nn.Sequential(
    nn.Conv2d(3, 16, 3, padding=1),
    nn.ReLU(),
    nn.Conv2d(16, 32, 3, stride=2, padding=1),
    nn.ReLU(),
    nn.Flatten(),
    nn.Linear(32 * 16 * 16, 10),
)
x = torch.zeros(1, 3, 32, 32)

print(ls.measure(model, x).to_markdown())

# one shot, no training: prune to 30% of the dense FLOPs, smallest weights first. Global
# magnitude pruning compares raw magnitudes across layers, and the wide classifier's
# weights start small: keep it dense, or it would be pruned away first.
report = ls.prune_to_flops(model, x, "30%", pruner=ls.MagnitudePruner(keep_last_dense=True))
print()
print(report.to_markdown())

# effective FLOPs also skip zero activations (here: after ReLU, on a real-looking input)
total = ls.measure(model, torch.randn(8, 3, 32, 32), activations=True).total
print()
print(
    f"on 8 random inputs: sparse FLOPs {total.flops_sparse:,} of {total.flops:,} dense per"
    f" example; effective (zero activations skipped too) {total.flops_effective:,.0f}"
)
