"""Class-balanced, seeded subsets for quick runs (``--subset N``)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["class_balanced_subset"]


def class_balanced_subset(labels: Tensor, n: int, seed: int = 0) -> Tensor:
    """Indices (n,) int64, ascending, of ``n // K`` images of each of the K classes present.

    The images of each class are a uniformly random choice that depends only on ``labels``
    and ``seed``. Raises if ``n`` is not a multiple of K or a class has fewer than ``n // K``
    images (the message says which ``n`` would work).
    """
    if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.is_floating_point() or labels.numel() == 0:
        got = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a non-empty 1-D integer tensor, got {got}")
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise ValueError(f"n must be a positive int, got {n!r}")
    labels = labels.detach().cpu().to(torch.int64)
    classes, counts = torch.unique(labels, return_counts=True)
    k = classes.numel()
    smallest = int(counts.min())
    if n % k != 0 or n // k > smallest:
        raise ValueError(
            f"a class-balanced subset of {n} images is not reachable: it needs a multiple of the {k} classes "
            f"and at most {smallest} per class (the smallest class), i.e. n in {{{k}, {2 * k}, ..., {k * smallest}}}"
        )
    per = n // k
    g = torch.Generator().manual_seed(int(seed))
    shuffled = torch.randperm(labels.numel(), generator=g)
    # A stable sort by label keeps the random order within each class; take the first
    # ``per`` of every class.
    by_class = shuffled[torch.sort(labels[shuffled], stable=True).indices]
    starts = torch.cumsum(counts, 0) - counts
    rank_in_class = torch.arange(labels.numel()) - torch.repeat_interleave(starts, counts)
    return torch.sort(by_class[rank_in_class < per]).values
