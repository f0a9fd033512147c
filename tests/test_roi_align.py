"""RoIAlign against a hand-written float64 loop of torchvision's algorithm, plus exact cases."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from keepmix.functional.roi_align import max_sampling_grid, roi_align

torch.set_num_threads(1)


def _bilinear(fm: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """One bilinear sample of a (C, H, W) map, torchvision's border rule, scalar loop code."""
    _, h, w = fm.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return torch.zeros(fm.shape[0], dtype=fm.dtype)
    y, x = max(y, 0.0), max(x, 0.0)
    yl, xl = int(y), int(x)
    if yl >= h - 1:
        yl = yh = h - 1
        y = float(yl)
    else:
        yh = yl + 1
    if xl >= w - 1:
        xl = xh = w - 1
        x = float(xl)
    else:
        xh = xl + 1
    ly, lx = y - yl, x - xl
    hy, hx = 1 - ly, 1 - lx
    return hy * hx * fm[:, yl, xl] + hy * lx * fm[:, yl, xh] + ly * hx * fm[:, yh, xl] + ly * lx * fm[:, yh, xh]


def reference_roi_align(features, boxes_yxyx, out_hw, scale_yx, sampling_ratio=-1, aligned=True):
    """Straight per-box, per-bin, per-sample loop in float64 (boxes in (y1, x1, y2, x2))."""
    b, c, _, _ = features.shape
    oh, ow = out_hw
    sy, sx = scale_yx
    out = torch.zeros(b, c, oh, ow, dtype=torch.float64)
    fd = features.double()
    off = 0.5 if aligned else 0.0
    for i in range(b):
        y1, x1, y2, x2 = (float(v) for v in boxes_yxyx[i])
        ys, xs = y1 * sy - off, x1 * sx - off
        rh, rw = y2 * sy - off - ys, x2 * sx - off - xs
        if not aligned:
            rh, rw = max(rh, 1.0), max(rw, 1.0)
        bh, bw = rh / oh, rw / ow
        gh = sampling_ratio if sampling_ratio > 0 else math.ceil(rh / oh)
        gw = sampling_ratio if sampling_ratio > 0 else math.ceil(rw / ow)
        count = max(gh * gw, 1)
        for ph in range(oh):
            for pw in range(ow):
                acc = torch.zeros(c, dtype=torch.float64)
                for iy in range(gh):
                    y = ys + ph * bh + (iy + 0.5) * bh / gh
                    for ix in range(gw):
                        x = xs + pw * bw + (ix + 0.5) * bw / gw
                        acc += _bilinear(fd[i], y, x)
                out[i, :, ph, pw] = acc / count
    return out


def _random_boxes(g, b, img_h, img_w, min_side=0):
    y1 = torch.randint(0, img_h - min_side + 1, (b,), generator=g)
    x1 = torch.randint(0, img_w - min_side + 1, (b,), generator=g)
    y2 = torch.minimum(y1 + min_side + torch.randint(0, img_h + 1, (b,), generator=g), torch.tensor(img_h))
    x2 = torch.minimum(x1 + min_side + torch.randint(0, img_w + 1, (b,), generator=g), torch.tensor(img_w))
    return torch.stack([y1, x1, y2, x2], 1)


@pytest.mark.parametrize("out_hw", [(1, 1), (2, 3), (3, 2)])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_matches_float64_reference_random_int_boxes(out_hw, sampling_ratio):
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(6, 3, 4, 6, generator=g, dtype=torch.float64)  # 32 x 48 image, stride 8
    boxes = _random_boxes(g, 6, 32, 48)
    boxes[0] = torch.tensor([0, 0, 32, 48])  # whole image
    boxes[1] = torch.tensor([0, 44, 5, 48])  # top-right corner, thinner than a cell
    boxes[2] = torch.tensor([30, 0, 32, 3])  # bottom-left corner, smaller than a cell
    boxes[3] = torch.tensor([9, 9, 10, 10])  # one pixel
    out = roi_align(feats, boxes, out_hw, 1 / 8, sampling_ratio)
    ref = reference_roi_align(feats, boxes, out_hw, (1 / 8, 1 / 8), sampling_ratio)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    fh=st.integers(1, 6),
    fw=st.integers(1, 6),
    oh=st.integers(1, 3),
    ow=st.integers(1, 3),
    aligned=st.booleans(),
)
def test_matches_reference_float_boxes_outside_and_inside(seed, fh, fw, oh, ow, aligned):
    """Float boxes anywhere, including partly or wholly outside the map (the 'zero beyond one
    cell' rule), non-square maps, both alignment rules."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(4, 2, fh, fw, generator=g, dtype=torch.float64)
    img_h, img_w = fh * 4, fw * 4
    a = torch.rand(4, 2, generator=g, dtype=torch.float64) * torch.tensor([img_h, img_w]) * 1.6 - 0.3 * torch.tensor([img_h, img_w])
    s = torch.rand(4, 2, generator=g, dtype=torch.float64) * torch.tensor([img_h, img_w])
    boxes = torch.cat([a, a + s], dim=1)
    out = roi_align(feats, boxes, (oh, ow), 0.25, aligned=aligned)
    ref = reference_roi_align(feats, boxes, (oh, ow), (0.25, 0.25), aligned=aligned)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_box_order_is_not_transposed():
    """A tall box and its transpose pool different cells; xyxy is the same box reordered."""
    feats = torch.arange(4 * 6, dtype=torch.float64).reshape(1, 1, 4, 6)
    tall = torch.tensor([[0, 0, 32, 8]])  # (y1, x1, y2, x2): all rows, first column of cells
    out = roi_align(feats, tall, 1, 1 / 8)
    assert out.item() == pytest.approx(feats[0, 0, :, 0].mean().item())
    out_xyxy = roi_align(feats, tall[:, [1, 0, 3, 2]], 1, 1 / 8, box_order="xyxy")
    assert out_xyxy.item() == out.item()
    transposed = roi_align(feats, torch.tensor([[0, 0, 8, 32]]), 1, 1 / 8)
    assert transposed.item() != out.item()


def test_whole_image_box_is_global_average_pool_and_cell_box_is_the_cell():
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(2, 5, 4, 6, generator=g, dtype=torch.float64)
    whole = torch.tensor([[0, 0, 32, 48]] * 2)
    torch.testing.assert_close(roi_align(feats, whole, 1, 1 / 8)[..., 0, 0], feats.mean((2, 3)), atol=1e-12, rtol=0)
    # Output grid equal to the map: every bin is exactly one cell.
    torch.testing.assert_close(roi_align(feats, whole, (4, 6), 1 / 8), feats, atol=1e-12, rtol=0)
    cell = torch.tensor([[8, 16, 16, 24], [24, 40, 32, 48]])  # cells (1, 2) and (3, 5)
    out = roi_align(feats, cell, 1, 1 / 8)[..., 0, 0]
    torch.testing.assert_close(out, torch.stack([feats[0, :, 1, 2], feats[1, :, 3, 5]]), atol=1e-12, rtol=0)


def test_anisotropic_spatial_scale():
    g = torch.Generator().manual_seed(4)
    feats = torch.randn(3, 2, 5, 3, generator=g, dtype=torch.float64)  # 40 x 12 image
    boxes = _random_boxes(g, 3, 40, 12, min_side=1)
    out = roi_align(feats, boxes, (2, 2), (5 / 40, 3 / 12))
    ref = reference_roi_align(feats, boxes, (2, 2), (5 / 40, 3 / 12))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_static_max_grid_gives_the_same_result_without_a_sync():
    g = torch.Generator().manual_seed(5)
    feats = torch.randn(8, 3, 4, 4, generator=g, dtype=torch.float64)
    boxes = _random_boxes(g, 8, 32, 32)
    bound = max_sampling_grid(4.0, 1)
    assert bound >= 4
    torch.testing.assert_close(roi_align(feats, boxes, 1, 1 / 8, max_grid=bound), roi_align(feats, boxes, 1, 1 / 8))


def test_empty_box_pools_to_zero():
    feats = torch.ones(2, 3, 4, 4)
    boxes = torch.tensor([[5, 5, 5, 20], [0, 0, 32, 32]])
    out = roi_align(feats, boxes, 1, 1 / 8)[..., 0, 0]
    assert torch.equal(out[0], torch.zeros(3))
    torch.testing.assert_close(out[1], torch.ones(3))


def test_gradient_matches_reference_and_boxes_get_none():
    g = torch.Generator().manual_seed(6)
    feats = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    boxes = torch.tensor([[0, 0, 20, 11], [3, 7, 9, 30], [31, 31, 32, 32]])
    w = torch.randn(3, 2, 2, 2, generator=g, dtype=torch.float64)
    (roi_align(feats, boxes, 2, 1 / 8) * w).sum().backward()
    feats_ref = feats.detach().clone().requires_grad_(True)
    (reference_roi_align(feats_ref, boxes, (2, 2), (1 / 8, 1 / 8)) * w).sum().backward()
    torch.testing.assert_close(feats.grad, feats_ref.grad, atol=1e-10, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_dtypes(dtype):
    g = torch.Generator().manual_seed(7)
    feats = torch.randn(4, 8, 4, 4, generator=g)
    boxes = _random_boxes(g, 4, 32, 32, min_side=2)
    out = roi_align(feats.to(dtype), boxes, 1, 1 / 8)
    assert out.dtype == dtype
    ref = reference_roi_align(feats, boxes, (1, 1), (1 / 8, 1 / 8)).to(torch.float32)
    tol = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 3e-2}[dtype]
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)


def test_bad_input_errors_name_the_argument():
    feats = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="one box per image"):
        roi_align(feats, torch.zeros(3, 4), 1, 0.125)
    with pytest.raises(ValueError, match="boxes must"):
        roi_align(feats, torch.zeros(2, 5), 1, 0.125)
    with pytest.raises(ValueError, match="features must"):
        roi_align(torch.zeros(2, 3, 4), torch.zeros(2, 4), 1, 0.125)
    with pytest.raises(ValueError, match="box_order"):
        roi_align(feats, torch.zeros(2, 4), 1, 0.125, box_order="xy")
    with pytest.raises(ValueError, match="spatial_scale"):
        roi_align(feats, torch.zeros(2, 4), 1, 0.0)
    with pytest.raises(ValueError, match="output_size"):
        roi_align(feats, torch.zeros(2, 4), 0, 0.125)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(8)
    feats = torch.randn(16, 32, 4, 4, generator=g)
    boxes = _random_boxes(g, 16, 32, 32)
    cpu = roi_align(feats, boxes, 1, 1 / 8)
    gpu = roi_align(feats.cuda(), boxes.cuda(), 1, 1 / 8, max_grid=max_sampling_grid(4, 1))
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=1e-5)
