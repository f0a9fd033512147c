"""Mixing augmentation: Mixup and CutMix, with per-image lambdas, boxes and partners.

Both take a batch and its labels and return the mixed batch and float32 (B, K) soft targets
(train with :class:`keepmix.targets.SoftTargetCrossEntropy`). Labels are (B,) class ids
(``num_classes`` needed, from the constructor) or (B, K) soft targets (K is inferred).

Partners come from one random permutation of the batch (``keepmix.sampling.permutation``),
so every image is used as a partner exactly once. A permutation may pair an image with
itself (about one such image per batch on average, as in the official code): that image
comes back unchanged with its own targets. In a batch of one the only partner is the image
itself, so it always comes back unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from keepmix._checks import check_generator, check_images, check_positive, check_probability, check_same_device
from keepmix.base import RegionOp, RegionParams
from keepmix.functional.mixing import cutmix, mixup
from keepmix.sampling import bernoulli, beta, permutation
from keepmix.targets import to_soft_targets

__all__ = ["MixupParams", "Mixup", "CutMixParams", "CutMix"]


def _check_num_classes(num_classes: int | None) -> int | None:
    if num_classes is None:
        return None
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer or None, got {num_classes!r}")
    return int(num_classes)


def _soft_labels(images: Tensor, labels: Tensor, num_classes: int | None) -> Tensor:
    """float32 (B, K) targets on the images' device; clear errors for any mismatch."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor of shape (B,) or (B, K), got {type(labels).__name__}")
    check_same_device(images=images, labels=labels)
    return to_soft_targets(labels, num_classes, images.shape[0])


# --------------------------------------------------------------------------------------
# Mixup
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MixupParams:
    """``lam`` (B,) float32: each image's own share (1 where skipped by ``p``);
    ``perm`` (B,) int64: its partner's index."""

    lam: Tensor
    perm: Tensor


class Mixup(nn.Module):
    """Mixup (Zhang et al. 2018): ``x' = lam x + (1 - lam) x[perm]``, same mix of the labels.

    ``lam ~ Beta(alpha, alpha)`` is drawn per image (the original code draws one per batch),
    the partners from one random permutation. With probability ``1 - p`` an image is not
    mixed: its ``lam`` is 1 and it comes back bitwise unchanged.

    uint8 images are mixed in float32 and rounded to the nearest integer; float16/bfloat16 are
    mixed in float32 and rounded once to their dtype.

    Args:
        alpha: Beta concentration (> 0); 1 gives a uniform lam, 0.2 mostly near 0 or 1.
        p: probability that an image is mixed.
        num_classes: K, needed for (B,) integer labels.
    """

    def __init__(self, alpha: float = 1.0, p: float = 1.0, num_classes: int | None = None) -> None:
        super().__init__()
        self.alpha = check_positive(alpha, "alpha")
        self.p = check_probability(p)
        self.num_classes = _check_num_classes(num_classes)

    def sample_params(self, images: Tensor, generator: torch.Generator | None = None) -> MixupParams:
        """Draw order: lam (B,), applied (B,), perm (B,)."""
        check_images(images)
        check_generator(generator)
        b, dev = images.shape[0], images.device
        lam = beta(self.alpha, self.alpha, b, device=dev, generator=generator)
        applied = bernoulli(self.p, b, device=dev, generator=generator)
        lam = torch.where(applied, lam, torch.ones_like(lam))
        return MixupParams(lam=lam, perm=permutation(b, device=dev, generator=generator))

    def apply(self, images: Tensor, labels: Tensor, params: MixupParams) -> tuple[Tensor, Tensor]:
        """Mix with the given params; returns ``(images, float32 (B, K) targets)``."""
        check_images(images)
        targets = _soft_labels(images, labels, self.num_classes)
        return mixup(images, targets, params.lam, params.perm)

    def forward(
        self, images: Tensor, labels: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(mixed images, float32 (B, K) soft targets)``.

        Fresh params are valid by construction and skip the value checks (host syncs).
        """
        targets = _soft_labels(check_images(images), labels, self.num_classes)
        params = self.sample_params(images, generator)
        return mixup(images, targets, params.lam, params.perm, validate=False)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, p={self.p}, num_classes={self.num_classes}"


# --------------------------------------------------------------------------------------
# CutMix
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CutMixParams(RegionParams):
    """CutMix's boxes and partners.

    ``sizes`` (B, 2) int64: the requested box (h, w) = (floor(H sqrt(1 - lam)),
    floor(W sqrt(1 - lam))) for the sampled lam, (0, 0) where skipped by ``p``;
    ``boxes`` (B, 4): where the partner is pasted (the label weight comes from the box's
    actual area, so boxes replaced by KeepCut stay exact); ``perm`` (B,) int64: partners.
    """

    perm: Tensor


class CutMix(RegionOp):
    """CutMix (Yun et al. 2019): paste a box of a partner image; labels by exact area.

    Per image: ``lam ~ Beta(alpha, alpha)``, a box of ``sqrt(1 - lam)`` times the image's
    height and width, centre uniform over all pixels and clipped at the border (placement
    ``"center"``); ``images[perm]`` is pasted into it and lam is corrected to the exact
    unpasted area ``1 - area / (H W)``; targets ``lam y + (1 - lam) y[perm]``.

    ``per_sample=True`` (default) draws lam, box, and ``p`` per image: more diverse batches
    for the same cost, and KeepCut can pick each image's box on its own saliency.
    ``per_sample=False`` reproduces the official code: one lam, one box and one ``p`` draw for
    the whole batch, with one random permutation.

    Default ``p = 1.0``: the official ImageNet setting and the paper's main results (and
    what timm uses). The official CIFAR recipes use ``p = 0.5``; pass it explicitly there.

    Args:
        alpha: Beta concentration (> 0); the paper uses 1 (lam uniform).
        p: probability that an image (per_sample) or the batch is mixed.
        num_classes: K, needed for (B,) integer labels.
        per_sample: per-image draws (True) or one draw per batch as in the official code.
    """

    placement = "center"

    def __init__(
        self, alpha: float = 1.0, p: float = 1.0, num_classes: int | None = None, per_sample: bool = True
    ) -> None:
        super().__init__()
        self.alpha = check_positive(alpha, "alpha")
        self.p = check_probability(p)
        self.num_classes = _check_num_classes(num_classes)
        if not isinstance(per_sample, bool):
            raise TypeError(f"per_sample must be a bool, got {per_sample!r}")
        self.per_sample = per_sample

    def sample_params(self, images: Tensor, generator: torch.Generator | None = None) -> CutMixParams:
        """Draw order: lam, applied, box centres (cy, cx), perm (B,). With
        ``per_sample=False`` lam, applied and the centre are drawn once and shared."""
        check_images(images)
        check_generator(generator)
        b, _, h, w = images.shape
        dev = images.device
        n = b if self.per_sample else 1
        lam = beta(self.alpha, self.alpha, n, device=dev, generator=generator)
        applied = bernoulli(self.p, n, device=dev, generator=generator)
        # float64 so the floor matches the official int(W * sqrt(1 - lam)) on the same lam.
        cut = torch.sqrt(1.0 - lam.double())
        sizes = torch.stack([(h * cut).floor().long(), (w * cut).floor().long()], dim=1)
        sizes = torch.where(applied[:, None], sizes, torch.zeros_like(sizes))
        boxes = self.place(sizes, h, w, generator)
        if not self.per_sample:
            sizes, boxes = sizes.expand(b, 2).contiguous(), boxes.expand(b, 4).contiguous()
        return CutMixParams(boxes=boxes, sizes=sizes, perm=permutation(b, device=dev, generator=generator))

    def apply(
        self, images: Tensor, labels: Tensor, params: CutMixParams, patch_weight: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Paste ``images[params.perm]`` into ``params.boxes``; returns ``(images, targets)``.

        ``patch_weight`` (B,) in [0, 1], when given, replaces the area share ``1 - lam`` as
        the label weight of the pasted patch (KeepCutMix's saliency-weighted labels); an image
        with an empty box keeps weight 0. Use :func:`keepmix.functional.mixing.area_lambda`
        on ``params.boxes`` for the exact area lam.
        """
        check_images(images)
        targets = _soft_labels(images, labels, self.num_classes)
        perm = getattr(params, "perm", None)
        if perm is None:
            raise TypeError("CutMix.apply needs CutMixParams (with perm), from sample_params")
        out, mixed, _ = cutmix(images, targets, params.boxes, perm, patch_weight)
        return out, mixed

    def forward(
        self, images: Tensor, labels: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(mixed images, float32 (B, K) soft targets)``.

        Fresh params are valid by construction and skip the value checks (host syncs).
        """
        targets = _soft_labels(check_images(images), labels, self.num_classes)
        params = self.sample_params(images, generator)
        out, mixed, _ = cutmix(images, targets, params.boxes, params.perm, validate=False)
        return out, mixed

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, p={self.p}, num_classes={self.num_classes}, per_sample={self.per_sample}"
