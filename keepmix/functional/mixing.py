"""Mixing two images per example, given the parameters: Mixup and CutMix.

The pure layer under :class:`keepmix.mixing.Mixup` and :class:`keepmix.mixing.CutMix`.
``perm`` (B,) int64 names each image's partner: image i is mixed with ``images[perm[i]]``.
Targets are float32 (B, K) soft targets (see :func:`keepmix.targets.to_soft_targets`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from keepmix._checks import check_images, check_same_device
from keepmix.engine import check_values
from keepmix.functional.boxes import box_areas, box_mask, check_boxes, where

__all__ = ["check_perm", "area_lambda", "mixup", "cutmix", "mixup_kernel", "cutmix_kernel"]


def check_perm(perm: object, batch_size: int, name: str = "perm") -> Tensor:
    """Check a (B,) integer partner index with values in [0, B) and return it as int64.

    Any index vector is accepted (a permutation is the usual choice, but e.g. ``flip`` or a
    draw with replacement mixes just as well); only its shape and range are checked.
    """
    if not isinstance(perm, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B,), got {type(perm).__name__}")
    if perm.ndim != 1 or perm.shape[0] != batch_size:
        raise ValueError(f"{name} must have shape (B,) = ({batch_size},), got {tuple(perm.shape)}")
    if perm.dtype.is_floating_point or perm.dtype == torch.bool or perm.is_complex():
        raise TypeError(f"{name} must hold integer indices, got {perm.dtype}")
    check_values((perm >= 0) & (perm < batch_size), f"{name} must hold indices in [0, {batch_size})", lambda: f"got {perm.tolist()[:16]}")
    return perm.long()


def _check_targets(targets: object, batch_size: int) -> Tensor:
    if not isinstance(targets, Tensor) or targets.ndim != 2 or not targets.dtype.is_floating_point:
        desc = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
        raise ValueError(f"targets must be a float (B, K) tensor of soft targets, got {desc}")
    if targets.shape[0] != batch_size:
        raise ValueError(f"targets has {targets.shape[0]} rows but the image batch has {batch_size}")
    return targets


def _check_weight(weight: object, batch_size: int, name: str) -> Tensor:
    """A (B,) float tensor in [0, 1] (one host sync for the range check, per batch)."""
    if not isinstance(weight, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B,), got {type(weight).__name__}")
    if weight.ndim != 1 or weight.shape[0] != batch_size:
        raise ValueError(f"{name} must have shape (B,) = ({batch_size},), got {tuple(weight.shape)}")
    if not weight.dtype.is_floating_point:
        raise TypeError(f"{name} must be floating point, got {weight.dtype}")
    check_values((weight >= 0) & (weight <= 1), f"{name} must lie in [0, 1]", lambda: f"got {weight.tolist()[:16]}")  # also rejects NaN
    return weight


def area_lambda(boxes: Tensor, height: int, width: int) -> Tensor:
    """The unpasted area share ``1 - area(box) / (H W)`` per image, float32 (B,).

    Computed in float64 from the integer areas and rounded once to float32, so it is the
    float32 nearest the exact fraction. An empty box gives exactly 1.
    """
    return (1.0 - box_areas(boxes).double() / float(height * width)).float()


def mixup(images: Tensor, targets: Tensor, lam: Tensor, perm: Tensor, *, validate: bool = True) -> tuple[Tensor, Tensor]:
    """``lam * x + (1 - lam) * x[perm]`` and the same mix of the targets.

    ``lam`` (B,) in [0, 1]. float32/float64 images are mixed in their own dtype; float16,
    bfloat16 and uint8 images are mixed in float32 (so ``lam`` is not quantised to the
    half type) and rounded once back to their dtype, uint8 to the nearest integer (a convex
    combination of values in [0, 255] stays in range, so nothing is clipped). Where
    ``lam == 1`` the image comes back bitwise unchanged.
    Returns ``(images, targets)``; targets are float32 (B, K).

    ``validate=False`` skips the value checks of ``lam`` and ``perm`` (each a host sync on an
    accelerator) for parameters known to be valid, e.g. straight from ``sample_params``.
    """
    check_images(images)
    b = images.shape[0]
    targets = _check_targets(targets, b)
    if validate:
        perm = check_perm(perm, b)
        lam = _check_weight(lam, b, "lam")
    check_same_device(images=images, targets=targets, lam=lam, perm=perm)
    return mixup_kernel(images, targets.float(), lam, perm)


def mixup_kernel(images: Tensor, targets: Tensor, lam: Tensor, perm: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`mixup` on checked input (float32 (B, K) ``targets``, float32 (B,) ``lam``): no checks."""
    exact = images.dtype in (torch.float32, torch.float64)
    work = images if exact else images.float()
    # lerp(start=partner, end=x, w=lam) = partner + lam (x - partner): one full-size temporary
    # (the gathered partners), reused as the output. lerp with w = 1 is exactly the end.
    b = images.shape[0]
    # index_select, not work[perm]: inductor's randperm-index rewrite fails on the whole forward.
    out = work.index_select(0, perm).lerp_(work, lam.view(b, 1, 1, 1).to(work.dtype))
    if images.dtype == torch.uint8:
        out = out.round_().to(images.dtype)
    elif not exact:
        out = out.to(images.dtype)
    return out, targets.index_select(0, perm).lerp_(targets, lam.view(b, 1))


def cutmix(
    images: Tensor,
    targets: Tensor,
    boxes: Tensor,
    perm: Tensor,
    patch_weight: Tensor | None = None,
    *,
    validate: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Paste ``images[perm]`` into each image's box and mix the targets.

    ``lam = 1 - area(box) / (H W)`` is the exact unpasted area share (:func:`area_lambda`).
    The targets are ``(1 - w) y + w y[perm]`` with the patch's label weight ``w = 1 - lam``,
    or ``w = patch_weight`` (B,) in [0, 1] when given (e.g. the partner's saliency mass inside
    the box, KeepCutMix). An empty box pastes nothing and its weight is 0 whatever
    ``patch_weight`` says: no pixels of the partner, no share of its label.

    Pixels outside the boxes are bitwise unchanged and pixels inside are bitwise the
    partner's, in any dtype. Returns ``(images, targets, lam)``: float32 (B, K) targets and
    float32 (B,) lam.

    ``validate=False`` skips the value checks of ``boxes`` and ``perm`` (each a host sync on
    an accelerator) for parameters known to be valid, e.g. straight from ``sample_params``;
    ``patch_weight`` is always checked.
    """
    check_images(images)
    b, _, h, w = images.shape
    targets = _check_targets(targets, b)
    if validate:
        boxes = check_boxes(boxes, b, h, w)
        perm = check_perm(perm, b)
    check_same_device(images=images, targets=targets, boxes=boxes, perm=perm, patch_weight=patch_weight)
    if patch_weight is not None:
        patch_weight = _check_weight(patch_weight, b, "patch_weight")
    out, mixed = cutmix_kernel(images, targets.float(), boxes, perm, patch_weight)
    return out, mixed, area_lambda(boxes, h, w)


def cutmix_kernel(
    images: Tensor, targets: Tensor, boxes: Tensor, perm: Tensor, patch_weight: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """:func:`cutmix` on checked input (float32 (B, K) ``targets``): ``(images, targets)``, no checks.

    The patch's label weight is its pixel count over H W, counted on the paste mask itself
    (float32 of the exact fraction), or ``patch_weight`` where the box is not empty.
    """
    b, _, h, w = images.shape
    mask = box_mask(boxes, h, w)
    out = where(mask, images.index_select(0, perm), images)  # index_select: see mixup_kernel
    share = mask.sum((2, 3)) / (h * w)  # (B, 1) float32: true division of the integer count
    if patch_weight is not None:
        share = torch.where(share > 0, patch_weight.view(b, 1).float(), share)
    return out, targets.lerp(targets.index_select(0, perm), share)
