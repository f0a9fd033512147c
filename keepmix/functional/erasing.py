"""Erasing boxes: fill each image's box with a constant, per-box or per-pixel value.

The pure layer under :class:`keepmix.regional.Cutout` and :class:`keepmix.regional.RandomErasing`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

import torch
from torch import Tensor

from keepmix._checks import check_images, check_same_device
from keepmix.engine import check_values
from keepmix.functional.boxes import check_boxes, paste
from keepmix.functional.constants import line

__all__ = ["Fill", "check_fill", "check_fill_for", "constant_fill", "fill_tensor", "erase"]

#: A fill value: a number, one number per channel, or a tensor broadcastable to (B, C, H, W).
Fill = float | int | Sequence[float] | Tensor


def check_fill(fill: object, name: str = "fill") -> float | tuple[float, ...] | Tensor:
    """Validate the form of a fill value independently of any image (constructor-time check).

    Returns a float, a tuple of floats, or the tensor unchanged. Whether the value suits a
    given image dtype (uint8 needs integers in [0, 255]) is checked by :func:`fill_tensor`.
    """
    if isinstance(fill, Tensor):
        return fill
    if isinstance(fill, bool):
        raise TypeError(f"{name} must be a number, a sequence of numbers or a tensor, got a bool")
    if isinstance(fill, Real):
        v = float(fill)
        if not math.isfinite(v):
            raise ValueError(f"{name} must be finite, got {fill}")
        return v
    if isinstance(fill, (str, bytes)) or not isinstance(fill, Sequence):
        raise TypeError(f"{name} must be a number, a sequence of numbers (one per channel) or a tensor, got {fill!r}")
    if len(fill) == 0:
        raise ValueError(f"{name} is an empty sequence; give one number per channel")
    out = []
    for v in fill:
        if isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(float(v)):
            raise ValueError(f"{name} must hold finite numbers, got {fill!r}")
        out.append(float(v))
    return tuple(out)


def _check_representable(values: Tensor, dtype: torch.dtype, name: str) -> None:
    """Raise unless every value is exactly representable in ``dtype``'s range (no clipping)."""
    shown = lambda: f"got {values.flatten()[:8].tolist()}"  # noqa: E731
    if dtype == torch.uint8:
        ok = (values >= 0) & (values <= 255)
        if values.is_floating_point():
            ok &= values == values.round()
        check_values(ok, f"{name} must hold integers in [0, 255] for uint8 images", shown)
    else:
        v = values.double()
        check_values(torch.isfinite(v), f"{name} must be finite", shown)
        check_values(v.abs() <= torch.finfo(dtype).max, f"{name} does not fit in {dtype} (|value| <= {torch.finfo(dtype).max:g})", shown)


def _check_number(v: float, dtype: torch.dtype, name: str) -> None:
    """The same check for a Python number (no tensor, no host read)."""
    if dtype == torch.uint8:
        if not (0 <= v <= 255 and v == round(v)):
            raise ValueError(f"{name} must hold integers in [0, 255] for uint8 images, got {v}")
    elif abs(v) > torch.finfo(dtype).max:
        raise ValueError(f"{name} does not fit in {dtype} (|value| <= {torch.finfo(dtype).max:g}), got {v}")


def check_fill_for(fill: float | tuple[float, ...], dtype: torch.dtype, channels: int, name: str = "fill") -> None:
    """Raise unless a checked constant fill (a float or a tuple, from :func:`check_fill`) suits
    images of ``dtype`` with ``channels`` channels (plain Python: no tensor, no host read)."""
    values = (fill,) if isinstance(fill, float) else fill
    if len(values) not in (1, channels):
        raise ValueError(f"{name} has {len(values)} values but the images have {channels} channels")
    for v in values:
        _check_number(v, dtype, name)


def constant_fill(fill: float | tuple[float, ...], dtype: torch.dtype, device: torch.device) -> float | Tensor:
    """A constant fill checked by :func:`check_fill_for` as a ``masked_fill`` scalar (one
    number) or a cached (1, C, 1, 1) tensor of ``dtype`` on ``device``."""
    if isinstance(fill, float):
        return fill
    if len(fill) == 1:
        return fill[0]
    return line(fill, (1, len(fill), 1, 1), dtype, device)


def fill_tensor(fill: Fill, images: Tensor, name: str = "fill") -> Tensor:
    """The fill as a tensor of ``images``' dtype and device, broadcastable to (B, C, H, W).

    * a number -> shape (1, 1, 1, 1);
    * a sequence of C numbers (or 1) -> (1, C, 1, 1);
    * a tensor of shape (), (C,), (B, C), or any 4-D shape broadcastable to (B, C, H, W)
      (e.g. (B, C, 1, 1) per box, (B, C, H, W) per pixel).

    A tensor already in the images' dtype is taken as is (no host sync). Anything else is
    checked to be representable in that dtype: integers in [0, 255] for uint8, finite and in
    range for floats. Nothing is silently clipped or rounded.
    """
    b, c, h, w = images.shape
    fill = check_fill(fill, name)
    if not isinstance(fill, Tensor):
        values = (fill,) if isinstance(fill, float) else fill
        if len(values) not in (1, c):
            raise ValueError(f"{name} has {len(values)} values but the images have {c} channels")
        for v in values:
            _check_number(v, images.dtype, name)
        return torch.tensor(values, dtype=images.dtype, device=images.device).reshape(1, -1, 1, 1)
    else:
        check_same_device(images=images, **{name: fill})
        t = fill
        if t.ndim == 1:
            if t.numel() not in (1, c):
                raise ValueError(f"{name} has {t.numel()} values but the images have {c} channels")
            t = t.reshape(1, -1, 1, 1)
        elif t.ndim == 2:
            if tuple(t.shape) != (b, c):
                raise ValueError(f"{name} of 2 dims must have shape (B, C) = {(b, c)}, got {tuple(t.shape)}")
            t = t[:, :, None, None]
        elif t.ndim == 4:
            try:
                # torch.broadcast_shapes carries no annotations.
                torch.broadcast_shapes(t.shape, images.shape)  # type: ignore[no-untyped-call]
            except RuntimeError:
                raise ValueError(f"{name} of shape {tuple(t.shape)} does not broadcast to the images' {tuple(images.shape)}") from None
            if any(s != 1 and s != i for s, i in zip(t.shape, images.shape, strict=True)):
                raise ValueError(f"{name} of shape {tuple(t.shape)} would enlarge the images' {tuple(images.shape)}")
        elif t.ndim != 0:
            raise ValueError(
                f"{name} must be a tensor of shape (), (C,), (B, C) or 4-D broadcastable to (B, C, H, W), got {tuple(t.shape)}"
            )
        if t.dtype == images.dtype:
            return t
        if t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"{name} must be a real number tensor, got {t.dtype}")
    _check_representable(t, images.dtype, name)
    return t.to(device=images.device, dtype=images.dtype)


def erase(images: Tensor, boxes: Tensor, fill: Fill = 0.0, *, validate: bool = True) -> Tensor:
    """A copy of ``images`` with each image's box set to ``fill`` (outside: bitwise unchanged).

    ``boxes`` is (B, 4) int64 ``(y1, x1, y2, x2)``, half-open; an empty box leaves its image
    unchanged. ``fill`` is anything :func:`fill_tensor` accepts. One bitwise select over a
    (B, 1, H, W) mask (:func:`keepmix.functional.boxes.paste`): the only full-size tensor
    made is the output.

    ``validate=False`` skips the range check of ``boxes`` (a host sync on an accelerator) for
    boxes known to be valid, e.g. straight from ``sample_params``.
    """
    check_images(images)
    b, _, h, w = images.shape
    if validate:
        boxes = check_boxes(boxes, b, h, w)
    check_same_device(images=images, boxes=boxes)
    return paste(images, fill_tensor(fill, images), boxes)
