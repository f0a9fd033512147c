"""The official modes reproduce the official code's distributions.

References written from the official algorithms (clovaai/CutMix-PyTorch,
implus/RecursiveMix-pytorch, torchvision's AutoAugment), drawn with numpy: one box per
batch of side ``int(S sqrt(1 - lam))`` (CutMix, lam ~ Beta(1, 1)) or ``int(S sqrt(r))``
(RecursiveMix, r ~ U(0, alpha)) at a uniform centre c, spanning ``[clip(c - s//2),
clip(c + s//2))``; lam corrected to the unpasted area.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

import keepmix
from keepmix.functional.mixing import area_lambda

SIZE = 32
N = 3000


def _official_lams(side_ratio: np.ndarray, rng: np.random.RandomState, size: int = SIZE) -> np.ndarray:
    cut = (size * side_ratio).astype(int)
    c = rng.randint(0, size, (2, cut.size))
    lo, hi = np.clip(c - cut // 2, 0, size), np.clip(c + cut // 2, 0, size)
    return 1.0 - (hi[0] - lo[0]) * (hi[1] - lo[1]) / float(size * size)


def _keepmix_lams(op, n: int, with_history: bool = False) -> np.ndarray:
    x = torch.zeros(2, 1, SIZE, SIZE)
    y = torch.tensor([0, 1])
    if with_history:
        op.update(x, y, torch.zeros(2, op.num_classes))
    g = torch.Generator().manual_seed(0)
    lams = []
    for _ in range(n):
        p = op.sample_params(x, y, generator=g)
        assert torch.equal(p.boxes[0], p.boxes[1]), "the official mode draws one box per batch"
        lams.append(float(area_lambda(p.boxes[:1], SIZE, SIZE)))
    return np.array(lams)


def test_cutmix_official_mode_has_the_official_lambda_distribution():
    rng = np.random.RandomState(0)
    want = _official_lams(np.sqrt(1.0 - rng.beta(1.0, 1.0, 4 * N)), rng)
    got = _keepmix_lams(keepmix.CutMix(num_classes=2, per_sample=False), N)
    assert stats.ks_2samp(got, want).pvalue > 1e-3
    # The exact-edge boxes of per_sample=True are a different distribution (more area cut),
    # and the test can tell them apart: it would have caught the old far edge.
    # The two differ only for odd sides (one row and column): 40,000 draws on each side.
    big = 40_000
    official = _official_lams(np.sqrt(1.0 - rng.beta(1.0, 1.0, big)), rng)
    x, y = torch.zeros(1, 1, SIZE, SIZE).expand(big, 1, SIZE, SIZE), torch.zeros(big, dtype=torch.long)
    exact = keepmix.CutMix(num_classes=2).sample_params(x, y, generator=torch.Generator().manual_seed(1))
    exact_lams = area_lambda(exact.boxes, SIZE, SIZE).numpy()
    assert stats.ks_2samp(exact_lams, official).pvalue < 1e-6


def test_recursivemix_official_mode_has_the_official_lambda_distribution():
    rng = np.random.RandomState(1)
    want = _official_lams(np.sqrt(rng.uniform(0, 0.5, 4 * N)), rng)
    got = _keepmix_lams(keepmix.RecursiveMix(num_classes=2, alpha=0.5, per_sample=False), N, with_history=True)
    assert stats.ks_2samp(got, want).pvalue > 1e-3


@pytest.mark.parametrize("side", [7, 8, 15, 16])
def test_official_edges(side):
    """An unclipped official box of side s spans [c - s//2, c + s//2): 2 (s//2) pixels."""
    from keepmix.functional.boxes import centered_boxes

    even = side - side % 2
    box = centered_boxes(torch.tensor([16]), torch.tensor([16]), torch.tensor([even]), torch.tensor([even]), 32, 32)
    assert box.tolist() == [[16 - side // 2, 16 - side // 2, 16 + side // 2, 16 + side // 2]]


def test_recursivemix_bilinear_defaults_to_the_official_align_corners():
    assert keepmix.RecursiveMix(num_classes=2, interpolation="bilinear").align_corners is True
    assert keepmix.RecursiveMix(num_classes=2).align_corners is False
    with pytest.raises(ValueError, match="align_corners only applies"):
        keepmix.RecursiveMix(num_classes=2, align_corners=True)


def test_translate_moves_whole_pixels_as_torchvision():
    """torchvision translates by int(magnitude): CIFAR-10 AutoAugment's bins 9 / 8 / 3 move
    14 / 12 / 4 pixels (150/331 of 32 px, over 10 bins)."""
    from keepmix.functional.policy_ops import _OP_ID, magnitude_table

    table = magnitude_table("standard", 10, 32, 32)
    for name in ("TranslateX", "TranslateY"):
        assert table[_OP_ID[name], [9, 8, 3]].tolist() == [14.0, 12.0, 4.0]
        want = [int(v) for v in np.linspace(0.0, 150.0 / 331.0 * 32, 10)]
        assert table[_OP_ID[name]].tolist() == want
    floats = magnitude_table("standard", 10, 32, 32, whole_pixel_translate=False)
    assert floats[_OP_ID["TranslateX"], 9] == pytest.approx(150.0 / 331.0 * 32)

    # The op moves the image by exactly that many pixels.
    x = torch.arange(32 * 32, dtype=torch.float32).reshape(1, 1, 32, 32).expand(1, 3, 32, 32) / 1024
    op = keepmix.RandAugment(num_ops=1, magnitude=30, ops=["TranslateX"])
    params = op.sample_params(x, generator=torch.Generator().manual_seed(0))
    out = op.transform(x, None, params)
    shift = int(params.signed_magnitudes[0, 0])
    assert abs(shift) == int(150.0 / 331.0 * 32)
    # PIL's convention, which torchvision follows: a positive offset moves the content right.
    if shift > 0:
        assert torch.equal(out[..., shift:], x[..., : 32 - shift])
    else:
        assert torch.equal(out[..., : 32 + shift], x[..., -shift:])
