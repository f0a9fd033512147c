"""An on-device batched loader for datasets that fit in memory (the airbench way).

The whole uint8 dataset lives on the training device (CIFAR: 150 MB); each batch is one
gather, one crop+flip gather (:func:`crop_flip`) and one normalisation, with no worker
processes, no host-to-device copy per batch and no host sync.

Randomness: each epoch's permutation, crop offsets and flips are drawn at once on the CPU
from a generator seeded by ``(seed, epoch)``. An epoch is therefore a pure function of the
seed and its number: identical on every device and on every rank, restartable anywhere,
and a checkpoint needs only the trainer's ``(epoch, index)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from keepmix.data.transforms import PaddingMode, apply_affine, crop_flip, normalize_affine

__all__ = ["DeviceLoader", "EpochPlan", "epoch_seed"]


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed for ``(seed, epoch)``; distinct pairs give well-separated streams."""
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, np.uint64)[0] >> 1)


@dataclass(frozen=True)
class EpochPlan:
    """One rank's epoch: which images in which order, and their crop offsets and flips.

    ``order`` (M,) int64 indexes the dataset; ``offsets`` (M, 2) and ``flips`` (M,) belong to
    the same positions. All on the loader's device.
    """

    order: Tensor
    offsets: Tensor
    flips: Tensor


class DeviceLoader:
    """Batches ``(images, labels)`` of a uint8 dataset kept whole on ``device``.

    Training (``train=True``): a new seeded permutation each epoch, random crop with
    ``crop_padding`` (zero padding by default, as in the papers) and a horizontal flip with
    probability 0.5, each drawn per image; ``drop_last`` defaults to True. Evaluation: the
    dataset in order, unaugmented, every image once (``drop_last`` False).

    Batches are normalised float (``dtype``, optionally channels_last) with ``mean``/``std``
    on the [0, 1] scale (None: just divided by 255), or uint8 (``normalize=False``) for
    augmentations that work on uint8 (AutoAugment, RandAugment); normalise those afterwards
    with :func:`keepmix.data.normalize`.

    Distributed: with ``world_size > 1`` every rank takes a disjoint strided slice of the
    same epoch permutation (same seed on every rank). For training the permutation is first
    cut to a multiple of ``world_size`` so that every rank runs the same number of steps;
    evaluation keeps every image (ranks then differ by at most one image).

    Epochs: iterating runs the rest of the current epoch; iterating a finished epoch moves to
    the next one, so ``for epoch ...: for batch in loader`` works without :meth:`set_epoch`.
    Resuming needs no loader state: :meth:`batch` ``(epoch, index)`` is a pure function of the
    seed, so a loop that keeps its own position (as :mod:`keepmix.train` does) continues
    with ``loader.batch(epoch, index)``.

    The caller's tensors are never modified; ``images``/``labels`` are moved to ``device``
    once (no copy if they are already there).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        train: bool = True,
        mean: Sequence[float] | Tensor | None = None,
        std: Sequence[float] | Tensor | None = None,
        device: torch.device | str | None = None,
        crop_padding: int = 4,
        flip: bool = True,
        drop_last: bool | None = None,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        normalize: bool = True,
        padding_mode: PaddingMode = "zeros",
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.ndim != 4 or images.shape[0] == 0:
            got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be a non-empty uint8 tensor (N, C, H, W), got {got}")
        if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.shape[0] != images.shape[0] or labels.is_floating_point():
            got = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, Tensor) else type(labels).__name__
            raise ValueError(f"labels must be an integer tensor of shape ({images.shape[0]},), got {got}")
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(crop_padding, int) or crop_padding < 0:
            raise ValueError(f"crop_padding must be an int >= 0, got {crop_padding!r}")
        if padding_mode not in ("zeros", "reflect", "replicate"):
            raise ValueError(f"padding_mode must be 'zeros', 'reflect' or 'replicate', got {padding_mode!r}")
        if not isinstance(world_size, int) or world_size < 1 or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size and world_size >= 1, got rank={rank!r}, world_size={world_size!r}")
        if not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating point dtype, got {dtype}")
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither (then images are only scaled to [0, 1])")

        self.device = torch.device(device) if device is not None else images.device
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.int64)
        self.batch_size = batch_size
        self.train = bool(train)
        self.crop_padding = crop_padding if self.train else 0
        self.flip = bool(flip) and self.train
        self.padding_mode: PaddingMode = padding_mode
        self.drop_last = self.train if drop_last is None else bool(drop_last)
        self.seed = int(seed)
        self.dtype = dtype
        self.channels_last = bool(channels_last)
        self.normalize = bool(normalize)
        self.rank, self.world_size = rank, world_size
        c = images.shape[1]
        self._scale, self._shift = normalize_affine(
            mean if mean is not None else [0.0] * c, std if std is not None else [1.0] * c, c, self.device
        )
        n = images.shape[0]
        usable = n - n % world_size if (self.train and world_size > 1) else n
        self.num_samples = len(range(rank, usable, world_size))
        if self.num_samples == 0 or (self.drop_last and self.num_samples < batch_size):
            raise ValueError(f"{self.num_samples} images per rank cannot fill one batch of {batch_size} with drop_last={self.drop_last}")
        self.epoch = 0
        self.position = 0
        self._plan: tuple[int, EpochPlan] | None = None

    # ------------------------------------------------------------------ epochs and state

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its first batch (iteration then runs that epoch)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch, self.position = int(epoch), 0

    def plan(self, epoch: int) -> EpochPlan:
        """This rank's order, crop offsets and flips for ``epoch`` (deterministic in seed and epoch)."""
        if self._plan is not None and self._plan[0] == epoch:
            return self._plan[1]
        n = self.images.shape[0]
        if self.train:
            g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
            order = torch.randperm(n, generator=g)
            offsets = torch.randint(0, 2 * self.crop_padding + 1, (n, 2), generator=g)
            flips = torch.rand(n, generator=g) < 0.5
            if not self.flip:
                flips.zero_()
            if self.world_size > 1:
                usable = n - n % self.world_size
                order, offsets, flips = order[:usable], offsets[:usable], flips[:usable]
        else:
            order = torch.arange(n)
            offsets = torch.zeros(n, 2, dtype=torch.int64)
            flips = torch.zeros(n, dtype=torch.bool)
        sl = slice(self.rank, None, self.world_size)
        plan = EpochPlan(order[sl].to(self.device), offsets[sl].to(self.device), flips[sl].to(self.device))
        self._plan = (epoch, plan)
        return plan

    # ------------------------------------------------------------------ batches

    def batch(self, epoch: int, index: int) -> tuple[Tensor, Tensor]:
        """Batch ``index`` of ``epoch`` (what iteration yields there), without moving the loader."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch index {index} out of range for {len(self)} batches")
        plan = self.plan(epoch)
        sl = slice(index * self.batch_size, (index + 1) * self.batch_size)
        idx = plan.order[sl]
        x = self.images[idx]
        if self.train and (self.crop_padding > 0 or self.flip):
            x = crop_flip(x, plan.offsets[sl], plan.flips[sl], self.crop_padding, self.padding_mode)
        if self.normalize:
            x = apply_affine(x, self._scale, self._shift, self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.labels[idx]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if self.position >= len(self):  # the current epoch is done: go on to the next
            self.epoch, self.position = self.epoch + 1, 0
        epoch = self.epoch
        while self.position < len(self) and self.epoch == epoch:
            index = self.position
            self.position += 1
            yield self.batch(epoch, index)
