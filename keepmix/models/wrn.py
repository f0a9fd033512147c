"""Wide ResNet (Zagoruyko & Komodakis 2016), CIFAR form; WRN-28-10 is 36,479,194 parameters,
WRN-28-2 (the semi-supervised benchmarks' network: UDA, KeepAugment section 4.3) 1,467,610.

Pre-activation wide basic blocks (BN-ReLU-conv3x3, [dropout], BN-ReLU-conv3x3), three stages
of (depth - 4) / 6 blocks with 16k, 32k, 64k channels at strides 1, 2, 2, 1x1 conv
projections where the shape changes (on the pre-activated input), and a final BN + ReLU;
``feature_stride`` 4 (8 x 8 features for a 32 px image).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from keepmix._checks import check_int
from keepmix.models.base import KeepmixModel
from keepmix.models.resnet import conv3x3

__all__ = ["WideResNet", "wrn28_10", "wrn28_2"]


class WideBlock(nn.Module):
    """Pre-activation wide basic block with optional dropout between the convolutions."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = conv3x3(cout, cout)
        self.shortcut: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + skip


class WideResNet(KeepmixModel):
    """WRN-``depth``-``widen`` (depth = 6n + 4). ``dropout`` (default 0, as in the KeepAugment
    and AutoAugment CIFAR set-ups; the WRN paper also reports 0.3) sits between each block's
    convolutions.

    The early head (``early_head=True``) sits after stage ``early_stage`` (default 1: 16k
    channels at full resolution) and normalises its input (BN + ReLU), since a
    pre-activation stage output is an un-normalised sum.
    """

    def __init__(
        self,
        depth: int = 28,
        widen: int = 10,
        num_classes: int = 10,
        early_head: bool = False,
        *,
        in_channels: int = 3,
        dropout: float = 0.0,
        early_stage: int = 1,
        early_grid: int = 1,
        early_block: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"depth must be 6n + 4 for an int n >= 1 (10, 16, 22, 28, 40, ...), got {depth!r}")
        check_int(widen, "widen", low=1)
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        self.depth, self.widen = depth, widen
        n = (depth - 4) // 6
        widths, strides = (16 * widen, 32 * widen, 64 * widen), (1, 2, 2)
        stages, cin = [], 16
        for width, stride in zip(widths, strides, strict=True):
            blocks = []
            for i in range(n):
                blocks.append(WideBlock(cin, width, stride if i == 0 else 1, float(dropout)))
                cin = width
            stages.append(nn.Sequential(*blocks))
        self._setup(
            stem=conv3x3(in_channels, 16),
            stages=stages,
            stage_channels=widths,
            stride=4,
            norm=nn.Sequential(nn.BatchNorm2d(widths[-1]), nn.ReLU(inplace=True)),
            num_classes=num_classes,
            in_channels=in_channels,
            early_head=early_head,
            early_stage=early_stage,
            early_grid=early_grid,
            early_block=early_block,
            early_preact=True,
        )


def wrn28_10(num_classes: int = 10, early_head: bool = False, **kwargs) -> WideResNet:
    """WRN-28-10: 36.5M parameters."""
    return WideResNet(28, 10, num_classes, early_head, **kwargs)


def wrn28_2(num_classes: int = 10, early_head: bool = False, **kwargs) -> WideResNet:
    """WRN-28-2: 1.47M parameters (the network of UDA's and KeepAugment's CIFAR-10 semi-supervised
    results); the early head sits after stage 1 (32 channels at full resolution), as for WRN-28-10."""
    return WideResNet(28, 2, num_classes, early_head, **kwargs)
