"""RecursiveMix: the resize-paste, the history, the label recursion and the consistency loss."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from isolated import run_python
from torch import nn

from keepmix.functional.boxes import box_areas, box_masks
from keepmix.functional.regions import box_sums, summed_area_table
from keepmix.functional.resize_paste import resize_into_boxes
from keepmix.functional.roi_align import roi_align
from keepmix.recursive import KeepRecursiveMix, RecursiveMix, RecursiveMixParams
from keepmix.targets import soft_target_cross_entropy

torch.set_num_threads(1)

K = 10


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _mix(rm, x, y, **kwargs):
    """One step on the op protocol: ``rm(x, y)``, then the step's info (what the consistency
    loss uses, from ``rm.last_params``)."""
    out, targets = rm(x, y, **kwargs)
    return out, targets, rm.info()


def _loop_reference(dst, src, boxes, mode, align_corners=False):
    """The straightforward way: one F.interpolate per image, pasted by slicing."""
    out = dst.clone()
    for i, (y1, x1, y2, x2) in enumerate(boxes.tolist()):
        if y2 > y1 and x2 > x1:
            kw = {} if mode == "nearest" else {"align_corners": align_corners}
            out[i : i + 1, :, y1:y2, x1:x2] = F.interpolate(src[i : i + 1], size=(y2 - y1, x2 - x1), mode=mode, **kw)
    return out


def _random_boxes(g, b, h, w):
    y1 = torch.randint(0, h + 1, (b,), generator=g)
    x1 = torch.randint(0, w + 1, (b,), generator=g)
    y2 = torch.minimum(y1 + torch.randint(0, h + 1, (b,), generator=g), torch.tensor(h))
    x2 = torch.minimum(x1 + torch.randint(0, w + 1, (b,), generator=g), torch.tensor(w))
    return torch.stack([y1, x1, y2, x2], 1)


# ----------------------------------------------------------------- resize_into_boxes
@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    hs=st.integers(1, 48),
    ws=st.integers(1, 48),
    dtype=st.sampled_from([torch.uint8, torch.float32, torch.float16, torch.float64]),
)
def test_nearest_resize_is_bitwise_f_interpolate(seed, h, w, hs, ws, dtype):
    g = _gen(seed)
    dst = torch.randint(0, 256, (4, 3, h, w), generator=g).to(dtype)
    src = torch.randint(0, 256, (4, 3, hs, ws), generator=g).to(dtype)
    boxes = _random_boxes(g, 4, h, w)
    out = resize_into_boxes(dst, src, boxes, "nearest")
    assert out.dtype == dtype
    assert torch.equal(out, _loop_reference(dst, src, boxes, "nearest"))


@pytest.mark.parametrize("align_corners", [False, True])
def test_bilinear_resize_matches_f_interpolate(align_corners):
    g = _gen(11)
    for h, w, hs, ws in [(32, 32, 32, 32), (17, 40, 23, 9), (5, 7, 64, 3)]:
        boxes = _random_boxes(g, 6, h, w)
        src = torch.randn(6, 2, hs, ws, generator=g, dtype=torch.float64)
        dst = torch.randn(6, 2, h, w, generator=g, dtype=torch.float64)
        ref = _loop_reference(dst, src, boxes, "bilinear", align_corners)
        torch.testing.assert_close(resize_into_boxes(dst, src, boxes, "bilinear", align_corners), ref, atol=1e-12, rtol=0)
        out32 = resize_into_boxes(dst.float(), src.float(), boxes, "bilinear", align_corners)
        torch.testing.assert_close(out32, ref.float(), atol=1e-5, rtol=1e-5)
        d8 = torch.randint(0, 256, (6, 2, h, w), generator=g, dtype=torch.uint8)
        s8 = torch.randint(0, 256, (6, 2, hs, ws), generator=g, dtype=torch.uint8)
        diff = (
            resize_into_boxes(d8, s8, boxes, "bilinear", align_corners).int()
            - _loop_reference(d8, s8, boxes, "bilinear", align_corners).int()
        ).abs()
        assert diff.max() <= 1


def test_resize_does_not_modify_inputs_and_rejects_bad_input():
    dst, src = torch.zeros(2, 3, 8, 8), torch.ones(2, 3, 8, 8)
    dst0, src0 = dst.clone(), src.clone()
    resize_into_boxes(dst, src, torch.tensor([[0, 0, 4, 4], [2, 2, 8, 8]]))
    assert torch.equal(dst, dst0) and torch.equal(src, src0)
    with pytest.raises(ValueError, match="boxes"):
        resize_into_boxes(dst, src, torch.tensor([[0, 0, 9, 4], [0, 0, 1, 1]]))
    with pytest.raises(ValueError, match="src must have"):
        resize_into_boxes(dst, torch.ones(3, 3, 8, 8), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="mode"):
        resize_into_boxes(dst, src, torch.zeros(2, 4, dtype=torch.long), mode="bicubic")


# ----------------------------------------------------------------------- the paste
def _float_batch(cifar_uint8, start, n=16):
    return cifar_uint8[start : start + n].float() / 255.0


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_box_holds_resized_history_and_outside_is_untouched(cifar_uint8, cifar_labels, interpolation):
    rm = RecursiveMix(K, interpolation=interpolation)
    assert rm.align_corners is (interpolation == "bilinear")  # the official code's True for bilinear
    x0, y0 = _float_batch(cifar_uint8, 0), cifar_labels[:16]
    x1, y1 = _float_batch(cifar_uint8, 16), cifar_labels[16:32]
    g = _gen(0)
    m0, t0, _ = _mix(rm, x0, y0, generator=g)
    rm.update(m0, t0, torch.randn(16, K))
    x1_copy = x1.clone()
    m1, t1, info = _mix(rm, x1, y1, generator=g)
    assert torch.equal(x1, x1_copy)  # caller's tensor untouched
    assert m1.dtype == x1.dtype and m1.shape == x1.shape
    for i, (a, b, c, d) in enumerate(info.boxes.tolist()):
        if c > a and d > b:
            kw = {"align_corners": True} if interpolation == "bilinear" else {}
            expect = F.interpolate(x0[i : i + 1], size=(c - a, d - b), mode=interpolation, **kw)
            if interpolation == "nearest":
                assert torch.equal(m1[i, :, a:c, b:d], expect[0])
            else:
                torch.testing.assert_close(m1[i, :, a:c, b:d], expect[0], atol=1e-6, rtol=1e-6)
    outside = ~box_masks(info.boxes, 32, 32)[:, None].expand_as(x1)
    assert torch.equal(m1[outside], x1[outside])
    # lam is the exact unpasted area, targets mix as stated.
    lam_exact = 1.0 - box_areas(info.boxes).double() / (32 * 32)
    assert torch.equal(info.lam, lam_exact.float())
    onehot = F.one_hot(y1, K).float()
    torch.testing.assert_close(t1, info.lam[:, None] * onehot + (1 - info.lam[:, None]) * t0, atol=1e-7, rtol=0)
    torch.testing.assert_close(info.weights, 0.5 * (1 - info.lam))


def test_uint8_batches_paste_exactly(cifar_uint8, cifar_labels):
    rm = RecursiveMix(K)
    g = _gen(1)
    m0, t0, _ = _mix(rm, cifar_uint8[:8], cifar_labels[:8], generator=g)
    rm.update(m0, t0, torch.zeros(8, K))
    m1, _, info = _mix(rm, cifar_uint8[8:16], cifar_labels[8:16], generator=g)
    assert m1.dtype == torch.uint8
    assert torch.equal(m1, _loop_reference(cifar_uint8[8:16], cifar_uint8[:8], info.boxes, "nearest"))


def test_box_sizes_follow_the_area_ratio_and_are_per_image():
    rm = RecursiveMix(K, alpha=0.5)
    x = torch.zeros(2000, 1, 40, 24)
    rm.update(x, torch.zeros(2000, dtype=torch.long), torch.zeros(2000, K))
    p = rm.sample_params(x, generator=_gen(2))
    side = torch.sqrt(p.ratio.double())
    assert torch.equal(p.sizes, torch.stack([(40 * side).floor(), (24 * side).floor()], 1).long())
    assert float(p.ratio.min()) >= 0 and float(p.ratio.max()) < 0.5
    assert abs(float(p.ratio.mean()) - 0.25) < 0.02  # U(0, 0.5)
    assert p.boxes.unique(dim=0).shape[0] > 1000  # per image
    clipped = (p.boxes[:, 2] - p.boxes[:, 0]) <= p.sizes[:, 0]
    assert bool(clipped.all())


def test_per_batch_mode_shares_one_box():
    rm = RecursiveMix(K, per_sample=False)
    x = torch.zeros(8, 3, 32, 32)
    rm.update(x, torch.zeros(8, dtype=torch.long), torch.zeros(8, K))
    for seed in range(5):
        p = rm.sample_params(x, generator=_gen(seed))
        assert bool((p.boxes == p.boxes[0]).all()) and bool((p.ratio == p.ratio[0]).all())


def test_per_batch_mode_uses_even_sizes_and_the_official_edges():
    # per_sample=False: one ratio and one centre for the batch (draw order: r, the centre's
    # row, its column); the box edges are the official [c - s//2, c + s//2), clipped: an even
    # box of 2 (s // 2) where s = floor(side sqrt(r)).
    h, w = 23, 31
    rm = RecursiveMix(K, alpha=1.0, per_sample=False)
    x = torch.zeros(4, 1, h, w)
    rm.update(x, torch.zeros(4, dtype=torch.long), torch.zeros(4, K))
    odd_seen = False
    for seed in range(30):
        p = rm.sample_params(x, generator=_gen(seed))
        g = _gen(seed)
        r = float(torch.rand(1, generator=g).double())
        cy, cx = int(torch.randint(0, h, (1,), generator=g)), int(torch.randint(0, w, (1,), generator=g))
        sh, sw = int(h * math.sqrt(r)), int(w * math.sqrt(r))
        odd_seen |= sh % 2 == 1 or sw % 2 == 1
        clip = lambda v, n: min(max(v, 0), n)
        official = [clip(cy - sh // 2, h), clip(cx - sw // 2, w), clip(cy + sh // 2, h), clip(cx + sw // 2, w)]
        assert p.boxes.tolist() == [official] * 4, seed
        assert p.sizes.tolist() == [[sh - sh % 2, sw - sw % 2]] * 4
    assert odd_seen


def test_bilinear_align_corners_default_true_and_false_on_request(cifar_uint8, cifar_labels):
    x0, x1 = _float_batch(cifar_uint8, 0, 8), _float_batch(cifar_uint8, 8, 8)
    outs = {}
    for ac in (None, True, False):
        rm = RecursiveMix(K, interpolation="bilinear", align_corners=ac)
        assert rm.align_corners is (ac is not False)
        rm.update(x0, cifar_labels[:8], torch.zeros(8, K))
        out, _, info = _mix(rm, x1, cifar_labels[8:16], generator=_gen(3))
        ref = _loop_reference(x1, x0, info.boxes, "bilinear", align_corners=ac is not False)
        torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
        outs[ac] = out
    assert torch.equal(outs[None], outs[True]) and not torch.allclose(outs[None], outs[False])
    with pytest.raises(ValueError, match="align_corners"):
        RecursiveMix(K, interpolation="nearest", align_corners=True)
    assert RecursiveMix(K).align_corners is False  # nearest has no corners to align


def test_first_step_trains_plainly():
    rm = RecursiveMix(K)
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([1, 2, 3, 4])
    out, t, info = _mix(rm, x, y, generator=_gen(0))
    assert out is x and not info.has_history and not rm.has_history
    assert torch.equal(t, F.one_hot(y, K).float())
    assert torch.equal(info.lam, torch.ones(4)) and torch.equal(info.weights, torch.zeros(4))
    feats = torch.randn(4, 8, 4, 4, requires_grad=True)
    head = nn.Linear(8, K)
    loss = rm.consistency_loss(feats, head)
    loss.backward()
    assert loss.item() == 0.0
    assert head.weight.grad is not None and torch.equal(head.weight.grad, torch.zeros_like(head.weight))


def test_same_seed_same_output(cifar_uint8, cifar_labels):
    outs = []
    for _ in range(2):
        rm = RecursiveMix(K)
        rm.update(_float_batch(cifar_uint8, 0), cifar_labels[:16], torch.zeros(16, K))
        outs.append(_mix(rm, _float_batch(cifar_uint8, 16), cifar_labels[16:32], generator=_gen(5)))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    other = RecursiveMix(K)
    other.update(_float_batch(cifar_uint8, 0), cifar_labels[:16], torch.zeros(16, K))
    assert not torch.equal(_mix(other, _float_batch(cifar_uint8, 16), cifar_labels[16:32], generator=_gen(6))[0], outs[0][0])


# ------------------------------------------------------------------- the recursion
def test_labels_decay_as_product_of_one_minus_lambda_and_sum_to_one():
    """Step t uses class t for every image; after T steps the weight of class t in row i is
    lam_t(i) * prod_{s > t} (1 - lam_s(i)), and every row still sums to 1."""
    steps, b = 25, 32
    rm = RecursiveMix(num_classes=steps, alpha=0.9)
    g = _gen(3)
    lams = []
    for t in range(steps):
        x = torch.full((b, 1, 16, 16), float(t))
        out, y, info = _mix(rm, x, torch.full((b,), t), generator=g)
        lams.append(info.lam.double())
        rm.update(out, y, torch.zeros(b, steps))
    lam = torch.stack(lams)  # (T, B); lam_0 = 1 (first step trains plainly)
    for t in range(steps):
        expect = lam[t] * torch.prod(1 - lam[t + 1 :], dim=0)
        torch.testing.assert_close(y[:, t].double(), expect, atol=1e-6, rtol=0)
    torch.testing.assert_close(y.sum(1), torch.ones(b), atol=1e-5, rtol=0)
    # The pixels tell the same story: the share of pixels showing class t matches the
    # label weight to within the rounding of the resized boxes (nearest, exact values).
    share = torch.stack([(out[:, 0] == t).float().mean((1, 2)) for t in range(steps)], 1)
    assert (share - y).abs().max() < 0.2


def test_smaller_then_larger_batch_never_pastes_stale_rows():
    rm = RecursiveMix(K)
    g = _gen(4)
    big = torch.full((8, 1, 16, 16), 1.0)
    out, y, _ = _mix(rm, big, torch.zeros(8, dtype=torch.long), generator=g)
    rm.update(out, y, torch.zeros(8, K))
    # A last, smaller batch: receives history rows 0..2 of the previous step.
    small = torch.full((3, 1, 16, 16), 2.0)
    out_s, y_s, info_s = _mix(rm, small, torch.ones(3, dtype=torch.long), generator=g)
    assert bool(info_s.from_history.all())
    assert set(out_s.unique().tolist()) <= {1.0, 2.0}
    rm.update(out_s, y_s, torch.zeros(3, K))
    assert rm.history_size == 3  # rows 3..7 of the big batch are gone, not kept as stale rows
    # A larger batch after it: rows 3..7 have no history and train plainly.
    nxt = torch.full((8, 1, 16, 16), 3.0)
    labels = torch.full((8,), 2)
    out_n, y_n, info_n = _mix(rm, nxt, labels, generator=g)
    assert info_n.from_history.tolist() == [True] * 3 + [False] * 5
    assert torch.equal(out_n[3:], nxt[3:])
    assert torch.equal(info_n.lam[3:], torch.ones(5)) and torch.equal(info_n.weights[3:], torch.zeros(5))
    assert torch.equal(y_n[3:], F.one_hot(labels[3:], K).float())
    assert set(out_n[:3].unique().tolist()) <= {1.0, 2.0, 3.0}


def test_history_survives_epochs_unless_asked():
    for reset, expect in [(False, True), (True, False)]:
        rm = RecursiveMix(K, reset_each_epoch=reset)
        rm.update(torch.zeros(2, 3, 8, 8), torch.tensor([0, 1]), torch.zeros(2, K))
        rm.on_epoch_start()
        assert rm.has_history is expect


def test_state_dict_resume_continues_exactly(cifar_uint8, cifar_labels):
    def run(rm, g, start, n_steps):
        outs = []
        for s in range(start, start + n_steps):
            x = _float_batch(cifar_uint8, (s * 8) % 48, 8)
            y = cifar_labels[(s * 8) % 48 : (s * 8) % 48 + 8]
            out, t, info = _mix(rm, x, y, generator=g)
            rm.update(out, t, out.mean((2, 3)).repeat(1, 4)[:, :K] * 3)  # any logits
            outs.append((out, t, info.boxes))
        return outs

    rm, g = RecursiveMix(K), _gen(7)
    run(rm, g, 0, 3)
    buf = io.BytesIO()
    torch.save({"rm": rm.state_dict(), "gen": g.get_state()}, buf)
    expected = run(rm, g, 3, 3)

    buf.seek(0)
    ckpt = torch.load(buf)  # weights_only default: the history is plain tensors
    rm2, g2 = RecursiveMix(K), torch.Generator()
    rm2.load_state_dict(ckpt["rm"])
    g2.set_state(ckpt["gen"])
    resumed = run(rm2, g2, 3, 3)
    for (a, b, c), (d, e, f) in zip(expected, resumed, strict=True):
        assert torch.equal(a, d) and torch.equal(b, e) and torch.equal(c, f)
    # An empty history round-trips too.
    fresh = RecursiveMix(K)
    rm2.load_state_dict(fresh.state_dict())
    assert not rm2.has_history


def test_update_stores_detached_float32_copies():
    rm = RecursiveMix(K)
    x = torch.rand(4, 3, 8, 8)
    logits = torch.randn(4, K, requires_grad=True).to(torch.bfloat16)
    rm.update(x, torch.tensor([0, 1, 2, 3]), logits)
    x.add_(1.0)  # a loader reusing its buffer must not change the history
    imgs, targets, stored = rm.history
    assert not torch.equal(imgs, x)
    assert stored.dtype == torch.float32 and not stored.requires_grad and stored.grad_fn is None
    assert targets.dtype == torch.float32 and imgs.dtype == torch.float32


# --------------------------------------------------------------- consistency loss
def test_consistency_loss_value_on_cell_boxes():
    """Boxes covering exactly one feature cell: RoIAlign returns that cell, so the loss is a
    plain cross-entropy we can write out."""
    rm = RecursiveMix(K, omega=0.3)
    hist_logits = torch.randn(2, K, generator=_gen(8))
    rm.update(torch.zeros(2, 3, 32, 32), torch.tensor([0, 1]), hist_logits)
    boxes = torch.tensor([[8, 16, 16, 24], [0, 0, 8, 8]])
    x, y = torch.ones(2, 3, 32, 32), torch.tensor([3, 4])
    drawn = rm.sample_params(x, y, generator=_gen(0))
    assert isinstance(drawn, RecursiveMixParams) and drawn.image_size == (32, 32)
    assert torch.equal(drawn.history_logits, hist_logits)
    params = drawn.replace(boxes=boxes, sizes=torch.tensor([[8, 8], [8, 8]]), ratio=torch.full((2,), 1 / 16))
    out, _ = rm.transform(x, y, params)
    assert torch.equal(out[:, :, 8:16, 16:24][0], torch.zeros(3, 8, 8)) and torch.equal(out[1, :, 8:, 8:], x[1, :, 8:, 8:])
    info = rm.info(params)
    assert torch.equal(info.boxes, boxes) and torch.equal(info.lam, torch.full((2,), 1 - 64 / 1024))
    assert rm.last_params is None  # apply is pure: only forward records its params
    feats = torch.randn(2, 6, 4, 4, generator=_gen(9))
    head = nn.Linear(6, K)
    loss = rm.consistency_loss(feats, head, params=params)
    cells = torch.stack([feats[0, :, 1, 2], feats[1, :, 0, 0]])
    ce = -(F.softmax(hist_logits, 1) * F.log_softmax(head(cells), 1)).sum(1)
    expect = (0.3 * (64 / 1024) * ce).mean()  # omega * (1 - lam), lam = 1 - 64 / 1024
    torch.testing.assert_close(loss, expect, atol=1e-6, rtol=1e-6)


def test_consistency_loss_gradient_reaches_head_and_features_not_history(cifar_uint8, cifar_labels):
    from keepmix.models import build_model

    torch.manual_seed(0)
    model = build_model("small", num_classes=K)
    rm = RecursiveMix(K)
    g = _gen(10)
    x0 = _float_batch(cifar_uint8, 0, 8)
    m0, t0, _ = _mix(rm, x0, cifar_labels[:8], generator=g)
    logits0 = model(m0)
    rm.update(m0, t0, logits0)
    m1, t1, info = _mix(rm, _float_batch(cifar_uint8, 8, 8), cifar_labels[8:16], generator=g)
    assert info.has_history and float(info.weights.sum()) > 0
    feats = model.forward_features(m1)
    own_head = nn.Linear(model.feature_channels, K)
    loss = rm.consistency_loss(feats, head=own_head)
    assert loss.item() > 0
    loss.backward()
    assert own_head.weight.grad.abs().sum() > 0 and own_head.bias.grad.abs().sum() > 0
    assert model.stem[0].weight.grad.abs().sum() > 0  # through the features
    for t in rm.history + (info.history_logits,):
        assert not t.requires_grad and t.grad is None and t.grad_fn is None
    # Rows without a box contribute nothing: zero weights give zero loss and zero gradient.
    own_head.zero_grad()
    zero = rm.last_params.replace(boxes=torch.zeros_like(info.boxes))  # empty boxes: lam 1, weight 0
    assert torch.equal(rm.info(zero).weights, torch.zeros_like(info.weights))
    z = rm.consistency_loss(feats.detach(), head=own_head, params=zero)
    z.backward()
    assert z.item() == 0.0 and own_head.weight.grad.abs().sum() == 0


def test_training_step_as_documented_with_shared_fc_and_amp(cifar_uint8, cifar_labels):
    """The docstring's loop with a keepmix model, shared fc, bfloat16 autocast on the CPU."""
    from keepmix.models import build_model

    torch.manual_seed(0)
    model = build_model("small", num_classes=K)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    rm = RecursiveMix(K, omega=0.5)
    g = _gen(12)
    for step in range(3):
        x, y = _float_batch(cifar_uint8, step * 8, 8), cifar_labels[step * 8 : step * 8 + 8]
        x_mixed, y_mixed = rm(x, y, generator=g)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            feats = model.forward_features(x_mixed)
            logits = model.classify(feats)
            cons = rm.consistency_loss(feats, head=model.fc)
            loss = soft_target_cross_entropy(logits, y_mixed) + cons
        assert torch.isfinite(loss)
        assert (cons.item() > 0) == (step > 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        rm.update(x_mixed, y_mixed, logits)
        assert rm.history[2].dtype == torch.float32 and rm.history[0].dtype == torch.float32


def test_feature_hook_route_matches_forward_features(cifar_uint8, cifar_labels):
    from keepmix.models import FeatureHook, build_model

    model = build_model("small", num_classes=K).eval()
    rm = RecursiveMix(K)
    x = _float_batch(cifar_uint8, 0, 4)
    rm.update(x, cifar_labels[:4], torch.zeros(4, K))
    xm, _ = rm(_float_batch(cifar_uint8, 4, 4), cifar_labels[4:8], generator=_gen(13))
    last = [name for name, _ in model.named_children()]
    with FeatureHook(model, "norm" if "norm" in last else "stages") as hook:
        model(xm)
        hooked = rm.consistency_loss(hook.features, head=model.fc)
    direct = rm.consistency_loss(model.forward_features(xm), head=model.fc)
    torch.testing.assert_close(hooked, direct)


def test_spatial_scale_default_is_side_ratio():
    rm = RecursiveMix(K)
    rm.update(torch.zeros(3, 1, 40, 24), torch.tensor([0, 1, 2]), torch.zeros(3, K))
    _, _, info = _mix(rm, torch.zeros(3, 1, 40, 24), torch.tensor([0, 1, 2]), generator=_gen(14))
    feats = torch.randn(3, 5, 5, 3, dtype=torch.float64)
    pooled = rm.roi_features(feats, info)
    ref = roi_align(feats, info.boxes, 1, (5 / 40, 3 / 24))
    torch.testing.assert_close(pooled, ref.flatten(1))


_DDP_OWN_HEAD = """
import datetime, gc, socket
import torch, torch.distributed as dist
from torch import nn
from keepmix import RecursiveMix
from keepmix.targets import soft_target_cross_entropy

K = {K}
with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{{port}}", rank=0, world_size=1,
                        timeout=datetime.timedelta(seconds=60))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.fc = nn.Linear(8, K)
        self.roi_head = nn.Linear(8, K)

    def forward(self, x):
        f = self.body(x)
        return f, self.fc(f.mean((2, 3)))


net = Net()
ddp = nn.parallel.DistributedDataParallel(net)
rm = RecursiveMix(K)
g = torch.Generator().manual_seed(15)
for _ in range(3):
    x, y = torch.rand(4, 3, 16, 16, generator=g), torch.randint(0, K, (4,), generator=g)
    xm, ym = rm(x, y, generator=g)
    feats, logits = ddp(xm)
    loss = soft_target_cross_entropy(logits, ym) + rm.consistency_loss(feats, head=net.roi_head)
    loss.backward()
    rm.update(xm, ym, logits)
# Tear down in order: DDP (and its Reducer's hold on the group) first, then the group.
del ddp, feats, logits, loss
gc.collect()  # DDP's hooks form cycles: collect them before the group goes
dist.destroy_process_group()
print("ok")
"""


def test_ddp_own_head_unused_parameters_check_passes():
    """Single-process gloo DDP without find_unused_parameters: the no-history step must still
    give the own head a gradient, or the next step raises. In a fresh process with a timeout
    (tests/isolated.py: no process group in the pytest process)."""
    res = run_python(_DDP_OWN_HEAD.format(K=K), timeout=180)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stdout + res.stderr


# ------------------------------------------------------------------- KeepRecursiveMix
def test_keep_recursive_mix_avoids_the_salient_region():
    b = 16
    krm = KeepRecursiveMix(K, alpha=0.3, q=0.6)
    x = torch.rand(b, 3, 32, 32, generator=_gen(16))
    y = torch.arange(b) % K
    # First step: no history, no saliency needed.
    out, t, info = _mix(krm, x, y, generator=_gen(17))
    assert out is x and not info.has_history
    krm.update(out, t, torch.zeros(b, K))
    sal = torch.zeros(b, 32, 32)
    sal[:, 4:20, 6:22] = 1.0  # the object
    params = krm.sample_params(x, y, saliency=sal, generator=_gen(18))
    boxes = params.boxes
    # The selection behind those boxes, from the same draws: the area ratios (B,), then the
    # placer's keys.
    g = _gen(18)
    torch.rand(b, generator=g)
    selection = krm.placer.select(sal, params.sizes, "center", "below", generator=g)
    assert torch.equal(selection.boxes, boxes)
    scores = box_sums(summed_area_table(sal), boxes)
    nonempty = box_areas(boxes) > 0
    # Each box scores below its image's threshold, except where no candidate could.
    assert bool(((scores < selection.tau) | selection.fallback)[nonempty].all())
    assert int(selection.fallback.sum()) < b // 2
    # Sizes stay RecursiveMix's; the mix is an ordinary RecursiveMix apply on those boxes.
    assert torch.equal(boxes[:, 2:] - boxes[:, :2] <= params.sizes, torch.ones_like(params.sizes, dtype=torch.bool))
    xm, ym, info = _mix(krm, x, y, saliency=sal, generator=_gen(18))
    assert torch.equal(info.boxes, boxes)
    ref_x, ref_y = RecursiveMix(K, alpha=0.3).transform(x, y, params)  # the placer changes only the boxes
    assert torch.equal(xm, ref_x) and torch.equal(ym, ref_y)
    assert torch.equal(info.lam, (1 - box_areas(boxes).double() / 1024).float())
    # Plain RecursiveMix, same sizes: its boxes hit the object far more.
    plain = RecursiveMix(K, alpha=0.3)
    plain.update(out, t, torch.zeros(b, K))
    hits_keep, hits_plain = 0.0, 0.0
    for s in range(20):
        p_keep = krm.sample_params(x, saliency=sal, generator=_gen(100 + s))
        p_plain = plain.sample_params(x, generator=_gen(100 + s))
        hits_keep += float(box_sums(summed_area_table(sal), p_keep.boxes).sum())
        hits_plain += float(box_sums(summed_area_table(sal), p_plain.boxes).sum())
    assert hits_keep < 0.5 * hits_plain


# ------------------------------------------------------------------------- errors
def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="alpha"):
        RecursiveMix(K, alpha=1.5)
    with pytest.raises(ValueError, match="num_classes"):
        RecursiveMix(0)
    with pytest.raises(ValueError, match="interpolation"):
        RecursiveMix(K, interpolation="bicubic")
    with pytest.raises(ValueError, match="omega"):
        RecursiveMix(K, omega=-1)
    rm = RecursiveMix(K)
    with pytest.raises(ValueError, match="logits"):
        rm.update(torch.zeros(2, 3, 8, 8), torch.tensor([0, 1]), torch.zeros(2, K + 1))
    with pytest.raises(ValueError, match="labels"):
        _mix(rm, torch.zeros(2, 3, 8, 8), torch.tensor([0, K]))
    rm.update(torch.zeros(2, 3, 8, 8), torch.tensor([0, 1]), torch.zeros(2, K))
    with pytest.raises(ValueError, match="channels"):
        _mix(rm, torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]))
    _, _, info = _mix(rm, torch.zeros(2, 3, 8, 8), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="features"):
        rm.consistency_loss(torch.zeros(3, 4, 2, 2), head=nn.Linear(4, K))
    with pytest.raises(ValueError, match="head must return"):
        rm.consistency_loss(torch.zeros(2, 4, 2, 2), head=nn.Linear(4, K + 1))
    with pytest.raises(ValueError, match="has not mixed a batch yet"):
        RecursiveMix(K).consistency_loss(torch.zeros(2, 4, 2, 2), head=nn.Linear(4, K))
    with pytest.raises(TypeError, match="RecursiveMixParams"):
        rm.info(info)
    with pytest.raises(ValueError, match="mixes labels"):
        rm(torch.zeros(2, 3, 8, 8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_step_matches_cpu_and_stays_on_device(cifar_uint8, cifar_labels):
    x0, x1 = _float_batch(cifar_uint8, 0), _float_batch(cifar_uint8, 16)
    results = {}
    for dev in ["cpu", "cuda"]:
        rm = RecursiveMix(K)
        g = _gen(19)  # CPU generator: same parameters on both devices
        m0, t0, _ = _mix(rm, x0.to(dev), cifar_labels[:16].to(dev), generator=g)
        rm.update(m0, t0, torch.randn(16, K, generator=_gen(20)).to(dev))
        m1, t1, info = _mix(rm, x1.to(dev), cifar_labels[16:32].to(dev), generator=g)
        feats = torch.randn(16, 8, 4, 4, generator=_gen(21)).to(dev)
        loss = rm.consistency_loss(feats, head=nn.Linear(8, K).to(dev).requires_grad_(False).eval())
        assert m1.device.type == dev and t1.device.type == dev and info.boxes.device.type == dev
        results[dev] = (m1.cpu(), t1.cpu(), loss.cpu())
    assert torch.equal(results["cpu"][0], results["cuda"][0])
    torch.testing.assert_close(results["cpu"][1], results["cuda"][1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_history_loaded_on_cpu_moves_to_the_batch_device():
    rm = RecursiveMix(K)
    rm.update(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]), torch.zeros(4, K))
    rm2 = RecursiveMix(K)
    rm2.load_state_dict(rm.state_dict())
    out, y, info = _mix(rm2, torch.rand(4, 3, 8, 8, device="cuda"), torch.tensor([0, 1, 2, 3], device="cuda"))
    assert out.is_cuda and rm2.history[0].is_cuda


def test_consistency_loss_takes_vit_tokens():
    """A ViT's (B, 1 + h*w, C) tokens: the class token dropped, the patches laid on the grid,
    the same loss as the equivalent (B, C, h, w) map."""
    rm = RecursiveMix(K, alpha=1.0)
    x, y = torch.rand(2, 3, 16, 16, generator=_gen(31)), torch.tensor([0, 1])
    rm.update(x, y, torch.randn(2, K, generator=_gen(32)))
    rm(x, y.roll(1), generator=_gen(33))
    fmap = torch.randn(2, 6, 4, 4, generator=_gen(34))
    tokens = torch.cat([torch.randn(2, 1, 6, generator=_gen(35)), fmap.flatten(2).transpose(1, 2)], dim=1)
    head = nn.Linear(6, K)
    torch.testing.assert_close(rm.consistency_loss(tokens, head=head), rm.consistency_loss(fmap, head=head))
