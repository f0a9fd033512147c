"""AugMix: a per-image reference with keepmix's functional ops, the official magnitudes, the
Dirichlet / Beta weights, the JSD loss against hand-computed values, the contract."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from contract import check_op

from keepmix.augmix import (
    AUGMIX_ALL_OPS,
    AUGMIX_OPS,
    AugMix,
    AugMixJSDLoss,
    AugMixParams,
    augmix_magnitudes,
    jensen_shannon_consistency,
)
from keepmix.functional.color import (
    autocontrast,
    brightness,
    color,
    contrast,
    equalize,
    posterize,
    sharpness,
    solarize,
)
from keepmix.functional.geometry import (
    rotate,
    shear_x,
    shear_y,
    translate_x,
    translate_y,
)
from keepmix.functional.policy_ops import _OP_ID, OP_NAMES


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ the per-image reference


def _one_op(img: torch.Tensor, name: str, mag: float, interpolation: str) -> torch.Tensor:
    """One step on a (1, C, H, W) image with keepmix's public functional ops."""
    if name == "AutoContrast":
        return autocontrast(img)
    if name == "Equalize":
        return equalize(img)
    if name == "Posterize":
        return posterize(img, int(mag))
    if name == "Solarize":
        return solarize(img, mag)
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        fn = {"Color": color, "Contrast": contrast, "Brightness": brightness, "Sharpness": sharpness}[name]
        return fn(img, 1.0 + mag)
    fn = {"Rotate": rotate, "ShearX": shear_x, "ShearY": shear_y, "TranslateX": translate_x, "TranslateY": translate_y}[name]
    return fn(img, mag, interpolation)


def _reference(x: torch.Tensor, params: AugMixParams, interpolation: str) -> torch.Tensor:
    """The definition, image by image: each chain's drawn ops in order, then
    acc = (1 - m) x + sum_k (m w_k) chain_k in float32, uint8 rounded half to even."""
    out = []
    for i in range(x.shape[0]):
        img = x[i : i + 1]
        m = params.mix[i]
        acc = img.float() * (1.0 - m)
        for k in range(params.ops.shape[1]):
            chain = img
            for d in range(params.ops.shape[2]):
                if params.applied[i, k, d]:
                    name = OP_NAMES[int(params.ops[i, k, d])]
                    chain = _one_op(chain, name, float(params.magnitudes[i, k, d]), interpolation)
            acc = acc + chain.float() * (m * params.weights[i, k])
        if x.dtype == torch.uint8:
            acc = acc.round().clamp(0, 255).to(torch.uint8)
        out.append(acc.to(x.dtype))
    return torch.cat(out)


@pytest.mark.parametrize(
    "dtype, interpolation, all_ops, depth",
    [(torch.uint8, "bilinear", True, -1), (torch.uint8, "nearest", False, 2), (torch.float32, "bilinear", True, -1)],
)
def test_matches_per_image_reference(cifar_uint8, dtype, interpolation, all_ops, depth):
    x = cifar_uint8[:16]
    if dtype == torch.float32:
        x = x.float() / 255.0
    op = AugMix(all_ops=all_ops, depth=depth, interpolation=interpolation)
    params = op.sample_params(x, generator=_gen(1))
    got = op.transform(x, None, params)
    want = _reference(x, params, interpolation)
    assert torch.equal(got, want)
    # Every op of the list was exercised somewhere in these draws.
    drawn = {OP_NAMES[i] for i in params.ops[params.applied].tolist()}
    assert drawn == set(AUGMIX_ALL_OPS if all_ops else AUGMIX_OPS)


def test_forward_is_apply_of_sample_params_and_input_untouched(cifar_uint8):
    x = cifar_uint8[:8]
    x0 = x.clone()
    op = AugMix()
    out = op(x, generator=_gen(2))
    assert torch.equal(out, op.transform(x, None, op.sample_params(x, generator=_gen(2))))
    assert torch.equal(x, x0) and out.dtype == torch.uint8 and not torch.equal(out, x)


def test_no_skip_weight_gives_the_image_back(cifar_uint8):
    x = cifar_uint8[:4]
    op = AugMix()
    params = op.sample_params(x, generator=_gen(3))
    params = params.replace(mix=torch.zeros(4))
    assert torch.equal(op.transform(x, None, params), x)


# ------------------------------------------------------------------ draws and magnitudes


def _official(name: str, level: float, h: int, w: int) -> float:
    """google-research/augmix augmentations.py, written out with Python's int()."""
    int_p = lambda maxval: int(level * maxval / 10)
    flt_p = lambda maxval: float(level) * maxval / 10.0
    return {
        "AutoContrast": 0.0,
        "Equalize": 0.0,
        "Posterize": 4 - int_p(4),
        "Rotate": int_p(30),
        "Solarize": 256 - int_p(256),
        "ShearX": flt_p(0.3),
        "ShearY": flt_p(0.3),
        "TranslateX": int_p(w / 3),
        "TranslateY": int_p(h / 3),
        **{n: flt_p(1.8) + 0.1 - 1.0 for n in ("Color", "Contrast", "Brightness", "Sharpness")},
    }[name]


def test_magnitudes_are_the_official_mapping():
    levels = torch.tensor([0.1, 0.35, 1.0, 1.2499, 2.5, 2.95, 2.9999, 5.0, 9.99], dtype=torch.float64)
    for name in AUGMIX_ALL_OPS:
        ops = torch.full(levels.shape, _OP_ID[name])
        got = augmix_magnitudes(ops, levels, 24, 32).tolist()
        want = [_official(name, lv, 24, 32) for lv in levels.tolist()]
        assert got == want, name


def test_severity_3_ranges():
    x = torch.zeros(4000, 3, 32, 32, dtype=torch.uint8)
    params = AugMix(all_ops=True).sample_params(x, generator=_gen(4))
    ops, mags = params.ops.flatten(), params.magnitudes.flatten()

    def values(name):
        return mags[ops == _OP_ID[name]]

    assert set(values("Posterize").tolist()) == {3.0, 4.0}
    assert set(values("Rotate").abs().tolist()) == set(map(float, range(9)))  # int(3 l), l < 3
    sol = values("Solarize")
    assert sol.min() >= 256 - 76 and sol.max() <= 254 and torch.equal(sol, sol.round())
    for name in ("ShearX", "ShearY"):
        s = values(name).abs()
        assert s.min() >= 0.003 - 1e-12 and s.max() < 0.09
    for name in ("TranslateX", "TranslateY"):
        assert set(values(name).abs().tolist()) == {0.0, 1.0, 2.0, 3.0}
    factor = 1.0 + values("Color")
    assert factor.min() >= 0.118 - 1e-12 and factor.max() < 0.64
    # Signed ops get both signs; unsigned ones never flip.
    assert (values("Rotate") < 0).any() and (values("Rotate") > 0).any()
    assert (values("Posterize") > 0).all() and (values("Contrast") < 0).all()


@pytest.mark.parametrize("alpha", [1.0, 0.3])
def test_dirichlet_and_beta_weights(alpha):
    n = 20000
    x = torch.zeros(n, 1, 2, 2, dtype=torch.uint8)
    params = AugMix(alpha=alpha).sample_params(x, generator=_gen(5))
    w, m = params.weights.double(), params.mix.double()
    assert w.shape == (n, 3) and m.shape == (n,)
    torch.testing.assert_close(w.sum(1), torch.ones(n, dtype=torch.float64), atol=1e-6, rtol=0)
    assert (w >= 0).all() and (m >= 0).all() and (m <= 1).all()
    a0 = 3 * alpha
    # Dirichlet(alpha, alpha, alpha): mean 1/3, variance alpha (a0 - alpha) / (a0^2 (a0 + 1)).
    torch.testing.assert_close(w.mean(0), torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.01, rtol=0)
    var_w = alpha * (a0 - alpha) / (a0**2 * (a0 + 1))
    torch.testing.assert_close(w.var(0), torch.full((3,), var_w, dtype=torch.float64), atol=0.01, rtol=0)
    # Beta(alpha, alpha): mean 1/2, variance 1 / (4 (2 alpha + 1)).
    assert abs(m.mean().item() - 0.5) < 0.01
    assert abs(m.var().item() - 1 / (4 * (2 * alpha + 1))) < 0.01


def test_chain_lengths_and_ops_are_uniform_per_image():
    n = 6000
    x = torch.zeros(n, 3, 4, 4, dtype=torch.uint8)
    params = AugMix().sample_params(x, generator=_gen(6))
    lengths = params.applied.sum(-1)  # (B, width)
    # A chain's applied steps are a prefix of length 1..3.
    assert torch.equal(params.applied, torch.arange(3).view(1, 1, 3) < lengths.unsqueeze(-1))
    freq = torch.bincount(lengths.flatten(), minlength=4)[1:].double() / lengths.numel()
    torch.testing.assert_close(freq, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.015, rtol=0)
    ids = torch.tensor([_OP_ID[o] for o in AUGMIX_OPS])
    counts = torch.stack([(params.ops == i).sum() for i in ids]).double() / params.ops.numel()
    torch.testing.assert_close(counts, torch.full((9,), 1 / 9, dtype=torch.float64), atol=0.01, rtol=0)
    # Lengths vary within the batch (per image) and across the chains of one image.
    assert len(set(lengths[:, 0].tolist())) == 3 and bool((lengths[:, 0] != lengths[:, 1]).any())
    fixed = AugMix(depth=2).sample_params(x[:8], generator=_gen(6))
    assert fixed.applied.shape == (8, 3, 2) and bool(fixed.applied.all())


# ------------------------------------------------------------------ the JSD split and loss


def test_splits_are_two_independent_draws(cifar_uint8):
    x = cifar_uint8[:8]
    x0 = x.clone()
    op = AugMix()
    aug1, aug2 = op.splits(x, generator=_gen(7))
    g = _gen(7)
    assert torch.equal(aug1, op(x, generator=g)) and torch.equal(aug2, op(x, generator=g))
    assert not torch.equal(aug1, aug2) and torch.equal(x, x0)
    assert len(op.splits(x[0], generator=_gen(7), num=3)) == 3  # a (C, H, W) image works too


def _logits(*rows):
    return torch.tensor(rows, dtype=torch.float64).log().float()


def test_jsd_against_a_hand_computed_example():
    # Row 0: p_clean = (.5, .5), p1 = (.9, .1), p2 = (.1, .9): M = (.5, .5),
    # KL(p1 || M) = KL(p2 || M) = .9 ln 1.8 + .1 ln .2, KL(p_clean || M) = 0.
    # Row 1: all three equal (.2, .8): every KL is 0.
    clean = _logits((0.5, 0.5), (0.2, 0.8))
    aug1 = _logits((0.9, 0.1), (0.2, 0.8))
    aug2 = _logits((0.1, 0.9), (0.2, 0.8))
    kl = 0.9 * math.log(1.8) + 0.1 * math.log(0.2)
    js = (0.0 + kl + kl) / 3 / 2  # batchmean over the 2 rows
    got = jensen_shannon_consistency(clean, aug1, aug2)
    assert abs(got.item() - 12 * js) < 1e-5
    assert abs(jensen_shannon_consistency(clean, aug1, aug2, weight=1.0).item() - js) < 1e-6
    targets = torch.tensor([0, 1])
    total = AugMixJSDLoss()(clean, aug1, aug2, targets)
    assert abs(total.item() - (F.cross_entropy(clean, targets).item() + 12 * js)) < 1e-5
    assert abs(AugMixJSDLoss(weight=12)(clean, aug1, aug2).item() - 12 * js) < 1e-5


def test_jsd_is_zero_for_equal_predictions_and_has_gradients():
    a = torch.randn(4, 10, requires_grad=True)
    assert jensen_shannon_consistency(a, a, a).item() == pytest.approx(0.0, abs=1e-6)
    b = torch.randn(4, 10)
    loss = jensen_shannon_consistency(a, b, b.flip(0))
    loss.backward()
    assert loss.item() > 0 and a.grad is not None and torch.isfinite(a.grad).all()


def test_jsd_clamps_the_mixture():
    # Confident disagreeing predictions: M has entries below 1e-7, clamped as the official code.
    big = 60.0
    clean = torch.tensor([[big, 0.0, -big]])
    aug = torch.tensor([[-big, big, 0.0]])
    p = [F.softmax(t, 1).double() for t in (clean, aug, aug)]
    m = torch.clamp((p[0] + p[1] + p[2]) / 3, 1e-7, 1)
    want = sum(torch.special.xlogy(q, q).sum() - (q * m.log()).sum() for q in p) / 3
    assert torch.isfinite(jensen_shannon_consistency(clean, aug, aug))
    assert abs(jensen_shannon_consistency(clean, aug, aug, weight=1.0).item() - want.item()) < 1e-4


def test_jsd_checks_its_input():
    a = torch.randn(4, 10)
    with pytest.raises(ValueError, match="logits_aug2"):
        jensen_shannon_consistency(a, a, torch.randn(4, 9))
    with pytest.raises(ValueError, match="logits_clean"):
        jensen_shannon_consistency(torch.randn(4), a, a)
    with pytest.raises(ValueError, match="weight"):
        AugMixJSDLoss(weight=-1.0)


# ------------------------------------------------------------------ validation and the contract


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"severity": 0}, "severity"),
        ({"severity": 11}, "severity"),
        ({"severity": 2.5}, "severity"),
        ({"width": 0}, "width"),
        ({"depth": 0}, "depth"),
        ({"depth": -2}, "depth"),
        ({"depth": True}, "depth"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"interpolation": "bicubic"}, "interpolation"),
        ({"fill": (1.0, 2.0)}, "fill"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=name):
        AugMix(**kwargs)


def test_bad_input():
    with pytest.raises(TypeError, match="all_ops"):
        AugMix(all_ops=1)
    with pytest.raises(ValueError, match="channels"):
        AugMix()(torch.zeros(2, 4, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="fill"):
        AugMix(fill=300)(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(TypeError, match="AugMixParams"):
        AugMix().transform(torch.zeros(2, 3, 8, 8), None, object())
    x = torch.zeros(2, 3, 8, 8)
    params = AugMix().sample_params(x, generator=_gen())
    with pytest.raises(ValueError, match="params.weights"):
        AugMix().transform(x, None, params.replace(weights=torch.ones(2, 2)))


def test_repr_and_flags():
    op = AugMix(severity=5, all_ops=True)
    assert "severity=5" in repr(op) and "all_ops=True" in repr(op) and "interpolation='bilinear'" in repr(op)
    assert op.raw_pixels and op.single_image and op.pil_image and not op.mixes_labels
    assert op.region is None and op.regions(op.sample_params(torch.zeros(1, 3, 4, 4))) is None


@pytest.mark.parametrize(
    "make",
    [lambda: AugMix(), lambda: AugMix(severity=6, width=2, depth=2, alpha=0.5, all_ops=True, interpolation="nearest", fill=(10, 20, 30))],
    ids=["default", "all-ops-nearest"],
)
def test_contract(make):
    check_op(make)
