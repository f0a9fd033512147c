"""The method registry: every augmentation method of the trainer is one :class:`MethodEntry`.

An entry says everything the harness needs to know about a method, so that no other module
dispatches on a method's name or on its op's type:

* ``build_op(ctx)``: the method's op from the config (:class:`BuildContext`); None for ``none``;
* ``options``: the config fields the op reads (named in the one-line error when they cannot
  run on the data, see :func:`check_method`);
* ``saliency``: whether the op takes a saliency map of the training model (the Keep variants,
  SaliencyMix with the gradient map): the map comes from :func:`keepmix.train.methods.build_saliency`;
* ``step``: the :class:`~keepmix.train.methods.Method` class that runs the op in a training
  step (plain, RecursiveMix's history and consistency loss, GridMask's schedule, AugMix's JSD loss);
* ``counterpart``: the plain / Keep method drawn beside it in a run's picture;
* ``picture(op)``: the op as pictures show it (CutMix mixing every image, ...).

A new method is one entry in :data:`METHOD_REGISTRY`. :data:`UDA_AUGMENTS` holds the
entries UDA's augmentation A may be (``uda_augment``): the same entries, so a UDA variant is
built and checked exactly as the supervised method of that name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
from torch import Tensor, nn

from keepmix.train.methods import AugMixJSDMethod, GridMaskMethod, Method, OpMethod, RecursiveMixMethod

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from keepmix.base import Op
    from keepmix.train.config import TrainConfig

__all__ = ["BuildContext", "MethodEntry", "METHOD_REGISTRY", "UDA_AUGMENTS", "get_entry", "build_method", "check_method", "check_op"]


@dataclass(frozen=True)
class BuildContext:
    """What an entry's ``build_op`` may read: the config, the training model, the number of
    classes, and (attentive_cutmix) the teacher to use instead of loading ``teacher_run``."""

    config: TrainConfig
    model: nn.Module
    num_classes: int
    teacher: nn.Module | Callable[[Tensor], Tensor] | None = None


def _full_p(op: Op) -> Op:
    """Pictures mix / mask every image: CIFAR's p = 0.5 would leave half of them unchanged
    (GridMask's p starts at 0 under its schedule)."""
    cast(Any, op).p = 1.0
    return op


def _spectral_picture(op: Op) -> Op:
    """SaliencyMix with its own spectral map in pictures: the method grid passes every op the
    shown model's gradient saliency, which a SaliencyMix would use (a map passed to a call
    wins); this one computes its spectral map, as it does in training. It mixes every image."""
    from keepmix.saliencymix import SaliencyMix

    class SpectralSaliencyMix(SaliencyMix):
        def _resolve_saliency(self, images, labels, saliency):
            return super()._resolve_saliency(images, labels, None)

    sm = cast(SaliencyMix, op)
    return SpectralSaliencyMix(alpha=sm.alpha, p=1.0, num_classes=sm.num_classes, per_sample=sm.per_sample)


@dataclass(frozen=True)
class MethodEntry:
    """One augmentation method (see the module docstring)."""

    name: str
    build_op: Callable[[BuildContext], Op] | None
    options: tuple[str, ...] = ()
    step: type[Method] = OpMethod
    saliency: bool = False
    counterpart: str | None = None
    picture: Callable[[Op], Op] | None = None

    def make(
        self,
        config: TrainConfig,
        ctx: BuildContext,
        mean: Sequence[float],
        std: Sequence[float],
        autocast: Callable[[], AbstractContextManager] | None = None,
    ) -> Method:
        """The training :class:`Method` of this entry: its op, its saliency source, its step."""
        from keepmix.train.methods import build_saliency

        if self.build_op is None:
            return self.step.build(config, mean, std, None, None, ctx.model)
        op = self.build_op(ctx)
        sal = build_saliency(config, ctx.model, autocast) if self.saliency else None
        return self.step.build(config, mean, std, op, sal, ctx.model)

    def describe_options(self, config: TrainConfig) -> str:
        """``cutout_length=64, whole_boxes=False``: the entry's options with their values."""
        return ", ".join(f"{k}={getattr(config, k)!r}" for k in self.options)


# ----------------------------------------------------------------------------- the op builders
_ERASING_VALUE: dict[str, float | str] = {"zero": 0.0, "random_box": "random_box", "random_pixel": "random_pixel"}


def _cutout(c: BuildContext) -> Op:
    from keepmix.placers import UniformPlacer
    from keepmix.regional import Cutout

    return Cutout(c.config.cutout_length, placer=UniformPlacer(whole_boxes=c.config.whole_boxes))


def _keepcutout(c: BuildContext) -> Op:
    from keepmix.keep import KeepCutout

    cfg = c.config
    return KeepCutout(cfg.cutout_length, q=cfg.keep_quantile, score=cfg.keep_score, whole_boxes=cfg.whole_boxes)


def _random_erasing(c: BuildContext) -> Op:
    from keepmix.regional import RandomErasing

    return RandomErasing(c.config.erasing_p, value=_ERASING_VALUE[c.config.erasing_value])


def _keeprandomerasing(c: BuildContext) -> Op:
    from keepmix.keep import KeepRandomErasing

    return KeepRandomErasing(c.config.erasing_p, value=_ERASING_VALUE[c.config.erasing_value], q=c.config.keep_quantile)


def _mixup(c: BuildContext) -> Op:
    from keepmix.mixing import Mixup

    return Mixup(c.config.mixup_alpha, num_classes=c.num_classes)


def _cutmix(c: BuildContext) -> Op:
    from keepmix.mixing import CutMix

    return CutMix(alpha=c.config.cutmix_alpha, p=c.config.cutmix_p, num_classes=c.num_classes)


def _keepcutmix(c: BuildContext) -> Op:
    from keepmix.keep import KeepCutMix

    cfg = c.config
    weight = cfg.cutmix_label_weight
    return KeepCutMix(alpha=cfg.cutmix_alpha, p=cfg.cutmix_p, num_classes=c.num_classes, label_weight=weight, q=cfg.keep_quantile)


def _policy(c: BuildContext) -> Literal["cifar10", "svhn", "imagenet"]:
    # TrainConfig validates autoaugment_policy against these choices
    return cast('Literal["cifar10", "svhn", "imagenet"]', c.config.autoaugment_policy)


def _autoaugment(c: BuildContext) -> Op:
    from keepmix.policies import AutoAugment

    return AutoAugment(_policy(c))


def _keepautoaugment(c: BuildContext) -> Op:
    from keepmix.keep import KeepAutoAugment

    return KeepAutoAugment(_policy(c), size=c.config.keep_paste_size, q=c.config.keep_quantile)


def _randaugment(c: BuildContext) -> Op:
    from keepmix.policies import RandAugment

    return RandAugment(c.config.randaugment_n, c.config.randaugment_m)


def _keeprandaugment(c: BuildContext) -> Op:
    from keepmix.keep import KeepRandAugment

    cfg = c.config
    return KeepRandAugment(cfg.randaugment_n, cfg.randaugment_m, size=cfg.keep_paste_size, q=cfg.keep_quantile)


def _trivialaugment(c: BuildContext) -> Op:
    from keepmix.policies import TrivialAugmentWide

    return TrivialAugmentWide()


def _recursivemix(c: BuildContext) -> Op:
    from keepmix.recursive import RecursiveMix

    return RecursiveMix(alpha=c.config.recursivemix_alpha, omega=c.config.recursivemix_omega, num_classes=c.num_classes)


def _keeprecursivemix(c: BuildContext) -> Op:
    from keepmix.recursive import KeepRecursiveMix

    cfg = c.config
    return KeepRecursiveMix(q=cfg.keep_quantile, alpha=cfg.recursivemix_alpha, omega=cfg.recursivemix_omega, num_classes=c.num_classes)


def _gridmask(c: BuildContext) -> Op:
    from keepmix.gridmask import GridMask

    cfg = c.config
    return GridMask((cfg.gridmask_d_min, cfg.gridmask_d_max), cfg.gridmask_ratio, cfg.gridmask_rotate, cfg.gridmask_mode, p=cfg.gridmask_p)


def _augmix(c: BuildContext) -> Op:
    from keepmix.augmix import AugMix

    cfg = c.config
    return AugMix(cfg.augmix_severity, cfg.augmix_width, cfg.augmix_depth, cfg.augmix_alpha, cfg.augmix_all_ops)


def _attentive_cutmix(c: BuildContext) -> Op:
    from keepmix.attentive_cutmix import AttentiveCutMix, FeatureTeacher
    from keepmix.train.methods import load_teacher

    teacher = c.teacher
    if teacher is None:
        teacher = load_teacher(c.config.teacher_run, c.num_classes, next(c.model.parameters()).device)
    fn = FeatureTeacher(teacher) if isinstance(teacher, nn.Module) else teacher
    return AttentiveCutMix(fn, top_k=c.config.attentive_top_k, num_classes=c.num_classes)


def _resizemix(c: BuildContext) -> Op:
    from keepmix.resizemix import ResizeMix

    return ResizeMix((c.config.resizemix_scale_min, c.config.resizemix_scale_max), num_classes=c.num_classes)


def _keepresizemix(c: BuildContext) -> Op:
    from keepmix.placers import KeepPlacer
    from keepmix.resizemix import ResizeMix

    cfg = c.config
    return ResizeMix((cfg.resizemix_scale_min, cfg.resizemix_scale_max), num_classes=c.num_classes, placer=KeepPlacer(q=cfg.keep_quantile))


def _saliencymix(mode: Literal["gradient", "spectral"]) -> Callable[[BuildContext], Op]:
    def build(c: BuildContext) -> Op:
        from keepmix.saliencymix import SaliencyMix

        return SaliencyMix(alpha=c.config.cutmix_alpha, p=c.config.cutmix_p, num_classes=c.num_classes, saliency=mode)

    return build


def _fmix(c: BuildContext) -> Op:
    from keepmix.fmix import FMix

    return FMix(alpha=c.config.fmix_alpha, decay_power=c.config.fmix_decay_power, num_classes=c.num_classes)


_KEEP = ("keep_quantile",)
_CUTMIX = ("cutmix_alpha", "cutmix_p")
_POLICY_PASTE = ("keep_paste_size",) + _KEEP
_RANDAUGMENT = ("randaugment_n", "randaugment_m")
_RECURSIVEMIX = ("recursivemix_alpha", "recursivemix_omega")
_GRIDMASK = ("gridmask_d_min", "gridmask_d_max", "gridmask_ratio", "gridmask_rotate", "gridmask_mode", "gridmask_p", "gridmask_ramp")
_AUGMIX = ("augmix_severity", "augmix_width", "augmix_depth", "augmix_alpha", "augmix_all_ops")
_RESIZEMIX = ("resizemix_scale_min", "resizemix_scale_max")

_ENTRIES = (
    MethodEntry("none", None, step=Method),
    MethodEntry("cutout", _cutout, ("cutout_length", "whole_boxes"), counterpart="keepcutout"),
    MethodEntry("keepcutout", _keepcutout, ("cutout_length", "keep_score", "whole_boxes") + _KEEP, saliency=True, counterpart="cutout"),
    MethodEntry("random_erasing", _random_erasing, ("erasing_p", "erasing_value"), counterpart="keeprandomerasing"),
    MethodEntry(
        "keeprandomerasing", _keeprandomerasing, ("erasing_p", "erasing_value") + _KEEP, saliency=True, counterpart="random_erasing"
    ),
    MethodEntry("mixup", _mixup, ("mixup_alpha",)),
    MethodEntry("cutmix", _cutmix, _CUTMIX, counterpart="keepcutmix", picture=_full_p),
    MethodEntry(
        "keepcutmix", _keepcutmix, _CUTMIX + ("cutmix_label_weight",) + _KEEP, saliency=True, counterpart="cutmix", picture=_full_p
    ),
    MethodEntry("autoaugment", _autoaugment, ("autoaugment_policy",), counterpart="keepautoaugment"),
    MethodEntry("keepautoaugment", _keepautoaugment, ("autoaugment_policy",) + _POLICY_PASTE, saliency=True, counterpart="autoaugment"),
    MethodEntry("randaugment", _randaugment, _RANDAUGMENT, counterpart="keeprandaugment"),
    MethodEntry("keeprandaugment", _keeprandaugment, _RANDAUGMENT + _POLICY_PASTE, saliency=True, counterpart="randaugment"),
    MethodEntry("trivialaugment", _trivialaugment),
    MethodEntry("recursivemix", _recursivemix, _RECURSIVEMIX, step=RecursiveMixMethod, counterpart="keeprecursivemix"),
    MethodEntry(
        "keeprecursivemix", _keeprecursivemix, _RECURSIVEMIX + _KEEP, step=RecursiveMixMethod, saliency=True, counterpart="recursivemix"
    ),
    MethodEntry("gridmask", _gridmask, _GRIDMASK, step=GridMaskMethod, picture=_full_p),
    MethodEntry("augmix", _augmix, _AUGMIX),
    MethodEntry("augmix_jsd", _augmix, _AUGMIX + ("augmix_jsd_weight",), step=AugMixJSDMethod),
    MethodEntry("attentive_cutmix", _attentive_cutmix, ("teacher_run", "attentive_top_k")),
    MethodEntry("resizemix", _resizemix, _RESIZEMIX, counterpart="keepresizemix"),
    MethodEntry("keepresizemix", _keepresizemix, _RESIZEMIX + _KEEP, saliency=True, counterpart="resizemix"),
    MethodEntry("saliencymix", _saliencymix("spectral"), _CUTMIX, picture=_spectral_picture),
    MethodEntry("saliencymix_gradient", _saliencymix("gradient"), _CUTMIX, saliency=True, picture=_full_p),
    MethodEntry("fmix", _fmix, ("fmix_alpha", "fmix_decay_power")),
)

#: Method name -> its entry, in the order ``keepmix train --help`` lists them.
METHOD_REGISTRY: dict[str, MethodEntry] = {e.name: e for e in _ENTRIES}

#: UDA's augmentation A of the unlabelled batch (``uda_augment``) -> its entry (a policy on
#: uint8; the Keep variant takes its saliency from the maximum logit, no label exists there).
UDA_AUGMENTS: dict[str, MethodEntry] = {n: METHOD_REGISTRY[n] for n in ("randaugment", "keeprandaugment")}


def get_entry(name: str) -> MethodEntry:
    """The entry of method ``name``; a :class:`~keepmix.train.config.ConfigError` listing the known ones otherwise."""
    entry = METHOD_REGISTRY.get(name)
    if entry is None:
        from keepmix.train.config import ConfigError

        raise ConfigError(f"unknown method {name!r}; known: {', '.join(METHOD_REGISTRY)}")
    return entry


def build_method(
    config: TrainConfig,
    model: nn.Module,
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    autocast: Callable[[], AbstractContextManager] | None = None,
    teacher: nn.Module | Callable[[Tensor], Tensor] | None = None,
) -> Method:
    """The :class:`Method` for ``config.method``, made by its registry entry.

    ``teacher`` (attentive_cutmix only): the feature-map teacher to use instead of loading
    ``config.teacher_run`` (a module with ``forward_features``, or ``images -> (B, C, h, w)``).
    """
    ctx = BuildContext(config, model, num_classes, teacher)
    return get_entry(config.method).make(config, ctx, mean, std, autocast)


def check_op(op: Op, image_shape: Sequence[int], num_classes: int, device: torch.device | str = "cpu") -> None:
    """Run ``op`` once on a dummy batch of two images of ``image_shape`` (C, H, W) as the
    trainer will (uint8 for ``raw_pixels`` ops, a float batch otherwise; labels; a constant
    saliency map where it takes one), with its own generator and through ``sample_params`` +
    ``transform``: an option the data cannot take (a Cutout longer than the images) raises
    here, as the op's own ValueError, instead of in the first step. The op's state is left
    as it was (``forward`` is not called)."""
    c, h, w = (int(s) for s in image_shape)
    x: Tensor = torch.zeros(2, c, h, w, device=device)
    if op.raw_pixels:
        x = x.to(torch.uint8)
    labels = torch.arange(2, device=device) % max(num_classes, 1)
    g = torch.Generator(device=device).manual_seed(0)
    saliency = torch.ones(2, h, w, device=device) if op.needs_saliency(x) else None
    params = op.sample_params(x, labels, saliency=saliency, generator=g)
    op.transform(x, labels if op.mixes_labels else None, params)


def check_method(
    op: Op | None,
    config: TrainConfig,
    image_shape: Sequence[int],
    num_classes: int,
    device: torch.device | str = "cpu",
    what: str = "method",
) -> None:
    """Refuse, with one :class:`~keepmix.train.config.ConfigError` line naming the method
    (the config field ``what``: ``method`` or ``uda_augment``) and its options, an op that
    cannot run on images of ``image_shape`` (see :func:`check_op`). None (``none``) passes."""
    from keepmix.train.config import ConfigError

    if op is None:
        return
    name = getattr(config, what)
    try:
        check_op(op, image_shape, num_classes, device)
    except (ValueError, TypeError) as e:
        h, w = image_shape[-2:]
        options = get_entry(name).describe_options(config)
        raise ConfigError(f"{what}={name} cannot run on this data's {h}x{w} images ({options}): {e}") from None
