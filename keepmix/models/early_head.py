"""KeepAugment's early head: a small classifier on an early feature map (the paper's early-loss approximation).

The saliency of the early-loss approximation is taken through this head, so the backward
pass crosses only the stem and the layers before the head. It is trained jointly with the
main classifier (the training loop adds its loss with weight 0.3).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from keepmix._checks import check_int

__all__ = ["EarlyHead"]


class EarlyHead(nn.Module):
    """Auxiliary classifier on an early feature map: [BN + ReLU] + average pool + linear.

    ``grid = 1`` is a global average pool (the paper's head). ``grid = g > 1`` pools to a
    g x g grid and flattens it (C * g * g features): an early map carries little
    class information per channel, and keeping a coarse layout gives the linear head more to
    work with at the cost of C * g * g * K weights.

    ``preact = True`` adds BatchNorm + ReLU in front: a pre-activation network's stage output
    is an un-normalised residual sum, which the main path normalises only inside the next
    block; a post-activation network's stage output is already BN + ReLU'd.
    """

    def __init__(self, in_channels: int, num_classes: int, grid: int = 1, preact: bool = False) -> None:
        super().__init__()
        self.grid = check_int(grid, "early_grid", low=1)
        self.norm = nn.Sequential(nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True)) if preact else nn.Identity()
        self.fc = nn.Linear(in_channels * grid * grid, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x)
        if self.grid == 1:
            x = x.mean(dim=(-2, -1))
        else:
            x = F.adaptive_avg_pool2d(x, self.grid).flatten(1)
        return self.fc(x)
