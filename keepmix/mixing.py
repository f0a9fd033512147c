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
from typing import Literal

import torch
from torch import Tensor

from keepmix._checks import check_positive, check_probability
from keepmix.base import Op, Params, RegionOp, RegionParams
from keepmix.functional.boxes import area_sizes, box_areas, centre_boxes
from keepmix.functional.constants import line
from keepmix.functional.mixing import cutmix_kernel, mixup_kernel
from keepmix.functional.regions import box_sums, summed_area_table
from keepmix.placers import Placer, UniformPlacer
from keepmix.sampling import bernoulli, beta, beta_columns, rand

_F64 = torch.float64

__all__ = ["MixupParams", "Mixup", "CutMixParams", "CutMix", "check_num_classes"]


def check_num_classes(num_classes: object) -> int | None:
    """None or a positive int: K for (B,) integer labels."""
    if num_classes is None:
        return None
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}")
    return num_classes


# --------------------------------------------------------------------------------------
# Mixup
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MixupParams(Params):
    """``lam`` (B,) float32: each image's own share (1 where skipped by ``p``);
    ``perm`` (B,) int64: its partner's index."""

    lam: Tensor
    perm: Tensor


class Mixup(Op):
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

    mixes_labels = True
    params_type = MixupParams

    def __init__(self, alpha: float = 1.0, p: float = 1.0, num_classes: int | None = None) -> None:
        super().__init__()
        self.alpha = check_positive(alpha, "alpha")
        self.p = check_probability(p)
        self.num_classes = check_num_classes(num_classes)

    def make_params(self, images, labels, saliency, generator) -> MixupParams:
        """Draw order: lam (B,) (Beta(1, 1): one uniform), who is mixed (B,, only when p < 1), perm (B,)."""
        b, dev = images.shape[0], images.device
        lam = _draw_lam(self.alpha, b, dev, generator).float()
        if self.p < 1.0:
            lam = torch.where(rand((b,), dev, generator, torch.float32) < self.p, lam, 1.0)
        perm = _permutation(b, dev, generator)
        return MixupParams(lam=lam, perm=perm)

    def _check_params(self, params: object, images: Tensor) -> None:
        from keepmix.functional.mixing import _check_weight, check_perm

        super()._check_params(params, images)
        assert isinstance(params, MixupParams)
        check_perm(params.perm, images.shape[0], "params.perm")
        _check_weight(params.lam, images.shape[0], "params.lam")

    def apply_params(self, images, labels, params):
        """Mix with the given params: ``(images, float32 (B, K) targets)``."""
        return mixup_kernel(images, labels, params.lam.float(), params.perm)

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
    actual area, so boxes chosen elsewhere stay exact); ``perm`` (B,) int64: partners;
    ``patch_weight`` (B,) float32 or None: the label weight of each pasted patch when it is
    not its area share (``label_weight="saliency"``).
    """

    perm: Tensor
    patch_weight: Tensor | None = None


class CutMix(RegionOp):
    """CutMix (Yun et al. 2019): paste a box of a partner image; labels by exact area.

    Per image: ``lam ~ Beta(alpha, alpha)``, a box of ``sqrt(1 - lam)`` times the image's
    height and width, centre uniform over all pixels and clipped at the border (placement
    ``"center"``); ``images[perm]`` is pasted into it and lam is corrected to the exact
    unpasted area ``1 - area / (H W)``; targets ``lam y + (1 - lam) y[perm]``.

    ``per_sample=True`` (default) draws lam, box, and ``p`` per image: more diverse batches
    for the same cost, and a KeepPlacer can place each image's box on its own saliency.
    ``per_sample=False`` reproduces the official code (clovaai/CutMix-PyTorch): one lam, one
    box and one ``p`` draw for the whole batch, one random permutation, and the official box
    edges ``[c - s//2, c + s//2)`` (an odd side loses a pixel). With a KeepPlacer the batch
    then shares one box size, and positions stay per image.

    Default ``p = 1.0``: the official ImageNet setting and the paper's main results (and
    what timm uses). The official CIFAR recipes use ``p = 0.5``; pass it explicitly there.

    Args:
        alpha: Beta concentration (> 0); the paper uses 1 (lam uniform).
        p: probability that an image (per_sample) or the batch is mixed.
        num_classes: K, needed for (B,) integer labels.
        per_sample: per-image draws (True) or the official per-batch draw.
        placer: where each box goes (default uniform; ``KeepPlacer`` is KeepCutMix: the
            patch never covers the receiving image's salient part).
        label_weight: ``"area"`` (CutMix's rule: the patch's label weight is its area share
            ``1 - lam``) or ``"saliency"``: the partner's saliency mass inside the box over
            its total, so a patch of background earns little label weight (a partner whose
            map is all zero falls back to the area share). Needs a saliency map.

    ``op(images, labels) -> (mixed images, float32 (B, K) soft targets)``.
    """

    placement = "center"
    mixes_labels = True
    region = "pasted"
    params_type = CutMixParams

    def __init__(
        self,
        alpha: float = 1.0,
        p: float = 1.0,
        num_classes: int | None = None,
        per_sample: bool = True,
        placer: Placer | None = None,
        label_weight: Literal["area", "saliency"] = "area",
    ) -> None:
        super().__init__(placer)
        self.alpha = check_positive(alpha, "alpha")
        self.p = check_probability(p)
        self.num_classes = check_num_classes(num_classes)
        if not isinstance(per_sample, bool):
            raise TypeError(f"per_sample must be a bool, got {per_sample!r}")
        self.per_sample = per_sample
        if label_weight not in ("area", "saliency"):
            raise ValueError(f"label_weight must be 'area' or 'saliency', got {label_weight!r}")
        self.label_weight = label_weight

    def needs_saliency(self, images: Tensor) -> bool:
        return self.placer.needs_saliency or self.label_weight == "saliency"

    def make_params(self, images, labels, saliency, generator) -> CutMixParams:
        """Draw order: lam, applied, positions (the placer), perm (B,). With
        ``per_sample=False`` lam, applied and a uniform position are drawn once and shared."""
        b, _, h, w = images.shape
        dev = images.device
        if self.per_sample and type(self.placer) is UniformPlacer and not self.placer.whole_boxes:
            sizes, boxes = self._draw_boxes(b, h, w, dev, generator)
        else:
            n = b if self.per_sample else 1
            # Beta(1, 1) stays the float32 uniform the official mode's draw order documents.
            lam = beta(self.alpha, self.alpha, n, device=dev, generator=generator, dtype=torch.float32 if self.alpha == 1.0 else _F64)
            applied = bernoulli(self.p, n, device=dev, generator=generator)
            # 1 - lam in float64, so the floor matches the official int(W * sqrt(1 - lam)) on the same lam.
            # per_sample=False: the official far edge c + s//2, a centred box of the even size 2 (s//2).
            sizes = area_sizes(1.0 - lam.double(), h, w, even=not self.per_sample)
            sizes = torch.where(applied[:, None], sizes, torch.zeros_like(sizes)).expand(b, 2).contiguous()
            boxes = self.place(sizes, images, saliency, generator, shared=not self.per_sample)
        perm = _permutation(b, dev, generator)
        weight = None
        if self.label_weight == "saliency":
            assert saliency is not None
            weight = saliency_patch_weight(saliency, boxes, perm)
        return CutMixParams(boxes=boxes, sizes=sizes, perm=perm, patch_weight=weight)

    def _draw_boxes(self, b: int, h: int, w: int, dev: torch.device, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """Per-image (B, 2) sizes and (B, 4) boxes with the default placer, from one (B, 1, k)
        uniform draw: the centre's row and column, then (alpha = 1) lam, then (p < 1) who is
        mixed; a Beta(alpha, alpha) lam otherwise comes first, from one Dirichlet draw."""
        k = 2 + (self.alpha == 1.0) + (self.p < 1.0)
        if self.alpha == 1.0:
            lam = None
        else:
            lam = _draw_lam(self.alpha, b, dev, generator).view(b, 1, 1)
        # One addcmul: the centre scaled to (H, W), 1 - lam and u + p (floored: 1 with probability p).
        scale = line((float(h), float(w)) + ((-1.0,) if lam is None else ()) + ((1.0,) if self.p < 1.0 else ()), (1, k), _F64, dev)
        offset = line((0.0, 0.0) + ((1.0,) if lam is None else ()) + ((self.p,) if self.p < 1.0 else ()), (1, k), _F64, dev)
        drawn = torch.addcmul(offset, rand((b, 1, k), dev, generator), scale)
        parts = drawn.split([2] + [1] * (k - 2), 2)
        centre = parts[0].floor()
        share = (1.0 - lam) if lam is not None else parts[1]  # 1 - lam in float64, before the sqrt
        if self.p < 1.0:
            share = share * parts[-1].floor_()  # an image not mixed gets a (0, 0) box
        # float64 so the floor matches the official int(W * sqrt(1 - lam)) on the same lam.
        # ``long()`` truncates, the floor of a non-negative side.
        size = (share.sqrt() * line((float(h), float(w)), (1, 2), _F64, dev)).long()
        return size.view(b, 2), centre_boxes(centre, size, h, w)

    def _check_params(self, params: object, images: Tensor) -> None:
        from keepmix.functional.mixing import _check_weight, check_perm

        super()._check_params(params, images)
        assert isinstance(params, CutMixParams)
        check_perm(params.perm, images.shape[0], "params.perm")
        if params.patch_weight is not None:
            _check_weight(params.patch_weight, images.shape[0], "params.patch_weight")

    def apply_params(self, images, labels, params):
        """Paste ``images[params.perm]`` into ``params.boxes``: ``(images, targets)``."""
        return cutmix_kernel(images, labels, params.boxes, params.perm, params.patch_weight)

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, p={self.p}, num_classes={self.num_classes}, per_sample={self.per_sample}, "
            f"label_weight={self.label_weight!r}"
        )


def _permutation(b: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
    """(B,) int64 uniform random permutation: one ``randperm``. While ``torch.compile`` traces,
    the argsort of B uniforms instead (the same distribution): inductor's randperm-index
    rewrite fails on a whole forward that indexes by a full ``randperm``."""
    if torch.compiler.is_compiling():
        return torch.rand(b, device=device, generator=generator).argsort()
    if generator is None:
        return torch.randperm(b, device=device)
    return torch.randperm(b, generator=generator, device=generator.device).to(device)


def _draw_lam(alpha: float, n: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
    """(n,) float64 lam ~ Beta(alpha, alpha): one uniform for alpha = 1, else one Dirichlet draw."""
    if alpha == 1.0:
        return rand((n,), device, generator)
    return beta_columns(((alpha, alpha),), (n,), device, generator)[:, 0]


def saliency_patch_weight(saliency: Tensor, boxes: Tensor, perm: Tensor) -> Tensor:
    """(B,) float32 label weight of each pasted patch: the partner's saliency mass inside the
    box over the partner's total (the area share where the partner's map is all zero)."""
    h, w = saliency.shape[-2:]
    area_share = box_areas(boxes).double() / (h * w)
    sat = summed_area_table(saliency)[perm]
    inside = box_sums(sat, boxes)
    total = sat[:, -1, -1]
    share = inside / total.clamp_min(torch.finfo(torch.float64).tiny)
    # clamp: a user map with negative entries could leave [0, 1]; a weight must not.
    return torch.where(total > 0, share.clamp(0.0, 1.0), area_share).float()
