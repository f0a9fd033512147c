"""Property-based checks of KeepAugment's invariants over shapes, dtypes and parameters.

Whatever the batch (size, image shape, dtype), the op and q: the region a selective-cut op
changes scores strictly below its image's tau unless the documented fallback was taken (and
then it is a lowest-scoring candidate); a selective-paste region scores strictly above tau
(or is a highest-scoring one); pixels outside the region are bitwise untouched.
"""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from keepmix import KeepPaste, KeepPlacer
from keepmix.functional.boxes import box_areas, box_masks
from keepmix.functional.regions import box_sums, candidate_positions, candidate_scores
from keepmix.mixing import CutMix
from keepmix.regional import Cutout, RandomErasing

DTYPES = [torch.uint8, torch.float32, torch.float16, torch.bfloat16]


def _images(b: int, h: int, w: int, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    if dtype == torch.uint8:
        return torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=g)
    return torch.rand(b, 3, h, w, generator=g).to(dtype)


def _saliency(b: int, h: int, w: int, kind: str, g: torch.Generator) -> torch.Tensor:
    if kind == "random":
        return torch.rand(b, h, w, generator=g)
    if kind == "sparse":  # mostly zeros: many tied candidate scores
        return (torch.rand(b, h, w, generator=g) > 0.9).float()
    return torch.zeros(b, h, w)  # all zero: the fallback for every image


def _sample(op, x, sal, seed, labels=None):
    """``op.sample_params`` and the KeepSelection its placer made (a spy on ``placer.select``)."""
    seen = []
    select = op.placer.select
    op.placer.select = lambda *a, **k: seen.append(select(*a, **k)) or seen[-1]
    try:
        params = op.sample_params(x, labels, saliency=sal, generator=torch.Generator().manual_seed(seed))
    finally:
        del op.placer.select
    assert len(seen) == 1
    return params, seen[0]


def _box_scores(sel, boxes: torch.Tensor, score: str) -> torch.Tensor:
    sums = box_sums(sel.sat, boxes)
    return sums if score == "sum" else sums / box_areas(boxes).clamp_min(1).double()


def _extreme_scores(sal: torch.Tensor, sizes: torch.Tensor, placement: str, score: str = "sum") -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the minimum and maximum score over its valid candidates (a reference)."""
    from keepmix.functional.regions import summed_area_table

    b, h, w = sal.shape
    cand = candidate_positions(sizes, h, w, placement, 1, batch_size=b, device=sal.device)
    scores = candidate_scores(summed_area_table(sal), cand)
    if score == "mean":
        area = ((cand.y2 - cand.y1)[:, :, None] * (cand.x2 - cand.x1)[:, None, :]).flatten(1)
        scores = scores / area.clamp_min(1).double()
    valid = cand.valid()
    if valid is None:
        return scores.amin(1), scores.amax(1)
    inf = torch.full_like(scores, float("inf"))
    return torch.where(valid, scores, inf).amin(1), torch.where(valid, scores, -inf).amax(1)


shapes = st.tuples(st.integers(1, 5), st.integers(4, 19), st.integers(4, 19))


@settings(max_examples=40, deadline=None)
@given(
    shape=shapes,
    dtype=st.sampled_from(DTYPES),
    op_name=st.sampled_from(["cutout", "erasing", "cutmix"]),
    q=st.floats(0.05, 0.95),
    kind=st.sampled_from(["random", "sparse", "zero"]),
    score=st.sampled_from(["sum", "mean"]),
    whole_boxes=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_keep_cut_region_scores_below_tau_and_outside_is_untouched(shape, dtype, op_name, q, kind, score, whole_boxes, seed):
    b, h, w = shape
    g = torch.Generator().manual_seed(seed)
    x = _images(b, h, w, dtype, g)
    sal = _saliency(b, h, w, kind, g)
    placer = KeepPlacer(q=q, score=score, whole_boxes=whole_boxes)
    keep = {
        "cutout": Cutout(length=max(1, min(h, w) // 2), p=1.0, placer=placer),
        "erasing": RandomErasing(p=1.0, placer=placer),
        "cutmix": CutMix(num_classes=5, placer=placer),
    }[op_name]
    placement = placer.candidates(keep.placement)
    x_before = x.clone()
    labels = torch.arange(b) % 5
    params, sel = _sample(keep, x, sal, seed, labels if op_name == "cutmix" else None)
    assert torch.equal(params.boxes, sel.boxes)
    nonempty = (sel.boxes[:, 2] > sel.boxes[:, 0]) & (sel.boxes[:, 3] > sel.boxes[:, 1])
    if placement == "inside":  # whole boxes: exactly the asked size
        assert torch.equal((sel.boxes[:, 2:] - sel.boxes[:, :2])[nonempty], params.sizes[nonempty])
    box_score = _box_scores(sel, sel.boxes, score)
    lo, _ = _extreme_scores(sal, params.sizes, placement, score)
    ok = torch.where(sel.fallback, box_score == lo, box_score < sel.tau)
    assert bool(ok[nonempty].all()), (box_score, sel.tau, sel.fallback)
    if kind == "zero":
        assert bool(sel.fallback[nonempty].all())
    if op_name == "cutmix":
        out, targets = keep.transform(x, labels, params)
        assert targets.shape == (b, 5) and targets.dtype == torch.float32
    else:
        out = keep.transform(x, None, params)
    assert torch.equal(x, x_before)  # the input is never modified
    outside = ~box_masks(sel.boxes, h, w)[:, None].expand_as(x)
    assert torch.equal(out[outside], x[outside])
    assert out.dtype == x.dtype and out.shape == x.shape


@settings(max_examples=30, deadline=None)
@given(
    shape=shapes,
    dtype=st.sampled_from(DTYPES),
    size_frac=st.floats(0.1, 1.0),
    q=st.floats(0.05, 0.95),
    kind=st.sampled_from(["random", "sparse", "zero"]),
    score=st.sampled_from(["sum", "mean"]),
    whole_boxes=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_keep_paste_region_scores_above_tau_and_holds_the_original(shape, dtype, size_frac, q, kind, score, whole_boxes, seed):
    b, h, w = shape
    g = torch.Generator().manual_seed(seed)
    x = _images(b, h, w, dtype, g)
    sal = _saliency(b, h, w, kind, g)
    size = (max(1, int(h * size_frac)), max(1, int(w * size_frac)))
    keep = KeepPaste(lambda t: t.flip(-1), size=size, q=q, score=score, whole_boxes=whole_boxes)  # any callable
    params, sel = _sample(keep, x, sal, seed)
    assert torch.equal(params.boxes, sel.boxes)
    out = keep.transform(x, None, params)
    box_score = _box_scores(sel, sel.boxes, score)
    sizes = torch.tensor([size] * b)
    placement = keep.placer.candidates("center")
    _, hi = _extreme_scores(sal, sizes, placement, score)
    ok = torch.where(sel.fallback, box_score == hi, box_score > sel.tau)
    assert bool(ok.all())
    if whole_boxes:  # every image keeps exactly h x w original pixels
        assert torch.equal(sel.boxes[:, 2:] - sel.boxes[:, :2], sizes)
    inside = box_masks(sel.boxes, h, w)[:, None].expand_as(x)
    assert torch.equal(out[inside], x[inside])  # the clean region came back
    assert torch.equal(out[~inside], x.flip(-1)[~inside])  # the rest is the augmented image
