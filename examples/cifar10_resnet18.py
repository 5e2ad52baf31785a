"""Prune a torchvision ResNet-18 on CIFAR-10 to a FLOP budget.

Needs torchvision (``pip install torchvision``) and downloads CIFAR-10 (about 170 MB) into
``./data`` the first time: run it online once. Offline, it stops with a clear message.

    python examples/cifar10_resnet18.py
"""

import sys

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

import lightning_sparsity as ls

try:
    import torchvision
    from torchvision import transforms
except ImportError:
    sys.exit("this example needs torchvision: pip install torchvision")


class LitResNet(pl.LightningModule):
    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.model = torchvision.models.resnet18(num_classes=10)
        self.lr = lr
        self.example_input_array = torch.zeros(1, 3, 32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=5e-4)


def loader() -> torch.utils.data.DataLoader:
    tf = transforms.Compose([transforms.RandomHorizontalFlip(), transforms.ToTensor()])
    try:
        data = torchvision.datasets.CIFAR10("data", train=True, download=True, transform=tf)
    except Exception as err:  # no network, no cached copy
        sys.exit(f"could not download CIFAR-10 into ./data ({err}); run once with network access")
    return torch.utils.data.DataLoader(data, batch_size=128, shuffle=True, num_workers=2)


if __name__ == "__main__":
    budget = ls.FlopBudget("30%", by_epoch=15, action="adjust", finetune_epochs=5)
    callback = ls.SparsityCallback(ls.MagnitudePruner(keep_first_dense=True), budget)
    pl.Trainer(max_epochs=30, callbacks=[callback]).fit(LitResNet(), loader())
