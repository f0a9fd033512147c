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
from keepmix.functional.boxes import paste
from keepmix.functional.erasing import check_fill, fill_tensor
from keepmix.placers import Placer
from keepmix.sampling import bernoulli, log_uniform, normal, randint, uniform

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
        return x

    def make_params(self, images, labels, saliency, generator) -> CutoutParams:
        """Draw order: who is cut (``p``), then the position (the placer's draws)."""
        b = images.shape[0]
        applied = bernoulli(self.p, b, device=images.device, generator=generator)
        sizes = (applied.long() * self.length)[:, None].expand(b, 2)
        return CutoutParams(boxes=self.place(sizes, images, saliency, generator), sizes=sizes)

    def apply_params(self, images, labels, params):
        """``images`` with ``params.boxes`` set to ``fill``; outside them bitwise unchanged."""
        return paste(images, fill_tensor(self.fill, images), params.boxes), labels

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

    def sample_sizes(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(B, 2) int64 box sizes: the first fitting candidate, (0, 0) if skipped or none fits.

        Draw order (fixed, for reproducibility): applied (B,), areas (B, T), ratios (B, T).
        """
        b, _, h, w = images.shape
        dev = images.device
        applied = bernoulli(self.p, b, device=dev, generator=generator)
        # float64 so that the rounding of h and w matches a Python-float reference exactly.
        area = uniform((b, self.num_tries), *self.scale, device=dev, generator=generator).double() * (h * w)
        aspect = log_uniform((b, self.num_tries), *self.ratio, device=dev, generator=generator).double()
        hs = torch.sqrt(area * aspect).round().long()
        ws = torch.sqrt(area / aspect).round().long()
        fits = (hs >= 1) & (hs <= h) & (ws >= 1) & (ws <= w)
        first = fits.to(torch.int8).argmax(dim=1, keepdim=True)  # first True (0 if none)
        chosen = torch.cat([hs.gather(1, first), ws.gather(1, first)], dim=1)
        keep = (applied & fits.any(dim=1))[:, None]
        return torch.where(keep, chosen, torch.zeros_like(chosen))

    def sample_values(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The fill values in the images' dtype (see :class:`RandomErasingParams`)."""
        b, c, h, w = images.shape
        value = self.value
        if isinstance(value, str):  # "random_box" or "random_pixel" (the only strings __init__ admits)
            shape = (b, c, 1, 1) if value == "random_box" else (b, c, h, w)
            if images.dtype == torch.uint8:
                return _random_bytes(shape, images.device, generator)
            return normal(shape, device=images.device, generator=generator).to(images.dtype)
        return fill_tensor(value, images, "value").expand(b, c, 1, 1)

    def make_params(self, images, labels, saliency, generator) -> RandomErasingParams:
        """Draw order: sizes (applied, areas, ratios), positions (the placer), fill values."""
        sizes = self.sample_sizes(images, generator)
        boxes = self.place(sizes, images, saliency, generator)
        return RandomErasingParams(boxes=boxes, sizes=sizes, values=self.sample_values(images, generator))

    def _check_params(self, params: object, images: Tensor) -> None:
        super()._check_params(params, images)
        assert isinstance(params, RandomErasingParams)
        fill_tensor(params.values, images, "params.values")

    def apply_params(self, images, labels, params):
        """``images`` with ``params.boxes`` set to ``params.values``; elsewhere bitwise unchanged."""
        return paste(images, params.values, params.boxes), labels

    def extra_repr(self) -> str:
        return f"p={self.p}, scale={self.scale}, ratio={self.ratio}, value={self.value!r}, num_tries={self.num_tries}"
