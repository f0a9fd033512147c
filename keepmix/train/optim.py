"""SGD (momentum / Nesterov, weight decay) and a per-step cosine schedule with linear warm-up."""

from __future__ import annotations

import math

import torch
from torch import nn

from keepmix.train.config import TrainConfig

__all__ = ["build_optimizer", "build_scheduler", "lr_factor"]


def _param_groups(model: nn.Module, weight_decay: float, no_bn_decay: bool) -> list[dict]:
    if not no_bn_decay:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            # 1-D parameters are BatchNorm scales/shifts and biases.
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """SGD with the config's lr, momentum, Nesterov flag and weight decay."""
    groups = _param_groups(model, config.weight_decay, config.no_bn_decay)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak lr at optimiser step ``step`` (0-based).

    Linear warm-up ``(step + 1) / warmup_steps`` (so the first step already moves), then a
    half cosine from 1 down to ``min_ratio`` at ``total_steps``. Stepping per batch rather than
    per epoch keeps short runs (a few epochs) smooth.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Cosine decay with warm-up over ``config.epochs * steps_per_epoch`` steps, stepped per batch."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    total = config.epochs * steps_per_epoch
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    ratio = config.min_lr / config.lr

    def factor(step: int) -> float:
        return lr_factor(step, total, warmup, ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
