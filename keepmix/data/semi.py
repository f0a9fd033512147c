"""Semi-supervised data: a labelled / unlabelled split and a resumable unlabelled stream.

* :func:`semi_split` keeps the labels of ``n`` training images (class-balanced by default) and
  puts every other image in the unlabelled pool. The two index sets are disjoint, cover the
  training set, and depend only on the labels and the seed.
* :class:`UnlabelledStream` yields the unlabelled batches of a semi-supervised run (UDA:
  ``mu`` times the labelled batch). It holds the unlabelled *images only* (no labels at all),
  and batch ``k`` is a pure function of ``(seed, k)``: the permutation of each pass over the
  pool, the crop offsets and the flips are drawn from generators seeded by the pass and the
  batch number. Its position (the number of batches drawn) is the whole of its state, saved
  in checkpoints, so a resumed run draws exactly the batches the interrupted one would have.

Each batch has two views of the same images, each with its own crop + flip (as UDA's input
pipeline applies its flip + crop to the original and to the augmented copy independently):
the first is what the model's prediction target is computed on, the second what the
consistency augmentation ``A`` is applied to.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from keepmix.data.loader import epoch_seed
from keepmix.data.subset import class_balanced_subset
from keepmix.data.transforms import PaddingMode, crop_flip

__all__ = ["semi_split", "UnlabelledStream"]


def semi_split(labels: Tensor, n: int, seed: int = 0, *, balanced: bool = True, name: str = "semi_labels") -> tuple[Tensor, Tensor]:
    """``(labelled, unlabelled)``: two ascending int64 index tensors into ``labels``.

    ``labelled`` holds ``n`` indices (``n // K`` of each of the K classes when ``balanced``, a
    uniform random choice otherwise); ``unlabelled`` every other index. Deterministic in
    ``(labels, n, seed)``. ``name`` is the option the error messages name (ValueError): more
    labels than images (or as many: the unlabelled pool would be empty), a balanced split of a
    number that is not a multiple of K, or more per class than the smallest class holds.
    """
    if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.is_floating_point() or labels.numel() == 0:
        got = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a non-empty 1-D integer tensor, got {got}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name} must be a positive int (the number of labelled images), got {n!r}")
    total = labels.numel()
    if n >= total:
        raise ValueError(
            f"{name}={n} but the training set has only {total} images"
            + (": keeping every label leaves no unlabelled images" if n == total else "")
        )
    labels = labels.detach().cpu().to(torch.int64)
    if balanced:
        k = int(torch.unique(labels).numel())
        if n % k != 0:
            raise ValueError(
                f"{name}={n} is not divisible by the {k} classes: a class-balanced split needs a multiple of {k} "
                f"(e.g. {max(k, n - n % k)} or {n - n % k + k}), or turn balance off (semi_balanced=false)"
            )
        try:
            labelled = class_balanced_subset(labels, n, seed)
        except ValueError as e:
            raise ValueError(f"{name}={n}: {e}") from None
    else:
        g = torch.Generator().manual_seed(int(seed))
        labelled = torch.sort(torch.randperm(total, generator=g)[:n]).values
    keep = torch.ones(total, dtype=torch.bool)
    keep[labelled] = False
    unlabelled = torch.nonzero(keep).flatten()
    return labelled, unlabelled


class UnlabelledStream:
    """Batches of ``batch_size`` unlabelled images, two independently cropped + flipped views each.

    ``images``: uint8 (N, C, H, W), moved to ``device`` once. Pass ``e`` over the pool is a
    permutation seeded by ``(seed, e)``; a pass has ``len(self)`` batches (the tail that does
    not fill a batch is skipped, and comes first in another pass). Under DDP each rank takes a
    disjoint strided slice of the same permutation, as :class:`keepmix.data.DeviceLoader` does.

    ``next()`` returns the batch at :attr:`position` and moves on; ``batch(k)`` returns batch
    ``k`` without moving. ``state_dict()`` / ``load_state_dict()`` save and restore the position.
    """

    def __init__(
        self,
        images: Tensor,
        batch_size: int,
        *,
        seed: int = 0,
        crop_padding: int = 4,
        flip: bool = True,
        device: torch.device | str | None = None,
        padding_mode: PaddingMode = "zeros",
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.ndim != 4 or images.shape[0] == 0:
            got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be a non-empty uint8 tensor (N, C, H, W), got {got}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if isinstance(crop_padding, bool) or not isinstance(crop_padding, int) or crop_padding < 0:
            raise ValueError(f"crop_padding must be an int >= 0, got {crop_padding!r}")
        if not isinstance(world_size, int) or world_size < 1 or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size and world_size >= 1, got rank={rank!r}, world_size={world_size!r}")
        self.device = torch.device(device) if device is not None else images.device
        self.images = images.to(self.device)
        self.batch_size = batch_size
        self.seed = int(seed)
        self.crop_padding = crop_padding
        self.flip = bool(flip)
        self.padding_mode: PaddingMode = padding_mode
        self.rank, self.world_size = rank, world_size
        n = images.shape[0]
        self.per_rank = (n - n % world_size) // world_size
        if self.per_rank < batch_size:
            raise ValueError(
                f"the unlabelled pool has {n} images ({self.per_rank} per rank), too few for one unlabelled batch "
                f"of {batch_size} (semi_mu x batch_size)"
            )
        self.position = 0
        self._order: tuple[int, Tensor] | None = None

    def __len__(self) -> int:
        """Batches per pass over the pool (per rank)."""
        return self.per_rank // self.batch_size

    def _pass_order(self, p: int) -> Tensor:
        if self._order is None or self._order[0] != p:
            g = torch.Generator().manual_seed(epoch_seed(self.seed, p))
            order = torch.randperm(self.images.shape[0], generator=g)[: self.per_rank * self.world_size]
            self._order = (p, order[self.rank :: self.world_size].to(self.device))
        return self._order[1]

    def indices(self, k: int) -> Tensor:
        """The pool indices of batch ``k`` (on this rank)."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"batch number must be an int >= 0, got {k!r}")
        p, i = divmod(k, len(self))
        return self._pass_order(p)[i * self.batch_size : (i + 1) * self.batch_size]

    def batch(self, k: int) -> tuple[Tensor, Tensor]:
        """Batch ``k``: two uint8 (B, C, H, W) views of the same images, each with its own crop + flip."""
        x = self.images[self.indices(k)]
        if self.crop_padding == 0 and not self.flip:
            return x, x.clone()
        # Its own stream per batch and rank (a different key from the pass permutations).
        g = torch.Generator().manual_seed(epoch_seed(self.seed * 1_000_003 + 7919 * (self.rank + 1), k))
        b, views = x.shape[0], []
        for _ in range(2):
            offsets = torch.randint(0, 2 * self.crop_padding + 1, (b, 2), generator=g)
            flips = torch.rand(b, generator=g) < 0.5
            if not self.flip:
                flips.zero_()
            views.append(crop_flip(x, offsets.to(self.device), flips.to(self.device), self.crop_padding, self.padding_mode))
        return views[0], views[1]

    def next(self) -> tuple[Tensor, Tensor]:
        """The batch at :attr:`position`; the position moves on by one."""
        out = self.batch(self.position)
        self.position += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"position"}:
            raise ValueError(f"UnlabelledStream state must hold exactly 'position', got keys {sorted(state)}")
        self.position = int(state["position"])
