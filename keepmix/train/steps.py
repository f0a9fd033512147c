"""The training step's forward and loss: two strategies behind one narrow interface.

A strategy turns one cropped + flipped uint8 batch into ``(batch, logits, loss)``; the loop
(:class:`keepmix.train.loop.Trainer`) does the backward, the update and the bookkeeping. It
reads of the run only what :class:`StepContext` holds, never the trainer itself, so neither
strategy imports the loop:

* :class:`SupervisedStep`: ``method.prepare`` -> model (+ early head, + the method's feature
  loss) -> the criterion, or the method's own loss (AugMix's JSD);
* :class:`keepmix.train.uda.UDAStep`: a labelled batch and an unlabelled one, the UDA loss
  (``semi_labels > 0``).

Both have ``forward_loss(ctx, images, labels, global_step)``, ``epoch_record()`` (the
strategy's own per-epoch statistics, reduced over ranks), ``state_dict()`` (None when the
strategy keeps no state) and ``load_state_dict(state)``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from keepmix.models.base import KeepmixModel
    from keepmix.train.config import TrainConfig
    from keepmix.train.distributed import DistInfo
    from keepmix.train.methods import Method, StepBatch

__all__ = ["TrainForward", "StepContext", "StepStrategy", "SupervisedStep"]


class TrainForward(nn.Module):
    """The training forward as one module, so DDP sees (and syncs) everything it runs.

    Returns ``(logits, early_logits or None, extra_loss or None)``. ``feature_loss`` (a
    function of the last feature map, e.g. RecursiveMix's consistency loss) is evaluated
    inside the forward, so its use of ``model.fc`` is part of the same DDP step.
    """

    def __init__(self, model: nn.Module, early: bool) -> None:
        super().__init__()
        self.model = model
        self.early = early

    def forward(self, x: Tensor, feature_loss: Callable[[Tensor], Tensor] | None = None):
        # nn.Module's stubs type an unknown attribute Tensor | Module: the model is one of build_model's (KeepmixModel)
        m = cast("KeepmixModel", self.model)
        early: Tensor | None
        if feature_loss is None:
            if self.early:
                logits, early = m.forward_with_early(x)
                return logits, early, None
            return m(x), None, None
        if self.early:
            feats, early = m.forward_features_with_early(x)  # one pass for both
        else:
            early, feats = None, m.forward_features(x)
        return m.classify(feats), early, feature_loss(feats)


@dataclass
class StepContext:
    """What a step strategy reads of the run (set up once by the trainer)."""

    config: TrainConfig
    method: Method
    forward: nn.Module  # (inputs, feature_loss) -> (logits, early logits or None, extra loss or None)
    criterion: Callable[[Tensor, Tensor], Tensor]
    autocast: Callable[[], AbstractContextManager]
    generator: torch.Generator
    memory_format: torch.memory_format
    num_classes: int
    total_steps: int
    device: torch.device
    dist: DistInfo


class StepStrategy(Protocol):
    """The interface of a step strategy (see the module docstring)."""

    def forward_loss(self, ctx: StepContext, images: Tensor, labels: Tensor, global_step: int) -> tuple[StepBatch, Tensor, Tensor]: ...

    def epoch_record(self) -> dict[str, Any]: ...

    def state_dict(self) -> dict[str, Any] | None: ...

    def load_state_dict(self, state: dict[str, Any] | None) -> None: ...


class SupervisedStep:
    """The supervised step: the method's batch, the training forward, the criterion (or the
    method's own loss), the early head's loss weighted by ``early_loss_weight``."""

    def forward_loss(self, ctx: StepContext, images: Tensor, labels: Tensor, global_step: int) -> tuple[StepBatch, Tensor, Tensor]:
        batch = ctx.method.prepare(images, labels, ctx.generator)
        inputs = batch.inputs.contiguous(memory_format=ctx.memory_format)
        with ctx.autocast():
            logits, early, extra = ctx.forward(inputs, batch.feature_loss)
            loss = ctx.criterion(logits, batch.targets) if batch.loss is None else batch.loss(logits, batch.targets)
            if early is not None:
                loss = loss + ctx.config.early_loss_weight * ctx.criterion(early, batch.targets)
            if extra is not None:
                loss = loss + extra
        return batch, logits, loss

    def epoch_record(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any] | None:
        return None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state is not None:
            from keepmix.train.checkpoint import CheckpointError

            raise CheckpointError("the checkpoint holds a semi-supervised state, but this run is supervised")
