"""One object per augmentation method: a clean batch in, what the training step needs out.

``method.prepare(images_uint8, labels, generator) -> StepBatch(inputs, targets, feature_loss)``
runs, in this order (KeepAugment's set-up: the method after crop + flip):

    uint8 (already cropped + flipped)
      -> AutoAugment / RandAugment / TrivialAugment on uint8
         (Keep variants: saliency of the normalised clean batch, selective-paste from it)
      -> normalise
      -> Cutout / Random Erasing / Mixup / CutMix / RecursiveMix on the normalised batch
         (Keep variants: saliency of the normalised clean batch, selective-cut)
      -> model

``feature_loss`` (RecursiveMix's consistency loss) is a function of the last feature map that
the training forward evaluates; ``loss`` (AugMix's JSD loss) replaces the criterion on the
step's logits; ``after_step`` hands the step's logits back (RecursiveMix's history);
``on_epoch_start`` moves schedules (GridMask's ``p``); ``state_dict`` is what a checkpoint must
hold to resume exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from keepmix.base import Op
from keepmix.recursive import RecursiveMix

if TYPE_CHECKING:  # imported where used (inside the functions) at run time
    from keepmix.augmix import AugMix
    from keepmix.gridmask import GridMask
    from keepmix.train.config import TrainConfig

__all__ = [
    "StepBatch",
    "Method",
    "OpMethod",
    "RecursiveMixMethod",
    "GridMaskMethod",
    "AugMixJSDMethod",
    "build_method",
    "build_saliency",
    "load_teacher",
]


@dataclass
class StepBatch:
    """What one training step consumes: normalised float ``inputs``, ``targets`` ((B,) ids or
    (B, K) soft; one row per row of ``inputs``), an optional ``feature_loss(features) ->
    scalar`` added to the loss, the method's ``info`` (RecursiveMix: the step's
    :class:`~keepmix.recursive.RecursiveMixParams`), and an optional ``loss(logits, targets) ->
    scalar``.

    ``loss``, when set, is the whole main loss of the step and replaces the loop's criterion
    ``criterion(logits, targets)`` (AugMix's JSD method: cross-entropy on the clean third of
    the rows plus the Jensen-Shannon term over the three thirds). A loop that calls it says so
    with :attr:`Method.loop_calls_loss`; for a loop that does not, the method also puts
    ``loss - criterion`` into ``feature_loss`` so that such a loop trains with the same loss.
    """

    inputs: Tensor
    targets: Tensor
    feature_loss: Callable[[Tensor], Tensor] | None = None
    info: Any = None
    loss: Callable[[Tensor, Tensor], Tensor] | None = None


class Method:
    """Base: crop + flip already done; normalise only (the ``none`` method).

    ``op`` is the augmentation op the method runs (a :class:`keepmix.base.Op`; None for
    ``none``), what pictures of the method show; ``saliency`` the saliency function of a
    Keep variant (None for the others).
    """

    #: The method's op (None: the method only normalises).
    op: Op | None = None
    #: ``(normalised images, labels) -> (B, H, W)`` for the Keep variants, else None.
    saliency: Callable | None = None
    #: Set True by a training loop that calls :attr:`StepBatch.loss` itself (in place of its
    #: criterion); False (default): the method folds its loss into ``feature_loss``.
    loop_calls_loss: bool = False
    #: Whether the method adds a loss of its own (RecursiveMix's consistency, AugMix's JSD):
    #: such a method cannot train the labelled batch of a semi-supervised run.
    adds_loss: bool = False

    @classmethod
    def build(
        cls, config: TrainConfig, mean: Sequence[float], std: Sequence[float], op: Op | None, saliency: Callable | None, model: nn.Module
    ) -> Method:
        """The method from its registry entry's parts (:meth:`keepmix.train.registry.MethodEntry.make`)."""
        if op is not None:
            raise TypeError(f"{cls.__name__} takes no op, got {type(op).__name__}")
        return cls(config, mean, std)

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
    """A method built on one keepmix op, run through the op protocol.

    ``saliency`` is the saliency function of a Keep variant (``(x, labels) -> (B, H, W)``,
    evaluated on the normalised clean batch), None for the plain methods. The op runs on the
    uint8 batch before normalisation when ``op.raw_pixels`` (the policies, and KeepPaste
    around one), on the normalised batch otherwise; a mixing op (``op.mixes_labels``)
    returns soft targets, every other op keeps the labels::

        out = op(x, labels, saliency=saliency(x_normalised, labels), generator=g)  # Keep variants
        out = op(x, labels, generator=g)                                           # mixing ops
        out = op(x, generator=g)                                                   # label-preserving ops
    """

    op: Op

    def __init__(self, config, mean, std, op: Op, saliency: Callable | None = None) -> None:
        super().__init__(config, mean, std)
        if not isinstance(op, Op):
            raise TypeError(f"op must be a keepmix op (keepmix.base.Op), got {type(op).__name__}")
        self.op, self.saliency = op, saliency

    @classmethod
    def build(cls, config, mean, std, op, saliency, model):
        return cls(config, mean, std, op, saliency)

    def prepare(self, images, labels, generator):
        op = self.op
        x = images if op.raw_pixels else self.normalize(images)
        if self.saliency is not None:
            clean = self.normalize(images) if op.raw_pixels else x
            out, targets = op(x, labels, saliency=self.saliency(clean, labels), generator=generator)
        elif op.mixes_labels:
            out, targets = op(x, labels, generator=generator)
        else:
            out, targets = op(x, generator=generator), labels
        return StepBatch(self.normalize(out) if op.raw_pixels else out, targets)


class RecursiveMixMethod(OpMethod):
    """RecursiveMix / KeepRecursiveMix: paste the resized previous mixed batch, add the RoI
    consistency loss (with the params of this step's call), keep the history (saved in
    checkpoints)."""

    op: RecursiveMix
    adds_loss = True

    @classmethod
    def build(cls, config, mean, std, op, saliency, model):
        # nn.Module's stubs type an unknown attribute Tensor | Module; fc is the model's nn.Linear (KeepmixModel)
        return cls(config, mean, std, op, cast(nn.Module, model.fc), saliency)

    def __init__(self, config, mean, std, rm: RecursiveMix, head: nn.Module, saliency: Callable | None = None) -> None:
        if not isinstance(rm, RecursiveMix):
            raise TypeError(f"rm must be a keepmix RecursiveMix, got {type(rm).__name__}")
        super().__init__(config, mean, std, rm, saliency)
        self.head = head

    @property
    def rm(self) -> RecursiveMix:
        return self.op

    def prepare(self, images, labels, generator):
        rm, head = self.op, self.head
        x = self.normalize(images)
        if self.saliency is None or not rm.needs_saliency(x):  # the first step (no history) places no box
            x, t = rm(x, labels, generator=generator)
        else:
            x, t = rm(x, labels, saliency=self.saliency(x, labels), generator=generator)
        params = rm.last_params  # this call's: the loss below does not depend on later calls

        def consistency(features: Tensor) -> Tensor:
            return rm.consistency_loss(features, head=head, params=params)

        return StepBatch(x, t, consistency, params)

    def after_step(self, batch, logits):
        self.op.update(batch.inputs, batch.targets, logits)

    def on_epoch_start(self):
        self.op.on_epoch_start()  # resets the history only if the op was built to

    def state_dict(self):
        return self.op.state_dict()

    def load_state_dict(self, state):
        self.op.load_state_dict(state)


class GridMaskMethod(OpMethod):
    """GridMask with the paper's linear schedule of ``p`` over training (the official
    ``set_prob(epoch, max_epoch)``): before epoch ``e`` (counting from 0) the op's probability
    is ``P * min(1, e / ramp_epochs)``; ``ramp_epochs = 0`` keeps ``P`` throughout.

    The number of epochs started is the method's state (saved in checkpoints), so a run resumed
    inside an epoch masks with that epoch's ``p``, exactly as the uninterrupted run.
    """

    op: GridMask

    @classmethod
    def build(cls, config, mean, std, op, saliency, model):
        return cls(config, mean, std, op, round(config.gridmask_ramp * config.epochs))

    def __init__(self, config, mean, std, op, ramp_epochs: int) -> None:
        from keepmix.gridmask import GridMask

        if not isinstance(op, GridMask):
            raise TypeError(f"op must be a keepmix GridMask, got {type(op).__name__}")
        super().__init__(config, mean, std, op)
        if isinstance(ramp_epochs, bool) or not isinstance(ramp_epochs, int) or ramp_epochs < 0:
            raise ValueError(f"ramp_epochs must be an int >= 0, got {ramp_epochs!r}")
        self.ramp_epochs = ramp_epochs
        self.epochs_started = 0
        self._set_p()

    def _set_p(self) -> None:
        epoch = max(self.epochs_started - 1, 0)  # the epoch under way (0 before the first)
        if self.ramp_epochs == 0:
            self.op.p = self.op.p_max
        else:
            self.op.set_epoch(epoch, self.ramp_epochs)

    def on_epoch_start(self):
        self.epochs_started += 1
        self._set_p()

    def state_dict(self):
        return {"epochs_started": self.epochs_started}

    def load_state_dict(self, state):
        if set(state) != {"epochs_started"}:
            raise ValueError(f"GridMaskMethod state must hold exactly 'epochs_started', got keys {sorted(state)}")
        self.epochs_started = int(state["epochs_started"])
        self._set_p()


class AugMixJSDMethod(OpMethod):
    """AugMix trained with its Jensen-Shannon consistency loss (Hendrycks et al. 2020, the
    official ``train``): every step feeds ``[clean, aug1, aug2]`` (3B rows, one forward, so
    BatchNorm sees all three) and the loss is ``CE(clean logits, targets) + weight * JS(clean,
    aug1, aug2)`` (weight 12 in the paper); the two AugMix views are independent draws of the
    op (:meth:`keepmix.augmix.AugMix.splits`), on uint8 before normalisation.

    ``targets`` are the labels repeated for the three thirds (the loop's accuracy counts every
    row). :attr:`StepBatch.loss` holds the loss; until the loop calls it
    (:attr:`Method.loop_calls_loss`), ``feature_loss`` adds ``loss - criterion`` on the logits
    of the step's features (``model.classify``), so that the loop's
    ``criterion(logits, targets) + feature_loss(features)`` is exactly the JSD loss.
    """

    op: AugMix
    adds_loss = True

    @classmethod
    def build(cls, config, mean, std, op, saliency, model):
        # nn.Module's stubs type an unknown attribute Tensor | Module; classify is the model's method (KeepmixModel)
        return cls(config, mean, std, op, cast("Callable[[Tensor], Tensor]", model.classify), config.augmix_jsd_weight)

    def __init__(self, config, mean, std, op, classify: Callable[[Tensor], Tensor], weight: float = 12.0) -> None:
        from keepmix.augmix import AugMix

        if not isinstance(op, AugMix):
            raise TypeError(f"op must be a keepmix AugMix, got {type(op).__name__}")
        super().__init__(config, mean, std, op)
        self.classify = classify
        self.weight = float(weight)

    def jsd_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """``CE(clean third, its targets) + weight * JS`` of the (3B, K) logits."""
        from keepmix.augmix import jensen_shannon_consistency
        from keepmix.targets import soft_target_cross_entropy

        clean, aug1, aug2 = logits.chunk(3)
        ce = soft_target_cross_entropy(clean, targets[: clean.shape[0]], self.config.label_smoothing)
        return ce + jensen_shannon_consistency(clean, aug1, aug2, weight=self.weight)

    def prepare(self, images, labels, generator):
        from keepmix.targets import soft_target_cross_entropy

        aug1, aug2 = self.op.splits(images, generator=generator)
        inputs = self.normalize(torch.cat([images, aug1, aug2]))
        targets = torch.cat([labels, labels, labels])
        loss = self.jsd_loss
        if self.loop_calls_loss:
            return StepBatch(inputs, targets, loss=loss)
        smoothing = self.config.label_smoothing

        def rest_of_loss(features: Tensor) -> Tensor:
            logits = self.classify(features)
            return loss(logits, targets) - soft_target_cross_entropy(logits, targets, smoothing)

        return StepBatch(inputs, targets, rest_of_loss, loss=loss)


def load_teacher(run: str, num_classes: int, device: torch.device) -> nn.Module:
    """The trained model of the keepmix run ``run`` (a run directory or checkpoint), in eval
    mode on ``device``, with its parameters frozen: Attentive CutMix's teacher."""
    from keepmix.train.checkpoint import CheckpointError, load_trained_model
    from keepmix.train.config import ConfigError

    if not run:
        raise ConfigError(
            "method attentive_cutmix needs a teacher: set teacher_run to the run directory of a finished keepmix run "
            "on the same dataset (e.g. --teacher-run runs/cifar10-resnet18-none-...)"
        )
    try:
        teacher, _ = load_trained_model(run, num_classes)
    except CheckpointError as e:
        raise ConfigError(f"teacher_run {run!r} cannot serve as the teacher: {e}") from None
    teacher.requires_grad_(False)
    return teacher.to(device).eval()


def build_saliency(config: TrainConfig, model: nn.Module, autocast: Callable[[], AbstractContextManager] | None = None):
    """The Saliency of ``config.saliency`` (full / lowres / early / lowres+early) on ``model``,
    or the constant map of ``uniform`` (the ablation control: no pass at all).

    Under AMP the saliency pass runs in the same autocast as training: it is a full forward
    and backward (the cost KeepAugment adds), and the map is only used to rank regions.
    """
    from keepmix.saliency import Saliency, uniform_saliency

    mode = config.saliency
    if mode == "uniform":
        return uniform_saliency
    # nn.Module's stubs type an unknown attribute Tensor | Module; early_logits is the model's method (KeepmixModel)
    fn: Callable[[Tensor], Tensor] = cast("Callable[[Tensor], Tensor]", model.early_logits) if "early" in mode else model
    downscale = config.saliency_downscale if "lowres" in mode else 1
    if autocast is not None:
        inner = fn

        def fn(x: Tensor) -> Tensor:
            with autocast():
                return inner(x)

    return Saliency(fn, downscale=downscale, model=model)


def build_method(*args: Any, **kwargs: Any) -> Method:
    """:func:`keepmix.train.registry.build_method` (the registry builds every method)."""
    from keepmix.train.registry import build_method as build

    return build(*args, **kwargs)
