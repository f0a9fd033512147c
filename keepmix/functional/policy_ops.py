"""The policies' op tables and their batched kernel: each image's own op sequence, given the ops.

No randomness: :mod:`keepmix.policies` draws the ops, magnitudes and signs, and
:func:`apply_ops` applies them. Every op follows PIL (see :mod:`keepmix.functional.color` and
:mod:`keepmix.functional.geometry`): uint8 images, or float images in [0, 1]. Magnitude spaces
are torchvision's (the de-facto reference for these policies):

* ``"standard"`` (AutoAugment with 10 bins, RandAugment with 31): shear 0..0.3, translate
  0..150/331 of the image side, rotate 0..30 degrees, enhance factor 1 +- (0..0.9),
  posterize 8..4 bits, solarize threshold 255..0, cutout side 0..0.2 of the shorter side.
* ``"wide"`` (TrivialAugmentWide): shear 0..0.99, translate 0..32 px, rotate 0..135 degrees,
  enhance 1 +- (0..0.99), posterize 8..2 bits, solarize 255..0, cutout 0..0.5.

Translations are whole pixels by default, as torchvision's ``int(magnitude)`` truncation
gives them (CIFAR-10 AutoAugment's translate bins 9 / 8 / 3 move 14 / 13 / 4 px, not the
14.5 / 12.9 / 4.8 of the float values); ``whole_pixel_translate=False`` keeps the float value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from keepmix.engine import capture_safe, check_values
from keepmix.functional.boxes import box_masks, centered_boxes

# Kernels imported by name: ``keepmix.functional.color`` the attribute is the re-exported
# function ``color``, which shadows the module of the same name.
from keepmix.functional.color import (
    _autocontrast,
    _brightness,
    _color,
    _contrast,
    _equalize,
    _invert,
    _posterize,
    _sharpness,
    _solarize,
)
from keepmix.functional.geometry import (
    _affine,
    _check_interpolation,
    _fill_tensor,
    rotation_matrix,
    shear_matrix,
    translation_matrix,
)
from keepmix.functional.policy_layers import OP_IDS as _LAYER_IDS
from keepmix.functional.policy_layers import apply_layers_uint8
from keepmix.functional.select import select as _select

__all__ = [
    "OP_NAMES",
    "SIGNED_OPS",
    "RANDAUGMENT_OPS",
    "AUTOAUGMENT_POLICIES",
    "magnitude_table",
    "apply_ops",
]

#: Every op a policy can use; an op id in :class:`PolicyParams` indexes this tuple.
OP_NAMES: tuple[str, ...] = (
    "Identity",
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Cutout",
)
_OP_ID = {name: i for i, name in enumerate(OP_NAMES)}
SIGNED_OPS = frozenset({"Rotate", "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY"})

#: RandAugment's and TrivialAugmentWide's op list (the RandAugment paper's 14 ops).
RANDAUGMENT_OPS: tuple[str, ...] = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
)

_Step = tuple[str, float, int | None]
# The published policies (Cubuk et al. 2019, appendix): 25 sub-policies of two
# (op, probability, magnitude bin 0..9) steps each.
AUTOAUGMENT_POLICIES: dict[str, tuple[tuple[_Step, _Step], ...]] = {
    "cifar10": (
        (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
        (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
        (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
        (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
        (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
        (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
        (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
        (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
        (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
        (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
        (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
        (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
        (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
        (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
        (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
        (("Color", 0.9, 9), ("Equalize", 0.6, None)),
        (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
        (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
        (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
        (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
        (("Equalize", 0.8, None), ("Invert", 0.1, None)),
        (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
    ),
    "svhn": (
        (("ShearX", 0.9, 4), ("Invert", 0.2, None)),
        (("ShearY", 0.9, 8), ("Invert", 0.7, None)),
        (("Equalize", 0.6, None), ("Solarize", 0.6, 6)),
        (("Invert", 0.9, None), ("Equalize", 0.6, None)),
        (("Equalize", 0.6, None), ("Rotate", 0.9, 3)),
        (("ShearX", 0.9, 4), ("AutoContrast", 0.8, None)),
        (("ShearY", 0.9, 8), ("Invert", 0.4, None)),
        (("ShearY", 0.9, 5), ("Solarize", 0.2, 6)),
        (("Invert", 0.9, None), ("AutoContrast", 0.8, None)),
        (("Equalize", 0.6, None), ("Rotate", 0.9, 3)),
        (("ShearX", 0.9, 4), ("Solarize", 0.3, 3)),
        (("ShearY", 0.8, 8), ("Invert", 0.7, None)),
        (("Equalize", 0.9, None), ("TranslateY", 0.6, 6)),
        (("Invert", 0.9, None), ("Equalize", 0.6, None)),
        (("Contrast", 0.3, 3), ("Rotate", 0.8, 4)),
        (("Invert", 0.8, None), ("TranslateY", 0.0, 2)),
        (("ShearY", 0.7, 6), ("Solarize", 0.4, 8)),
        (("Invert", 0.6, None), ("Rotate", 0.8, 4)),
        (("ShearY", 0.3, 7), ("TranslateX", 0.9, 3)),
        (("ShearX", 0.1, 6), ("Invert", 0.6, None)),
        (("Solarize", 0.7, 2), ("TranslateY", 0.6, 7)),
        (("ShearY", 0.8, 4), ("Invert", 0.8, None)),
        (("ShearX", 0.7, 9), ("TranslateY", 0.8, 3)),
        (("ShearY", 0.8, 5), ("AutoContrast", 0.7, None)),
        (("ShearX", 0.7, 2), ("Invert", 0.1, None)),
    ),
    "imagenet": (
        (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
        (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
        (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
        (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
        (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
        (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
        (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
        (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
        (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
        (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
        (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
        (("Invert", 0.6, None), ("Equalize", 1.0, None)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
        (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
        (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
        (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
        (("Color", 0.4, 0), ("Equalize", 0.6, None)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
        (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Invert", 0.6, None), ("Equalize", 1.0, None)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    ),
}

Space = Literal["standard", "wide"]


def magnitude_table(space: Space, num_bins: int, height: int, width: int, whole_pixel_translate: bool = True) -> Tensor:
    """(len(OP_NAMES), num_bins) float32: the unsigned magnitude of every op at every bin.

    Built as torchvision builds its tables, in float32 (``torch.linspace`` in the default
    dtype), so every bin holds torchvision's value to the bit (RandAugment's Brightness bin 9
    is 0.26999998, not the float64 0.27 rounded to 0.27000001). Units: degrees (Rotate),
    pixels (Translate, Cutout side), shear factor, enhance offset (factor = 1 +- value), bits
    (Posterize), grey level (Solarize); 0 for ops without one. ``whole_pixel_translate``:
    translations truncated to whole pixels as torchvision's ``int(magnitude)`` truncates the
    float32 value (TrivialAugmentWide's bin 15 of 31 is 15.999999: 15 px).
    """
    if space not in ("standard", "wide"):
        raise ValueError(f"space must be 'standard' or 'wide', got {space!r}")
    if num_bins < 2:
        raise ValueError(f"num_magnitude_bins must be >= 2, got {num_bins}")
    wide = space == "wide"
    f32 = torch.float32

    def lin(hi: float) -> Tensor:
        return torch.linspace(0.0, hi, num_bins, dtype=f32)

    shear = lin(0.99 if wide else 0.3)
    enhance = lin(0.99 if wide else 0.9)
    tx = lin(32.0 if wide else 150.0 / 331.0 * width)
    ty = lin(32.0 if wide else 150.0 / 331.0 * height)
    if whole_pixel_translate:
        tx, ty = tx.floor(), ty.floor()
    max_drop = 6 if wide else 4
    rows = {
        "Rotate": lin(135.0 if wide else 30.0),
        "Posterize": 8 - (torch.arange(num_bins, dtype=f32) / ((num_bins - 1) / max_drop)).round(),
        "Solarize": torch.linspace(255.0, 0.0, num_bins, dtype=f32),
        "Color": enhance,
        "Contrast": enhance,
        "Brightness": enhance,
        "Sharpness": enhance,
        "ShearX": shear,
        "ShearY": shear,
        "TranslateX": tx,
        "TranslateY": ty,
        "Cutout": (lin(0.5 if wide else 0.2) * min(height, width)).round(),
    }
    zero = torch.zeros(num_bins, dtype=f32)
    return torch.stack([rows.get(name, zero) for name in OP_NAMES])


def _apply_one(op: str, x: Tensor, mag: Tensor, centers: Tensor, fill: Tensor, interpolation: str) -> Tensor:
    """Op ``op`` on the sub-batch ``x`` with signed per-image magnitudes ``mag``."""
    h, w = x.shape[-2:]
    if op == "AutoContrast":
        return _autocontrast(x)
    if op == "Equalize":
        return _equalize(x)
    if op == "Invert":
        return _invert(x)
    if op == "Posterize":
        return _posterize(x, mag)
    if op == "Solarize":
        return _solarize(x, mag)
    if op in ("Color", "Contrast", "Brightness", "Sharpness"):
        kernel = {"Color": _color, "Contrast": _contrast, "Brightness": _brightness, "Sharpness": _sharpness}[op]
        return kernel(x, (1.0 + mag).clamp_min(0.0))
    if op == "Rotate":
        return _affine(x, rotation_matrix(mag, h, w), interpolation, fill)
    if op in ("ShearX", "ShearY"):
        return _affine(x, shear_matrix(mag, "x" if op == "ShearX" else "y"), interpolation, fill)
    if op in ("TranslateX", "TranslateY"):
        zero = torch.zeros_like(mag)
        m = translation_matrix(mag, zero) if op == "TranslateX" else translation_matrix(zero, mag)
        return _affine(x, m, interpolation, fill)
    if op == "Cutout":
        side = mag.round().long()
        cy = (centers[:, 0] * h).long().clamp_(0, h - 1)
        cx = (centers[:, 1] * w).long().clamp_(0, w - 1)
        mask = box_masks(centered_boxes(cy, cx, side, side, h, w), h, w).unsqueeze(1)
        return _select(mask, fill.expand_as(x), x)
    raise ValueError(f"unknown op {op!r}; known ops: {OP_NAMES}")


# Ops are grouped into families that one batched call applies with per-image parameters, so
# a step costs one call per family present instead of one per op. Only the warps are merged,
# split by the PIL engine they take (cross terms or not) so no image pays for both engines.
# Merging all point ops of a uint8 step into one lookup-table gather, or the four enhance ops
# into one blend, was slower than one call per op (benchmarks/results/kernel_choices.md, K5):
# the merged call computes every candidate (histograms, SMOOTH, grey) on every image of the
# family, and memory traffic, not call overhead, dominates.
# Results are identical to the op-by-op path: each image gets the same coefficients and the
# same per-element arithmetic (tests/test_policies.py checks both against PIL).
_FAMILIES: tuple[tuple[str, ...], ...] = (("Rotate", "ShearX", "ShearY"), ("TranslateX", "TranslateY"))


def _family_table() -> tuple[Tensor, list[tuple[int, ...]]]:
    """(len(OP_NAMES) + 1,) family id of every op id (the last entry: skipped steps, sorted
    last), and the op ids of every family."""
    taken = {name for names in _FAMILIES for name in names}
    groups = list(_FAMILIES) + [(name,) for name in OP_NAMES if name not in taken]
    table = torch.empty(len(OP_NAMES) + 1, dtype=torch.int64)
    families = []
    for f, names in enumerate(groups):
        ids = tuple(_OP_ID[name] for name in names)
        table[list(ids)] = f
        families.append(ids)
    table[-1] = len(groups)
    return table, families


_FAMILY_OF, _FAMILY_OPS = _family_table()
_GEOMETRIC = frozenset(name for names in _FAMILIES for name in names)


# Warp coefficients that are affine in the magnitude: (B, 6) = _WARP_BASE + mag * _WARP_SLOPE[op]
# (ShearX (1, s, 0, 0, 1, 0), ShearY (1, 0, 0, s, 1, 0), TranslateX / Y (1, 0, -d, 0, 1, 0) /
# (1, 0, 0, 0, 1, -d)); exact, as every product is by 0 or +-1. Rotate is built on its own.
_WARP_BASE = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0], dtype=torch.float64)
_WARP_SLOPE = torch.zeros(len(OP_NAMES), 6, dtype=torch.float64)
_WARP_SLOPE[_OP_ID["ShearX"], 1] = 1.0
_WARP_SLOPE[_OP_ID["ShearY"], 3] = 1.0
_WARP_SLOPE[_OP_ID["TranslateX"], 2] = -1.0
_WARP_SLOPE[_OP_ID["TranslateY"], 5] = -1.0


def _geometric_matrices(ops: Tensor, mag: Tensor, h: int, w: int, with_rotate: bool = True) -> Tensor:
    """(n, 6) warp coefficients of each image's geometric op, the values :func:`rotation_matrix`,
    :func:`shear_matrix` and :func:`translation_matrix` give (a table lookup and one multiply-add
    instead of five candidate matrices; kernel_choices.md, K6). Rows of
    non-geometric ops hold the identity."""
    dev = ops.device
    m = _WARP_SLOPE.to(dev)[ops.clamp(0, len(OP_NAMES) - 1)].mul_(mag.double()[:, None]).add_(_WARP_BASE.to(dev))
    if with_rotate:
        m = torch.where((ops == _OP_ID["Rotate"])[:, None], rotation_matrix(mag, h, w), m)
    return m


# A magnitude that leaves an image as it is (or at least is valid) for each op: the
# branch-free path runs every op on every image, so rows of other ops get this instead of a
# value in another op's units (e.g. 30 bits for Posterize).
_NEUTRAL = torch.zeros(len(OP_NAMES), dtype=torch.float64)
_NEUTRAL[_OP_ID["Posterize"]] = 8.0
_NEUTRAL[_OP_ID["Solarize"]] = 256.0


def _apply_ops_selecting(
    images: Tensor,
    ops: Tensor,
    mags: Tensor,
    applied: Tensor,
    centers: Tensor,
    fill: Tensor,
    interpolation: str,
    candidates: Sequence[int],
) -> Tensor:
    """The branch-free strategy of :func:`apply_ops` (see there)."""
    b, steps = ops.shape
    h, w = images.shape[-2:]
    check_values(~applied | ((ops >= 0) & (ops < len(OP_NAMES))), f"params.ops holds ids outside [0, {len(OP_NAMES)})")
    active = applied & (ops != _OP_ID["Identity"])
    geometric = [k for k in candidates if OP_NAMES[k] in _GEOMETRIC]
    others = [k for k in candidates if OP_NAMES[k] not in _GEOMETRIC and OP_NAMES[k] != "Identity"]
    neutral = _NEUTRAL.to(device=mags.device, dtype=mags.dtype)
    if geometric:
        warps = _geometric_matrices(ops.flatten(), mags.flatten(), h, w, _OP_ID["Rotate"] in geometric).view(b, steps, 6)
        geo_ids = torch.tensor(geometric, device=ops.device)
    cur = images.contiguous()  # the kernels index flat (B, C, H * W) views
    for n in range(steps):
        op_n, act_n = ops[:, n], active[:, n]
        out = cur
        if geometric:
            is_geo = act_n & torch.isin(op_n, geo_ids)
            out = _select(is_geo.view(b, 1, 1, 1), _affine(cur, warps[:, n], interpolation, fill), out)
        for k in others:
            is_k = act_n & (op_n == k)
            mag_k = torch.where(is_k, mags[:, n], neutral[k])
            res = _apply_one(OP_NAMES[k], cur, mag_k, centers[:, n], fill, interpolation)
            out = _select(is_k.view(b, 1, 1, 1), res.to(cur.dtype), out)
        cur = out
    return cur if cur is not images else images.clone()


def _take_rows(x: Tensor, index: Tensor, out: Tensor | None = None) -> Tensor:
    """``x.index_select(0, index)`` on a (B, -1) view: on the CPU a 2-D index_select copies
    whole rows (3x faster than on the 4-D float32 tensor, 256x3x32x32, 1 thread). ``out``, a
    contiguous tensor of x's shape that does not overlap x, receives the rows if given."""
    flat = x.reshape(x.shape[0], -1)
    if out is None:
        return flat.index_select(0, index).view(x.shape)
    torch.index_select(flat, 0, index, out=out.view(flat.shape))
    return out


def _apply_family(
    x: Tensor, ops: Tensor, mag: Tensor, centers: Tensor, warp: Tensor, present: list[int], fill: Tensor, interpolation: str
) -> Tensor:
    """The ops of one family on the sub-batch ``x``; ``present`` lists the op ids it holds and
    ``warp`` (n, 6) holds each image's warp coefficients (used by geometric ops only)."""
    if all(OP_NAMES[k] in _GEOMETRIC for k in present):
        return _affine(x, warp, interpolation, fill)
    assert len(present) == 1  # only warps are merged
    return _apply_one(OP_NAMES[present[0]], x, mag, centers, fill, interpolation)


def apply_ops(
    images: Tensor,
    ops: Tensor,
    magnitudes: Tensor,
    applied: Tensor,
    centers: Tensor,
    fill: float | Sequence[float] = 0.0,
    interpolation: str = "nearest",
    candidates: Sequence[int] | None = None,
    integer_translations: bool = False,
) -> Tensor:
    """Apply each image's own op sequence; the input is not modified.

    Two strategies, chosen by :mod:`keepmix.engine` (the results are identical):

    * **grouping** (the CPU fast path): per step, the images are grouped by op after one host
      read of the per-step op counts, and each group is transformed once;
    * **branch-free** (capture-safe: no host read, one graph): per step, every op in
      ``candidates`` (the op ids the policy can draw; default all of :data:`OP_NAMES`) runs on
      the whole batch and each image keeps its own op's result. The work grows with the
      number of candidate ops, but there is no synchronisation and no data-dependent shape.

    ``ops`` (B, N) int64 indexes :data:`OP_NAMES`; ``magnitudes`` (B, N) are signed values in
    the op's units (:func:`magnitude_table`); ``applied`` (B, N) bool; ``centers`` (B, N, 2)
    the relative (y, x) centres of Cutout squares. For each step, images are grouped by op (Rotate and the shears together, the translations
    together: one warp each), each group is transformed at once with its per-image ops and
    magnitudes; images whose step is not applied (or is Identity) pass through unchanged.
    One host sync for all steps. On the capture-safe path a uint8 batch takes
    :func:`keepmix.functional.policy_layers.apply_layers_uint8` (a lookup table, one warp and
    one blend per step); ``integer_translations`` promises that every translation moves whole
    pixels (the policies' default), which spares that path one of PIL's two warp engines.
    """
    _check_interpolation(interpolation)
    fill_t = _fill_tensor(fill, images)
    if capture_safe(images.device):
        ids = range(len(OP_NAMES)) if candidates is None else sorted(set(int(k) for k in candidates))
        if images.dtype == torch.uint8:
            # A lookup table, a warp and a blend per layer (keepmix.functional.policy_layers).
            check_values(~applied | ((ops >= 0) & (ops < len(OP_NAMES))), f"params.ops holds ids outside [0, {len(OP_NAMES)})")
            return apply_layers_uint8(images, ops, magnitudes, applied, centers, fill_t, interpolation, ids, integer_translations)
        return _apply_ops_selecting(images, ops, magnitudes, applied, centers, fill_t, interpolation, ids)
    device = images.device
    b, h, w = images.shape[0], images.shape[-2], images.shape[-1]
    mags = magnitudes
    num_ops, steps = len(OP_NAMES), ops.shape[1]
    skip = num_ops  # bucket of images a step leaves alone
    bad = applied & ((ops < 0) | (ops >= num_ops))
    key = torch.where(applied & ~bad & (ops != _OP_ID["Identity"]), ops, skip)  # (B, N)
    step_offsets = torch.arange(steps, device=device) * (skip + 1)
    counts = torch.bincount((key + step_offsets).flatten(), minlength=steps * (skip + 1))
    # The one host sync of the call: per-step op counts and per-step invalid ids.
    flat = torch.cat([counts, bad.sum(0)]).tolist()
    counts_per_step = [flat[n * (skip + 1) : (n + 1) * (skip + 1)] for n in range(steps)]
    for n, n_bad in enumerate(flat[steps * (skip + 1) :]):
        if n_bad:
            raise ValueError(f"params.ops holds ids outside [0, {num_ops}) at step {n}")
    family_of = _FAMILY_OF.to(device)[key]  # (B, N)
    # Warp coefficients of every (image, step) in one vectorised pass (a few dozen tiny ops
    # once, instead of once per warp group and step).
    if any(counts_per_step[n][_OP_ID[name]] for n in range(steps) for name in _GEOMETRIC):
        with_rotate = any(counts_per_step[n][_OP_ID["Rotate"]] for n in range(steps))
        warps = _geometric_matrices(ops.flatten(), mags.flatten(), h, w, with_rotate).view(b, steps, 6)
    else:
        warps = mags.new_zeros(()).expand(b, steps, 6)
    # The batch is kept sorted by the current step's family instead of gathering and
    # scattering each group (index_select + index_copy_ per group and step): each step
    # reorders the whole batch once with one index_select (a row copy), every family works on
    # a contiguous slice and writes its result back into that slice, and one index_select
    # with the inverse permutation restores the input order at the end. ``cur[i]`` holds
    # image ``perm[i]`` (``perm`` None: the identity; kernel_choices.md, K7).
    # ``spare``: a buffer allocated in this call and no longer read, reused as the target of
    # the next reorder (fresh multi-MB allocations page-fault on every call; K8).
    cur, owned, perm, spare = images, False, None, None
    for n in range(steps):
        op_counts = counts_per_step[n]
        if op_counts[skip] == b:
            continue
        groups = []
        for op_ids in _FAMILY_OPS:
            count = sum(op_counts[k] for k in op_ids)
            if count:
                groups.append((count, [k for k in op_ids if op_counts[k]]))
        rows = slice(None) if perm is None else perm
        if len(groups) == 1 and groups[0][0] == b:  # the whole batch is in one family
            res = _apply_family(cur, ops[rows, n], mags[rows, n], centers[rows, n], warps[rows, n], groups[0][1], fill_t, interpolation)
            if owned and cur.is_contiguous() and res.data_ptr() != cur.data_ptr():
                spare = cur
            cur, owned = res, True
            continue
        local = torch.argsort(family_of[rows, n], stable=True)
        perm = local if perm is None else perm[local]
        target, spare = spare, (cur if owned and cur.is_contiguous() else None)
        cur, owned = _take_rows(cur if cur.is_contiguous() else cur.contiguous(), local, target), True
        s_ops, s_mags, s_centers, s_warps = ops[perm, n], mags[perm, n], centers[perm, n], warps[perm, n]
        start = 0
        for count, present in groups:
            sl = slice(start, start + count)
            res = _apply_family(cur[sl], s_ops[sl], s_mags[sl], s_centers[sl], s_warps[sl], present, fill_t, interpolation)
            cur[sl] = res  # slices are disjoint and each result is computed before it is written
            start += count
    if perm is not None:
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(b, device=device)
        return _take_rows(cur, inverse, spare)
    return cur if owned else images.clone()


# policy_layers names the op ids as constants (it cannot import this module: a cycle).
if _LAYER_IDS != _OP_ID:
    raise AssertionError("keepmix.functional.policy_layers numbers the ops otherwise than OP_NAMES")
