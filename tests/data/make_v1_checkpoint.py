"""Wrote ``v1_tiny_mlp.ckpt`` with the code of commit f54a8c6 (history without a version).

Run from a checkout of that commit: ``python make_v1_checkpoint.py OUT_DIR`` (2 epochs of a
tiny MLP, lr 0, Linear(0.75) uniform schedule, a 40% stop budget with 1 fine-tune epoch).
Kept for the record; the tests only read the checkpoint. Not collected by pytest.
"""

import sys, warnings
warnings.filterwarnings("ignore")
import pytorch_lightning as pl, torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from pytorch_lightning.callbacks import ModelCheckpoint
import lightning_sparsity as ls

class TinyMLP(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 4)
        self.example_input_array = torch.zeros(1, 16)
    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))
    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)
    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        return DataLoader(TensorDataset(torch.randn(32, 16, generator=g), torch.arange(32) % 4), batch_size=16)

pl.seed_everything(0)
pruner = ls.MagnitudePruner(schedule=ls.schedules.Linear(0.75, start_epoch=0, end_epoch=3), allocation="uniform")
cb = ls.SparsityCallback(pruner, ls.FlopBudget("40%", finetune_epochs=1), write_files=False)
ck = ModelCheckpoint(dirpath=sys.argv[1], save_last=True)
tr = pl.Trainer(max_epochs=2, logger=False, callbacks=[cb, ck], enable_progress_bar=False, enable_model_summary=False)
tr.fit(TinyMLP())
print(cb.state_key)
print(cb.history)
print(cb.budget.state_dict())
