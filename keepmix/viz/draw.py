"""The drawing layer of keepmix's pictures: plain tensors in, uint8 tensors out.

Nothing here knows about augmentation methods: image grids, the display form of normalised
images, the saliency colormap, overlays, region outlines, PNG output. Each function is exact
and tested on its own. (The pictures of what ops do are in :mod:`keepmix.viz.ops`; accuracy
curves in :mod:`keepmix.viz.curves`.)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor

from keepmix._checks import check_images
from keepmix.functional.boxes import box_masks, check_boxes

__all__ = [
    "Color",
    "REGION_COLORS",
    "make_grid",
    "to_uint8_image",
    "saliency_to_rgb",
    "overlay",
    "draw_boxes",
    "upscale_nearest",
    "save_png",
    "colormap",
]

Color = tuple[int, int, int]

#: Outline colour of a region by what happened in it: ``cut`` (the op changed the region:
#: Cutout, Random Erasing, their Keep versions), ``kept`` (the original was pasted back over an
#: augmented image: selective-paste), ``pasted`` (a patch from another image: CutMix,
#: RecursiveMix).
REGION_COLORS: dict[str, Color] = {"cut": (255, 40, 40), "kept": (40, 230, 40), "pasted": (40, 160, 255)}


def _check_color(color: object, name: str = "color") -> Color:
    """An (r, g, b) triple of ints in [0, 255] (a single int means grey)."""
    if isinstance(color, (int, float)) and not isinstance(color, bool):
        color = (color, color, color)
    values = cast(Iterable[Any], color)  # not iterable: tuple() raises TypeError, caught below
    try:
        rgb = tuple(int(c) for c in values)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an int or an (r, g, b) triple of ints in [0, 255], got {color!r}") from None
    if len(rgb) != 3 or any(not 0 <= c <= 255 for c in rgb) or any(int(c) != c for c in values):
        raise ValueError(f"{name} must be an int or an (r, g, b) triple of ints in [0, 255], got {color!r}")
    return rgb


def _as_batch(x: object, name: str) -> tuple[Tensor, bool]:
    """(B, C, H, W) view of a (C, H, W) or (B, C, H, W) tensor, and whether it was unbatched."""
    if isinstance(x, Tensor) and x.ndim == 3:
        return check_images(x.unsqueeze(0), name), True
    return check_images(x, name), False


def to_uint8_image(x: Tensor, mean: Sequence[float] | Tensor | None = None, std: Sequence[float] | Tensor | None = None) -> Tensor:
    """Display form of a (B, C, H, W) or (C, H, W) image batch: uint8 in [0, 255], same shape.

    Float input is taken to hold values in [0, 1] once the normalisation is undone:
    ``x * std + mean`` per channel when ``mean``/``std`` are given (the values the data
    pipeline subtracted and divided by), then scaled by 255, rounded, and clamped. The clamp is
    for display only (an augmented normalised image can leave the range). uint8 input is
    returned unchanged (a copy); giving ``mean``/``std`` with uint8 input is an error, because
    uint8 images are never normalised.
    """
    xb, unbatched = _as_batch(x, "x")
    if (mean is None) != (std is None):
        raise ValueError("mean and std must be given together (the normalisation to undo) or both left out")
    if xb.dtype == torch.uint8:
        if mean is not None:
            raise ValueError("mean/std were given but x is uint8; uint8 images are not normalised, leave them out")
        out = xb.clone()
    else:
        xf = xb.float()
        if mean is not None:
            c = xb.shape[1]
            m = torch.as_tensor(mean, dtype=torch.float32, device=xb.device).reshape(-1)
            s = torch.as_tensor(std, dtype=torch.float32, device=xb.device).reshape(-1)
            if m.numel() not in (1, c) or s.numel() not in (1, c):
                raise ValueError(f"mean and std must have 1 or C = {c} values, got {m.numel()} and {s.numel()}")
            if bool((s <= 0).any()):
                raise ValueError(f"std must be > 0, got {s.tolist()}")
            xf = xf * s.reshape(1, -1, 1, 1) + m.reshape(1, -1, 1, 1)
        # nan_to_num: a NaN pixel shows as black rather than breaking the uint8 cast.
        out = (xf * 255.0).round().nan_to_num(0.0).clamp(0, 255).to(torch.uint8)
    return out[0] if unbatched else out


def _rgb_batch(images: Tensor, name: str) -> Tensor:
    """uint8 (B, 3, H, W) from 1- or 3-channel uint8 or [0, 1] float images."""
    images = check_images(images, name, channels=(1, 3))
    images = to_uint8_image(images)
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def make_grid(images: Tensor, nrow: int = 8, padding: int = 2, pad_value: int | Color = 0) -> Tensor:
    """Tile a batch into one uint8 (3, H', W') picture, ``nrow`` images per row.

    ``images`` is (N, C, H, W) with C = 1 (shown grey) or 3, uint8 or float in [0, 1] (see
    :func:`to_uint8_image`). Image ``i`` goes to grid row ``i // nrow`` and column
    ``i % nrow``, its top-left pixel at ``(padding + row * (H + padding),
    padding + col * (W + padding))``; so ``H' = rows * (H + padding) + padding`` and
    ``W' = cols * (W + padding) + padding`` with ``cols = min(nrow, N)``. Padding and unused
    cells of the last row have colour ``pad_value`` (an int grey level or an (r, g, b) triple).
    """
    imgs = _rgb_batch(images, "images")
    if int(nrow) != nrow or nrow < 1:
        raise ValueError(f"nrow must be a positive integer, got {nrow}")
    if int(padding) != padding or padding < 0:
        raise ValueError(f"padding must be an integer >= 0, got {padding}")
    rgb = _check_color(pad_value, "pad_value")
    n, _, h, w = imgs.shape
    cols = min(int(nrow), n)
    rows = math.ceil(n / cols)
    p = int(padding)
    # Pad the batch to a full rectangle of cells, pad each cell on its bottom/right, and
    # reshape: one pass, no per-image copy loop.
    fill = torch.tensor(rgb, dtype=torch.uint8, device=imgs.device).reshape(1, 3, 1, 1)
    cells = fill.expand(rows * cols, 3, h + p, w + p).clone()
    cells[:n, :, :h, :w] = imgs
    grid = cells.reshape(rows, cols, 3, h + p, w + p).permute(2, 0, 3, 1, 4).reshape(3, rows * (h + p), cols * (w + p))
    out = fill[0].expand(3, rows * (h + p) + p, cols * (w + p) + p).clone()
    out[:, p:, p:] = grid
    return out


def upscale_nearest(images: Tensor, scale: int) -> Tensor:
    """Enlarge (B, C, H, W) or (C, H, W) images by an integer factor, each pixel a scale x scale
    block (the same as ``F.interpolate(mode="nearest")`` with an integer factor, for any dtype)."""
    if isinstance(scale, bool) or int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    xb, unbatched = _as_batch(images, "images")
    s = int(scale)
    out = xb.repeat_interleave(s, dim=2).repeat_interleave(s, dim=3) if s > 1 else xb.clone()
    return out[0] if unbatched else out


# Control points of keepmix's own "heat" colormap, black -> purple -> red -> orange -> yellow
# -> near white. Written here rather than taken from matplotlib so that the core does not need
# matplotlib; its luminance rises strictly from point to point, hence along the whole map
# (checked in the tests), so brighter always means more salient.
_HEAT = (
    (0, 0, 0),
    (60, 10, 100),
    (170, 20, 90),
    (235, 80, 30),
    (250, 170, 20),
    (252, 240, 120),
    (255, 255, 255),
)


def colormap(values: Tensor) -> Tensor:
    """Map values in [0, 1] (any shape S) to uint8 RGB of shape (*S, 3) by linear
    interpolation between the control points of the heat colormap (values outside [0, 1]
    are clamped; NaN maps to 0)."""
    table = torch.tensor(_HEAT, dtype=torch.float32, device=values.device)
    pos = values.float().nan_to_num(0.0).clamp(0, 1) * (len(_HEAT) - 1)
    lo = pos.floor().long().clamp_max(len(_HEAT) - 2)
    frac = (pos - lo).unsqueeze(-1)
    rgb = table[lo] * (1 - frac) + table[lo + 1] * frac
    return rgb.round().clamp(0, 255).to(torch.uint8)


def saliency_to_rgb(saliency: Tensor, normalize: bool = True) -> Tensor:
    """Colour a saliency map: (H, W) -> uint8 (3, H, W), or (B, H, W) -> uint8 (B, 3, H, W).

    With ``normalize`` each map is rescaled to [0, 1] by its own min and max (a constant map
    becomes all 0, i.e. black), because saliency magnitudes differ by orders of magnitude
    between images and models; without it the values must already lie in [0, 1]. Brightness
    grows with the value.
    """
    if not isinstance(saliency, Tensor):
        raise TypeError(f"saliency must be a torch.Tensor of shape (H, W) or (B, H, W), got {type(saliency).__name__}")
    if saliency.ndim not in (2, 3) or saliency.numel() == 0:
        raise ValueError(f"saliency must be a non-empty (H, W) or (B, H, W) map, got shape {tuple(saliency.shape)}")
    if not (saliency.dtype.is_floating_point or saliency.dtype == torch.uint8):
        raise TypeError(f"saliency must be floating point or uint8, got {saliency.dtype}")
    s = saliency.unsqueeze(0) if saliency.ndim == 2 else saliency
    s = s.detach().double()
    if normalize:
        flat = s.flatten(1)
        lo = flat.amin(1).reshape(-1, 1, 1)
        span = flat.amax(1).reshape(-1, 1, 1) - lo
        s = torch.where(span > 0, (s - lo) / span.clamp_min(1e-300), torch.zeros_like(s))
    elif saliency.dtype == torch.uint8:
        s = s / 255.0
    elif bool(((s < 0) | (s > 1)).any()):
        raise ValueError("saliency values must lie in [0, 1] when normalize=False")
    rgb = colormap(s).permute(0, 3, 1, 2).contiguous()
    return rgb[0] if saliency.ndim == 2 else rgb


def overlay(image: Tensor, heat: Tensor, alpha: float = 0.5) -> Tensor:
    """Blend ``heat`` over ``image``: ``round((1 - alpha) * image + alpha * heat)`` as uint8.

    Both are uint8 RGB of the same shape, (3, H, W) or (B, 3, H, W); ``alpha`` in [0, 1].
    """
    for name, t in (("image", image), ("heat", heat)):
        if not isinstance(t, Tensor) or t.dtype != torch.uint8:
            raise TypeError(f"{name} must be a uint8 tensor (use to_uint8_image / saliency_to_rgb first)")
    if image.shape != heat.shape:
        raise ValueError(f"image and heat must have the same shape, got {tuple(image.shape)} and {tuple(heat.shape)}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    a = float(alpha)
    return ((1 - a) * image.float() + a * heat.to(image.device).float()).round().clamp(0, 255).to(torch.uint8)


def draw_boxes(images: Tensor, boxes: Tensor, color: Color | Tensor | int = REGION_COLORS["cut"], width: int = 1) -> Tensor:
    """A copy of uint8 RGB ``images`` (B, 3, H, W) with each image's box outlined.

    ``boxes`` is (B, 4) ``(y1, x1, y2, x2)``, half-open, as everywhere in keepmix. The outline
    is drawn *inside* the box: the pixels of the box within ``width`` of its edge, so it never
    leaves the image and covers exactly the region's border pixels. An empty box (an op not
    applied to that image) draws nothing. ``color`` is one (r, g, b) for all images or a (B, 3)
    tensor of per-image colours.
    """
    images = check_images(images, "images", channels=3)
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 (use to_uint8_image first), got {images.dtype}")
    b, _, h, w = images.shape
    boxes = check_boxes(boxes, b, h, w).to(images.device)
    if isinstance(width, bool) or int(width) != width or width < 1:
        raise ValueError(f"width must be a positive integer, got {width}")
    if isinstance(color, Tensor):
        if color.shape != (b, 3):
            raise ValueError(f"a per-image color must have shape (B, 3) = ({b}, 3), got {tuple(color.shape)}")
        if color.dtype.is_floating_point or bool(((color < 0) | (color > 255)).any()):
            raise ValueError("a per-image color must hold integers in [0, 255]")
        col = color.to(device=images.device, dtype=torch.uint8).reshape(b, 3, 1, 1)
    else:
        col = torch.tensor(_check_color(color), dtype=torch.uint8, device=images.device).reshape(1, 3, 1, 1)
    wd = int(width)
    inner = boxes + torch.tensor([wd, wd, -wd, -wd], device=boxes.device)
    # box_masks of an inverted box (y2 < y1) is all False, so a box thinner than 2 * width is
    # filled completely, as it should be.
    ring = box_masks(boxes, h, w) & ~box_masks(inner, h, w)
    return torch.where(ring.unsqueeze(1), col, images)


def save_png(image: Tensor, path: str | Path) -> Path:
    """Write a uint8 (3, H, W), (1, H, W) or (H, W) image as PNG (parent folders are created)
    and return the path."""
    if not isinstance(image, Tensor) or image.dtype != torch.uint8:
        raise TypeError("image must be a uint8 tensor of shape (3, H, W), (1, H, W) or (H, W)")
    if image.ndim == 3 and image.shape[0] in (1, 3):
        arr = image.permute(1, 2, 0).squeeze(-1) if image.shape[0] == 1 else image.permute(1, 2, 0)
    elif image.ndim == 2:
        arr = image
    else:
        raise ValueError(f"image must have shape (3, H, W), (1, H, W) or (H, W), got {tuple(image.shape)}")
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.detach().cpu().contiguous().numpy()).save(path, format="PNG")
    return path
