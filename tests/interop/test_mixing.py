"""Mixup / CutMix against torchvision v2's MixUp / CutMix and timm's ``Mixup``.

Distributions are compared at fixed seeds with two-sample KS and chi-square tests (p > 1e-3):
the drawn lambda, the box sides (unclipped from the raw draws, clipped from the pasted pixels)
and which images are mixed how. For timm, every mode with ``switch_prob``, ``prob``,
``cutmix_minmax``, ``correct_lam`` and ``label_smoothing``; and given timm's own draws (read
back from its output), keepmix's ``transform`` gives the same images and the same targets.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from interop_helpers import P_MIN, chi2_p, ks_p
from timm.data import Mixup as TimmMixup
from torchvision.transforms import v2

import keepmix
from keepmix.mixup_cutmix import MixupCutMixParams

# ----------------------------------------------------------------------- torchvision v2


def _tv_cutmix_draws(alpha: float, h: int, w: int, n: int, seed: int):
    """torchvision v2 CutMix's raw lam, unclipped sides and clipped boxes over n calls."""
    torch.manual_seed(seed)
    op = v2.CutMix(alpha=alpha, num_classes=2)
    raw: list[float] = []
    sample = op._dist.sample
    op._dist.sample = lambda shape=(): (lambda v: (raw.append(float(v)), v)[1])(sample(shape))  # type: ignore[method-assign]  # stubs the peer's draw for the test
    images = torch.stack([torch.zeros(1, h, w), torch.ones(1, h, w)])
    labels = torch.tensor([0, 1])
    sides, clipped, lams = [], [], []
    for _ in range(n):
        out, target = op(images, labels)
        lam = raw[-1]
        sides.append((2 * int(0.5 * math.sqrt(1.0 - lam) * h), 2 * int(0.5 * math.sqrt(1.0 - lam) * w)))
        mask = out[0, 0] != 0
        clipped.append((int(mask.any(1).sum()), int(mask.any(0).sum())))
        lams.append(float(target[0, 0]))
    return sides, clipped, lams


def _km_cutmix_draws(alpha: float, h: int, w: int, n: int, seed: int):
    op = keepmix.CutMix(alpha=alpha, per_sample=False, num_classes=2)
    g = torch.Generator().manual_seed(seed)
    images = torch.stack([torch.zeros(1, h, w), torch.ones(1, h, w)])
    labels = torch.tensor([0, 1])
    sides, clipped, lams = [], [], []
    for _ in range(n):
        p = op.sample_params(images, labels, generator=g)
        sides.append(tuple(int(v) for v in p.sizes[0]))
        y1, x1, y2, x2 = (int(v) for v in p.boxes[0])
        clipped.append((y2 - y1, x2 - x1))
        lams.append(1.0 - (y2 - y1) * (x2 - x1) / (h * w))
    return sides, clipped, lams


@pytest.mark.parametrize("alpha", [1.0, 0.2])
@pytest.mark.parametrize("hw", [(32, 32), (24, 40)])
def test_cutmix_per_batch_matches_torchvision_v2(alpha, hw):
    """CutMix(per_sample=False): the unclipped box sides, the clipped boxes and the corrected
    lambda are distributed as torchvision v2 CutMix's (alpha < 1 included: there a float32
    ``1 - lam`` gives full-side boxes torchvision never draws)."""
    h, w = hw
    n = 3000
    tv = _tv_cutmix_draws(alpha, h, w, n, seed=0)
    km = _km_cutmix_draws(alpha, h, w, n, seed=0)
    full = [s for s in km[0] if s[0] >= h or s[1] >= w]
    assert not full, f"{len(full)} of {n} boxes have a full side; torchvision's largest side is {max(s[0] for s in tv[0])}"
    for what, a, b in (("unclipped sides", tv[0], km[0]), ("clipped sides", tv[1], km[1])):
        p = chi2_p(a, b)
        assert p > P_MIN, f"{what}: chi-square p = {p:.3g} against torchvision v2 CutMix(alpha={alpha}) at {hw}"
    for axis in (0, 1):
        p = ks_p([s[axis] for s in tv[1]], [s[axis] for s in km[1]])
        assert p > P_MIN, f"clipped box side {axis}: KS p = {p:.3g}"
    p = ks_p(tv[2], km[2])
    assert p > P_MIN, f"corrected lambda: KS p = {p:.3g} against torchvision v2 CutMix(alpha={alpha})"


@pytest.mark.parametrize("alpha", [1.0, 0.4, 0.2])
def test_mixup_lambda_matches_torchvision_v2(alpha):
    """Mixup's lambda is Beta(alpha, alpha) as torchvision v2 MixUp's, and given the same
    lambda and torchvision's partners (the batch rolled by one) the same images and targets."""
    torch.manual_seed(0)
    tv_op = v2.MixUp(alpha=alpha, num_classes=4)
    tv = [float(tv_op._dist.sample(())) for _ in range(4000)]
    op = keepmix.Mixup(alpha=alpha, num_classes=4)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    km = torch.cat([op.sample_params(x, generator=g).lam for _ in range(500)]).tolist()
    p = ks_p(tv, km)
    assert p > P_MIN, f"Mixup(alpha={alpha}) lambda: KS p = {p:.3g} against torchvision v2 MixUp"

    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    lam = 0.3
    tv_op._dist.sample = lambda shape=(): torch.tensor(lam)  # type: ignore[method-assign]  # stubs the peer's draw for the test
    want_x, want_t = tv_op(x, labels)
    params = keepmix.MixupParams(lam=torch.full((8,), lam), perm=torch.arange(8).roll(1))
    got_x, got_t = op.transform(x, labels, params)
    torch.testing.assert_close(got_x, want_x, rtol=0, atol=1e-6)
    torch.testing.assert_close(got_t, want_t, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------- timm


def _constant_batch(b: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i is the constant i + 1 (labels i): every output pixel says where it came from."""
    x = torch.arange(1, b + 1, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 1, h, w).contiguous()
    return x, torch.arange(b)


def read_draws(out: torch.Tensor, targets: torch.Tensor, smoothing: float):
    """Per image: (kind, lam, box) from a mixed constant batch; kind 0 unmixed, 1 Mixup,
    2 CutMix; box (y1, x1, y2, x2) of the pasted pixels (CutMix) or None."""
    b, k = targets.shape
    mix = (targets - smoothing / k) / (1 - smoothing) if smoothing else targets
    rows = []
    for i in range(b):
        own, partner = float(i + 1), float(b - i)
        pasted = out[i, 0] == partner
        lam = float(mix[i, i]) if own != partner else 1.0
        if own != partner and bool(pasted.any()) and bool((pasted | (out[i, 0] == own)).all()):
            ys, xs = pasted.any(1).nonzero().flatten(), pasted.any(0).nonzero().flatten()
            rows.append((2, lam, (int(ys[0]), int(xs[0]), int(ys[-1]) + 1, int(xs[-1]) + 1)))
        elif bool((out[i, 0] == own).all()):  # untouched (a CutMix box of no area may still move the label)
            rows.append((0, lam, None))
        else:
            rows.append((1, lam, None))
    return rows


CONFIGS = {
    "mixup-batch": dict(mixup_alpha=0.8, cutmix_alpha=0.0, mode="batch"),
    "cutmix-elem": dict(mixup_alpha=0.0, cutmix_alpha=1.0, mode="elem"),
    "switch-elem-prob-smooth": dict(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, prob=0.7, mode="elem", label_smoothing=0.1),
    "switch-pair-alpha0.2": dict(mixup_alpha=0.2, cutmix_alpha=0.2, switch_prob=0.3, mode="pair"),
    "cutmix-batch-nocorrect": dict(mixup_alpha=0.0, cutmix_alpha=1.0, correct_lam=False, mode="batch"),
    "minmax-pair": dict(mixup_alpha=0.0, cutmix_alpha=1.0, cutmix_minmax=(0.2, 0.8), mode="pair"),
    "minmax-switch-elem": dict(mixup_alpha=1.0, cutmix_alpha=1.0, cutmix_minmax=(0.3, 0.9), switch_prob=0.5, mode="elem"),
    "switch-batch-nonsquare": dict(mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=0.6, prob=0.8, mode="batch", label_smoothing=0.1),
}


def _full(cfg: dict, b: int) -> dict:
    return dict(cutmix_minmax=None, prob=1.0, switch_prob=0.5, correct_lam=True, label_smoothing=0.0) | cfg | dict(num_classes=b)


def _run(mixer, b: int, h: int, w: int, n_images: int):
    x, y = _constant_batch(b, h, w)
    rows = []
    while len(rows) < n_images:
        out, t = mixer(x.clone(), y.clone())  # timm mixes its input in place
        rows += read_draws(out, t, mixer.label_smoothing)
    return rows


@pytest.mark.parametrize("name", list(CONFIGS))
def test_mixupcutmix_distributions_match_timm(name):
    """MixupCutMix(**mixup_args) draws what timm.data.Mixup(**mixup_args) draws: which images
    are mixed how (chi-square), the per-image lambda (KS), the clipped CutMix box sides (KS and
    chi-square: the odd sides of timm 1.0.31's exact rule) and the boxes' reach to the border."""
    cfg = _full(CONFIGS[name], 8)
    b = 8 if cfg["mode"] != "batch" else 2
    cfg["num_classes"] = b
    h, w = (28, 36) if name.endswith("nonsquare") else (32, 32)
    n = 3000 if cfg["mode"] != "batch" else 1500
    np.random.seed(0)
    tv = _run(TimmMixup(**cfg), b, h, w, n)
    torch.manual_seed(0)
    op = keepmix.MixupCutMix(**cfg)
    g = torch.Generator().manual_seed(0)
    km = _run(_WithGenerator(op, g), b, h, w, n)
    p = chi2_p([r[0] for r in tv], [r[0] for r in km])
    assert p > P_MIN, f"{name}: kinds (unmixed / Mixup / CutMix) chi-square p = {p:.3g}"
    p = ks_p([r[1] for r in tv], [r[1] for r in km])
    assert p > P_MIN, f"{name}: per-image lambda KS p = {p:.3g}"
    boxes_t = [r[2] for r in tv if r[0] == 2]
    boxes_k = [r[2] for r in km if r[0] == 2]
    if boxes_t or boxes_k:
        for axis, side in ((0, h), (1, w)):
            st = [bx[axis + 2] - bx[axis] for bx in boxes_t]
            sk = [bx[axis + 2] - bx[axis] for bx in boxes_k]
            p = ks_p(st, sk)
            assert p > P_MIN, f"{name}: clipped box side (axis {axis}) KS p = {p:.3g}"
            p = chi2_p([s % 2 for s in st], [s % 2 for s in sk])
            assert p > P_MIN, f"{name}: box side parity (axis {axis}) chi-square p = {p:.3g} (odd: timm {np.mean([s % 2 for s in st]):.3f})"
            p = chi2_p([bx[axis + 2] == side for bx in boxes_t], [bx[axis + 2] == side for bx in boxes_k])
            assert p > P_MIN, f"{name}: boxes reaching the far border (axis {axis}) chi-square p = {p:.3g}"


class _WithGenerator:
    """``op(x, t, generator=g)`` called as timm's ``mixup_fn(x, t)``."""

    def __init__(self, op, g):
        self.op, self.g = op, g
        self.label_smoothing = op.label_smoothing

    def __call__(self, x, t):
        return self.op(x, t, generator=self.g)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_mixupcutmix_same_draws_same_output_as_timm(name, cifar_uint8, cifar_labels):
    """Given timm's draws (read back from its output on a constant batch), keepmix's
    ``transform`` on real images gives timm's images and timm's targets."""
    cfg = _full(CONFIGS[name], 10)
    b = 8
    h, w = 32, 32
    np.random.seed(1)
    timm_op = TimmMixup(**cfg)
    op = keepmix.MixupCutMix(**cfg)
    real = cifar_uint8[:b].float() / 255
    labels = cifar_labels[:b]
    for _ in range(20):
        state = np.random.get_state()
        x, y = _constant_batch(b, h, w)
        rows = read_draws(*timm_op(x.clone(), y), cfg["label_smoothing"])
        np.random.set_state(state)  # the same draws again, on the real images
        want_x, want_t = timm_op(real.clone(), labels.clone())
        boxes = torch.tensor([r[2] if r[2] is not None else (0, 0, 0, 0) for r in rows])
        use_cutmix = torch.tensor([r[0] != 1 for r in rows])  # unmixed = a CutMix of no area (its label may move)
        lam = torch.tensor([r[1] for r in rows], dtype=torch.float32)
        params = MixupCutMixParams(
            boxes=boxes, sizes=boxes[:, 2:] - boxes[:, :2], use_cutmix=use_cutmix, lam=lam, perm=torch.arange(b - 1, -1, -1)
        )
        got_x, got_t = op.transform(real, labels, params)
        torch.testing.assert_close(got_x, want_x, rtol=0, atol=1e-6, msg=lambda m, rows=rows: f"{name}, timm's draws {rows}: images: {m}")
        torch.testing.assert_close(got_t, want_t, rtol=0, atol=1e-6, msg=lambda m, rows=rows: f"{name}, timm's draws {rows}: targets: {m}")


def test_mixup_enabled_false_turns_mixing_off():
    """timm's train.py turns mixing off at --mixup-off-epoch with ``mixup_fn.mixup_enabled = False``."""
    op = keepmix.MixupCutMix(mixup_alpha=0.8, cutmix_alpha=1.0, num_classes=4)
    timm_op = TimmMixup(mixup_alpha=0.8, cutmix_alpha=1.0, num_classes=4, label_smoothing=0.0)
    assert op.mixup_enabled is True and timm_op.mixup_enabled is True
    op.mixup_enabled = False
    timm_op.mixup_enabled = False
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3])
    for _ in range(20):
        got_x, got_t = op(x, y)
        want_x, want_t = timm_op(x.clone(), y)
        assert torch.equal(got_x, want_x) and torch.equal(got_x, x)
        torch.testing.assert_close(got_t, want_t, rtol=0, atol=0)
