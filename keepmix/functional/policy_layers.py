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


def _warp_maps(m: Tensor, h: int, w: int, separable: bool) -> tuple[Tensor, ...]:
    """The per-map coefficients of PIL's nearest warp, for every (image, layer) at once.

    PIL takes its 16.16 fixed-point engine for maps with cross terms and its float "scale"
    engine (running float64 sums, truncated) for maps without. On rotation, shear and
    translation maps the scale engine's running sums equal the closed form ``floor(s0 + k a)``
    (``a = +-1``: adding +-1 to a float64 is exact), so both engines are broadcast formulas.
    ``separable`` False: the maps without cross terms move whole pixels, where the engines
    agree, so only the fixed-point one is needed.
    """
    n = m.shape[0]
    a0, a1, a2, a3, a4, a5 = m.view(n, 6, 1, 1).unbind(1)
    sx, sy = a2 + a0 * 0.5, a5 + a4 * 0.5  # where output pixel (0, 0) samples, less the cross term
    # FIX(v) = floor(v * 65536 + 0.5), as Geometry.c, for the start and the four steps.
    fixed = torch.cat([sx + a1 * 0.5, sy + a3 * 0.5, a0, a1, a3, a4], dim=1).mul_(65536.0).add_(0.5).floor_().long()
    coeffs = fixed.view(n, 6, 1, 1).unbind(1)
    if not separable:
        return coeffs
    scale = ((a1 == 0) & (a3 == 0)).view(n, 1, 1)
    return (*coeffs, scale, sx, a0, sy, a4)


def _nearest(x: Tensor, maps: Sequence[Tensor], fill: Tensor) -> Tensor:
    """PIL's nearest affine warp of ``x`` given :func:`_warp_maps` (one layer's rows)."""
    b, c, h, w = x.shape
    ys = torch.arange(h, device=x.device).view(h, 1)
    xs = torch.arange(w, device=x.device)
    x0, y0, f0, f1, f3, f4 = maps[:6]
    xin = (x0 + ys * f1 + xs * f0).bitwise_right_shift_(16)  # (B, H, W)
    yin = (y0 + xs * f3 + ys * f4).bitwise_right_shift_(16)
    if len(maps) > 6:
        scale, sx, a0, sy, a4 = maps[6:]
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
    translations (the nearest warp then needs one engine, see :func:`_warp_maps`).

    Everything that does not depend on the pixels (the flags, factors, tables of the ops
    without statistics, warp coefficients, Cutout masks) is computed for all layers at once.
    """
    cand = set(candidates)
    b, c, h, w = images.shape
    steps = ops.shape[1]
    dev = images.device
    has = {k: k in cand for k in range(NUM_OPS)}
    blend_lut = has[CONTRAST] or has[BRIGHTNESS]
    point = blend_lut or any(has[k] for k in (INVERT, POSTERIZE, SOLARIZE, AUTOCONTRAST, EQUALIZE))
    geometric = any(has[k] for k in GEOMETRIC)
    colour_blend = has[COLOR] or has[SHARPNESS]
    needs_grey = has[COLOR] or has[CONTRAST]
    op = torch.where(active, ops, IDENTITY)  # (B, N)
    flags = torch.tensor(_FLAGS, device=dev)[op].unbind(2)  # (B, N) each
    # PIL's factor 1 + m (>= 0) for the enhance ops, 1 (the identity) for the others.
    factor = torch.where(flags[_F_ENHANCE], (mags + 1.0).clamp_min(0.0), 1.0).to(torch.float32)
    # ---- the tables of the point ops without statistics, every layer: (B, N, 256)
    if point:
        lut = torch.arange(256, device=dev, dtype=torch.uint8).expand(b, steps, 256)
        if has[POSTERIZE]:
            bits = torch.where(op == POSTERIZE, mags, 8).long()
            lut = lut & ((255 << (8 - bits)) & 255).to(torch.uint8).view(b, steps, 1)
        if has[SOLARIZE] or has[INVERT]:
            # x >= t  <=>  x >= ceil(t) on integers; t = 256 inverts nothing, Invert is t = 0.
            t = torch.where(op == SOLARIZE, mags.float().ceil().clamp(0.0, 256.0), 256.0)
            if has[INVERT]:
                t = torch.where(op == INVERT, 0.0, t)
            t = t.view(b, steps, 1)
            lut = lut ^ ((lut >= t.clamp(max=255.0).to(torch.uint8)) & (t <= 255.0)).to(torch.uint8).neg()
        if blend_lut:
            point_factor = torch.where(flags[_F_POINT_BLEND], factor, 1.0).view(b, steps, 1)
            if not has[CONTRAST]:  # Brightness alone: blend with 0
                lut = lut.to(torch.float32).mul_(point_factor).clamp_(0.0, 255.0).to(torch.uint8)
    # ---- warp coefficients, every layer
    if geometric:
        slope = torch.tensor(_WARP_SLOPE, dtype=torch.float64, device=dev)[op]
        m = slope.mul_(mags.double().unsqueeze(2)).add_(torch.tensor(_WARP_BASE, dtype=torch.float64, device=dev))
        if has[ROTATE]:
            m = torch.where((op == ROTATE).unsqueeze(2), rotation_matrix(mags, h, w), m)
        if interpolation == "nearest":
            maps = [t.view(b, steps, *t.shape[1:]).unbind(1) for t in _warp_maps(m.view(b * steps, 6), h, w, not integer_translations)]
        else:
            per_layer_m = m.unbind(1)
    if colour_blend:
        colour_factor = torch.where(flags[_F_COLOUR_BLEND], factor, 1.0).view(b, steps, 1, 1, 1).unbind(1)
    # ---- Cutout masks, every layer (side 0 for the other images)
    if has[CUTOUT]:
        side = torch.where(op == CUTOUT, mags.round(), 0.0).long().flatten()
        cy = (centers[..., 0] * h).long().clamp_(0, h - 1).flatten()
        cx = (centers[..., 1] * w).long().clamp_(0, w - 1).flatten()
        cut = box_masks(centered_boxes(cy, cx, side, side, h, w), h, w).view(b, steps, 1, h, w).unbind(1)
    geo_flags = flags[_F_GEOMETRIC].view(b, steps, 1, 1, 1).unbind(1)
    layer_ops = op.unbind(1)
    x = images
    for n in range(steps):
        op_n = layer_ops[n]
        grey = _grey(x) if needs_grey else None
        out = x
        # ---- the point ops: one (B, C, 256) table, one gather
        if point:
            lut_n = lut[:, n]
            if blend_lut and has[CONTRAST]:
                # PIL's blend in float32, (v - d) * f + d, truncated; factor 1 and d = 0 (or the
                # integer mean) give v back exactly.
                assert grey is not None
                mean = grey.sum(dim=(1, 2, 3), dtype=torch.int64).double() / (h * w)
                d = torch.where(op_n == CONTRAST, (mean + 0.5).floor(), 0.0).to(torch.float32).view(b, 1)
                lut_n = lut_n.to(torch.float32).sub_(d).mul_(point_factor[:, n]).add_(d).clamp_(0.0, 255.0).to(torch.uint8)
            lut3 = lut_n.view(b, 1, 256).expand(b, c, 256)
            levels_bc = _offset_levels(x)
            if has[EQUALIZE]:
                lut3 = torch.where((op_n == EQUALIZE).view(b, 1, 1), _equalize_lut(x, levels_bc), lut3)
            if has[AUTOCONTRAST]:
                lut3 = torch.where((op_n == AUTOCONTRAST).view(b, 1, 1), _autocontrast_lut(x), lut3)
            out = lut3.reshape(-1).index_select(0, levels_bc.view(-1)).view(b, c, h, w)
        # ---- the geometric ops: one warp
        if geometric:
            if interpolation == "nearest":
                warped = _nearest(x, [t[n] for t in maps], fill)
            else:
                warped = _affine(x, per_layer_m[n], interpolation, fill)
            out = torch.where(geo_flags[n], warped, out)
        # ---- Color and Sharpness: one blend, with the grey or the smoothed image
        if colour_blend:
            if has[COLOR] and has[SHARPNESS]:
                assert grey is not None
                degenerate = torch.where((op_n == COLOR).view(b, 1, 1, 1), grey, _smooth(x))
            elif has[COLOR]:
                assert grey is not None
                degenerate = grey
            else:
                degenerate = _smooth(x)
            d = degenerate.to(torch.float32)
            out = out.to(torch.float32).sub_(d).mul_(colour_factor[n]).add_(d).clamp_(0.0, 255.0).to(torch.uint8)
        if has[CUTOUT]:
            out = torch.where(cut[n], fill, out)
        x = out
    return x if x is not images else images.clone()
