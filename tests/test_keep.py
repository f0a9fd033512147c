"""Tests for keepmix.keep: selective-cut / selective-paste and the ready-made Keep* ops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from keepmix.base import RegionOp, RegionParams
from keepmix.functional.boxes import box_masks
from keepmix.functional.mixing import area_lambda
from keepmix.functional.regions import box_sums, candidate_positions, candidate_scores, summed_area_table
from keepmix.keep import (
    KeepCut,
    KeepCutMix,
    KeepAutoAugment,
    KeepCutout,
    KeepPaste,
    KeepRandAugment,
    KeepRandomErasing,
    check_saliency,
    select_boxes,
)
from keepmix.regional import Cutout
from keepmix.saliency import Saliency


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


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

    def sample_params(self, images, generator=None):
        b, _, h, w = images.shape
        hs = torch.randint(1, h + 1, (b,), generator=generator)
        ws = torch.randint(1, w + 1, (b,), generator=generator)
        sizes = torch.stack([hs, ws], 1)
        return RegionParams(boxes=self.place(sizes, h, w, generator), sizes=sizes)

    def apply(self, images, params):
        mask = box_masks(params.boxes, *images.shape[-2:])[:, None]
        return torch.where(mask, torch.full_like(images, -7.0), images)


def _scores(sal: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    return box_sums(summed_area_table(sal), boxes)


def test_keep_cutout_boxes_score_below_tau_and_only_the_box_changes(batch):
    x, y, sal = batch
    x0 = x.clone()
    op = KeepCutout(length=16, q=0.6)
    params, sel = op.sample_params(x, sal, _gen(0))
    out = op.apply(x, params)
    assert torch.equal(x, x0)  # input untouched
    assert torch.equal(params.boxes, sel.boxes)
    assert bool((_scores(sal, sel.boxes) < sel.tau).all()) and not bool(sel.fallback.any())
    # tau recomputed independently: the 0.6-quantile of every centre's clipped-box score.
    cand = candidate_positions(params.sizes, 32, 32, "center")
    ref_tau = torch.quantile(candidate_scores(summed_area_table(sal), cand), 0.6, dim=1)
    assert torch.equal(sel.tau, ref_tau)
    mask = box_masks(sel.boxes, 32, 32)[:, None].expand_as(x)
    assert torch.equal(out[~mask], x[~mask]) and bool((out[mask] == 0).all())
    # Same as the plain op applied to KeepAugment's boxes (KeepCut changes where, not what).
    assert torch.equal(out, Cutout(16).apply(x, params))
    # forward == sample_params + apply for the same seed.
    assert torch.equal(op(x, saliency=sal, generator=_gen(0)), out)


def test_keep_random_erasing_boxes_inside_sizes_kept_and_below_tau(batch):
    x, _, sal = batch
    op = KeepRandomErasing(p=1.0)
    plain = op.op.sample_params(x, _gen(1))
    params, sel = op.sample_params(x, sal, _gen(1))
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
    x, _, sal = batch
    op = KeepCut(PaintBox(), q=0.3)
    out = op(x, saliency=sal, generator=_gen(2))
    params, sel = op.sample_params(x, sal, _gen(2))
    assert torch.equal(out, op.op.apply(x, params))
    passed = ~sel.fallback
    assert bool((_scores(sal, sel.boxes)[passed] < sel.tau[passed]).all())


def test_skipped_images_keep_empty_boxes(batch):
    x, _, sal = batch
    op = KeepCutout(length=8, p=0.5)
    params, sel = op.sample_params(x, sal, _gen(3))
    skipped = params.sizes[:, 0] == 0
    assert bool(skipped.any()) and bool((~skipped).any())
    area = (sel.boxes[:, 2] - sel.boxes[:, 0]) * (sel.boxes[:, 3] - sel.boxes[:, 1])
    assert bool((area[skipped] == 0).all()) and bool((area[~skipped] > 0).all())
    assert not bool(sel.fallback[skipped].any())
    out = op.apply(x, params)
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
    params, sel = op.sample_params(x, sal, _gen(6))
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
    params, sel = op.sample_params(x, sal, _gen(8))
    assert bool((_scores(sal, sel.boxes) > sel.tau).all())
    assert bool(((sel.boxes[:, 2] - sel.boxes[:, 0]) == 16).all()) and bool(((sel.boxes[:, 3] - sel.boxes[:, 1]) == 16).all())
    mask = box_masks(sel.boxes, 32, 32)[:, None].expand_as(x)
    assert torch.equal(out[mask], x[mask]) and torch.equal(out[~mask], -x[~mask])
    # tau over all (32 - 16 + 1)^2 corners.
    cand = candidate_positions((16, 16), 32, 32, "inside", batch_size=16)
    assert torch.equal(sel.tau, torch.quantile(candidate_scores(summed_area_table(sal), cand), 0.6, dim=1))


def test_keep_paste_passes_generator_and_is_reproducible(batch):
    x, _, sal = batch

    def noisy(t, generator=None):
        return t + torch.randn(t.shape, generator=generator)

    op = KeepPaste(noisy, size=(8, 12), placement="center")
    a = op(x, saliency=sal, generator=_gen(9))
    b = op(x, saliency=sal, generator=_gen(9))
    assert torch.equal(a, b) and not torch.equal(a, op(x, saliency=sal, generator=_gen(10)))


@pytest.mark.parametrize("make", [lambda: KeepAutoAugment("cifar10"), lambda: KeepRandAugment(2, 14)])
def test_keep_policies_on_real_uint8_images(cifar_uint8, make):
    x = cifar_uint8[:16]
    sal = torch.rand(16, 32, 32, generator=_gen(20))
    op = make()
    out = op(x, saliency=sal, generator=_gen(21))
    g = _gen(21)
    params, sel = op.sample_params(x, sal, g)
    augmented = op.transform(x, generator=g)  # same draw order as forward
    assert torch.equal(out, op.apply(x, augmented, params))
    assert bool((_scores(sal, sel.boxes) > sel.tau).all())
    mask = box_masks(sel.boxes, 32, 32)[:, None].expand_as(x)
    assert torch.equal(out[mask], x[mask]) and torch.equal(out[~mask], augmented[~mask])
    assert out.dtype == torch.uint8 and not torch.equal(out, x)


def test_keep_cutmix_lambda_is_exact_area_and_box_below_tau(batch):
    x, y, sal = batch
    op = KeepCutMix(num_classes=10)
    images, targets = op(x, y, saliency=sal, generator=_gen(11))
    params, sel = op.sample_params(x, sal, _gen(11))
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
    params, sel = op.sample_params(x, sal, _gen(12))
    onehot = F.one_hot(y, 10).float()
    for i in range(16):
        j = int(params.perm[i])
        y1, x1, y2, x2 = params.boxes[i].tolist()
        wgt = float(sal[j, y1:y2, x1:x2].double().sum() / sal[j].double().sum())
        ref = (1 - wgt) * onehot[i] + wgt * onehot[j]
        torch.testing.assert_close(targets[i], ref, rtol=0, atol=1e-5)
    # An all-zero partner map falls back to the area share.
    zero = torch.zeros_like(sal)
    w = op.patch_weight(select_boxes(zero, params.sizes, generator=_gen(0)), params.perm, 32, 32)
    boxes = select_boxes(zero, params.sizes, generator=_gen(0)).boxes
    torch.testing.assert_close(w, 1 - area_lambda(boxes, 32, 32))


def test_saliency_fn_path_equals_precomputed_map(batch):
    x, y, _ = batch
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    sal_fn = Saliency(net)
    op = KeepCutout(16, saliency_fn=sal_fn)
    assert not any(True for _ in op.parameters())  # the model is not a submodule
    a = op(x, y, generator=_gen(13))
    b = KeepCutout(16)(x, saliency=sal_fn(x, y), generator=_gen(13))
    assert torch.equal(a, b)
    # label-free mode works too
    assert op(x, generator=_gen(13)).shape == x.shape


def test_uint8_and_non_square_images():
    g = _gen(14)
    x = torch.randint(0, 256, (6, 3, 20, 36), dtype=torch.uint8, generator=g)
    sal = torch.rand(6, 20, 36, generator=g)
    out = KeepCutout(length=12, fill=0)(x, saliency=sal, generator=g)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    params, sel = KeepRandomErasing(p=1.0, value=3).sample_params(x, sal, g)
    assert bool((_scores(sal, sel.boxes) < sel.tau).all())
    out = KeepPaste(lambda t: 255 - t, size=(5, 9))(x, saliency=sal, generator=g)
    assert out.dtype == torch.uint8


def test_candidate_stride_restricts_positions_to_the_grid(batch):
    x, _, sal = batch
    op = KeepCutout(length=16, candidate_stride=4)
    _, sel = op.sample_params(x, sal, _gen(15))
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
    with pytest.raises(TypeError, match="RegionOp"):
        KeepCut(lambda t: t)
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
    params, sel = KeepCutout(16).sample_params(x, sal, torch.Generator(device="cuda").manual_seed(1))
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
    import keepmix.keep as K

    _, _, sal = batch
    sal = sal.repeat(3, 1, 1)
    sizes = torch.randint(1, 16, (48, 2), generator=_gen(22))
    whole = select_boxes(sal, sizes, 0.6, "center", "below", generator=_gen(23))
    monkeypatch.setattr(K, "_CHUNK_BYTES", 1)
    monkeypatch.setattr(K, "_MIN_CHUNK_ROWS", 5)  # chunks of 5 rows, the last one short
    chunked = select_boxes(sal, sizes, 0.6, "center", "below", generator=_gen(23))
    for a, b in zip((whole.boxes, whole.tau, whole.fallback), (chunked.boxes, chunked.tau, chunked.fallback)):
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
    import keepmix.keep as K
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
