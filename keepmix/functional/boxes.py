"""Box geometry: building boxes, masks from boxes, areas, and pasting into boxes.

A batch of boxes is an int64 tensor of shape (B, 4) holding ``(y1, x1, y2, x2)`` per image,
half-open (rows y1..y2-1, columns x1..x2-1), with ``0 <= y1 <= y2 <= H`` and
``0 <= x1 <= x2 <= W``. An empty box (y1 == y2 or x1 == x2) means "no region" and is how an
op that was not applied to an image (probability p) encodes it: its mask is all False and its
area is 0, so every formula (paste, lambda = 1 - area / HW) needs no special case.
"""

from __future__ import annotations

import torch
from torch import Tensor

from keepmix.engine import check_values
from keepmix.functional.constants import box_grid, cached, line
from keepmix.functional.select import select

__all__ = [
    "check_boxes",
    "centered_boxes",
    "centre_boxes",
    "corner_boxes_at",
    "area_sizes",
    "corner_boxes",
    "box_areas",
    "box_mask",
    "box_masks",
    "paste",
    "fill_boxes",
]

# Up to this many pixels a box mask is one compare of the (B, 4, H, W) coordinate grid (four
# kernels whatever the size); above it, per-axis masks and one broadcast product (less work).
_GRID_MASK_PIXELS = 64 * 64
# From this many elements a CPU select takes the bit trick of keepmix.functional.select (the
# CPU ``where`` kernel is scalar); below it one ``where`` (fewer kernels) is as fast.
_BIT_SELECT_NUMEL = 1 << 16


def check_boxes(boxes: object, batch_size: int, height: int, width: int, name: str = "boxes") -> Tensor:
    """Check a (B, 4) int64 box tensor against the image size and return it."""
    if not isinstance(boxes, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, 4), got {type(boxes).__name__}")
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must have shape (B, 4) holding (y1, x1, y2, x2), got {tuple(boxes.shape)}")
    if boxes.shape[0] != batch_size:
        raise ValueError(f"{name} has {boxes.shape[0]} rows but the batch has {batch_size} images")
    if boxes.dtype.is_floating_point or boxes.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {boxes.dtype}")
    y1, x1, y2, x2 = boxes.unbind(1)
    bad = (y1 < 0) | (x1 < 0) | (y2 > height) | (x2 > width) | (y2 < y1) | (x2 < x1)

    def which() -> str:
        i = int(bad.nonzero()[0, 0])
        return f"{name}[{i}] = {boxes[i].tolist()}"

    check_values(~bad, f"{name} must hold boxes inside a {height}x{width} image (0 <= y1 <= y2 <= H and 0 <= x1 <= x2 <= W)", which)
    return boxes.long()


def centered_boxes(cy: Tensor, cx: Tensor, h: Tensor, w: Tensor, height: int, width: int) -> Tensor:
    """Boxes of size (h, w) centred at (cy, cx), clipped at the image border.

    The box spans ``[c - s // 2, c - s // 2 + s)`` before clipping, so an unclipped box has
    exactly the requested size (the official Cutout/CutMix code uses ``c + s // 2`` for the far
    edge, which loses a pixel for odd sizes; for even sizes the two agree).
    """
    centre = torch.stack([torch.as_tensor(cy), torch.as_tensor(cx)], dim=-1).long()
    size = torch.stack([torch.as_tensor(h), torch.as_tensor(w)], dim=-1).long()
    lo = centre - torch.div(size, 2, rounding_mode="floor")
    # One clamp of all four edges against (H, W, H, W): a handful of ops whatever B is.
    limit = torch.tensor([height, width, height, width], device=lo.device)
    return torch.cat([lo, lo + size], dim=-1).clamp_min_(0).minimum(limit)


def centre_boxes(centre: Tensor, size: Tensor, height: int, width: int) -> Tensor:
    """(B, 4) int64 boxes of size ``size`` centred at ``centre``, clipped at the border.

    ``centre`` is a (B, 1, 2) float tensor of whole numbers ``(y, x)``, ``size`` a (B, 1, 2)
    tensor (float or integer) of ``(h, w)``; the box spans ``[c - s // 2, c - s // 2 + s)`` before clipping, as
    :func:`centered_boxes`. Four kernels: ``ceil(c -/+ s / 2)`` is exactly ``c - s // 2`` and
    ``c - s // 2 + s`` for whole numbers, so both edges come from one ``addcmul``.
    """
    dt, dev = centre.dtype, centre.device
    edges = torch.addcmul(centre, size, line((-0.5, 0.5), (2, 1), dt, dev)).ceil_()
    edges = edges.clamp_(line((0.0,), (1,), dt, dev), line((float(height), float(width)), (1, 2), dt, dev))
    return edges.long().view(centre.shape[0], 4)


def corner_boxes_at(corner: Tensor, size: Tensor) -> Tensor:
    """(B, 4) int64 boxes of size ``size`` (B, 1, 2) with top-left corner ``corner`` (B, 1, 2)
    (float whole numbers, boxes the caller keeps inside the image)."""
    edges = torch.addcmul(corner, size, line((0.0, 1.0), (2, 1), corner.dtype, corner.device))
    return edges.long().view(corner.shape[0], 4)


def area_sizes(share: Tensor, height: int, width: int, even: bool = False) -> Tensor:
    """(B, 2) int64 box sizes ``(floor(H sqrt(share)), floor(W sqrt(share)))`` for an area
    share per image (CutMix: ``1 - lam``; RecursiveMix: its ratio ``r``), in float64 so the
    floor matches the official ``int(W * sqrt(...))`` on the same value. ``even``: rounded
    down to an even side, the official far edge ``c + s // 2`` of a box centred at ``c``."""
    side = torch.sqrt(share.double())
    sizes = torch.stack([(height * side).floor().long(), (width * side).floor().long()], dim=1)
    return sizes - sizes % 2 if even else sizes


def corner_boxes(top: Tensor, left: Tensor, h: Tensor, w: Tensor) -> Tensor:
    """Boxes with top-left corner (top, left) and size (h, w) (the caller keeps them inside)."""
    top, left, h, w = (torch.as_tensor(t).long() for t in (top, left, h, w))
    return torch.stack([top, left, top + h, left + w], dim=-1)


def box_areas(boxes: Tensor) -> Tensor:
    """Areas in pixels, (B,) int64."""
    return (boxes[..., 2] - boxes[..., 0]).clamp_min(0) * (boxes[..., 3] - boxes[..., 1]).clamp_min(0)


def box_mask(boxes: Tensor, height: int, width: int) -> Tensor:
    """Boolean masks (B, 1, H, W): True inside each image's box (False everywhere for an
    empty or inverted box).

    Small images: one compare of the cached (1, 4, H, W) coordinate grid against the boxes
    and one reduction, a fixed handful of kernels. Larger ones: two 1-D range comparisons
    and one broadcast product, O(B (H + W)) compares plus the result.
    """
    b, dev = boxes.shape[0], boxes.device
    if height * width <= _GRID_MASK_PIXELS:
        ge = box_grid(height, width, dev) >= boxes.reshape(b, 4, 1, 1)
        return (ge == line((True, True, False, False), (1, 4, 1, 1), torch.bool, dev)).all(1, keepdim=True)
    n = max(height, width)
    r = cached(("arange", n, dev), lambda: torch.arange(n, device=dev))
    lo, hi = (r >= boxes.reshape(b, 2, 2, 1)).unbind(1)  # (B, 2, N): r >= (y1, x1), r >= (y2, x2)
    in_y, in_x = (lo > hi).unbind(1)
    # A broadcast bool AND is not vectorised on CPU; a uint8 product is (kernel_choices.md, K2).
    rows = in_y[:, :height].to(torch.uint8).view(b, 1, height, 1)
    return (rows * in_x[:, :width].to(torch.uint8).view(b, 1, 1, width)).bool()


def box_masks(boxes: Tensor, height: int, width: int) -> Tensor:
    """Boolean masks (B, H, W): True inside each image's box (see :func:`box_mask`)."""
    return box_mask(boxes, height, width)[:, 0]


def where(mask: Tensor, src: Tensor, dst: Tensor) -> Tensor:
    """``torch.where(mask, src, dst)`` for ``src`` and ``dst`` of one dtype, bit for bit: one
    kernel, or on large CPU tensors the vectorised bit select (:mod:`keepmix.functional.select`)."""
    if dst.device.type == "cpu" and dst.numel() >= _BIT_SELECT_NUMEL:
        return select(mask, src, dst)
    return torch.where(mask, src, dst)


def paste(dst: Tensor, src: Tensor, boxes: Tensor) -> Tensor:
    """A new tensor equal to ``src`` inside each image's box and ``dst`` outside.

    ``src`` is (B, C, H, W) like ``dst`` or anything that broadcasts to it (a fill value of
    shape (B, C, 1, 1), a scalar tensor). ``dst`` is not modified.
    """
    mask = box_mask(boxes, dst.shape[-2], dst.shape[-1])
    return where(mask, _cast_like(src, dst.dtype, "src"), dst)


def _cast_like(src: Tensor, dtype: torch.dtype, name: str) -> Tensor:
    """Cast ``src`` to ``dtype``; float into uint8 is rounded, and out-of-range values raise
    instead of wrapping around (300.0 would otherwise become 44)."""
    if dtype == torch.uint8 and src.dtype.is_floating_point:
        r = src.round()
        check_values((r >= 0) & (r <= 255), f"{name} has values outside [0, 255] and cannot go into a uint8 image")
        return r.to(torch.uint8)
    return src.to(dtype)


def fill_boxes(x: Tensor, boxes: Tensor, value: Tensor | float) -> Tensor:
    """A copy of ``x`` with each box filled with ``value`` (scalar, (B, C, 1, 1) or (B, C, H, W))."""
    v = torch.as_tensor(value, device=x.device)
    return paste(x, _cast_like(v, x.dtype, "value"), boxes)
