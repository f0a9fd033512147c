"""Vanilla-gradient saliency maps for KeepAugment.

``S[b, i, j] = max_c |d l(x_b) / d x_b[c, i, j]|`` where ``l`` is the logit of the image's
label (or its largest logit when no labels are given). The logits come from any callable
``images -> logits``: the full model, the model at a lower resolution (``downscale``), or an
early head such as ``model.early_logits`` (the early-loss approximation is just another
function, so it needs no special code here).

The pass leaves the model exactly as it found it: parameters, their ``.grad``, BatchNorm
running statistics, every submodule's train/eval flag and every ``requires_grad`` flag.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from keepmix._checks import check_images
from keepmix.targets import check_soft_targets

__all__ = ["Saliency", "saliency_map", "uniform_saliency"]

LogitsFn = Callable[[Tensor], Tensor]
BatchNormMode = Literal["eval", "batch"]


def _owning_module(fn: object) -> nn.Module | None:
    """The module behind ``fn``: the module itself or the owner of a bound method."""
    if isinstance(fn, nn.Module):
        return fn
    owner = getattr(fn, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


@overload
def _unwrap_ddp(fn: nn.Module) -> nn.Module: ...
@overload
def _unwrap_ddp(fn: LogitsFn) -> LogitsFn: ...
def _unwrap_ddp(fn: LogitsFn) -> LogitsFn:
    """The module inside a DistributedDataParallel wrapper (``fn`` itself otherwise).

    The saliency pass needs no gradient synchronisation, and a DDP forward whose backward
    never reduces would leave DDP's reducer waiting for the next training step.
    """
    from torch.nn.parallel import DistributedDataParallel

    return fn.module if isinstance(fn, DistributedDataParallel) else fn


def _input_dtype(model: nn.Module | None, images: Tensor) -> torch.dtype:
    """The dtype the model computes in: an AMP batch (float16 / bfloat16 images) goes into a
    float32 model as float32 (under autocast the model's own casts still apply)."""
    if model is not None:
        for p in model.parameters():
            if p.is_floating_point():
                return p.dtype
    return images.dtype


@contextmanager
def _frozen(model: nn.Module | None, batchnorm: BatchNormMode) -> Iterator[None]:
    """Run the saliency pass on ``model`` and put everything back afterwards.

    * ``requires_grad`` is switched off for every parameter during the pass: autograd then
      records only what the input gradient needs (no weight-gradient kernels, no activations
      saved for them) and no ``.grad`` can be touched; the flags are restored after.
    * ``batchnorm="eval"`` runs the whole model in eval mode (running statistics, no
      dropout); ``"batch"`` keeps the current modes (batch statistics in training) and
      restores every buffer (running mean/var, num_batches_tracked) afterwards.
    """
    if model is None:
        yield
        return
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    modes = [(m, m.training) for m in model.modules()]
    saved_buffers = [(b, b.detach().clone()) for b in model.buffers()] if batchnorm == "batch" else []
    try:
        for p in params:
            p.requires_grad_(False)
        if batchnorm == "eval":
            model.eval()
        yield
    finally:
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)
        for m, t in modes:
            m.training = t
        with torch.no_grad():
            for b, saved in saved_buffers:
                b.copy_(saved)


def _label_index(labels: Tensor, num_classes: int) -> Tensor:
    """The class index per image of (B,) ids or (B, K) soft targets, checked against the K
    logits: soft targets must be K wide, ids must lie in [0, K)."""
    if labels.ndim == 2:
        if labels.shape[1] != num_classes:
            raise ValueError(
                f"labels of shape (B, K) are soft targets and must be K = {num_classes} wide (the model's logits), "
                f"got {tuple(labels.shape)}"
            )
        return labels.argmax(dim=1)
    idx = labels.long()
    lo, hi = int(idx.min()), int(idx.max())  # a host sync, only to name bad labels
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"labels must be class ids in [0, {num_classes}) (the model's {num_classes} logits), got values in [{lo}, {hi}]")
    return idx


def saliency_map(logits_fn: LogitsFn, images: Tensor, labels: Tensor | None = None) -> Tensor:
    """(B, H, W) float32 ``max_c |d logit / d x|`` of ``logits_fn`` at ``images`` (no state care).

    ``labels`` (B,) class ids pick the logit per image; (B, K) soft targets pick their
    largest class; ``None`` takes the largest logit. The per-image logits are summed before
    the backward pass: with a model whose outputs do not mix images (eval-mode BatchNorm),
    that gives each image's own gradient in one pass.
    """
    x = images.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = logits_fn(x)
        if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != x.shape[0]:
            got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(f"logits_fn must return (B, K) logits with B = {x.shape[0]}, got {got}")
        if labels is None:
            picked = logits.amax(dim=1)
        else:
            idx = _label_index(labels, logits.shape[1])
            picked = logits.gather(1, idx.to(logits.device)[:, None])[:, 0]
        grad = None
        if picked.requires_grad:
            (grad,) = torch.autograd.grad(picked.float().sum(), x, allow_unused=True)
    if grad is None:  # the logits do not depend on the input at all: a zero map
        return torch.zeros(images.shape[0], *images.shape[2:], device=images.device)
    return grad.abs().amax(dim=1).float()


def uniform_saliency(images: Tensor, labels: Tensor | None = None) -> Tensor:
    """A constant (B, H, W) float32 map of ones: KeepAugment with no image content.

    An ablation control, not a saliency: with it a region's importance is its (clipped) area,
    so the quantile rule still steers Keep* ops (selective-cut then only cuts boxes clipped by
    the border, selective-paste pastes whole boxes), and a Keep* method's gain over this control
    is what the saliency itself adds. Same signature as a :class:`Saliency`; ``labels`` unused.
    """
    check_images(images)
    return torch.ones(images.shape[0], *images.shape[-2:], device=images.device)


class Saliency:
    """Computes KeepAugment saliency maps ``(B, H, W)`` from a logits function.

    Args:
        logits_fn: any callable ``images -> (B, K) logits``: a model, ``model.early_logits``
            (the early-loss approximation), a lambda around a model, ...
        downscale: 1 for full resolution; d > 1 computes the saliency on a copy resized to
            ``round(H / d) x round(W / d)`` (bicubic, antialiased like PIL, so the small copy
            does not alias), then maps it back to H x W with bilinear interpolation. Bilinear
            because it is a convex combination of neighbours: the map stays non-negative
            (bicubic overshoots below zero near sharp peaks, which would make region sums
            meaningless) and region scores vary smoothly with position. The scale of the map
            is irrelevant: KeepAugment only compares region sums within one image.
        batchnorm: ``"eval"`` (default) runs the model in eval mode during the pass: running
            statistics, no dropout, images independent of each other, and the cheapest
            option; ``"batch"`` keeps the model's modes (batch statistics when training)
            and restores every buffer afterwards (the gradient then includes the coupling
            between images through the batch statistics).
        model: the module to protect when ``logits_fn`` is a plain function closing over one
            (found automatically for a module or a bound method of one).

    Call ``saliency(images, labels=None)``. Images must be floating point (the normalised
    input the model takes); the result is float32 on the images' device. An AMP batch
    (float16 / bfloat16 images) with a float32 model runs in the model's dtype, and a
    ``DistributedDataParallel`` model (or ``logits_fn``) is unwrapped for the pass.
    """

    def __init__(
        self,
        logits_fn: LogitsFn,
        downscale: float = 1,
        batchnorm: BatchNormMode = "eval",
        model: nn.Module | None = None,
    ) -> None:
        if not callable(logits_fn):
            raise TypeError(f"logits_fn must be callable (images -> logits), got {type(logits_fn).__name__}")
        if not (float(downscale) >= 1.0):
            raise ValueError(f"downscale must be a number >= 1, got {downscale}")
        if batchnorm not in ("eval", "batch"):
            raise ValueError(f"batchnorm must be 'eval' or 'batch', got {batchnorm!r}")
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module or None, got {type(model).__name__}")
        self.logits_fn = _unwrap_ddp(logits_fn)
        self.downscale = float(downscale)
        self.batchnorm = batchnorm
        model = model if model is not None else _owning_module(self.logits_fn)
        self.model = None if model is None else _unwrap_ddp(model)

    def __call__(self, images: Tensor, labels: Tensor | None = None) -> Tensor:
        check_images(images)
        if not images.dtype.is_floating_point:
            raise TypeError(f"images must be floating point (the normalised input the model takes) to compute saliency, got {images.dtype}")
        if labels is not None:
            if not isinstance(labels, Tensor) or labels.ndim not in (1, 2) or labels.shape[0] != images.shape[0]:
                got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
                raise ValueError(f"labels must be (B,) class ids or (B, K) soft targets with B = {images.shape[0]}, got {got}")
            if labels.ndim == 1 and (labels.dtype.is_floating_point or labels.dtype == torch.bool):
                raise TypeError(f"labels of shape (B,) must hold integer class ids, got {labels.dtype}")
            if labels.ndim == 2 and labels.shape[1] == 1 and not labels.dtype.is_floating_point:
                raise TypeError(
                    f"labels of shape {tuple(labels.shape)} hold integers: class ids must have shape (B,) "
                    "(labels.squeeze(1)); a (B, K) tensor is read as soft targets"
                )
            if labels.ndim == 2 and not labels.dtype.is_floating_point:
                raise TypeError(
                    f"labels of shape (B, K) are soft targets and must be floating point, got {labels.dtype}; give class ids as shape (B,)"
                )
            if labels.ndim == 2:  # the argmax of a row that is not a distribution picks an arbitrary class
                check_soft_targets(labels)
        h, w = images.shape[-2:]
        x = images.to(_input_dtype(self.model, images))
        if self.downscale > 1:
            size = (max(1, round(h / self.downscale)), max(1, round(w / self.downscale)))
            dtype = x.dtype
            x = F.interpolate(x.float(), size=size, mode="bicubic", align_corners=False, antialias=True).to(dtype)
        with _frozen(self.model, self.batchnorm):
            try:
                sal = saliency_map(self.logits_fn, x, labels)
            except (RuntimeError, AssertionError, ValueError) as e:
                if self.downscale == 1:
                    raise
                # A model with a fixed input size (a ViT's position embeddings) cannot take the smaller copy.
                first = str(e).splitlines()[0] if str(e) else ""
                raise ValueError(
                    f"Saliency(downscale={self.downscale:g}): the model failed on the {tuple(x.shape[-2:])} copy of the "
                    f"{(h, w)} images ({type(e).__name__}: {first}); it needs variable input sizes (timm ViTs: "
                    "dynamic_img_size=True), or use downscale=1"
                ) from e
        if sal.shape[-2:] != (h, w):
            sal = F.interpolate(sal[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        return sal

    def __repr__(self) -> str:
        if isinstance(self.logits_fn, nn.Module):
            fn = type(self.logits_fn).__name__
        else:
            fn = getattr(self.logits_fn, "__qualname__", repr(self.logits_fn))
        return f"Saliency(logits_fn={fn}, downscale={self.downscale:g}, batchnorm={self.batchnorm!r})"
