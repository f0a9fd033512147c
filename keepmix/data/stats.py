"""Per-channel normalisation constants (on the [0, 1] scale) and a function to compute them."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD", "channel_stats"]

# Per-pixel mean and standard deviation of the official training sets. (The often-copied
# std (0.2023, 0.1994, 0.2010) is the mean of per-image stds, not the dataset std.)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


def channel_stats(images: Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std on the [0, 1] scale of a uint8 (N, C, H, W) dataset.

    Accumulated in float64 over chunks so a large dataset never needs a float copy.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty uint8 tensor (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    c = images.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for i in range(0, images.shape[0], chunk):
        x = images[i : i + chunk].to(torch.float64) / 255.0
        s += x.sum(dim=(0, 2, 3)).cpu()
        s2 += (x * x).sum(dim=(0, 2, 3)).cpu()
    n = images.shape[0] * images.shape[2] * images.shape[3]
    mean = s / n
    std = (s2 / n - mean * mean).clamp_min(0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())
