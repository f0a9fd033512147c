"""The capture-safe policy kernel on uint8: a few kernels per policy layer, whatever the batch.

Each image runs one op per layer (step). On uint8 every point op is a function of the pixel
value alone, per image and channel, so one 256-entry lookup table per (image, channel) holds
whichever point op the image drew:

* Posterize (``v & keep``), Solarize and Invert (``v ^ 255`` where ``v >= t``; Invert is
  ``t = 0``), Brightness and Contrast (PIL's float32 blend of ``v`` with 0 or the image's
  rounded mean grey level), composed with neutral values for the ops not drawn (``keep =
  255``, ``t = 256``, factor 1: each is then exactly the identity);
* AutoContrast and Equalize, whose tables :mod:`keepmix.functional.color` builds per channel.

One gather then applies the layer's point ops. Every geometric op (rotate, shear, translate)
is one affine map per image (the identity for the other images), so one warp per layer;
Color and Sharpness share one blend (with the grey image or the SMOOTH image, factor 1 for
the other images), and Cutout one box mask. Each stage is the identity, bit for bit, on the
images whose op belongs to another stage, and on the images of its own stage it computes the
very arithmetic of the op-by-op kernels, so the result equals the CPU fast path's (and so
PIL's) exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from keepmix.functional.boxes import box_masks, centered_boxes
from keepmix.functional.color import _autocontrast_lut, _equalize_lut, _offset_levels, _smooth
from keepmix.functional.geometry import _affine, rotation_matrix

__all__ = ["apply_layers_uint8"]

# Op ids, as in keepmix.functional.policy_ops.OP_NAMES (checked there at import).
IDENTITY, AUTOCONTRAST, EQUALIZE, INVERT, ROTATE, POSTERIZE, SOLARIZE = 0, 1, 2, 3, 4, 5, 6
COLOR, CONTRAST, BRIGHTNESS, SHARPNESS, SHEAR_X, SHEAR_Y, TRANSLATE_X, TRANSLATE_Y, CUTOUT = 7, 8, 9, 10, 11, 12, 13, 14, 15
NUM_OPS = 16
#: The ids above by op name (keepmix.functional.policy_ops checks them against OP_NAMES).
OP_IDS = {
    "Identity": IDENTITY, "AutoContrast": AUTOCONTRAST, "Equalize": EQUALIZE, "Invert": INVERT, "Rotate": ROTATE,
    "Posterize": POSTERIZE, "Solarize": SOLARIZE, "Color": COLOR, "Contrast": CONTRAST, "Brightness": BRIGHTNESS,
    "Sharpness": SHARPNESS, "ShearX": SHEAR_X, "ShearY": SHEAR_Y, "TranslateX": TRANSLATE_X, "TranslateY": TRANSLATE_Y,
    "Cutout": CUTOUT,
}  # fmt: skip
GEOMETRIC = (ROTATE, SHEAR_X, SHEAR_Y, TRANSLATE_X, TRANSLATE_Y)

# Per-op flags, looked up once per layer (one gather instead of chains of compares).
_F_ENHANCE, _F_GEOMETRIC, _F_POINT_BLEND, _F_COLOUR_BLEND = 0, 1, 2, 3
_FLAGS = [[False] * 4 for _ in range(NUM_OPS)]
for _k in (COLOR, CONTRAST, BRIGHTNESS, SHARPNESS):
    _FLAGS[_k][_F_ENHANCE] = True
for _k in GEOMETRIC:
    _FLAGS[_k][_F_GEOMETRIC] = True
for _k in (CONTRAST, BRIGHTNESS):
    _FLAGS[_k][_F_POINT_BLEND] = True
for _k in (COLOR, SHARPNESS):
    _FLAGS[_k][_F_COLOUR_BLEND] = True

# Warp coefficients affine in the magnitude: base + mag * slope[op] (exact: every product is
# by 0 or +-1); the other ops' rows are zero, so they get the identity. Rotate is built apart.
_WARP_BASE = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
_WARP_SLOPE = [[0.0] * 6 for _ in range(NUM_OPS)]
_WARP_SLOPE[SHEAR_X][1] = 1.0
_WARP_SLOPE[SHEAR_Y][3] = 1.0
_WARP_SLOPE[TRANSLATE_X][2] = -1.0
_WARP_SLOPE[TRANSLATE_Y][5] = -1.0

# PIL's luma weights (Convert.c), as in keepmix.functional.color.
_LUMA = (19595, 38470, 7471)


def _grey(x: Tensor) -> Tensor:
    """(B, 1, H, W) uint8: ``convert("L")``, one weighted sum in int32 (exact: integers)."""
    if x.shape[1] == 1:
        return x
    wts = torch.tensor(_LUMA, dtype=torch.int32, device=x.device).view(1, 3, 1, 1)
    return ((x.to(torch.int32) * wts).sum(1, keepdim=True, dtype=torch.int32) + 32768).bitwise_right_shift(16).to(torch.uint8)


def _nearest(x: Tensor, m: Tensor, fill: Tensor, separable: bool) -> Tensor:
    """PIL's nearest affine warp for rotation / shear / translation maps, in few kernels.

    PIL takes its 16.16 fixed-point engine for maps with cross terms and its float "scale"
    engine (running float64 sums, truncated) for maps without. On these maps the scale
    engine's running sums equal the closed form ``floor(s0 + k * a)`` (``a = +-1``: adding
    +-1 to a float64 is exact), so both engines are two broadcast formulas. ``separable``
    False: the policy's maps without cross terms move whole pixels, where the two engines
    agree, so only the fixed-point one runs.
    """
    b, c, h, w = x.shape
    dev = x.device
    a0, a1, a2, a3, a4, a5 = m.view(b, 6, 1, 1).unbind(1)
    sx, sy = a2 + a0 * 0.5, a5 + a4 * 0.5  # the position sampled by output pixel (0, 0), less the cross term
    # FIX(v) = floor(v * 65536 + 0.5), as Geometry.c, for the start and the four steps.
    fx = torch.cat([sx + a1 * 0.5, sy + a3 * 0.5, a0, a1, a3, a4], dim=1).mul_(65536.0).add_(0.5).floor_().long()
    x0, y0, f0, f1, f3, f4 = fx.view(b, 6, 1, 1).unbind(1)
    ys = torch.arange(h, device=dev).view(h, 1)
    xs = torch.arange(w, device=dev)
    xin = (x0 + ys * f1 + xs * f0).bitwise_right_shift_(16)  # (B, H, W)
    yin = (y0 + xs * f3 + ys * f4).bitwise_right_shift_(16)
    if separable:
        scale = ((a1 == 0) & (a3 == 0)).view(b, 1, 1)
        xin = torch.where(scale, (sx + xs * a0).floor_().long(), xin)
        yin = torch.where(scale, (sy + ys * a4).floor_().long(), yin)
    inside = (xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)
    index = (yin.clamp(0, h - 1) * w + xin.clamp(0, w - 1)).view(b, 1, h * w).expand(b, c, h * w)
    out = x.reshape(b, c, h * w).gather(2, index).view(b, c, h, w)
    return torch.where(inside.view(b, 1, h, w), out, fill)


def apply_layers_uint8(
    images: Tensor,
    ops: Tensor,
    mags: Tensor,
    active: Tensor,
    centers: Tensor,
    fill: Tensor,
    interpolation: str,
    candidates: Sequence[int],
    integer_translations: bool = False,
) -> Tensor:
    """Each image's op sequence on a uint8 batch, branch-free (no host read, a fixed number of
    kernels per layer). ``ops`` (B, N) ids of ``OP_NAMES``, ``mags`` (B, N) signed magnitudes,
    ``active`` (B, N) bool (the step runs), ``centers`` (B, N, 2) Cutout centres, ``fill`` a
    (1, C, 1, 1) uint8 tensor, ``candidates`` the op ids the policy can draw (the stages of ops
    it cannot draw are left out). ``integer_translations``: the caller promises whole-pixel
    translations (the nearest warp then needs one engine, see :func:`_nearest`)."""
    cand = set(candidates)
    b, c, h, w = images.shape
    dev = images.device
    has = {k: k in cand for k in range(NUM_OPS)}
    blend_lut = has[CONTRAST] or has[BRIGHTNESS]
    point = blend_lut or any(has[k] for k in (INVERT, POSTERIZE, SOLARIZE, AUTOCONTRAST, EQUALIZE))
    geometric = any(has[k] for k in GEOMETRIC)
    colour_blend = has[COLOR] or has[SHARPNESS]
    needs_grey = has[COLOR] or has[CONTRAST]
    levels = torch.arange(256, device=dev, dtype=torch.uint8)
    flags_table = torch.tensor(_FLAGS, device=dev)
    if geometric:
        slope = torch.tensor(_WARP_SLOPE, dtype=torch.float64, device=dev)
        base = torch.tensor(_WARP_BASE, dtype=torch.float64, device=dev)
        separable = not integer_translations or has[ROTATE] and interpolation != "nearest"
    active_ops = torch.where(active, ops, IDENTITY)
    x = images
    for n in range(ops.shape[1]):
        op, mag = active_ops[:, n], mags[:, n]
        flags = flags_table[op].unbind(1)
        # PIL's factor 1 + m (>= 0) for the enhance ops, 1 (the identity) for the others.
        factor = torch.where(flags[_F_ENHANCE], (mag + 1.0).clamp_min(0.0), 1.0).to(torch.float32).view(b, 1)
        grey = _grey(x) if needs_grey else None
        out = x
        # ---- the point ops: one (B, C, 256) table, one gather
        if point:
            lut = levels.expand(b, 256)
            if has[POSTERIZE]:
                bits = torch.where(op == POSTERIZE, mag, 8).long()
                lut = lut & ((255 << (8 - bits)) & 255).to(torch.uint8).view(b, 1)
            if has[SOLARIZE] or has[INVERT]:
                # x >= t  <=>  x >= ceil(t) on integers; t = 256 inverts nothing, Invert is t = 0.
                t = torch.where(op == SOLARIZE, mag.float().ceil().clamp(0.0, 256.0), 256.0)
                if has[INVERT]:
                    t = torch.where(op == INVERT, 0.0, t)
                hit = (lut >= t.clamp(max=255.0).to(torch.uint8).view(b, 1)) & (t <= 255.0).view(b, 1)
                lut = lut ^ hit.to(torch.uint8).neg()
            if blend_lut:
                # PIL's blend in float32, (v - d) * f + d, truncated; factor 1 and d = 0 (or the
                # integer mean) give v back exactly.
                f = torch.where(flags[_F_POINT_BLEND].view(b, 1), factor, 1.0)
                if has[CONTRAST]:
                    assert grey is not None
                    mean = grey.sum(dim=(1, 2, 3), dtype=torch.int64).double() / (h * w)
                    d = torch.where(op == CONTRAST, (mean + 0.5).floor(), 0.0).to(torch.float32).view(b, 1)
                    lut = lut.to(torch.float32).sub_(d).mul_(f).add_(d)
                else:
                    lut = lut.to(torch.float32).mul_(f)
                lut = lut.clamp_(0.0, 255.0).to(torch.uint8)
            lut3 = lut.view(b, 1, 256).expand(b, c, 256)
            levels_bc = _offset_levels(x)
            if has[EQUALIZE]:
                lut3 = torch.where((op == EQUALIZE).view(b, 1, 1), _equalize_lut(x, levels_bc), lut3)
            if has[AUTOCONTRAST]:
                lut3 = torch.where((op == AUTOCONTRAST).view(b, 1, 1), _autocontrast_lut(x), lut3)
            out = lut3.reshape(-1).index_select(0, levels_bc.view(-1)).view(b, c, h, w)
        # ---- the geometric ops: one affine map per image, one warp
        if geometric:
            m = slope[op].mul_(mag.double().view(b, 1)).add_(base)
            if has[ROTATE]:
                m = torch.where((op == ROTATE).view(b, 1), rotation_matrix(mag, h, w), m)
            if interpolation == "nearest":
                warped = _nearest(x, m, fill, separable)
            else:
                warped = _affine(x, m, interpolation, fill)
            out = torch.where(flags[_F_GEOMETRIC].view(b, 1, 1, 1), warped, out)
        # ---- Color and Sharpness: one blend, with the grey or the smoothed image
        if colour_blend:
            if has[COLOR] and has[SHARPNESS]:
                assert grey is not None
                degenerate = torch.where((op == COLOR).view(b, 1, 1, 1), grey, _smooth(x))
            elif has[COLOR]:
                assert grey is not None
                degenerate = grey
            else:
                degenerate = _smooth(x)
            f = torch.where(flags[_F_COLOUR_BLEND].view(b, 1), factor, 1.0).view(b, 1, 1, 1)
            d = degenerate.to(torch.float32)
            out = out.to(torch.float32).sub_(d).mul_(f).add_(d).clamp_(0.0, 255.0).to(torch.uint8)
        # ---- Cutout: one box mask (side 0 for the other images)
        if has[CUTOUT]:
            side = torch.where(op == CUTOUT, mag.round(), 0.0).long()
            cy = (centers[:, n, 0] * h).long().clamp_(0, h - 1)
            cx = (centers[:, n, 1] * w).long().clamp_(0, w - 1)
            mask = box_masks(centered_boxes(cy, cx, side, side, h, w), h, w).unsqueeze(1)
            out = torch.where(mask, fill, out)
        x = out
    return x if x is not images else images.clone()
