"""Region-level augmentation: Cutout and Random Erasing, one box per image.

Both are :class:`keepmix.base.RegionOp` s: ``sample_params`` draws every image's box size,
its position (through the op's ``placer``) and fill values at once; ``transform`` erases them.
Labels pass through unchanged. ``placer=KeepPlacer(...)`` gives KeepAugment's selective-cut
versions (:class:`keepmix.keep.KeepCutout`, :class:`keepmix.keep.KeepRandomErasing`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from keepmix._checks import check_int, check_probability, check_range_pair
from keepmix.base import RegionOp, RegionParams
from keepmix.functional.boxes import box_mask, corner_boxes_at, paste, where
from keepmix.functional.constants import cached, line
from keepmix.functional.erasing import check_fill, check_fill_for, constant_fill, fill_tensor
from keepmix.placers import KeepPlacer, Placer, UniformPlacer
from keepmix.sampling import bernoulli, normal, rand, randint

_F64 = torch.float64

__all__ = ["CutoutParams", "Cutout", "RandomErasingParams", "RandomErasing"]


def _random_bytes(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None) -> Tensor:
    """Integers uniform in [0, 255] as uint8 (keepmix.sampling's draw-device convention)."""
    return randint(0, 256, shape, device=device, generator=generator).to(torch.uint8)


# --------------------------------------------------------------------------------------
# Cutout
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CutoutParams(RegionParams):
    """Cutout's boxes: ``sizes`` is (length, length) per image ((0, 0) where skipped by
    ``p``); ``boxes`` the square centred at a uniform pixel, clipped at the border."""


class Cutout(RegionOp):
    """Cutout (DeVries & Taylor 2017): erase a ``length`` x ``length`` square per image.

    The centre is uniform over all H x W pixels and the square is clipped at the border
    (placement ``"center"``), so a square near an edge erases less. Each image is cut with
    probability ``p`` (the paper: always).

    Args:
        length: side of the square in pixels (CIFAR-10: 16, CIFAR-100: 8); at most the
            image's height and width (a larger square would blank whole images).
        fill: the value written into the square: a number or one number per channel. Cutout
            runs after normalisation in the paper, so the default 0 is the dataset mean. On
            uint8 images it must be an integer in [0, 255] (an error otherwise, never clipped).
        p: probability that an image is cut.
        placer: where each square goes: :class:`~keepmix.placers.UniformPlacer` (default),
            or :class:`~keepmix.placers.KeepPlacer` for KeepAugment's selective-cut.

    Input (B, C, H, W) or (C, H, W), float or uint8, any device; output same dtype and device.
    """

    placement = "center"
    single_image = True
    params_type = CutoutParams

    def __init__(self, length: int = 16, fill: float | Sequence[float] = 0.0, p: float = 1.0, placer: Placer | None = None) -> None:
        super().__init__(placer)
        self.length = check_int(length, "length", low=1, what="a positive int (pixels)")
        if isinstance(fill, Tensor):
            raise TypeError("fill must be a number or a sequence of numbers (one per channel), not a tensor")
        self.fill = check_fill(fill)
        self.p = check_probability(p)

    def _check_images(self, images: object) -> Tensor:
        x = super()._check_images(images)
        if self.length > x.shape[-2] or self.length > x.shape[-1]:
            raise ValueError(f"length {self.length} is larger than the {x.shape[-2]}x{x.shape[-1]} images (Cutout would blank them)")
        if not isinstance(self.fill, Tensor):
            check_fill_for(self.fill, x.dtype, x.shape[1])
        return x

    def make_params(self, images, labels, saliency, generator) -> CutoutParams:
        """With the default placer, one (B, 2) uniform draw (rows, columns: the centre; a third
        column decides ``p`` when p < 1). With another placer: who is cut (``p``), then the
        placer's draws."""
        b, _, h, w = images.shape
        dev, n = images.device, self.length
        if isinstance(self.placer, KeepPlacer) and self.p >= 1.0:
            # Every image cut with one size: the selection's shared-candidate path.
            sizes = cached(("cutout_sizes", n, dev), lambda: torch.full((1, 2), n, device=dev)).expand(b, 2)
            assert saliency is not None  # needs_saliency: the boundary resolved it
            return CutoutParams(boxes=self.placer.select(saliency, (n, n), self.placement, "below", generator).boxes, sizes=sizes)
        if type(self.placer) is not UniformPlacer or self.placer.whole_boxes:
            applied = bernoulli(self.p, b, device=dev, generator=generator)
            sizes = (applied.long() * n)[:, None].expand(b, 2)
            return CutoutParams(boxes=self.place(sizes, images, saliency, generator), sizes=sizes)
        # The centre is floor(u * (H, W)); the edges floor(u * H) - n // 2 and that + n, so
        # one addcmul and one floor give all four (the floor of a whole shift is the shift).
        offsets = line((-float(n // 2), float(n - n // 2)), (2, 1), _F64, dev)
        if self.p >= 1.0:
            edges = torch.addcmul(offsets, rand((b, 1, 2), dev, generator), line((float(h), float(w)), (1, 2), _F64, dev)).floor_()
            sizes = cached(("cutout_sizes", n, dev), lambda: torch.full((1, 2), n, device=dev)).expand(b, 2)
        else:
            # floor(u + p) is 1 with probability p: the third column is "cut" (1) or not (0).
            scale = line((float(h), float(w), 1.0), (1, 3), _F64, dev)
            drawn = torch.addcmul(line((0.0, 0.0, self.p), (1, 3), _F64, dev), rand((b, 1, 3), dev, generator), scale).floor_()
            centre, cut = drawn.split([2, 1], 2)
            edges = torch.addcmul(centre, cut, offsets)  # an image not cut gets the empty box at its centre
            sizes = (cut * line((float(n), float(n)), (1, 1, 2), _F64, dev)).long().view(b, 2)
        edges = edges.clamp_(line((0.0,), (1,), _F64, dev), line((float(h), float(w)), (1, 2), _F64, dev))
        return CutoutParams(boxes=edges.long().view(b, 4), sizes=sizes)

    def apply_params(self, images, labels, params):
        """``images`` with ``params.boxes`` set to ``fill``; outside them bitwise unchanged."""
        mask = box_mask(params.boxes, images.shape[-2], images.shape[-1])
        if isinstance(self.fill, Tensor):
            return paste(images, fill_tensor(self.fill, images), params.boxes), labels
        fill = constant_fill(self.fill, images.dtype, images.device)
        if isinstance(fill, Tensor):
            return where(mask, fill, images), labels
        return images.masked_fill(mask, fill), labels

    def extra_repr(self) -> str:
        return f"length={self.length}, fill={self.fill}, p={self.p}"


# --------------------------------------------------------------------------------------
# Random Erasing
# --------------------------------------------------------------------------------------

_RANDOM_VALUES = ("random_box", "random_pixel")


@dataclass(frozen=True)
class RandomErasingParams(RegionParams):
    """Random Erasing's boxes and fill values.

    ``sizes`` (B, 2) is the (h, w) of the first candidate that fits, (0, 0) where the image is
    skipped by ``p`` or no candidate fits; ``boxes`` (B, 4) lie fully inside the image.
    ``values`` holds the fill in the images' dtype, one row per image: (B, C, 1, 1) for a
    constant or ``"random_box"``, (B, C, H, W) for ``"random_pixel"``.
    """

    values: Tensor


class RandomErasing(RegionOp):
    """Random Erasing (Zhong et al. 2017): erase a random box fully inside each image.

    With probability ``p`` per image, draw an area fraction ``s ~ U(scale)`` and an aspect
    ratio ``r`` log-uniform in ``ratio``; the box is ``h = round(sqrt(s H W r))`` by
    ``w = round(sqrt(s H W / r))``, placed uniformly among the positions that keep it inside
    the image (placement ``"inside"``).

    Like torchvision's ten tries, but with no loop: ``num_tries`` candidate (s, r) pairs are
    drawn for every image at once and the first whose box fits (1 <= h <= H, 1 <= w <= W) is
    taken. **Fallback**: if none of an image's candidates fits (only likely for very
    elongated ratios or tiny images), its box is empty and the image is left unchanged, as
    torchvision does.

    Args:
        p: probability that an image is erased (paper: 0.5).
        scale: range of the erased area as a fraction of the image, 0 < min <= max <= 1.
        ratio: range of the aspect ratio h / w, 0 < min <= max.
        value: the fill: a number or one number per channel (uint8 images: integers in
            [0, 255]); ``"random_box"`` one random value per channel and box; or
            ``"random_pixel"`` a random value per erased pixel. Random values are standard
            normal for float images (the op runs after normalisation, as in the paper) and
            uniform integers in [0, 255] for uint8 images, all drawn from ``generator``.
        num_tries: candidate (scale, ratio) pairs per image.
        placer: where each box goes (default uniform; ``KeepPlacer`` for selective-cut).

    Input (B, C, H, W) or (C, H, W), float or uint8, any device; output same dtype and device.
    """

    placement = "inside"
    single_image = True
    params_type = RandomErasingParams

    def __init__(
        self,
        p: float = 0.5,
        scale: tuple[float, float] = (0.02, 0.4),
        ratio: tuple[float, float] = (0.3, 1 / 0.3),
        value: float | Sequence[float] | str = 0.0,
        num_tries: int = 10,
        placer: Placer | None = None,
    ) -> None:
        super().__init__(placer)
        self.p = check_probability(p)
        self.scale = check_range_pair(scale, "scale", 0.0, 1.0)
        if self.scale[0] <= 0.0:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale!r}")
        self.ratio = check_range_pair(ratio, "ratio", 0.0)
        if self.ratio[0] <= 0.0 or not math.isfinite(self.ratio[1]):
            raise ValueError(f"ratio must satisfy 0 < min <= max < inf, got {ratio!r}")
        if isinstance(value, str):
            if value not in _RANDOM_VALUES:
                raise ValueError(f"value must be a number, a sequence of numbers, 'random_box' or 'random_pixel', got {value!r}")
            self.value: float | tuple[float, ...] | Tensor | str = value
        elif isinstance(value, Tensor):
            raise TypeError("value must be a number, a sequence of numbers, 'random_box' or 'random_pixel', not a tensor")
        else:
            self.value = check_fill(value, "value")
        self.num_tries = check_int(num_tries, "num_tries", low=1)

    def _check_images(self, images: object) -> Tensor:
        x = super()._check_images(images)
        if not isinstance(self.value, (str, Tensor)):
            check_fill_for(self.value, x.dtype, x.shape[1], "value")
        return x

    def _candidate_sizes(self, b: int, h: int, w: int, dev: torch.device, generator: torch.Generator | None) -> Tensor:
        """(B, 1, 2) float64 (h, w) per image: the first candidate that fits, (0, 0) if skipped or none fits.

        One (B, 2T (+ 1), 1) uniform draw: T areas, T log-ratios, then (p < 1) who is erased.
        One ``addcmul`` maps it to areas ``A`` (both columns), log-ratios ``(l, -l)`` and
        ``floor(u + p)`` (1: erased); the candidates are ``round(sqrt(A exp(l)))`` and
        ``round(sqrt(A exp(-l)))`` (float64, so the rounding matches a Python-float reference).
        """
        t = self.num_tries
        (s0, s1), (r0, r1), hw = self.scale, self.ratio, float(h * w)
        l0, dl = math.log(r0), math.log(r1) - math.log(r0)
        key = ("erasing_affine", t, self.scale, self.ratio, self.p, h, w, dev)

        def build() -> tuple[Tensor, Tensor]:
            rows = [(s0 * hw, s0 * hw, (s1 - s0) * hw, (s1 - s0) * hw)] * t + [(l0, -l0, dl, -dl)] * t
            rows += [(self.p, self.p, 1.0, 1.0)] if self.p < 1.0 else []
            table = torch.tensor(rows, dtype=_F64, device=dev).view(len(rows), 2, 2)
            return table[:, 0].contiguous(), table[:, 1].contiguous()

        offset, scale = cached(key, build)
        drawn = torch.addcmul(offset, rand((b, offset.shape[0], 1), dev, generator), scale)
        if self.p < 1.0:
            area, log_ratio, erased = drawn.split([t, t, 1], 1)
            area = area * erased.floor_()  # a zero area never fits: the image is skipped
        else:
            area, log_ratio = drawn.split([t, t], 1)
        sides = (area * log_ratio.exp_()).sqrt_().round_()  # (B, T, 2)
        fits = (sides.clamp(line((1.0,), (1,), _F64, dev), line((float(h), float(w)), (1, 2), _F64, dev)) == sides).all(2, keepdim=True)
        found, first = fits.max(1, keepdim=True)  # the first candidate that fits (index 0 if none)
        return sides.gather(1, first.expand(b, 1, 2)) * found

    def sample_sizes(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(B, 2) int64 box sizes: the first fitting candidate, (0, 0) if skipped or none fits
        (the draws of :meth:`make_params`' first step)."""
        b, _, h, w = images.shape
        return self._candidate_sizes(b, h, w, images.device, generator).long().view(b, 2)

    def sample_values(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The fill values in the images' dtype (see :class:`RandomErasingParams`)."""
        b, c, h, w = images.shape
        value, dev = self.value, images.device
        if isinstance(value, str):  # "random_box" or "random_pixel" (the only strings __init__ admits)
            shape = (b, c, 1, 1) if value == "random_box" else (b, c, h, w)
            if images.dtype == torch.uint8:
                return _random_bytes(shape, dev, generator)
            return normal(shape, device=dev, generator=generator).to(images.dtype)
        if isinstance(value, Tensor):
            return fill_tensor(value, images, "value").expand(b, c, 1, 1)
        values = (value,) * c if isinstance(value, float) else value * (c // len(value))
        return cached(
            ("erasing_values", values, b, images.dtype, dev), lambda: line(values, (1, c, 1, 1), images.dtype, dev).expand(b, c, 1, 1)
        )

    def make_params(self, images, labels, saliency, generator) -> RandomErasingParams:
        """Draw order: sizes (areas, ratios, who is erased: one draw), positions (rows, columns:
        one draw; another placer: its draws), fill values."""
        b, _, h, w = images.shape
        dev = images.device
        size = self._candidate_sizes(b, h, w, dev, generator)
        if type(self.placer) is UniformPlacer:
            # The top-left corner is uniform over the H - h + 1 rows (W - w + 1 columns) that keep the box inside.
            corner = (rand((b, 1, 2), dev, generator) * (line((float(h + 1), float(w + 1)), (1, 2), _F64, dev) - size)).floor_()
            boxes = corner_boxes_at(corner, size)
            sizes = size.long().view(b, 2)
        else:
            sizes = size.long().view(b, 2)
            boxes = self.place(sizes, images, saliency, generator)
        return RandomErasingParams(boxes=boxes, sizes=sizes, values=self.sample_values(images, generator))

    def _check_params(self, params: object, images: Tensor) -> None:
        super()._check_params(params, images)
        assert isinstance(params, RandomErasingParams)
        fill_tensor(params.values, images, "params.values")

    def apply_params(self, images, labels, params):
        """``images`` with ``params.boxes`` set to ``params.values``; elsewhere bitwise unchanged."""
        return where(box_mask(params.boxes, images.shape[-2], images.shape[-1]), params.values, images), labels

    def extra_repr(self) -> str:
        return f"p={self.p}, scale={self.scale}, ratio={self.ratio}, value={self.value!r}, num_tries={self.num_tries}"
