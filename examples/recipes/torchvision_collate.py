"""torchvision's "CutMix / MixUp in the collate_fn" pattern, with a keepmix op."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import keepmix
from keepmix.integrations.collate import AugmentCollate


def main(epochs: int = 2, num_classes: int = 10) -> float:
    torch.manual_seed(0)
    data = TensorDataset(torch.rand(64, 3, 16, 16), torch.randint(0, num_classes, (64,)))
    # torchvision: collate_fn=lambda b: v2.RandomChoice([v2.CutMix(...), v2.MixUp(...)])(*default_collate(b)).
    # Here: Mixup or CutMix chosen per image; the generator is made inside each worker,
    # so the workers draw independent streams, and the loader's seed makes reruns repeat.
    mix = keepmix.MixupCutMix(mixup_alpha=1.0, cutmix_alpha=1.0, mode="elem", num_classes=num_classes)
    loader = DataLoader(
        data, batch_size=16, shuffle=True, num_workers=2, collate_fn=AugmentCollate(mix, seed=0), generator=torch.Generator().manual_seed(0)
    )
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = keepmix.SoftTargetCrossEntropy()

    for epoch in range(epochs):
        for images, targets in loader:  # targets: float32 (B, K)
            loss = loss_fn(model(images), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch}: loss {loss.item():.3f}")
    return loss.item()


if __name__ == "__main__":
    main()
