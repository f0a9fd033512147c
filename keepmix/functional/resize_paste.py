"""Resize a whole source image into a box of the destination image, per image, in one pass.

RecursiveMix pastes the *whole* previous batch, shrunk, into a box of each current image; the
boxes differ per image, so one ``F.interpolate`` per image (a Python loop) would be the simple
way. Here every output pixel instead looks up its source pixel(s) through per-image 1-D index
maps (rows and columns are independent), followed by one gather per axis: no loop over the
batch, no host sync, and the result equals ``F.interpolate`` of each image to the box size:

* ``"nearest"``: bitwise, for every dtype (same float32 index arithmetic as PyTorch's kernel);
* ``"bilinear"``: to float rounding (``antialias=False``; ``align_corners`` as given), uint8
  to within one grey level (PyTorch's uint8 kernel uses fixed-point weights).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from keepmix._checks import check_images, check_same_device
from keepmix.functional.boxes import check_boxes, paste

__all__ = ["resize_into_boxes", "ResizeMode"]

ResizeMode = Literal["nearest", "bilinear"]


def _local_coords(start: Tensor, size: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """Output coordinate inside each box (B, length) for every row/column of the image, and the
    box size clamped to >= 1 (so the index maths stays finite for empty boxes, whose pixels the
    final mask drops anyway)."""
    pos = torch.arange(length, device=start.device)
    size1 = size.clamp_min(1)
    local = (pos[None, :] - start[:, None]).clamp(min=0)
    local = torch.minimum(local, size1[:, None] - 1)
    return local, size1


def _nearest_index(local: Tensor, out_size: Tensor, in_size: int) -> Tensor:
    """PyTorch's nearest source index: ``min(floor(dst * (float(in) / out)), in - 1)``, all in
    float32 as in its CPU and CUDA kernels (the equal-size and 2x shortcuts of the kernel give
    the same numbers)."""
    scale = torch.tensor(float(in_size), dtype=torch.float32, device=local.device) / out_size.to(torch.float32)
    idx = torch.floor(local.to(torch.float32) * scale[:, None]).to(torch.int64)
    return idx.clamp(max=in_size - 1)


def _linear_index(
    local: Tensor, out_size: Tensor, in_size: int, align_corners: bool, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Two source indices and their weights per output coordinate, as PyTorch's bilinear
    kernel computes them (``area_pixel_compute_source_index`` + ``guard_index_and_lambda``)."""
    out_f = out_size.to(dtype)[:, None]
    loc = local.to(dtype)
    if align_corners:
        scale = torch.where(out_f > 1, (in_size - 1) / (out_f - 1).clamp_min(1), torch.zeros_like(out_f))
        real = scale * loc
    else:
        scale = in_size / out_f
        real = (scale * (loc + 0.5) - 0.5).clamp_min(0)
    i0 = torch.floor(real).to(torch.int64).clamp(max=in_size - 1)
    lam1 = (real - i0.to(dtype)).clamp(0, 1)
    # Equal sizes are an exact copy in the kernel; the formula gives the same, but say so.
    same = (out_size == in_size)[:, None]
    i0 = torch.where(same, local, i0)
    lam1 = torch.where(same, torch.zeros_like(lam1), lam1)
    i1 = i0 + (i0 < in_size - 1).to(torch.int64)
    return i0, i1, 1 - lam1, lam1


def resize_into_boxes(
    dst: Tensor,
    src: Tensor,
    boxes: Tensor,
    mode: ResizeMode = "nearest",
    align_corners: bool = False,
) -> Tensor:
    """A copy of ``dst`` with image ``src[i]`` resized into ``boxes[i]`` for every i.

    Args:
        dst: (B, C, H, W) images that receive the paste (float or uint8).
        src: (B, C, Hs, Ws) images pasted whole (any spatial size; same B and C). Cast to
            ``dst``'s dtype.
        boxes: (B, 4) int64 ``(y1, x1, y2, x2)`` boxes inside ``dst`` (see
            :mod:`keepmix.functional.boxes`); an empty box leaves that image unchanged.
        mode: ``"nearest"`` (RecursiveMix's official default) or ``"bilinear"``.
        align_corners: bilinear only, as in ``F.interpolate`` (the official RecursiveMix code
            uses True for bilinear; ``F.interpolate``'s default is False).

    Returns:
        (B, C, H, W) tensor of ``dst``'s dtype and device, equal to ``dst`` outside each box and
        to ``F.interpolate(src[i:i+1], size=(h_i, w_i), mode=mode)`` inside box i.
    """
    check_images(dst, "dst")
    check_images(src, "src")
    check_same_device(dst=dst, src=src, boxes=boxes)
    b, c, h, w = dst.shape
    if src.shape[0] != b or src.shape[1] != c:
        raise ValueError(f"src must have the batch size and channels of dst ({b}, {c}), got shape {tuple(src.shape)}")
    if mode not in ("nearest", "bilinear"):
        raise ValueError(f"mode must be 'nearest' or 'bilinear', got {mode!r}")
    if align_corners and mode != "bilinear":
        raise ValueError("align_corners only applies to mode='bilinear'")
    boxes = check_boxes(boxes, b, h, w)
    hs, ws = src.shape[-2:]
    ly, bh = _local_coords(boxes[:, 0], boxes[:, 2] - boxes[:, 0], h)  # (B, H)
    lx, bw = _local_coords(boxes[:, 1], boxes[:, 3] - boxes[:, 1], w)  # (B, W)
    src = src.to(dst.dtype) if mode == "nearest" else src

    if mode == "nearest":
        sy = _nearest_index(ly, bh, hs)
        sx = _nearest_index(lx, bw, ws)
        # One gather over the flattened source: index (B, H*W) -> pixel sy * Ws + sx.
        flat = (sy[:, :, None] * ws + sx[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
        resized = src.reshape(b, c, hs * ws).gather(2, flat).reshape(b, c, h, w)
    else:
        # Blend in float32 (float64 for float64 input), like the kernel's opmath type.
        work = torch.float64 if dst.dtype == torch.float64 else torch.float32
        s = src.to(work)
        y0, y1, wy0, wy1 = _linear_index(ly, bh, hs, align_corners, work)
        x0, x1, wx0, wx1 = _linear_index(lx, bw, ws, align_corners, work)
        # Columns first, then rows: out = wy0 * (wx0 a + wx1 b) + wy1 * (wx0 c + wx1 d), the
        # kernel's own order of operations.
        gx0 = s.gather(3, x0[:, None, None, :].expand(b, c, hs, w))
        gx1 = s.gather(3, x1[:, None, None, :].expand(b, c, hs, w))
        cols = wx0[:, None, None, :] * gx0 + wx1[:, None, None, :] * gx1  # (B, C, Hs, W)
        r0 = cols.gather(2, y0[:, None, :, None].expand(b, c, h, w))
        r1 = cols.gather(2, y1[:, None, :, None].expand(b, c, h, w))
        resized = wy0[:, None, :, None] * r0 + wy1[:, None, :, None] * r1
        if dst.dtype == torch.uint8:
            resized = resized.round().clamp(0, 255)
        resized = resized.to(dst.dtype)

    return paste(dst, resized, boxes)
