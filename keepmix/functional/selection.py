"""KeepAugment's region selection, given the random keys: no randomness here.

Every candidate position of each image's region size is scored from one summed-area table
(:mod:`keepmix.functional.regions`); ``tau`` is the per-image q-quantile of those scores, and
the region is drawn uniformly among the candidates scoring strictly below (selective-cut) or
above (selective-paste) ``tau``. That is exactly the distribution of the paper's "sample
uniformly until I(S, R) < tau" loop, with no loop: ``num_draws`` uniform tries per image at
once, and an exact pick among all passing candidates for the (rare) images where every try
missed. The uniform keys come from :func:`keepmix.sampling.selection_keys`.

**Fallback** (documented, deterministic in kind): when no candidate is strictly below (above)
``tau`` -- constant or all-zero saliency, or ties at the quantile -- the position is drawn
uniformly among the lowest- (highest-) scoring candidates. With a constant map that is every
candidate, i.e. the unmodified op. ``KeepSelection.fallback`` reports it per image. A NaN or
infinite saliency map is an error (a diverged model), never silently handled.

**Score rules**: ``"sum"`` (the paper's ``I(S, R)``, the map's sum over the clipped box) or
``"mean"`` (that sum over the clipped box's area, so a box clipped by the border does not
score low merely for being small).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from keepmix._checks import check_open_unit
from keepmix.engine import capture_safe, check_values
from keepmix.functional.constants import cached
from keepmix.functional.regions import (
    Candidates,
    _center_edges,
    _leading_block_quantile,
    _masked_quantile,
    _order_stats_np,
    candidate_boxes,
    candidate_positions,
    candidate_scores,
    pick_where,
    summed_area_table,
)

__all__ = ["KeepSelection", "Side", "Score", "num_draws", "select_boxes"]

Placement = Literal["center", "inside"]
Side = Literal["below", "above"]
Score = Literal["sum", "mean"]


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
# by one (B, K) gather (benchmarks/results/kernel_choices.md, K13).
_MISS_PROBABILITY = 1e-9
# CPU: scores are made, sampled and partitioned a few images at a time, so the (rows, N)
# float64 temporaries stay small and the allocator recycles them instead of page-faulting
# fresh memory in on every call (benchmarks/results/kernel_choices.md, K14).
# At least 4 images per chunk: at 224 px one image is already 400 KiB of scores, and
# per-chunk overhead (a dozen small ops) must not dominate.
_CHUNK_BYTES = 1 << 18
_MIN_CHUNK_ROWS = 4


def num_draws(q: float, side: Side) -> int:
    """Rejection tries per image for threshold level ``q`` on ``side`` (the keys' width - 1)."""
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
    stats = torch.stack(
        [
            torch.where(empty, big, hs).min(),
            torch.where(empty, -1, hs).max(),
            torch.where(empty, big, ws).min(),
            torch.where(empty, -1, ws).max(),
            empty.sum(),
        ]
    )
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

    def pick(t: Tensor | None) -> Tensor | None:
        return None if t is None else t[rows]

    return Candidates(cand.y1[rows], cand.y2[rows], cand.x1[rows], cand.x2[rows], pick(cand.valid_y), pick(cand.valid_x), cand.edges)


def _draw_candidates(cand: Candidates, u: Tensor) -> Tensor:
    """(B, K) flat grid indices, uniform among each image's valid candidates, from uniform
    keys ``u`` (B, K) float64 in [0, 1).

    Valid candidates form a leading rectangle of each image's grid (corners that fit), so a
    draw is a uniform index into that rectangle, mapped to the grid's row-major index.
    """
    b = cand.y1.shape[0]
    hc, wc = cand.shape
    device = cand.y1.device
    if cand.valid_y is None:
        rows_valid, cols_valid = torch.full((b, 1), hc, device=device), torch.full((b, 1), wc, device=device)
    else:
        assert cand.valid_x is not None  # valid_y and valid_x are None together
        rows_valid, cols_valid = cand.valid_y.sum(1, keepdim=True), cand.valid_x.sum(1, keepdim=True)
    n = (rows_valid * cols_valid).clamp_min(1)
    k = torch.minimum((u * n).floor().long(), n - 1)  # u < 1, but guard float rounding
    cols_valid = cols_valid.clamp_min(1)
    return torch.div(k, cols_valid, rounding_mode="floor") * wc + k % cols_valid


def _scores(sat: Tensor, cand: Candidates, mean: bool) -> Tensor:
    """(B, Hc * Wc) float64 scores: box sums, or box sums over the (clipped) box areas."""
    scores = candidate_scores(sat, cand)
    if not mean:
        return scores
    area = ((cand.y2 - cand.y1)[:, :, None] * (cand.x2 - cand.x1)[:, None, :]).flatten(1)
    return scores.div_(area.clamp_min(1).to(scores.dtype))


def _thresholds_and_draws(sat: Tensor, cand: Candidates, draws: Tensor, q: float, mean: bool) -> tuple[Tensor, Tensor]:
    """Per-image ``tau`` (B,) and the scores (B, K) of the drawn candidates ``draws``."""
    b = sat.shape[0]
    hc, wc = cand.shape
    step = b if capture_safe(sat.device) else max(_MIN_CHUNK_ROWS, _CHUNK_BYTES // (8 * hc * wc))
    taus, drawn = [], []
    for r0 in range(0, b, step):
        part = _candidate_rows(cand, slice(r0, r0 + step))
        scores = _scores(sat[r0 : r0 + step], part, mean)
        drawn.append(scores.gather(1, draws[r0 : r0 + step]))
        if part.valid_y is None:
            taus.append(_masked_quantile(scores, None, q, overwrite=True))  # after the gather
        else:  # "inside" corners of per-image sizes: a leading block of each image's grid
            assert part.valid_x is not None  # valid_y and valid_x are None together
            rows_valid, cols_valid = part.valid_y.sum(1), part.valid_x.sum(1)
            taus.append(_leading_block_quantile(scores, wc, rows_valid, cols_valid, q, overwrite=True))
    return torch.cat(taus), torch.cat(drawn)


def _exact_choice(sat: Tensor, cand: Candidates, tau: Tensor, below: bool, u: Tensor, mean: bool) -> tuple[Tensor, Tensor]:
    """Index (R,) uniform among all candidates passing ``tau``, or among the extreme-scoring
    ones where none passes; and whether one passed (R,). For the rows the draws missed."""
    scores = _scores(sat, cand, mean)
    valid = cand.valid()
    if valid is not None:
        # Invalid candidates get a score that can neither pass nor be the extreme.
        scores = torch.where(valid, scores, torch.full_like(scores, float("inf") if below else float("-inf")))
    passing = scores < tau[:, None] if below else scores > tau[:, None]
    found = passing.any(1)
    # Fallback: the extreme-scoring candidates (never empty: every image has a candidate).
    extreme = scores.amin(1, keepdim=True) if below else scores.amax(1, keepdim=True)
    choose = torch.where(found[:, None], passing, scores == extreme)
    index, _ = pick_where(choose, u)
    return index, found


def _static_tables(
    size: tuple[int, int], height: int, width: int, placement: Placement, stride: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Index tensors of the candidate edges of one region size shared by the batch, the (N, 4)
    table of their boxes and the (1, N) clipped areas, cached per (size, image, placement, stride)."""

    def build() -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if placement == "center":
            y1, y2, x1, x2 = _center_edges(size, height, width, stride)
        else:
            y1 = tuple(range(0, height - size[0] + 1, stride))
            x1 = tuple(range(0, width - size[1] + 1, stride))
            y2, x2 = tuple(v + size[0] for v in y1), tuple(v + size[1] for v in x1)
        ty1, ty2, tx1, tx2 = (torch.tensor(v, dtype=torch.long, device=device) for v in (y1, y2, x1, x2))
        hc, wc = len(y1), len(x1)
        table = torch.stack(
            [ty1[:, None].expand(hc, wc), tx1[None, :].expand(hc, wc), ty2[:, None].expand(hc, wc), tx2[None, :].expand(hc, wc)], -1
        ).reshape(hc * wc, 4)
        area = ((ty2 - ty1)[:, None] * (tx2 - tx1)[None, :]).reshape(1, hc * wc).clamp_min(1).double()
        return torch.cat([ty2, ty1]), torch.cat([tx2, tx1]), table, area

    return cached(("static_candidates", size, height, width, placement, stride, device), build)


def _select_static(
    saliency: Tensor, size: tuple[int, int], q: float, placement: Placement, below: bool, stride: int, keys: Tensor, mean: bool
) -> KeepSelection:
    """:func:`select_boxes` for one region size shared by the batch, in a fixed handful of
    kernels on both paths (the same values: the fast path only skips the exact pick when no
    image needs it, and selects the quantile's order statistics with numpy).

    Scores come from two row and two column gathers of the summed-area table with cached
    indices; ``tau`` from the two order statistics around rank ``q (N - 1)``; the first of the
    K keyed tries that passes, else the exact pick: the ``r``-th passing (or extreme)
    candidate, ``r = floor(u * count)``, found as the number of positions whose running count
    is at most ``u * count``.
    """
    b, h, w = saliency.shape
    dev = saliency.device
    capture = capture_safe(dev)
    rows, cols, table, area = _static_tables(size, h, w, placement, stride, dev)
    hc, wc = rows.shape[0] // 2, cols.shape[0] // 2
    n = hc * wc
    # The table of summed_area_table (the same sums in the same order) in fewer kernels.
    sat = torch.nn.functional.pad(saliency.to(torch.float64).cumsum(1).cumsum_(2), (1, 0, 1, 0))
    # A NaN or an infinity anywhere makes the table's sum non-finite (finite float64 sums of
    # float32 maps cannot overflow).
    check_values(torch.isfinite(sat.sum()), "saliency contains NaN or infinite values (a diverged model?); KeepAugment needs a finite map")
    band = sat.index_select(1, rows)
    band = band[:, :hc].sub_(band[:, hc:])  # (B, Hc, W + 1): S[y2] - S[y1]
    edge = band.index_select(2, cols)
    scores = edge[:, :, :wc].sub(edge[:, :, wc:]).view(b, n)
    if mean:
        scores = scores.div_(area)
    rank = q * (n - 1)
    lo = int(rank // 1)
    if capture:
        below_v = scores.kthvalue(lo + 1, 1, keepdim=True).values
        above_v = scores.kthvalue(lo + 2, 1, keepdim=True).values if lo + 1 < n else below_v
    else:
        below_v, above_v = _order_stats_np(scores, lo, lo + 1 < n)
        below_v, above_v = below_v.view(b, 1), above_v.view(b, 1)
    tau = torch.lerp(below_v, above_v, rank - lo)
    k = keys.shape[1] - 1
    tries, exact_u = keys[:, :k], keys[:, k:]
    draws = tries.mul(n).long()  # uniform over the N candidates (u < 1)
    drawn = scores.gather(1, draws)
    passing = drawn < tau if below else drawn > tau
    # uint8, not bool: inductor's C++ codegen has no masked max-reduction of a bool from a float compare.
    found, first = passing.to(torch.uint8).max(1, keepdim=True)
    found = found.bool()
    index = draws.gather(1, first)
    if capture or not bool(found.all()):
        ok = scores < tau if below else scores > tau
        any_ok = ok.any(1, keepdim=True)
        extreme = scores == (scores.amin(1, keepdim=True) if below else scores.amax(1, keepdim=True))
        choose = torch.where(any_ok, ok, extreme)
        exact = (choose.cumsum(1) <= exact_u * choose.sum(1, keepdim=True)).sum(1, keepdim=True)
        index = torch.where(found, index, exact)
        fallback = ~(found | any_ok)
    else:
        fallback = ~found
    return KeepSelection(boxes=table[index.view(b)], tau=tau.view(b), fallback=fallback.view(b), sat=sat)


def select_boxes(
    saliency: Tensor,
    sizes: Tensor | tuple[int, int],
    q: float = 0.6,
    placement: Placement = "center",
    side: Side = "below",
    stride: int = 1,
    *,
    keys: Tensor,
    score: Score = "sum",
) -> KeepSelection:
    """One region per image among the candidates scoring below (or above) ``tau``.

    ``saliency`` (B, H, W); ``sizes`` (B, 2) per-image (h, w) or one static (h, w);
    ``side="below"`` is selective-cut (score < tau), ``"above"`` selective-paste
    (score > tau). A zero size gives an empty box (the op skips that image). ``keys``
    (B, num_draws(q, side) + 1) float64 uniforms in [0, 1) decide the draws (the last column
    the exact pick of rows whose tries all missed); ``score`` is ``"sum"`` or ``"mean"``.
    """
    check_open_unit(q, "q")
    if score not in ("sum", "mean"):
        raise ValueError(f"score must be 'sum' or 'mean', got {score!r}")
    if side not in ("below", "above"):
        raise ValueError(f"side must be 'below' or 'above', got {side!r}")
    if saliency.ndim != 3 or not saliency.dtype.is_floating_point:
        raise ValueError(f"saliency must be a floating-point (B, H, W) tensor, got {tuple(saliency.shape)} {saliency.dtype}")
    b, h, w = saliency.shape
    if isinstance(sizes, Tensor) and (sizes.ndim != 2 or sizes.shape != (b, 2)):
        raise ValueError(f"sizes must have shape (B, 2) = {(b, 2)} holding (h, w) per image (B from saliency), got {tuple(sizes.shape)}")
    if not isinstance(sizes, Tensor) and min(int(sizes[0]), int(sizes[1])) > 0:
        static = (int(sizes[0]), int(sizes[1]))
        if placement == "inside" and (static[0] > h or static[1] > w):
            raise ValueError(f"a region of size {static} does not fit inside a {h}x{w} image")
        k = num_draws(q, side)
        if keys.shape != (b, k + 1):
            raise ValueError(f"keys must have shape (B, num_draws + 1) = {(b, k + 1)}, got {tuple(keys.shape)}")
        return _select_static(saliency, static, q, placement, side == "below", stride, keys, score == "mean")
    # The capture-safe path reads nothing back: per-image sizes are scored as such (the CPU
    # path first reads whether they share one size, and skips the rows the op left empty).
    capture = capture_safe(saliency.device)
    stats = None
    if isinstance(sizes, Tensor):
        if sizes.ndim != 2 or sizes.shape[1] != 2:
            candidate_positions(sizes, h, w, placement, stride)  # raises its error about ``sizes``
        empty = (sizes[:, 0] <= 0) | (sizes[:, 1] <= 0)
        stats = None if capture else _size_stats(sizes, empty, h, w, placement)
    else:
        empty = torch.full((b,), int(sizes[0]) <= 0 or int(sizes[1]) <= 0, device=saliency.device)
    common = None if stats is None else stats.common
    per_image = isinstance(sizes, Tensor) and common is None
    cand = candidate_positions(sizes if common is None else common, h, w, placement, stride, batch_size=b, device=saliency.device)
    sat = summed_area_table(saliency)
    # float64 totals of float16/32 maps cannot overflow, so a non-finite total means a NaN or
    # an infinity somewhere in the map: one check of B values.
    check_values(
        torch.isfinite(sat[:, -1, -1]), "saliency contains NaN or infinite values (a diverged model?); KeepAugment needs a finite map"
    )
    below, mean = side == "below", score == "mean"
    k = num_draws(q, side)
    if keys.shape != (b, k + 1):
        raise ValueError(f"keys must have shape (B, num_draws + 1) = {(b, k + 1)}, got {tuple(keys.shape)}")
    draws, exact_keys = _draw_candidates(cand, keys[:, :k]), keys[:, k]
    if not per_image:
        index, tau, found = _choose(sat, cand, draws, q, below, empty, exact_keys, mean)
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
    if stats is None:  # capture-safe: every row scored, empty ones give empty boxes anyway
        index, tau, found = _choose(sat, cand, draws, q, below, empty, exact_keys, mean)
        tau = torch.where(empty, torch.zeros_like(tau), tau)
        return KeepSelection(boxes=candidate_boxes(cand, index), tau=tau, fallback=~found & ~empty, sat=sat)
    boxes = candidate_boxes(cand, draws[:, 0])
    tau = torch.zeros(b, dtype=torch.float64, device=sat.device)
    found = torch.zeros(b, dtype=torch.bool, device=sat.device)
    if stats.all_empty:
        return KeepSelection(boxes=boxes, tau=tau, fallback=found, sat=sat)
    rows = (~empty).nonzero()[:, 0] if stats.any_empty else None
    act_cand = cand if rows is None else _candidate_rows(cand, rows)
    act_draws = draws if rows is None else draws[rows]
    act_sat = sat if rows is None else sat[rows]
    act_keys = exact_keys if rows is None else exact_keys[rows]
    if placement == "inside":
        # Every image's valid corners lie in the grid of the smallest size: score only that
        # block instead of all H x W corners (draws map to the same corners in it).
        act_cand, act_draws = _leading_grid(act_cand, act_draws, stats.min_size, h, w, stride)
    index, act_tau, act_found = _choose(act_sat, act_cand, act_draws, q, below, None, act_keys, mean)
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
    """ "inside" candidates cut to the corners a region of ``min_size`` has, and ``draws``
    (flat indices into the full grid) re-indexed into that smaller grid."""
    hc_full, wc_full = cand.shape
    hc = len(range(0, height - min_size[0] + 1, stride))
    wc = len(range(0, width - min_size[1] + 1, stride))
    if (hc, wc) == (hc_full, wc_full):
        return cand, draws
    # Per-image "inside" candidates always carry their validity masks.
    assert cand.valid_y is not None and cand.valid_x is not None
    cut = Candidates(cand.y1[:, :hc], cand.y2[:, :hc], cand.x1[:, :wc], cand.x2[:, :wc], cand.valid_y[:, :hc], cand.valid_x[:, :wc])
    row, col = torch.div(draws, wc_full, rounding_mode="floor"), draws % wc_full
    return cut, row * wc + col


def _choose(
    sat: Tensor,
    cand: Candidates,
    draws: Tensor,
    q: float,
    below: bool,
    empty: Tensor | None,
    exact_keys: Tensor,
    mean: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Index (B,) of the chosen candidate, ``tau`` (B,), and whether a candidate passed (B,).

    The first of the ``draws`` (B, K) that passes, else the exact choice for those rows.
    ``empty`` (B,) marks rows with an empty region, which keep their first draw (None: none).
    """
    tau, drawn = _thresholds_and_draws(sat, cand, draws, q, mean)
    passing = drawn < tau[:, None] if below else drawn > tau[:, None]
    found = passing.any(1)
    index = draws.gather(1, passing.to(torch.uint8).argmax(1, keepdim=True))[:, 0]  # first passing draw
    # An empty region scores 0 everywhere (tau = 0, nothing passes): any position gives the
    # same empty box, so its first draw stands. Other misses: the exact path, for the missed
    # rows only after one host read (CPU), or for every row, with no read (capture-safe).
    missed = ~found if empty is None else ~found & ~empty
    if capture_safe(sat.device):
        index_all, found_all = _exact_choice(sat, cand, tau, below, exact_keys, mean)
        return torch.where(missed, index_all, index), tau, torch.where(missed, found_all, found)
    if bool(missed.any()):
        rows = missed.nonzero()[:, 0]
        index_rows, found_rows = _exact_choice(sat[rows], _candidate_rows(cand, rows), tau[rows], below, exact_keys[rows], mean)
        index = index.index_put((rows,), index_rows)
        found = found.index_put((rows,), found_rows)
    return index, tau, found
