"""Tests of keepmix.targets: soft targets, their validation, and the soft-target cross-entropy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from keepmix.targets import SoftTargetCrossEntropy, mix_targets, soft_target_cross_entropy, to_soft_targets


def test_to_soft_targets_one_hot_and_soft_passthrough():
    y = torch.tensor([2, 0, 1])
    t = to_soft_targets(y, 4)
    assert t.dtype == torch.float32 and torch.equal(t, F.one_hot(y, 4).float())
    soft = torch.tensor([[0.25, 0.75], [1.0, 0.0]], dtype=torch.float64)
    out = to_soft_targets(soft)
    assert out.dtype == torch.float32 and torch.equal(out, soft.float())
    assert to_soft_targets(y.int(), 3, batch_size=3).shape == (3, 3)


@pytest.mark.parametrize(
    "labels,kwargs,exc,match",
    [
        (torch.tensor([0, 4]), {"num_classes": 4}, ValueError, r"\[0, 4\)"),
        (torch.tensor([-1, 0]), {"num_classes": 4}, ValueError, "found -1"),
        (torch.tensor([0, 1]), {}, ValueError, "num_classes"),
        (torch.tensor([0.0, 1.0]), {"num_classes": 2}, TypeError, "integer"),
        (torch.tensor([True, False]), {"num_classes": 2}, TypeError, "integer"),
        (torch.zeros(2, 3), {"num_classes": 4}, ValueError, "K = num_classes = 4"),
        (torch.zeros(2, 3, dtype=torch.long), {}, TypeError, "floating point"),
        (torch.zeros(2, 3, 1), {}, ValueError, r"\(B,\) or \(B, K\)"),
        (torch.tensor([0, 1]), {"num_classes": 2, "batch_size": 3}, ValueError, "3"),
        ([0, 1], {"num_classes": 2}, TypeError, "torch.Tensor"),
        (torch.tensor([0, 1]), {"num_classes": 0}, ValueError, "positive"),
    ],
)
def test_to_soft_targets_errors(labels, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        to_soft_targets(labels, **kwargs)


def test_mix_targets_rows_sum_to_one():
    g = torch.Generator().manual_seed(0)
    y = F.softmax(torch.randn(8, 5, generator=g), 1)
    lam = torch.rand(8, generator=g)
    m = mix_targets(y, y.flip(0), lam)
    assert torch.allclose(m, lam[:, None] * y + (1 - lam[:, None]) * y.flip(0))
    assert torch.allclose(m.sum(1), torch.ones(8))


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_soft_ce_equals_cross_entropy_on_hard_labels(smoothing, reduction):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(16, 7, generator=g, dtype=torch.float64).float()
    y = torch.randint(0, 7, (16,), generator=g)
    ref = F.cross_entropy(logits, y, label_smoothing=smoothing, reduction=reduction)
    ours_ids = soft_target_cross_entropy(logits, y, smoothing, reduction)
    ours_onehot = SoftTargetCrossEntropy(smoothing, reduction)(logits, F.one_hot(y, 7).float())
    assert torch.allclose(ours_ids, ref, atol=1e-5, rtol=1e-5)
    assert torch.allclose(ours_onehot, ref, atol=1e-5, rtol=1e-5)


def test_soft_ce_matches_float64_reference_on_soft_targets():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(10, 4, generator=g)
    t = F.softmax(torch.randn(10, 4, generator=g), 1)
    ref = -(t.double() * F.log_softmax(logits.double(), 1)).sum(1).mean()
    assert torch.allclose(soft_target_cross_entropy(logits, t).double(), ref, atol=1e-6)
    # cross-entropy against a soft target = KL + entropy: gradient is softmax - t
    lg = logits.clone().requires_grad_(True)
    soft_target_cross_entropy(lg, t, reduction="sum").backward()
    assert torch.allclose(lg.grad, F.softmax(logits, 1) - t, atol=1e-6)


def test_soft_ce_half_logits_computed_in_float32():
    logits = torch.randn(4, 3).half()
    y = torch.tensor([0, 1, 2, 0])
    out = soft_target_cross_entropy(logits, y)
    assert out.dtype == torch.float32
    assert torch.allclose(out, F.cross_entropy(logits.float(), y), atol=1e-6)


def test_soft_ce_errors():
    with pytest.raises(ValueError, match="label_smoothing"):
        SoftTargetCrossEntropy(label_smoothing=1.0)
    with pytest.raises(ValueError, match="logits"):
        soft_target_cross_entropy(torch.randn(4), torch.tensor([0]))
    with pytest.raises(ValueError, match="reduction"):
        soft_target_cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]), reduction="avg")
    with pytest.raises(ValueError, match="K = num_classes = 3"):
        soft_target_cross_entropy(torch.randn(2, 3), torch.zeros(2, 4))
