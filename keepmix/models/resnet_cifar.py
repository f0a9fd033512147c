"""ResNet-20 / 56 / 110: the CIFAR ResNets of He et al. 2016a, section 4.2.

Three stages of n basic blocks (6n + 2 layers) with 16, 32, 64 channels at strides 1, 2, 2;
``feature_stride`` 4 (8 x 8 features for a 32 px image).

Shortcut: **option A by default**, as in the paper's CIFAR experiments: where the shape
changes, the identity is subsampled (every other pixel) and the new channels are zeros, so
shortcuts add no parameters. This gives the published sizes (He et al., Table 6): ResNet-20
269,722 (0.27M), ResNet-56 853,018 (0.85M), ResNet-110 1,727,962 (1.7M) for 10 classes.
``shortcut="B"`` uses 1x1 conv + BN projections at the two downsampling blocks instead
(2,752 more parameters: ResNet-20 272,474).
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from keepmix.models.base import KeepmixModel
from keepmix.models.resnet import conv3x3

__all__ = ["CifarResNet", "resnet20", "resnet56", "resnet110"]

Shortcut = Literal["A", "B"]


class ZeroPadShortcut(nn.Module):
    """Option A: subsample by ``stride`` and append zero channels up to ``cout``."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = cout - cin

    def forward(self, x: Tensor) -> Tensor:
        if self.stride != 1:
            # Same sampling grid as a stride-s, padding-1 3x3 conv: pixels 0, s, 2s, ...
            x = x[:, :, :: self.stride, :: self.stride]
        # Pad order is (W left, W right, H top, H bottom, C front, C back); split the zeros
        # between both ends as the reference CIFAR code does (the layout is arbitrary).
        front = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, front, self.extra - front))


class CifarBlock(nn.Module):
    """Post-activation basic block with an option A or B shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, shortcut: Shortcut) -> None:
        super().__init__()
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            if shortcut == "A":
                self.shortcut = ZeroPadShortcut(cin, cout, stride)
            else:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(KeepmixModel):
    """The 6n + 2 layer CIFAR ResNet (``depth`` = 20, 32, 44, 56, 110, ...).

    The early head (``early_head=True``) sits after stage ``early_stage`` (default 1: 16
    channels at full resolution, 2n + 1 layers deep).
    """

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        early_head: bool = False,
        *,
        in_channels: int = 3,
        shortcut: Shortcut = "A",
        early_stage: int = 1,
        early_grid: int = 1,
        early_block: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n + 2 for an int n >= 1 (20, 32, 44, 56, 110, ...), got {depth!r}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' (zero-padded identity) or 'B' (1x1 conv projection), got {shortcut!r}")
        self.depth = depth
        self.shortcut_option = shortcut
        n = (depth - 2) // 6
        widths, strides = (16, 32, 64), (1, 2, 2)
        stages, cin = [], 16
        for width, stride in zip(widths, strides, strict=True):
            blocks = []
            for i in range(n):
                blocks.append(CifarBlock(cin, width, stride if i == 0 else 1, shortcut))
                cin = width
            stages.append(nn.Sequential(*blocks))
        self._setup(
            stem=nn.Sequential(conv3x3(in_channels, 16), nn.BatchNorm2d(16), nn.ReLU(inplace=True)),
            stages=stages,
            stage_channels=widths,
            stride=4,
            norm=None,
            num_classes=num_classes,
            in_channels=in_channels,
            early_head=early_head,
            early_stage=early_stage,
            early_grid=early_grid,
            early_block=early_block,
            early_preact=False,
        )


def resnet20(num_classes: int = 10, early_head: bool = False, **kwargs) -> CifarResNet:
    """ResNet-20 (n = 3), 0.27M parameters with option A shortcuts."""
    return CifarResNet(20, num_classes, early_head, **kwargs)


def resnet56(num_classes: int = 10, early_head: bool = False, **kwargs) -> CifarResNet:
    """ResNet-56 (n = 9), 0.85M parameters with option A shortcuts."""
    return CifarResNet(56, num_classes, early_head, **kwargs)


def resnet110(num_classes: int = 10, early_head: bool = False, **kwargs) -> CifarResNet:
    """ResNet-110 (n = 18), 1.7M parameters with option A shortcuts."""
    return CifarResNet(110, num_classes, early_head, **kwargs)
