"""Batched affine warps with per-image parameters, following PIL's conventions.

A warp is given the way PIL's ``Image.transform(size, Image.AFFINE, data)`` takes it: six
coefficients ``(a, b, c, d, e, f)`` per image that map a point of the *output* to the point of
the *input* it samples, ``(x_in, y_in) = (a x + b y + c, d x + e y + f)``, in continuous pixel
coordinates where pixel ``(i, j)`` covers ``[j, j + 1) x [i, i + 1)`` (its centre is at
``(j + 0.5, i + 0.5)``). Output pixels whose source falls outside the image take ``fill``.

* ``nearest`` (PIL's default, and AutoAugment's) reproduces PIL's 16.16 fixed-point affine
  engine with integer index math (exact: the same source pixel as PIL for every output pixel,
  barring coordinates within 2**-17 of a pixel edge). ``grid_sample`` would round float32
  coordinates half-to-even and move pixels at ties, so it is not used for nearest.
* ``bilinear`` is PIL's bilinear filter (Geometry.c): the source point in float64, the four
  neighbours clamped at the edge, ``a + (b - a) * d`` along x then y in float64, truncated on
  uint8, and PIL's in-image test (``0 <= x_in < W``). It gives PIL's pixels bit for bit on
  shears and translations and on almost all pixels of a rotation (one grey level where PIL's
  and keepmix's rotation coefficients round apart), and the identity at zero displacement
  (``grid_sample``'s normalised coordinates lost a grey level there).

Named ops (``rotate``, ``shear_x`` ...) build the coefficients; angles, shears and shifts are
Python numbers or (B,) tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, cast

import torch
from torch import Tensor

from keepmix._checks import check_images
from keepmix.engine import capture_safe, check_values
from keepmix.functional.select import select as _select

__all__ = [
    "Interpolation",
    "affine",
    "rotate",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
    "rotation_matrix",
    "shear_matrix",
    "translation_matrix",
]

Interpolation = Literal["nearest", "bilinear"]
Fill = float | Sequence[float] | Tensor


# --------------------------------------------------------------------------- helpers


def _per_image(value: float | Tensor, batch: int, device: torch.device, name: str) -> Tensor:
    """A number or (B,) tensor as a finite (B,) float64 tensor."""
    if isinstance(value, Tensor):
        if value.ndim == 0:
            value = value.expand(batch)
        if value.shape != (batch,):
            raise ValueError(f"{name} must be a number or a tensor of shape ({batch},) (one per image), got shape {tuple(value.shape)}")
        if value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"{name} must be a real number tensor, got {value.dtype}")
        value = value.to(device=device, dtype=torch.float64)
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number or a (B,) tensor, got {type(value).__name__}")
    else:
        value = torch.full((batch,), float(value), device=device, dtype=torch.float64)
    check_values(torch.isfinite(value), f"{name} must be finite", lambda: f"got {value.tolist()}")
    return value


def _fill_tensor(fill: Fill, images: Tensor) -> Tensor:
    """``fill`` as a (1, C, 1, 1) tensor of the images' dtype (range-checked for uint8).

    Numbers are checked as numbers (no tensor is read); a tensor fill through check_values.
    """
    c = images.shape[1]
    if isinstance(fill, Tensor):
        t = fill.detach().to(dtype=torch.float64).flatten()
        if t.numel() not in (1, c):
            raise ValueError(f"fill must be a number or one value per channel ({c}), got {t.numel()} values")
        ok = torch.isfinite(t)
        if images.dtype == torch.uint8:
            ok &= (t >= 0) & (t <= 255) & (t == t.round())
        check_values(ok, "fill must be finite (for uint8 images: integers in [0, 255])", lambda: f"got {t.tolist()}")
        return t.expand(c).to(device=images.device, dtype=images.dtype).view(1, c, 1, 1)
    # A lone value: a number (float() refuses anything else with its own TypeError).
    values = [float(v) for v in (fill if isinstance(fill, (list, tuple)) else [cast(float, fill)])]
    if len(values) not in (1, c):
        raise ValueError(f"fill must be a number or one value per channel ({c}), got {len(values)} values")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"fill must be finite, got {values}")
    if images.dtype == torch.uint8 and not all(0 <= v <= 255 and v == round(v) for v in values):
        raise ValueError(
            f"fill for uint8 images must be integers in [0, 255], got {values}: round them first "
            f"(fill={[round(min(max(v, 0.0), 255.0)) for v in values]}), or pass float images in [0, 1]"
        )
    values = values * c if len(values) == 1 else values
    return torch.tensor(values, dtype=images.dtype, device=images.device).view(1, c, 1, 1)


def _check_matrix(matrix: Tensor, batch: int) -> Tensor:
    if not isinstance(matrix, Tensor):
        raise TypeError(f"matrix must be a tensor of shape (B, 6) or (B, 2, 3), got {type(matrix).__name__}")
    if matrix.shape in ((batch, 2, 3),):
        matrix = matrix.reshape(batch, 6)
    if matrix.shape != (batch, 6):
        raise ValueError(f"matrix must have shape ({batch}, 6) or ({batch}, 2, 3), got {tuple(matrix.shape)}")
    if not matrix.dtype.is_floating_point:
        matrix = matrix.double()
    check_values(torch.isfinite(matrix), "matrix must be finite")
    return matrix.double()


def interpolation_name(interpolation: object) -> str:
    """``"nearest"`` or ``"bilinear"`` from that string or an enum whose value it is, such as
    torchvision's ``InterpolationMode.BILINEAR`` (read by its value: torchvision is not
    imported); anything else is refused with a ``ValueError`` naming ``interpolation``."""
    name = getattr(interpolation, "value", interpolation)
    if name not in ("nearest", "bilinear"):
        hint = " (bicubic is not implemented: use 'bilinear')" if name == "bicubic" else ""
        raise ValueError(f"interpolation must be 'nearest' or 'bilinear' (or torchvision's InterpolationMode), got {interpolation!r}{hint}")
    return str(name)


def _check_interpolation(interpolation: str) -> None:
    interpolation_name(interpolation)


# --------------------------------------------------------------------------- matrices


def rotation_matrix(angle: Tensor, height: int, width: int) -> Tensor:
    """(B, 6) coefficients of ``Image.rotate(angle)`` (degrees, counter-clockwise, about the centre).

    Computed as PIL computes them: ``angle % 360``, cos/sin of ``-radians(angle)`` rounded to
    15 decimals, centre ``(W / 2, H / 2)``.
    """
    rad = -(torch.remainder(angle.double(), 360.0) * (math.pi / 180.0))
    cos = torch.round(torch.cos(rad), decimals=15)
    sin = torch.round(torch.sin(rad), decimals=15)
    cx, cy = width / 2.0, height / 2.0
    c = (cos * -cx + sin * -cy) + cx
    f = (-sin * -cx + cos * -cy) + cy
    return torch.stack([cos, sin, c, -sin, cos, f], dim=-1)


def shear_matrix(shear: Tensor, axis: Literal["x", "y"]) -> Tensor:
    """(B, 6) coefficients of a shear about the top-left corner (AutoAugment's ShearX/Y).

    ShearX samples ``x_in = x + shear * y`` (PIL data ``(1, shear, 0, 0, 1, 0)``).
    """
    s = shear.double()
    one, zero = torch.ones_like(s), torch.zeros_like(s)
    if axis == "x":
        return torch.stack([one, s, zero, zero, one, zero], dim=-1)
    return torch.stack([one, zero, zero, s, one, zero], dim=-1)


def translation_matrix(dx: Tensor, dy: Tensor) -> Tensor:
    """(B, 6) coefficients that move the content by ``(dx, dy)`` pixels (right / down when positive)."""
    dx, dy = dx.double(), dy.double()
    one, zero = torch.ones_like(dx), torch.zeros_like(dx)
    return torch.stack([one, zero, -dx, zero, one, -dy], dim=-1)


# --------------------------------------------------------------------------- warping


def _fixed(v: Tensor) -> Tensor:
    """PIL's FIX(v) = floor(v * 65536 + 0.5): 16.16 fixed point."""
    return torch.floor(v * 65536.0 + 0.5).long()


def _padded_source(images: Tensor, fill: Tensor) -> Tensor:
    """(B, C, (H + 2) * (W + 2)): the images framed by a one-pixel border of ``fill``."""
    b, c, h, w = images.shape
    src = images.new_empty(b, c, h + 2, w + 2)
    src[..., 1:-1, 1:-1] = images
    # Only the border is filled (one pass over the pixels, not two).
    edge = fill.view(1, c, 1)
    src[..., 0, :] = edge
    src[..., -1, :] = edge
    src[..., 1:-1, 0] = edge
    src[..., 1:-1, -1] = edge
    return src.view(b, c, (h + 2) * (w + 2))


def _nearest(images: Tensor, m: Tensor, fill: Tensor) -> Tensor:
    b, c, h, w = images.shape
    dev = images.device
    # Index maps are built shifted by one pixel (x_in + 1, y_in + 1) and clamped to the frame
    # of a fill-padded source: an out-of-image position lands on the fill border, so the
    # in-image test is one clamp per axis and the fill is read by the same gather (faster than
    # compare-and-where on unpadded indices: benchmarks/results/kernel_choices.md, K3).
    a0, a1, a2, a3, a4, a5 = m.unbind(-1)
    # Maps without cross terms (translate, zero shear, 180 degrees) take PIL's separable
    # "scale" engine: running float64 sums per column and row, truncated (COORD). Sequential
    # cumsums reproduce those running sums, and the result is separable, hence cheap.
    scale = (a1 == 0) & (a3 == 0)
    # PIL's 16.16 fixed-point engine, from the centre of pixel (0, 0), same operation order as
    # Geometry.c; integer arithmetic is exact, so direct sums equal its running sums. All six
    # values in one (B, 6) tensor: one op each instead of six on these tiny tensors.
    fx = _fixed(torch.stack([(a2 + a0 * 0.5) + a1 * 0.5, (a5 + a3 * 0.5) + a4 * 0.5, a0, a1, a3, a4], dim=-1))
    # Which engines are needed, and whether the fixed-point sums fit in int32 (half the memory
    # traffic of int64 on the (B, H, W) index maps; kernel_choices.md, K4): one host
    # sync, only on the CPU fast path, where it is free; elsewhere both engines run, in int64.
    if not capture_safe(dev):
        ax = fx.abs()
        bound = torch.maximum(ax[:, 0] + (h * ax[:, 3] + w * ax[:, 2]), ax[:, 1] + (h * ax[:, 5] + w * ax[:, 4]))
        n_scale, big = torch.stack([scale.sum(), bound.max()]).tolist()
        need_fixed, need_scale = n_scale < b, n_scale > 0
        idt = torch.int32 if big < 2**31 - 2**18 else torch.int64
    else:
        need_fixed, need_scale, idt = True, True, torch.int64
    if need_scale:
        xs_s = torch.cat([(a2 + a0 * 0.5).view(b, 1), a0.view(b, 1).expand(b, w - 1)], dim=1).cumsum(1)
        ys_s = torch.cat([(a5 + a4 * 0.5).view(b, 1), a4.view(b, 1).expand(b, h - 1)], dim=1).cumsum(1)
        # +1 after the clamp to [-1, W] keeps huge float sums from overflowing the index type.
        # Separable maps alone are built in int64 (they are tiny): the (B, H, W) index then
        # comes out of one add, without a conversion pass.
        sdt = idt if need_fixed else torch.int64
        xin = xs_s.floor_().clamp_(-1, w).to(sdt).add_(1).view(b, 1, w)
        yin = ys_s.floor_().clamp_(-1, h).to(sdt).add_(1).view(b, h, 1)
    if need_fixed:
        fx = fx.to(idt)
        fx[:, :2] += 65536  # (v >> 16) + 1 == (v + 65536) >> 16: the +1 shift for free
        x0, y0, fa0, fa1, fa3, fa4 = (t.view(b, 1, 1) for t in fx.unbind(-1))
        ys = torch.arange(h, device=dev, dtype=idt).view(1, h, 1)
        xs = torch.arange(w, device=dev, dtype=idt).view(1, 1, w)
        xin_f = ((x0 + ys * fa1) + xs * fa0).bitwise_right_shift_(16).clamp_(0, w + 1)
        yin_f = ((y0 + xs * fa3) + ys * fa4).bitwise_right_shift_(16).clamp_(0, h + 1)
        if need_scale:
            sel = scale.view(b, 1, 1)
            xin = _select(sel, xin.expand_as(xin_f), xin_f)
            yin = _select(sel, yin.expand_as(yin_f), yin_f)
        else:
            xin, yin = xin_f, yin_f
    index = torch.add(xin, yin, alpha=w + 2).to(torch.int64).view(b, 1, h * w).expand(b, c, h * w)
    return _padded_source(images, fill).gather(2, index).view(b, c, h, w)


def _bilinear(images: Tensor, m: Tensor, fill: Tensor) -> Tensor:
    """PIL's bilinear filter (Geometry.c), batched: the source point of each pixel centre in
    float64, ``v = a + (b - a) * d`` along x then y on the four neighbours (clamped at the
    edge), truncated on uint8. At zero displacement every weight is 0 or 1, so the warp is
    the identity there."""
    b, c, h, w = images.shape
    dev = images.device
    ys = torch.arange(h, device=dev, dtype=torch.float64).view(1, h, 1) + 0.5
    xs = torch.arange(w, device=dev, dtype=torch.float64).view(1, 1, w) + 0.5
    a0, a1, a2, a3, a4, a5 = (t.view(b, 1, 1) for t in m.unbind(-1))
    xin = a0 * xs + a1 * ys + a2
    yin = a3 * xs + a4 * ys + a5
    valid = (xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)
    xm, ym = xin - 0.5, yin - 0.5
    x0, y0 = xm.floor(), ym.floor()
    dx, dy = (xm - x0).unsqueeze(1), (ym - y0).unsqueeze(1)
    # Out-of-image points are filled below; clamping their (possibly huge) coordinates first
    # keeps the integer conversion defined.
    x0 = x0.clamp(-1, w).long()
    y0 = y0.clamp(-1, h).long()
    cols = (x0.clamp(0, w - 1), (x0 + 1).clamp(0, w - 1))
    rows = (y0.clamp(0, h - 1) * w, (y0 + 1).clamp(0, h - 1) * w)
    wd = torch.float64
    src = images.reshape(b, c, h * w).to(wd)

    def at(r: Tensor, q: Tensor) -> Tensor:
        return src.gather(2, (r + q).view(b, 1, h * w).expand(b, c, h * w)).view(b, c, h, w)

    top = at(rows[0], cols[0])
    top = top + (at(rows[0], cols[1]) - top) * dx
    bottom = at(rows[1], cols[0])
    bottom = bottom + (at(rows[1], cols[1]) - bottom) * dx
    out = top + (bottom - top) * dy
    if images.dtype == torch.uint8:
        out = out.clamp_(0.0, 255.0).to(torch.uint8)  # truncation, like PIL's (UINT8) cast
    else:
        out = out.to(images.dtype)
    return _select(valid.unsqueeze(1), out, fill.expand_as(out))


def _affine(images: Tensor, matrix: Tensor, interpolation: str, fill: Tensor) -> Tensor:
    if interpolation == "nearest":
        return _nearest(images, matrix, fill)
    return _bilinear(images, matrix, fill)


def affine(images: Tensor, matrix: Tensor, interpolation: Interpolation = "nearest", fill: Fill = 0.0) -> Tensor:
    """Warp each image by its own affine map, PIL's ``Image.transform(..., Image.AFFINE, ...)``.

    Args:
        images: (B, C, H, W) uint8 or float.
        matrix: (B, 6) or (B, 2, 3) PIL-style coefficients mapping output to input points
            (see the module docstring).
        interpolation: ``"nearest"`` (exactly PIL's) or ``"bilinear"``.
        fill: value of pixels that come from outside the image, in the images' units: a number
            or one per channel (uint8: integers in [0, 255]).
    """
    check_images(images)
    _check_interpolation(interpolation)
    m = _check_matrix(matrix, images.shape[0]).to(images.device)
    return _affine(images, m, interpolation, _fill_tensor(fill, images))


def rotate(images: Tensor, angle: float | Tensor, interpolation: Interpolation = "nearest", fill: Fill = 0.0) -> Tensor:
    """Rotate each image by ``angle`` degrees counter-clockwise about its centre, ``Image.rotate``."""
    check_images(images)
    _check_interpolation(interpolation)
    a = _per_image(angle, images.shape[0], images.device, "angle")
    m = rotation_matrix(a, images.shape[-2], images.shape[-1])
    return _affine(images, m, interpolation, _fill_tensor(fill, images))


def _shear(images: Tensor, shear: float | Tensor, axis: Literal["x", "y"], interpolation: str, fill: Fill) -> Tensor:
    check_images(images)
    _check_interpolation(interpolation)
    s = _per_image(shear, images.shape[0], images.device, "shear")
    return _affine(images, shear_matrix(s, axis), interpolation, _fill_tensor(fill, images))


def shear_x(images: Tensor, shear: float | Tensor, interpolation: Interpolation = "nearest", fill: Fill = 0.0) -> Tensor:
    """Horizontal shear: output pixel (x, y) samples the input at (x + shear * y, y)."""
    return _shear(images, shear, "x", interpolation, fill)


def shear_y(images: Tensor, shear: float | Tensor, interpolation: Interpolation = "nearest", fill: Fill = 0.0) -> Tensor:
    """Vertical shear: output pixel (x, y) samples the input at (x, y + shear * x)."""
    return _shear(images, shear, "y", interpolation, fill)


def _translate(images: Tensor, shift: float | Tensor, axis: str, interpolation: str, fill: Fill) -> Tensor:
    check_images(images)
    _check_interpolation(interpolation)
    s = _per_image(shift, images.shape[0], images.device, "shift")
    z = torch.zeros_like(s)
    m = translation_matrix(s, z) if axis == "x" else translation_matrix(z, s)
    return _affine(images, m, interpolation, _fill_tensor(fill, images))


def translate_x(images: Tensor, shift: float | Tensor, interpolation: Interpolation = "nearest", fill: Fill = 0.0) -> Tensor:
    """Move the content ``shift`` pixels to the right (left when negative)."""
    return _translate(images, shift, "x", interpolation, fill)


def translate_y(images: Tensor, shift: float | Tensor, interpolation: Interpolation = "nearest", fill: Fill = 0.0) -> Tensor:
    """Move the content ``shift`` pixels down (up when negative)."""
    return _translate(images, shift, "y", interpolation, fill)
