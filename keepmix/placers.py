"""Placers: where a region op puts each image's box, given the box's size.

A region op (Cutout, Random Erasing, CutMix, RecursiveMix, ...) is "draw sizes, place boxes,
apply"; KeepAugment's selective-cut changes only the placing::

    Cutout(16)                                   # placer=UniformPlacer(): the op's own rule
    Cutout(16, placer=KeepPlacer(q=0.6))         # KeepCutout: boxes below the saliency quantile
    Cutout(16, placer=UniformPlacer(whole_boxes=True))   # Cutout restricted to unclipped boxes

Both placers take ``whole_boxes``: candidates are then only the positions that keep the
whole box inside the image (the op's ``"center"`` placement becomes ``"inside"``). With it,
a uniform placer is the exact control of a Keep placer: the same candidates and the same
area cut, and only the saliency decides where the box goes.

KeepPlacer's score rules: ``score="sum"`` (the paper's ``I(S, R)``: the saliency summed over
the clipped box), ``score="mean"`` (that sum over the clipped box's area), and
``whole_boxes=True`` (candidates restricted to whole boxes, where sum and mean agree).
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor, nn

from keepmix._checks import check_int, check_open_unit
from keepmix.base import Placement, SaliencyFn
from keepmix.functional.boxes import centered_boxes, corner_boxes
from keepmix.functional.selection import KeepSelection, Score, Side, select_boxes
from keepmix.sampling import randint, selection_keys

__all__ = ["Placer", "UniformPlacer", "KeepPlacer"]


def _check_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


class Placer(nn.Module, metaclass=abc.ABCMeta):
    """Base of the placers: ``place(sizes, height, width, placement, *, saliency, generator)``.

    An ``nn.Module`` without parameters, so it shows in the op's ``repr``.
    """

    #: Whether :meth:`place` needs a saliency map.
    needs_saliency: bool = False
    #: Computes the saliency when the caller passes none (None: the caller must pass one).
    saliency_fn: SaliencyFn | None = None

    def __init__(self, whole_boxes: bool = False) -> None:
        super().__init__()
        self.whole_boxes = _check_bool(whole_boxes, "whole_boxes")

    def candidates(self, placement: Placement) -> Placement:
        """The candidate set used for an op that places by ``placement``."""
        return "inside" if self.whole_boxes else placement

    @abc.abstractmethod
    def place(
        self,
        sizes: Tensor,
        height: int,
        width: int,
        placement: Placement,
        *,
        saliency: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """(B, 4) int64 boxes of the given (B, 2) sizes ((0, 0): an empty box)."""


class UniformPlacer(Placer):
    """The op's own rule: a uniform position among the candidates.

    ``"center"``: the centre is uniform over all H x W pixels and the box is clipped at the
    border; ``"inside"`` (or ``whole_boxes=True``): the top-left corner is uniform over the
    positions that keep the whole box inside the image. Draw order: rows (B,), then columns (B,).
    """

    def place(
        self,
        sizes: Tensor,
        height: int,
        width: int,
        placement: Placement,
        *,
        saliency: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        b, dev = sizes.shape[0], sizes.device
        h, w = sizes[:, 0], sizes[:, 1]
        if self.candidates(placement) == "center":
            cy = randint(0, height, b, device=dev, generator=generator)
            cx = randint(0, width, b, device=dev, generator=generator)
            return centered_boxes(cy, cx, h, w, height, width)
        # Sizes <= (H, W) are the op's guarantee for "inside" (a box larger than the image has
        # no whole position; the ops refuse such sizes when they draw them), so the per-call
        # range check (a host sync on a GPU) is skipped.
        top = randint(0, height - h + 1, b, device=dev, generator=generator, check=False)
        left = randint(0, width - w + 1, b, device=dev, generator=generator, check=False)
        return corner_boxes(top, left, h, w)

    def extra_repr(self) -> str:
        return f"whole_boxes={self.whole_boxes}"


class KeepPlacer(Placer):
    """KeepAugment's selective-cut: each box lies where the image's saliency is low.

    Every candidate position of each image's box size is scored from one summed-area table;
    ``tau`` is the per-image q-quantile of the scores; the position is drawn uniformly among
    the candidates scoring strictly below ``tau`` (the paper's rejection loop, without the
    loop; see :mod:`keepmix.functional.selection` for the fallback when none passes).

    Args:
        q: quantile level of the threshold, in (0, 1) (paper: 0.6).
        score: ``"sum"`` (the paper's box sum) or ``"mean"`` (box sum over box area).
        whole_boxes: candidates only where the whole box fits inside the image.
        saliency_fn: ``(images, labels) -> (B, H, W)``, e.g. :class:`keepmix.Saliency`
            (``Saliency(model)``), used when the op is called without ``saliency=``.
        candidate_stride: score every ``stride``-th position per axis (exact when 1).
    """

    needs_saliency = True

    def __init__(
        self,
        q: float = 0.6,
        score: Score = "sum",
        whole_boxes: bool = False,
        saliency_fn: SaliencyFn | None = None,
        candidate_stride: int = 1,
    ) -> None:
        super().__init__(whole_boxes)
        if isinstance(q, bool) or not isinstance(q, (int, float)):
            raise TypeError(f"q must be a number strictly between 0 and 1 (the quantile level, paper: 0.6), got {q!r}")
        self.q = check_open_unit(q, "q")
        if score not in ("sum", "mean"):
            raise ValueError(f"score must be 'sum' (the paper's box sum) or 'mean' (box sum over box area), got {score!r}")
        self.score: Score = score
        if saliency_fn is not None and not callable(saliency_fn):
            raise TypeError(f"saliency_fn must be callable (images, labels) -> (B, H, W) or None, got {type(saliency_fn).__name__}")
        # Outside nn.Module's registry on purpose: the model behind a Saliency must not become
        # a submodule of the augmentation (its parameters would show up twice).
        object.__setattr__(self, "saliency_fn", saliency_fn)
        self.candidate_stride = check_int(candidate_stride, "candidate_stride", low=1)

    def select(
        self,
        saliency: Tensor,
        sizes: Tensor | tuple[int, int],
        placement: Placement,
        side: Side = "below",
        generator: torch.Generator | None = None,
    ) -> KeepSelection:
        """The full selection (boxes, per-image ``tau``, fallback flags, the summed-area table)."""
        keys = selection_keys(saliency.shape[0], self.q, side, device=saliency.device, generator=generator)
        return select_boxes(saliency, sizes, self.q, self.candidates(placement), side, self.candidate_stride, keys=keys, score=self.score)

    def place(
        self,
        sizes: Tensor,
        height: int,
        width: int,
        placement: Placement,
        *,
        saliency: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        if saliency is None:
            raise ValueError("KeepPlacer needs a saliency map (B, H, W): pass saliency= or give it saliency_fn")
        return self.select(saliency, sizes, placement, "below", generator).boxes

    def extra_repr(self) -> str:
        return (
            f"q={self.q}, score={self.score!r}, whole_boxes={self.whole_boxes}, "
            f"candidate_stride={self.candidate_stride}, saliency_fn={self.saliency_fn!r}"
        )
