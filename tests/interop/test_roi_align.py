"""keepmix's RoIAlign against torchvision.ops.roi_align: values and gradients."""

from __future__ import annotations

import pytest
import torch
import torchvision

from keepmix.functional.roi_align import roi_align


def _tv(features, boxes_yxyx, out, scale, sampling_ratio, aligned):
    b = features.shape[0]
    rois = torch.cat([torch.arange(b, dtype=features.dtype)[:, None], boxes_yxyx[:, [1, 0, 3, 2]].to(features.dtype)], 1)
    return torchvision.ops.roi_align(features, rois, out, scale, sampling_ratio, aligned)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.float64, 1e-12)])
@pytest.mark.parametrize("out", [(1, 1), (3, 2), (7, 7)])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_matches_torchvision(dtype, tol, out, sampling_ratio, aligned):
    """Non-square maps, non-square boxes (some reaching past the border), both pixel models."""
    g = torch.Generator().manual_seed(0)
    b, c, h, w = 16, 5, 6, 10
    f = torch.randn(b, c, h, w, generator=g, dtype=dtype, requires_grad=True)
    img_h, img_w = 24, 40
    y = torch.rand(b, 2, generator=g, dtype=dtype).sort(1).values * (img_h + 4) - 2
    x = torch.rand(b, 2, generator=g, dtype=dtype).sort(1).values * (img_w + 4) - 2
    boxes = torch.stack([y[:, 0], x[:, 0], y[:, 1], x[:, 1]], 1)
    scale = h / img_h  # = w / img_w
    got = roi_align(f, boxes, out, scale, sampling_ratio, aligned)
    want = _tv(f, boxes, out, scale, sampling_ratio, aligned)
    torch.testing.assert_close(got, want, rtol=0, atol=tol)
    gout = torch.randn(got.shape, generator=g, dtype=dtype)
    (ga,) = torch.autograd.grad(got, f, gout)
    (gb,) = torch.autograd.grad(want, f, gout)
    torch.testing.assert_close(ga, gb, rtol=0, atol=tol * 10)
    xyxy = roi_align(f, boxes[:, [1, 0, 3, 2]], out, scale, sampling_ratio, aligned, box_order="xyxy")
    torch.testing.assert_close(xyxy, got, rtol=0, atol=0)
