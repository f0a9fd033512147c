"""RoIAlign (He et al., Mask R-CNN) with one box per image, vectorised and differentiable.

keepmix's own, even where torchvision imports: at RecursiveMix's call (one box per image,
1 x 1 or 3 x 3 bins, forward and backward every step) this batched matrix product beats
``torchvision.ops.roi_align`` on the CPU, several times over for forward + backward
(benchmarks/results/interop.md). Semantics follow
``torchvision.ops.roi_align`` exactly (same sample positions, the same adaptive sampling grid,
the same border rule), with one difference in the box layout: keepmix boxes are
``(y1, x1, y2, x2)`` per image (``box_order="yxyx"``, the default), while torchvision's are
``(x1, y1, x2, y2)`` (``box_order="xyxy"``). Passing one layout where the other is expected
transposes the box -- the bug an early version of the official RecursiveMix code had -- so the
order is an explicit argument, and the tests use non-square boxes on non-square maps.

How it is computed: a bilinear sample at (y, x) is a product of a weight over rows and a
weight over columns, and the average over a bin's sample grid is a product of an average over
the grid's rows and one over its columns. Each output bin is therefore ``sum_{h,w} A[h] F[h, w]
B[w]`` for two small per-image weight vectors, and the whole op is one batched matrix product
of the (B, C, H*W) features with a (B, H*W, oh*ow) weight map. Autograd goes through that
product to the features (boxes get no gradient, as in torchvision).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

import torch
from torch import Tensor

__all__ = ["roi_align", "max_sampling_grid"]

BoxOrder = Literal["yxyx", "xyxy"]
_T = TypeVar("_T")


def _pair(v: int | float | Sequence[Any], name: str, kind: Callable[[Any], _T]) -> tuple[_T, _T]:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (kind(v), kind(v))
    try:
        # A bool (an int to the type checker) reaches here: unpacking it raises TypeError, caught.
        a, b = v  # type: ignore[misc]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or a pair of numbers, got {v!r}") from None
    return (kind(a), kind(b))


def max_sampling_grid(extent: float, output_size: int) -> int:
    """An upper bound on the adaptive sampling grid, ``ceil(roi_side / output_size)``, for every
    box lying inside a feature extent of ``extent`` cells (image side * spatial scale).

    ``floor(extent / output_size) + 1`` rather than the ceiling itself: the box side is
    computed in float32 and can exceed the exact value by an ulp, which would push an
    integral ratio to the next integer.
    """
    return int(math.floor(extent / output_size)) + 1


def _axis_weights(
    start: Tensor,
    end: Tensor,
    bins: int,
    grid: Tensor,
    max_grid: int,
    size: int,
    aligned: bool,
) -> Tensor:
    """(B, bins, size) weights: the average over each bin's ``grid`` samples of the 1-D
    bilinear weights of feature rows (or columns), torchvision's rules included."""
    roi = end - start
    if not aligned:
        roi = roi.clamp_min(1.0)  # legacy (aligned=False) boxes are at least one cell
    bin_size = roi / bins  # (B,)
    g = grid.to(start.dtype)
    ib = torch.arange(bins, device=start.device, dtype=start.dtype)
    ig = torch.arange(max_grid, device=start.device, dtype=start.dtype)
    # Sample positions (B, bins, G): start + bin * bin_size + (i + 0.5) * bin_size / grid.
    pos = (
        start[:, None, None]
        + ib[None, :, None] * bin_size[:, None, None]
        + (ig[None, None, :] + 0.5) * (bin_size / g.clamp_min(1))[:, None, None]
    )
    used = ig[None, None, :] < g[:, None, None]
    # torchvision: a sample more than one cell outside the map contributes 0; otherwise the
    # position is clamped to [0, size - 1] and interpolated between two neighbours.
    inside = (pos >= -1.0) & (pos <= size)
    p = pos.clamp_min(0)
    low = p.floor().to(torch.int64)
    at_end = low >= size - 1
    low = low.clamp(max=size - 1)
    high = torch.where(at_end, low, low + 1)
    p = torch.where(at_end, low.to(p.dtype), p)
    frac = p - low.to(p.dtype)
    keep = (used & inside).to(start.dtype)
    cells = torch.arange(size, device=start.device)
    w = (cells == low[..., None]).to(start.dtype) * ((1 - frac) * keep)[..., None]
    w = w + (cells == high[..., None]).to(start.dtype) * (frac * keep)[..., None]
    # Mean over the grid; an empty grid (a box of zero side) has no samples and gives 0.
    return w.sum(dim=2) / g.clamp_min(1)[:, None, None]


def roi_align(
    features: Tensor,
    boxes: Tensor,
    output_size: int | tuple[int, int] = (1, 1),
    spatial_scale: float | tuple[float, float] = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = True,
    *,
    box_order: BoxOrder = "yxyx",
    max_grid: int | tuple[int, int] | None = None,
) -> Tensor:
    """Pool ``features[i]`` over ``boxes[i]`` for every image i (one box per image).

    Args:
        features: (B, C, H, W) float feature map.
        boxes: (B, 4) boxes in *image* coordinates (int or float), ``(y1, x1, y2, x2)`` with
            ``box_order="yxyx"`` (keepmix's box layout; an int box covers pixels y1..y2-1, i.e.
            the continuous span [y1, y2]) or ``(x1, y1, x2, y2)`` with ``"xyxy"``
            (torchvision's layout, without its batch-index column).
        output_size: (oh, ow) bins per box (an int for a square grid).
        spatial_scale: feature side / image side, a number or a pair (scale_y, scale_x) for
            maps whose two sides scale differently.
        sampling_ratio: samples per bin along each axis; ``<= 0`` is torchvision's adaptive
            ``ceil(box side / output side)`` per box.
        aligned: shift the box by half a cell (True, the correct pixel model: a box covering
            whole cells averages exactly those cells). False is the legacy Mask R-CNN rule.
        max_grid: adaptive sampling only -- an upper bound on any box's grid (an int or a
            pair). Boxes whose grid would exceed it are sampled on ``max_grid`` points. None
            reads the bound from the boxes, one host-device sync per call; pass
            :func:`max_sampling_grid` of the feature extent to stay sync-free when the boxes
            are known to lie inside the image.

    Returns:
        (B, C, oh, ow) tensor of ``features``' dtype.
    """
    if not isinstance(features, Tensor) or features.ndim != 4 or not features.is_floating_point():
        raise ValueError(f"features must be a float tensor of shape (B, C, H, W), got {getattr(features, 'shape', type(features))}")
    if not isinstance(boxes, Tensor) or boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be a tensor of shape (B, 4), got {getattr(boxes, 'shape', type(boxes))}")
    b, c, h, w = features.shape
    if boxes.shape[0] != b:
        raise ValueError(f"boxes has {boxes.shape[0]} rows but features has a batch of {b}: roi_align takes one box per image")
    if boxes.device != features.device:
        raise ValueError(f"boxes is on {boxes.device} but features is on {features.device}")
    if box_order not in ("yxyx", "xyxy"):
        raise ValueError(f"box_order must be 'yxyx' (keepmix) or 'xyxy' (torchvision), got {box_order!r}")
    oh, ow = _pair(output_size, "output_size", int)
    if oh < 1 or ow < 1:
        raise ValueError(f"output_size must be positive, got {output_size!r}")
    sy, sx = _pair(spatial_scale, "spatial_scale", float)
    if not (sy > 0 and sx > 0 and math.isfinite(sy) and math.isfinite(sx)):
        raise ValueError(f"spatial_scale must be positive and finite, got {spatial_scale!r}")
    if not isinstance(sampling_ratio, int) or isinstance(sampling_ratio, bool):
        raise TypeError(f"sampling_ratio must be an int, got {type(sampling_ratio).__name__}")

    # Sample coordinates in the features' accumulation type (float32 for half types, as in
    # torchvision's kernels), so the adaptive grid count matches theirs.
    coord = torch.float64 if features.dtype == torch.float64 else torch.float32
    bx = boxes.to(coord)
    y1, x1, y2, x2 = bx.unbind(1) if box_order == "yxyx" else (bx[:, 1], bx[:, 0], bx[:, 3], bx[:, 2])
    off = 0.5 if aligned else 0.0
    ys, ye = y1 * sy - off, y2 * sy - off
    xs, xe = x1 * sx - off, x2 * sx - off

    def grid_of(start: Tensor, end: Tensor, bins: int) -> Tensor:
        if sampling_ratio > 0:
            return torch.full_like(start, sampling_ratio, dtype=torch.int64)
        roi = end - start if aligned else (end - start).clamp_min(1.0)
        return torch.ceil(roi / bins).to(torch.int64).clamp_min(0)

    gy, gx = grid_of(ys, ye, oh), grid_of(xs, xe, ow)
    if sampling_ratio > 0:
        my, mx = sampling_ratio, sampling_ratio
    elif max_grid is None:
        my, mx = (int(v) for v in torch.stack([gy.max(), gx.max()]).tolist())  # one sync
    else:
        my, mx = _pair(max_grid, "max_grid", int)
    my, mx = max(my, 1), max(mx, 1)
    gy, gx = gy.clamp(max=my), gx.clamp(max=mx)

    wy = _axis_weights(ys, ye, oh, gy, my, h, aligned)  # (B, oh, H)
    wx = _axis_weights(xs, xe, ow, gx, mx, w, aligned)  # (B, ow, W)
    # Weight map (B, H*W, oh*ow): outer product of the row and column weights.
    wmap = (wy[:, :, None, :, None] * wx[:, None, :, None, :]).reshape(b, oh * ow, h * w).transpose(1, 2)
    out = torch.bmm(features.reshape(b, c, h * w), wmap.to(features.dtype))
    return out.reshape(b, c, oh, ow)
