"""KeepAugment (Gong et al., CVPR 2021): augment without destroying what the model looks at.

Two wrappers, one per kind of augmentation:

* :class:`KeepCut` (selective-cut) wraps a region-level op (Cutout, Random Erasing, CutMix, or
  any :class:`keepmix.base.RegionOp`). It keeps the op's region *sizes* and only moves the
  regions: every candidate position of each image's size is scored with one summed-area
  table, ``tau`` is the per-image q-quantile of those scores, and the position is drawn
  uniformly among the candidates scoring strictly below ``tau``. That is exactly the
  distribution of the paper's "sample uniformly until I(S, R) < tau" loop, with no Python
  loop: a few dozen tries per image at once, and an exact pick among all passing candidates
  for the (rare) images where every try missed. The op's own ``apply`` then does what it
  always does.
* :class:`KeepPaste` (selective-paste) wraps any image-level transform (a callable on a
  batch): ``x_aug = transform(x)``, a region scoring strictly above ``tau`` is drawn the
  same way, and ``x' = M * x + (1 - M) * x_aug`` pastes the original region back.

**Fallback** (documented, deterministic in kind): when no candidate is strictly below
(above) ``tau`` -- constant or all-zero saliency, or ties at the quantile -- the position is
drawn uniformly among the lowest- (highest-) scoring candidates. With a constant map that
is every candidate, i.e. the unmodified op. ``KeepSelection.fallback`` reports it per image.
A NaN or infinite saliency map is an error (a diverged model), never silently handled.

**Saliency**, two ways (every Keep* class): pass a precomputed (B, H, W) map,
``op(images, labels, saliency=S)``, or construct the op with ``saliency_fn`` (a
:class:`keepmix.saliency.Saliency` or any callable ``(images, labels) -> (B, H, W)``) and call
``op(images, labels)``. An explicit ``saliency=`` wins over ``saliency_fn``.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
from torch import Tensor, nn

from keepmix._checks import check_generator, check_images, check_open_unit
from keepmix.base import Placement, RegionOp, RegionParams
from keepmix.functional.boxes import paste
from keepmix.functional.regions import (
    Candidates,
    box_sums,
    candidate_boxes,
    candidate_positions,
    _leading_block_quantile,
    _masked_quantile,
    candidate_scores,
    sample_where,
    summed_area_table,
)

__all__ = [
    "KeepSelection",
    "check_saliency",
    "select_boxes",
    "KeepCut",
    "KeepPaste",
    "KeepCutout",
    "KeepRandomErasing",
    "KeepCutMix",
    "KeepAutoAugment",
    "KeepRandAugment",
]

SaliencyFn = Callable[[Tensor, "Tensor | None"], Tensor]
Side = Literal["below", "above"]


def check_saliency(saliency: object, images: Tensor, name: str = "saliency") -> Tensor:
    """Check a (B, H, W) saliency map against ``images`` (B, C, H, W) and return it.

    It must be a floating-point tensor on the images' device with their B, H, W. Finiteness
    is checked by :func:`select_boxes` on the summed-area table's totals (B values instead of
    a pass over the whole map: any NaN or infinity reaches the total).
    """
    if not isinstance(saliency, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, H, W), got {type(saliency).__name__}")
    b, _, h, w = images.shape
    if saliency.ndim != 3 or tuple(saliency.shape) != (b, h, w):
        raise ValueError(f"{name} must have shape (B, H, W) = {(b, h, w)} to match images {tuple(images.shape)}, got {tuple(saliency.shape)}")
    if saliency.device != images.device:
        raise ValueError(f"{name} is on {saliency.device} but images are on {images.device}; move them to one device")
    if not saliency.dtype.is_floating_point:
        raise TypeError(f"{name} must be floating point, got {saliency.dtype}")
    return saliency


@dataclass(frozen=True)
class KeepSelection:
    """Where KeepAugment put each image's region, and why.

    ``boxes`` (B, 4) int64; ``tau`` (B,) float64 the per-image q-quantile of the candidate
    scores; ``fallback`` (B,) bool, True where no candidate passed the strict threshold and the
    lowest- (highest-) scoring candidates were used instead; ``sat`` the (B, H + 1, W + 1)
    float64 summed-area table the scores came from (reusable: ``box_sums(sat, boxes)``).
    """

    boxes: Tensor
    tau: Tensor
    fallback: Tensor
    sat: Tensor


# Rejection draws per image: the first of K uniform draws among an image's candidates that
# passes the threshold is exactly uniform over the passing set (the paper's "sample until
# I(S, R) < tau", K tries at once). K makes a miss (all K fail) about 1e-9 likely at the
# passing share q (below) or 1 - q (above); a miss, or a tie-heavy map where few candidates
# pass, goes to the exact (cumulative count + searchsorted) path for those rows only, so the
# distribution stays exact. Replaces five (B, N) passes (where, compare, amin, where, cumsum)
# by one (B, K) gather: 256 x 32 x 32, 1 thread, ~6 ms -> ~0.1 ms.
_MISS_PROBABILITY = 1e-9
# CPU: scores are made, sampled and partitioned a few images at a time, so the (rows, N)
# float64 temporaries stay small and the allocator recycles them instead of page-faulting
# fresh memory in on every call. Measured (1 thread, select_boxes, centres): 256 x 32 x 32
# with the whole batch at once 4.8 ms and ~1550 page faults per call, in 256 KiB chunks
# 1.8 ms and none; 64 x 224 x 224: 70-80 ms (~19k faults) at once, 25-30 ms in chunks.
# At least 4 images per chunk: at 224 px one image is already 400 KiB of scores, and
# per-chunk overhead (a dozen small ops) must not dominate.
_CHUNK_BYTES = 1 << 18
_MIN_CHUNK_ROWS = 4


def _num_draws(q: float, side: Side) -> int:
    passing = q if side == "below" else 1.0 - q
    return int(min(1024, max(8, math.ceil(math.log(_MISS_PROBABILITY) / math.log1p(-passing)))))


@dataclass(frozen=True)
class _SizeStats:
    common: tuple[int, int] | None  # the (h, w) every non-empty row shares, else None
    min_size: tuple[int, int]  # smallest h and w over the non-empty rows
    any_empty: bool
    all_empty: bool


def _size_stats(sizes: Tensor, empty: Tensor, height: int, width: int, placement: Placement) -> _SizeStats:
    """What the per-image ``sizes`` have in common (one host sync).

    Cutout (even with p < 1: its skipped rows are (0, 0)) and per-batch CutMix share one size;
    then all images share one candidate grid and the scores need no gathers. Otherwise the
    empty rows (Random Erasing's p) need no scores at all, and the smallest "inside" size
    bounds every image's grid of corners.
    """
    hs, ws = sizes[:, 0].long(), sizes[:, 1].long()
    big = torch.iinfo(torch.long).max
    stats = torch.stack([
        torch.where(empty, big, hs).min(), torch.where(empty, -1, hs).max(),
        torch.where(empty, big, ws).min(), torch.where(empty, -1, ws).max(), empty.sum(),
    ])
    h_min, h_max, w_min, w_max, n_empty = stats.tolist()
    all_empty = h_max < 0
    common = None
    if not all_empty and h_min == h_max and w_min == w_max:
        common = (h_min, w_min)
        if placement == "inside" and (h_min > height or w_min > width):
            common = None  # the general path raises its per-image "does not fit" error
    return _SizeStats(common, (h_min, w_min), n_empty > 0, all_empty)


def _candidate_rows(cand: Candidates, rows: slice | Tensor) -> Candidates:
    """The candidates of some images (a slice or an index tensor of rows)."""
    pick = (lambda t: None if t is None else t[rows])  # noqa: E731
    return Candidates(
        pick(cand.y1), pick(cand.y2), pick(cand.x1), pick(cand.x2), pick(cand.valid_y), pick(cand.valid_x), cand.edges
    )


def _draw_candidates(cand: Candidates, count: int, generator: torch.Generator | None) -> Tensor:
    """(B, count) flat grid indices drawn uniformly among each image's valid candidates.

    Valid candidates form a leading rectangle of each image's grid (corners that fit), so a
    draw is a uniform index into that rectangle, mapped to the grid's row-major index.
    """
    from keepmix.sampling import uniform

    b = cand.y1.shape[0]
    hc, wc = cand.shape
    device = cand.y1.device
    if cand.valid_y is None:
        rows_valid, cols_valid = torch.full((b, 1), hc, device=device), torch.full((b, 1), wc, device=device)
    else:
        rows_valid, cols_valid = cand.valid_y.sum(1, keepdim=True), cand.valid_x.sum(1, keepdim=True)
    n = (rows_valid * cols_valid).clamp_min(1)
    u = uniform((b, count), device=device, generator=generator, dtype=torch.float64)
    k = torch.minimum((u * n).floor().long(), n - 1)  # u < 1, but guard float rounding
    cols_valid = cols_valid.clamp_min(1)
    return torch.div(k, cols_valid, rounding_mode="floor") * wc + k % cols_valid


def _thresholds_and_draws(sat: Tensor, cand: Candidates, draws: Tensor, q: float) -> tuple[Tensor, Tensor]:
    """Per-image ``tau`` (B,) and the scores (B, K) of the drawn candidates ``draws``."""
    b = sat.shape[0]
    hc, wc = cand.shape
    step = b if sat.device.type != "cpu" else max(_MIN_CHUNK_ROWS, _CHUNK_BYTES // (8 * hc * wc))
    taus, drawn = [], []
    for r0 in range(0, b, step):
        part = _candidate_rows(cand, slice(r0, r0 + step))
        scores = candidate_scores(sat[r0 : r0 + step], part)
        drawn.append(scores.gather(1, draws[r0 : r0 + step]))
        if part.valid_y is None:
            taus.append(_masked_quantile(scores, None, q, overwrite=True))  # after the gather
        else:  # "inside" corners of per-image sizes: a leading block of each image's grid
            rows_valid, cols_valid = part.valid_y.sum(1), part.valid_x.sum(1)
            taus.append(_leading_block_quantile(scores, wc, rows_valid, cols_valid, q, overwrite=True))
    return torch.cat(taus), torch.cat(drawn)


def _exact_choice(
    sat: Tensor, cand: Candidates, tau: Tensor, below: bool, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Index (R,) uniform among all candidates passing ``tau``, or among the extreme-scoring
    ones where none passes; and whether one passed (R,). For the rows the draws missed."""
    scores = candidate_scores(sat, cand)
    valid = cand.valid()
    if valid is not None:
        # Invalid candidates get a score that can neither pass nor be the extreme.
        scores = torch.where(valid, scores, torch.full_like(scores, float("inf") if below else float("-inf")))
    passing = scores < tau[:, None] if below else scores > tau[:, None]
    found = passing.any(1)
    # Fallback: the extreme-scoring candidates (never empty: every image has a candidate).
    extreme = scores.amin(1, keepdim=True) if below else scores.amax(1, keepdim=True)
    choose = torch.where(found[:, None], passing, scores == extreme)
    index, _ = sample_where(choose, generator)
    return index, found


def select_boxes(
    saliency: Tensor,
    sizes: Tensor | tuple[int, int],
    q: float = 0.6,
    placement: Placement = "center",
    side: Side = "below",
    stride: int = 1,
    generator: torch.Generator | None = None,
) -> KeepSelection:
    """Draw one region per image among the candidates scoring below (or above) ``tau``.

    ``saliency`` (B, H, W); ``sizes`` (B, 2) per-image (h, w) or one static (h, w);
    ``side="below"`` is selective-cut (score < tau), ``"above"`` selective-paste
    (score > tau). A zero size gives an empty box (the op skips that image).
    """
    check_open_unit(q, "q")
    if side not in ("below", "above"):
        raise ValueError(f"side must be 'below' or 'above', got {side!r}")
    if saliency.ndim != 3 or not saliency.dtype.is_floating_point:
        raise ValueError(f"saliency must be a floating-point (B, H, W) tensor, got {tuple(saliency.shape)} {saliency.dtype}")
    b, h, w = saliency.shape
    stats = None
    if isinstance(sizes, Tensor):
        if sizes.ndim != 2 or sizes.shape[1] != 2:
            candidate_positions(sizes, h, w, placement, stride)  # raises its error about ``sizes``
        empty = (sizes[:, 0] <= 0) | (sizes[:, 1] <= 0)
        stats = _size_stats(sizes, empty, h, w, placement)
    else:
        empty = torch.full((b,), int(sizes[0]) <= 0 or int(sizes[1]) <= 0, device=saliency.device)
    common = None if stats is None else stats.common
    per_image = stats is not None and common is None
    cand = candidate_positions(sizes if common is None else common, h, w, placement, stride, batch_size=b, device=saliency.device)
    sat = summed_area_table(saliency)
    # float64 totals of float16/32 maps cannot overflow, so a non-finite total means a NaN or
    # an infinity somewhere in the map: one host sync per batch.
    if not bool(torch.isfinite(sat[:, -1, -1]).all()):
        raise ValueError("saliency contains NaN or infinite values (a diverged model?); KeepAugment needs a finite map")
    below = side == "below"
    draws = _draw_candidates(cand, _num_draws(q, side), generator)
    if not per_image:
        index, tau, found = _choose(sat, cand, draws, q, below, empty, generator)
        boxes = candidate_boxes(cand, index)
        if common is not None:
            # Rows the op skipped were scored with the shared size: give them back their empty
            # box (at the drawn corner) and the threshold of an all-zero score map.
            boxes = torch.where(empty[:, None], boxes[:, [0, 1, 0, 1]], boxes)
            tau = torch.where(empty, torch.zeros_like(tau), tau)
        return KeepSelection(boxes=boxes, tau=tau, fallback=~found & ~empty, sat=sat)

    # Per-image sizes. An empty row scores 0 everywhere (tau = 0, nothing passes, its first
    # draw stands), so only the other rows are scored: Random Erasing's p = 0.5 halves the
    # work. The result is the same as scoring them all, draw for draw.
    boxes = candidate_boxes(cand, draws[:, 0])
    tau = torch.zeros(b, dtype=torch.float64, device=sat.device)
    found = torch.zeros(b, dtype=torch.bool, device=sat.device)
    if stats.all_empty:
        return KeepSelection(boxes=boxes, tau=tau, fallback=found, sat=sat)
    rows = (~empty).nonzero()[:, 0] if stats.any_empty else None
    act_cand = cand if rows is None else _candidate_rows(cand, rows)
    act_draws = draws if rows is None else draws[rows]
    act_sat = sat if rows is None else sat[rows]
    if placement == "inside":
        # Every image's valid corners lie in the grid of the smallest size: score only that
        # block instead of all H x W corners (draws map to the same corners in it).
        act_cand, act_draws = _leading_grid(act_cand, act_draws, stats.min_size, h, w, stride)
    index, act_tau, act_found = _choose(act_sat, act_cand, act_draws, q, below, None, generator)
    act_boxes = candidate_boxes(act_cand, index)
    if rows is None:
        return KeepSelection(boxes=act_boxes, tau=act_tau, fallback=~act_found, sat=sat)
    boxes = boxes.index_put((rows,), act_boxes)
    tau = tau.index_put((rows,), act_tau)
    found = found.index_put((rows,), act_found)
    return KeepSelection(boxes=boxes, tau=tau, fallback=~found & ~empty, sat=sat)


def _leading_grid(
    cand: Candidates, draws: Tensor, min_size: tuple[int, int], height: int, width: int, stride: int
) -> tuple[Candidates, Tensor]:
    """"inside" candidates cut to the corners a region of ``min_size`` has, and ``draws``
    (flat indices into the full grid) re-indexed into that smaller grid."""
    hc_full, wc_full = cand.shape
    hc = len(range(0, height - min_size[0] + 1, stride))
    wc = len(range(0, width - min_size[1] + 1, stride))
    if (hc, wc) == (hc_full, wc_full):
        return cand, draws
    cut = Candidates(
        cand.y1[:, :hc], cand.y2[:, :hc], cand.x1[:, :wc], cand.x2[:, :wc], cand.valid_y[:, :hc], cand.valid_x[:, :wc]
    )
    row, col = torch.div(draws, wc_full, rounding_mode="floor"), draws % wc_full
    return cut, row * wc + col


def _choose(
    sat: Tensor, cand: Candidates, draws: Tensor, q: float, below: bool, empty: Tensor | None,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Index (B,) of the chosen candidate, ``tau`` (B,), and whether a candidate passed (B,).

    The first of the ``draws`` (B, K) that passes, else the exact choice for those rows.
    ``empty`` (B,) marks rows with an empty region, which keep their first draw (None: none).
    """
    tau, drawn = _thresholds_and_draws(sat, cand, draws, q)
    passing = drawn < tau[:, None] if below else drawn > tau[:, None]
    found = passing.any(1)
    index = draws.gather(1, passing.to(torch.uint8).argmax(1, keepdim=True))[:, 0]  # first passing draw
    # An empty region scores 0 everywhere (tau = 0, nothing passes): any position gives the
    # same empty box, so its first draw stands. Other misses: the exact path, one sync per batch.
    missed = ~found if empty is None else ~found & ~empty
    if bool(missed.any()):
        rows = missed.nonzero()[:, 0]
        index_rows, found_rows = _exact_choice(sat[rows], _candidate_rows(cand, rows), tau[rows], below, generator)
        index = index.index_put((rows,), index_rows)
        found = found.index_put((rows,), found_rows)
    return index, tau, found


def _accepts(fn: Callable, name: str) -> bool:
    """Whether ``fn`` takes a keyword argument ``name`` (False when it cannot be inspected)."""
    target = fn.forward if isinstance(fn, nn.Module) else fn
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


class _SaliencySource(nn.Module):
    """Shared by the Keep* modules: the threshold ``q`` and where the saliency comes from."""

    def __init__(self, q: float, saliency_fn: SaliencyFn | None) -> None:
        super().__init__()
        self.q = check_open_unit(q, "q")
        if saliency_fn is not None and not callable(saliency_fn):
            raise TypeError(f"saliency_fn must be callable (images, labels) -> (B, H, W) or None, got {type(saliency_fn).__name__}")
        # Stored outside nn.Module's registry on purpose: the model behind a Saliency must not
        # become a submodule of the augmentation (its parameters would show up twice).
        object.__setattr__(self, "saliency_fn", saliency_fn)

    def resolve_saliency(self, images: Tensor, labels: Tensor | None, saliency: Tensor | None) -> Tensor:
        """The checked (B, H, W) map: ``saliency`` if given, else ``saliency_fn(images, labels)``."""
        if saliency is None:
            if self.saliency_fn is None:
                raise ValueError(
                    f"{type(self).__name__} needs a saliency map: pass saliency=(B, H, W) tensor, "
                    "or construct it with saliency_fn=Saliency(model)"
                )
            saliency = self.saliency_fn(images, labels)
        return check_saliency(saliency, images)


class KeepCut(_SaliencySource):
    """Selective-cut: a region op whose regions avoid each image's salient part.

    Args:
        op: a :class:`keepmix.base.RegionOp` (its ``placement`` defines the candidates; its
            ``sample_params`` gives the sizes; its ``apply`` does the work).
        q: quantile level of the threshold, in (0, 1) (paper: 0.6).
        saliency_fn: optional ``(images, labels) -> (B, H, W)``, e.g. ``Saliency(model)``.
        candidate_stride: score every ``stride``-th position per axis (exact when 1).

    ``forward(images, labels=None, *, saliency=None, generator=None)`` returns what
    ``op.apply`` returns: images for Cutout/RandomErasing, ``(images, targets)`` for an op
    whose ``apply`` takes labels (CutMix; labels are then required). Each image's region is
    drawn independently; the op's probability ``p`` still decides which images it touches.
    """

    def __init__(
        self, op: RegionOp, q: float = 0.6, saliency_fn: SaliencyFn | None = None, candidate_stride: int = 1
    ) -> None:
        super().__init__(q, saliency_fn)
        if not isinstance(op, RegionOp):
            raise TypeError(f"op must be a keepmix.base.RegionOp (sample_params / apply / placement), got {type(op).__name__}")
        if op.placement not in ("center", "inside"):
            raise ValueError(f"op.placement must be 'center' or 'inside', got {op.placement!r}")
        if isinstance(candidate_stride, bool) or int(candidate_stride) != candidate_stride or candidate_stride < 1:
            raise ValueError(f"candidate_stride must be a positive integer, got {candidate_stride!r}")
        self.op = op
        self.candidate_stride = int(candidate_stride)
        self._op_takes_labels = "labels" in inspect.signature(op.apply).parameters

    def select(self, saliency: Tensor, sizes: Tensor, generator: torch.Generator | None = None) -> KeepSelection:
        """Boxes of the given sizes (B, 2) placed below each image's threshold."""
        return select_boxes(saliency, sizes, self.q, self.op.placement, "below", self.candidate_stride, generator)

    def sample_params(
        self, images: Tensor, saliency: Tensor, generator: torch.Generator | None = None
    ) -> tuple[RegionParams, KeepSelection]:
        """The op's params with ``boxes`` replaced by KeepAugment's, and the selection behind them."""
        check_images(images)
        check_generator(generator)
        saliency = check_saliency(saliency, images)
        params = self.op.sample_params(images, generator)
        selection = self.select(saliency, params.sizes, generator)
        return params.replace(boxes=selection.boxes), selection

    def apply(self, images: Tensor, params: RegionParams, labels: Tensor | None = None, **kwargs):
        """The wrapped op's ``apply`` (KeepAugment changes where, not what).

        ``labels`` (and any keyword, e.g. CutMix's ``patch_weight``) go to an op that mixes labels.
        """
        if self._op_takes_labels:
            if labels is None:
                raise ValueError(f"{type(self.op).__name__} mixes labels: pass labels")
            return self.op.apply(images, labels, params, **kwargs)
        return self.op.apply(images, params, **kwargs)

    def forward(
        self,
        images: Tensor,
        labels: Tensor | None = None,
        *,
        saliency: Tensor | None = None,
        generator: torch.Generator | None = None,
    ):
        check_images(images)
        if self._op_takes_labels and labels is None:
            raise ValueError(f"{type(self.op).__name__} mixes labels: pass labels to {type(self).__name__}")
        sal = self.resolve_saliency(images, labels, saliency)
        params, _ = self.sample_params(images, sal, generator)
        return self.apply(images, params, labels)

    def extra_repr(self) -> str:
        return f"q={self.q}, candidate_stride={self.candidate_stride}, saliency_fn={self.saliency_fn!r}"


def _check_size(size: int | Sequence[int]) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or any(isinstance(v, bool) or int(v) != v or v < 1 for v in pair):
        raise ValueError(f"size must be a positive integer or a pair (h, w) of them, got {size!r}")
    return int(pair[0]), int(pair[1])


class KeepPaste(_SaliencySource):
    """Selective-paste: an image-level transform that leaves each image's salient region as is.

    ``x_aug = transform(x)``; a ``size`` region with score strictly above the per-image
    q-quantile ``tau`` is drawn uniformly; ``x' = M * x + (1 - M) * x_aug``.

    Args:
        transform: any callable on a (B, C, H, W) batch returning the same shape, dtype and
            device (keepmix's policies, kornia augmentations, a lambda). If it accepts a
            ``generator`` keyword, the generator is passed on.
        size: the kept region, an int or (h, w) (paper, CIFAR-10: 16).
        q: quantile level of the threshold, in (0, 1) (paper: 0.6).
        saliency_fn: optional ``(images, labels) -> (B, H, W)``, e.g. ``Saliency(model)``.
        placement: ``"inside"`` (default): the region lies fully inside the image, so every
            image keeps exactly h x w original pixels and all images share one candidate grid
            ((H - h + 1) x (W - w + 1) corners, no masked quantile); ``"center"``: centres
            anywhere, clipped at the border, like Cutout.
        candidate_stride: score every ``stride``-th position per axis (exact when 1).

    ``forward(images, labels=None, *, saliency=None, generator=None) -> images``; labels are
    only used to compute the saliency.
    """

    def __init__(
        self,
        transform: Callable[[Tensor], Tensor],
        size: int | Sequence[int] = 16,
        q: float = 0.6,
        saliency_fn: SaliencyFn | None = None,
        placement: Placement = "inside",
        candidate_stride: int = 1,
    ) -> None:
        super().__init__(q, saliency_fn)
        if not callable(transform):
            raise TypeError(f"transform must be callable on a batch of images, got {type(transform).__name__}")
        if placement not in ("center", "inside"):
            raise ValueError(f"placement must be 'center' or 'inside', got {placement!r}")
        if isinstance(candidate_stride, bool) or int(candidate_stride) != candidate_stride or candidate_stride < 1:
            raise ValueError(f"candidate_stride must be a positive integer, got {candidate_stride!r}")
        self.transform = transform
        self.size = _check_size(size)
        self.placement: Placement = placement
        self.candidate_stride = int(candidate_stride)
        self._transform_takes_generator = _accepts(transform, "generator")

    def select(self, saliency: Tensor, generator: torch.Generator | None = None) -> KeepSelection:
        """Regions of ``size`` placed above each image's threshold."""
        h, w = saliency.shape[-2:]
        if self.size[0] > h or self.size[1] > w:
            raise ValueError(f"size {self.size} is larger than the {h}x{w} images")
        return select_boxes(saliency, self.size, self.q, self.placement, "above", self.candidate_stride, generator)

    def sample_params(
        self, images: Tensor, saliency: Tensor, generator: torch.Generator | None = None
    ) -> tuple[RegionParams, KeepSelection]:
        """The kept regions as :class:`RegionParams` (boxes, sizes) and the selection behind them."""
        check_images(images)
        check_generator(generator)
        selection = self.select(check_saliency(saliency, images), generator)
        sizes = torch.tensor(self.size, device=images.device).expand(images.shape[0], 2)
        return RegionParams(boxes=selection.boxes, sizes=sizes), selection

    def apply(self, images: Tensor, augmented: Tensor, params: RegionParams) -> Tensor:
        """``augmented`` everywhere except inside ``params.boxes``, where ``images`` is kept."""
        if not isinstance(augmented, Tensor) or augmented.shape != images.shape:
            got = tuple(augmented.shape) if isinstance(augmented, Tensor) else type(augmented).__name__
            raise ValueError(f"the transform must return a batch shaped like its input {tuple(images.shape)}, got {got}")
        if augmented.dtype != images.dtype or augmented.device != images.device:
            raise ValueError(
                f"the transform must keep dtype and device ({images.dtype}, {images.device}), "
                f"got ({augmented.dtype}, {augmented.device})"
            )
        return paste(augmented, images, params.boxes)

    def forward(
        self,
        images: Tensor,
        labels: Tensor | None = None,
        *,
        saliency: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        check_images(images)
        check_generator(generator)
        sal = self.resolve_saliency(images, labels, saliency)
        params, _ = self.sample_params(images, sal, generator)
        if self._transform_takes_generator:
            augmented = self.transform(images, generator=generator)
        else:
            augmented = self.transform(images)
        return self.apply(images, augmented, params)

    def extra_repr(self) -> str:
        return f"size={self.size}, q={self.q}, placement={self.placement!r}, candidate_stride={self.candidate_stride}"


# --------------------------------------------------------------------------------------
# Ready-made combinations
# --------------------------------------------------------------------------------------


class KeepCutout(KeepCut):
    """KeepAugment + Cutout: a ``length`` square per image, away from the salient part.

    ``forward(images, labels=None, *, saliency=None, generator=None) -> images``.
    """

    def __init__(
        self,
        length: int = 16,
        fill: float | Sequence[float] = 0.0,
        p: float = 1.0,
        q: float = 0.6,
        saliency_fn: SaliencyFn | None = None,
        candidate_stride: int = 1,
    ) -> None:
        from keepmix.regional import Cutout

        super().__init__(Cutout(length, fill, p), q, saliency_fn, candidate_stride)


class KeepRandomErasing(KeepCut):
    """KeepAugment + Random Erasing: each erased box lies inside the image and below ``tau``.

    ``forward(images, labels=None, *, saliency=None, generator=None) -> images``.
    """

    def __init__(
        self,
        p: float = 0.5,
        scale: tuple[float, float] = (0.02, 0.4),
        ratio: tuple[float, float] = (0.3, 1 / 0.3),
        value: float | Sequence[float] | str = 0.0,
        q: float = 0.6,
        saliency_fn: SaliencyFn | None = None,
        candidate_stride: int = 1,
    ) -> None:
        from keepmix.regional import RandomErasing

        super().__init__(RandomErasing(p, scale, ratio, value), q, saliency_fn, candidate_stride)


class KeepCutMix(KeepCut):
    """KeepAugment + CutMix: the partner's patch never covers the receiving image's salient part.

    The box size comes from CutMix's lam; its position is drawn below ``tau`` on the saliency
    of the image that *receives* the patch. The reported lam is still the exact unpasted
    area (``keepmix.functional.mixing.area_lambda(params.boxes, H, W)``).

    Args:
        num_classes, alpha, p, per_sample: as :class:`keepmix.mixing.CutMix` (with
            ``per_sample=False`` the batch shares one box size, positions stay per image).
        label_weight: ``"area"`` (default, CutMix's rule): the patch's label weight is its
            area share ``1 - lam``. ``"saliency"``: the partner's saliency mass inside the box
            over the partner's total saliency, so a patch of background earns little label
            weight; a partner whose map is all zero falls back to the area share.
        q, saliency_fn, candidate_stride: as :class:`KeepCut`.

    ``forward(images, labels, *, saliency=None, generator=None) -> (images, float32 targets)``.
    """

    def __init__(
        self,
        num_classes: int | None = None,
        alpha: float = 1.0,
        p: float = 1.0,
        per_sample: bool = True,
        label_weight: Literal["area", "saliency"] = "area",
        q: float = 0.6,
        saliency_fn: SaliencyFn | None = None,
        candidate_stride: int = 1,
    ) -> None:
        from keepmix.mixing import CutMix

        if label_weight not in ("area", "saliency"):
            raise ValueError(f"label_weight must be 'area' or 'saliency', got {label_weight!r}")
        super().__init__(CutMix(alpha, p, num_classes, per_sample), q, saliency_fn, candidate_stride)
        self.label_weight = label_weight

    def patch_weight(self, selection: KeepSelection, perm: Tensor, height: int, width: int) -> Tensor:
        """(B,) float32 label weight of each pasted patch under ``label_weight``."""
        boxes = selection.boxes
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        area_share = area.double() / (height * width)
        if self.label_weight == "area":
            return area_share.float()
        partner_sat = selection.sat[perm]
        inside = box_sums(partner_sat, boxes)
        total = partner_sat[:, -1, -1]
        share = inside / total.clamp_min(torch.finfo(torch.float64).tiny)
        # clamp: a user map with negative entries could leave [0, 1]; a weight must not.
        return torch.where(total > 0, share.clamp(0.0, 1.0), area_share).float()

    def forward(
        self,
        images: Tensor,
        labels: Tensor | None = None,
        *,
        saliency: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        check_images(images)
        if labels is None:
            raise ValueError("KeepCutMix needs labels (B,) class ids or (B, K) soft targets")
        sal = self.resolve_saliency(images, labels, saliency)
        params, selection = self.sample_params(images, sal, generator)
        weight = None
        if self.label_weight == "saliency":
            weight = self.patch_weight(selection, params.perm, images.shape[-2], images.shape[-1])
        return self.op.apply(images, labels, params, patch_weight=weight)

    def extra_repr(self) -> str:
        return f"label_weight={self.label_weight!r}, " + super().extra_repr()


class KeepAutoAugment(KeepPaste):
    """KeepAugment + AutoAugment: the augmented image with its salient ``size`` region restored.

    ``policy`` and ``fill`` go to :class:`keepmix.policies.AutoAugment` (images in its
    ranges: uint8, or float in [0, 1]); the rest as :class:`KeepPaste`.

    ``forward(images, labels=None, *, saliency=None, generator=None) -> images``.
    """

    def __init__(
        self,
        policy: str = "cifar10",
        size: int | Sequence[int] = 16,
        q: float = 0.6,
        saliency_fn: SaliencyFn | None = None,
        placement: Placement = "inside",
        candidate_stride: int = 1,
        fill: float | Sequence[float] = 0.0,
    ) -> None:
        from keepmix.policies import AutoAugment

        super().__init__(AutoAugment(policy, fill=fill), size, q, saliency_fn, placement, candidate_stride)


class KeepRandAugment(KeepPaste):
    """KeepAugment + RandAugment (``num_ops`` ops per image at magnitude bin ``magnitude``).

    ``num_ops``, ``magnitude`` and ``fill`` go to :class:`keepmix.policies.RandAugment`; the
    rest as :class:`KeepPaste`.

    ``forward(images, labels=None, *, saliency=None, generator=None) -> images``.
    """

    def __init__(
        self,
        num_ops: int = 2,
        magnitude: int = 9,
        size: int | Sequence[int] = 16,
        q: float = 0.6,
        saliency_fn: SaliencyFn | None = None,
        placement: Placement = "inside",
        candidate_stride: int = 1,
        fill: float | Sequence[float] = 0.0,
    ) -> None:
        from keepmix.policies import RandAugment

        super().__init__(RandAugment(num_ops, magnitude, fill=fill), size, q, saliency_fn, placement, candidate_stride)
