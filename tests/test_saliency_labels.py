"""Saliency label checks: (B, 1) integer labels, soft targets of the wrong width and
out-of-range class ids are refused with a message naming ``labels``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from keepmix.saliency import Saliency, saliency_map


def _net(k: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, k))


def test_b_by_1_integer_labels_are_refused_not_read_as_soft_targets():
    x = torch.rand(4, 3, 8, 8)
    ids = torch.tensor([0, 3, 4, 1])
    with pytest.raises(TypeError, match=r"labels of shape \(4, 1\) hold integers: class ids must have shape \(B,\)"):
        Saliency(_net())(x, ids[:, None])
    # What the caller meant: the class ids as (B,), which picks each image's own logit.
    assert not torch.equal(Saliency(_net())(x, ids), Saliency(_net())(x, torch.zeros(4, dtype=torch.long)))


def test_soft_targets_of_the_wrong_width_are_refused():
    x = torch.rand(4, 3, 8, 8)
    with pytest.raises(ValueError, match=r"labels .* must be K = 5 wide .* got \(4, 7\)"):
        Saliency(_net(5))(x, torch.full((4, 7), 1 / 7))
    with pytest.raises(ValueError, match="labels .* K = 5 wide"):
        Saliency(_net(5))(x, torch.ones(4, 1))  # a float (B, 1) is soft targets of width 1
    soft = torch.softmax(torch.randn(4, 5), 1)
    assert Saliency(_net(5))(x, soft).shape == (4, 8, 8)


@pytest.mark.parametrize("bad", [5, -1, 100])
def test_out_of_range_class_ids_name_labels(bad):
    x = torch.rand(4, 3, 8, 8)
    ids = torch.tensor([0, 1, bad, 2])
    with pytest.raises(ValueError, match=rf"labels must be class ids in \[0, 5\).*got values in \[{min(bad, 0)}, {max(bad, 2)}\]"):
        Saliency(_net(5))(x, ids)
    with pytest.raises(ValueError, match="labels must be class ids"):
        saliency_map(_net(5), x, ids)
