"""Batched point ops (PIL ``ImageOps`` / ``ImageEnhance``) with per-image magnitudes.

Value conventions:

* **uint8** images follow PIL bit for bit: the same grey conversion
  (``(19595 R + 38470 G + 7471 B + 2**15) >> 16``), the same float32 blend with truncation as
  ``Image.blend``, the same lookup tables as ``ImageOps.autocontrast`` / ``equalize``, the same
  float32 SMOOTH filter (+0.5 rounding offset, border pixels kept) as ``ImageFilter.SMOOTH``.
* **float** images are taken to be in [0, 1] (torchvision's convention): the same formulas
  without rounding, and results of the enhance ops are clipped to [0, 1] like PIL clips to
  [0, 255]. float16/bfloat16 are computed in float32 and cast back.
* Grey-level magnitudes (``solarize``'s threshold) are given in uint8 units (0..255) for every
  dtype, so one set of parameters means the same thing on ``x`` and on ``x / 255``.

Every magnitude is a Python number (same for all images) or a (B,) tensor (one per image).
The public functions validate their arguments; the ``_``-prefixed kernels do not (the policies
call those with magnitudes they built themselves, which avoids a device sync per op).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from keepmix._checks import check_images
from keepmix.engine import capture_safe, check_values
from keepmix.functional.select import select as _select

__all__ = [
    "grayscale",
    "blend",
    "smooth",
    "invert",
    "autocontrast",
    "equalize",
    "posterize",
    "solarize",
    "brightness",
    "color",
    "contrast",
    "sharpness",
]

# PIL's ITU-R 601-2 luma in 16-bit fixed point (Convert.c); also used for float images so the
# float and uint8 paths agree to within rounding.
_LUMA = (19595, 38470, 7471)


# --------------------------------------------------------------------------- helpers


def _work_dtype(x: Tensor) -> torch.dtype:
    """Float dtype in which a float image is processed (half types go through float32)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _per_image(value: float | Tensor, images: Tensor, name: str, dtype: torch.dtype = torch.float32) -> Tensor:
    """A number or (B,) tensor as a (B,) tensor on the images' device (no range check)."""
    b = images.shape[0]
    if isinstance(value, Tensor):
        if value.ndim == 0:
            value = value.expand(b)
        if value.shape != (b,):
            raise ValueError(f"{name} must be a number or a tensor of shape ({b},) (one per image), got shape {tuple(value.shape)}")
        if value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"{name} must be a real number tensor, got {value.dtype}")
        return value.to(device=images.device, dtype=dtype)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number or a (B,) tensor, got {type(value).__name__}")
    return torch.full((b,), value, device=images.device, dtype=dtype)


def _check_range(v: Tensor, name: str, low: float, high: float = float("inf"), integer: bool = False) -> None:
    """Raise unless every element of ``v`` is finite and in [low, high] (and integral if asked)."""
    bad = ~torch.isfinite(v) | (v < low) | (v > high)
    if integer:
        bad |= v != v.round()
    kind = "an integer" if integer else "a number"

    def which() -> str:
        i = int(bad.nonzero()[0, 0])
        return f"got {v[i].item()} (image {i})"

    check_values(~bad, f"{name} must be {kind} in [{low}, {high}]", which)


# Integer types of the same width, to select float values bit for bit.
def _view(v: Tensor) -> Tensor:
    return v.view(-1, 1, 1, 1)


def _quantize(x: Tensor) -> Tensor:
    """Float image in [0, 1] to uint8 levels (nearest level, clipped)."""
    return (x.to(_work_dtype(x)) * 255.0).round_().clamp_(0, 255).to(torch.uint8)


def _apply_lut(x: Tensor, lut: Tensor) -> Tensor:
    """Per (image, channel) lookup: ``lut`` is (B, C, 256) of any dtype, ``x`` (B, C, H, W) uint8."""
    b, c, h, w = x.shape
    return lut.gather(2, x.reshape(b, c, h * w).long()).view(b, c, h, w)


# --------------------------------------------------------------------------- kernels


def _grayscale(x: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    if x.dtype == torch.uint8:
        r, g, b = x.to(torch.int32).unbind(1)
        return ((r * _LUMA[0] + g * _LUMA[1] + b * _LUMA[2] + 32768) >> 16).to(torch.uint8).unsqueeze(1)
    wd = _work_dtype(x)
    r, g, b = x.to(wd).unbind(1)
    y = (r * (_LUMA[0] / 65536) + g * (_LUMA[1] / 65536) + b * (_LUMA[2] / 65536)).unsqueeze(1)
    return y.to(x.dtype)


def _blend(degenerate: Tensor, x: Tensor, factor: Tensor) -> Tensor:
    """``degenerate + factor * (x - degenerate)`` per image, as ``Image.blend`` computes it."""
    if x.dtype == torch.uint8:
        # PIL: float32 alpha, (int)in1 + alpha * (in2 - in1) in float32, clipped, truncated.
        # Separate mul and add (no fused multiply-add) so the rounding is PIL's; the final
        # float -> uint8 conversion truncates, as PIL's (UINT8) cast does.
        d = degenerate.to(torch.float32)
        out = x.to(torch.float32).sub_(d).mul_(_view(factor.to(torch.float32))).add_(d)
        return out.clamp_(0.0, 255.0).to(torch.uint8)
    wd = _work_dtype(x)
    d = degenerate.to(wd)
    out = x.to(wd, copy=True).sub_(d).mul_(_view(factor.to(wd))).add_(d)
    return out.clamp_(0.0, 1.0).to(x.dtype)


def _smooth(x: Tensor) -> Tensor:
    """PIL's ``ImageFilter.SMOOTH`` (3x3 kernel [1 1 1; 1 5 1; 1 1 1] / 13), border kept."""
    h, w = x.shape[-2:]
    if h < 3 or w < 3:
        return x.clone()
    wd = torch.float32 if x.dtype == torch.uint8 else _work_dtype(x)
    f = x.to(wd)
    one = torch.tensor(1.0, dtype=torch.float32) / 13.0  # float32 kernel values, as PIL stores them
    five = torch.tensor(5.0, dtype=torch.float32) / 13.0
    one, five = one.to(device=x.device, dtype=wd), five.to(device=x.device, dtype=wd)
    left, mid, right = f[..., :-2], f[..., 1:-1], f[..., 2:]
    # Same summation order as Filter.c: each row ((l*k0 + m*k1) + r*k2), rows y+1, y, y-1,
    # each op a separate rounding (no fused multiply-add), so uint8 results are PIL's.
    lr = left * one
    rr = right * one
    plain = (mid * one).add_(lr).add_(rr)
    centre = (mid[..., 1:-1, :] * five).add_(lr[..., 1:-1, :]).add_(rr[..., 1:-1, :])
    offset = 0.5 if x.dtype == torch.uint8 else 0.0  # PIL rounds by adding 0.5, then truncates
    ss = plain[..., 2:, :].add(offset).add_(centre).add_(plain[..., :-2, :])
    out = x.clone()
    # uint8: ss lies in [0.5, 255.5], so the truncating copy needs no clamp.
    out[..., 1:-1, 1:-1].copy_(ss)
    return out


def _invert(x: Tensor) -> Tensor:
    return 255 - x if x.dtype == torch.uint8 else 1.0 - x


def _autocontrast_lut(x: Tensor) -> Tensor:
    """(B, C, 256) uint8: ``ImageOps.autocontrast``'s table of each channel of uint8 ``x``."""
    lo = x.amin(dim=(-2, -1))  # (B, C)
    hi = x.amax(dim=(-2, -1))
    # ImageOps.autocontrast's table: int(ix * scale + offset) in float64, clipped to [0, 255].
    lo64, hi64 = lo.double()[..., None], hi.double()[..., None]
    ok = hi64 > lo64
    # An explicit division: ``255.0 / t`` would be computed as 255 * (1 / t), rounded twice.
    scale = torch.full_like(lo64, 255.0).div_(torch.where(ok, hi64 - lo64, 1.0))
    offset = -lo64 * scale
    ix = torch.arange(256, device=x.device, dtype=torch.float64)
    lut = (ix * scale + offset).trunc_().clamp_(0, 255)
    return torch.where(ok, lut, ix).to(torch.uint8)


def _autocontrast(x: Tensor) -> Tensor:
    if x.dtype != torch.uint8:
        lo = x.amin(dim=(-2, -1))  # (B, C)
        hi = x.amax(dim=(-2, -1))
        wd = _work_dtype(x)
        lo, hi = lo.to(wd)[..., None, None], hi.to(wd)[..., None, None]
        # A constant channel is left as is: (x - 0) / 1 == x, so the choice is made on the
        # (B, C) offsets and spans, not per pixel.
        ok = hi > lo
        out = (x.to(wd) - torch.where(ok, lo, 0.0)) / torch.where(ok, hi - lo, 1.0)
        return out.to(x.dtype)
    return _apply_lut(x, _autocontrast_lut(x))


def _offset_levels(x: Tensor) -> Tensor:
    """(B, C, H * W) int64: each value of uint8 ``x`` plus 256 * (index of its (image, channel)),
    an index into a flattened (B, C, 256) table."""
    b, c = x.shape[:2]
    offsets = torch.arange(0, b * c * 256, 256, device=x.device).view(b, c, 1)
    return x.reshape(b, c, -1).long() + offsets


def _equalize_lut(x: Tensor, levels: Tensor | None = None) -> Tensor:
    """(B, C, 256) uint8: ``ImageOps.equalize``'s table of each channel of uint8 ``x``
    (``levels``: :func:`_offset_levels` of ``x`` if already computed)."""
    b, c, h, w = x.shape
    levels = _offset_levels(x) if levels is None else levels
    # One histogram for all (image, channel) pairs: bincount on the CPU fast path; an
    # index_add into a fixed-size table where the output size must not depend on the data.
    flat = levels.view(-1)
    if capture_safe(x.device):
        hist = torch.zeros(b * c * 256, dtype=torch.long, device=x.device).index_add_(0, flat, torch.ones_like(flat))
    else:
        hist = torch.bincount(flat, minlength=b * c * 256)
    hist = hist.view(b, c, 256)
    # ImageOps.equalize: step = (N - count of the highest level present) // 255,
    # lut[i] = (step // 2 + #pixels below i) // step; identity when step == 0.
    top = x.reshape(b, c, -1).amax(dim=-1, keepdim=True).long()
    step = (h * w - hist.gather(-1, top)) // 255
    below = hist.cumsum(-1) - hist
    ok = step > 0
    lut = (torch.div(step, 2, rounding_mode="floor") + below) // torch.where(ok, step, 1)
    ident = torch.arange(256, device=x.device)
    return torch.where(ok, lut.clamp_max(255), ident).to(torch.uint8)


def _equalize(x: Tensor) -> Tensor:
    # The offset levels index both the histogram and the table lookup (one int64 map
    # instead of two).
    q = x if x.dtype == torch.uint8 else _quantize(x)
    levels = _offset_levels(q)
    lut = _equalize_lut(q, levels)
    if x.dtype != torch.uint8:
        # The table is converted to float (``level / 255``) before the lookup, not the
        # equalised uint8 image after it: 256 conversions per channel instead of H * W, same
        # values.
        lut = (lut.to(_work_dtype(x)) / 255.0).to(x.dtype)
    # index_select on the flat table: faster than ``take`` here (kernel_choices.md, K15).
    return lut.view(-1).index_select(0, levels.view(-1)).view(x.shape)


def _posterize(x: Tensor, bits: Tensor) -> Tensor:
    keep = (255 << (8 - bits.long())) & 255  # mask of the top `bits` bits
    if x.dtype == torch.uint8:
        return x & _view(keep.to(torch.uint8))
    q = _quantize(x) & _view(keep.to(torch.uint8))
    return (q.to(_work_dtype(x)) / 255.0).to(x.dtype)


def _solarize(x: Tensor, threshold: Tensor) -> Tensor:
    if x.dtype == torch.uint8:
        # For integer x, x >= t  <=>  x >= ceil(t); compare in uint8 (t = 256 inverts nothing).
        t = threshold.float().ceil().clamp_(0.0, 256.0)
        hit = (x >= _view(t.clamp(max=255.0).to(torch.uint8))) & _view(t <= 255.0)
        return x ^ hit.to(torch.uint8).neg_()  # 255 - x == x ^ 255 on uint8
    wd = _work_dtype(x)
    t = _view(threshold.to(wd) / 255.0)
    return _select(x >= t, 1.0 - x, x)


def _brightness(x: Tensor, factor: Tensor) -> Tensor:
    return _blend(torch.zeros((), dtype=x.dtype, device=x.device), x, factor)


def _color(x: Tensor, factor: Tensor) -> Tensor:
    return _blend(_grayscale(x), x, factor)


def _contrast_degenerate(x: Tensor, grey: Tensor | None = None) -> Tensor:
    """(B,) per-image grey level ``ImageEnhance.Contrast`` blends with (float32 on uint8)."""
    grey = _grayscale(x) if grey is None else grey
    if x.dtype == torch.uint8:
        # ImageEnhance.Contrast: int(mean of the L image + 0.5), the mean in float64.
        mean = grey.sum(dim=(-3, -2, -1), dtype=torch.int64).double() / (grey.shape[-1] * grey.shape[-2])
        return (mean + 0.5).floor().to(torch.float32)
    return grey.to(_work_dtype(x)).mean(dim=(-3, -2, -1))


def _contrast(x: Tensor, factor: Tensor) -> Tensor:
    return _blend(_view(_contrast_degenerate(x)), x, factor)


def _sharpness(x: Tensor, factor: Tensor) -> Tensor:
    return _blend(_smooth(x), x, factor)


# --------------------------------------------------------------------------- public API


def grayscale(images: Tensor) -> Tensor:
    """Luma (B, 1, H, W) of RGB images as PIL's ``convert("L")``; 1-channel images are returned as is."""
    check_images(images, channels=(1, 3))
    return _grayscale(images)


def blend(degenerate: Tensor, images: Tensor, factor: float | Tensor) -> Tensor:
    """``degenerate + factor * (images - degenerate)`` per image, PIL's ``Image.blend``.

    ``degenerate`` broadcasts to ``images``; ``factor`` (>= 0) is a number or (B,) tensor.
    uint8 results are truncated like PIL; all results are clipped to the valid range.
    """
    check_images(images)
    if not isinstance(degenerate, Tensor):
        raise TypeError(f"degenerate must be a tensor broadcastable to images, got {type(degenerate).__name__}")
    f = _per_image(factor, images, "factor")
    _check_range(f, "factor", 0.0)
    return _blend(degenerate.to(images.device), images, f)


def smooth(images: Tensor) -> Tensor:
    """PIL's ``ImageFilter.SMOOTH`` on each channel; the one-pixel border is left unchanged."""
    check_images(images)
    return _smooth(images)


def invert(images: Tensor) -> Tensor:
    """``255 - x`` (uint8) or ``1 - x`` (float), ``ImageOps.invert``."""
    check_images(images)
    return _invert(images)


def autocontrast(images: Tensor) -> Tensor:
    """Stretch each channel of each image so its min goes to 0 and its max to 255 (or 1).

    ``ImageOps.autocontrast`` (cutoff 0); a constant channel is left unchanged.
    """
    check_images(images)
    return _autocontrast(images)


def equalize(images: Tensor) -> Tensor:
    """Histogram-equalise each channel of each image, ``ImageOps.equalize``.

    Float images are equalised on their 256-level quantisation (equalisation is defined on a
    discrete histogram), so the float result is the uint8 result divided by 255.
    """
    check_images(images)
    return _equalize(images)


def posterize(images: Tensor, bits: int | Tensor) -> Tensor:
    """Keep the top ``bits`` (1..8) bits of each 8-bit value, ``ImageOps.posterize``.

    Float images are quantised to 256 levels first.
    """
    check_images(images)
    b = _per_image(bits, images, "bits", dtype=torch.float64)
    _check_range(b, "bits", 1, 8, integer=True)
    return _posterize(images, b)


def solarize(images: Tensor, threshold: float | Tensor) -> Tensor:
    """Invert every value >= ``threshold``, ``ImageOps.solarize``.

    ``threshold`` is in grey levels (0..256, 256 leaves the image unchanged) for every dtype:
    a float image in [0, 1] is compared with ``threshold / 255``.
    """
    check_images(images)
    t = _per_image(threshold, images, "threshold")
    _check_range(t, "threshold", 0.0, 256.0)
    return _solarize(images, t)


def _enhance(
    images: Tensor, factor: float | Tensor, kernel: Callable[[Tensor, Tensor], Tensor], channels: Sequence[int] | None = None
) -> Tensor:
    check_images(images, channels=channels)
    f = _per_image(factor, images, "factor")
    _check_range(f, "factor", 0.0)
    return kernel(images, f)


def brightness(images: Tensor, factor: float | Tensor) -> Tensor:
    """``ImageEnhance.Brightness``: blend with black; 0 gives black, 1 the image."""
    return _enhance(images, factor, _brightness)


def color(images: Tensor, factor: float | Tensor) -> Tensor:
    """``ImageEnhance.Color`` (saturation): blend with the grey image; 0 gives grey, 1 the image.

    Needs 1 or 3 channels (a 1-channel image is its own grey image, so nothing changes).
    """
    return _enhance(images, factor, _color, channels=(1, 3))


def contrast(images: Tensor, factor: float | Tensor) -> Tensor:
    """``ImageEnhance.Contrast``: blend with the image's mean grey level (rounded on uint8)."""
    return _enhance(images, factor, _contrast, channels=(1, 3))


def sharpness(images: Tensor, factor: float | Tensor) -> Tensor:
    """``ImageEnhance.Sharpness``: blend with the SMOOTH-filtered image; 0 smooths, 1 is the image."""
    return _enhance(images, factor, _sharpness)
