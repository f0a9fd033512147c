"""Tests for keepmix.keep: selective-cut / selective-paste and the ready-made Keep* ops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from keepmix.base import RegionOp, RegionParams, check_saliency
from keepmix.functional import selection as S
from keepmix.functional.boxes import box_areas, box_masks
from keepmix.functional.mixing import area_lambda
from keepmix.functional.regions import (
    box_sums,
    candidate_positions,
    candidate_scores,
    summed_area_table,
)
from keepmix.functional.selection import KeepSelection
from keepmix.keep import (
    KeepAutoAugment,
    KeepCutMix,
    KeepCutout,
    KeepPaste,
    KeepRandAugment,
    KeepRandomErasing,
)
from keepmix.mixing import CutMix, saliency_patch_weight
from keepmix.placers import KeepPlacer, UniformPlacer
from keepmix.regional import Cutout, RandomErasing
from keepmix.saliency import Saliency
from keepmix.sampling import selection_keys


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def select_boxes(saliency, sizes, q=0.6, placement="center", side="below", stride=1, *, generator=None, score="sum"):
    """KeepAugment's random selection: ``KeepPlacer(...).select`` (keys drawn from ``generator``)."""
    return KeepPlacer(q=q, score=score, candidate_stride=stride).select(saliency, sizes, placement, side, generator=generator)


def _sample(op, x, sal, generator, labels=None):
    """``op.sample_params`` and the KeepSelection its placer made on the way (a spy on
    ``op.placer.select``: the draws and the params are untouched)."""
    seen = []
    select = op.placer.select

    def spy(*args, **kwargs):
        seen.append(select(*args, **kwargs))
        return seen[-1]

    op.placer.select = spy
    try:
        params = op.sample_params(x, labels, saliency=sal, generator=generator)
    finally:
        del op.placer.select
    assert len(seen) == 1 and isinstance(seen[0], KeepSelection)
    return params, seen[0]


@pytest.fixture()
def batch(cifar_uint8, cifar_labels):
    """16 real CIFAR images as normalised float, their labels and a smooth positive saliency."""
    x = (cifar_uint8[:16].float() / 255.0 - 0.5) / 0.25
    # Edge energy as a stand-in saliency: real image structure, reproducible, no model needed.
    gray = x.mean(1, keepdim=True)
    sal = (gray - F.avg_pool2d(gray, 5, 1, 2, count_include_pad=False)).abs()[:, 0]
    return x, cifar_labels[:16], sal


class PaintBox(RegionOp):
    """A user's own region op: per-image random sizes, placed fully inside, painted with -7."""

    placement = "inside"

    def make_params(self, images, labels, saliency, generator):
        b, _, h, w = images.shape
        hs = torch.randint(1, h + 1, (b,), generator=generator)
        ws = torch.randint(1, w + 1, (b,), generator=generator)
        sizes = torch.stack([hs, ws], 1)
        return RegionParams(boxes=self.place(sizes, images, saliency, generator), sizes=sizes)

    def apply_params(self, images, labels, params):
        mask = box_masks(params.boxes, *images.shape[-2:])[:, None]
        return torch.where(mask, torch.full_like(images, -7.0), images), labels


def _scores(sal: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    return box_sums(summed_area_table(sal), boxes)


def test_keep_cutout_boxes_score_below_tau_and_only_the_box_changes(batch):
    x, y, sal = batch
    x0 = x.clone()
    op = KeepCutout(length=16, q=0.6)
    assert isinstance(op, Cutout) and isinstance(op.placer, KeepPlacer) and op.placer.q == 0.6
    params, sel = _sample(op, x, sal, _gen(0))
    out = op.transform(x, None, params)
    # Cutout with p = 1 draws nothing before the placer: its keys are the generator's first draws.
    assert torch.equal(op.placer.select(sal, params.sizes, "center", generator=_gen(0)).boxes, params.boxes)
    assert torch.equal(x, x0)  # input untouched
    assert torch.equal(params.boxes, sel.boxes)
    assert bool((_scores(sal, sel.boxes) < sel.tau).all()) and not bool(sel.fallback.any())
    # tau recomputed independently: the 0.6-quantile of every centre's clipped-box score.
    cand = candidate_positions(params.sizes, 32, 32, "center")
    ref_tau = torch.quantile(candidate_scores(summed_area_table(sal), cand), 0.6, dim=1)
    assert torch.equal(sel.tau, ref_tau)
    mask = box_masks(sel.boxes, 32, 32)[:, None].expand_as(x)
    assert torch.equal(out[~mask], x[~mask]) and bool((out[mask] == 0).all())
    # Same as the plain op applied to KeepAugment's boxes (the placer changes where, not what).
    assert torch.equal(out, Cutout(16).transform(x, None, params))
    # forward == sample_params + apply for the same seed; KeepCutout == Cutout(placer=KeepPlacer).
    assert torch.equal(op(x, saliency=sal, generator=_gen(0)), out)
    assert torch.equal(Cutout(16, placer=KeepPlacer(q=0.6))(x, saliency=sal, generator=_gen(0)), out)
    # with labels: (images, the same labels object)
    out_l, same = op(x, y, saliency=sal, generator=_gen(0))
    assert same is y and torch.equal(out_l, out)


def test_keep_random_erasing_boxes_inside_sizes_kept_and_below_tau(batch):
    x, _, sal = batch
    op = KeepRandomErasing(p=1.0)
    plain = RandomErasing(p=1.0).sample_params(x, generator=_gen(1))
    params, sel = _sample(op, x, sal, _gen(1))
    assert torch.equal(params.sizes, plain.sizes)
    hw = torch.stack([sel.boxes[:, 2] - sel.boxes[:, 0], sel.boxes[:, 3] - sel.boxes[:, 1]], 1)
    assert torch.equal(hw, params.sizes)
    assert bool((sel.boxes >= 0).all()) and bool((sel.boxes[:, 2:] <= 32).all())
    assert bool((_scores(sal, sel.boxes) < sel.tau).all())
    # tau is the quantile over the positions that keep this image's box inside.
    for i in range(4):
        h, w = params.sizes[i].tolist()
        cand = candidate_positions((h, w), 32, 32, "inside", batch_size=1)
        ref = torch.quantile(candidate_scores(summed_area_table(sal[i : i + 1]), cand)[0], 0.6)
        assert torch.equal(sel.tau[i], ref)


def test_user_region_op(batch):
    # A user's RegionOp takes any placer: KeepPlacer makes it a selective-cut op.
    x, _, sal = batch
    op = PaintBox(placer=KeepPlacer(q=0.3))
    out = op(x, saliency=sal, generator=_gen(2))
    params, sel = _sample(op, x, sal, _gen(2))
    assert torch.equal(params.boxes, sel.boxes)
    assert torch.equal(out, PaintBox().transform(x, None, params))
    assert torch.equal(sel.boxes[:, 2:] - sel.boxes[:, :2], params.sizes)  # "inside": whole boxes
    passed = ~sel.fallback
    assert bool(passed.any())
    assert bool((_scores(sal, sel.boxes)[passed] < sel.tau[passed]).all())
    # the sizes are the op's own draws, whatever the placer
    assert torch.equal(params.sizes, PaintBox().sample_params(x, generator=_gen(2)).sizes)


def test_skipped_images_keep_empty_boxes(batch):
    x, _, sal = batch
    op = KeepCutout(length=8, p=0.5)
    params, sel = _sample(op, x, sal, _gen(3))
    skipped = params.sizes[:, 0] == 0
    assert bool(skipped.any()) and bool((~skipped).any())
    area = (sel.boxes[:, 2] - sel.boxes[:, 0]) * (sel.boxes[:, 3] - sel.boxes[:, 1])
    assert bool((area[skipped] == 0).all()) and bool((area[~skipped] > 0).all())
    assert not bool(sel.fallback[skipped].any())
    out = op.transform(x, None, params)
    assert torch.equal(out[skipped], x[skipped])


def test_selected_positions_are_uniform_over_the_passing_set():
    # One image repeated 6000 times: the draws must cover exactly the candidates with score <
    # tau, each about equally often (the distribution of the paper's "sample until I < tau").
    sal = torch.rand(1, 8, 9, generator=_gen(4)).expand(6000, 8, 9).contiguous()
    sizes = torch.tensor([[3, 2]]).expand(6000, 2)
    sel = select_boxes(sal, sizes, q=0.6, placement="inside", generator=_gen(5))
    cand = candidate_positions((3, 2), 8, 9, "inside", batch_size=1)  # 6 x 8 corners
    scores = candidate_scores(summed_area_table(sal[:1]), cand)[0]
    passing = scores < sel.tau[0]
    counts = torch.bincount(sel.boxes[:, 0] * 8 + sel.boxes[:, 1], minlength=48).double()
    assert counts.numel() == 48 and bool((counts[~passing] == 0).all())
    n = int(passing.sum())
    assert n == 29  # floor(0.6 * 47) + 1 candidates lie strictly below the 0.6-quantile
    expected = 6000 / n
    chi2 = float(((counts[passing] - expected) ** 2 / expected).sum())
    assert chi2 < 60.0  # dof 28: the 0.9995 quantile is ~58; deterministic with the seed


def test_fallback_with_constant_saliency_is_uniform_over_all_positions():
    # All-inside boxes on a constant map all score the same: nothing is below tau.
    sel = select_boxes(torch.full((3000, 6, 6), 0.5), (2, 3), placement="inside", generator=_gen(6))
    assert bool(sel.fallback.all())
    counts = torch.bincount(sel.boxes[:, 0] * 4 + sel.boxes[:, 1], minlength=20).double()
    assert counts.numel() == 20 and bool((counts > 100).all())  # every one of the 5 x 4 corners
    # An all-zero map with Cutout's clipped boxes: every centre scores 0.
    x = torch.randn(2000, 1, 5, 5)
    sal = torch.zeros(2000, 5, 5)
    op = KeepCutout(length=5)
    params, sel = _sample(op, x, sal, _gen(6))
    assert bool(sel.fallback.all())
    # Centre = every pixel, each ~1/25 of the time: the unmodified Cutout distribution.
    y1, x1, y2, x2 = sel.boxes.unbind(1)
    centre = torch.where(y1 > 0, y1 + 2, y2 - 3) * 5 + torch.where(x1 > 0, x1 + 2, x2 - 3)
    counts = torch.bincount(centre, minlength=25).double()
    assert counts.numel() == 25 and bool((counts > 40).all())


def test_fallback_takes_the_lowest_scoring_candidates():
    # Scores of 1x1 regions = the map itself: 0 on 24 pixels, 1 on one. tau (q = 0.6) is 0, so
    # nothing is strictly below: the fallback picks among the zeros, never the salient pixel.
    sal = torch.zeros(500, 5, 5)
    sal[:, 2, 2] = 1.0
    sel = select_boxes(sal, torch.ones(500, 2, dtype=torch.long), q=0.6, generator=_gen(7))
    assert bool(sel.fallback.all()) and bool((sel.tau == 0).all())
    assert not bool(((sel.boxes[:, 0] == 2) & (sel.boxes[:, 1] == 2)).any())
    # Paste side: nothing strictly above tau = 0? No: the 1 is above, so no fallback there.
    up = select_boxes(sal, (1, 1), q=0.6, placement="inside", side="above", generator=_gen(7))
    assert not bool(up.fallback.any()) and bool((up.boxes[:, :2] == 2).all())


def test_keep_paste_keeps_the_salient_region_and_augments_the_rest(batch):
    x, y, sal = batch
    op = KeepPaste(lambda t: -t, size=16, q=0.6)
    out = op(x, saliency=sal, generator=_gen(8))
    params, sel = _sample(op, x, sal, _gen(8))
    assert torch.equal(params.boxes, sel.boxes) and params.inner is None  # a plain callable has no params
    assert torch.equal(op.transform(x, None, params), out)
    out_l, same = op(x, y, saliency=sal, generator=_gen(8))
    assert same is y and torch.equal(out_l, out)
    assert bool((_scores(sal, sel.boxes) > sel.tau).all())
    assert bool(((sel.boxes[:, 2] - sel.boxes[:, 0]) == 16).all()) and bool(((sel.boxes[:, 3] - sel.boxes[:, 1]) == 16).all())
    mask = box_masks(sel.boxes, 32, 32)[:, None].expand_as(x)
    assert torch.equal(out[mask], x[mask]) and torch.equal(out[~mask], -x[~mask])
    # tau over all (32 - 16 + 1)^2 corners.
    cand = candidate_positions((16, 16), 32, 32, "inside", batch_size=16)
    assert torch.equal(sel.tau, torch.quantile(candidate_scores(summed_area_table(sal), cand), 0.6, dim=1))


def test_keep_paste_draws_a_keepmix_transform_and_is_reproducible(batch):
    # A keepmix op as the transform: its params are drawn in sample_params (after the kept
    # regions) from the same generator, so the whole op is reproducible and apply is pure.
    x, _, sal = batch
    op = KeepPaste(RandomErasing(p=1.0, value="random_pixel"), size=(8, 12), whole_boxes=False)
    a = op(x, saliency=sal, generator=_gen(9))
    b = op(x, saliency=sal, generator=_gen(9))
    assert torch.equal(a, b) and not torch.equal(a, op(x, saliency=sal, generator=_gen(10)))
    params = op.sample_params(x, saliency=sal, generator=_gen(9))
    assert torch.equal(op.transform(x, None, params), a) and torch.equal(op.transform(x, None, params), a)
    # draw order: the kept regions (the placer's keys), then the transform's params
    g = _gen(9)
    sel = op.placer.select(sal, (8, 12), "center", "above", generator=g)
    inner = RandomErasing(p=1.0, value="random_pixel").sample_params(x, generator=g)
    assert torch.equal(sel.boxes, params.boxes)
    for field in ("boxes", "sizes", "values"):
        assert torch.equal(getattr(params.inner, field), getattr(inner, field))
    augmented = RandomErasing(p=1.0, value="random_pixel").transform(x, None, inner)
    mask = box_masks(params.boxes, 32, 32)[:, None].expand_as(x)
    assert torch.equal(a[mask], x[mask]) and torch.equal(a[~mask], augmented[~mask])
    # whole_boxes=False: centred candidates, clipped at the border (never larger than asked)
    hw = params.boxes[:, 2:] - params.boxes[:, :2]
    assert bool((hw <= torch.tensor([8, 12])).all()) and bool((hw > 0).all())
    # a plain callable is called with the batch only (no generator)
    seen = []
    KeepPaste(lambda t: seen.append(t) or t.flip(-1), size=8)(x, saliency=sal, generator=_gen(9))
    assert len(seen) == 1 and torch.equal(seen[0], x)


@pytest.mark.parametrize("make", [lambda: KeepAutoAugment("cifar10"), lambda: KeepRandAugment(2, 14)])
def test_keep_policies_on_real_uint8_images(cifar_uint8, make):
    x = cifar_uint8[:16]
    sal = torch.rand(16, 32, 32, generator=_gen(20))
    op = make()
    out = op(x, saliency=sal, generator=_gen(21))
    params, sel = _sample(op, x, sal, _gen(21))
    assert op.raw_pixels and op.inner.raw_pixels
    # same draw order as forward: the kept regions first, then the policy's params
    g = _gen(21)
    op.placer.select(sal, op.size, "center", "above", generator=g)
    inner = op.inner.sample_params(x, generator=g)
    assert torch.equal(inner.ops, params.inner.ops) and torch.equal(inner.signs, params.inner.signs)
    augmented = op.inner.transform(x, None, params.inner)
    assert torch.equal(out, op.transform(x, None, params))
    assert bool((_scores(sal, sel.boxes) > sel.tau).all())
    mask = box_masks(sel.boxes, 32, 32)[:, None].expand_as(x)
    assert torch.equal(out[mask], x[mask]) and torch.equal(out[~mask], augmented[~mask])
    assert out.dtype == torch.uint8 and not torch.equal(out, x)


def test_keep_cutmix_lambda_is_exact_area_and_box_below_tau(batch):
    x, y, sal = batch
    op = KeepCutMix(num_classes=10)
    images, targets = op(x, y, saliency=sal, generator=_gen(11))
    params, sel = _sample(op, x, sal, _gen(11), labels=y)
    assert torch.equal(params.boxes, sel.boxes)
    imgs2, t2 = op.transform(x, y, params)
    assert torch.equal(imgs2, images) and torch.equal(t2, targets)
    assert bool((_scores(sal, sel.boxes) < sel.tau).all())
    lam = area_lambda(params.boxes, 32, 32)
    onehot = F.one_hot(y, 10).float()
    ref = lam[:, None] * onehot + (1 - lam[:, None]) * onehot[params.perm]
    torch.testing.assert_close(targets, ref, rtol=0, atol=1e-6)
    mask = box_masks(params.boxes, 32, 32)[:, None].expand_as(x)
    assert torch.equal(images[mask], x[params.perm][mask]) and torch.equal(images[~mask], x[~mask])


def test_keep_cutmix_saliency_label_weight(batch):
    x, y, sal = batch
    op = KeepCutMix(num_classes=10, label_weight="saliency")
    _, targets = op(x, y, saliency=sal, generator=_gen(12))
    params, sel = _sample(op, x, sal, _gen(12), labels=y)
    onehot = F.one_hot(y, 10).float()
    for i in range(16):
        j = int(params.perm[i])
        y1, x1, y2, x2 = params.boxes[i].tolist()
        wgt = float(sal[j, y1:y2, x1:x2].double().sum() / sal[j].double().sum())
        ref = (1 - wgt) * onehot[i] + wgt * onehot[j]
        torch.testing.assert_close(targets[i], ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(params.patch_weight, saliency_patch_weight(sal, params.boxes, params.perm))
    # An all-zero partner map falls back to the area share.
    zero = torch.zeros_like(sal)
    zp = op.sample_params(x, y, saliency=zero, generator=_gen(0))
    torch.testing.assert_close(zp.patch_weight, 1 - area_lambda(zp.boxes, 32, 32))
    boxes = select_boxes(zero, params.sizes, generator=_gen(0)).boxes
    torch.testing.assert_close(saliency_patch_weight(zero, boxes, params.perm), 1 - area_lambda(boxes, 32, 32))
    # label_weight="saliency" needs a map even with a uniform placer, and weighs the same way
    plain = CutMix(num_classes=10, label_weight="saliency")
    with pytest.raises(ValueError, match="needs a saliency map"):
        plain(x, y)
    pp = plain.sample_params(x, y, saliency=sal, generator=_gen(12))
    torch.testing.assert_close(pp.patch_weight, saliency_patch_weight(sal, pp.boxes, pp.perm))


def test_saliency_fn_path_equals_precomputed_map(batch):
    x, y, _ = batch
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)
    )
    sal_fn = Saliency(net)
    op = KeepCutout(16, saliency_fn=sal_fn)
    assert not any(True for _ in op.parameters())  # the model is not a submodule
    a, same = op(x, y, generator=_gen(13))
    assert same is y  # labels come back unchanged (they only feed the saliency)
    b = KeepCutout(16)(x, saliency=sal_fn(x, y), generator=_gen(13))
    assert torch.equal(a, b)
    # an explicit saliency= wins over saliency_fn
    other = torch.rand(16, 32, 32, generator=_gen(40))
    assert torch.equal(op(x, saliency=other, generator=_gen(13)), KeepCutout(16)(x, saliency=other, generator=_gen(13)))
    # label-free mode works too
    assert op(x, generator=_gen(13)).shape == x.shape


def test_uint8_and_non_square_images():
    g = _gen(14)
    x = torch.randint(0, 256, (6, 3, 20, 36), dtype=torch.uint8, generator=g)
    sal = torch.rand(6, 20, 36, generator=g)
    out = KeepCutout(length=12, fill=0)(x, saliency=sal, generator=g)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    params, sel = _sample(KeepRandomErasing(p=1.0, value=3), x, sal, g)
    assert bool((_scores(sal, sel.boxes) < sel.tau).all())
    out = KeepPaste(lambda t: 255 - t, size=(5, 9))(x, saliency=sal, generator=g)
    assert out.dtype == torch.uint8


def test_candidate_stride_restricts_positions_to_the_grid(batch):
    x, _, sal = batch
    op = KeepCutout(length=16, candidate_stride=4)
    _, sel = _sample(op, x, sal, _gen(15))
    centre_y = sel.boxes[:, 2] - 8  # unclipped far edge = centre + 8 when not clipped below
    ok = sel.boxes[:, 2] < 32
    assert bool((centre_y[ok] % 4 == 0).all())
    assert bool((_scores(sal, sel.boxes) < sel.tau).all())


def test_bad_input(batch):
    x, y, sal = batch
    with pytest.raises(ValueError, match="q must"):
        KeepCutout(q=1.0)
    with pytest.raises(ValueError, match="q must"):
        KeepPaste(lambda t: t, q=0.0)
    with pytest.raises(ValueError, match="larger than"):
        KeepPaste(lambda t: t, size=40)(x, saliency=sal)
    with pytest.raises(ValueError, match="does not fit"):
        select_boxes(sal, torch.full((16, 2), 33), placement="inside")
    bad = sal.clone()
    bad[3, 4, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        KeepCutout()(x, saliency=bad)
    bad[3, 4, 5] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite"):
        KeepPaste(lambda t: t)(x, saliency=bad)
    with pytest.raises(ValueError, match=r"shape \(B, H, W\)"):
        KeepCutout()(x, saliency=sal[:, :16])
    with pytest.raises(ValueError, match=r"shape \(B, H, W\)"):
        KeepCutout()(x, saliency=sal[:, None])
    with pytest.raises(ValueError, match="device"):
        check_saliency(sal.to("meta"), x)
    with pytest.raises(TypeError, match="floating point"):
        KeepCutout()(x, saliency=(sal > 0.5).long())
    with pytest.raises(ValueError, match="needs a saliency map"):
        KeepCutout()(x)
    with pytest.raises(ValueError, match="labels"):
        KeepCutMix(num_classes=10)(x, saliency=sal)
    with pytest.raises(TypeError, match="placer must be a keepmix Placer"):
        Cutout(8, placer=lambda t: t)
    with pytest.raises(TypeError, match="mixes them"):
        KeepPaste(CutMix(num_classes=10))
    with pytest.raises(ValueError, match="score"):
        KeepPlacer(score="max")
    with pytest.raises(TypeError, match="whole_boxes"):
        KeepPlacer(whole_boxes=1)
    with pytest.raises(ValueError, match="label_weight"):
        KeepCutMix(num_classes=10, label_weight="mass")
    with pytest.raises(ValueError, match="transform must return"):
        KeepPaste(lambda t: t[:, :1])(x, saliency=sal)
    with pytest.raises(ValueError, match="candidate_stride"):
        KeepCutout(candidate_stride=0)


def _rejection_loop(x: torch.Tensor, sal: torch.Tensor, length: int, q: float, g: torch.Generator) -> torch.Tensor:
    """The unofficial code's way: per image, score, quantile, then `while True` until I < tau."""
    out = x.clone()
    b, _, h, w = x.shape
    for i in range(b):
        cand = candidate_positions(torch.tensor([[length, length]]), h, w, "center")
        sat = summed_area_table(sal[i : i + 1])
        tau = torch.quantile(candidate_scores(sat, cand), q, dim=1)[0]
        while True:
            cy, cx = (int(v) for v in torch.randint(0, h, (2,), generator=g))
            y1, x1 = max(cy - length // 2, 0), max(cx - length // 2, 0)
            y2, x2 = min(cy - length // 2 + length, h), min(cx - length // 2 + length, w)
            if float(sal[i, y1:y2, x1:x2].double().sum()) < float(tau):
                break
        out[i, :, y1:y2, x1:x2] = 0
    return out


def test_vectorised_matches_rejection_loop_statistics(batch):
    # Same distribution of cut positions as the loop: compare the mean saliency mass removed.
    x, _, sal = batch
    xs, ss = x.repeat(8, 1, 1, 1), sal.repeat(8, 1, 1)
    loop = _rejection_loop(xs, ss, 16, 0.6, _gen(16))
    vec = KeepCutout(16)(xs, saliency=ss, generator=_gen(17))
    kept_loop = ((loop != 0).all(1).float() * ss).sum((1, 2)).mean()
    kept_vec = ((vec != 0).all(1).float() * ss).sum((1, 2)).mean()
    assert abs(float(kept_loop - kept_vec)) / float(kept_loop) < 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_keep_ops_on_cuda(batch):
    x, y, sal = (t.cuda() for t in batch)
    g = torch.Generator(device="cuda").manual_seed(0)
    out = KeepCutout(16)(x, saliency=sal, generator=g)
    assert out.device.type == "cuda" and out.dtype == x.dtype
    params, sel = _sample(KeepCutout(16), x, sal, torch.Generator(device="cuda").manual_seed(1))
    assert bool((_scores(sal, sel.boxes) < sel.tau).all())
    imgs, targets = KeepCutMix(num_classes=10, label_weight="saliency")(x, y, saliency=sal, generator=g)
    assert imgs.device.type == "cuda" and targets.dtype == torch.float32
    pasted = KeepPaste(lambda t: -t)(x.half(), saliency=sal, generator=g)
    assert pasted.dtype == torch.float16
    # same seed, same output on the device
    a = KeepRandomErasing(p=1.0)(x, saliency=sal, generator=torch.Generator(device="cuda").manual_seed(2))
    b = KeepRandomErasing(p=1.0)(x, saliency=sal, generator=torch.Generator(device="cuda").manual_seed(2))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="device"):
        KeepCutout()(x, saliency=sal.cpu())


def _reference_selection(sal, sizes, q, placement, side):
    """Per image: all candidate scores, torch.quantile, and how many candidates pass."""
    out = []
    for i in range(sal.shape[0]):
        cand = candidate_positions(sizes[i : i + 1], *sal.shape[1:], placement)
        scores = candidate_scores(summed_area_table(sal[i : i + 1]), cand)[0]
        valid = cand.valid()
        if valid is not None:
            scores = scores[valid[0]]
        tau = torch.quantile(scores, q)
        passing = scores < tau if side == "below" else scores > tau
        out.append((tau, int(passing.sum())))
    return out


@pytest.mark.parametrize("placement,side", [("center", "below"), ("inside", "above"), ("inside", "below")])
def test_fast_selection_matches_per_image_reference(batch, placement, side):
    # Shared size (slices), per-image sizes (gathers) and the chunked scan all give torch's
    # exact quantile per image and a box from the passing set, its score bit-exact from the SAT.
    x, _, sal = batch
    g = _gen(20)
    for sizes in (torch.full((16, 2), 9), torch.randint(1, 20, (16, 2), generator=g)):
        sel = select_boxes(sal, sizes, 0.6, placement, side, generator=_gen(21))
        ref = _reference_selection(sal, sizes, 0.6, placement, side)
        for i, (tau, n_pass) in enumerate(ref):
            assert torch.equal(sel.tau[i], tau)
            assert bool(sel.fallback[i]) == (n_pass == 0)
        score = box_sums(sel.sat, sel.boxes)
        assert torch.equal(score, _scores(sal, sel.boxes))
        if placement == "inside":
            assert torch.equal(sel.boxes[:, 2:] - sel.boxes[:, :2], sizes)
        ok = score < sel.tau if side == "below" else score > sel.tau
        assert bool(ok[~sel.fallback].all())


def test_chunking_does_not_change_the_selection(batch, monkeypatch):
    import keepmix.functional.selection as K

    _, _, sal = batch
    sal = sal.repeat(3, 1, 1)
    sizes = torch.randint(1, 16, (48, 2), generator=_gen(22))
    whole = select_boxes(sal, sizes, 0.6, "center", "below", generator=_gen(23))
    monkeypatch.setattr(K, "_CHUNK_BYTES", 1)
    monkeypatch.setattr(K, "_MIN_CHUNK_ROWS", 5)  # chunks of 5 rows, the last one short
    chunked = select_boxes(sal, sizes, 0.6, "center", "below", generator=_gen(23))
    for a, b in zip((whole.boxes, whole.tau, whole.fallback), (chunked.boxes, chunked.tau, chunked.fallback), strict=True):
        assert torch.equal(a, b)


def test_rare_passing_candidates_take_the_exact_path():
    # One salient pixel in 32 x 32: of the 1024 1x1 candidates only one is above tau, so the
    # random draws almost always miss it and the exact path must find it, every time.
    sal = torch.zeros(200, 32, 32)
    sal[:, 5, 7] = 1.0
    sel = select_boxes(sal, (1, 1), 0.6, "inside", "above", generator=_gen(24))
    assert not bool(sel.fallback.any())
    assert bool((sel.boxes == torch.tensor([5, 7, 6, 8])).all())
    # Per-image sizes, mixed with empty ones: those keep an empty box and tau 0, never a fallback.
    sizes = torch.tensor([[1, 1], [0, 0], [2, 2], [0, 3]]).repeat(50, 1)
    sel = select_boxes(sal, sizes, 0.6, "center", "above", generator=_gen(25))
    empty = (sizes == 0).any(1)
    area = (sel.boxes[:, 2] - sel.boxes[:, 0]) * (sel.boxes[:, 3] - sel.boxes[:, 1])
    assert bool((area[empty] == 0).all()) and bool((sel.tau[empty] == 0).all()) and not bool(sel.fallback[empty].any())
    hit = _scores(sal, sel.boxes)[~empty]
    assert bool((hit > sel.tau[~empty]).all())


def test_shared_size_with_skipped_images_matches_the_general_path(batch):
    # Cutout with p < 1 gives sizes {0, L}: scored as one shared size; the taus of the cut
    # images equal those of the per-image path, the skipped ones get an empty box and tau 0.
    _, _, sal = batch
    sizes = torch.tensor([[12, 12], [0, 0]]).repeat(8, 1)
    sel = select_boxes(sal, sizes, 0.6, "center", generator=_gen(26))
    ref = _reference_selection(sal, sizes, 0.6, "center", "below")
    for i in range(16):
        assert torch.equal(sel.tau[i], ref[i][0])
    area = (sel.boxes[:, 2] - sel.boxes[:, 0]) * (sel.boxes[:, 3] - sel.boxes[:, 1])
    assert bool((area[1::2] == 0).all()) and bool((area[0::2] > 0).all())
    assert bool((_scores(sal, sel.boxes)[0::2] < sel.tau[0::2]).all())


def test_per_image_sizes_are_uniform_over_the_passing_set():
    # The general (gathered, masked) path: two sizes alternate on one map; each size's draws
    # cover exactly its passing corners, about equally often.
    sal = torch.rand(1, 8, 9, generator=_gen(27)).expand(6000, 8, 9).contiguous()
    sizes = torch.tensor([[3, 2], [2, 4]]).repeat(3000, 1)
    sel = select_boxes(sal, sizes, q=0.6, placement="inside", generator=_gen(28))
    for r, size in enumerate(([3, 2], [2, 4])):
        cand = candidate_positions(tuple(size), 8, 9, "inside", batch_size=1)
        scores = candidate_scores(summed_area_table(sal[:1]), cand)[0]
        passing = scores < sel.tau[r]
        wc = cand.shape[1]
        counts = torch.bincount(sel.boxes[r::2, 0] * wc + sel.boxes[r::2, 1], minlength=scores.numel()).double()
        assert counts.numel() == scores.numel() and bool((counts[~passing] == 0).all())
        expected = 3000 / int(passing.sum())
        chi2 = float(((counts[passing] - expected) ** 2 / expected).sum())
        assert chi2 < 2.0 * int(passing.sum()) + 20  # well above the dof, far below a biased draw


@pytest.mark.parametrize("placement", ["inside", "center"])
def test_per_image_sizes_with_empty_rows_match_the_reference(batch, placement):
    # Random Erasing's sizes: per image, about half empty. Empty rows are not scored (tau 0,
    # an empty box, never a fallback); the others get torch's exact quantile over their own
    # candidates ("inside": scored on the smallest size's grid of corners), a box from the
    # passing set, and a score equal to box_sums bit for bit.
    _, _, sal = batch
    g = _gen(31)
    sizes = torch.randint(3, 24, (16, 2), generator=g)
    sizes[torch.rand(16, generator=g) < 0.5] = 0
    sizes[0] = torch.tensor([20, 5])  # one tall, one wide: the cut grid is narrower than both
    sizes[1] = torch.tensor([4, 26])
    for side in ("below", "above"):
        sel = select_boxes(sal, sizes, 0.6, placement, side, generator=_gen(32))
        empty = (sizes == 0).any(1)
        ref = _reference_selection(sal, sizes, 0.6, placement, side)
        for i, (tau, n_pass) in enumerate(ref):
            if empty[i]:
                assert float(sel.tau[i]) == 0.0 and not bool(sel.fallback[i])
            else:
                assert torch.equal(sel.tau[i], tau)
                assert bool(sel.fallback[i]) == (n_pass == 0)
        area = (sel.boxes[:, 2] - sel.boxes[:, 0]) * (sel.boxes[:, 3] - sel.boxes[:, 1])
        assert bool((area[empty] == 0).all())
        score = box_sums(sel.sat, sel.boxes)
        assert torch.equal(score, _scores(sal, sel.boxes))
        ok = score < sel.tau if side == "below" else score > sel.tau
        assert bool(ok[~sel.fallback & ~empty].all())
        if placement == "inside":
            assert torch.equal((sel.boxes[:, 2:] - sel.boxes[:, :2])[~empty], sizes[~empty])


def test_per_image_fast_paths_equal_the_full_grid(batch, monkeypatch):
    # The cut "inside" grid and the per-row block quantile are pure speed-ups: with both off
    # (every row scored on the full H x W grid, masked quantile) the same generator gives
    # the same boxes, taus and fallbacks.
    import keepmix.functional.selection as K
    from keepmix.functional.regions import masked_quantile

    _, _, sal = batch
    g = _gen(33)
    sizes = torch.randint(2, 20, (16, 2), generator=g)
    sizes[::3] = 0
    sizes[5] = torch.tensor([1, 1])
    runs = {}
    for fast in (True, False):
        if not fast:
            monkeypatch.setattr(K, "_leading_grid", lambda cand, draws, *args: (cand, draws))

            def masked(scores, wc, rows, cols, q, overwrite=False):
                hc = scores.shape[1] // wc
                valid = (torch.arange(hc) < rows[:, None])[:, :, None] & (torch.arange(wc) < cols[:, None])[:, None, :]
                return masked_quantile(scores, valid.flatten(1), q)

            monkeypatch.setattr(K, "_leading_block_quantile", masked)
        for placement in ("inside", "center"):
            for q, side in ((0.6, "below"), (0.05, "below"), (0.6, "above")):
                sel = select_boxes(sal, sizes, q, placement, side, generator=_gen(34))
                runs.setdefault((placement, q, side), []).append(sel)
    for a, b in runs.values():
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.tau, b.tau) and torch.equal(a.fallback, b.fallback)


def test_all_empty_per_image_sizes():
    sal = torch.rand(4, 10, 12, generator=_gen(35))
    sizes = torch.tensor([[0, 0], [0, 5], [3, 0], [0, 0]])
    for placement in ("inside", "center"):
        sel = select_boxes(sal, sizes, 0.6, placement, generator=_gen(36))
        area = (sel.boxes[:, 2] - sel.boxes[:, 0]) * (sel.boxes[:, 3] - sel.boxes[:, 1])
        assert bool((area == 0).all()) and bool((sel.tau == 0).all()) and not bool(sel.fallback.any())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fast_selection_on_cuda_matches_cpu_thresholds(batch):
    _, _, sal = batch
    for sizes in (torch.full((16, 2), 9), torch.randint(1, 20, (16, 2), generator=_gen(29))):
        cpu = select_boxes(sal, sizes, 0.6, "center", "below", generator=_gen(30))
        gpu = select_boxes(sal.cuda(), sizes.cuda(), 0.6, "center", "below", generator=torch.Generator("cuda").manual_seed(30))
        torch.testing.assert_close(gpu.tau.cpu(), cpu.tau, rtol=0, atol=1e-9)
        assert gpu.boxes.device.type == "cuda"
        assert bool((box_sums(gpu.sat, gpu.boxes) < gpu.tau)[~gpu.fallback].all())


# ------------------------------------------------------------------ the placers' options
def test_score_mean_hand_computed_example():
    # A 4 x 4 map of ones with one hot pixel (0, 0) = 3; Cutout's 2 x 2 squares centred on
    # every pixel, clipped at the border. Row (and column) extents of the 4 centres:
    # [0, 1), [0, 2), [1, 3), [2, 4). The 16 candidates:
    #   centre (0, 0): box (0, 0, 1, 1), area 1, sum 3, mean 3
    #   (0, 1), (1, 0): area 2, hold the hot pixel: sum 4, mean 2
    #   (1, 1): area 4, holds it: sum 6, mean 1.5
    #   (0, 2), (0, 3), (2, 0), (3, 0): area 2: sum 2, mean 1
    #   the 8 others: area 4: sum 4, mean 1
    # q = 0.8: the rank 0.8 * 15 = 12 order statistic.
    #   sum:  2 2 2 2 3 4 4 4 4 4 4 4 [4] 4 4 6 -> tau 4: below it the 4 clipped twos and the
    #         hot corner (small boxes score low: the paper's sum favours the border)
    #   mean: 1 x 12, [1.5], 2 2 3            -> tau 1.5: below it the 12 boxes of mean 1,
    #         none holding the hot pixel
    b = 3000
    sal = torch.ones(b, 4, 4)
    sal[:, 0, 0] = 3.0
    sum_set = {(0, 0, 1, 1), (0, 1, 1, 3), (0, 2, 1, 4), (1, 0, 3, 1), (2, 0, 4, 1)}
    mean_set = {
        (0, 1, 1, 3),
        (0, 2, 1, 4),
        (1, 0, 3, 1),
        (2, 0, 4, 1),  # the clipped ones of mean 1
        (0, 1, 2, 3),
        (0, 2, 2, 4),
        (1, 0, 3, 2),
        (2, 0, 4, 2),
        (1, 1, 3, 3),
        (1, 2, 3, 4),
        (2, 1, 4, 3),
        (2, 2, 4, 4),
    }
    x = torch.full((b, 1, 4, 4), 5.0)
    chosen = {}
    for score, want_tau, want_set in (("sum", 4.0, sum_set), ("mean", 1.5, mean_set)):
        placer = KeepPlacer(q=0.8, score=score)
        sel = placer.select(sal, (2, 2), "center", generator=_gen(41))
        assert bool((sel.tau == want_tau).all()) and not bool(sel.fallback.any())
        boxes = {tuple(v) for v in sel.boxes.tolist()}
        assert boxes == want_set  # exactly the passing set, every member drawn
        counts = torch.unique(sel.boxes, dim=0, return_counts=True)[1].double()
        assert float(counts.min()) > 0.6 * b / len(want_set)  # about uniform over it
        # the op with that placer cuts exactly there
        op = Cutout(2, placer=placer)
        params = op.sample_params(x, saliency=sal, generator=_gen(41))
        assert torch.equal(params.boxes, sel.boxes)
        chosen[score] = sel.boxes
    # where sum and mean disagree: the sum cuts the hot pixel ~1/5 of the time, the mean never
    hot_sum = ((chosen["sum"][:, 0] == 0) & (chosen["sum"][:, 1] == 0)).float().mean()
    hot_mean = ((chosen["mean"][:, 0] == 0) & (chosen["mean"][:, 1] == 0)).float().mean()
    assert abs(float(hot_sum) - 0.2) < 0.03 and float(hot_mean) == 0.0
    # the mean never takes the small clipped corner box, the sum never a full interior box
    assert bool((box_areas(chosen["sum"]) < 4).all()) and bool((box_areas(chosen["mean"]) == 4).any())


def test_score_mean_box_is_below_the_quantile_of_candidate_means(batch):
    # Real-image saliency: the chosen box's mean is below the image's q-quantile of the
    # candidate means (clipped areas), recomputed here per image with torch.quantile.
    x, _, sal = batch
    op = KeepCutout(length=12, q=0.6, score="mean")
    assert op.placer.score == "mean"
    params, sel = _sample(op, x, sal, _gen(42))
    cand = candidate_positions((12, 12), 32, 32, "center", batch_size=16)
    area = ((cand.y2 - cand.y1)[:, :, None] * (cand.x2 - cand.x1)[:, None, :]).flatten(1).double()
    means = candidate_scores(summed_area_table(sal), cand) / area
    ref_tau = torch.quantile(means, 0.6, dim=1)
    torch.testing.assert_close(sel.tau, ref_tau, rtol=1e-12, atol=0)
    box_mean = _scores(sal, params.boxes) / box_areas(params.boxes).double()
    assert not bool(sel.fallback.any()) and bool((box_mean < sel.tau).all())
    # the sum rule on the same draws picks other boxes on some images
    sum_boxes = KeepCutout(length=12, q=0.6)(x, saliency=sal, generator=_gen(42))
    assert not torch.equal(sum_boxes, op(x, saliency=sal, generator=_gen(42)))


def test_keep_placer_whole_boxes_on_cutout(batch):
    # whole_boxes=True: the candidates are the corners that keep the whole square inside, so
    # every box is unclipped (a full length x length area) and scores below the quantile
    # over those corners; sum and mean then rank alike (a constant area).
    x, _, sal = batch
    length = 8
    op = Cutout(length, placer=KeepPlacer(q=0.6, whole_boxes=True))
    params, sel = _sample(op, x, sal, _gen(43))
    boxes = params.boxes
    assert bool((boxes[:, :2] >= 0).all()) and bool((boxes[:, 2:] <= 32).all())
    assert torch.equal(boxes[:, 2:] - boxes[:, :2], torch.full((16, 2), length))
    assert bool((box_areas(boxes) == length * length).all())
    out = op.transform(x, None, params)
    assert bool(((out == 0).all(1).flatten(1).sum(1) == length * length).all())  # no exact zeros in x
    cand = candidate_positions((length, length), 32, 32, "inside", batch_size=16)
    assert torch.equal(sel.tau, torch.quantile(candidate_scores(summed_area_table(sal), cand), 0.6, dim=1))
    assert not bool(sel.fallback.any()) and bool((_scores(sal, boxes) < sel.tau).all())
    mean = Cutout(length, placer=KeepPlacer(q=0.6, score="mean", whole_boxes=True))
    assert torch.equal(mean.sample_params(x, saliency=sal, generator=_gen(43)).boxes, boxes)
    # the default (clipped centres) does cut boxes short at the border on this batch
    clipped = KeepCutout(length, q=0.6).sample_params(x, saliency=sal, generator=_gen(43)).boxes
    assert bool((box_areas(clipped) < length * length).any())
    # the Keep name takes whole_boxes by name too
    assert torch.equal(KeepCutout(length, q=0.6, whole_boxes=True).sample_params(x, saliency=sal, generator=_gen(43)).boxes, boxes)
    # and the uniform control with whole_boxes draws from the same candidates
    uniform = Cutout(length, placer=UniformPlacer(whole_boxes=True)).sample_params(x, generator=_gen(43)).boxes
    assert torch.equal(uniform[:, 2:] - uniform[:, :2], torch.full((16, 2), length))


def test_functional_select_boxes_is_deterministic_given_keys(batch):
    # KeepPlacer.select = selection_keys(generator) + the functional select_boxes(keys=...).
    _, _, sal = batch
    sizes = torch.randint(2, 20, (16, 2), generator=_gen(44))
    for q, side, placement, score in ((0.6, "below", "center", "sum"), (0.3, "above", "inside", "mean")):
        keys = selection_keys(16, q, side, generator=_gen(45))
        assert keys.shape == (16, S.num_draws(q, side) + 1) and keys.dtype == torch.float64
        a = S.select_boxes(sal, sizes, q, placement, side, 1, keys=keys, score=score)
        b = S.select_boxes(sal, sizes, q, placement, side, 1, keys=keys.clone(), score=score)
        c = KeepPlacer(q=q, score=score).select(sal, sizes, placement, side, generator=_gen(45))
        for u, v in ((a, b), (a, c)):
            assert torch.equal(u.boxes, v.boxes) and torch.equal(u.tau, v.tau) and torch.equal(u.fallback, v.fallback)
    with pytest.raises(ValueError, match="keys must have shape"):
        S.select_boxes(sal, sizes, 0.6, keys=torch.rand(16, 3, dtype=torch.float64))


def test_keys_decide_the_draws_and_the_exact_pick():
    # 1 x 1 regions of a 1 x 4 map scoring 0, 1, 2, 3: q = 0.6 gives tau = 1.8, so candidates
    # 0 and 1 pass. The first passing try wins: key 0.9 -> candidate 3 fails, 0.3 -> 1 passes.
    sal = torch.tensor([[[0.0, 1.0, 2.0, 3.0]]])
    k = S.num_draws(0.6, "below")
    keys = torch.full((1, k + 1), 0.9, dtype=torch.float64)
    keys[0, 1] = 0.3
    sel = S.select_boxes(sal, (1, 1), 0.6, "inside", keys=keys)
    assert torch.equal(sel.tau, torch.quantile(sal[0, 0].double(), 0.6)[None])
    assert float(sel.tau) == pytest.approx(1.8)
    assert sel.boxes.tolist() == [[0, 1, 1, 2]] and not bool(sel.fallback.any())
    # Every try misses: the last key column picks among all passing candidates (0.6 -> the
    # second of the two).
    keys = torch.full((1, k + 1), 0.9, dtype=torch.float64)
    keys[0, k] = 0.6
    assert S.select_boxes(sal, (1, 1), 0.6, "inside", keys=keys).boxes.tolist() == [[0, 1, 1, 2]]
    keys[0, k] = 0.1
    assert S.select_boxes(sal, (1, 1), 0.6, "inside", keys=keys).boxes.tolist() == [[0, 0, 1, 1]]
    # The fallback (a constant map: nothing strictly below) also picks with the last column:
    # 2 x 3 boxes in 6 x 6 have 5 x 4 = 20 corners; key u takes corner floor(20 u).
    flat = torch.full((3, 6, 6), 0.5)
    keys = torch.full((3, k + 1), 0.5, dtype=torch.float64)
    keys[:, k] = torch.tensor([0.0, 0.5, 0.99], dtype=torch.float64)
    sel = S.select_boxes(flat, (2, 3), 0.6, "inside", keys=keys)
    assert bool(sel.fallback.all())
    assert sel.boxes.tolist() == [[0, 0, 2, 3], [2, 2, 4, 5], [4, 3, 6, 6]]  # corners 0, 10, 19


def test_keep_paste_around_a_keep_op_hands_it_the_saliency(batch):
    # KeepPaste(KeepCutout): the inner op places by the same map KeepPaste was given.
    x, _, sal = batch
    op = KeepPaste(KeepCutout(6, q=0.5, fill=9.0), size=10)
    out = op(x, saliency=sal, generator=_gen(46))
    params = op.sample_params(x, saliency=sal, generator=_gen(46))
    assert torch.equal(op.transform(x, None, params), out)
    g = _gen(46)
    op.placer.select(sal, op.size, "center", "above", generator=g)  # the kept regions first
    inner = KeepCutout(6, q=0.5, fill=9.0).sample_params(x, saliency=sal, generator=g)
    assert torch.equal(params.inner.boxes, inner.boxes)
    cut = KeepCutout(6, q=0.5).placer.select(sal, (6, 6), "center", generator=_gen(0))  # tau of the cut
    assert bool((_scores(sal, inner.boxes) < cut.tau).all())
    kept = box_masks(params.boxes, 32, 32)[:, None].expand_as(x)
    cut_mask = box_masks(inner.boxes, 32, 32)[:, None].expand_as(x)
    assert torch.equal(out[kept], x[kept])
    assert bool((out[cut_mask & ~kept] == 9.0).all()) and torch.equal(out[~kept & ~cut_mask], x[~kept & ~cut_mask])
