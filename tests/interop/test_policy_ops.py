"""The policies' ops against torchvision's v1 ``_apply_op`` on PIL images, every op x bin x sign.

torchvision's v1 policies apply each op to a PIL image with ``_apply_op(img, name, magnitude,
interpolation, fill)``, the magnitude being ``float(table[bin])`` of its float32 magnitude
tables, negated for a drawn minus sign. keepmix's batched kernels (``apply_ops``) are given the
magnitude keepmix's own table holds for the same bin, so a table that differs from
torchvision's (by an ulp, or by the whole-pixel truncation) shows up here as an image that
differs. Real CIFAR-10 images at 32 px, at 224 px and at 36 x 52.
"""

from __future__ import annotations

import functools

import pytest
import torch
from interop_helpers import SIZES, from_pil
from torchvision.transforms import InterpolationMode
from torchvision.transforms import autoaugment as tv_aa

from keepmix.functional.policy_ops import _OP_ID, apply_ops, magnitude_table

# torchvision's op names that keepmix's kernels cover (Cutout is keepmix's own).
TV_OPS = (
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
    "Invert",
)
GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
NO_MAGNITUDE = ("Identity", "AutoContrast", "Equalize", "Invert")
SIGNED = GEOMETRIC + ("Brightness", "Color", "Contrast", "Sharpness")
NUM_BINS = 31

# Bilinear warps: PIL resamples in 8-bit fixed point, keepmix in float with PIL's rounding; the
# stated tolerance is at most one grey level per channel value, on at most 5% of the values
# (the shears at 32 px reach 3%: benchmarks/results/interop.md). Zero displacement and
# whole-pixel translations must be exact.
BILINEAR_MAX_DIFF = 1
BILINEAR_MAX_FRACTION = 0.05


@functools.cache
def tv_space(space: str, num_bins: int, hw: tuple[int, int]) -> dict[str, tuple[torch.Tensor, bool]]:
    """torchvision's own magnitude tables (float32) for a space at an image size."""
    if space == "wide":
        return tv_aa.TrivialAugmentWide()._augmentation_space(num_bins)
    return tv_aa.RandAugment(num_magnitude_bins=num_bins)._augmentation_space(num_bins, hw)


def tv_magnitude(space: str, op: str, b: int, sign: int, hw: tuple[int, int], num_bins: int = NUM_BINS) -> float:
    """The float torchvision's v1 policies pass to ``_apply_op`` for ``op`` at bin ``b``."""
    if op in NO_MAGNITUDE:  # Invert is only in AutoAugment's space; none of these has a magnitude
        return 0.0
    mags, signed = tv_space(space, num_bins, hw)[op]
    m = float(mags[b].item()) if mags.ndim > 0 else 0.0
    return -m if (signed and sign < 0) else m


def km_magnitude(space: str, op: str, b: int, sign: int, hw: tuple[int, int], num_bins: int = NUM_BINS) -> float:
    """What keepmix's policies draw for the same bin: their table's value, as float32, signed."""
    if op in NO_MAGNITUDE:
        return 0.0
    m = float(_km_table(space, num_bins, hw)[_OP_ID[op], b].to(torch.float32))
    return -m if (op in SIGNED and sign < 0) else m


@functools.cache
def _km_table(space: str, num_bins: int, hw: tuple[int, int]) -> torch.Tensor:
    return magnitude_table(space, num_bins, hw[0], hw[1])  # type: ignore[arg-type]  # the value the test means to pass


def run_keepmix(images: torch.Tensor, op: str, magnitude: float, interpolation: str) -> torch.Tensor:
    b = images.shape[0]
    ops = torch.full((b, 1), _OP_ID[op], dtype=torch.int64)
    mags = torch.full((b, 1), magnitude, dtype=torch.float32)
    out = apply_ops(images, ops, mags, torch.ones(b, 1, dtype=torch.bool), torch.zeros(b, 1, 2), 0.0, interpolation)
    return out


def run_torchvision(pil: list, op: str, magnitude: float, interpolation: InterpolationMode) -> torch.Tensor:
    return from_pil([tv_aa._apply_op(im, op, magnitude, interpolation, None) for im in pil])


def cases(op: str) -> list[tuple[int, int]]:
    if op in NO_MAGNITUDE:
        return [(0, 1)]
    signs = (1, -1) if op in SIGNED else (1,)
    return [(b, s) for b in range(NUM_BINS) for s in signs]


def compare(space: str, op: str, sized_images, interpolation: str):
    """(size, bin, sign, worst diff, fraction of channel values that differ) of every case."""
    mode = InterpolationMode.NEAREST if interpolation == "nearest" else InterpolationMode.BILINEAR
    rows = []
    for size, hw in SIZES.items():
        images, pil = sized_images[size]
        for b, s in cases(op):
            got = run_keepmix(images, op, km_magnitude(space, op, b, s, hw), interpolation)
            want = run_torchvision(pil, op, tv_magnitude(space, op, b, s, hw), mode)
            diff = (got.int() - want.int()).abs()
            rows.append((size, b, s, int(diff.max()), float((diff > 0).double().mean())))
    return rows


@pytest.mark.parametrize("space", ["standard", "wide"])
@pytest.mark.parametrize("op", TV_OPS)
def test_op_bit_exact_with_torchvision_nearest(space, op, sized_images):
    """Every op, bin and sign, nearest interpolation: the same pixels as torchvision on PIL."""
    bad = [r for r in compare(space, op, sized_images, "nearest") if r[3] > 0]
    assert not bad, f"{op} ({space}) differs from torchvision at (size, bin, sign, max diff, fraction): {bad[:12]} ({len(bad)} cases)"


@pytest.mark.parametrize("space", ["standard", "wide"])
@pytest.mark.parametrize("op", GEOMETRIC)
def test_geometric_op_bilinear_within_tolerance(space, op, sized_images):
    """The warps with bilinear interpolation: within the stated tolerance of torchvision on PIL,
    and exact at bin 0 (zero displacement is the identity) and for whole-pixel translations."""
    rows = compare(space, op, sized_images, "bilinear")
    bad = [r for r in rows if r[3] > BILINEAR_MAX_DIFF or r[4] > BILINEAR_MAX_FRACTION]
    assert not bad, f"{op} ({space}) bilinear beyond tolerance at (size, bin, sign, max diff, fraction): {bad[:12]} ({len(bad)} cases)"
    exact = [r for r in rows if (r[1] == 0 or op.startswith("Translate")) and r[3] > 0]
    assert not exact, f"{op} ({space}) bilinear not exact at zero displacement / whole-pixel shifts: {exact[:12]}"


@pytest.mark.parametrize("size", list(SIZES))
def test_zero_displacement_is_identity(size, sized_images):
    """Bin 0 of every warp, bilinear and nearest: the image comes back unchanged (as in PIL)."""
    images, _ = sized_images[size]
    for op in GEOMETRIC:
        for interpolation in ("nearest", "bilinear"):
            out = run_keepmix(images, op, 0.0, interpolation)
            assert torch.equal(out, images), f"{op} at magnitude 0 ({interpolation}, {size}) changed {int((out != images).sum())} values"


@pytest.mark.parametrize("space,num_bins", [("standard", 10), ("standard", 31), ("wide", 31), ("standard", 7)])
@pytest.mark.parametrize("hw", [(32, 32), (224, 224), (36, 52)])
def test_magnitude_tables_equal_torchvision_float32(space, num_bins, hw):
    """keepmix's magnitude tables hold torchvision's float32 values exactly, translations as the
    whole pixels ``int(magnitude)`` of torchvision's ``_apply_op`` (and as the float values with
    ``whole_pixel_translate=False``)."""
    tv = tv_space(space, num_bins, hw)
    whole = magnitude_table(space, num_bins, hw[0], hw[1]).to(torch.float32)  # type: ignore[arg-type]  # the value the test means to pass
    exact = magnitude_table(space, num_bins, hw[0], hw[1], whole_pixel_translate=False).to(torch.float32)  # type: ignore[arg-type]  # the value the test means to pass
    for op, (mags, _) in tv.items():
        if op in NO_MAGNITUDE:
            continue
        want = mags.to(torch.float32)
        if op.startswith("Translate"):
            assert torch.equal(exact[_OP_ID[op]], want), f"{op}: {exact[_OP_ID[op]].tolist()} != torchvision {want.tolist()}"
            want = torch.tensor([float(int(v)) for v in want.tolist()])
        got = whole[_OP_ID[op]]
        assert torch.equal(got, want), f"{op} ({space}, {num_bins} bins, {hw}): {got.tolist()} != torchvision {want.tolist()}"
