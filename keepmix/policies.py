"""AutoAugment, RandAugment and TrivialAugmentWide with the op and magnitude drawn per image.

Public implementations either loop over images (PIL) or, like kornia, draw one sub-policy / op
set per batch. Here every image draws its own sub-policy (AutoAugment) or ops (RandAugment,
TrivialAugmentWide), magnitudes and signs in ``sample_params``, and
:func:`keepmix.functional.policy_ops.apply_ops` applies them batched, by op kind. The op
tables and magnitude spaces are in :mod:`keepmix.functional.policy_ops` (torchvision's).

Images: uint8, or float in [0, 1]; a (B, C, H, W) batch, one (C, H, W) image or a PIL image
(L or RGB), which comes back as the same type. Labels pass through unchanged. Signed ops
(shear, translate, rotate, the four enhance ops) get a random sign per image.

Float images must lie in [0, 1] (the policies' ops work on 8-bit levels): a normalised batch
is refused (``ValueError`` naming ``images`` on the CPU path, a device-side assertion on the
capture-safe path, see :mod:`keepmix.engine`). Augment before ``Normalize``.

**timm's policy strings.** :meth:`RandAugment.from_timm` (``"rand-m9-mstd0.5-inc1"``) and
:meth:`AutoAugment.from_timm` (``"original"``, ``"originalr"``, ``"v0"``, ``"v0r"``, ``"3a"``,
optionally ``-mstd<x>``) build :class:`TimmRandAugment` / :class:`TimmAutoAugment`, which draw
what timm's ``rand_augment_transform`` / ``auto_augment_transform`` draw, per image, and map
magnitudes with timm's level functions (not torchvision's bins). The scales differ:

* keepmix's / torchvision's ``RandAugment(magnitude=9)`` is bin 9 of 31 (0..30): **about 0.3
  of the maximum** (e.g. rotations of 9 degrees of 30, shears of 0.09);
* timm's ``rand-m9`` is level 9 of ``_LEVEL_DENOM = 10``: **0.9 of the maximum** (27 degrees,
  shear 0.27, translations of 0.405 of the side), and ``mstd`` adds Gaussian noise to the level
  of every op call (clipped to [0, 10], or [0, ``mmax``]); each chosen op runs with
  probability ``p`` (timm's default 0.5). So ``rand-m9`` ~ torchvision bin 27 of 31 for the
  geometric ops, applied half the time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from keepmix import sampling
from keepmix._checks import check_int
from keepmix.base import Op, Params
from keepmix.engine import check_values
from keepmix.functional.geometry import interpolation_name
from keepmix.functional.policy_ops import (
    _OP_ID,
    AUTOAUGMENT_POLICIES,
    OP_NAMES,
    RANDAUGMENT_OPS,
    SIGNED_OPS,
    apply_ops,
    magnitude_table,
)

__all__ = [
    "OP_NAMES",
    "SIGNED_OPS",
    "RANDAUGMENT_OPS",
    "AUTOAUGMENT_POLICIES",
    "PolicyParams",
    "magnitude_table",
    "AutoAugment",
    "RandAugment",
    "TrivialAugmentWide",
    "TIMM_OPS",
    "TimmPolicyParams",
    "TimmRandAugment",
    "TimmAutoAugment",
    "parse_timm_rand",
    "parse_timm_auto",
    "timm_magnitudes",
    "pil_gaussian_blur",
]


@dataclass(frozen=True)
class PolicyParams(Params):
    """What a policy does to each image, N steps per image.

    ``ops`` (B, N) int64 indexes :data:`OP_NAMES`; ``magnitudes`` (B, N) float32 are unsigned
    values in the op's units (see :func:`magnitude_table`); ``signs`` (B, N) float32 are +-1
    (always +1 for unsigned ops); ``applied`` (B, N) bool says whether the step runs;
    ``centers`` (B, N, 2) float32 in [0, 1) is the relative (y, x) centre of a Cutout square;
    ``sub_policies`` (B,) int64 is AutoAugment's drawn sub-policy (None for the others).
    """

    ops: Tensor
    magnitudes: Tensor
    signs: Tensor
    applied: Tensor
    centers: Tensor
    sub_policies: Tensor | None = None

    @property
    def signed_magnitudes(self) -> Tensor:
        return self.magnitudes * self.signs


def _check_policy_params(params: PolicyParams, images: Tensor) -> None:
    b = images.shape[0]
    n = params.ops.shape[-1] if params.ops.ndim == 2 else -1
    shapes = {"ops": (b, n), "magnitudes": (b, n), "signs": (b, n), "applied": (b, n), "centers": (b, n, 2)}
    for field, shape in shapes.items():
        t = getattr(params, field)
        if tuple(t.shape) != shape:
            raise ValueError(f"params.{field} must have shape {shape} for a batch of {b}, got {tuple(t.shape)}")
    if params.ops.dtype != torch.int64:
        raise TypeError(f"params.ops must be int64, got {params.ops.dtype}")
    # Op ids outside OP_NAMES are refused by apply_ops, with the per-step counts it reads anyway.


def check_float_range(images: Tensor) -> None:
    """Refuse float images outside [0, 1] (a normalised batch): the policies' ops work on 8-bit
    levels. A ``ValueError`` naming ``images`` on the host path, a device-side assertion on the
    capture-safe path (:func:`keepmix.engine.check_values`)."""
    if not images.is_floating_point():
        return
    check_values(
        (images >= 0) & (images <= 1),
        "images must be uint8 or floats in [0, 1] for the policies (they work on 8-bit levels): "
        "apply AutoAugment / RandAugment / TrivialAugment before Normalize, not after",
        lambda: f"got float values in [{float(images.min()):.4g}, {float(images.max()):.4g}]",
    )


class _Policy(Op):
    """Shared by the policies: fill, interpolation, the translate rule, ``_apply``."""

    single_image = True
    pil_image = True
    channels = (1, 3)
    raw_pixels = True
    differentiable = False  # PIL-exact integer arithmetic: refuse requires_grad images
    params_type = PolicyParams
    #: The op ids the policy can draw (the capture-safe kernel leaves the others out).
    candidates: tuple[int, ...] = tuple(range(len(OP_NAMES)))

    def __init__(self, fill: float | Sequence[float], interpolation: str, whole_pixel_translate: bool) -> None:
        super().__init__()
        interpolation = interpolation_name(interpolation)  # a string, or torchvision's InterpolationMode
        if not isinstance(whole_pixel_translate, bool):
            raise TypeError(f"whole_pixel_translate must be a bool, got {whole_pixel_translate!r}")
        self.whole_pixel_translate = whole_pixel_translate
        t = torch.as_tensor(fill, dtype=torch.float64).flatten()
        if t.numel() not in (1, 3) or not bool(torch.isfinite(t).all()):
            raise ValueError(f"fill must be a finite number or 3 numbers (one per channel), got {fill!r}")
        self.fill = fill
        self.interpolation = interpolation
        self._tables: dict[tuple, Tensor] = {}

    def _check_images(self, images: object) -> Tensor:
        images = super()._check_images(images)
        check_float_range(images)
        return images

    def _signs_centers(self, ops: Tensor, images: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        b, n = ops.shape
        signed = torch.tensor([name in SIGNED_OPS for name in OP_NAMES], device=ops.device)[ops]
        flip = sampling.bernoulli(0.5, (b, n), device=ops.device, generator=generator)
        signs = torch.where(signed & flip, -1.0, 1.0)
        centers = sampling.uniform((b, n, 2), device=ops.device, generator=generator)
        return signs, centers

    def _table(self, space: Literal["standard", "wide"], num_bins: int, images: Tensor) -> Tensor:
        """The magnitude table for this image size, built once per size and device (a dozen
        kernels otherwise on every call). Not kept while compiling or on fake tensors."""
        h, w = images.shape[-2:]
        key = (space, num_bins, h, w, self.whole_pixel_translate, images.device)
        table = self._tables.get(key)
        if table is None:
            table = magnitude_table(space, num_bins, h, w, self.whole_pixel_translate).to(images.device)
            if type(table) is Tensor and not torch.compiler.is_compiling():
                self._tables[key] = table
        return table

    def _check_params(self, params: object, images: Tensor) -> None:
        super()._check_params(params, images)
        assert isinstance(params, PolicyParams)
        _check_policy_params(params, images)

    def apply_params(self, images, labels, params):
        """Apply the drawn ops (see :func:`keepmix.functional.policy_ops.apply_ops`)."""
        dev = images.device
        out = apply_ops(
            images,
            params.ops.to(dev),
            params.signed_magnitudes.to(dev),
            params.applied.to(dev),
            params.centers.to(dev),
            self.fill,
            self.interpolation,
            self.candidates,
            self.whole_pixel_translate,
        )
        return out, labels


class AutoAugment(_Policy):
    """AutoAugment (Cubuk et al. 2019) with the published ``"cifar10"``, ``"svhn"`` or
    ``"imagenet"`` policy; each image draws its own sub-policy, step outcomes and signs.

    Magnitude bins 0..9 index torchvision's 10-bin ``"standard"`` space. ``fill`` (number or
    one per channel, in the images' units) fills pixels uncovered by the geometric ops.
    ``whole_pixel_translate`` (default True, torchvision's rule): translations move whole
    pixels (``int(magnitude)``); False moves by the float value.
    """

    # Buffers (register_buffer in __init__): nn.Module's __getattr__ types them as Tensor | Module.
    _ops: Tensor
    _probs: Tensor
    _bins: Tensor

    def __init__(
        self,
        policy: Literal["cifar10", "svhn", "imagenet"] = "cifar10",
        fill: float | Sequence[float] = 0.0,
        interpolation: Literal["nearest", "bilinear"] = "nearest",
        whole_pixel_translate: bool = True,
    ) -> None:
        super().__init__(fill, interpolation, whole_pixel_translate)
        if policy not in AUTOAUGMENT_POLICIES:
            raise ValueError(f"policy must be one of {sorted(AUTOAUGMENT_POLICIES)}, got {policy!r}")
        self.policy = policy
        steps = AUTOAUGMENT_POLICIES[policy]
        self.register_buffer("_ops", torch.tensor([[_OP_ID[s[0]] for s in sub] for sub in steps]), persistent=False)
        self.register_buffer("_probs", torch.tensor([[s[1] for s in sub] for sub in steps]), persistent=False)
        self.register_buffer("_bins", torch.tensor([[s[2] or 0 for s in sub] for sub in steps]), persistent=False)
        self.candidates = tuple(sorted({_OP_ID[s[0]] for sub in steps for s in sub}))

    def make_params(self, images, labels, saliency, generator) -> PolicyParams:
        """One sub-policy per image, then for each of its two steps: applied with its
        probability, a random sign for signed ops, a Cutout centre."""
        b, dev = images.shape[0], images.device
        choice = sampling.randint(0, len(self._ops), b, device=dev, generator=generator)
        ops, probs, bins = self._ops.to(dev)[choice], self._probs.to(dev)[choice], self._bins.to(dev)[choice]
        applied = sampling.uniform((b, 2), device=dev, generator=generator) < probs
        table = self._table("standard", 10, images)
        mags = table[ops, bins].float()
        signs, centers = self._signs_centers(ops, images, generator)
        return PolicyParams(ops, mags, signs, applied, centers, sub_policies=choice)

    def extra_repr(self) -> str:
        return f"policy={self.policy!r}, fill={self.fill!r}, interpolation={self.interpolation!r}"

    @classmethod
    def from_timm(cls, name: str, **hparams) -> TimmAutoAugment:
        """timm's AutoAugment ``name`` (``"original"``, ``"originalr"``, ``"v0"``, ``"v0r"``,
        ``"3a"``, with an optional ``-mstd<x>`` section), as :class:`TimmAutoAugment`: the same
        augmentation distribution as timm's ``auto_augment_transform(name, hparams)``.
        ``hparams``: ``fill`` (or timm's ``img_mean``), ``translate_pct``, ``translate_const``, ``interpolation`` (see
        :class:`TimmAutoAugment`)."""
        return TimmAutoAugment(**parse_timm_auto(name), **_timm_hparams(hparams))


def _timm_hparams(hparams: dict) -> dict:
    """timm's hparams as keepmix's arguments: ``img_mean`` (timm's fill, a per-channel tuple
    of uint8 levels) is ``fill``; the others pass through (an unknown one is refused by the
    constructor, naming it)."""
    hparams = dict(hparams)
    if "img_mean" in hparams:
        if "fill" in hparams:
            raise ValueError("hparams: give img_mean (timm's name) or fill, not both")
        hparams["fill"] = hparams.pop("img_mean")
    return hparams


def _op_ids(ops: Sequence[str]) -> Tensor:
    ops = tuple(ops)
    if not ops:
        raise ValueError("ops must name at least one op")
    unknown = [o for o in ops if o not in _OP_ID]
    if unknown:
        raise ValueError(f"unknown ops {unknown}; known ops: {OP_NAMES}")
    return torch.tensor([_OP_ID[o] for o in ops])


class RandAugment(_Policy):
    """RandAugment (Cubuk et al. 2020): ``num_ops`` ops drawn uniformly and independently per
    image, all at magnitude bin ``magnitude`` of ``num_magnitude_bins`` (0..30 by default).

    ``ops`` defaults to the paper's 14 (:data:`RANDAUGMENT_OPS`); any names of
    :data:`OP_NAMES` (e.g. adding ``"Cutout"`` or ``"Invert"``) may be given.
    """

    _op_ids: Tensor  # a buffer (register_buffer in __init__)

    def __init__(
        self,
        num_ops: int = 2,
        magnitude: int = 9,
        num_magnitude_bins: int = 31,
        fill: float | Sequence[float] = 0.0,
        interpolation: Literal["nearest", "bilinear"] = "nearest",
        ops: Sequence[str] = RANDAUGMENT_OPS,
        whole_pixel_translate: bool = True,
    ) -> None:
        super().__init__(fill, interpolation, whole_pixel_translate)
        check_int(num_ops, "num_ops", low=1, what="an integer >= 1")
        check_int(num_magnitude_bins, "num_magnitude_bins", low=2, what="an integer >= 2")
        check_int(magnitude, "magnitude", 0, num_magnitude_bins - 1, f"an integer in [0, {num_magnitude_bins - 1}]")
        self.num_ops, self.magnitude, self.num_magnitude_bins = num_ops, magnitude, num_magnitude_bins
        self.ops = tuple(ops)
        self.register_buffer("_op_ids", _op_ids(self.ops), persistent=False)
        self.candidates = tuple(sorted({_OP_ID[o] for o in self.ops}))

    def make_params(self, images, labels, saliency, generator) -> PolicyParams:
        """``num_ops`` op ids per image (uniform, with repetition), signs and Cutout centres."""
        b, dev = images.shape[0], images.device
        pick = sampling.randint(0, len(self._op_ids), (b, self.num_ops), device=dev, generator=generator)
        ops = self._op_ids.to(dev)[pick]
        table = self._table("standard", self.num_magnitude_bins, images)
        mags = table[ops, self.magnitude].float()
        applied = torch.ones_like(ops, dtype=torch.bool)
        signs, centers = self._signs_centers(ops, images, generator)
        return PolicyParams(ops, mags, signs, applied, centers)

    def extra_repr(self) -> str:
        return (
            f"num_ops={self.num_ops}, magnitude={self.magnitude}, num_magnitude_bins={self.num_magnitude_bins}, "
            f"fill={self.fill!r}, interpolation={self.interpolation!r}"
        )

    @classmethod
    def from_timm(cls, config_str: str, **hparams) -> TimmRandAugment:
        """timm's RandAugment string (``"rand-m9-mstd0.5-inc1"``: sections ``m`` magnitude out
        of 10, ``n`` ops, ``p`` per-op probability, ``mstd`` magnitude noise (> 100: uniform in
        [0, m]), ``mmax`` upper clip, ``inc`` the increasing ops, ``t<name>`` an op set:
        ``weights``, ``3a``, ``3aw``), as :class:`TimmRandAugment`:
        the same augmentation distribution as timm's ``rand_augment_transform``. ``hparams``:
        ``fill`` (or timm's ``img_mean``), ``translate_pct``, ``translate_const``, ``interpolation``. See the module
        docstring for how timm's magnitude scale relates to ``RandAugment(magnitude=...)``."""
        return TimmRandAugment(**parse_timm_rand(config_str), **_timm_hparams(hparams))


class TrivialAugmentWide(_Policy):
    """TrivialAugment (Mueller & Hutter 2021), wide space: one op and one magnitude bin drawn
    uniformly per image."""

    _op_ids: Tensor  # a buffer (register_buffer in __init__)

    def __init__(
        self,
        num_magnitude_bins: int = 31,
        fill: float | Sequence[float] = 0.0,
        interpolation: Literal["nearest", "bilinear"] = "nearest",
        ops: Sequence[str] = RANDAUGMENT_OPS,
        whole_pixel_translate: bool = True,
    ) -> None:
        super().__init__(fill, interpolation, whole_pixel_translate)
        check_int(num_magnitude_bins, "num_magnitude_bins", low=2, what="an integer >= 2")
        self.num_magnitude_bins = num_magnitude_bins
        self.ops = tuple(ops)
        self.register_buffer("_op_ids", _op_ids(self.ops), persistent=False)
        self.candidates = tuple(sorted({_OP_ID[o] for o in self.ops}))

    def make_params(self, images, labels, saliency, generator) -> PolicyParams:
        """One op id and one magnitude bin per image, a sign and a Cutout centre."""
        b, dev = images.shape[0], images.device
        pick = sampling.randint(0, len(self._op_ids), (b, 1), device=dev, generator=generator)
        ops = self._op_ids.to(dev)[pick]
        bins = sampling.randint(0, self.num_magnitude_bins, (b, 1), device=dev, generator=generator)
        table = self._table("wide", self.num_magnitude_bins, images)
        mags = table[ops, bins].float()
        applied = torch.ones_like(ops, dtype=torch.bool)
        signs, centers = self._signs_centers(ops, images, generator)
        return PolicyParams(ops, mags, signs, applied, centers)

    def extra_repr(self) -> str:
        return f"num_magnitude_bins={self.num_magnitude_bins}, fill={self.fill!r}, interpolation={self.interpolation!r}"


# --------------------------------------------------------------------------------------
# timm's policies (timm/data/auto_augment.py), drawn per image
# --------------------------------------------------------------------------------------

#: timm's op names; a :class:`TimmPolicyParams` ``timm_ops`` entry indexes this tuple.
TIMM_OPS: tuple[str, ...] = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "PosterizeIncreasing",
    "PosterizeOriginal",
    "Solarize",
    "SolarizeIncreasing",
    "SolarizeAdd",
    "Color",
    "ColorIncreasing",
    "Contrast",
    "ContrastIncreasing",
    "Brightness",
    "BrightnessIncreasing",
    "Sharpness",
    "SharpnessIncreasing",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "TranslateXRel",
    "TranslateYRel",
    "Desaturate",
    "GaussianBlur",
    "GaussianBlurRand",
)
_TIMM_ID = {name: i for i, name in enumerate(TIMM_OPS)}
# Ops whose level function draws a random sign (timm's _randomly_negate).
_TIMM_SIGNED = frozenset(
    {
        "Rotate",
        "ShearX",
        "ShearY",
        "TranslateX",
        "TranslateY",
        "TranslateXRel",
        "TranslateYRel",
        "ColorIncreasing",
        "ContrastIncreasing",
        "BrightnessIncreasing",
        "SharpnessIncreasing",
    }
)
# Two ops keepmix's apply_ops lacks, applied here: ids past OP_NAMES.
_SOLARIZE_ADD = len(OP_NAMES)
_GAUSSIAN_BLUR = len(OP_NAMES) + 1
_LEVEL_DENOM = 10.0

_RAND_TRANSFORMS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "SolarizeAdd",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)
_RAND_INCREASING = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "PosterizeIncreasing",
    "SolarizeIncreasing",
    "SolarizeAdd",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)
_RAND_3A = ("SolarizeIncreasing", "Desaturate", "GaussianBlur")
_RAND_WEIGHTED_3A = {
    "SolarizeIncreasing": 6,
    "Desaturate": 6,
    "GaussianBlur": 6,
    "Rotate": 3,
    "ShearX": 2,
    "ShearY": 2,
    "PosterizeIncreasing": 1,
    "AutoContrast": 1,
    "ColorIncreasing": 1,
    "SharpnessIncreasing": 1,
    "ContrastIncreasing": 1,
    "BrightnessIncreasing": 1,
    "Equalize": 1,
    "Invert": 1,
}
_RAND_WEIGHTED_0 = {
    "Rotate": 3,
    "ShearX": 2,
    "ShearY": 2,
    "TranslateXRel": 1,
    "TranslateYRel": 1,
    "ColorIncreasing": 0.25,
    "SharpnessIncreasing": 0.25,
    "AutoContrast": 0.25,
    "SolarizeIncreasing": 0.05,
    "SolarizeAdd": 0.05,
    "ContrastIncreasing": 0.05,
    "BrightnessIncreasing": 0.05,
    "Equalize": 0.05,
    "PosterizeIncreasing": 0.05,
    "Invert": 0.05,
}

_V0 = (
    (("Equalize", 0.8, 1), ("ShearY", 0.8, 4)),
    (("Color", 0.4, 9), ("Equalize", 0.6, 3)),
    (("Color", 0.4, 1), ("Rotate", 0.6, 8)),
    (("Solarize", 0.8, 3), ("Equalize", 0.4, 7)),
    (("Solarize", 0.4, 2), ("Solarize", 0.6, 2)),
    (("Color", 0.2, 0), ("Equalize", 0.8, 8)),
    (("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)),
    (("ShearX", 0.2, 9), ("Rotate", 0.6, 8)),
    (("Color", 0.6, 1), ("Equalize", 1.0, 2)),
    (("Invert", 0.4, 9), ("Rotate", 0.6, 0)),
    (("Equalize", 1.0, 9), ("ShearY", 0.6, 3)),
    (("Color", 0.4, 7), ("Equalize", 0.6, 0)),
    (("Posterize", 0.4, 6), ("AutoContrast", 0.4, 7)),
    (("Solarize", 0.6, 8), ("Color", 0.6, 9)),
    (("Solarize", 0.2, 4), ("Rotate", 0.8, 9)),
    (("Rotate", 1.0, 7), ("TranslateYRel", 0.8, 9)),
    (("ShearX", 0.0, 0), ("Solarize", 0.8, 4)),
    (("ShearY", 0.8, 0), ("Color", 0.6, 4)),
    (("Color", 1.0, 0), ("Rotate", 0.6, 2)),
    (("Equalize", 0.8, 4), ("Equalize", 0.0, 8)),
    (("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)),
    (("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)),
    (("Posterize", 0.8, 2), ("Solarize", 0.6, 10)),
    (("Solarize", 0.6, 8), ("Equalize", 0.6, 1)),
    (("Color", 0.8, 6), ("Rotate", 0.4, 5)),
)
_ORIGINAL_R = (
    (("PosterizeIncreasing", 0.4, 8), ("Rotate", 0.6, 9)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),
    (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)),
    (("PosterizeIncreasing", 0.6, 7), ("PosterizeIncreasing", 0.6, 6)),
    (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)),
    (("Equalize", 0.4, 4), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, 7)),
    (("PosterizeIncreasing", 0.8, 5), ("Equalize", 1.0, 2)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
    (("Equalize", 0.6, 8), ("PosterizeIncreasing", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
    (("Rotate", 0.4, 9), ("Equalize", 0.6, 2)),
    (("Equalize", 0.0, 7), ("Equalize", 0.8, 8)),
    (("Invert", 0.6, 4), ("Equalize", 1.0, 8)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
    (("Sharpness", 0.4, 7), ("Invert", 0.6, 8)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, 9)),
    (("Color", 0.4, 0), ("Equalize", 0.6, 3)),
    (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),
    (("Invert", 0.6, 4), ("Equalize", 1.0, 8)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)),
)


def _rename(policy, old: str, new: str):
    return tuple(tuple((new if n == old else n, p, m) for n, p, m in sub) for sub in policy)


#: timm's AutoAugment policies: sub-policies of (op, probability, magnitude 0..10) steps.
TIMM_AUTOAUGMENT_POLICIES: dict[str, tuple] = {
    "original": _rename(_ORIGINAL_R, "PosterizeIncreasing", "PosterizeOriginal"),
    "originalr": _ORIGINAL_R,
    "v0": _V0,
    "v0r": _rename(_V0, "Posterize", "PosterizeIncreasing"),
    "3a": ((("Solarize", 1.0, 5),), (("Desaturate", 1.0, 10),), (("GaussianBlurRand", 1.0, 10),)),
}


def _sections(config_str: str, what: str):
    """timm's section parsing: ``re.split(r'(\\d.*)', c)``, the key before the first digit."""
    import re

    for c in config_str.split("-")[1:]:
        if c.startswith("t") and what == "rand":
            yield "t", c[1:]
            continue
        cs = re.split(r"(\d.*)", c)
        if len(cs) < 2:  # no digit: timm ignores the section
            continue
        yield cs[0], cs[1]


def parse_timm_rand(config_str: str) -> dict:
    """The :class:`TimmRandAugment` arguments of a timm RandAugment string (its parser's rules:
    unknown numeric sections are an error, ``w0`` among them as in timm 1.0.31, sections
    without a digit are ignored; ``inc<n>`` sets the increasing ops to ``bool(int(n))``, the
    last such section winning, so ``inc0`` keeps the standard op set)."""
    if not isinstance(config_str, str) or config_str.split("-")[0] != "rand":
        raise ValueError(f"config_str must be a timm RandAugment string starting with 'rand', got {config_str!r}")
    magnitude, num_layers, prob, mstd, mmax, increasing = _LEVEL_DENOM, 2, 0.5, 0.0, None, False
    transforms: str | None = None
    for key, val in _sections(config_str, "rand"):
        try:
            if key == "t":
                transforms = transforms or val
            elif key == "mstd":
                mstd = float(val)
                mstd = math.inf if mstd > 100 else mstd
            elif key == "mmax":
                mmax = int(val)
            elif key == "inc":  # timm 1.0.31: bool(int(val)), the last section wins
                increasing = bool(int(val))
            elif key == "m":
                magnitude = int(val)
            elif key == "n":
                num_layers = int(val)
            elif key == "p":
                prob = float(val)
            else:
                raise ValueError(f"config_str {config_str!r}: unknown RandAugment section {key + val!r}")
        except ValueError as e:
            raise ValueError(str(e) or f"config_str {config_str!r}: bad value in section {key + val!r}") from None
    ops: tuple[str, ...]
    weights: tuple[float, ...] | None
    if transforms is None or transforms in ("",):
        ops, weights = (_RAND_INCREASING if increasing else _RAND_TRANSFORMS), None
    elif transforms == "weights":
        ops, weights = tuple(_RAND_WEIGHTED_0), tuple(_RAND_WEIGHTED_0.values())
    elif transforms == "3aw":
        ops, weights = tuple(_RAND_WEIGHTED_3A), tuple(_RAND_WEIGHTED_3A.values())
    elif transforms == "3a":
        ops, weights = _RAND_3A, None
    else:
        raise ValueError(f"config_str {config_str!r}: unknown op set t{transforms} (known: tweights, t3a, t3aw)")
    return dict(ops=ops, num_ops=num_layers, magnitude=float(magnitude), prob=prob, magnitude_std=mstd, magnitude_max=mmax, weights=weights)


def parse_timm_auto(name: str) -> dict:
    """The :class:`TimmAutoAugment` arguments of a timm AutoAugment name (``"v0-mstd0.5"``)."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    policy = name.split("-")[0]
    if policy not in TIMM_AUTOAUGMENT_POLICIES:
        raise ValueError(f"name {name!r}: unknown timm AutoAugment policy {policy!r}; known: {sorted(TIMM_AUTOAUGMENT_POLICIES)}")
    mstd = 0.0
    for key, val in _sections(name, "auto"):
        if key != "mstd":
            raise ValueError(f"name {name!r}: unknown AutoAugment section {key + val!r} (only mstd)")
        mstd = float(val)
    return dict(policy=policy, magnitude_std=mstd)


def timm_magnitudes(
    timm_ops: Tensor,
    levels: Tensor,
    signs: Tensor,
    height: int,
    width: int,
    translate_pct: float = 0.45,
    translate_const: float = 250.0,
    blur_u: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """timm's level functions: ``(keepmix op ids, signed magnitudes in apply_ops units)``.

    ``timm_ops`` int64 ids into :data:`TIMM_OPS`, ``levels`` float64 (the clipped magnitude
    level, 0..10 or 0..mmax), ``signs`` +-1 (used by the signed ops), ``blur_u`` U(0, 1) draws
    for GaussianBlurRand's radius. Mappings (``l = level / 10``, ``s`` the sign): Rotate ``30 l
    s`` degrees; Posterize ``int(4 l)`` bits (Increasing ``4 - int(4 l)``, Original ``int(4 l) +
    4``); Solarize threshold ``min(256, int(256 l))`` (Increasing ``256 -`` that); SolarizeAdd
    ``min(128, int(110 l))`` below 128; enhance factor ``1.8 l + 0.1`` (Increasing
    ``max(0.1, 1 + 0.9 l s)``), given as ``factor - 1``; shear ``0.3 l s``; translate
    ``translate_pct l s`` of the side (Rel) or ``translate_const l s`` pixels, given as the
    negated PIL offset (keepmix moves content by the value); Desaturate: Color at factor
    ``1 - clamp(0.5 + 0.5 l, 0.5, 1)``; GaussianBlur radius ``clamp(0.1 + 1.9 l, 0.1, 2)``;
    GaussianBlurRand radius ``U(0.1, 2 clamp(l, 0, 1))``.
    """
    lv = levels.double() / _LEVEL_DENOM
    s = signs.double()
    trunc = torch.trunc
    enh = lv * 1.8 + 0.1 - 1.0
    enh_inc = torch.clamp_min(1.0 + lv * 0.9 * s, 0.1) - 1.0
    post = trunc(lv * 4)
    sol = torch.clamp_max(trunc(lv * 256), 256.0)
    u = torch.zeros_like(lv) if blur_u is None else blur_u.double()
    f = lv.clamp(0.0, 1.0)
    table = {
        "Rotate": ("Rotate", lv * 30.0 * s),
        "Posterize": ("Posterize", post),
        "PosterizeIncreasing": ("Posterize", 4 - post),
        "PosterizeOriginal": ("Posterize", post + 4),
        "Solarize": ("Solarize", sol),
        "SolarizeIncreasing": ("Solarize", 256 - sol),
        "SolarizeAdd": (None, torch.clamp_max(trunc(lv * 110), 128.0)),
        "Color": ("Color", enh),
        "Contrast": ("Contrast", enh),
        "Brightness": ("Brightness", enh),
        "Sharpness": ("Sharpness", enh),
        "ColorIncreasing": ("Color", enh_inc),
        "ContrastIncreasing": ("Contrast", enh_inc),
        "BrightnessIncreasing": ("Brightness", enh_inc),
        "SharpnessIncreasing": ("Sharpness", enh_inc),
        "ShearX": ("ShearX", lv * 0.3 * s),
        "ShearY": ("ShearY", lv * 0.3 * s),
        "TranslateX": ("TranslateX", -(lv * float(translate_const)) * s),
        "TranslateY": ("TranslateY", -(lv * float(translate_const)) * s),
        "TranslateXRel": ("TranslateX", -(lv * translate_pct * s) * width),
        "TranslateYRel": ("TranslateY", -(lv * translate_pct * s) * height),
        "Desaturate": ("Color", torch.clamp(1.0 - (0.5 + 0.5 * lv).clamp(0.5, 1.0), 0.0, 1.0) - 1.0),
        "GaussianBlur": (None, (0.1 + 1.9 * lv).clamp(0.1, 2.0)),
        "GaussianBlurRand": (None, 0.1 + (2.0 * f - 0.1) * u),
    }
    ids = torch.zeros_like(timm_ops)
    mags = torch.zeros_like(lv)
    for name, i in _TIMM_ID.items():
        hit = timm_ops == i
        op, value = table.get(name, (name, None))
        kid = {"SolarizeAdd": _SOLARIZE_ADD, "GaussianBlur": _GAUSSIAN_BLUR, "GaussianBlurRand": _GAUSSIAN_BLUR}.get(name)
        if kid is None:
            assert op is not None  # only the blur ops map to no keepmix op, and they have a kernel id
            kid = _OP_ID[op]
        ids = torch.where(hit, kid, ids)
        if value is not None:
            mags = torch.where(hit, value, mags)
    return ids, mags


# ---------------------------------------------------------------- PIL's GaussianBlur, batched
def _pil_box_radius(radius: Tensor, passes: int = 3) -> Tensor:
    """PIL's ``_gaussian_blur_radius`` (C floats, evaluated in float32 step by step)."""
    f32 = torch.float32
    r = radius.to(f32)
    sigma2 = (r * r) / passes
    big_l = torch.sqrt(12.0 * sigma2.double() + 1.0).to(f32)
    small_l = torch.floor((big_l.double() - 1.0) / 2.0).to(f32)
    a = (2 * small_l + 1) * (small_l * (small_l + 1) - 3 * sigma2)
    a = a / (6 * (sigma2 - (small_l + 1) * (small_l + 1)))
    return small_l + a


def _box_blur_lines(x: Tensor, radius: Tensor) -> Tensor:
    """One PIL horizontal box-blur pass over the last dim of int64 ``x`` (B, C, H, W), per-image
    float radius (B,) (float32): edge pixels repeated, fixed-point weights as ``BoxBlur.c``."""
    b, c, h, w = x.shape
    ri = radius.to(torch.int64)  # C's (int) truncation
    ww = (torch.tensor(float(1 << 24), dtype=torch.float32, device=x.device) / (radius * 2 + 1)).to(torch.int64)
    fw = torch.div((1 << 24) - (ri * 2 + 1) * ww, 2, rounding_mode="floor")
    prefix = torch.nn.functional.pad(x.cumsum(-1), (1, 0))  # prefix[j] = sum of x[:j]
    pos = torch.arange(w, device=x.device).view(1, w)
    r = ri.view(b, 1)
    lo, hi = pos - r, pos + r  # window [lo, hi]
    inner = prefix.gather(-1, (hi.clamp(max=w - 1) + 1).view(b, 1, 1, w).expand(b, c, h, w)) - prefix.gather(
        -1, lo.clamp(min=0).view(b, 1, 1, w).expand(b, c, h, w)
    )
    acc = inner + x[..., :1] * (-lo).clamp(min=0).view(b, 1, 1, w) + x[..., -1:] * (hi - (w - 1)).clamp(min=0).view(b, 1, 1, w)
    left = x.gather(-1, (pos - r - 1).clamp(0, w - 1).view(b, 1, 1, w).expand(b, c, h, w))
    right = x.gather(-1, (pos + r + 1).clamp(0, w - 1).view(b, 1, 1, w).expand(b, c, h, w))
    bulk = acc * ww.view(b, 1, 1, 1) + (left + right) * fw.view(b, 1, 1, 1)
    return (bulk + (1 << 23)) >> 24


def pil_gaussian_blur(images: Tensor, radius: Tensor) -> Tensor:
    """``img.filter(ImageFilter.GaussianBlur(radius))`` per image, batched: PIL's three box-blur
    passes along rows, then three along columns, each rounded to 8 bits. ``images`` uint8
    (float images in [0, 1] are blurred on their 8-bit levels), ``radius`` (B,) >= 0."""
    u8 = images if images.dtype == torch.uint8 else (images.float() * 255).round().clamp(0, 255).to(torch.uint8)
    box = _pil_box_radius(radius.to(images.device))
    x = u8.to(torch.int64)
    on = (box != 0).view(-1, 1, 1, 1)
    out = x
    for _ in range(3):
        out = torch.where(on, _box_blur_lines(out, box), out)
    out = out.transpose(-1, -2)
    for _ in range(3):
        out = torch.where(on, _box_blur_lines(out, box), out)
    out = out.transpose(-1, -2).to(torch.uint8).contiguous()
    if images.dtype == torch.uint8:
        return out
    return (out.float() / 255.0).to(images.dtype)


def _solarize_add(images: Tensor, add: Tensor) -> Tensor:
    """timm's solarize_add: values below 128 get ``+ add`` (clipped at 255); floats on 8-bit levels."""
    a = add.view(-1, 1, 1, 1)
    if images.dtype == torch.uint8:
        x = images.to(torch.int16)
        return torch.where(x < 128, (x + a.to(torch.int16)).clamp_max(255), x).to(torch.uint8)
    x = images.to(torch.float64 if images.dtype == torch.float64 else torch.float32)
    return torch.where(x * 255 < 128, (x + a / 255.0).clamp_max(1.0), x).to(images.dtype)


@dataclass(frozen=True)
class TimmPolicyParams(PolicyParams):
    """A timm policy's draws: :class:`PolicyParams` (``ops`` may hold two ids past
    :data:`OP_NAMES`: timm's SolarizeAdd and GaussianBlur, applied by the policy itself) plus
    ``timm_ops`` (B, N) int64 ids into :data:`TIMM_OPS` and ``levels`` (B, N) float64, the
    magnitude level of each op call after timm's noise and clipping (0..10)."""

    timm_ops: Tensor | None = None
    levels: Tensor | None = None


class _TimmPolicy(_Policy):
    """Shared by the timm policies: the level mapping, the magnitude noise, the op steps."""

    params_type = TimmPolicyParams

    def __init__(
        self, magnitude_std: float, magnitude_max: int | None, fill, interpolation: str, translate_pct: float, translate_const: float
    ) -> None:
        super().__init__(0.0 if fill is None else fill, interpolation, False)
        self.timm_fill = fill
        if isinstance(magnitude_std, bool) or not isinstance(magnitude_std, (int, float)) or not magnitude_std >= 0:
            raise ValueError(f"magnitude_std must be a number >= 0 (inf: uniform in [0, magnitude]), got {magnitude_std!r}")
        self.magnitude_std = float(magnitude_std)
        if magnitude_max is not None:
            check_int(magnitude_max, "magnitude_max", low=0)
        self.magnitude_max = magnitude_max
        self.translate_pct, self.translate_const = float(translate_pct), float(translate_const)

    @property
    def upper_bound(self) -> float:
        """timm's clip: ``magnitude_max or 10`` (so ``mmax0`` clips at 10, as in timm)."""
        return float(self.magnitude_max or _LEVEL_DENOM)

    def _levels(self, base: Tensor, generator) -> Tensor:
        """Each op call's level: ``base``, uniform in [0, base] (inf std) or ``N(base, std)``,
        clipped to [0, upper_bound]."""
        if self.magnitude_std == math.inf:
            lv = sampling.uniform(base.shape, device=base.device, generator=generator, dtype=torch.float64) * base
        elif self.magnitude_std > 0:
            lv = base + self.magnitude_std * sampling.normal(base.shape, device=base.device, generator=generator, dtype=torch.float64)
        else:
            lv = base
        return lv.clamp(0.0, self.upper_bound)

    def _finish(self, timm_ops: Tensor, levels: Tensor, applied: Tensor, images: Tensor, generator, sub=None):
        b, n = timm_ops.shape
        dev = timm_ops.device
        signed = torch.tensor([name in _TIMM_SIGNED for name in TIMM_OPS], device=dev)[timm_ops]
        flip = sampling.bernoulli(0.5, (b, n), device=dev, generator=generator)
        signs = torch.where(signed & flip, -1.0, 1.0).double()
        blur_u = sampling.uniform((b, n), device=dev, generator=generator, dtype=torch.float64)
        ids, mags = timm_magnitudes(
            timm_ops, levels, signs, images.shape[-2], images.shape[-1], self.translate_pct, self.translate_const, blur_u
        )
        ones = torch.ones(b, n, device=dev)
        centers = torch.zeros(b, n, 2, device=dev)
        return TimmPolicyParams(ids, mags, ones, applied, centers, sub, timm_ops=timm_ops, levels=levels)

    def apply_params(self, images, labels, params):
        """Step by step: keepmix's PIL-exact kernels (:func:`apply_ops`) for every op, and
        SolarizeAdd / GaussianBlur here, in the drawn order."""
        dev = images.device
        ops, applied = params.ops.to(dev), params.applied.to(dev)
        mags = params.magnitudes.to(dev).double()
        fill = self.timm_fill
        if fill is None:  # timm's grey (128, 128, 128), in the images' units
            fill = 128 if images.dtype == torch.uint8 else 128 / 255
        special = (ops == _SOLARIZE_ADD) | (ops == _GAUSSIAN_BLUR)
        x = images
        for k in range(ops.shape[1]):  # the steps, in order (a loop over steps, not images)
            op_k, act_k = ops[:, k : k + 1], applied[:, k : k + 1]
            std = act_k & ~special[:, k : k + 1]
            x = apply_ops(
                x, torch.where(std, op_k, 0), mags[:, k : k + 1], std, params.centers[:, k : k + 1].to(dev), fill, self.interpolation
            )
            if "SolarizeAdd" in self.op_names:  # the op set decides, not the data: no host read
                add_on = (act_k[:, 0] & (op_k[:, 0] == _SOLARIZE_ADD)).view(-1, 1, 1, 1)
                x = torch.where(add_on, _solarize_add(x, torch.where(add_on.view(-1), mags[:, k], 0.0)), x)
            if self.op_names & {"GaussianBlur", "GaussianBlurRand"}:
                blur_on = act_k[:, 0] & (op_k[:, 0] == _GAUSSIAN_BLUR)
                radius = torch.where(blur_on, mags[:, k], 0.0)
                x = torch.where(blur_on.view(-1, 1, 1, 1), pil_gaussian_blur(x, radius), x)
        return x, labels


class TimmRandAugment(_TimmPolicy):
    """timm's RandAugment (``rand_augment_transform``), every draw per image.

    Per image: ``num_ops`` ops drawn from ``ops`` (uniformly with repetition; with ``weights``,
    without repetition in proportion to them, as ``np.random.choice(..., replace=False, p=w)``);
    each runs with probability ``prob``; each run draws its level ``magnitude`` (uniform in [0,
    magnitude] when ``magnitude_std`` is inf, else ``N(magnitude, magnitude_std)``), clipped to
    [0, ``magnitude_max or 10``], and maps it with timm's level functions
    (:func:`timm_magnitudes`). Build it from a string with :meth:`RandAugment.from_timm`.

    ``fill``: timm's ``img_mean`` hparam, in the images' units (default None: timm's default
    grey 128). ``interpolation``: ``"bilinear"`` (default) or ``"nearest"``; timm's default
    draws bilinear or bicubic per op call, which keepmix's kernels do not offer (bicubic), so
    geometric ops resample as ``interpolation`` says (set timm's ``interpolation`` hparam to
    bilinear for the same distribution). ``translate_pct`` (0.45), ``translate_const`` (250):
    timm's hparams.
    """

    _timm_ids: Tensor  # a buffer (register_buffer in __init__)

    def __init__(
        self,
        ops: Sequence[str] = _RAND_TRANSFORMS,
        num_ops: int = 2,
        magnitude: float = 10.0,
        prob: float = 0.5,
        magnitude_std: float = 0.0,
        magnitude_max: int | None = None,
        weights: Sequence[float] | None = None,
        fill=None,
        interpolation: str = "bilinear",
        translate_pct: float = 0.45,
        translate_const: float = 250.0,
    ) -> None:
        super().__init__(magnitude_std, magnitude_max, fill, interpolation, translate_pct, translate_const)
        ops = tuple(ops)
        unknown = [o for o in ops if o not in _TIMM_ID]
        if not ops or unknown:
            raise ValueError(f"ops must name timm ops of {TIMM_OPS}, got unknown {unknown or 'none'}")
        self.ops = ops
        self.op_names = frozenset(ops)
        self.num_ops = check_int(num_ops, "num_ops", low=0)
        if isinstance(magnitude, bool) or not isinstance(magnitude, (int, float)) or not 0 <= magnitude < math.inf:
            raise ValueError(f"magnitude must be a finite number >= 0 (timm's level, 10 = the maximum), got {magnitude!r}")
        self.magnitude = float(magnitude)
        if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0 <= prob <= 1:
            raise ValueError(f"prob must be a probability in [0, 1], got {prob!r}")
        self.prob = float(prob)
        if weights is not None:
            w = torch.tensor([float(v) for v in weights], dtype=torch.float64)
            if w.numel() != len(ops) or not bool((w >= 0).all()) or not float(w.sum()) > 0:
                raise ValueError(f"weights must be {len(ops)} numbers >= 0 (one per op), not all 0, got {list(weights)}")
            if int((w > 0).sum()) < self.num_ops:
                raise ValueError(
                    f"weights: only {int((w > 0).sum())} ops have a nonzero weight, fewer than num_ops={num_ops} "
                    "(timm draws them without repetition)"
                )
            self.weights: tuple[float, ...] | None = tuple(float(v) for v in (w / w.sum()))
        else:
            self.weights = None
        self.register_buffer("_timm_ids", torch.tensor([_TIMM_ID[o] for o in ops]), persistent=False)

    def make_params(self, images, labels, saliency, generator) -> TimmPolicyParams:
        """Draw order: op choices (B, n) (uniform ints, or Gumbel keys for the weighted draw
        without repetition), applied (B, n), levels (the noise, when any), signs, blur draws."""
        b, dev = images.shape[0], images.device
        n, k = self.num_ops, len(self.ops)
        if self.weights is None:
            pick = sampling.randint(0, k, (b, n), device=dev, generator=generator)
        else:
            # Sequential weighted draws without repetition = the order of log w + Gumbel noise.
            u = sampling.uniform((b, k), device=dev, generator=generator, dtype=torch.float64).clamp_min(1e-300)
            logw = torch.tensor(self.weights, dtype=torch.float64, device=dev).log()
            pick = torch.argsort(logw - torch.log(-torch.log(u)), dim=1, descending=True)[:, :n]
        timm_ops = self._timm_ids.to(dev)[pick]
        if self.prob >= 1.0:
            applied = torch.ones(b, n, dtype=torch.bool, device=dev)
        else:
            applied = sampling.uniform((b, n), device=dev, generator=generator, dtype=torch.float64) < self.prob
        levels = self._levels(torch.full((b, n), self.magnitude, dtype=torch.float64, device=dev), generator)
        return self._finish(timm_ops, levels, applied, images, generator)

    def extra_repr(self) -> str:
        return (
            f"ops={self.ops}, num_ops={self.num_ops}, magnitude={self.magnitude}, prob={self.prob}, "
            f"magnitude_std={self.magnitude_std}, magnitude_max={self.magnitude_max}, weights={self.weights}, "
            f"interpolation={self.interpolation!r}"
        )


class TimmAutoAugment(_TimmPolicy):
    """timm's AutoAugment (``auto_augment_transform``), every draw per image: a sub-policy of
    :data:`TIMM_AUTOAUGMENT_POLICIES` ``[policy]`` drawn uniformly, each of its steps run with its
    probability at its magnitude level (0..10) plus ``N(0, magnitude_std)`` noise, clipped to
    [0, 10], mapped with timm's level functions. Build it from timm's name with
    :meth:`AutoAugment.from_timm`. ``fill``, ``interpolation``, ``translate_pct``,
    ``translate_const`` as :class:`TimmRandAugment`.
    """

    # Buffers (register_buffer in __init__): nn.Module's __getattr__ types them as Tensor | Module.
    _aa_ops: Tensor
    _aa_probs: Tensor
    _aa_mags: Tensor

    def __init__(
        self,
        policy: str = "v0",
        magnitude_std: float = 0.0,
        fill=None,
        interpolation: str = "bilinear",
        translate_pct: float = 0.45,
        translate_const: float = 250.0,
    ) -> None:
        super().__init__(magnitude_std, None, fill, interpolation, translate_pct, translate_const)
        if policy not in TIMM_AUTOAUGMENT_POLICIES:
            raise ValueError(f"policy must be one of {sorted(TIMM_AUTOAUGMENT_POLICIES)}, got {policy!r}")
        self.policy = policy
        subs = TIMM_AUTOAUGMENT_POLICIES[policy]
        self.op_names = frozenset(st[0] for sub in subs for st in sub)
        steps = max(len(s) for s in subs)
        pad = lambda sub, v: [v(st) for st in sub] + [v(None)] * (steps - len(sub))  # noqa: E731
        self.register_buffer("_aa_ops", torch.tensor([pad(s, lambda st: _TIMM_ID[st[0]] if st else 0) for s in subs]), persistent=False)
        self.register_buffer(
            "_aa_probs", torch.tensor([pad(s, lambda st: st[1] if st else 0.0) for s in subs], dtype=torch.float64), persistent=False
        )
        self.register_buffer(
            "_aa_mags", torch.tensor([pad(s, lambda st: float(st[2]) if st else 0.0) for s in subs], dtype=torch.float64), persistent=False
        )

    def make_params(self, images, labels, saliency, generator) -> TimmPolicyParams:
        """Draw order: the sub-policy (B,), applied (B, steps), levels (the noise, when any),
        signs, blur draws."""
        b, dev = images.shape[0], images.device
        choice = sampling.randint(0, len(self._aa_ops), b, device=dev, generator=generator)
        ops, probs, mags = self._aa_ops.to(dev)[choice], self._aa_probs.to(dev)[choice], self._aa_mags.to(dev)[choice]
        u = sampling.uniform(probs.shape, device=dev, generator=generator, dtype=torch.float64)
        applied = (probs >= 1.0) | (u < probs)
        return self._finish(ops, self._levels(mags, generator), applied, images, generator, sub=choice)

    def extra_repr(self) -> str:
        return f"policy={self.policy!r}, magnitude_std={self.magnitude_std}, interpolation={self.interpolation!r}"
