"""Fit with a FLOP budget that steers the pruner, on the embedded digits data.

python examples/budget_fit.py
tensorboard --logdir sparsity_runs
"""

import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger

import lightning_sparsity as ls
from lightning_sparsity.demo import DigitsCNN, DigitsDataModule

# land on 25% of the dense FLOPs at the end of epoch 5, along a cubic curve in FLOP space;
# keep the first conv dense; stop 3 epochs after the budget is met
budget = ls.FlopBudget("25%", by_epoch=5, action="adjust")
pruner = ls.MagnitudePruner(keep_first_dense=True)
callback = ls.SparsityCallback(pruning=pruner, budget=budget)

trainer = pl.Trainer(
    max_epochs=10,
    logger=TensorBoardLogger("sparsity_runs", name="budget_fit"),
    callbacks=[callback],
    enable_progress_bar=False,
)
trainer.fit(DigitsCNN(), DigitsDataModule())
print(callback.report.to_markdown())
print("files in", callback.directory)
