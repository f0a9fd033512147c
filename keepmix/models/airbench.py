"""airbench-class CIFAR networks (after Jordan 2024, "94% on CIFAR-10 in 3.29 seconds"),
with the keepmix model interface (registered as ``"airbench94"``, ``"airbench95"``,
``"airbench96"``).

The layout follows the speed-run nets; the code is keepmix's own:

* stem: a 2 x 2 convolution, no padding, to ``2 * 3 * 2 * 2 = 24`` channels, then GELU. It
  can be initialised from the data (:meth:`AirbenchNet.init_whitening`): the eigenvectors of
  the 2 x 2 patch covariance, scaled to unit variance, and their negatives; the weight is then
  frozen (the bias still trains);
* three block groups, each conv3x3 -> 2 x 2 max-pool -> BN -> GELU -> conv3x3 -> BN -> GELU
  (``airbench96``: a third conv with a residual over the last two, GELU after the sum), each
  halving the resolution: 32 -> 31 -> 15 -> 7 -> 3 for a 32 px image;
* global max pool (``pool="max"``, the speed-run nets' choice; ``"avg"`` also works) and a
  bias-free linear classifier whose output is scaled by ``logit_scale = 1/9``
  (:class:`ScaledLinear`, still an ``nn.Linear``, so RecursiveMix can share ``fc`` as its
  RoI head and get the same scaled logits).

Initialisation: PyTorch's default conv init, then the first ``C_in`` filters of every block
conv set to the identity (Dirac), the partial identity init of the speed-run nets;
BatchNorm weights are fixed at 1 (only the biases train, ``bn_weight=False``), BN momentum
``1 - 0.6`` for the 94/95 variants.

=============  =================  ======  =====================  ==================
variant        widths             convs   params (10 classes)    MACs / 32 px image
=============  =================  ======  =====================  ==================
airbench94     64, 256, 256       2/grp   1.97M                  0.118G
airbench95     128, 384, 384      2/grp   4.61M                  0.302G
airbench96     128, 512, 512      3/grp   12.72M                 0.615G
=============  =================  ======  =====================  ==================

(counts of this implementation; ``benchmarks/gpu_grid.py --time-model`` recounts the MACs.)

Geometry: ``feature_stride`` is 8 (three halvings), but the valid 2 x 2 stem and floor
pooling give features of side ``(s - 1) // 8`` for an image of side ``s`` (3 x 3 for 32 px),
one less than ``ceil(s / 8)`` of the other keepmix models: the 3 x 3 final map is what keeps
the last convs cheap. ``exact_stride=True`` pads the stem (right and bottom) and pools with
``ceil_mode`` instead: features of side ``ceil(s / 8)`` (about 23% more MACs).

The early head (``early_head=True``) sits after the first block group (``early_stage=1``):
the saliency backward of the early-loss approximation then crosses the stem and one group
(about 20% of the forward MACs of ``airbench95``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from keepmix._checks import check_int
from keepmix.models.base import KeepmixModel

__all__ = ["AirbenchNet", "ScaledLinear", "VARIANTS", "airbench94", "airbench95", "airbench96"]

#: variant -> (widths, convs per group after the first, residual, BN momentum (PyTorch's))
VARIANTS: dict[str, dict] = {
    "airbench94": dict(widths=(64, 256, 256), depth=2, residual=False, bn_momentum=0.4),
    "airbench95": dict(widths=(128, 384, 384), depth=2, residual=False, bn_momentum=0.4),
    "airbench96": dict(widths=(128, 512, 512), depth=3, residual=True, bn_momentum=0.1),
}


class ScaledLinear(nn.Linear):
    """``nn.Linear`` whose output is multiplied by a fixed ``scale`` (airbench's 1/9)."""

    def __init__(self, in_features: int, out_features: int, scale: float = 1.0, bias: bool = False) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.scale = float(scale)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) * self.scale

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale:g}"


def _bn(channels: int, momentum: float, weight: bool) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels, eps=1e-12, momentum=momentum)
    bn.weight.requires_grad_(weight)
    return bn


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, bias=False)


class AirbenchGroup(nn.Module):
    """conv -> max-pool 2 -> BN -> GELU, then ``depth - 1`` x (conv -> BN [-> GELU]); with
    ``residual`` the last two convs are bridged by a skip and GELU follows the sum."""

    def __init__(self, cin: int, cout: int, depth: int, residual: bool, bn_momentum: float, bn_weight: bool, ceil_mode: bool) -> None:
        super().__init__()
        if residual and depth < 3:
            raise ValueError(f"a residual group needs depth >= 3 (two convs under the skip), got depth={depth}")
        self.residual = residual
        self.conv1 = _conv(cin, cout)
        self.pool = nn.MaxPool2d(2, ceil_mode=ceil_mode)
        self.norm1 = _bn(cout, bn_momentum, bn_weight)
        self.convs = nn.ModuleList(_conv(cout, cout) for _ in range(depth - 1))
        self.norms = nn.ModuleList(_bn(cout, bn_momentum, bn_weight) for _ in range(depth - 1))
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        skip = x
        last = len(self.convs) - 1
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            x = norm(conv(x))
            if i == last and self.residual:
                x = x + skip
            x = self.act(x)
        return x


class AirbenchNet(KeepmixModel):
    """An airbench-class network: ``variant`` picks the widths and depth (see the module
    docstring); ``widths`` / ``depth`` / ``residual`` override them (small test nets).

    Extra knobs: ``pool`` ("max" or "avg"), ``logit_scale`` (1/9), ``bn_weight`` (train the
    BN weights; False = fixed at 1), ``exact_stride`` (see the module docstring),
    ``dirac_init`` (partial identity init of the block convs).
    """

    def __init__(
        self,
        num_classes: int = 10,
        early_head: bool = False,
        *,
        variant: str = "airbench94",
        in_channels: int = 3,
        widths: Sequence[int] | None = None,
        depth: int | None = None,
        residual: bool | None = None,
        pool: Literal["max", "avg"] = "max",
        logit_scale: float = 1 / 9,
        bn_weight: bool = False,
        bn_momentum: float | None = None,
        exact_stride: bool = False,
        dirac_init: bool = True,
        early_stage: int = 1,
        early_grid: int = 1,
        early_block: int | None = None,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown airbench variant {variant!r}; valid: {', '.join(VARIANTS)}")
        spec = VARIANTS[variant]
        widths = tuple(spec["widths"] if widths is None else widths)
        depth = spec["depth"] if depth is None else depth
        residual = spec["residual"] if residual is None else residual
        bn_momentum = spec["bn_momentum"] if bn_momentum is None else bn_momentum
        if len(widths) < 2 or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"widths must be at least 2 positive ints (one per group), got {widths!r}")
        check_int(depth, "depth", low=2)
        check_int(in_channels, "in_channels", low=1)
        if pool not in ("max", "avg"):
            raise ValueError(f"pool must be 'max' or 'avg', got {pool!r}")
        if early_block is not None:
            raise ValueError("early_block is not available for airbench nets (a group is one block); use early_block=None")
        self.variant = variant
        self.pool = pool
        self.exact_stride = bool(exact_stride)
        stem_width = 2 * in_channels * 2 * 2
        stem_conv = nn.Conv2d(in_channels, stem_width, 2, padding=0, bias=True)
        stem = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), stem_conv, nn.GELU()) if exact_stride else nn.Sequential(stem_conv, nn.GELU())
        groups, cin = [], stem_width
        for w in widths:
            groups.append(AirbenchGroup(cin, w, depth, residual, bn_momentum, bn_weight, ceil_mode=self.exact_stride))
            cin = w
        self._setup(
            stem=stem,
            stages=groups,
            stage_channels=widths,
            stride=2 ** len(widths),
            norm=None,
            num_classes=num_classes,
            in_channels=in_channels,
            early_head=early_head,
            early_stage=early_stage,
            early_grid=early_grid,
            early_block=None,
            early_preact=False,
        )
        self.stem_conv = stem_conv
        self.fc = ScaledLinear(widths[-1], num_classes, scale=logit_scale, bias=False)
        self._init_airbench(dirac_init)

    def _init_airbench(self, dirac: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.reset_parameters()  # PyTorch's default (Kaiming uniform, a = sqrt(5))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
                if dirac and m is not self.stem_conv and m.out_channels >= m.in_channels:
                    with torch.no_grad():
                        nn.init.dirac_(m.weight[: m.in_channels])
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def classify(self, features: Tensor) -> Tensor:
        """Global max (or average) pool + ``fc``: (B, C, h, w) -> (B, K) logits."""
        if features.ndim != 4 or features.shape[1] != self.feature_channels:
            raise ValueError(f"features must have shape (B, {self.feature_channels}, h, w), got {tuple(features.shape)}")
        pooled = features.amax(dim=(-2, -1)) if self.pool == "max" else features.mean(dim=(-2, -1))
        return self.fc(pooled)

    @torch.no_grad()
    def init_whitening(self, images: Tensor, eps: float = 5e-4, freeze: bool = True) -> None:
        """Set the stem from the data: the 2 x 2 patch covariance of ``images`` (normalised
        float, (N, C, H, W); a few thousand are plenty) is diagonalised; the stem's filters are
        its eigenvectors divided by ``sqrt(eigenvalue + eps)`` (largest first) and their
        negatives, so the stem's output is (approximately) white. ``freeze`` stops the weight
        from training (the bias still trains)."""
        self._check_input(images)
        k = self.stem_conv.kernel_size
        c = self.in_channels
        x = images.float()
        patches = F.unfold(x, k).transpose(1, 2).reshape(-1, c * k[0] * k[1])  # (N * L, C*kh*kw)
        cov = patches.T @ patches / patches.shape[0]
        evals, evecs = torch.linalg.eigh(cov)  # ascending
        order = torch.arange(evals.numel() - 1, -1, -1, device=evals.device)
        evals, evecs = evals[order], evecs[:, order]
        filters = (evecs / torch.sqrt(evals.clamp_min(0) + eps)).T.reshape(-1, c, *k)
        w = self.stem_conv.weight
        w.copy_(torch.cat([filters, -filters]).to(w.dtype))
        if freeze:
            w.requires_grad_(False)

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}, pool={self.pool!r}, " + super().extra_repr()


def airbench94(num_classes: int = 10, early_head: bool = False, **kwargs) -> AirbenchNet:
    """airbench94's widths (64, 256, 256), two convs per group."""
    return AirbenchNet(num_classes, early_head, variant="airbench94", **kwargs)


def airbench95(num_classes: int = 10, early_head: bool = False, **kwargs) -> AirbenchNet:
    """airbench95's widths (128, 384, 384), two convs per group."""
    return AirbenchNet(num_classes, early_head, variant="airbench95", **kwargs)


def airbench96(num_classes: int = 10, early_head: bool = False, **kwargs) -> AirbenchNet:
    """airbench96's widths (128, 512, 512), three convs per group with a residual."""
    return AirbenchNet(num_classes, early_head, variant="airbench96", **kwargs)
