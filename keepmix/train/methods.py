"""One object per augmentation method: a clean batch in, what the training step needs out.

``method.prepare(images_uint8, labels, generator) -> StepBatch(inputs, targets, feature_loss)``
runs, in this order (SPEC 3 and the harness brief):

    uint8 (already cropped + flipped)
      -> AutoAugment / RandAugment / TrivialAugment on uint8
         (Keep variants: saliency of the normalised clean batch, selective-paste from it)
      -> normalise
      -> Cutout / Random Erasing / Mixup / CutMix / RecursiveMix on the normalised batch
         (Keep variants: saliency of the normalised clean batch, selective-cut)
      -> model

``feature_loss`` (RecursiveMix's consistency loss) is a function of the last feature map that
the training forward evaluates; ``after_step`` hands the step's logits back (RecursiveMix's
history); ``state_dict`` is what a checkpoint must hold to resume exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Sequence

import torch
from torch import Tensor, nn

from keepmix.train.config import ConfigError, TrainConfig

__all__ = ["StepBatch", "Method", "build_method", "build_saliency"]


@dataclass
class StepBatch:
    """What one training step consumes: normalised float ``inputs``, ``targets`` ((B,) ids or
    (B, K) soft), an optional ``feature_loss(features) -> scalar``, and the method's ``info``."""

    inputs: Tensor
    targets: Tensor
    feature_loss: Callable[[Tensor], Tensor] | None = None
    info: Any = None


class Method:
    """Base: crop + flip already done; normalise only (the ``none`` method)."""

    #: What the regions a method draws are, for pictures: "cut", "kept" or "pasted".
    region = "cut"

    def __init__(self, config: TrainConfig, mean: Sequence[float], std: Sequence[float]) -> None:
        self.config = config
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 (B, C, H, W) -> float32 ``(x / 255 - mean) / std``."""
        if self._mean.device != images.device:
            self._mean, self._std = self._mean.to(images.device), self._std.to(images.device)
        return (images.float() / 255.0 - self._mean) / self._std

    def prepare(self, images: Tensor, labels: Tensor, generator: torch.Generator | None) -> StepBatch:
        return StepBatch(self.normalize(images), labels)

    def after_step(self, batch: StepBatch, logits: Tensor) -> None:
        """Called with the step's detached logits after the optimiser step."""

    def on_epoch_start(self) -> None:
        """Called before the first step of every epoch (not when resuming inside one)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state, got keys {sorted(state)}")


class OpMethod(Method):
    """A method built on one augmentation op, with the saliency function of its Keep variant
    (``None`` for the plain method)."""

    def __init__(self, config, mean, std, op: nn.Module, saliency: Callable | None = None) -> None:
        super().__init__(config, mean, std)
        self.op, self.saliency = op, saliency


class RegionMethod(OpMethod):
    """Cutout / Random Erasing (``keep=True``: their KeepAugment selective-cut versions)."""

    def prepare(self, images, labels, generator):
        x = self.normalize(images)
        if self.saliency is None:
            return StepBatch(self.op(x, generator=generator), labels)
        return StepBatch(self.op(x, labels, saliency=self.saliency(x, labels), generator=generator), labels)


class MixMethod(OpMethod):
    """Mixup / CutMix / KeepCutMix on the normalised batch: returns soft targets."""

    region = "pasted"

    def prepare(self, images, labels, generator):
        x = self.normalize(images)
        if self.saliency is None:
            x, t = self.op(x, labels, generator=generator)
        else:
            x, t = self.op(x, labels, saliency=self.saliency(x, labels), generator=generator)
        return StepBatch(x, t)


class PolicyMethod(OpMethod):
    """AutoAugment / RandAugment / TrivialAugment on uint8 before normalisation; the Keep
    variants paste back the salient region of the clean image (saliency of the normalised
    clean batch)."""

    region = "kept"

    def prepare(self, images, labels, generator):
        if self.saliency is None:
            return StepBatch(self.normalize(self.op(images, generator=generator)), labels)
        sal = self.saliency(self.normalize(images), labels)
        return StepBatch(self.normalize(self.op(images, labels, saliency=sal, generator=generator)), labels)


class RecursiveMixMethod(Method):
    """RecursiveMix: paste the resized previous mixed batch, add the RoI consistency loss,
    keep the history (saved in checkpoints)."""

    region = "pasted"

    def __init__(self, config, mean, std, rm: Any, head: nn.Module, saliency: Callable | None = None) -> None:
        super().__init__(config, mean, std)
        self.rm, self.head, self.saliency = rm, head, saliency

    def prepare(self, images, labels, generator):
        x = self.normalize(images)
        if self.saliency is None:
            x, t, info = self.rm.mix(x, labels, generator=generator)
        else:
            x, t, info = self.rm.mix(x, labels, generator=generator, saliency=self.saliency(x, labels))
        rm, head = self.rm, self.head

        def consistency(features: Tensor) -> Tensor:
            return rm.consistency_loss(features, info, head=head)

        return StepBatch(x, t, consistency, info)

    def after_step(self, batch, logits):
        self.rm.update(batch.inputs, batch.targets, logits)

    def on_epoch_start(self):
        self.rm.on_epoch_start()  # resets the history only if the op was built to

    def state_dict(self):
        return self.rm.state_dict()

    def load_state_dict(self, state):
        self.rm.load_state_dict(state)


def build_saliency(config: TrainConfig, model: nn.Module, autocast: Callable[[], ContextManager] | None = None):
    """The Saliency of ``config.saliency`` (full / lowres / early / lowres+early) on ``model``,
    or the constant map of ``uniform`` (the ablation control: no pass at all).

    Under AMP the saliency pass runs in the same autocast as training: it is a full forward
    and backward (the cost KeepAugment adds), and the map is only used to rank regions.
    """
    from keepmix.saliency import Saliency, uniform_saliency

    mode = config.saliency
    if mode == "uniform":
        return uniform_saliency
    fn = model.early_logits if "early" in mode else model
    downscale = config.saliency_downscale if "lowres" in mode else 1
    if autocast is not None:
        inner = fn

        def fn(x: Tensor) -> Tensor:
            with autocast():
                return inner(x)

    return Saliency(fn, downscale=downscale, model=model)


_ERASING_VALUE = {"zero": 0.0, "random_box": "random_box", "random_pixel": "random_pixel"}


def build_method(
    config: TrainConfig,
    model: nn.Module,
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    autocast: Callable[[], ContextManager] | None = None,
) -> Method:
    """The :class:`Method` for ``config.method`` (its ops built from the config's fields)."""
    m = config.method
    keep = m.startswith("keep")
    sal = build_saliency(config, model, autocast) if keep else None
    q = config.keep_quantile
    if m == "none":
        return Method(config, mean, std)
    if m in ("cutout", "keepcutout"):
        from keepmix.keep import KeepCutout
        from keepmix.regional import Cutout

        op = KeepCutout(config.cutout_length, q=q) if keep else Cutout(config.cutout_length)
        return RegionMethod(config, mean, std, op, sal)
    if m in ("random_erasing", "keeprandomerasing"):
        from keepmix.keep import KeepRandomErasing
        from keepmix.regional import RandomErasing

        value = _ERASING_VALUE[config.erasing_value]
        op = KeepRandomErasing(config.erasing_p, value=value, q=q) if keep else RandomErasing(config.erasing_p, value=value)
        return RegionMethod(config, mean, std, op, sal)
    if m == "mixup":
        from keepmix.mixing import Mixup

        return MixMethod(config, mean, std, Mixup(config.mixup_alpha, num_classes=num_classes))
    if m in ("cutmix", "keepcutmix"):
        from keepmix.keep import KeepCutMix
        from keepmix.mixing import CutMix

        if keep:
            op = KeepCutMix(num_classes, config.cutmix_alpha, config.cutmix_p, label_weight=config.cutmix_label_weight, q=q)
        else:
            op = CutMix(config.cutmix_alpha, config.cutmix_p, num_classes)
        return MixMethod(config, mean, std, op, sal)
    if m in ("autoaugment", "keepautoaugment"):
        from keepmix.keep import KeepAutoAugment
        from keepmix.policies import AutoAugment

        p = config.autoaugment_policy
        op = KeepAutoAugment(p, size=config.keep_paste_size, q=q) if keep else AutoAugment(p)
        return PolicyMethod(config, mean, std, op, sal)
    if m in ("randaugment", "keeprandaugment"):
        from keepmix.keep import KeepRandAugment
        from keepmix.policies import RandAugment

        n, mag = config.randaugment_n, config.randaugment_m
        op = KeepRandAugment(n, mag, size=config.keep_paste_size, q=q) if keep else RandAugment(n, mag)
        return PolicyMethod(config, mean, std, op, sal)
    if m == "trivialaugment":
        from keepmix.policies import TrivialAugmentWide

        return PolicyMethod(config, mean, std, TrivialAugmentWide())
    if m in ("recursivemix", "keeprecursivemix"):
        from keepmix import recursive

        kwargs = dict(alpha=config.recursivemix_alpha, omega=config.recursivemix_omega, num_classes=num_classes)
        if keep:
            if not hasattr(recursive, "KeepRecursiveMix"):
                raise ConfigError("method keeprecursivemix is not available: keepmix.recursive has no KeepRecursiveMix")
            rm = recursive.KeepRecursiveMix(q=q, **kwargs)
        else:
            rm = recursive.RecursiveMix(**kwargs)
        return RecursiveMixMethod(config, mean, std, rm, model.fc, sal)
    raise ConfigError(f"unknown method {m!r}")  # config validation lists the known ones
