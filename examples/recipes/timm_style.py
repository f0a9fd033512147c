"""A timm-style training loop: keepmix.MixupCutMix stands in for timm.data.Mixup."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import keepmix


def main(epochs: int = 2, num_classes: int = 10) -> float:
    torch.manual_seed(0)  # MixupCutMix draws from torch's RNG (or pass generator=)
    data = TensorDataset(torch.randn(64, 3, 16, 16), torch.randint(0, num_classes, (64,)))
    loader = DataLoader(data, batch_size=16, shuffle=True, drop_last=True)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    # timm's train.py sets label_smoothing on the mixup fn and uses a plain SoftTargetCrossEntropy;
    # here smoothing moves to keepmix's loss: the same targets, since smoothing is linear.
    mixup_fn = keepmix.MixupCutMix(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=num_classes)
    train_loss_fn = keepmix.SoftTargetCrossEntropy(label_smoothing=0.1)

    for epoch in range(epochs):
        for x, target in loader:
            x, target = mixup_fn(x, target)  # float32 (B, K) soft targets
            loss = train_loss_fn(model(x), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch}: loss {loss.item():.3f}")
    return loss.item()


if __name__ == "__main__":
    main()
