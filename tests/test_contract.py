"""Every public op runs through the shared contract (tests/contract.py)."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from contract import K, check_op

import keepmix
from keepmix.base import Op

# One small, valid configuration per public op. A new op in keepmix.__all__ must add itself
# here (test_every_public_op_is_checked fails otherwise).
FACTORIES = {
    "Cutout": lambda: keepmix.Cutout(6),
    "RandomErasing": lambda: keepmix.RandomErasing(p=0.7, value="random_box"),
    "Mixup": lambda: keepmix.Mixup(alpha=0.4, p=0.8, num_classes=K),
    "CutMix": lambda: keepmix.CutMix(num_classes=K),
    "MixupCutMix": lambda: keepmix.MixupCutMix(mixup_alpha=0.8, cutmix_alpha=1.0, mode="elem", num_classes=K),
    "AutoAugment": lambda: keepmix.AutoAugment("cifar10"),
    "RandAugment": lambda: keepmix.RandAugment(num_ops=2, magnitude=9),
    "TrivialAugmentWide": lambda: keepmix.TrivialAugmentWide(),
    "KeepPaste": lambda: keepmix.KeepPaste(keepmix.RandAugment(), size=6),
    "KeepCutout": lambda: keepmix.KeepCutout(6, q=0.6),
    "KeepRandomErasing": lambda: keepmix.KeepRandomErasing(p=0.7, score="mean"),
    "KeepCutMix": lambda: keepmix.KeepCutMix(num_classes=K, label_weight="saliency"),
    "KeepAutoAugment": lambda: keepmix.KeepAutoAugment("cifar10", size=6),
    "KeepRandAugment": lambda: keepmix.KeepRandAugment(num_ops=2, magnitude=9, size=(4, 6), whole_boxes=False),
    "RecursiveMix": lambda: keepmix.RecursiveMix(num_classes=K),
    "KeepRecursiveMix": lambda: keepmix.KeepRecursiveMix(num_classes=K, whole_boxes=True),
    "GridMask": lambda: keepmix.GridMask(d_range=(4, 9), p=0.9),
    "AugMix": lambda: keepmix.AugMix(),
    "AttentiveCutMix": lambda: keepmix.AttentiveCutMix(lambda x: F.adaptive_avg_pool2d(x.float(), 4), num_classes=K),
    "ResizeMix": lambda: keepmix.ResizeMix(num_classes=K),
    "SaliencyMix": lambda: keepmix.SaliencyMix(num_classes=K),
    "FMix": lambda: keepmix.FMix(num_classes=K),
}

# Further configurations whose code paths differ (official per-batch modes, pair mode, ...).
VARIANTS = {
    "CutMix-official": lambda: keepmix.CutMix(p=0.5, num_classes=K, per_sample=False),
    "MixupCutMix-pair": lambda: keepmix.MixupCutMix(cutmix_alpha=1.0, mode="pair", num_classes=K, label_smoothing=0.1),
    "MixupCutMix-batch-minmax": lambda: keepmix.MixupCutMix(cutmix_minmax=(0.2, 0.8), mode="batch", num_classes=K),
    "MixupCutMix-keep": lambda: keepmix.MixupCutMix(cutmix_alpha=1.0, mode="elem", num_classes=K, placer=keepmix.KeepPlacer()),
    "RecursiveMix-bilinear": lambda: keepmix.RecursiveMix(num_classes=K, interpolation="bilinear", per_sample=False),
    "Cutout-whole": lambda: keepmix.Cutout(6, p=0.5, placer=keepmix.UniformPlacer(whole_boxes=True)),
    "KeepAutoAugment-svhn-bilinear": lambda: keepmix.KeepAutoAugment("svhn", interpolation="bilinear", size=6),
    "GridMask-rotated": lambda: keepmix.GridMask(d_range=(3, 12), ratio=0.4, rotate=360, mode=0, fill=(1, 2, 3), p=1.0),
    "ResizeMix-keep": lambda: keepmix.ResizeMix(
        scale=(0.3, 0.9), p=0.8, num_classes=K, interpolation="bilinear", placer=keepmix.KeepPlacer()
    ),
    "AugMix-all-ops": lambda: keepmix.AugMix(all_ops=True, width=2, depth=2, interpolation="nearest"),
}


def _public_ops() -> list[str]:
    return [
        name
        for name in keepmix.__all__
        if inspect.isclass(getattr(keepmix, name))
        and issubclass(getattr(keepmix, name), Op)
        and not inspect.isabstract(getattr(keepmix, name))
    ]


def test_every_public_op_is_checked():
    assert set(_public_ops()) == set(FACTORIES)


@pytest.mark.parametrize("name", sorted(FACTORIES) + sorted(VARIANTS))
def test_check_op(name):
    check_op({**FACTORIES, **VARIANTS}[name])


class _ModifiesInput(keepmix.Cutout):
    def apply_params(self, images, labels, params):
        out, labels = super().apply_params(images, labels, params)
        images.mul_(1.0)  # an in-place op on the caller's tensor (values unchanged) ...
        images[:, :, 0, 0] = 0.5  # ... and one that changes them
        return out, labels


class _DrawsInApply(keepmix.Cutout):
    def apply_params(self, images, labels, params):
        jitter = torch.rand(images.shape[0], 1, 1, 1).to(images.dtype)  # randomness outside sample_params
        return images * 0 + jitter if images.is_floating_point() else images, labels


@pytest.mark.parametrize("broken", [_ModifiesInput, _DrawsInApply])
def test_check_op_catches_broken_ops(broken):
    with pytest.raises(AssertionError):
        check_op(lambda: broken(6))
