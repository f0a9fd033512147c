"""ResizeMix (Qin et al. 2020): paste the whole partner image, shrunk, into a box.

Per image: a scale ``tau`` drawn uniformly from ``scale``, a box of ``tau`` times the image's
height and width, placed by the op's placer; the partner is resized into the box in one
batched gather (:func:`keepmix.functional.resize_paste.resize_into_boxes`) and the targets
are mixed by the exact unpasted area. A :class:`keepmix.placers.KeepPlacer` places each box
where the receiving image's saliency is low, so the pasted partner never covers its object.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from keepmix._checks import check_probability, check_range_pair
from keepmix.base import RegionOp, RegionParams
from keepmix.functional.mixing import area_lambda, check_perm
from keepmix.functional.resize_paste import resize_into_boxes
from keepmix.mixing import check_num_classes
from keepmix.placers import Placer
from keepmix.sampling import bernoulli, permutation, uniform
from keepmix.targets import mix_targets

__all__ = ["ResizeMix", "ResizeMixParams"]


@dataclass(frozen=True)
class ResizeMixParams(RegionParams):
    """ResizeMix's boxes and partners.

    ``sizes`` (B, 2) int64: the requested box ``(floor(tau H), floor(tau W))``, (0, 0) where
    skipped by ``p``; ``boxes`` (B, 4): where the whole partner is resized to and pasted (its
    actual area gives lambda, so boxes chosen elsewhere stay exact); ``perm`` (B,) int64:
    partners.
    """

    perm: Tensor


class ResizeMix(RegionOp):
    """ResizeMix (Qin et al. 2020, "ResizeMix: Mixing Data with Preserved Object Information
    and True Labels").

    Definition (the paper: the whole source image is resized to a small patch by a scale
    rate ``tau ~ U(0.1, 0.8)``, pasted on a random region of the target, and the labels are
    mixed by the patch's area; the position and rounding rules from OpenMixup's
    ``resizemix``, which uses that range as its default ``scope``), per image:

    * ``tau ~ U(scale)`` is the scale of the **side**: the box is ``floor(tau H)`` by
      ``floor(tau W)`` (so the pasted area is about ``tau^2``, 1% to 64% by default), as in
      OpenMixup's ``resizemix`` (``cut_w = int(W * tao)``, ``tao ~ U(scope)``);
    * position (placement ``"center"``, CutMix's rule, as OpenMixup and mmpretrain do): the
      centre is uniform over all pixels and the box is clipped at the border; the whole
      partner is resized into the clipped box. ``placer=UniformPlacer(whole_boxes=True)``
      keeps every box whole (the partner is then never squeezed), ``placer=KeepPlacer(...)``
      puts it where the receiving image's saliency is low;
    * ``lam = 1 - area(box) / (H W)``, the exact unpasted share; targets
      ``lam y + (1 - lam) y[perm]`` with partners from one random permutation.

    Differences from the reference code: draws are per image (the references draw one
    ``tau`` and one box per batch); box edges are ``[c - s // 2, c - s // 2 + s)`` (the
    references' far edge ``c + s // 2`` loses a pixel for odd sizes). mmpretrain's
    ``ResizeMix`` instead draws ``lam`` in ``[lam_min, lam_max] = [0.1, 0.8]`` and uses the side
    ratio ``sqrt(1 - lam)`` (CutMix's box from a lambda, 45% to 95% of the side); this op follows
    the paper's ``tau`` ~ U(0.1, 0.8) on the side instead.

    Args:
        scale: ``(min, max)`` range of ``tau``, ``0 < min <= max <= 1`` (paper: (0.1, 0.8)).
        p: probability that an image is mixed (paper: always).
        num_classes: K, needed for (B,) integer labels.
        interpolation: ``"nearest"`` (OpenMixup's default) or ``"bilinear"`` (mmpretrain's,
            ``align_corners=False``); bitwise / float-exact to ``F.interpolate`` per image.
        align_corners: bilinear only, as in ``F.interpolate``.
        placer: where each box goes (default uniform centre, clipped; ``KeepPlacer`` for
            KeepAugment's selective placement).

    ``op(images, labels) -> (mixed images, float32 (B, K) soft targets)``.
    """

    placement = "center"
    mixes_labels = True
    region = "pasted"
    params_type = ResizeMixParams

    def __init__(
        self,
        scale: tuple[float, float] = (0.1, 0.8),
        p: float = 1.0,
        num_classes: int | None = None,
        interpolation: str = "nearest",
        align_corners: bool = False,
        placer: Placer | None = None,
    ) -> None:
        super().__init__(placer)
        self.scale = check_range_pair(scale, "scale", 0.0, 1.0)
        if self.scale[0] <= 0.0:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1 (the pasted side over the image side), got {scale!r}")
        self.p = check_probability(p)
        self.num_classes = check_num_classes(num_classes)
        if interpolation not in ("nearest", "bilinear"):
            raise ValueError(f"interpolation must be 'nearest' or 'bilinear', got {interpolation!r}")
        self.interpolation = interpolation
        if not isinstance(align_corners, bool):
            raise TypeError(f"align_corners must be a bool, got {align_corners!r}")
        if align_corners and interpolation != "bilinear":
            raise ValueError("align_corners only applies to interpolation='bilinear'")
        self.align_corners = align_corners

    def make_params(self, images, labels, saliency, generator) -> ResizeMixParams:
        """Draw order: tau (B,) float64, applied (B,), positions (the placer), perm (B,)."""
        b, _, h, w = images.shape
        dev = images.device
        tau = uniform(b, *self.scale, device=dev, generator=generator, dtype=torch.float64)
        applied = bernoulli(self.p, b, device=dev, generator=generator)
        sizes = torch.stack([(h * tau).floor().long(), (w * tau).floor().long()], dim=1)
        sizes = torch.where(applied[:, None], sizes, torch.zeros_like(sizes))
        boxes = self.place(sizes, images, saliency, generator)
        return ResizeMixParams(boxes=boxes, sizes=sizes, perm=permutation(b, device=dev, generator=generator))

    def _check_params(self, params: object, images: Tensor) -> None:
        super()._check_params(params, images)
        assert isinstance(params, ResizeMixParams)
        check_perm(params.perm, images.shape[0], "params.perm")

    def apply_params(self, images, labels, params):
        """The whole partner resized into each box; ``(images, targets)`` by exact area."""
        h, w = images.shape[-2:]
        out = resize_into_boxes(images, images[params.perm], params.boxes, self.interpolation, self.align_corners)
        y = labels.float()
        return out, mix_targets(y, y[params.perm], area_lambda(params.boxes, h, w))

    def extra_repr(self) -> str:
        return (
            f"scale={self.scale}, p={self.p}, num_classes={self.num_classes}, "
            f"interpolation={self.interpolation!r}, align_corners={self.align_corners}"
        )
