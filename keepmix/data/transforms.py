"""The standard CIFAR training augmentation, batched: padded random crop, horizontal flip, normalise.

Parameters are data here too: :func:`sample_crop_flip` draws per-image offsets and flips,
:func:`crop_flip` applies given ones. The crop never materialises a padded copy of the
batch: every output pixel is gathered from a source index computed per image (and zeroed,
reflected or clamped where it falls in the padding), so one ``gather`` does crop and flip for
the whole batch with no Python loop over images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from keepmix._checks import check_generator, check_images
from keepmix.sampling import bernoulli, randint

__all__ = ["PaddingMode", "crop_flip", "sample_crop_flip", "random_crop_flip", "normalize", "normalize_affine"]

PaddingMode = Literal["zeros", "reflect", "replicate"]


def _source_index(start: Tensor, length: int, padding: int, mode: PaddingMode) -> tuple[Tensor, Tensor | None]:
    """Source indices (B, length) of a crop starting at ``start - padding``, and where they are valid."""
    idx = start[:, None] - padding + torch.arange(length, device=start.device)
    if mode == "zeros":
        valid = (idx >= 0) & (idx < length)
        return idx.clamp(0, length - 1), valid
    if mode == "reflect":  # mirror without repeating the edge pixel, like F.pad(mode="reflect")
        idx = idx.abs()
        idx = torch.where(idx > length - 1, 2 * (length - 1) - idx, idx)
        return idx, None
    return idx.clamp(0, length - 1), None


def crop_flip(
    images: Tensor,
    offsets: Tensor,
    flip: Tensor,
    padding: int = 4,
    padding_mode: PaddingMode = "zeros",
) -> Tensor:
    """Pad by ``padding``, crop back to (H, W) at per-image ``offsets``, then flip where ``flip``.

    Exactly ``F.pad(x, (p, p, p, p), mode)[..., dy:dy + H, dx:dx + W]`` followed by a
    horizontal flip, for each image, computed in one gather.

    Args:
        images: (B, C, H, W), any dtype; not modified.
        offsets: (B, 2) int64 (dy, dx), each in [0, 2 * padding].
        flip: (B,) bool, flip image i horizontally after cropping.
        padding: pixels of padding on every side.
        padding_mode: ``"zeros"`` (the papers' choice, and the default), ``"reflect"`` or
            ``"replicate"``.
    """
    check_images(images)
    b, c, h, w = images.shape
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if padding_mode not in ("zeros", "reflect", "replicate"):
        raise ValueError(f"padding_mode must be 'zeros', 'reflect' or 'replicate', got {padding_mode!r}")
    if padding_mode == "reflect" and padding >= min(h, w):
        raise ValueError(f"reflect padding {padding} must be smaller than the image side {min(h, w)}")
    if offsets.shape != (b, 2) or offsets.dtype != torch.int64:
        raise ValueError(f"offsets must be int64 of shape ({b}, 2), got {offsets.dtype} {tuple(offsets.shape)}")
    if flip.shape != (b,) or flip.dtype != torch.bool:
        raise ValueError(f"flip must be bool of shape ({b},), got {flip.dtype} {tuple(flip.shape)}")
    offsets = offsets.to(images.device)
    flip = flip.to(images.device)

    rows, row_ok = _source_index(offsets[:, 0], h, padding, padding_mode)
    cols, col_ok = _source_index(offsets[:, 1], w, padding, padding_mode)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    flat = (rows[:, :, None] * w + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    out = images.reshape(b, c, h * w).gather(2, flat).view(b, c, h, w)
    if row_ok is not None and col_ok is not None:
        col_ok = torch.where(flip[:, None], col_ok.flip(1), col_ok)
        inside = (row_ok[:, :, None] & col_ok[:, None, :])[:, None]
        out = out.masked_fill(~inside, 0)
    return out


def sample_crop_flip(
    n: int,
    padding: int = 4,
    flip: bool = True,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-image crop offsets (n, 2) int64 in [0, 2 * padding] and flips (n,) bool (p = 0.5)."""
    check_generator(generator)
    offsets = randint(0, 2 * padding + 1, (n, 2), device=device, generator=generator)
    flips = bernoulli(0.5 if flip else 0.0, n, device=device, generator=generator)
    return offsets, flips


def random_crop_flip(
    images: Tensor,
    padding: int = 4,
    flip: bool = True,
    padding_mode: PaddingMode = "zeros",
    generator: torch.Generator | None = None,
) -> Tensor:
    """:func:`sample_crop_flip` then :func:`crop_flip` (e.g. on batches from a DataLoader)."""
    check_images(images)
    offsets, flips = sample_crop_flip(images.shape[0], padding, flip, device=images.device, generator=generator)
    return crop_flip(images, offsets, flips, padding, padding_mode)


def normalize(
    images: Tensor,
    mean: Sequence[float] | Tensor,
    std: Sequence[float] | Tensor,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """uint8 (B, C, H, W) in [0, 255] to ``(x / 255 - mean) / std`` as ``dtype``.

    ``mean`` and ``std`` are per channel on the [0, 1] scale (e.g. :data:`CIFAR10_MEAN`).
    The arithmetic is in float32 whatever ``dtype`` is, then cast once.
    """
    check_images(images)
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 in [0, 255], got {images.dtype}")
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating point dtype, got {dtype}")
    scale, shift = normalize_affine(mean, std, images.shape[1], images.device)
    return apply_affine(images, scale, shift, dtype)


def normalize_affine(
    mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor, channels: int, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """(scale, shift) of shape (1, C, 1, 1) with ``normalize(x) = x * scale - shift``; checked on the CPU."""
    m = torch.as_tensor(mean, dtype=torch.float32).detach().cpu().reshape(-1)
    s = torch.as_tensor(std, dtype=torch.float32).detach().cpu().reshape(-1)
    if m.numel() != channels or s.numel() != channels:
        raise ValueError(f"mean and std must have one value per channel ({channels}), got {m.numel()} and {s.numel()}")
    if not bool((s > 0).all()) or not bool(torch.isfinite(m).all()):
        raise ValueError(f"std must be > 0 and mean finite in every channel, got mean {m.tolist()}, std {s.tolist()}")
    scale = (1.0 / (255.0 * s)).view(1, channels, 1, 1)
    shift = (m / s).view(1, channels, 1, 1)
    return scale.to(device), shift.to(device)


def apply_affine(images: Tensor, scale: Tensor, shift: Tensor, dtype: torch.dtype) -> Tensor:
    """``images * scale - shift`` in float32, cast to ``dtype`` (no checks: the hot path)."""
    return (images.to(torch.float32) * scale - shift).to(dtype)
