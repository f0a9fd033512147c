"""Tests of Cutout and RandomErasing (keepmix.regional) and keepmix.functional.erasing."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from keepmix.base import RegionParams
from keepmix.functional.boxes import box_areas, box_masks
from keepmix.functional.erasing import erase, fill_tensor
from keepmix.placers import UniformPlacer
from keepmix.regional import Cutout, CutoutParams, RandomErasing, RandomErasingParams

DTYPES = [torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.float64]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(b: int, c: int, h: int, w: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = gen(seed)
    if dtype == torch.uint8:
        return torch.randint(0, 256, (b, c, h, w), generator=g, dtype=torch.uint8)
    # no exact zeros, so "erased with 0" is distinguishable from the image
    return (torch.rand(b, c, h, w, generator=g) + 0.5).to(dtype)


def check_erased(x: torch.Tensor, out: torch.Tensor, boxes: torch.Tensor, values: torch.Tensor) -> None:
    """Outside the boxes bitwise equal to x; inside equal to values (broadcast)."""
    m = box_masks(boxes, x.shape[2], x.shape[3])[:, None].expand_as(x)
    assert out.dtype == x.dtype and out.shape == x.shape
    assert torch.equal(out[~m], x[~m])
    assert torch.equal(out[m], values.expand_as(x)[m])


# ----------------------------------------------------------------------------- functional


def test_erase_matches_slice_loop():
    x = batch(5, 3, 9, 12, torch.float32)
    boxes = torch.tensor([[0, 0, 3, 4], [2, 5, 9, 12], [4, 4, 4, 8], [0, 0, 9, 12], [1, 2, 2, 3]])
    out = erase(x, boxes, (1.0, -2.0, 3.5))
    ref = x.clone()
    for i, (y1, x1, y2, x2) in enumerate(boxes.tolist()):
        ref[i, :, y1:y2, x1:x2] = torch.tensor([1.0, -2.0, 3.5]).view(3, 1, 1)
    assert torch.equal(out, ref)
    assert torch.equal(out[2], x[2])  # empty box: unchanged


def test_fill_tensor_forms():
    x = batch(2, 3, 4, 4, torch.float32)
    assert fill_tensor(1, x).shape == (1, 1, 1, 1)
    assert fill_tensor([1, 2, 3], x).shape == (1, 3, 1, 1)
    assert fill_tensor(torch.ones(2, 3), x).shape == (2, 3, 1, 1)
    assert fill_tensor(torch.ones(3), x).shape == (1, 3, 1, 1)
    assert fill_tensor(torch.ones(2, 3, 4, 4), x).shape == (2, 3, 4, 4)
    xu = batch(2, 3, 4, 4, torch.uint8)
    assert fill_tensor(torch.tensor([0.0, 128.0, 255.0]), xu).dtype == torch.uint8


@pytest.mark.parametrize(
    "fill,dtype,exc,match",
    [
        (0.5, torch.uint8, ValueError, "integers"),
        (256, torch.uint8, ValueError, r"\[0, 255\]"),
        (-1, torch.uint8, ValueError, r"\[0, 255\]"),
        ((1.0, 2.0), torch.float32, ValueError, "2 values but the images have 3 channels"),
        (1e6, torch.float16, ValueError, "does not fit"),
        (float("nan"), torch.float32, ValueError, "finite"),
        ("zero", torch.float32, TypeError, "number"),
        (True, torch.float32, TypeError, "bool"),
        ((), torch.float32, ValueError, "empty"),
        (torch.ones(3, 3), torch.float32, ValueError, r"\(B, C\)"),
        (torch.ones(1, 3, 5, 1), torch.float32, ValueError, "broadcast"),
        (torch.ones(2, 1, 4), torch.float32, ValueError, "shape"),
    ],
)
def test_fill_errors(fill, dtype, exc, match):
    x = batch(2, 3, 4, 4, dtype)
    with pytest.raises(exc, match=match):
        erase(x, torch.tensor([[0, 0, 2, 2]] * 2), fill)


def test_erase_bad_boxes_and_images():
    x = batch(2, 3, 4, 4, torch.float32)
    with pytest.raises(ValueError, match="inside"):
        erase(x, torch.tensor([[0, 0, 5, 2]] * 2), 0.0)
    with pytest.raises(ValueError, match="rows"):
        erase(x, torch.tensor([[0, 0, 2, 2]]), 0.0)
    with pytest.raises(ValueError, match="4 dimensions"):
        erase(x[0], torch.tensor([[0, 0, 2, 2]]), 0.0)
    with pytest.raises(TypeError, match="uint8 or floating"):
        erase(x.long(), torch.tensor([[0, 0, 2, 2]] * 2), 0)


# ----------------------------------------------------------------------------- Cutout


@pytest.mark.parametrize("dtype", DTYPES)
def test_cutout_erases_exactly_its_boxes(dtype):
    x = batch(16, 3, 20, 28, dtype)
    x0 = x.clone()
    op = Cutout(length=8, fill=7)
    params = op.sample_params(x, generator=gen(1))
    assert isinstance(params, CutoutParams) and isinstance(params, RegionParams)
    out = op.transform(x, None, params)
    check_erased(x, out, params.boxes, torch.tensor(7, dtype=dtype))
    assert torch.equal(x, x0)  # input untouched
    assert (params.sizes == 8).all()
    # centre placement: clipped boxes are never larger than requested and never empty
    hw = params.boxes[:, 2:] - params.boxes[:, :2]
    assert ((hw >= 4) & (hw <= 8)).all()
    assert len({tuple(b) for b in params.boxes.tolist()}) > 8  # per-image boxes


def test_cutout_on_real_images_with_per_channel_fill(cifar_uint8):
    op = Cutout(length=16, fill=(10, 20, 30))
    params = op.sample_params(cifar_uint8, generator=gen(2))
    out = op.transform(cifar_uint8, None, params)
    check_erased(cifar_uint8, out, params.boxes, torch.tensor([10, 20, 30], dtype=torch.uint8).view(1, 3, 1, 1))
    # forward with the same seed = sample_params + apply
    assert torch.equal(op(cifar_uint8, generator=gen(2)), out)


def test_cutout_p_and_seed():
    x = batch(64, 3, 16, 16, torch.float32)
    assert torch.equal(Cutout(4, p=0.0)(x, generator=gen(0)), x)
    op = Cutout(4, p=0.5)
    params = op.sample_params(x, generator=gen(3))
    applied = box_areas(params.boxes) > 0
    assert torch.equal(applied, params.sizes[:, 0] > 0)
    assert 16 < applied.sum() < 48
    assert torch.equal(op(x, generator=gen(3)), op(x, generator=gen(3)))
    assert not torch.equal(op(x, generator=gen(3)), op(x, generator=gen(4)))


def test_cutout_centre_coverage_is_uniform():
    # Each pixel is the centre with probability 1/(H W): count centres of unclipped boxes
    # (odd length 3 -> centre = y1 + 1) over a large batch; each of the 8x8 cells ~ 1/64.
    x = torch.zeros(12800, 1, 8, 8)
    params = Cutout(length=3).sample_params(x, generator=gen(5))
    b = params.boxes
    cy = torch.where(b[:, 0] > 0, b[:, 0] + 1, b[:, 2] - 2)
    cx = torch.where(b[:, 1] > 0, b[:, 1] + 1, b[:, 3] - 2)
    counts = torch.bincount(cy * 8 + cx, minlength=64).float()
    assert counts.shape == (64,)
    assert ((counts / 200 - 1).abs() < 0.3).all()  # expected 200 per cell


def test_cutout_uint8_float_fill_rejected_and_bad_args():
    x = batch(2, 3, 8, 8, torch.uint8)
    with pytest.raises(ValueError, match="integers"):
        Cutout(4, fill=0.5)(x)
    with pytest.raises(ValueError, match="length"):
        Cutout(0)
    with pytest.raises(ValueError, match="length"):
        Cutout(2.5)
    with pytest.raises(ValueError, match="p must be"):
        Cutout(4, p=1.5)
    with pytest.raises(TypeError, match="generator"):
        Cutout(4)(x, generator=3)


def test_cutout_length_larger_than_image_refused():
    x = batch(2, 3, 8, 10, torch.float32)
    for bad in (9, 11):
        with pytest.raises(ValueError, match="length"):
            Cutout(bad)(x, generator=gen(0))
        with pytest.raises(ValueError, match="length"):
            Cutout(bad).sample_params(x, generator=gen(0))
    out = Cutout(8)(x, generator=gen(0))  # length = the height is allowed
    assert out.shape == x.shape


def test_cutout_labels_pass_through_unchanged():
    x = batch(4, 3, 8, 8, torch.float32)
    labels = torch.tensor([3, 1, 4, 1])
    op = Cutout(4, fill=0)
    out, same = op(x, labels, generator=gen(1))
    assert same is labels
    assert torch.equal(out, op(x, generator=gen(1)))
    params = op.sample_params(x, generator=gen(1))
    out2, same2 = op.transform(x, labels, params)
    assert same2 is labels and torch.equal(out2, out)


def test_cutout_whole_boxes_are_unclipped_and_uniform():
    # UniformPlacer(whole_boxes=True): every square lies fully inside the image (a full
    # length x length area), its top-left corner uniform over the (H - L + 1)(W - L + 1)
    # positions that keep it inside.
    h, w, length = 7, 9, 4
    x = batch(9000, 1, h, w, torch.float32)
    op = Cutout(length, fill=0, placer=UniformPlacer(whole_boxes=True))
    params = op.sample_params(x, generator=gen(6))
    b = params.boxes
    assert (b[:, :2] >= 0).all() and (b[:, 2] <= h).all() and (b[:, 3] <= w).all()
    assert torch.equal(b[:, 2:] - b[:, :2], torch.full((9000, 2), length))
    assert (box_areas(b) == length * length).all()
    out = op.transform(x, None, params)
    check_erased(x, out, b, torch.tensor(0.0))
    assert ((out == 0).flatten(1).sum(1) == length * length).all()
    ny, nx = h - length + 1, w - length + 1
    counts = torch.bincount(b[:, 0] * nx + b[:, 1], minlength=ny * nx).float()
    assert counts.shape == (ny * nx,)
    expected = 9000 / (ny * nx)
    assert ((counts / expected - 1).abs() < 0.25).all()
    # the default placer clips: some boxes of the same op are cut by the border
    clipped = Cutout(length).sample_params(x, generator=gen(6)).boxes
    assert (box_areas(clipped) < length * length).any()


# ----------------------------------------------------------------------------- Random Erasing


@pytest.mark.parametrize("value", [0.0, (1.0, 2.0, 3.0), "random_box", "random_pixel"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float16, torch.bfloat16, torch.float32])
def test_random_erasing_invariants(value, dtype):
    if dtype == torch.uint8 and value == 0.0:
        value = 0
    x = batch(32, 3, 24, 17, dtype)
    x0 = x.clone()
    op = RandomErasing(p=1.0, value=value)
    params = op.sample_params(x, generator=gen(7))
    assert isinstance(params, RandomErasingParams)
    out = op.transform(x, None, params)
    assert params.values.dtype == dtype
    check_erased(x, out, params.boxes, params.values)
    assert torch.equal(x, x0)
    # boxes inside the image with exactly the sampled sizes
    hw = params.boxes[:, 2:] - params.boxes[:, :2]
    assert torch.equal(hw, params.sizes)
    assert (params.boxes[:, 2] <= 24).all() and (params.boxes[:, 3] <= 17).all()
    if value == "random_box":
        assert params.values.shape == (32, 3, 1, 1)
    if value == "random_pixel":
        assert params.values.shape == (32, 3, 24, 17)
    # one row of values per image, whatever the value: a leading B dim (params.rows works)
    assert params.values.shape[0] == 32
    assert params.values.shape in ((32, 3, 1, 1), (32, 3, 24, 17))
    sub = params.rows(torch.tensor([3, 5]))
    assert sub.values.shape[0] == 2 and torch.equal(sub.values, params.values[[3, 5]])
    assert torch.equal(op.transform(x[[3, 5]], None, sub), out[[3, 5]])


def test_random_erasing_random_values_distribution():
    x = torch.zeros(64, 3, 32, 32)
    v = RandomErasing(p=1.0, value="random_pixel").sample_params(x, generator=gen(8)).values
    assert abs(v.mean().item()) < 0.02 and abs(v.std().item() - 1) < 0.02  # standard normal
    xu = torch.zeros(64, 3, 32, 32, dtype=torch.uint8)
    vu = RandomErasing(p=1.0, value="random_pixel").sample_params(xu, generator=gen(8)).values
    assert vu.min() == 0 and vu.max() == 255 and abs(vu.float().mean().item() - 127.5) < 1.5


def test_random_erasing_area_and_aspect_in_range():
    h, w = 64, 48
    op = RandomErasing(p=1.0, scale=(0.05, 0.3), ratio=(0.5, 2.0))
    params = op.sample_params(torch.zeros(4000, 1, h, w), generator=gen(9))
    bh, bw = params.sizes[:, 0].double(), params.sizes[:, 1].double()
    assert (bh > 0).all()
    frac = bh * bw / (h * w)
    # rounding h and w moves the area by at most about (h + w + 1) / 2 pixels
    slack = (bh + bw + 1) / 2 / (h * w)
    assert (frac >= 0.05 - slack).all() and (frac <= 0.3 + slack).all()
    aspect = bh / bw
    assert (aspect >= 0.5 * (1 - 1 / bw) * (1 - 1 / bh) - 0.05).all() and (aspect <= 2.0 / ((1 - 1 / bw) * (1 - 1 / bh)) + 0.05).all()
    assert abs(frac.mean().item() - 0.175) < 0.01  # U(0.05, 0.3) mean
    assert abs(aspect.log().mean().item()) < 0.03  # log-uniform, symmetric around 1


def test_random_erasing_sizes_match_reference_formula():
    # The first candidate that fits, computed with Python floats from the same draws.
    h, w, b, tries = 10, 6, 200, 10
    op = RandomErasing(p=1.0, scale=(0.1, 0.9), ratio=(0.2, 5.0), num_tries=tries)
    sizes = op.sample_sizes(torch.zeros(b, 1, h, w), gen(10))
    # p = 1 draws nothing for 'applied': one (B, 2T, 1) float64 draw, areas then log-ratios
    u = torch.rand((b, 2 * tries, 1), generator=gen(10), dtype=torch.float64)[:, :, 0].tolist()
    lo, hi = math.log(0.2), math.log(5.0)
    for i in range(b):
        expected = [0, 0]
        for t in range(tries):
            area = h * w * 0.1 + h * w * (0.9 - 0.1) * u[i][t]
            log_r = lo + (hi - lo) * u[i][tries + t]
            eh, ew = round(math.sqrt(area * math.exp(log_r))), round(math.sqrt(area * math.exp(-log_r)))
            if 1 <= eh <= h and 1 <= ew <= w:
                expected = [eh, ew]
                break
        assert sizes[i].tolist() == expected, i


def test_random_erasing_fallback_leaves_image_unchanged():
    # Ratios of at least 50 cannot fit an 8x8 image at these areas: every candidate fails.
    x = batch(16, 3, 8, 8, torch.float32)
    op = RandomErasing(p=1.0, scale=(0.3, 0.4), ratio=(50.0, 60.0))
    params = op.sample_params(x, generator=gen(11))
    assert (params.sizes == 0).all() and (box_areas(params.boxes) == 0).all()
    assert torch.equal(op.transform(x, None, params), x)


def test_random_erasing_p():
    x = batch(400, 1, 16, 16, torch.float32)
    params = RandomErasing(p=0.5).sample_params(x, generator=gen(12))
    frac = (box_areas(params.boxes) > 0).float().mean().item()
    assert 0.4 < frac < 0.6
    assert torch.equal(RandomErasing(p=0.0)(x, generator=gen(0)), x)


def test_random_erasing_seed():
    x = batch(8, 3, 16, 16, torch.float32)
    op = RandomErasing(p=1.0, value="random_pixel")
    assert torch.equal(op(x, generator=gen(13)), op(x, generator=gen(13)))
    assert torch.equal(op(x, generator=gen(13)), op.transform(x, None, op.sample_params(x, generator=gen(13))))
    assert not torch.equal(op(x, generator=gen(13)), op(x, generator=gen(14)))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"p": -0.1}, "p must be"),
        ({"scale": (0.0, 0.4)}, "scale"),
        ({"scale": (0.5, 0.4)}, "scale"),
        ({"scale": (0.1, 1.5)}, "scale"),
        ({"ratio": (0.0, 3.0)}, "ratio"),
        ({"ratio": (2.0, 1.0)}, "ratio"),
        ({"value": "noise"}, "random_box"),
        ({"num_tries": 0}, "num_tries"),
    ],
)
def test_random_erasing_bad_args(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RandomErasing(**kwargs)


def test_random_erasing_uint8_constant_must_be_byte():
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        RandomErasing(p=1.0, value=300)(batch(2, 3, 8, 8, torch.uint8))


@given(
    b=st.integers(1, 6),
    c=st.sampled_from([1, 3, 4]),
    h=st.integers(1, 20),
    w=st.integers(1, 20),
    dtype=st.sampled_from(DTYPES),
    value=st.sampled_from([3, "random_box", "random_pixel"]),
    p=st.sampled_from([0.0, 0.5, 1.0]),
    seed=st.integers(0, 1000),
)
@settings(max_examples=40, deadline=None)
def test_property_regional_ops(b, c, h, w, dtype, value, p, seed):
    x = batch(b, c, h, w, dtype, seed)
    for op in (Cutout(length=max(1, min(h, w) // 2), fill=3, p=p), RandomErasing(p=p, value=value)):
        params = op.sample_params(x, generator=gen(seed))
        out = op.transform(x, None, params)
        values = params.values if isinstance(params, RandomErasingParams) else torch.tensor(3, dtype=dtype)
        check_erased(x, out, params.boxes, values)
        assert torch.equal(box_areas(params.boxes) == 0, (params.sizes == 0).all(1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_regional_on_cuda_matches_cpu_with_cpu_generator():
    x = batch(16, 3, 20, 24, torch.float32)
    for op in (Cutout(8), RandomErasing(p=1.0, value="random_pixel")):
        out_gpu = op(x.cuda(), generator=gen(15))
        assert out_gpu.device.type == "cuda"
        assert torch.equal(out_gpu.cpu(), op(x, generator=gen(15)))
