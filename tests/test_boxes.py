"""Tests of keepmix.functional.boxes: box geometry against straightforward per-image loops."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from keepmix.functional.boxes import (
    box_areas,
    box_masks,
    centered_boxes,
    check_boxes,
    corner_boxes,
    fill_boxes,
    paste,
)


def random_boxes(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Valid boxes including empty ones and boxes touching the border."""
    g = torch.Generator().manual_seed(seed)
    ya = torch.randint(0, h + 1, (b, 2), generator=g).sort(dim=1).values
    xa = torch.randint(0, w + 1, (b, 2), generator=g).sort(dim=1).values
    return torch.stack([ya[:, 0], xa[:, 0], ya[:, 1], xa[:, 1]], dim=1)


def loop_mask(box: list[int], h: int, w: int) -> torch.Tensor:
    m = torch.zeros(h, w, dtype=torch.bool)
    y1, x1, y2, x2 = box
    for i in range(h):
        for j in range(w):
            m[i, j] = y1 <= i < y2 and x1 <= j < x2
    return m


@pytest.mark.parametrize("h,w", [(7, 7), (5, 9), (1, 6)])
def test_box_masks_match_loop(h, w):
    boxes = random_boxes(12, h, w, seed=h * 31 + w)
    masks = box_masks(boxes, h, w)
    assert masks.shape == (12, h, w) and masks.dtype == torch.bool
    for i in range(12):
        assert torch.equal(masks[i], loop_mask(boxes[i].tolist(), h, w))
    assert torch.equal(masks.sum((1, 2)), box_areas(boxes))


def test_box_areas_empty_and_full():
    boxes = torch.tensor([[0, 0, 0, 5], [2, 3, 2, 3], [0, 0, 4, 5], [1, 1, 3, 4]])
    assert box_areas(boxes).tolist() == [0, 0, 20, 6]
    assert box_areas(boxes).dtype == torch.int64


@given(
    h=st.integers(1, 20),
    w=st.integers(1, 20),
    cy=st.integers(0, 19),
    cx=st.integers(0, 19),
    bh=st.integers(0, 30),
    bw=st.integers(0, 30),
)
@settings(max_examples=60, deadline=None)
def test_centered_boxes_clip_like_reference(h, w, cy, cx, bh, bw):
    cy, cx = cy % h, cx % w
    box = centered_boxes(torch.tensor([cy]), torch.tensor([cx]), torch.tensor([bh]), torch.tensor([bw]), h, w)[0]
    y1 = cy - bh // 2
    x1 = cx - bw // 2
    expected = [max(0, min(h, y1)), max(0, min(w, x1)), max(0, min(h, y1 + bh)), max(0, min(w, x1 + bw))]
    assert box.tolist() == expected
    # Always a valid box; unclipped boxes have exactly the requested size.
    check_boxes(box[None], 1, h, w)
    if y1 >= 0 and x1 >= 0 and y1 + bh <= h and x1 + bw <= w:
        assert (box[2] - box[0]).item() == bh and (box[3] - box[1]).item() == bw


def test_centered_boxes_odd_size_exact_and_border():
    b = centered_boxes(torch.tensor([5, 0, 9]), torch.tensor([5, 0, 9]), torch.tensor([3, 4, 4]), torch.tensor([3, 4, 4]), 10, 10)
    assert b.tolist() == [[4, 4, 7, 7], [0, 0, 2, 2], [7, 7, 10, 10]]


def test_corner_boxes():
    b = corner_boxes(torch.tensor([1, 0]), torch.tensor([2, 3]), torch.tensor([3, 0]), torch.tensor([4, 2]))
    assert b.tolist() == [[1, 2, 4, 6], [0, 3, 0, 5]]
    assert b.dtype == torch.int64


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.bfloat16])
def test_paste_matches_loop_and_keeps_inputs(dtype):
    g = torch.Generator().manual_seed(3)
    dst = (torch.rand(6, 3, 8, 11, generator=g) * 200).to(dtype)
    src = (torch.rand(6, 3, 8, 11, generator=g) * 200).to(dtype)
    dst0, src0 = dst.clone(), src.clone()
    boxes = random_boxes(6, 8, 11, seed=4)
    out = paste(dst, src, boxes)
    expected = dst.clone()
    for i, (y1, x1, y2, x2) in enumerate(boxes.tolist()):
        expected[i, :, y1:y2, x1:x2] = src[i, :, y1:y2, x1:x2]
    assert torch.equal(out, expected) and out.dtype == dtype
    assert torch.equal(dst, dst0) and torch.equal(src, src0)


def test_fill_boxes_scalar_and_per_image():
    x = torch.arange(2 * 2 * 4 * 4, dtype=torch.float32).reshape(2, 2, 4, 4)
    boxes = torch.tensor([[0, 0, 2, 2], [1, 1, 1, 3]])  # second box empty
    out = fill_boxes(x, boxes, -1.0)
    assert (out[0, :, :2, :2] == -1).all() and out[0].eq(-1).sum() == 8
    assert torch.equal(out[1], x[1])
    per = torch.tensor([[7.0, 8.0], [9.0, 9.0]]).view(2, 2, 1, 1)
    out = fill_boxes(x, boxes, per)
    assert torch.equal(out[0, 0, :2, :2], torch.full((2, 2), 7.0))
    assert torch.equal(out[0, 1, :2, :2], torch.full((2, 2), 8.0))


def test_check_boxes_errors():
    ok = torch.tensor([[0, 0, 4, 4]])
    assert check_boxes(ok, 1, 4, 4).dtype == torch.int64
    with pytest.raises(TypeError, match="boxes"):
        check_boxes([[0, 0, 1, 1]], 1, 4, 4)
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        check_boxes(torch.zeros(1, 3, dtype=torch.long), 1, 4, 4)
    with pytest.raises(ValueError, match="rows"):
        check_boxes(ok, 2, 4, 4)
    with pytest.raises(TypeError, match="integer"):
        check_boxes(ok.float(), 1, 4, 4)
    with pytest.raises(ValueError, match="inside"):
        check_boxes(torch.tensor([[0, 0, 5, 4]]), 1, 4, 4)
    with pytest.raises(ValueError, match="inside"):
        check_boxes(torch.tensor([[2, 0, 1, 4]]), 1, 4, 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_box_masks_and_paste_on_cuda():
    boxes = random_boxes(8, 9, 13, seed=5)
    assert torch.equal(box_masks(boxes.cuda(), 9, 13).cpu(), box_masks(boxes, 9, 13))
    dst, src = torch.randn(8, 3, 9, 13), torch.randn(8, 3, 9, 13)
    assert torch.equal(paste(dst.cuda(), src.cuda(), boxes.cuda()).cpu(), paste(dst, src, boxes))


def test_uint8_paste_rounds_float_source_and_rejects_out_of_range():
    x = torch.zeros(1, 1, 2, 2, dtype=torch.uint8)
    box = torch.tensor([[0, 0, 1, 2]])
    out = paste(x, torch.tensor(7.6), box)
    assert out.dtype == torch.uint8 and out[0, 0].tolist() == [[8, 8], [0, 0]]
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        fill_boxes(x, box, 300.0)
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        fill_boxes(x, box, -1.0)
