"""Attentive CutMix: a per-image loop, lambda = N cells' area / (H W) exactly, the teacher
(FeatureHook, forward_features, eval mode, no_grad), the grid error, the contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from contract import K, check_op
from torch import nn

from keepmix.attentive_cutmix import AttentiveCutMix, FeatureTeacher, top_cells


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def pool4(images: torch.Tensor) -> torch.Tensor:
    """A tiny fixed teacher: the image average-pooled to a 4 x 4 grid."""
    return F.adaptive_avg_pool2d(images.float(), 4)


def _reference(x, y, perm, feats, top_k, num_classes):
    """The definition, image by image: the partner's top-k cells (channel sums, stable
    descending order) copied patch by patch; lam = 1 - k (H/h)(W/w) / (H W)."""
    b, _, hh, ww = x.shape
    gh, gw = feats.shape[-2:]
    ch, cw = hh // gh, ww // gw
    out = x.clone()
    t = torch.zeros(b, num_classes)
    for i in range(b):
        j = int(perm[i])
        score = feats[j].double().sum(0).flatten().numpy()
        for cell in np.argsort(-score, kind="stable")[:top_k]:
            r, c = divmod(int(cell), gw)
            out[i, :, r * ch : (r + 1) * ch, c * cw : (c + 1) * cw] = x[j, :, r * ch : (r + 1) * ch, c * cw : (c + 1) * cw]
        lam = torch.tensor(1.0 - top_k * ch * cw / (hh * ww), dtype=torch.float64).float()
        t[i, y[i]] += lam
        t[i, y[j]] += 1.0 - lam
    return out, t


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_matches_per_image_loop(cifar_uint8, dtype):
    x = cifar_uint8[:16] if dtype == torch.uint8 else cifar_uint8[:16].float() / 255
    y = torch.arange(16) % K
    op = AttentiveCutMix(pool4, num_classes=K)
    params = op.sample_params(x, y, generator=_gen(1))
    got, targets = op.transform(x, y, params)
    want, want_t = _reference(x, y, params.perm, pool4(x), 6, K)
    assert torch.equal(got, want)
    torch.testing.assert_close(targets, want_t, rtol=0, atol=1e-7)
    assert torch.equal(params.cells.sum((1, 2)), torch.full((16,), 6))


def test_lambda_is_the_exact_cell_area():
    # A ResNet-like 7 x 7 grid on 28 x 28 images: 4 x 4 cells; N = 6 cells pasted.
    b, n = 12, 6
    x = torch.rand(b, 3, 28, 28, generator=_gen(2))
    y = torch.arange(b)
    teacher = lambda im: F.avg_pool2d(im, 4)
    op = AttentiveCutMix(teacher, top_k=n, num_classes=b)
    params = op.sample_params(x, y, generator=_gen(3))
    out, t = op.transform(x, y, params)
    lam = torch.tensor(1.0 - n * 16 / (28 * 28), dtype=torch.float64).float()  # = 1 - 6 / 49
    rows = torch.arange(b)
    moved = params.perm != rows
    assert moved.any()
    assert (t[rows[moved], y[moved]] == lam).all() and (t[rows[moved], params.perm[moved]] == 1.0 - lam).all()
    # Exactly N cells' pixels changed (random images differ everywhere).
    changed = (out != x).any(1).sum((1, 2))
    assert torch.equal(changed[moved], torch.full((int(moved.sum()),), n * 16))


def test_cells_are_the_partners_top_cells():
    x = torch.rand(8, 3, 16, 16, generator=_gen(4))
    y = torch.arange(8) % K
    feats = torch.randn(8, 5, 4, 4, generator=_gen(5))
    op = AttentiveCutMix(lambda im: feats, top_k=3, num_classes=K)
    params = op.sample_params(x, y, generator=_gen(6))
    score = feats.sum(1).flatten(1)
    for i in range(8):
        want = set(score[int(params.perm[i])].topk(3).indices.tolist())
        assert set(params.cells[i].flatten().nonzero().flatten().tolist()) == want
    # Ties keep the lower row-major index first: a constant map picks the first cells.
    cells = top_cells(torch.ones(2, 3, 3, 4), 5)
    assert cells.flatten(1)[:, :5].all() and not cells.flatten(1)[:, 5:].any()


def test_skipped_images_come_back_unchanged():
    x = torch.rand(6, 3, 16, 16, generator=_gen(7))
    y = torch.arange(6) % K
    out, t = AttentiveCutMix(pool4, p=0.0, num_classes=K)(x, y, generator=_gen())
    assert torch.equal(out, x) and torch.equal(t, F.one_hot(y, K).float())


def test_grid_that_does_not_divide_the_image_is_an_error():
    x = torch.rand(2, 3, 32, 30)
    y = torch.zeros(2, dtype=torch.int64)
    op = AttentiveCutMix(lambda im: F.adaptive_avg_pool2d(im, 5), num_classes=K)
    with pytest.raises(ValueError, match=r"teacher <lambda> returned a 5x5 feature map for 32x30 images"):
        op(x, y, generator=_gen())

    def stride3(im):
        return F.avg_pool2d(im, 3)

    with pytest.raises(ValueError, match=r"stride3.*10x10 feature map for 32x32"):
        AttentiveCutMix(stride3, num_classes=K)(torch.rand(2, 3, 32, 32), y)
    with pytest.raises(ValueError, match=r"top_k=6 exceeds the 2x2 = 4 cells"):
        AttentiveCutMix(lambda im: F.avg_pool2d(im, 16), num_classes=K)(torch.rand(2, 3, 32, 32), y)
    with pytest.raises(ValueError, match=r"\(B, C, h, w\) with B = 2"):
        AttentiveCutMix(lambda im: im[:1], num_classes=K)(torch.rand(2, 3, 32, 32), y)
    with pytest.raises(ValueError, match=r"\(B, C, h, w\)"):
        AttentiveCutMix(lambda im: im.mean(1), num_classes=K)(torch.rand(2, 3, 32, 32), y)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.stage = nn.Sequential(nn.Conv2d(8, 8, 3, stride=4, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, K))

    def forward_features(self, x):
        return self.stage(self.stem(x))

    def forward(self, x):
        return self.head(self.forward_features(x))


def test_teacher_through_feature_hook_and_forward_features():
    torch.manual_seed(0)
    net = _Net().train()
    bn_mean = net.stem[1].running_mean.clone()
    x = torch.rand(6, 3, 16, 16, generator=_gen(8))
    y = torch.arange(6) % K
    with torch.no_grad():
        net.eval()
        want = net.forward_features(x)
        net.train()
    for teacher in (FeatureTeacher(net, "stage"), FeatureTeacher(net), net.forward_features):
        op = AttentiveCutMix(teacher, top_k=4, num_classes=K)
        feats = op.features(x)
        torch.testing.assert_close(feats, want)  # eval mode: running statistics used
        assert not feats.requires_grad
        params = op.sample_params(x, y, generator=_gen(9))
        assert torch.equal(params.cells, top_cells(want, 4)[params.perm])
        assert net.training and all(m.training for m in net.modules())  # modes restored
        assert torch.equal(net.stem[1].running_mean, bn_mean)  # and nothing updated
    assert not list(AttentiveCutMix(net.forward_features, num_classes=K).parameters())
    # uint8 batches go into a float32 module teacher as floats.
    AttentiveCutMix(FeatureTeacher(net, "stage"), top_k=4, num_classes=K)(torch.zeros(2, 3, 16, 16, dtype=torch.uint8), y[:2])
    # eval_teacher=False keeps the teacher's mode (batch statistics in training).
    keep = AttentiveCutMix(FeatureTeacher(net, "stage"), top_k=4, num_classes=K, eval_teacher=False)
    assert not torch.allclose(keep.features(x), want)
    with pytest.raises(ValueError, match="module_name 'layer9'"):
        FeatureTeacher(net, "layer9")
    with pytest.raises(ValueError, match="forward_features"):
        FeatureTeacher(nn.Conv2d(3, 3, 1))
    hook_teacher = FeatureTeacher(net, "stage")
    hook_teacher(x)
    assert not net.stage._forward_hooks  # the hook is attached only during a call


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        ({"top_k": 0}, ValueError, "top_k"),
        ({"top_k": 2.0}, ValueError, "top_k"),
        ({"p": -0.1}, ValueError, "p"),
        ({"num_classes": -1}, ValueError, "num_classes"),
        ({"eval_teacher": 1}, TypeError, "eval_teacher"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, error, name):
    with pytest.raises(error, match=name):
        AttentiveCutMix(pool4, **kwargs)


def test_bad_teacher_and_params():
    with pytest.raises(TypeError, match="teacher"):
        AttentiveCutMix(None)
    op = AttentiveCutMix(pool4, num_classes=K)
    x, y = torch.rand(4, 3, 16, 16), torch.zeros(4, dtype=torch.int64)
    params = op.sample_params(x, y, generator=_gen())
    with pytest.raises(ValueError, match="params.cells"):
        op.transform(x, y, params.replace(cells=torch.zeros(4, 3, 3, dtype=torch.bool)))
    with pytest.raises(ValueError, match="params.cells"):
        op.transform(x, y, params.replace(cells=params.cells.float()))
    with pytest.raises(ValueError, match="mixes labels"):
        op(x)
    assert "teacher=pool4" in repr(op) and "top_k=6" in repr(op)
    assert op.region is None and op.regions(params) is None


@pytest.mark.parametrize(
    "make",
    [lambda: AttentiveCutMix(pool4, num_classes=K), lambda: AttentiveCutMix(pool4, top_k=3, p=0.5, num_classes=K)],
    ids=["default", "top3-p"],
)
def test_contract(make):
    check_op(make)
