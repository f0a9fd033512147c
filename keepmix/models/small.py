"""A small, fast CIFAR network for CPU runs and tests (registered as ``"small"``).

Shaped after the airbench speed-run nets (Jordan 2024): a conv stem and three blocks of
conv -> 2x2 max-pool -> BN -> GELU -> conv -> BN -> GELU, each halving the resolution and
doubling the width, so most of the width sits where the maps are smallest. With the default
widths (48, 96, 192) it has about 0.66M parameters and about 52M multiply-adds per 32 px
image (ResNet-18: 11.2M and 0.56G). Measured here on one CPU thread: 65% test accuracy
(2,000 test images) after 3 epochs on a 10,000-image CIFAR-10 subset (flip + crop, SGD
nesterov, one-cycle lr 0.2, label smoothing 0.2), about 40 s per epoch. Unlike airbench it
keeps to the keepmix interface (average pool + linear ``fc``, no data-dependent whitening
init) so every augmentation can run on it.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from keepmix._checks import check_int
from keepmix.models.base import KeepmixModel
from keepmix.models.resnet import conv3x3

__all__ = ["SmallConvNet"]


def _conv_bn_act(cin: int, cout: int) -> list[nn.Module]:
    return [conv3x3(cin, cout), nn.BatchNorm2d(cout), nn.GELU()]


class SmallBlock(nn.Sequential):
    """conv3x3 -> max-pool 2 (rounding up, like a stride-2 conv) -> BN -> GELU -> conv3x3 -> BN -> GELU."""

    def __init__(self, cin: int, cout: int) -> None:
        # Pooling right after the first conv (airbench's order) runs the second conv at the
        # lower resolution: a quarter of its cost for little accuracy.
        super().__init__(
            conv3x3(cin, cout),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.BatchNorm2d(cout),
            nn.GELU(),
            *_conv_bn_act(cout, cout),
        )


class SmallConvNet(KeepmixModel):
    """Stem (3x3 conv to ``stem_width``) + one :class:`SmallBlock` per entry of ``widths``.

    Features: (B, widths[-1], H / 2^len(widths), W / 2^len(widths)) (rounded up). The early
    head (``early_head=True``) sits after block ``early_stage`` (default 1: 48 channels at
    half resolution).
    """

    def __init__(
        self,
        num_classes: int = 10,
        early_head: bool = False,
        *,
        in_channels: int = 3,
        stem_width: int = 32,
        widths: Sequence[int] = (48, 96, 192),
        early_stage: int = 1,
        early_grid: int = 1,
        early_block: int | None = None,
    ) -> None:
        super().__init__()
        widths = tuple(widths)
        if len(widths) < 2 or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"widths must be at least 2 positive ints (one per block), got {widths!r}")
        check_int(stem_width, "stem_width", low=1)
        blocks, cin = [], stem_width
        for w in widths:
            blocks.append(SmallBlock(cin, w))
            cin = w
        self._setup(
            stem=nn.Sequential(*_conv_bn_act(in_channels, stem_width)),
            stages=blocks,
            stage_channels=widths,
            stride=2 ** len(widths),
            norm=None,
            num_classes=num_classes,
            in_channels=in_channels,
            early_head=early_head,
            early_stage=early_stage,
            early_grid=early_grid,
            early_block=early_block,
            early_preact=False,
        )
