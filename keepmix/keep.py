"""KeepAugment (Gong et al., CVPR 2021): augment without destroying what the model looks at.

KeepAugment is a placement, not a wrapper:

* **Selective-cut** is :class:`keepmix.placers.KeepPlacer` given to any region op:
  ``Cutout(16, placer=KeepPlacer(q=0.6))``. The op keeps its region *sizes*; only the
  positions move, below each image's saliency quantile. :class:`KeepCutout`,
  :class:`KeepRandomErasing` and :class:`KeepCutMix` are those ops with a KeepPlacer (the
  placer's arguments ``q``, ``score``, ``whole_boxes``, ``saliency_fn`` and
  ``candidate_stride`` are taken by name; everything else goes to the op).
* **Selective-paste** is :class:`KeepPaste` around any image-level transform (a keepmix op or
  any callable on a batch): ``x' = M * x + (1 - M) * transform(x)`` with the kept region ``M``
  drawn above the saliency quantile. :class:`KeepAutoAugment` and :class:`KeepRandAugment`
  wrap the policies (the paste arguments by name, the rest to the policy).

**Saliency**, two ways: pass a precomputed (B, H, W) map, ``op(images, labels, saliency=S)``,
or give the placer ``saliency_fn`` (a :class:`keepmix.saliency.Saliency` or any callable
``(images, labels) -> (B, H, W)``) and call ``op(images, labels)``. An explicit
``saliency=`` wins. Selection details, the fallback and the score rules:
:mod:`keepmix.functional.selection`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from keepmix.base import Op, Params, RegionParams, SaliencyFn
from keepmix.functional.boxes import paste
from keepmix.functional.selection import Score
from keepmix.mixing import CutMix
from keepmix.placers import KeepPlacer
from keepmix.policies import AutoAugment, RandAugment
from keepmix.regional import Cutout, RandomErasing

__all__ = [
    "KeepPasteParams",
    "KeepPaste",
    "KeepCutout",
    "KeepRandomErasing",
    "KeepCutMix",
    "KeepAutoAugment",
    "KeepRandAugment",
    "keep_placer",
]

#: KeepPlacer's arguments, taken by name by the Keep* region ops.
PLACER_ARGS = ("q", "score", "whole_boxes", "saliency_fn", "candidate_stride")
#: KeepPaste's own arguments, taken by name by KeepAutoAugment / KeepRandAugment.
PASTE_ARGS = ("size", "q", "score", "whole_boxes", "saliency_fn", "candidate_stride")


def keep_placer(kwargs: dict[str, Any]) -> KeepPlacer:
    """A KeepPlacer from the placer arguments in ``kwargs`` (removed from it)."""
    return KeepPlacer(**{k: kwargs.pop(k) for k in PLACER_ARGS if k in kwargs})


def _check_size(size: int | Sequence[int]) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in pair):
        raise ValueError(f"size must be a positive int or a pair (h, w) of them, got {size!r}")
    return int(pair[0]), int(pair[1])


@dataclass(frozen=True)
class KeepPasteParams(RegionParams):
    """The kept regions (``boxes``, ``sizes``) and the transform's own params (``inner``,
    when the transform is a keepmix op; None for a plain callable)."""

    inner: Params | None = None


class KeepPaste(Op):
    """Selective-paste: an image-level transform that leaves each image's salient region as is.

    ``x_aug = transform(x)``; a ``size`` region with score strictly above the per-image
    q-quantile ``tau`` is drawn uniformly; ``x' = M * x + (1 - M) * x_aug``.

    Args:
        transform: a keepmix op (its params are drawn in ``sample_params``, so ``transform`` is
            deterministic) or any callable on a (B, C, H, W) batch returning the same shape,
            dtype and device (a kornia augmentation, a lambda; its randomness is its own and
            it runs in ``transform``).
        size: the kept region, an int or (h, w) (paper, CIFAR-10: 16).
        q: quantile level of the threshold, in (0, 1) (paper: 0.6).
        score: ``"sum"`` (the paper's box sum) or ``"mean"``.
        whole_boxes: True (default): the region lies fully inside the image, so every image
            keeps exactly h x w original pixels; False: centres anywhere, clipped like Cutout.
        saliency_fn: ``(images, labels) -> (B, H, W)``, e.g. ``Saliency(model)``.
        candidate_stride: score every ``stride``-th position per axis (exact when 1).

    Labels pass through; they are only used to compute the saliency.
    """

    single_image = True
    region = "kept"
    params_type = KeepPasteParams

    def __init__(
        self,
        transform: Callable[[Tensor], Tensor],
        size: int | Sequence[int] = 16,
        q: float = 0.6,
        score: Score = "sum",
        whole_boxes: bool = True,
        saliency_fn: SaliencyFn | None = None,
        candidate_stride: int = 1,
    ) -> None:
        super().__init__()
        if not callable(transform):
            raise TypeError(f"transform must be a keepmix op or a callable on a batch of images, got {type(transform).__name__}")
        if isinstance(transform, Op) and transform.mixes_labels:
            raise TypeError(f"transform must keep labels (an image-level transform); {type(transform).__name__} mixes them")
        self.inner = transform
        self.size = _check_size(size)
        self.placer = KeepPlacer(q, score, whole_boxes, saliency_fn, candidate_stride)

    # Properties over Op's plain class attributes: the answer depends on the transform.
    @property
    def raw_pixels(self) -> bool:  # type: ignore[override]
        return isinstance(self.inner, Op) and self.inner.raw_pixels

    @property  # as raw_pixels: a property over Op's class attribute
    def differentiable(self) -> bool:  # type: ignore[override]
        return not isinstance(self.inner, Op) or self.inner.differentiable

    def needs_saliency(self, images: Tensor) -> bool:
        return True

    def saliency_source(self) -> SaliencyFn | None:
        return self.placer.saliency_fn

    def regions(self, params: Params) -> Tensor | None:
        assert isinstance(params, KeepPasteParams)
        return params.boxes

    def _check_images(self, images: object) -> Tensor:
        x = self.inner._check_images(images) if isinstance(self.inner, Op) else super()._check_images(images)
        h, w = x.shape[-2:]
        if self.size[0] > h or self.size[1] > w:
            raise ValueError(f"size {self.size} is larger than the {h}x{w} images")
        return x

    def make_params(self, images, labels, saliency, generator) -> KeepPasteParams:
        """Draw order: the kept regions (the placer), then the transform's params."""
        selection = self.placer.select(saliency, self.size, "center", "above", generator)
        # The same map goes to the transform: a keepmix op that places by saliency (a Keep*
        # op) needs it, the others ignore it.
        inner = self.inner.make_params(images, labels, saliency, generator) if isinstance(self.inner, Op) else None
        sizes = torch.tensor(self.size, device=images.device).expand(images.shape[0], 2)
        return KeepPasteParams(boxes=selection.boxes, sizes=sizes, inner=inner)

    def _check_params(self, params: object, images: Tensor) -> None:
        from keepmix.functional.boxes import check_boxes

        super()._check_params(params, images)
        assert isinstance(params, KeepPasteParams)
        check_boxes(params.boxes, images.shape[0], images.shape[-2], images.shape[-1], name="params.boxes")
        if isinstance(self.inner, Op):
            self.inner._check_params(params.inner, images)

    def apply_params(self, images, labels, params):
        """``transform(images)`` everywhere except inside ``params.boxes``, where ``images`` is kept."""
        if isinstance(self.inner, Op):
            augmented, _ = self.inner.apply_params(images, None, params.inner)
        else:
            augmented = self.inner(images)
            if not isinstance(augmented, Tensor) or augmented.shape != images.shape:
                got = tuple(augmented.shape) if isinstance(augmented, Tensor) else type(augmented).__name__
                raise ValueError(f"the transform must return a batch shaped like its input {tuple(images.shape)}, got {got}")
            if augmented.dtype != images.dtype or augmented.device != images.device:
                raise ValueError(
                    f"the transform must keep dtype and device ({images.dtype}, {images.device}), "
                    f"got ({augmented.dtype}, {augmented.device})"
                )
        return paste(augmented, images, params.boxes), labels

    def extra_repr(self) -> str:
        return f"size={self.size}"


# --------------------------------------------------------------------------------------
# The Keep names: the ops with a KeepPlacer (selective-cut) or inside KeepPaste
# --------------------------------------------------------------------------------------


class KeepCutout(Cutout):
    """KeepAugment + Cutout: ``Cutout(..., placer=KeepPlacer(q, score, whole_boxes,
    saliency_fn, candidate_stride))``; a ``length`` square per image, away from the salient part."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        placer = keep_placer(kwargs)
        # placer also passed by the caller: Python's own "multiple values" TypeError, as intended.
        super().__init__(*args, placer=placer, **kwargs)  # type: ignore[misc]


class KeepRandomErasing(RandomErasing):
    """KeepAugment + Random Erasing: each erased box lies inside the image and below ``tau``
    (``RandomErasing(..., placer=KeepPlacer(...))``, the placer's arguments by name)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        placer = keep_placer(kwargs)
        # placer also passed by the caller: Python's own "multiple values" TypeError, as intended.
        super().__init__(*args, placer=placer, **kwargs)  # type: ignore[misc]


class KeepCutMix(CutMix):
    """KeepAugment + CutMix: the partner's patch never covers the receiving image's salient part.

    ``CutMix(..., placer=KeepPlacer(...))``: the box size comes from CutMix's lam, its
    position is drawn below ``tau`` on the saliency of the image that *receives* the patch,
    and lam stays the exact unpasted area. ``label_weight="saliency"`` (a CutMix option)
    weighs the patch's label by the partner's saliency inside it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        placer = keep_placer(kwargs)
        # placer also passed by the caller: Python's own "multiple values" TypeError, as intended.
        super().__init__(*args, placer=placer, **kwargs)  # type: ignore[misc]


def _paste_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: kwargs.pop(k) for k in PASTE_ARGS if k in kwargs}


class KeepAutoAugment(KeepPaste):
    """KeepAugment + AutoAugment: the augmented image with its salient ``size`` region restored.

    ``KeepPaste(AutoAugment(*args, **rest), size, q, score, whole_boxes, saliency_fn,
    candidate_stride)``: the paste arguments by name, everything else to
    :class:`keepmix.policies.AutoAugment` (images in its ranges: uint8, or float in [0, 1]).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        keep = _paste_kwargs(kwargs)
        super().__init__(AutoAugment(*args, **kwargs), **keep)


class KeepRandAugment(KeepPaste):
    """KeepAugment + RandAugment: ``KeepPaste(RandAugment(*args, **rest), ...)``, the paste
    arguments by name, everything else to :class:`keepmix.policies.RandAugment`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        keep = _paste_kwargs(kwargs)
        super().__init__(RandAugment(*args, **kwargs), **keep)
