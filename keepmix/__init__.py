"""keepmix: information-preserving and mixing data augmentation for image classification.

What a user imports. Every op follows one protocol (:mod:`keepmix.base`):
``op(images, labels=None, *, saliency=None, generator=None)`` returns ``images`` without
labels and ``(images, targets)`` with labels; ``op.sample_params`` then ``op.transform`` are the
same call in two steps. Ops take a (B, C, H, W) batch (float or uint8, any device), draw their
random parameters per image from an optional ``torch.Generator``, and never modify their
input. The pure functions behind the ops are in :mod:`keepmix.functional`.
"""

from keepmix.attentive_cutmix import AttentiveCutMix, AttentiveCutMixParams
from keepmix.augmix import AugMix, AugMixJSDLoss, AugMixParams, jensen_shannon_consistency
from keepmix.base import Op, Params, RegionOp, RegionParams
from keepmix.fmix import FMix, FMixParams
from keepmix.functional.selection import KeepSelection
from keepmix.gridmask import GridMask, GridMaskParams
from keepmix.keep import (
    KeepAutoAugment,
    KeepCutMix,
    KeepCutout,
    KeepPaste,
    KeepPasteParams,
    KeepRandAugment,
    KeepRandomErasing,
)
from keepmix.mixing import CutMix, CutMixParams, Mixup, MixupParams
from keepmix.mixup_cutmix import MixupCutMix, MixupCutMixParams
from keepmix.placers import KeepPlacer, Placer, UniformPlacer
from keepmix.policies import AutoAugment, PolicyParams, RandAugment, TrivialAugmentWide
from keepmix.recursive import KeepRecursiveMix, RecursiveMix, RecursiveMixInfo, RecursiveMixParams
from keepmix.regional import Cutout, CutoutParams, RandomErasing, RandomErasingParams
from keepmix.resizemix import ResizeMix, ResizeMixParams
from keepmix.saliency import Saliency, saliency_map, uniform_saliency
from keepmix.saliencymix import SaliencyMix, SaliencyMixParams, spectral_residual_saliency
from keepmix.targets import SoftTargetCrossEntropy, mix_targets, soft_target_cross_entropy, to_soft_targets
from keepmix.workers import worker_generator

__version__ = "0.1.0"

# `import keepmix` loads the ops only. The models, the data helpers and the harness load on
# first use of one of their names (PEP 562): the harness pulls in tqdm, yaml and matplotlib,
# which an op user should not pay for. `train` (the function) stays in keepmix.train:
# re-exported here it would hide the subpackage.
_LAZY = {
    **dict.fromkeys(
        (
            "CIFAR10_MEAN",
            "CIFAR10_STD",
            "CIFAR100_MEAN",
            "CIFAR100_STD",
            "DeviceLoader",
            "Split",
            "class_balanced_subset",
            "get_dataset",
            "load_cifar",
            "load_image_folder",
            "normalize",
        ),
        "keepmix.data",
    ),
    **dict.fromkeys(("FeatureHook",), "keepmix.models.hooks"),
    **dict.fromkeys(("KeepmixModel", "build_model", "list_models"), "keepmix.models"),
    **dict.fromkeys(("TrainConfig", "get_preset"), "keepmix.train"),
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'keepmix' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    # the protocol and the placers
    "Op",
    "Params",
    "RegionOp",
    "RegionParams",
    "Placer",
    "UniformPlacer",
    "KeepPlacer",
    "worker_generator",
    # region-level and mixing ops
    "Cutout",
    "CutoutParams",
    "RandomErasing",
    "RandomErasingParams",
    "Mixup",
    "MixupParams",
    "CutMix",
    "CutMixParams",
    "MixupCutMix",
    "MixupCutMixParams",
    # the comparison baselines (KeepAugment's Table 5) and what other libraries offer
    "GridMask",
    "GridMaskParams",
    "AugMix",
    "AugMixParams",
    "AugMixJSDLoss",
    "jensen_shannon_consistency",
    "AttentiveCutMix",
    "AttentiveCutMixParams",
    "ResizeMix",
    "ResizeMixParams",
    "SaliencyMix",
    "SaliencyMixParams",
    "spectral_residual_saliency",
    "FMix",
    "FMixParams",
    # image-level policies
    "AutoAugment",
    "RandAugment",
    "TrivialAugmentWide",
    "PolicyParams",
    # KeepAugment
    "Saliency",
    "saliency_map",
    "uniform_saliency",
    "KeepPaste",
    "KeepPasteParams",
    "KeepSelection",
    "KeepCutout",
    "KeepRandomErasing",
    "KeepCutMix",
    "KeepAutoAugment",
    "KeepRandAugment",
    # RecursiveMix
    "RecursiveMix",
    "RecursiveMixInfo",
    "RecursiveMixParams",
    "KeepRecursiveMix",
    # targets and loss
    "to_soft_targets",
    "mix_targets",
    "soft_target_cross_entropy",
    "SoftTargetCrossEntropy",
    # models and data
    "build_model",
    "list_models",
    "KeepmixModel",
    "FeatureHook",
    "get_dataset",
    "load_cifar",
    "load_image_folder",
    "Split",
    "DeviceLoader",
    "normalize",
    "class_balanced_subset",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    # the training harness
    "TrainConfig",
    "get_preset",
]
