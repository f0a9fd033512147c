"""MixupCutMix against timm's Mixup: the same distribution of draws, the same pixels given them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

import keepmix
from keepmix import MixupCutMix

K = 10


def _batch(b: int = 8, h: int = 32, w: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g), torch.randint(0, K, (b,), generator=g)


# ---------------------------------------------------------------- a per-image reference


def _reference_apply(x: torch.Tensor, y: torch.Tensor, params, smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """timm's per-element loop, written from its definition: image i mixes with B - 1 - i,
    by a blend of own weight lam or by pasting the partner's box; targets mix the one-hot
    (smoothed) labels with lam."""
    b = x.shape[0]
    out = x.clone()
    for i in range(b):
        j = b - 1 - i
        if bool(params.use_cutmix[i]):
            y1, x1, y2, x2 = params.boxes[i].tolist()
            out[i, :, y1:y2, x1:x2] = x[j, :, y1:y2, x1:x2]
        else:
            lam = float(params.lam[i])
            out[i] = x[i] * lam + x[j] * (1 - lam)
    off = smoothing / K
    onehot = torch.full((b, K), off).scatter_(1, y[:, None], 1.0 - smoothing + off)
    lam = params.lam[:, None]
    return out, onehot * lam + onehot.flip(0) * (1 - lam)


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
@pytest.mark.parametrize("minmax", [None, (0.2, 0.8)])
def test_apply_matches_the_per_image_reference(mode, minmax):
    x, y = _batch()
    op = MixupCutMix(mixup_alpha=0.8, cutmix_alpha=1.0, cutmix_minmax=minmax, mode=mode, label_smoothing=0.1, num_classes=K)
    g = torch.Generator().manual_seed(1)
    for _ in range(6):
        params = op.sample_params(x, y, generator=g)
        got_x, got_t = op.transform(x, y, params)
        want_x, want_t = _reference_apply(x, y, params, 0.1)
        torch.testing.assert_close(got_x, want_x, atol=1e-6, rtol=0)
        torch.testing.assert_close(got_t, want_t, atol=1e-6, rtol=0)


def test_modes_share_draws_as_timm_does():
    x, y = _batch(b=8)
    g = torch.Generator().manual_seed(2)
    batch = MixupCutMix(mixup_alpha=1.0, cutmix_alpha=1.0, mode="batch", num_classes=K)
    pair = MixupCutMix(mixup_alpha=1.0, cutmix_alpha=1.0, mode="pair", num_classes=K)
    for _ in range(10):
        p = batch.sample_params(x, generator=g)
        assert (p.lam == p.lam[0]).all() and (p.use_cutmix == p.use_cutmix[0]).all() and (p.boxes == p.boxes[0]).all()
        p = pair.sample_params(x, generator=g)
        assert torch.equal(p.lam, p.lam.flip(0)) and torch.equal(p.boxes, p.boxes.flip(0))
        assert torch.equal(p.perm, torch.arange(7, -1, -1))


def test_cutmix_boxes_have_timm_edges_and_corrected_lam():
    x, y = _batch(b=64)
    op = MixupCutMix(mixup_alpha=0.0, cutmix_alpha=1.0, mode="elem", num_classes=K)
    p = op.sample_params(x, generator=torch.Generator().manual_seed(3))
    assert p.use_cutmix.all()
    area = (p.boxes[:, 2] - p.boxes[:, 0]) * (p.boxes[:, 3] - p.boxes[:, 1])
    torch.testing.assert_close(p.lam, (1 - area.double() / 1024).float())
    # Uncorrected: lam is the Beta draw, the box is still clipped.
    raw = MixupCutMix(mixup_alpha=0.0, cutmix_alpha=1.0, mode="elem", correct_lam=False, num_classes=K)
    q = raw.sample_params(x, generator=torch.Generator().manual_seed(3))
    assert torch.equal(q.boxes, p.boxes) and not torch.equal(q.lam, p.lam)


# ---------------------------------------------------------------- distributions


def _timm_elem_lams(
    n: int, rng: np.random.RandomState, mixup_alpha: float, cutmix_alpha: float, prob: float, switch_prob: float, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """timm 1.0.31's per-element draws (``_params_per_elem`` then ``cutmix_bbox_and_lam`` with
    correct_lam; the exact side ``[c - s//2, c + (s + 1)//2)``), written from its definition
    with numpy's RandomState."""
    use_cutmix = rng.rand(n) < switch_prob
    lam_mix = np.where(use_cutmix, rng.beta(cutmix_alpha, cutmix_alpha, n), rng.beta(mixup_alpha, mixup_alpha, n))
    applied = rng.rand(n) < prob
    lam = np.where(applied, lam_mix.astype(np.float32), 1.0)
    use_cutmix = use_cutmix & applied
    cut = (size * np.sqrt(1 - lam[use_cutmix])).astype(int)
    c = rng.randint(0, size, (2, cut.size))
    lo = np.clip(c - cut // 2, 0, size)
    hi = np.clip(c + (cut + 1) // 2, 0, size)
    area = (hi[0] - lo[0]) * (hi[1] - lo[1])
    lam = lam.copy()
    lam[use_cutmix] = 1 - area / float(size * size)
    return lam, use_cutmix


def test_elem_mode_has_timms_distribution():
    n = 6000
    kwargs = dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.9, switch_prob=0.5)
    want_lam, want_cut = _timm_elem_lams(n, np.random.RandomState(0), size=32, **kwargs)
    op = MixupCutMix(mode="elem", num_classes=K, **kwargs)
    x = torch.zeros(n, 1, 32, 32)
    p = op.sample_params(x, generator=torch.Generator().manual_seed(0))
    got_lam, got_cut = p.lam.numpy(), p.use_cutmix.numpy()
    # Each kind's lam, and the whole mixture, against timm's (two-sample KS).
    for sel_got, sel_want in ((got_cut, want_cut), (~got_cut, ~want_cut), (slice(None), slice(None))):
        assert stats.ks_2samp(got_lam[sel_got], want_lam[sel_want]).pvalue > 1e-3
    # The share of CutMix images: prob * switch_prob, within 4 standard errors.
    share, se = got_cut.mean(), np.sqrt(0.45 * 0.55 / n)
    assert abs(share - 0.45) < 4 * se


def test_minmax_boxes_follow_timms_ranges():
    op = MixupCutMix(mixup_alpha=0.0, cutmix_minmax=(0.25, 0.75), mode="elem", num_classes=K)
    assert op.cutmix_alpha == 1.0
    x = torch.zeros(4000, 1, 32, 40)
    p = op.sample_params(x, generator=torch.Generator().manual_seed(4))
    h, w = p.boxes[:, 2] - p.boxes[:, 0], p.boxes[:, 3] - p.boxes[:, 1]
    # Sides uniform in [int(H min), int(H max)), corners uniform in [0, H - h] (timm 1.0.31:
    # a box reaches the last row and column, timm PR #2739).
    assert set(h.tolist()) == set(range(8, 24)) and set(w.tolist()) == set(range(10, 30))
    assert (p.boxes[:, 2] <= 32).all() and (p.boxes[:, 3] <= 40).all() and (p.boxes[:, :2] >= 0).all()
    assert (p.boxes[:, 0] == 0).any() and (p.boxes[:, 2] == 32).any() and (p.boxes[:, 3] == 40).any()


def test_keep_placer_inside_the_switch():
    x, y = _batch(b=16)
    s = torch.zeros(16, 32, 32)
    s[:, :16] = 1.0  # the top half is salient: selective-cut boxes avoid it
    op = MixupCutMix(mixup_alpha=0.0, cutmix_minmax=(0.2, 0.3), mode="batch", num_classes=K, placer=keepmix.KeepPlacer(q=0.3))
    p = op.sample_params(x, y, saliency=s, generator=torch.Generator().manual_seed(5))
    assert p.use_cutmix.all()
    assert (p.boxes[:, 0] >= 16).all(), "a KeepPlacer keeps the boxes off the salient top half"
    assert len(set(map(tuple, p.boxes.tolist()))) > 1, "positions are per image"
    assert (p.boxes[:, 2] - p.boxes[:, 0] == p.boxes[0, 2] - p.boxes[0, 0]).all(), "the batch shares one size"


def test_odd_batches_and_bad_arguments():
    x, y = _batch(b=5)
    out, t = MixupCutMix(cutmix_alpha=1.0, mode="elem", num_classes=K)(x, y, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[2], x[2]), "the middle image of an odd batch is its own partner"
    with pytest.raises(ValueError, match="mode='pair' needs an even batch"):
        MixupCutMix(mode="pair", num_classes=K)(x, y)
    with pytest.raises(ValueError, match="mixup_alpha"):
        MixupCutMix(mixup_alpha=-1)
    with pytest.raises(ValueError, match="enable Mixup or CutMix"):
        MixupCutMix(mixup_alpha=0.0, cutmix_alpha=0.0)
    with pytest.raises(ValueError, match="mode must be"):
        MixupCutMix(mode="element")
    with pytest.raises(ValueError, match="switch_prob"):
        MixupCutMix(switch_prob=1.5)
    with pytest.raises(ValueError, match="label_smoothing"):
        MixupCutMix(label_smoothing=1.0)
    with pytest.raises(ValueError, match="cutmix_minmax"):
        MixupCutMix(cutmix_minmax=(0.9, 0.1))
    with pytest.raises(ValueError, match="cutmix_minmax .* leaves no box side"):
        MixupCutMix(cutmix_minmax=(0.5, 0.52), num_classes=K)(x[:, :, :8, :8], y)
    with pytest.raises(ValueError, match="mixes labels"):
        MixupCutMix(num_classes=K)(x)
    with pytest.raises(ValueError, match="num_classes"):
        MixupCutMix()(x, y)
