"""Training compute on the embedded digits data: a RigL run, and two training-compute budgets.

python examples/digits_training_compute.py

Each fit logs ``sparsity/train_flops`` (per epoch) and ``sparsity/train_flops_total``
(the whole fit): every training batch's examples times its forward and backward at the
weights it ran with, dense and sparse. Prints one line per run.
"""

import warnings

import pytorch_lightning as pl

import lightning_sparsity as ls
from lightning_sparsity.demo import DigitsCNN, DigitsDataModule

EPOCHS = 12


def fit(name: str, pruning: ls.MagnitudePruner, budget: ls.FlopBudget | None = None) -> None:
    pl.seed_everything(0, verbose=False)
    callback = ls.SparsityCallback(pruning, budget, write_files=False, verbose=False)
    trainer = pl.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        logger=False,
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(DigitsCNN(), DigitsDataModule())
    last = callback.history[-1]
    dense_run = last.train_flops_dense_total * EPOCHS / last.epoch  # the same epochs, dense
    print(
        f"{name}: {last.epoch} epochs, val_acc {float(trainer.callback_metrics['val_acc']):.3f},"
        f" inference FLOPs {last.flops_ratio:.3f} of dense, training FLOPs"
        f" {last.train_flops_total / 1e9:.2f}G = {last.train_flops_total / dense_run:.3f} of a"
        f" dense run's {dense_run / 1e9:.2f}G"
    )


if __name__ == "__main__":
    # RigL: 90% sparse (ERK) from the first step, connections moved every 20 steps
    fit("RigL 90% ERK", ls.RigL(0.9, delta_t=20))
    # magnitude pruning to 80% by epoch 8, stopped before it spends 30% of a dense run's compute
    schedule = ls.schedules.Cubic(0.8, start_epoch=0, end_epoch=8)
    fit(
        "magnitude + FlopBudget('30%', count='train')",
        ls.MagnitudePruner(schedule=schedule),
        ls.FlopBudget("30%", count="train"),
    )
    # the pruning curve planned so all 12 epochs together cost 30% of a dense run
    fit(
        "magnitude + FlopBudget('30%', by_epoch=6, action='adjust', count='train')",
        ls.MagnitudePruner(),
        ls.FlopBudget("30%", by_epoch=6, action="adjust", count="train"),
    )
