"""The airbench-class networks: registry, shapes, early head position, sizes, whitening, training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import keepmix
from keepmix.models import MODELS, build_model, count_parameters, list_models
from keepmix.models.airbench import AirbenchNet, ScaledLinear

torch.set_num_threads(1)

# (params with 10 classes, feature channels): counts of this implementation.
EXPECTED = {"airbench94": (1_972_792, 256), "airbench95": (4_606_520, 384), "airbench96": (12_721_208, 512)}


def tiny(**kw) -> AirbenchNet:
    torch.manual_seed(0)
    return AirbenchNet(variant="airbench94", widths=(8, 16, 16), **kw)


def test_registered():
    for name in EXPECTED:
        assert name in MODELS and name in list_models()
    with pytest.raises(ValueError, match="unknown airbench variant"):
        AirbenchNet(variant="airbench97")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameter_count_and_attributes(name):
    m = build_model(name)
    n, c = EXPECTED[name]
    assert count_parameters(m) == n
    # The published nets: ~2M (94), ~4.6M (95), ~12.7M (96) weights; a stray layer would show.
    assert {"airbench94": (1.5e6, 2.5e6), "airbench95": (4e6, 5.2e6), "airbench96": (11e6, 14e6)}[name][0] < n
    assert n < {"airbench94": 2.5e6, "airbench95": 5.2e6, "airbench96": 14e6}[name]
    assert (m.feature_channels, m.feature_stride, m.num_classes) == (c, 8, 10)
    assert isinstance(m.fc, nn.Linear) and isinstance(m.fc, ScaledLinear) and m.fc.bias is None
    assert m.fc.in_features == c and m.has_early_head is False
    # BN weights fixed at 1 (only biases train).
    bns = [b for b in m.modules() if isinstance(b, nn.BatchNorm2d)]
    assert bns and all(not b.weight.requires_grad and b.bias.requires_grad for b in bns)


@pytest.mark.parametrize("hw", [(32, 32), (32, 48)])
def test_shapes_default_and_exact_stride(hw):
    h, w = hw
    x = torch.randn(2, 3, h, w)
    m = tiny().eval()
    with torch.no_grad():
        f = m.forward_features(x)
        logits = m(x)
    assert f.shape == (2, 16, (h - 1) // 8, (w - 1) // 8)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    torch.testing.assert_close(m.classify(f), logits)
    e = tiny(exact_stride=True).eval()
    with torch.no_grad():
        fe = e.forward_features(x)
    assert fe.shape == (2, 16, -(-h // 8), -(-w // 8))


def test_full_size_32px_features_are_3x3():
    m = build_model("airbench95").eval()
    with torch.no_grad():
        assert m.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 384, 3, 3)


def test_classify_pools_max_or_avg_and_scales():
    m = tiny().eval()
    f = torch.randn(3, 16, 3, 3)
    expect = F.linear(f.amax(dim=(-2, -1)), m.fc.weight) / 9
    torch.testing.assert_close(m.classify(f), expect)
    a = tiny(pool="avg").eval()
    torch.testing.assert_close(a.classify(f), F.linear(f.mean(dim=(-2, -1)), a.fc.weight) / 9)
    with pytest.raises(ValueError, match="features must have shape"):
        m.classify(torch.randn(3, 5, 3, 3))


def test_early_head_after_the_first_group():
    m = tiny(early_head=True).eval()
    assert m.has_early_head and m.early_stage == 1
    before, after = m._early_split()
    assert before == [m.stem, m.stages[0]] and after == [m.stages[1], m.stages[2]]
    assert m.early_head.fc.in_features == 8  # the first group's width
    x = torch.randn(2, 3, 32, 32)
    seen = {}
    h = m.stages[1].register_forward_hook(lambda mod, i, o: seen.setdefault("stage2", True))
    with torch.no_grad():
        early = m.early_logits(x)
    assert early.shape == (2, 10) and "stage2" not in seen  # later groups never run
    h.remove()
    with torch.no_grad():
        logits, early2 = m.forward_with_early(x)
        torch.testing.assert_close(logits, m(x))
        torch.testing.assert_close(early2, early)
    with pytest.raises(ValueError, match="early_block"):
        AirbenchNet(widths=(8, 16, 16), early_head=True, early_block=1)


def test_early_saliency_backward_stops_at_the_first_group():
    m = tiny(early_head=True)
    sal = keepmix.Saliency(m.early_logits)(torch.randn(2, 3, 32, 32), torch.tensor([1, 2]))
    assert sal.shape == (2, 32, 32) and (sal >= 0).all() and sal.sum() > 0


def test_dirac_init_makes_the_second_conv_an_identity():
    m = tiny()
    conv = m.stages[0].convs[0]  # 8 -> 8: every filter is the identity
    x = torch.randn(1, 8, 5, 5)
    torch.testing.assert_close(conv(x), x)
    first = m.stages[1].conv1  # 8 -> 16: the first 8 filters copy the input
    x2 = torch.randn(1, 8, 5, 5)
    torch.testing.assert_close(first(x2)[:, :8], x2)


def test_residual_variant_has_three_convs_per_group():
    m = AirbenchNet(variant="airbench96", widths=(8, 16, 16))
    assert all(len(g.convs) == 2 and g.residual for g in m.stages)
    with pytest.raises(ValueError, match="residual group needs depth"):
        AirbenchNet(widths=(8, 16, 16), depth=2, residual=True)


def test_whitening_init_whitens_patches_and_freezes_the_weight():
    torch.manual_seed(1)
    base = torch.randn(64, 3, 16, 16)
    x = base + 0.8 * base.roll(1, dims=-1)  # correlated neighbours
    m = tiny()
    m.init_whitening(x)
    w = m.stem_conv.weight
    assert w.shape == (24, 3, 2, 2) and not w.requires_grad and m.stem_conv.bias.requires_grad
    torch.testing.assert_close(w[12:], -w[:12])
    out = F.conv2d(x, w[:12])  # the positive half: near-unit, decorrelated channels
    cov = torch.einsum("nchw,ndhw->cd", out, out) / (out.numel() / 12)
    torch.testing.assert_close(cov, torch.eye(12), atol=0.05, rtol=0)


def test_a_few_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    m = tiny(early_head=True)
    x = torch.randn(16, 3, 32, 32)
    y = torch.arange(16) % 10
    m.init_whitening(x)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.05, momentum=0.9, nesterov=True)
    losses = []
    for _ in range(25):
        logits, early = m.forward_with_early(x)
        loss = F.cross_entropy(logits, y) + 0.3 * F.cross_entropy(early, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
