"""The policies' draws against torchvision's and timm's, and timm's policy strings.

torchvision's v1 policies and timm's ops are observed by wrapping the function each calls per
op (torchvision's ``_apply_op``, timm's ``AugmentOp.level_fn``), so what is compared is what
they actually draw; keepmix's draws are its ``sample_params``. Chi-square / KS at fixed seeds.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from interop_helpers import P_MIN, chi2_p, ks_p, to_pil
from PIL import Image
from timm.data.auto_augment import augment_and_mix_transform, rand_augment_transform
from torchvision.transforms import autoaugment as tv_aa

import keepmix
from keepmix.functional.policy_ops import OP_NAMES
from keepmix.policies import TIMM_OPS

N = 3000


def _tv_draws(monkeypatch, policy, n: int, seed: int = 0) -> list[list[tuple[str, float]]]:
    """Per forward of a torchvision v1 policy: the (op, magnitude) of each _apply_op call."""
    calls: list[tuple[str, float]] = []

    def record(img, op_name, magnitude, interpolation, fill):
        calls.append((op_name, float(magnitude)))
        return img

    monkeypatch.setattr(tv_aa, "_apply_op", record)
    torch.manual_seed(seed)
    img = Image.new("RGB", (32, 32))
    out = []
    for _ in range(n):
        calls.clear()
        policy(img)
        out.append(list(calls))
    return out


def _km_draws(op, n: int, seed: int = 0) -> list[list[tuple[str, float]]]:
    p = op.sample_params(torch.zeros(n, 3, 32, 32, dtype=torch.uint8), generator=torch.Generator().manual_seed(seed))
    ops, mags, applied = p.ops.tolist(), p.signed_magnitudes.tolist(), p.applied.tolist()
    return [[(OP_NAMES[o], m) for o, m, a in zip(ops[i], mags[i], applied[i], strict=True) if a] for i in range(n)]


def _key(op: str, m: float) -> tuple[str, float]:
    # torchvision passes translations as floats and truncates them inside _apply_op.
    return (op, float(int(m)) if op.startswith("Translate") else round(m, 4))


def _compare_steps(tv, km, what: str) -> None:
    tv_steps = [_key(o, m) for steps in tv for o, m in steps if o != "Identity"]
    km_steps = [_key(o, m) for steps in km for o, m in steps if o != "Identity"]
    for name, a, b in (
        ("ops", [s[0] for s in tv_steps], [s[0] for s in km_steps]),
        ("signed magnitudes", tv_steps, km_steps),
        ("applied steps per image", [len(s) for s in tv], [len([x for x in s]) for s in km]),
    ):
        p = chi2_p(a, b)
        assert p > P_MIN, f"{what}: {name} chi-square p = {p:.3g} against torchvision"


def test_trivialaugment_draws_match_torchvision(monkeypatch):
    tv = _tv_draws(monkeypatch, tv_aa.TrivialAugmentWide(), N)
    km = _km_draws(keepmix.TrivialAugmentWide(), N)
    _compare_steps(tv, km, "TrivialAugmentWide")


def test_randaugment_draws_match_torchvision(monkeypatch):
    tv = _tv_draws(monkeypatch, tv_aa.RandAugment(num_ops=2, magnitude=9), N // 2)
    km = _km_draws(keepmix.RandAugment(num_ops=2, magnitude=9), N // 2)
    _compare_steps(tv, km, "RandAugment(2, 9)")


@pytest.mark.parametrize("policy", ["cifar10", "imagenet", "svhn"])
def test_autoaugment_draws_match_torchvision(monkeypatch, policy):
    tv = _tv_draws(monkeypatch, tv_aa.AutoAugment(tv_aa.AutoAugmentPolicy(policy)), N)
    km = _km_draws(keepmix.AutoAugment(policy), N)  # type: ignore[arg-type]  # the value the test means to pass
    _compare_steps(tv, km, f"AutoAugment({policy})")


# ----------------------------------------------------------------------- timm's strings
CORPUS = [
    "rand-m9-mstd0.5-inc1",
    "rand-m9-mstd0.5",
    "rand-m7-n3-p0.3",
    "rand-m9-inc0",
    "rand-m9-inc1-inc0",
    "rand-m9-inc0-inc1",
    "rand-m9-m5",
    "rand-m9-mstd0.5-mstd1",
    "rand-mstd1-tweights",
    "rand-m9-tweights-t3a",
    "rand-m9-mstd101",
    "rand-m5-mmax20",
    "rand-t3a",
    "rand-m9-n2-mstd0.5-inc1-t3aw",
    "rand-mstd1-w0",
    "rand-m9-x3",
    "rand-m9-foo",
]


def _timm_parse(config: str):
    try:
        ra = rand_augment_transform(config, {"translate_const": 250, "img_mean": (124, 116, 104)})
    except (AssertionError, ValueError, KeyError) as e:
        return type(e)
    op0 = ra.ops[0]
    w = None if ra.choice_weights is None else tuple(round(float(v), 12) for v in ra.choice_weights)
    return dict(
        ops=tuple(o.name for o in ra.ops),
        num_ops=ra.num_layers,
        magnitude=float(op0.magnitude),
        prob=float(op0.prob),
        magnitude_std=float(op0.magnitude_std),
        magnitude_max=op0.magnitude_max,
        weights=w,
    )


@pytest.mark.parametrize("config", CORPUS)
def test_from_timm_parses_as_timm(config):
    """RandAugment.from_timm(s) builds what timm's rand_augment_transform(s) builds, and refuses
    (ValueError) what timm refuses."""
    want = _timm_parse(config)
    if isinstance(want, type):
        with pytest.raises(ValueError):
            keepmix.RandAugment.from_timm(config)
        return
    op = keepmix.RandAugment.from_timm(config)
    got = dict(
        ops=tuple(op.ops),
        num_ops=op.num_ops,
        magnitude=op.magnitude,
        prob=op.prob,
        magnitude_std=op.magnitude_std,
        magnitude_max=op.magnitude_max,
        weights=None if op.weights is None else tuple(round(float(v), 12) for v in op.weights),
    )
    assert got == want, f"{config}: keepmix {got} != timm {want}"


def test_from_timm_takes_timm_hparams():
    """timm's hparams, as train.py passes them (img_mean as the fill, an interpolation)."""
    op = keepmix.RandAugment.from_timm("rand-m9-mstd0.5-inc1", img_mean=(124, 116, 104), interpolation="bicubic")
    assert op.interpolation == "bicubic"


def _timm_levels(transform, n: int, seed: int = 0):
    """Per call of a timm RandAugment: the (op, level) of each op that ran."""
    calls: list[tuple[str, float]] = []
    for o in transform.ops:
        f = o.level_fn
        o.level_fn = lambda m, hp, f=f, name=o.name: (calls.append((name, m)), f(m, hp) if f else ())[1]
        o.aug_fn = lambda img, *a, **k: img
    random.seed(seed)
    np.random.seed(seed)
    img = Image.new("RGB", (32, 32))
    out = []
    for _ in range(n):
        calls.clear()
        transform(img)
        out.append(list(calls))
    return out


@pytest.mark.parametrize("config", ["rand-m9-mstd0.5-inc1", "rand-m7-n3-p0.8", "rand-mstd1-tweights", "rand-m9-mstd101"])
def test_timm_randaugment_draws_match_timm(config):
    tv = _timm_levels(rand_augment_transform(config, {"translate_const": 250}), N)
    op = keepmix.RandAugment.from_timm(config)
    p = op.sample_params(torch.zeros(N, 3, 32, 32, dtype=torch.uint8), generator=torch.Generator().manual_seed(0))
    names, levels, applied = p.timm_ops.tolist(), p.levels.tolist(), p.applied.tolist()
    km = [[(TIMM_OPS[o], lv) for o, lv, a in zip(names[i], levels[i], applied[i], strict=True) if a] for i in range(N)]
    for what, a, b in (
        ("ops", [o for s in tv for o, _ in s], [o for s in km for o, _ in s]),
        ("ops run per image", [len(s) for s in tv], [len(s) for s in km]),
    ):
        pv = chi2_p(a, b)
        assert pv > P_MIN, f"{config}: {what} chi-square p = {pv:.3g} against timm"
    pv = ks_p([lv for s in tv for _, lv in s], [lv for s in km for _, lv in s])
    assert pv > P_MIN, f"{config}: levels KS p = {pv:.3g} against timm"


@pytest.mark.parametrize("config", ["augmix-m5-w4-d2", "augmix-m3-w3-d1-a0.5"])
def test_augmix_from_timm_matches_augment_and_mix_transform(config, cifar_uint8):
    """AugMix.from_timm(s) changes images as timm's augment_and_mix_transform(s) does: the
    per-image mean absolute change (grey levels) has the same distribution (KS)."""
    images = cifar_uint8[:32]
    random.seed(0)
    np.random.seed(0)
    timm_op = augment_and_mix_transform(config, {"translate_pct": 0.3, "img_mean": (124, 116, 104)})
    pil = to_pil(images)
    op = keepmix.AugMix.from_timm(config, img_mean=(124, 116, 104))  # type: ignore[attr-defined]  # the method the test checks for
    g = torch.Generator().manual_seed(0)
    want, got = [], []
    for _ in range(8):
        for im, x in zip(pil, images, strict=True):
            out = torch.from_numpy(np.asarray(timm_op(im))).permute(2, 0, 1)
            want.append(float((out.float() - x.float()).abs().mean()))
        out = op(images, generator=g)
        out = out[0] if isinstance(out, tuple) else out
        got += (out.float() - images.float()).abs().mean(dim=(1, 2, 3)).tolist()
    p = ks_p(want, got)
    assert p > P_MIN, f"{config}: mean |change| KS p = {p:.3g} (timm {np.mean(want):.2f}, keepmix {np.mean(got):.2f} grey levels)"
