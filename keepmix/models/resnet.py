"""ResNet-18 and PreAct-ResNet-18 in their CIFAR form (the KeepAugment / CutMix CIFAR baselines).

The CIFAR form differs from ImageNet ResNet-18 in its stem: one 3x3 stride-1 convolution and
no max-pool, so a 32 px image reaches the last stage at 4 x 4 (``feature_stride`` 8).

* :class:`ResNet18` -- He et al. 2016a basic blocks (conv-BN-ReLU, post-activation), 1x1
  conv + BN projection shortcuts where the shape changes: 11,173,962 parameters for 10
  classes (the usual "11.17M").
* :class:`PreActResNet18` -- He et al. 2016b pre-activation blocks (BN-ReLU-conv), a 1x1 conv
  projection (no BN) on the pre-activated input, and the paper's final BN + ReLU before
  pooling: 11,172,170 parameters for 10 classes (implementations that drop the final BN
  have 11,171,146).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from keepmix.models.base import KeepmixModel

__all__ = ["BasicBlock", "PreActBlock", "ResNet18", "PreActResNet18"]


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Post-activation basic block: relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """Pre-activation basic block: conv(relu(bn(conv(relu(bn(x)))))) + shortcut.

    Where the shape changes, the projection shortcut takes the pre-activated input (as in
    He et al. 2016b), otherwise the identity takes the raw input.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = conv3x3(cout, cout)
        self.shortcut: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


def _stages(block: type[nn.Module], cin: int, widths: Sequence[int], blocks: Sequence[int], strides: Sequence[int]) -> list[nn.Module]:
    stages: list[nn.Module] = []
    for width, n, stride in zip(widths, blocks, strides, strict=True):
        layers = []
        for i in range(n):
            layers.append(block(cin, width, stride if i == 0 else 1))
            cin = width
        stages.append(nn.Sequential(*layers))
    return stages


def _check_blocks(blocks: Sequence[int]) -> tuple[int, ...]:
    blocks = tuple(blocks)
    if len(blocks) != 4 or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in blocks):
        raise ValueError(f"blocks must be 4 positive ints (blocks per stage), got {blocks!r}")
    return blocks


_WIDTHS = (64, 128, 256, 512)
_STRIDES = (1, 2, 2, 2)


class ResNet18(KeepmixModel):
    """CIFAR ResNet-18 (post-activation). ``blocks=(3, 4, 6, 3)`` gives ResNet-34.

    Features: (B, 512, H/8, W/8). The early head (``early_head=True``) sits after stage
    ``early_stage`` (default 1: 64 channels at full resolution).
    """

    def __init__(
        self,
        num_classes: int = 10,
        early_head: bool = False,
        *,
        in_channels: int = 3,
        blocks: Sequence[int] = (2, 2, 2, 2),
        early_stage: int = 1,
        early_grid: int = 1,
        early_block: int | None = None,
    ) -> None:
        super().__init__()
        blocks = _check_blocks(blocks)
        stem = nn.Sequential(conv3x3(in_channels, 64), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        self._setup(
            stem=stem,
            stages=_stages(BasicBlock, 64, _WIDTHS, blocks, _STRIDES),
            stage_channels=_WIDTHS,
            stride=8,
            norm=None,
            num_classes=num_classes,
            in_channels=in_channels,
            early_head=early_head,
            early_stage=early_stage,
            early_grid=early_grid,
            early_block=early_block,
            early_preact=False,
        )


class PreActResNet18(KeepmixModel):
    """CIFAR PreAct-ResNet-18 with the final BN + ReLU. ``blocks=(3, 4, 6, 3)`` gives -34.

    Features: (B, 512, H/8, W/8), after the final BN + ReLU. The early head normalises its
    input (BN + ReLU) because a pre-activation stage output is an un-normalised sum.
    """

    def __init__(
        self,
        num_classes: int = 10,
        early_head: bool = False,
        *,
        in_channels: int = 3,
        blocks: Sequence[int] = (2, 2, 2, 2),
        early_stage: int = 1,
        early_grid: int = 1,
        early_block: int | None = None,
    ) -> None:
        super().__init__()
        blocks = _check_blocks(blocks)
        self._setup(
            stem=conv3x3(in_channels, 64),
            stages=_stages(PreActBlock, 64, _WIDTHS, blocks, _STRIDES),
            stage_channels=_WIDTHS,
            stride=8,
            norm=nn.Sequential(nn.BatchNorm2d(512), nn.ReLU(inplace=True)),
            num_classes=num_classes,
            in_channels=in_channels,
            early_head=early_head,
            early_stage=early_stage,
            early_grid=early_grid,
            early_block=early_block,
            early_preact=True,
        )
