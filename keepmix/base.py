"""The contract shared by keepmix's random ops: parameters are data.

Every random op is ``params = op.sample_params(images, generator)`` followed by
``op.apply(images, params, ...)``; ``forward`` is the two in a row. Parameters are small
tensors (boxes (B, 4), sizes (B, 2), lambdas (B,), op ids (B, N)), so a user can inspect,
save or reuse them, and KeepAugment changes only where a region goes (``boxes``), never what
the op does to it.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

Placement = Literal["center", "inside"]


@dataclass(frozen=True)
class RegionParams:
    """Where a region-level op acts on each image.

    ``sizes`` (B, 2) int64 is the (h, w) the op asked for before any clipping, (0, 0) for an
    image the op skips; ``boxes`` (B, 4) int64 is where it acts (see
    :mod:`keepmix.functional.boxes`). Subclasses add op-specific fields (fill values, mixing
    partners, ...).
    """

    boxes: Tensor
    sizes: Tensor

    def replace(self, **changes: Tensor) -> "RegionParams":
        """A copy with some fields replaced (e.g. ``boxes`` chosen by KeepCut)."""
        return dataclasses.replace(self, **changes)


class RegionOp(nn.Module, metaclass=abc.ABCMeta):
    """Base of region-level ops (Cutout, RandomErasing, CutMix, RecursiveMix's paste).

    ``placement`` says how the op places a region of a given size, which is also the set of
    candidate positions KeepCut scores:

    * ``"center"``: the centre is uniform over all H x W pixels and the box is clipped at the
      border (Cutout, CutMix, RecursiveMix);
    * ``"inside"``: the top-left corner is uniform over the positions that keep the whole box
      inside the image (Random Erasing).
    """

    placement: Placement = "center"

    @abc.abstractmethod
    def sample_params(self, images: Tensor, generator: torch.Generator | None = None) -> RegionParams:
        """Draw this op's parameters for every image of ``images``."""

    def place(self, sizes: Tensor, height: int, width: int, generator: torch.Generator | None = None) -> Tensor:
        """Uniformly random boxes of the given sizes, following ``placement``."""
        from keepmix.functional.boxes import centered_boxes, corner_boxes
        from keepmix.sampling import randint

        b = sizes.shape[0]
        h, w = sizes[:, 0], sizes[:, 1]
        if self.placement == "center":
            cy = randint(0, height, b, device=sizes.device, generator=generator)
            cx = randint(0, width, b, device=sizes.device, generator=generator)
            return centered_boxes(cy, cx, h, w, height, width)
        # "inside" needs sizes <= (H, W): the ops guarantee it when they draw sizes, so the
        # per-call range check (a host sync on GPU) is skipped here.
        top = randint(0, (height - h + 1), b, device=sizes.device, generator=generator, check=False)
        left = randint(0, (width - w + 1), b, device=sizes.device, generator=generator, check=False)
        return corner_boxes(top, left, h, w)
