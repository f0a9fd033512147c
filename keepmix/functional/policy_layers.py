"""The capture-safe policy kernel on uint8: a few kernels per policy layer, whatever the batch.

Each image runs one op per layer (step), and each stage below is the identity, bit for bit,
on the images whose op belongs to another stage:

* **point ops, one gather.** On uint8 every point op is a function of the pixel value alone,
  per image and channel, so one 256-entry table per (image, channel) holds whichever the
  image drew: Posterize (``v & keep``), Solarize and Invert (``v ^ 255`` where ``v >= t``;
  Invert is ``t = 0``), composed with neutral values for the ops not drawn (``keep = 255``,
  ``t = 256``), or the AutoContrast / Equalize table of each channel.
* **geometric ops, one warp.** Rotate, shear and translate are one affine map per image (the
  identity for the other images), PIL's nearest engines as two broadcast formulas, or the
  bilinear warp of :mod:`keepmix.functional.geometry`.
* **enhance ops, one blend.** Brightness, Contrast, Color and Sharpness are all PIL's float32
  ``(v - d) * f + d`` with ``d`` black, the rounded mean grey level, the grey image or the
  SMOOTH image; ``f = 1`` and an integer ``d`` give the other images back exactly.
* **Cutout, one box mask** (side 0 for the other images).

What does not depend on the pixels (flags, factors, the tables of the ops without
statistics, warp maps, Cutout masks) is computed for all layers at once. On the images of
its own stage every stage computes the very arithmetic of the op-by-op kernels of
:mod:`keepmix.functional.color` and :mod:`keepmix.functional.geometry`, so the result equals
the CPU fast path's (and so PIL's) exactly (``tests/test_policy_costs.py``, ``tests/test_engine.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from keepmix.functional.boxes import box_masks, centered_boxes
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
_F_ENHANCE, _F_GEOMETRIC = 0, 1
_FLAGS = [[k in (COLOR, CONTRAST, BRIGHTNESS, SHARPNESS), k in GEOMETRIC] for k in range(NUM_OPS)]

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


class _Consts:
    """Tensors every layer reuses, built once per call (each is a kernel), only those the
    policy's ops need."""

    def __init__(self, b: int, c: int, h: int, w: int, dev: torch.device, has: dict[int, bool]) -> None:
        if has[AUTOCONTRAST]:
            self.ix = torch.arange(256, device=dev, dtype=torch.float64)
            self.c255 = torch.full((), 255.0, dtype=torch.float64, device=dev)
        if has[EQUALIZE]:
            self.ones = torch.ones((), dtype=torch.int64, device=dev).expand(b * c * h * w)
        # (image, channel) rows of a flat (B * C * 256) table
        self.offsets = torch.arange(0, b * c * 256, 256, device=dev).view(b, c, 1)
        if has[SHARPNESS]:
            # SMOOTH's float32 kernel values, as PIL stores them.
            self.one = torch.full((), 1.0, dtype=torch.float32, device=dev) / 13.0
            self.five = torch.full((), 5.0, dtype=torch.float32, device=dev) / 13.0
            self.border = torch.ones(h, w, dtype=torch.bool, device=dev)
            self.border[1:-1, 1:-1] = False


def _autocontrast_lut(lo: Tensor, hi: Tensor, k: _Consts) -> tuple[Tensor, Tensor]:
    """``(table, ok)``: ``ImageOps.autocontrast``'s (B, C, 256) table from each channel's
    uint8 min and max, the arithmetic of :func:`keepmix.functional.color._autocontrast_lut`
    (float64, a true division); ``ok`` (B, C, 1): the channel is not constant."""
    lo64, hi64 = lo.double().unsqueeze(-1), hi.double().unsqueeze(-1)
    span = hi64 - lo64
    ok = span > 0
    scale = k.c255 / torch.where(ok, span, 1.0)
    return (k.ix * scale + (-lo64) * scale).trunc_().clamp_(0, 255).to(torch.uint8), ok


def _equalize_lut(levels: Tensor, hi: Tensor, n_pixels: int, k: _Consts) -> tuple[Tensor, Tensor]:
    """``(table, ok)``: ``ImageOps.equalize``'s (B, C, 256) table, the arithmetic of
    :func:`keepmix.functional.color._equalize_lut`; ``levels`` the offset levels (B, C, H * W),
    ``hi`` each channel's max; ``ok`` (B, C, 1): the table is not the identity."""
    b, c = hi.shape
    hist = torch.zeros(b * c * 256, dtype=torch.int64, device=levels.device).index_add_(0, levels.view(-1), k.ones).view(b, c, 256)
    step = (n_pixels - hist.gather(-1, hi.long().unsqueeze(-1))) // 255
    ok = step > 0
    lut = (torch.div(step, 2, rounding_mode="floor") + (hist.cumsum(-1) - hist)) // torch.where(ok, step, 1)
    return lut.clamp_max_(255).to(torch.uint8), ok


def _smooth_f32(x: Tensor, f: Tensor, k: _Consts) -> Tensor:
    """float32 (B, C, H, W): PIL's SMOOTH of uint8 ``x`` (``f`` is ``x`` in float32), the
    arithmetic of :func:`keepmix.functional.color._smooth` (same products and summation
    order), truncated to whole levels, the one-pixel border left as is."""
    h, w = x.shape[-2:]
    if h < 3 or w < 3:
        return f
    p = f * k.one
    lr, rr = p[..., :-2], p[..., 2:]
    plain = (p[..., 1:-1] + lr).add_(rr)
    centre = (f[..., 1:-1, 1:-1] * k.five).add_(lr[..., 1:-1, :]).add_(rr[..., 1:-1, :])
    ss = plain[..., 2:, :].add(0.5).add_(centre).add_(plain[..., :-2, :]).trunc_()
    return torch.where(k.border, f, torch.nn.functional.pad(ss, (1, 1, 1, 1)))


def _nearest_index(maps: Sequence[Tensor], h: int, w: int) -> tuple[Tensor, Tensor]:
    """``(index, inside)``: the flat source pixel (n, H * W) int64 of every output pixel of
    PIL's nearest warp given :func:`_warp_maps`, and whether it lies in the image (n, H, W)."""
    dev = maps[0].device
    ys = torch.arange(h, device=dev).view(h, 1)
    xs = torch.arange(w, device=dev)
    x0, y0, f0, f1, f3, f4 = maps[:6]
    xin = (x0 + ys * f1 + xs * f0).bitwise_right_shift_(16)  # (n, H, W)
    yin = (y0 + xs * f3 + ys * f4).bitwise_right_shift_(16)
    if len(maps) > 6:
        scale, sx, a0, sy, a4 = maps[6:]
        xin = torch.where(scale, (sx + xs * a0).floor_().long(), xin)
        yin = torch.where(scale, (sy + ys * a4).floor_().long(), yin)
    xc, yc = xin.clamp(0, w - 1), yin.clamp(0, h - 1)
    inside = (xc == xin) & (yc == yin)
    return (yc * w + xc).view(-1, h * w), inside


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
    point = any(has[k] for k in (INVERT, POSTERIZE, SOLARIZE, AUTOCONTRAST, EQUALIZE))
    geometric = any(has[k] for k in GEOMETRIC)
    enhance = any(has[k] for k in (BRIGHTNESS, CONTRAST, COLOR, SHARPNESS))
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
    # ---- warp coefficients, every layer
    if geometric:
        slope = torch.tensor(_WARP_SLOPE, dtype=torch.float64, device=dev)[op]
        m = slope.mul_(mags.double().unsqueeze(2)).add_(torch.tensor(_WARP_BASE, dtype=torch.float64, device=dev))
        if has[ROTATE]:
            m = torch.where((op == ROTATE).unsqueeze(2), rotation_matrix(mags, h, w), m)
        if interpolation == "nearest":
            # The source pixel of every output pixel, every layer: (B, N, H * W).
            index, inside = _nearest_index(_warp_maps(m.view(b * steps, 6), h, w, not integer_translations), h, w)
            layer_index = index.view(b, steps, 1, h * w).unbind(1)
            layer_inside = inside.view(b, steps, 1, h, w).unbind(1)
        else:
            per_layer_m = m.unbind(1)
    if enhance:
        layer_factor = factor.view(b, steps, 1, 1, 1).unbind(1)
    # ---- Cutout masks, every layer (side 0 for the other images)
    if has[CUTOUT]:
        side = torch.where(op == CUTOUT, mags.round(), 0.0).long().flatten()
        cy = (centers[..., 0] * h).long().clamp_(0, h - 1).flatten()
        cx = (centers[..., 1] * w).long().clamp_(0, w - 1).flatten()
        cut = box_masks(centered_boxes(cy, cx, side, side, h, w), h, w).view(b, steps, 1, h, w).unbind(1)
    geo_flags = flags[_F_GEOMETRIC].view(b, steps, 1, 1, 1).unbind(1)
    layer_ops = op.unbind(1)
    consts = _Consts(b, c, h, w, dev, has)
    x = images
    for n in range(steps):
        op_n = layer_ops[n]
        grey = _grey(x) if needs_grey else None
        out = x
        # ---- the point ops: one (B, C, 256) table, one gather
        if point:
            lut_n = lut[:, n]
            lut3 = lut_n.view(b, 1, 256).expand(b, c, 256)
            flat = x.reshape(b, c, h * w)
            levels_bc = flat.long() + consts.offsets
            if has[EQUALIZE] or has[AUTOCONTRAST]:
                lo, hi = torch.aminmax(flat, dim=-1)
            # An image whose op is Equalize or AutoContrast has the identity as its basic
            # table, so a channel whose table would be the identity keeps that.
            if has[EQUALIZE]:
                eq, ok = _equalize_lut(levels_bc, hi, h * w, consts)
                lut3 = torch.where((op_n == EQUALIZE).view(b, 1, 1) & ok, eq, lut3)
            if has[AUTOCONTRAST]:
                ac, ok = _autocontrast_lut(lo, hi, consts)
                lut3 = torch.where((op_n == AUTOCONTRAST).view(b, 1, 1) & ok, ac, lut3)
            out = lut3.reshape(-1).index_select(0, levels_bc.view(-1)).view(b, c, h, w)
        # ---- the geometric ops: one warp
        if geometric:
            if interpolation == "nearest":
                src = x.reshape(b, c, h * w).gather(2, layer_index[n].expand(b, c, h * w)).view(b, c, h, w)
                warped = torch.where(layer_inside[n], src, fill)
            else:
                warped = _affine(x, per_layer_m[n], interpolation, fill)
            out = torch.where(geo_flags[n], warped, out)
        # ---- the four enhance ops: one blend (v - d) * f + d in float32, truncated, as PIL's
        # Image.blend, with d the black image (Brightness), the rounded mean grey level
        # (Contrast), the grey image (Color) or the SMOOTH image (Sharpness); factor 1 and an
        # integer d give the other images back exactly.
        if enhance:
            d: Tensor | None = None
            if has[CONTRAST]:
                # int(mean + 0.5) of the grey image, in integers: floor((2 sum + N) / 2N) is the
                # float64 value's floor (a half-integer mean is exact in float64, any other lies
                # at least 1 / 2N from an integer).
                assert grey is not None
                total = grey.sum(dim=(1, 2, 3), dtype=torch.int64)
                mean = torch.div(total * 2 + h * w, 2 * h * w, rounding_mode="floor")
                d = torch.where(op_n == CONTRAST, mean, 0).to(torch.float32).view(b, 1, 1, 1)
            elif has[BRIGHTNESS]:
                d = torch.zeros((), dtype=torch.float32, device=dev)
            if has[SHARPNESS]:
                smooth = _smooth_f32(x, x.to(torch.float32), consts)
                d = smooth if d is None else torch.where((op_n == SHARPNESS).view(b, 1, 1, 1), smooth, d)
            if has[COLOR]:
                assert grey is not None
                d = grey.to(torch.float32) if d is None else torch.where((op_n == COLOR).view(b, 1, 1, 1), grey.to(torch.float32), d)
            assert d is not None
            out = out.to(torch.float32).sub_(d).mul_(layer_factor[n]).add_(d).clamp_(0.0, 255.0).to(torch.uint8)
        if has[CUTOUT]:
            out = torch.where(cut[n], fill, out)
        x = out
    return x if x is not images else images.clone()
