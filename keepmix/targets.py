"""Soft targets: integer labels to (B, K) distributions, mixing them, and the loss they feed."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from keepmix.engine import check_values
from keepmix.functional.constants import cached

__all__ = ["check_soft_targets", "to_soft_targets", "mix_targets", "soft_target_cross_entropy", "SoftTargetCrossEntropy"]


#: How far a soft target row's sum may stray from 1: float16/bfloat16 rows and label smoothing
#: round, and a wrong row (a sum of 5, or of -1) is far outside it.
SOFT_TARGET_TOLERANCE = 1e-2


def check_soft_targets(targets: Tensor, name: str = "labels") -> None:
    """Raise unless every row of the (B, K) ``targets`` is a distribution: finite, non-negative,
    summing to 1 within :data:`SOFT_TARGET_TOLERANCE` (a device-side assertion on the
    capture-safe path, see :mod:`keepmix.engine`)."""
    t = targets.float()
    ok = torch.isfinite(t).all(1) & (t >= 0).all(1) & ((t.sum(1) - 1).abs() <= SOFT_TARGET_TOLERANCE)
    check_values(
        ok,
        f"{name} of shape (B, K) must be soft targets: finite, non-negative rows that sum to 1 (within {SOFT_TARGET_TOLERANCE})",
        lambda: f"row {int((~ok).nonzero()[0])} is {t[int((~ok).nonzero()[0])].tolist()}",
    )


def to_soft_targets(labels: Tensor, num_classes: int | None = None, batch_size: int | None = None, name: str = "labels") -> Tensor:
    """Return float32 (B, K) targets from (B,) class ids or (B, K) soft targets.

    Class ids must lie in [0, num_classes); soft targets must be (B, num_classes) when
    ``num_classes`` is given. ``batch_size``, when given, must match B.
    """
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if num_classes is not None and (int(num_classes) != num_classes or num_classes < 1):
        raise ValueError(f"num_classes must be a positive integer, got {num_classes}")
    if labels.ndim == 1:
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
            raise TypeError(f"{name} of shape (B,) must hold integer class ids, got dtype {labels.dtype}")
        if num_classes is None:
            raise ValueError(f"num_classes is needed to turn integer {name} into soft targets")
        # One comparison against a cached arange is both the one-hot and the range check (a
        # row with no match is a label outside [0, K)); F.one_hot reads min and max on the host.
        classes = cached(("classes", num_classes, labels.device), lambda: torch.arange(num_classes, device=labels.device))
        hot = labels[:, None] == classes
        check_values(
            hot.any(1),
            f"{name} must lie in [0, {num_classes}) (num_classes={num_classes})",
            lambda: f"found {labels[(labels < 0) | (labels >= num_classes)][0].item()}",
        )
        out = hot.float()
    elif labels.ndim == 2:
        if not labels.dtype.is_floating_point:
            raise TypeError(f"{name} of shape (B, K) must be floating point soft targets, got dtype {labels.dtype}")
        if num_classes is not None and labels.shape[1] != num_classes:
            raise ValueError(f"{name} of shape (B, K) must have K = num_classes = {num_classes}, got K = {labels.shape[1]}")
        check_soft_targets(labels, name)
        out = labels.float()
    else:
        raise ValueError(f"{name} must have shape (B,) or (B, K), got shape {tuple(labels.shape)}")
    if batch_size is not None and out.shape[0] != batch_size:
        raise ValueError(f"{name} has {out.shape[0]} rows but the image batch has {batch_size}")
    return out


def mix_targets(y: Tensor, y_other: Tensor, lam: Tensor) -> Tensor:
    """``lam * y + (1 - lam) * y_other`` with a per-image ``lam`` of shape (B,)."""
    lam = lam.to(device=y.device, dtype=y.dtype).reshape(-1, 1)
    return lam * y + (1.0 - lam) * y_other


def soft_target_cross_entropy(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0, reduction: str = "mean") -> Tensor:
    """Cross-entropy of ``logits`` (B, K) against class ids (B,) or soft targets (B, K).

    Label smoothing mixes the targets with the uniform distribution:
    ``t' = (1 - eps) t + eps / K``, the same definition as ``F.cross_entropy``.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (B, K), got {tuple(logits.shape)}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing}")
    k = logits.shape[1]
    t = to_soft_targets(targets, k, logits.shape[0], name="targets").to(logits.device)
    if label_smoothing > 0:
        t = t * (1.0 - label_smoothing) + label_smoothing / k
    loss = -(t * F.log_softmax(logits.float(), dim=1)).sum(dim=1)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


class SoftTargetCrossEntropy(nn.Module):
    """Cross-entropy that takes class ids or the soft targets the mixing ops return."""

    def __init__(self, label_smoothing: float = 0.0, reduction: str = "mean") -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing
        self.reduction = reduction

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return soft_target_cross_entropy(logits, targets, self.label_smoothing, self.reduction)

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}, reduction={self.reduction!r}"
