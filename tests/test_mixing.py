"""Tests of Mixup and CutMix (keepmix.mixing) and keepmix.functional.mixing."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from keepmix.base import RegionParams
from keepmix.functional.boxes import box_areas, box_masks
from keepmix.functional.mixing import area_lambda, cutmix, mixup
from keepmix.mixing import CutMix, CutMixParams, Mixup, MixupParams

DTYPES = [torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.float64]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(b: int, c: int, h: int, w: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = gen(seed)
    if dtype == torch.uint8:
        return torch.randint(0, 256, (b, c, h, w), generator=g, dtype=torch.uint8)
    return torch.randn(b, c, h, w, generator=g).to(dtype)


def labels(b: int, k: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, k, (b,), generator=gen(seed + 100))


# ----------------------------------------------------------------------------- Mixup


@pytest.mark.parametrize("dtype", DTYPES)
def test_mixup_matches_float64_reference(dtype):
    x, y = batch(16, 3, 9, 13, dtype), labels(16, 5)
    x0 = x.clone()
    op = Mixup(alpha=0.4, num_classes=5)
    params = op.sample_params(x, generator=gen(1))
    assert isinstance(params, MixupParams)
    out, t = op.transform(x, y, params)
    assert out.dtype == dtype and out.shape == x.shape and t.dtype == torch.float32
    lam = params.lam.double().view(-1, 1, 1, 1)
    ref = lam * x.double() + (1 - lam) * x.double()[params.perm]
    if dtype == torch.uint8:
        # rounded to the nearest integer (ties may go either way after float32 arithmetic)
        assert (out.double() - ref).abs().max() <= 0.5 + 1e-4
    else:
        tol = {torch.float16: 1e-3, torch.bfloat16: 8e-3}.get(dtype, 1e-6)
        assert torch.allclose(out.double(), ref.to(dtype).double(), atol=tol * 4, rtol=tol)
    one = F.one_hot(y, 5).double()
    lam1 = params.lam.double()[:, None]
    assert torch.allclose(t.double(), lam1 * one + (1 - lam1) * one[params.perm], atol=1e-6)
    assert torch.allclose(t.sum(1), torch.ones(16), atol=1e-6)
    assert torch.equal(x, x0)


def test_mixup_real_images_per_image_lam_and_permutation(cifar_uint8, cifar_labels):
    op = Mixup(alpha=1.0, num_classes=10)
    params = op.sample_params(cifar_uint8, generator=gen(2))
    assert torch.equal(params.perm.sort().values, torch.arange(64))
    assert params.lam.unique().numel() == 64  # one lam per image
    out, t = op.transform(cifar_uint8, cifar_labels, params)
    assert torch.equal(op(cifar_uint8, cifar_labels, generator=gen(2))[0], out)
    # each target row puts lam on the own class, 1 - lam on the partner's
    i = torch.arange(64)
    own = t[i, cifar_labels]
    same = cifar_labels == cifar_labels[params.perm]
    assert torch.allclose(own[~same], params.lam[~same], atol=1e-6)
    assert torch.allclose(own[same], torch.ones(int(same.sum())), atol=1e-6)


def test_mixup_p_keeps_images_bitwise():
    x, y = batch(64, 3, 8, 8, torch.bfloat16), labels(64, 4)
    op = Mixup(p=0.5, num_classes=4)
    params = op.sample_params(x, generator=gen(3))
    out, t = op.transform(x, y, params)
    skipped = params.lam == 1
    assert 16 < int(skipped.sum()) < 48
    assert torch.equal(out[skipped], x[skipped])
    assert torch.equal(t[skipped], F.one_hot(y[skipped], 4).float())
    out0, t0 = Mixup(p=0.0, num_classes=4)(x, y, generator=gen(0))
    assert torch.equal(out0, x) and torch.equal(t0, F.one_hot(y, 4).float())


def test_mixup_lam_moments():
    x = torch.zeros(20000, 1, 1, 1)
    for alpha in (0.2, 1.0):
        lam = Mixup(alpha=alpha).sample_params(x, generator=gen(4)).lam.double()
        var = 1 / (4 * (2 * alpha + 1))
        assert abs(lam.mean().item() - 0.5) < 0.01 and abs(lam.var().item() / var - 1) < 0.05


def test_mixup_soft_labels_and_batch_of_one():
    x = batch(1, 3, 5, 5, torch.float32)
    soft = torch.tensor([[0.2, 0.8]])
    out, t = Mixup()(x, soft, generator=gen(5))  # num_classes inferred from soft labels
    assert torch.equal(out, x) and torch.equal(t, soft)


def test_mixup_functional_errors():
    x, t = batch(4, 3, 5, 5, torch.float32), torch.eye(4)
    perm = torch.tensor([1, 0, 3, 2])
    with pytest.raises(ValueError, match="lam must lie in"):
        mixup(x, t, torch.tensor([0.5, 1.5, 0.5, 0.5]), perm)
    with pytest.raises(ValueError, match="lam must have shape"):
        mixup(x, t, torch.ones(3), perm)
    with pytest.raises(ValueError, match=r"perm must hold indices in \[0, 4\)"):
        mixup(x, t, torch.ones(4), torch.tensor([0, 1, 2, 4]))
    with pytest.raises(ValueError, match="targets has 3 rows"):
        mixup(x, t[:3], torch.ones(4), perm)


# ----------------------------------------------------------------------------- CutMix


def check_cutmix(x, out, t, y_soft, boxes, perm):
    """Exact invariants of a CutMix result."""
    b, _, h, w = x.shape
    m = box_masks(boxes, h, w)[:, None].expand_as(x)
    assert torch.equal(out[~m], x[~m])
    assert torch.equal(out[m], x[perm][m])
    lam = torch.tensor([1 - a / (h * w) for a in box_areas(boxes).tolist()], dtype=torch.float32)
    assert torch.equal(area_lambda(boxes, h, w), lam)
    ref = lam[:, None].double() * y_soft.double() + (1 - lam[:, None].double()) * y_soft.double()[perm]
    assert torch.allclose(t.double(), ref, atol=1e-6)
    assert torch.allclose(t.sum(1), torch.ones(b), atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cutmix_invariants(dtype):
    x, y = batch(32, 3, 20, 30, dtype), labels(32, 7)
    x0 = x.clone()
    op = CutMix(num_classes=7)
    params = op.sample_params(x, generator=gen(6))
    assert isinstance(params, CutMixParams) and isinstance(params, RegionParams)
    out, t = op.transform(x, y, params)
    assert out.dtype == dtype and t.dtype == torch.float32 and t.shape == (32, 7)
    check_cutmix(x, out, t, F.one_hot(y, 7).float(), params.boxes, params.perm)
    assert torch.equal(x, x0)
    assert len({tuple(b) for b in params.boxes.tolist()}) > 16  # per-image boxes


def test_cutmix_sizes_follow_lam():
    # Reproduce lam from the draw order (one (B, 1, 3) float64 draw: centre row, column, lam),
    # then sizes = floor(side * sqrt(1 - lam)).
    x = torch.zeros(50, 1, 17, 23)
    params = CutMix(alpha=1.0).sample_params(x, generator=gen(7))
    lam = torch.rand(50, 1, 3, generator=gen(7), dtype=torch.float64)[:, 0, 2]  # Beta(1, 1) is drawn as a uniform
    cut = (1 - lam).sqrt()
    assert params.sizes[:, 0].tolist() == [int(17 * float(c)) for c in cut]
    assert params.sizes[:, 1].tolist() == [int(23 * float(c)) for c in cut]
    hw = params.boxes[:, 2:] - params.boxes[:, :2]
    assert (hw <= params.sizes).all()


def test_cutmix_real_images(cifar_uint8, cifar_labels):
    op = CutMix(num_classes=10, p=0.5)
    params = op.sample_params(cifar_uint8, generator=gen(8))
    out, t = op.transform(cifar_uint8, cifar_labels, params)
    check_cutmix(cifar_uint8, out, t, F.one_hot(cifar_labels, 10).float(), params.boxes, params.perm)
    skipped = (params.sizes == 0).all(1)
    assert 16 < int(skipped.sum()) < 48
    assert torch.equal(out[skipped], cifar_uint8[skipped])
    assert torch.equal(op(cifar_uint8, cifar_labels, generator=gen(8))[1], t)


def test_cutmix_per_batch_matches_official_shape():
    x, y = batch(16, 3, 32, 32, torch.float32), labels(16, 10)
    op = CutMix(num_classes=10, per_sample=False)
    params = op.sample_params(x, generator=gen(9))
    assert (params.boxes == params.boxes[0]).all() and (params.sizes == params.sizes[0]).all()
    assert torch.equal(params.perm.sort().values, torch.arange(16))
    out, t = op.transform(x, y, params)
    check_cutmix(x, out, t, F.one_hot(y, 10).float(), params.boxes, params.perm)
    # p applies to the whole batch: either all mixed or none
    for seed in range(20):
        s = CutMix(p=0.5, per_sample=False).sample_params(x, generator=gen(seed)).sizes
        assert (s == 0).all() or (s > 0).all()


def test_cutmix_per_batch_uses_official_box_edges():
    # The official code (clovaai/CutMix-PyTorch): cut = int(side * sqrt(1 - lam)), centre
    # randint per axis, edges clip(c - cut // 2) and clip(c + cut // 2): an even box of
    # 2 (cut // 2). Reproduced from the documented draw order: lam (Beta(1, 1): one uniform),
    # then the shared centre's row, then its column.
    h, w = 19, 27
    x = torch.zeros(5, 1, h, w)
    odd_seen = False
    for seed in range(40):
        params = CutMix(alpha=1.0, per_sample=False).sample_params(x, generator=gen(seed))
        g = gen(seed)
        lam = float(torch.rand(1, generator=g, dtype=torch.float32).double())
        cy = int(torch.randint(0, h, (1,), generator=g))
        cx = int(torch.randint(0, w, (1,), generator=g))
        cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        odd_seen |= cut_h % 2 == 1 or cut_w % 2 == 1
        clip = lambda v, n: min(max(v, 0), n)
        official = [clip(cy - cut_h // 2, h), clip(cx - cut_w // 2, w), clip(cy + cut_h // 2, h), clip(cx + cut_w // 2, w)]
        assert params.boxes.tolist() == [official] * 5, seed
        assert params.sizes.tolist() == [[cut_h - cut_h % 2, cut_w - cut_w % 2]] * 5
        assert (params.sizes % 2 == 0).all()
    assert odd_seen  # the odd case (where the official box loses a pixel) was exercised


def test_cutmix_p_zero_identity_and_seed():
    x, y = batch(8, 3, 16, 16, torch.float16), labels(8, 3)
    out, t = CutMix(p=0.0, num_classes=3)(x, y, generator=gen(0))
    assert torch.equal(out, x) and torch.equal(t, F.one_hot(y, 3).float())
    op = CutMix(num_classes=3)
    a, b, c = op(x, y, generator=gen(10)), op(x, y, generator=gen(10)), op(x, y, generator=gen(11))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_cutmix_patch_weight_hook():
    x, y = batch(4, 3, 8, 8, torch.float32), labels(4, 5)
    boxes = torch.tensor([[0, 0, 4, 4], [2, 2, 8, 8], [0, 0, 0, 0], [0, 0, 8, 8]])
    perm = torch.tensor([1, 2, 3, 0])
    pw = torch.tensor([0.0, 0.9, 0.7, 0.25])
    params = CutMixParams(boxes=boxes, sizes=boxes[:, 2:] - boxes[:, :2], perm=perm)
    out, t = CutMix(num_classes=5).transform(x, y, params.replace(patch_weight=pw))
    one = F.one_hot(y, 5).float()
    w = torch.tensor([0.0, 0.9, 0.0, 0.25])  # an empty box gets weight 0 whatever it was given
    assert torch.allclose(t, (1 - w)[:, None] * one + w[:, None] * one[perm], atol=1e-7)
    # pixels do not depend on the label weight
    out_area, t_area = CutMix(num_classes=5).transform(x, y, params)
    assert torch.equal(out, out_area)
    _, _, lam = cutmix(x, one, boxes, perm, pw)
    assert torch.equal(lam, torch.tensor([0.75, 1 - 36 / 64, 1.0, 0.0]))
    with pytest.raises(ValueError, match="patch_weight must lie in"):
        CutMix(num_classes=5).transform(x, y, params.replace(patch_weight=torch.tensor([0.0, 1.2, 0.0, 0.0])))
    with pytest.raises(ValueError, match="patch_weight must have shape"):
        CutMix(num_classes=5).transform(x, y, params.replace(patch_weight=torch.zeros(3)))


def test_cutmix_replaced_boxes_keep_exact_lam():
    # What a placer does: keep sizes and perm, move the boxes, call apply.
    x, y = batch(6, 3, 10, 10, torch.float32), labels(6, 4)
    op = CutMix(num_classes=4)
    params = op.sample_params(x, generator=gen(12))
    h = params.sizes[:, 0].clamp(max=10)
    w = params.sizes[:, 1].clamp(max=10)
    moved = params.replace(boxes=torch.stack([torch.zeros_like(h), torch.zeros_like(w), h, w], 1))
    out, t = op.transform(x, y, moved)
    check_cutmix(x, out, t, F.one_hot(y, 4).float(), moved.boxes, params.perm)


def test_batch_of_one_is_unchanged():
    x, y = batch(1, 3, 12, 12, torch.uint8), labels(1, 3)
    for op in (CutMix(num_classes=3), Mixup(num_classes=3)):
        out, t = op(x, y, generator=gen(13))
        assert torch.equal(out, x) and torch.equal(t, F.one_hot(y, 3).float())


@pytest.mark.parametrize("op_cls", [Mixup, CutMix])
def test_label_errors(op_cls):
    x = batch(4, 3, 8, 8, torch.float32)
    with pytest.raises(ValueError, match="mixes labels"):
        op_cls(num_classes=3)(x)
    with pytest.raises(ValueError, match="mixes labels"):
        op_cls(num_classes=3).transform(x, None, op_cls(num_classes=3).sample_params(x, generator=gen(0)))
    with pytest.raises(ValueError, match="num_classes is needed"):
        op_cls()(x, labels(4, 3))
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        op_cls(num_classes=3)(x, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="K = num_classes = 3"):
        op_cls(num_classes=3)(x, torch.zeros(4, 5))
    with pytest.raises(ValueError, match=r"B = 4 \(the images' batch\), got \(3,\)"):
        op_cls(num_classes=3)(x, torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="labels must be a torch.Tensor"):
        op_cls(num_classes=3)(x, [0, 1, 2, 0])
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        op_cls(num_classes=0)
    with pytest.raises(ValueError, match="alpha"):
        op_cls(alpha=0.0)
    with pytest.raises(ValueError, match="p must be"):
        op_cls(p=2.0)


def test_cutmix_bad_params():
    x, y = batch(2, 3, 8, 8, torch.float32), labels(2, 3)
    params = CutMix(num_classes=3).sample_params(x, generator=gen(0))
    with pytest.raises(TypeError, match="CutMixParams"):
        CutMix(num_classes=3).transform(x, y, RegionParams(boxes=params.boxes, sizes=params.sizes))
    with pytest.raises(ValueError, match="inside"):
        CutMix(num_classes=3).transform(x, y, params.replace(boxes=torch.tensor([[0, 0, 9, 1], [0, 0, 1, 1]])))
    with pytest.raises(TypeError, match="per_sample"):
        CutMix(per_sample=1)


@given(
    b=st.integers(1, 8),
    c=st.sampled_from([1, 3]),
    h=st.integers(1, 24),
    w=st.integers(1, 24),
    dtype=st.sampled_from(DTYPES),
    alpha=st.sampled_from([0.2, 1.0, 2.0]),
    p=st.sampled_from([0.0, 0.5, 1.0]),
    per_sample=st.booleans(),
    seed=st.integers(0, 1000),
)
@settings(max_examples=40, deadline=None)
def test_property_cutmix(b, c, h, w, dtype, alpha, p, per_sample, seed):
    x, y = batch(b, c, h, w, dtype, seed), labels(b, 4, seed)
    op = CutMix(alpha=alpha, p=p, num_classes=4, per_sample=per_sample)
    params = op.sample_params(x, generator=gen(seed))
    out, t = op.transform(x, y, params)
    check_cutmix(x, out, t, F.one_hot(y, 4).float(), params.boxes, params.perm)
    m_out, m_t = Mixup(alpha=alpha, p=p, num_classes=4)(x, y, generator=gen(seed))
    assert m_out.dtype == dtype and torch.allclose(m_t.sum(1), torch.ones(b), atol=1e-6)


def test_device_mismatch_is_an_error():
    x = batch(2, 3, 4, 4, torch.float32)
    y = torch.tensor([0, 1], device="meta")
    with pytest.raises(ValueError, match="labels is on meta"):
        CutMix(num_classes=2)(x, y)
    with pytest.raises(ValueError, match="labels is on meta"):
        Mixup(num_classes=2)(x, y)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mixing_on_cuda_matches_cpu():
    x, y = batch(16, 3, 20, 24, torch.float32), labels(16, 5)
    for op in (CutMix(num_classes=5), Mixup(num_classes=5)):
        out_gpu, t_gpu = op(x.cuda(), y.cuda(), generator=gen(14))
        out_cpu, t_cpu = op(x, y, generator=gen(14))
        assert out_gpu.device.type == "cuda" and t_gpu.device.type == "cuda"
        assert torch.allclose(out_gpu.cpu(), out_cpu, atol=1e-6) and torch.allclose(t_gpu.cpu(), t_cpu, atol=1e-6)
    with pytest.raises(ValueError, match="labels is on cpu"):
        CutMix(num_classes=5)(x.cuda(), y)
