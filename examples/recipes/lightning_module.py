"""PyTorch Lightning: the KeepmixAugmentation mixin augments each training batch on the device."""

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import keepmix
from keepmix.integrations.lightning import KeepmixAugmentation


class Classifier(KeepmixAugmentation, pl.LightningModule):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
        # KeepAugment's Cutout: each 8x8 square is placed away from the image's salient part.
        self.set_augmentation(keepmix.KeepCutout(8, saliency_fn=keepmix.Saliency(self.net)), seed=0)
        self.loss_fn = keepmix.SoftTargetCrossEntropy()

    def training_step(self, batch, batch_idx):
        images, labels = batch  # already augmented (validation batches are not)
        loss = self.loss_fn(self.net(images), labels)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def main(max_steps: int = 8) -> float:
    pl.seed_everything(0, verbose=False)
    data = TensorDataset(torch.randn(64, 3, 16, 16), torch.randint(0, 10, (64,)))
    trainer = pl.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Classifier(), DataLoader(data, batch_size=16, shuffle=True))
    # The augmentation stream is saved in checkpoints; trainer.fit(..., ckpt_path=...) continues it.
    return trainer.callback_metrics["train_loss"].item()


if __name__ == "__main__":
    print(f"loss {main():.3f}")
