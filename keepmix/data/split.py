"""The in-memory dataset container every loader returns, and the error type of keepmix.data."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["Split", "DataError"]


class DataError(ValueError):
    """A data source is missing, empty, malformed or fails a check (the message names it)."""


@dataclass(frozen=True)
class Split:
    """One split of an image-classification dataset, decoded into memory.

    ``images`` is uint8 (N, 3, H, W), ``labels`` int64 (N,) indexing ``classes``. CIFAR-100
    also carries its 20 superclasses as ``coarse_labels`` / ``coarse_classes``.
    """

    images: Tensor
    labels: Tensor
    classes: list[str]
    coarse_labels: Tensor | None = None
    coarse_classes: list[str] | None = field(default=None)

    def __post_init__(self) -> None:
        x, y = self.images, self.labels
        if not isinstance(x, Tensor) or x.dtype != torch.uint8 or x.ndim != 4:
            got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
            raise DataError(f"Split.images must be a uint8 tensor (N, C, H, W), got {got}")
        if not isinstance(y, Tensor) or y.dtype != torch.int64 or y.ndim != 1 or y.shape[0] != x.shape[0]:
            got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__
            raise DataError(f"Split.labels must be an int64 tensor ({x.shape[0]},) matching images, got {got}")
        if len(self.classes) == 0:
            raise DataError("Split.classes is empty")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= len(self.classes)):
            raise DataError(f"Split.labels must lie in [0, {len(self.classes)}), got range [{int(y.min())}, {int(y.max())}]")
        if (self.coarse_labels is None) != (self.coarse_classes is None):
            raise DataError("Split.coarse_labels and Split.coarse_classes go together: give both or neither")
        if self.coarse_labels is not None and self.coarse_labels.shape != y.shape:
            raise DataError(f"Split.coarse_labels must have shape {tuple(y.shape)}, got {tuple(self.coarse_labels.shape)}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of every image."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    def subset(self, indices: Tensor) -> Split:
        """The images at ``indices`` (e.g. from :func:`class_balanced_subset`), same classes."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return Split(
            images=self.images[idx],
            labels=self.labels[idx],
            classes=list(self.classes),
            coarse_labels=None if self.coarse_labels is None else self.coarse_labels[idx],
            coarse_classes=None if self.coarse_classes is None else list(self.coarse_classes),
        )
