"""Tests for keepmix.functional.regions: SAT, box sums, candidate scores, quantiles, sampling."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from keepmix.functional.boxes import centered_boxes, corner_boxes
from keepmix.functional.regions import (
    box_sums,
    candidate_boxes,
    candidate_positions,
    candidate_scores,
    leading_block_quantile,
    masked_quantile,
    pick_where,
    summed_area_table,
)
from keepmix.sampling import sample_where


def _rand_boxes(b: int, h: int, w: int, n: int, g: torch.Generator) -> torch.Tensor:
    ys = torch.randint(0, h + 1, (b, n, 2), generator=g).sort(-1).values
    xs = torch.randint(0, w + 1, (b, n, 2), generator=g).sort(-1).values
    return torch.stack([ys[..., 0], xs[..., 0], ys[..., 1], xs[..., 1]], -1)


def test_summed_area_table_matches_prefix_sums():
    g = torch.Generator().manual_seed(0)
    s = torch.rand(3, 7, 5, generator=g)
    sat = summed_area_table(s)
    assert sat.shape == (3, 8, 6) and sat.dtype == torch.float64
    assert torch.all(sat[:, 0, :] == 0) and torch.all(sat[:, :, 0] == 0)
    ref = torch.stack([torch.stack([s[:, :i, :j].double().sum((1, 2)) for j in range(6)], 1) for i in range(8)], 1)
    assert float((sat - ref).abs().max()) < 1e-12


def test_box_sums_equal_slice_sums_single_and_many():
    g = torch.Generator().manual_seed(1)
    s = torch.rand(4, 9, 13, generator=g)
    sat = summed_area_table(s)
    boxes = _rand_boxes(4, 9, 13, 6, g)
    sums = box_sums(sat, boxes)
    assert sums.shape == (4, 6)
    for b in range(4):
        for k in range(6):
            y1, x1, y2, x2 = boxes[b, k].tolist()
            ref = s[b, y1:y2, x1:x2].double().sum()
            assert abs(float(sums[b, k]) - float(ref)) < 1e-12
    single = box_sums(sat, boxes[:, 0])
    assert single.shape == (4,) and torch.equal(single, sums[:, 0])


def test_empty_box_sums_to_zero():
    sat = summed_area_table(torch.rand(2, 5, 5))
    boxes = torch.tensor([[2, 1, 2, 4], [0, 3, 5, 3]])
    assert torch.equal(box_sums(sat, boxes), torch.zeros(2, dtype=torch.float64))


def test_float64_table_is_precise_at_224():
    # A small box far from the origin: the float64 table reproduces the direct sum, a float32
    # prefix sum does not (this is why the table is float64).
    g = torch.Generator().manual_seed(2)
    s = torch.rand(1, 224, 224, generator=g)
    box = torch.tensor([[200, 200, 203, 203]])
    ref = float(s[0, 200:203, 200:203].double().sum())
    assert abs(float(box_sums(summed_area_table(s), box)[0]) - ref) < 1e-9
    sat32 = torch.nn.functional.pad(s.cumsum(1).cumsum(2), (1, 0, 1, 0))
    err32 = abs(float((sat32[0, 203, 203] - sat32[0, 200, 203]) - (sat32[0, 203, 200] - sat32[0, 200, 200])) - ref)
    assert err32 > 1e-4


def test_box_sums_bad_shapes():
    sat = summed_area_table(torch.rand(2, 4, 4))
    with pytest.raises(ValueError, match="boxes"):
        box_sums(sat, torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="saliency"):
        summed_area_table(torch.rand(2, 1, 4, 4))


def _brute_scores(s, sizes, placement, stride):
    """Per-image loop over every centre / corner: (list of boxes, list of scores)."""
    out = []
    b, h, w = s.shape
    for i in range(b):
        hh, ww = sizes[i].tolist()
        boxes, scores = [], []
        for r in range(0, h, stride):
            for c in range(0, w, stride):
                if placement == "center":
                    box = centered_boxes(torch.tensor(r), torch.tensor(c), torch.tensor(hh), torch.tensor(ww), h, w).tolist()
                else:
                    if r > h - hh or c > w - ww:
                        continue
                    box = corner_boxes(torch.tensor(r), torch.tensor(c), torch.tensor(hh), torch.tensor(ww)).tolist()
                y1, x1, y2, x2 = box
                boxes.append(box)
                scores.append(float(s[i, y1:y2, x1:x2].double().sum()))
        out.append((boxes, scores))
    return out


@pytest.mark.parametrize("placement", ["center", "inside"])
@pytest.mark.parametrize("stride", [1, 2])
def test_candidate_scores_equal_brute_force_loop(placement, stride):
    g = torch.Generator().manual_seed(3)
    s = torch.rand(3, 9, 11, generator=g)
    sizes = torch.tensor([[4, 5], [9, 1], [3, 11]])
    cand = candidate_positions(sizes, 9, 11, placement, stride)
    scores = candidate_scores(summed_area_table(s), cand)
    valid = cand.valid()
    ref = _brute_scores(s, sizes, placement, stride)
    n = scores.shape[1]
    for i in range(3):
        idx = torch.arange(n) if valid is None else valid[i].nonzero()[:, 0]
        got_boxes = [candidate_boxes(cand, torch.full((3,), int(k)))[i].tolist() for k in idx]
        assert got_boxes == ref[i][0]
        torch.testing.assert_close(scores[i, idx], torch.tensor(ref[i][1], dtype=torch.float64), rtol=0, atol=1e-12)


def test_static_inside_grid_is_exact_and_unmasked():
    cand = candidate_positions((3, 4), 8, 10, "inside", batch_size=2)
    assert cand.shape == (6, 7) and cand.valid() is None
    with pytest.raises(ValueError, match="does not fit"):
        candidate_positions((9, 4), 8, 10, "inside", batch_size=2)
    with pytest.raises(ValueError, match="placement"):
        candidate_positions((3, 4), 8, 10, "corner", batch_size=2)


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 4),
    n=st.integers(1, 30),
    q=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
    ties=st.booleans(),
)
def test_masked_quantile_equals_torch_quantile_per_row(b, n, q, seed, ties):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 4, (b, n), generator=g).double() if ties else torch.rand(b, n, generator=g, dtype=torch.float64)
    valid = torch.rand(b, n, generator=g) < 0.7
    valid[:, 0] = True
    got = masked_quantile(scores, valid, q)
    for i in range(b):
        assert torch.equal(got[i], torch.quantile(scores[i][valid[i]], q))
    # All-valid path (two order statistics by selection, no sort) agrees too.
    got_all = masked_quantile(scores, None, q)
    assert torch.equal(got_all, torch.quantile(scores, q, dim=1))


def test_masked_quantile_row_without_valid_entry_is_nan():
    scores = torch.rand(2, 5, dtype=torch.float64)
    valid = torch.tensor([[True] * 5, [False] * 5])
    out = masked_quantile(scores, valid, 0.6)
    assert torch.isfinite(out[0]) and torch.isnan(out[1])


def test_sample_where_never_picks_false_and_reports_empty_rows():
    g = torch.Generator().manual_seed(4)
    mask = torch.rand(50, 17, generator=g) < 0.2
    mask[3] = False
    idx, found = sample_where(mask, g)
    assert torch.equal(found, mask.any(1))
    assert bool(mask[found].gather(1, idx[found][:, None]).all())
    assert int(idx[3]) == 0 and not bool(found[3])


def test_sample_where_is_uniform_over_true_entries():
    # 20000 draws of one row with 6 True entries: each should get ~1/6 (chi-square, 5 dof;
    # 30 is far beyond the 0.9999 quantile ~25.7, a fixed seed makes it deterministic).
    mask = torch.zeros(20000, 40, dtype=torch.bool)
    true_at = [0, 5, 6, 17, 31, 39]
    mask[:, true_at] = True
    idx, found = sample_where(mask, torch.Generator().manual_seed(5))
    assert bool(found.all())
    counts = torch.bincount(idx, minlength=40).double()
    assert counts[true_at].sum() == 20000
    expected = 20000 / 6
    chi2 = float(((counts[true_at] - expected) ** 2 / expected).sum())
    assert chi2 < 30.0


def test_pick_where_takes_the_rth_true_entry_for_key_u():
    # Row with True at 2, 5, 6, 9 (4 entries): u picks entry floor(4 u); a row without True
    # entries gives index 0 and found False, whatever u.
    mask = torch.zeros(6, 12, dtype=torch.bool)
    mask[:5, [2, 5, 6, 9]] = True
    u = torch.tensor([0.0, 0.24, 0.25, 0.6, 0.999999, 0.7], dtype=torch.float64)
    idx, found = pick_where(mask, u)
    assert idx.tolist() == [2, 2, 5, 6, 9, 0] and found.tolist() == [True] * 5 + [False]
    # sample_where is pick_where with one float64 uniform per row from the generator
    g = torch.Generator().manual_seed(3)
    keys = torch.rand(6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    a, fa = sample_where(mask, g)
    b, fb = pick_where(mask, keys)
    assert torch.equal(a, b) and torch.equal(fa, fb)
    with pytest.raises(ValueError, match="bool"):
        pick_where(mask.long(), u)


def test_sample_where_reproducible_with_seed():
    mask = torch.rand(8, 100, generator=torch.Generator().manual_seed(6)) < 0.5
    a, _ = sample_where(mask, torch.Generator().manual_seed(7))
    b, _ = sample_where(mask, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_regions_on_cuda_match_cpu():
    g = torch.Generator().manual_seed(8)
    s = torch.rand(4, 20, 24, generator=g)
    sizes = torch.tensor([[5, 7], [20, 3], [1, 1], [10, 10]])
    cand = candidate_positions(sizes, 20, 24, "center")
    cpu = candidate_scores(summed_area_table(s), cand)
    cand_gpu = candidate_positions(sizes.cuda(), 20, 24, "center")
    gpu = candidate_scores(summed_area_table(s.cuda()), cand_gpu)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-10)
    torch.testing.assert_close(masked_quantile(gpu, None, 0.6).cpu(), masked_quantile(cpu, None, 0.6))
    idx, found = sample_where(gpu < 5.0)
    assert idx.device.type == "cuda" and bool((found == (cpu < 5.0).any(1).cuda()).all())


@pytest.mark.parametrize("placement", ["center", "inside"])
@pytest.mark.parametrize("stride", [1, 3])
@pytest.mark.parametrize("size", [(1, 1), (4, 7), (9, 11), (9, 1), (0, 0)])
def test_static_slices_equal_gathered_scores_bit_for_bit(placement, stride, size):
    # A static size scores from strided slices of the table; the per-image path gathers. Same
    # arithmetic, so the same float64 values exactly, and box_sums of each box equals its score.
    g = torch.Generator().manual_seed(9)
    s = torch.rand(3, 9, 11, generator=g)
    sat = summed_area_table(s)
    static = candidate_positions(size, 9, 11, placement, stride, batch_size=3)
    assert static.edges is not None
    gathered = type(static)(static.y1, static.y2, static.x1, static.x2, None, None)  # no edges: gathers
    fast, ref = candidate_scores(sat, static), candidate_scores(sat, gathered)
    assert torch.equal(fast, ref)
    index = torch.arange(fast.shape[1]).expand(3, -1)
    for k in range(fast.shape[1]):
        boxes = candidate_boxes(static, index[:, k])
        assert torch.equal(box_sums(sat, boxes), fast[:, k])


def test_static_center_edges_match_per_image_tensor_sizes():
    # Oversized and odd sizes: the host-computed clipped edges equal the tensor path's.
    for size in [(3, 4), (20, 30), (8, 1)]:
        static = candidate_positions(size, 7, 9, "center", 2, batch_size=2)
        per_image = candidate_positions(torch.tensor([size, size]), 7, 9, "center", 2)
        for name in ("y1", "y2", "x1", "x2"):
            assert torch.equal(getattr(static, name), getattr(per_image, name))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_masked_quantile_numpy_selection_equals_kthvalue(dtype):
    # The CPU path selects with numpy; the order statistics must be the torch ones exactly.
    g = torch.Generator().manual_seed(10)
    scores = torch.randint(0, 50, (6, 301), generator=g).to(dtype) / 7  # many ties
    for q in (0.0, 0.3, 0.6, 0.999, 1.0):
        rank = q * 300
        lo = int(rank)
        below = scores.kthvalue(lo + 1, 1).values
        above = scores.kthvalue(min(lo + 2, 301), 1).values
        ref = torch.lerp(below, above, torch.full_like(below, rank - lo))
        assert torch.equal(masked_quantile(scores, None, q), ref)
    valid = torch.rand(6, 301, generator=g) < 0.5
    got = masked_quantile(scores, valid, 0.6)
    ref = torch.stack([torch.quantile(scores[i][valid[i]], 0.6) for i in range(6)])
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    assert scores.dtype == dtype and torch.equal(scores, scores.clone())  # the input is not reordered


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 4),
    hc=st.integers(1, 7),
    wc=st.integers(1, 7),
    q=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
    ties=st.booleans(),
    dtype=st.sampled_from([torch.float64, torch.float32]),
)
def test_leading_block_quantile_equals_masked_and_torch_quantile(b, hc, wc, q, seed, ties, dtype):
    # The per-row numpy path for "inside" corners of per-image sizes: each row's valid
    # entries are the leading (rows, cols) block of its grid, possibly empty (NaN).
    g = torch.Generator().manual_seed(seed)
    n = hc * wc
    scores = torch.randint(0, 4, (b, n), generator=g).to(dtype) if ties else torch.rand(b, n, generator=g).to(dtype)
    rows = torch.randint(0, hc + 1, (b,), generator=g)
    cols = torch.randint(0, wc + 1, (b,), generator=g)
    valid = ((torch.arange(hc) < rows[:, None])[:, :, None] & (torch.arange(wc) < cols[:, None])[:, None, :]).flatten(1)
    before = scores.clone()
    got = leading_block_quantile(scores, wc, rows, cols, q)
    assert torch.equal(scores, before)  # the caller's scores are not reordered
    masked = masked_quantile(scores, valid, q)
    assert torch.equal(got.isnan(), ~valid.any(1)) and torch.equal(masked.isnan(), ~valid.any(1))
    for i in range(b):
        if valid[i].any():
            assert torch.equal(got[i], torch.quantile(scores[i][valid[i]], q))
            assert torch.equal(got[i], masked[i])


def test_masked_quantile_all_rows_without_valid_entries_is_nan():
    out = masked_quantile(torch.rand(3, 4, dtype=torch.float64), torch.zeros(3, 4, dtype=torch.bool), 0.6)
    assert bool(out.isnan().all())
