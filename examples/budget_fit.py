"""Fit with a FLOP budget that steers the pruner, on the embedded digits data.

python examples/budget_fit.py
tensorboard --logdir sparsity_runs
"""

import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger

import lightning_sparsity as ls
from lightning_sparsity.demo import DigitsCNN, DigitsDataModule

# land on 25% of the dense FLOPs after 5 epochs, along a cubic curve in FLOP space; keep the
# first conv dense; stop after 3 epochs of fine-tuning once the budget is met
budget = ls.FlopBudget("25%", by_epoch=5, action="adjust", finetune_epochs=3)
pruner = ls.MagnitudePruner(keep_first_dense=True)
callback = ls.SparsityCallback(pruning=pruner, budget=budget)

trainer = pl.Trainer(
    max_epochs=20,
    logger=TensorBoardLogger("sparsity_runs", name="budget_fit"),
    callbacks=[callback],
    enable_progress_bar=False,
)
trainer.fit(DigitsCNN(), DigitsDataModule())
print(callback.report.to_markdown())
print(callback.stopping_message)
print("files in", callback.directory)
