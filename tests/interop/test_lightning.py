"""The Lightning mixin with both packages Lightning ships: lightning.pytorch and pytorch_lightning."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import keepmix
from keepmix.integrations.lightning import KeepmixAugmentation


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("package", ["lightning.pytorch", "pytorch_lightning"])
def test_mixin_fits_and_resumes_with(package, tmp_path):
    pl = importlib.import_module(package)

    class Model(KeepmixAugmentation, pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)  # the same initial weights in every run (the saliency depends on them)
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
            self.set_augmentation(keepmix.KeepCutMix(num_classes=4, saliency_fn=keepmix.Saliency(self.net)), seed=3)
            self.seen: list = []

        def training_step(self, batch, batch_idx):
            x, t = batch
            self.seen.append((x.clone(), t.clone()))
            return keepmix.SoftTargetCrossEntropy()(self.net(x), t)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = TensorDataset(torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(16) % 4)

    def trainer(epochs):
        return pl.Trainer(
            max_epochs=epochs,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )

    full = Model()
    trainer(2).fit(full, DataLoader(data, batch_size=8))
    assert len(full.seen) == 4 and all(t.shape == (8, 4) for _, t in full.seen)  # soft targets: the op ran
    first = Model()
    t1 = trainer(1)
    t1.fit(first, DataLoader(data, batch_size=8))
    t1.save_checkpoint(tmp_path / "e0.ckpt")
    resumed = Model()
    trainer(2).fit(resumed, DataLoader(data, batch_size=8), ckpt_path=tmp_path / "e0.ckpt")
    for (xa, ta), (xb, tb) in zip(resumed.seen, full.seen[2:], strict=True):
        assert torch.equal(xa, xb) and torch.equal(ta, tb)  # the stream continued
    assert set(full.state_dict()) == {"net.1.weight", "net.1.bias"}  # the op is not in the module tree
