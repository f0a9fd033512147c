"""AutoAugment, RandAugment and TrivialAugmentWide with the op and magnitude drawn per image.

Public implementations either loop over images (PIL) or, like kornia, draw one sub-policy / op
set per batch. Here every image draws its own sub-policy (AutoAugment) or ops (RandAugment,
TrivialAugmentWide), magnitudes and signs in ``sample_params``, and
:func:`keepmix.functional.policy_ops.apply_ops` applies them batched, by op kind. The op
tables and magnitude spaces are in :mod:`keepmix.functional.policy_ops` (torchvision's).

Images: uint8, or float in [0, 1]; a (B, C, H, W) batch, one (C, H, W) image or a PIL image
(L or RGB), which comes back as the same type. Labels pass through unchanged. Signed ops
(shear, translate, rotate, the four enhance ops) get a random sign per image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import Tensor

from keepmix import sampling
from keepmix._checks import check_int
from keepmix.base import Op, Params
from keepmix.functional.geometry import _check_interpolation
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


class _Policy(Op):
    """Shared by the policies: fill, interpolation, the translate rule, ``_apply``."""

    single_image = True
    pil_image = True
    channels = (1, 3)
    raw_pixels = True
    params_type = PolicyParams

    def __init__(self, fill: float | Sequence[float], interpolation: str, whole_pixel_translate: bool) -> None:
        super().__init__()
        _check_interpolation(interpolation)
        if not isinstance(whole_pixel_translate, bool):
            raise TypeError(f"whole_pixel_translate must be a bool, got {whole_pixel_translate!r}")
        self.whole_pixel_translate = whole_pixel_translate
        t = torch.as_tensor(fill, dtype=torch.float64).flatten()
        if t.numel() not in (1, 3) or not bool(torch.isfinite(t).all()):
            raise ValueError(f"fill must be a finite number or 3 numbers (one per channel), got {fill!r}")
        self.fill = fill
        self.interpolation = interpolation

    def _signs_centers(self, ops: Tensor, images: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        b, n = ops.shape
        signed = torch.tensor([name in SIGNED_OPS for name in OP_NAMES], device=ops.device)[ops]
        flip = sampling.bernoulli(0.5, (b, n), device=ops.device, generator=generator)
        signs = torch.where(signed & flip, -1.0, 1.0)
        centers = sampling.uniform((b, n, 2), device=ops.device, generator=generator)
        return signs, centers

    def _table(self, space: Literal["standard", "wide"], num_bins: int, images: Tensor) -> Tensor:
        h, w = images.shape[-2:]
        return magnitude_table(space, num_bins, h, w, self.whole_pixel_translate).to(images.device)

    def _check_params(self, params: object, images: Tensor) -> None:
        super()._check_params(params, images)
        assert isinstance(params, PolicyParams)
        _check_policy_params(params, images)

    def _apply_params(self, images, labels, params):
        """Apply the drawn ops (see :func:`keepmix.functional.policy_ops.apply_ops`)."""
        dev = images.device
        out = apply_ops(
            images, params.ops.to(dev), params.signed_magnitudes.to(dev), params.applied.to(dev), params.centers.to(dev),
            self.fill, self.interpolation,
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

    def _sample(self, images, labels, saliency, generator) -> PolicyParams:
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

    def _sample(self, images, labels, saliency, generator) -> PolicyParams:
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


class TrivialAugmentWide(_Policy):
    """TrivialAugment (Mueller & Hutter 2021), wide space: one op and one magnitude bin drawn
    uniformly per image."""

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

    def _sample(self, images, labels, saliency, generator) -> PolicyParams:
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
