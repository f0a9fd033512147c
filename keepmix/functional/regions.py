"""Region scoring: summed-area tables, scores of every candidate box position, per-image quantiles.

KeepAugment scores a region R of a saliency map S by ``I(S, R) = sum of S over R``. With a
summed-area table (SAT) every box sum costs four lookups, so the scores of *all* candidate
positions of a region size come from one table and a few gathers, for the whole batch at once.

Candidate positions follow a region op's ``placement`` (see :class:`keepmix.base.RegionOp`):

* ``"center"``: every pixel (cy, cx) is a centre; the box ``centered_boxes(cy, cx, h, w)`` is
  clipped at the border, exactly as the op itself places it. All H x W candidates are valid.
* ``"inside"``: every top-left corner (top, left) that keeps the whole box inside the image.
  Their count depends on each image's own size, so a tensor of sizes gives a (B, H, W) grid
  with a validity mask; a static ``(h, w)`` for the whole batch gives the exact
  (H - h + 1, W - w + 1) grid and no mask (cheaper: no masked sort, see :func:`masked_quantile`).

Candidate ``k`` of a grid of ``Wc`` columns is row ``k // Wc``, column ``k % Wc``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from keepmix.engine import capture_safe, check_values

__all__ = [
    "summed_area_table",
    "box_sums",
    "Candidates",
    "candidate_positions",
    "candidate_scores",
    "candidate_boxes",
    "masked_quantile",
    "leading_block_quantile",
    "pick_where",
]

Placement = Literal["center", "inside"]
#: Host copies (y1, y2, x1, x2) of candidate edges shared by the whole batch.
Edges = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]


def summed_area_table(saliency: Tensor) -> Tensor:
    """Summed-area table of (B, H, W) maps: a (B, H + 1, W + 1) float64 tensor.

    ``sat[b, i, j]`` is the sum of ``saliency[b, :i, :j]`` (a zero first row and column, so
    half-open boxes need no special case at the border).

    float64 on purpose: a float32 prefix sum over 224 x 224 = 50k values keeps only ~7
    significant digits of a total that is 50k times larger than one pixel, so the difference
    of two large prefix sums (one small box) loses most of its digits and nearly tied region
    scores reorder. In float64 the error stays ~1e-12 relative to the total.
    """
    if saliency.ndim != 3:
        raise ValueError(f"saliency must have shape (B, H, W), got {tuple(saliency.shape)}")
    b, h, w = saliency.shape
    # Written in place into the padded table: the same sums in the same order as
    # ``pad(s.double().cumsum(1).cumsum(2))`` (bit for bit) without three more full-size
    # temporaries (benchmarks/results/kernel_choices.md, K9).
    sat = torch.zeros(b, h + 1, w + 1, dtype=torch.float64, device=saliency.device)
    inner = sat[:, 1:, 1:]
    inner.copy_(saliency)
    inner.cumsum_(1).cumsum_(2)
    return sat


def box_sums(sat: Tensor, boxes: Tensor) -> Tensor:
    """Sum of the map inside each box, from its summed-area table (float64).

    ``sat`` is (B, H + 1, W + 1); ``boxes`` is (B, 4) or (B, N, 4) int64 ``(y1, x1, y2, x2)``
    half-open. Returns (B,) or (B, N). An empty box sums to exactly 0. The arithmetic order
    ``(S[y2, x2] - S[y1, x2]) - (S[y2, x1] - S[y1, x1])`` is the one
    :func:`candidate_scores` uses, so a box's sum here equals its candidate score bit for bit.
    """
    if sat.ndim != 3:
        raise ValueError(f"sat must have shape (B, H + 1, W + 1), got {tuple(sat.shape)}")
    single = boxes.ndim == 2
    if single:
        boxes = boxes[:, None, :]
    if boxes.ndim != 3 or boxes.shape[-1] != 4 or boxes.shape[0] != sat.shape[0]:
        raise ValueError(f"boxes must have shape (B, 4) or (B, N, 4) with B = {sat.shape[0]}, got {tuple(boxes.shape)}")
    b, hp, wp = sat.shape
    flat = sat.reshape(b, hp * wp)
    boxes = boxes.long()
    y1, x1, y2, x2 = boxes.unbind(-1)

    def at(y: Tensor, x: Tensor) -> Tensor:
        return flat.gather(1, y * wp + x)

    out = (at(y2, x2) - at(y1, x2)) - (at(y2, x1) - at(y1, x1))
    return out[:, 0] if single else out


@dataclass(frozen=True)
class Candidates:
    """The candidate boxes of one region size per image, as separable edges.

    Candidate (i, j) of image b is the box ``(y1[b, i], x1[b, j], y2[b, i], x2[b, j])``; it is
    a real candidate when ``valid_y[b, i] & valid_x[b, j]`` (``valid_*`` is None when every
    entry is valid). Edges of invalid entries are clamped into the image so that gathers stay
    in range; they are never chosen.
    """

    y1: Tensor  # (B, Hc) int64
    y2: Tensor  # (B, Hc)
    x1: Tensor  # (B, Wc)
    x2: Tensor  # (B, Wc)
    valid_y: Tensor | None  # (B, Hc) bool
    valid_x: Tensor | None  # (B, Wc) bool
    # Host copies (y1, y2, x1, x2) of the edges when every image shares them (a static size):
    # the scores then come from strided slices of the table instead of gathers.
    edges: Edges | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(Hc, Wc): the grid of candidate positions."""
        return self.y1.shape[1], self.x1.shape[1]

    def valid(self) -> Tensor | None:
        """(B, Hc * Wc) bool mask of real candidates, or None when all are."""
        if self.valid_y is None:
            return None
        assert self.valid_x is not None  # valid_y and valid_x are None together
        return (self.valid_y[:, :, None] & self.valid_x[:, None, :]).flatten(1)


def candidate_positions(
    sizes: Tensor | tuple[int, int],
    height: int,
    width: int,
    placement: Placement = "center",
    stride: int = 1,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
) -> Candidates:
    """All candidate positions of a per-image region size under ``placement``.

    ``sizes`` is (B, 2) int64 ``(h, w)`` per image, or a static ``(h, w)`` for the whole batch
    (then ``batch_size`` and ``device`` are needed). ``stride`` > 1 keeps every
    ``stride``-th centre / corner per axis (faster on large images; exact when 1).
    A region larger than the image has no "inside" position: that is an error.
    """
    if placement not in ("center", "inside"):
        raise ValueError(f"placement must be 'center' or 'inside', got {placement!r}")
    if int(stride) != stride or stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride}")
    if isinstance(sizes, Tensor):
        if sizes.ndim != 2 or sizes.shape[1] != 2:
            raise ValueError(f"sizes must have shape (B, 2) holding (h, w), got {tuple(sizes.shape)}")
        b, dev = sizes.shape[0], sizes.device
        h, w = sizes[:, 0:1].long(), sizes[:, 1:2].long()
        static = None
    else:
        hs, ws = (int(v) for v in sizes)
        if batch_size is None:
            raise ValueError("batch_size is needed with a static (h, w) size")
        b, dev = int(batch_size), torch.device("cpu") if device is None else torch.device(device)
        h = torch.full((b, 1), hs, dtype=torch.long, device=dev)
        w = torch.full((b, 1), ws, dtype=torch.long, device=dev)
        static = (hs, ws)
    if static is not None and (static[0] < 0 or static[1] < 0):
        raise ValueError(f"region size must be non-negative, got {static}")

    if placement == "center":
        if static is not None:
            edges = _center_edges(static, height, width, stride)
            return _static_candidates(edges, b, dev)
        ys = torch.arange(0, height, stride, device=dev)[None, :]
        xs = torch.arange(0, width, stride, device=dev)[None, :]
        y1 = ys - torch.div(h, 2, rounding_mode="floor")
        x1 = xs - torch.div(w, 2, rounding_mode="floor")
        return Candidates(y1.clamp(0, height), (y1 + h).clamp(0, height), x1.clamp(0, width), (x1 + w).clamp(0, width), None, None)

    if static is not None:
        if static[0] > height or static[1] > width:
            raise ValueError(f"a region of size {static} does not fit inside a {height}x{width} image")
        ys0 = tuple(range(0, height - static[0] + 1, stride))
        xs0 = tuple(range(0, width - static[1] + 1, stride))
        inside = (ys0, tuple(y + static[0] for y in ys0), xs0, tuple(x + static[1] for x in xs0))
        return _static_candidates(inside, b, dev)
    # A region with no inside position is a caller's bug.
    too_big = (h > height) | (w > width)
    assert isinstance(sizes, Tensor)  # a static size returned above

    def which() -> str:
        i = int(too_big.nonzero()[0, 0])
        return f"region {i} of size {tuple(sizes[i].tolist())} does not fit"

    check_values(~too_big, f"a region does not fit inside a {height}x{width} image", which)
    ys = torch.arange(0, height, stride, device=dev)[None, :]
    xs = torch.arange(0, width, stride, device=dev)[None, :]
    valid_y = ys <= height - h
    valid_x = xs <= width - w
    return Candidates(ys.expand(b, -1), (ys + h).clamp(max=height), xs.expand(b, -1), (xs + w).clamp(max=width), valid_y, valid_x)


def _center_edges(size: tuple[int, int], height: int, width: int, stride: int) -> Edges:
    """Edges (y1, y2, x1, x2) of the clipped boxes of one size centred on every stride-th pixel."""

    def axis(s: int, n: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        lo = [min(max(c - s // 2, 0), n) for c in range(0, n, stride)]
        hi = [min(max(c - s // 2 + s, 0), n) for c in range(0, n, stride)]
        return tuple(lo), tuple(hi)

    (y1, y2), (x1, x2) = axis(size[0], height), axis(size[1], width)
    return y1, y2, x1, x2


def _static_candidates(edges: Edges, batch_size: int, device: torch.device) -> Candidates:
    """Candidates that every image shares: (1, n) edge tensors expanded over the batch."""

    def t(v: tuple[int, ...]) -> Tensor:
        return torch.tensor(v, dtype=torch.long, device=device)[None, :].expand(batch_size, -1)

    y1, y2, x1, x2 = edges
    return Candidates(t(y1), t(y2), t(x1), t(x2), None, None, edges)


def _runs(a: tuple[int, ...], b: tuple[int, ...]) -> list[tuple[int, int, int, int, int, int]]:
    """Split two index vectors into maximal runs where both are arithmetic with a step >= 0.

    Returns ``(j0, count, a0, a_step, b0, b_step)`` per run. Candidate edges are clamped
    ranges, so a handful of runs cover them (3 for clipped centres, 1 for inside corners).
    """
    out, n, j0 = [], len(a), 0
    while j0 < n:
        if j0 + 1 == n or a[j0 + 1] < a[j0] or b[j0 + 1] < b[j0]:
            out.append((j0, 1, a[j0], 0, b[j0], 0))
            j0 += 1
            continue
        sa, sb = a[j0 + 1] - a[j0], b[j0 + 1] - b[j0]
        j1 = j0 + 2
        while j1 < n and a[j1] - a[j1 - 1] == sa and b[j1] - b[j1 - 1] == sb:
            j1 += 1
        out.append((j0, j1 - j0, a[j0], sa, b[j0], sb))
        j0 = j1
    return out


def _take(t: Tensor, dim: int, start: int, step: int, count: int) -> Tensor:
    """``t``'s entries start, start + step, ... (count of them) along ``dim``, as a view."""
    if step == 0:
        shape = list(t.shape)
        shape[dim] = count
        return t.narrow(dim, start, 1).expand(shape)
    index = [slice(None)] * t.ndim
    index[dim] = slice(start, start + step * (count - 1) + 1, step)
    return t[tuple(index)]


def _static_scores(sat: Tensor, edges: Edges) -> Tensor:
    """Scores of candidates shared by the whole batch, from strided views of the table.

    Same arithmetic as :func:`candidate_scores`, ``(S[y2, x2] - S[y1, x2]) - (S[y2, x1] -
    S[y1, x1])``, so the values are bit for bit the same; but every operand is a slice of the
    table (runs of the clamped edge ranges), so there is no index tensor and no gather
    (benchmarks/results/kernel_choices.md, K10).
    """
    y1, y2, x1, x2 = edges
    b, _, wp = sat.shape
    band = torch.empty(b, len(y1), wp, dtype=sat.dtype, device=sat.device)
    for j0, n, a0, sa, b0, sb in _runs(y1, y2):
        torch.sub(_take(sat, 1, b0, sb, n), _take(sat, 1, a0, sa, n), out=band.narrow(1, j0, n))
    scores = torch.empty(b, len(y1), len(x1), dtype=sat.dtype, device=sat.device)
    for j0, n, a0, sa, b0, sb in _runs(x1, x2):
        torch.sub(_take(band, 2, b0, sb, n), _take(band, 2, a0, sa, n), out=scores.narrow(2, j0, n))
    return scores.flatten(1)


def candidate_scores(sat: Tensor, cand: Candidates) -> Tensor:
    """Scores (B, Hc * Wc) float64 of every candidate box: the map's sum inside it.

    Separable: first the row differences ``S[y2] - S[y1]`` for every candidate row
    (B, Hc, W + 1), then the column differences of those. Two gathers of rows and two of
    columns, O(B Hc W) work, no (B, N, 4) box tensor.
    """
    if cand.edges is not None:
        return _static_scores(sat, cand.edges)
    b, hp, wp = sat.shape
    hc, wc = cand.shape
    # Whole rows by index_select on the (B * (H + 1), W + 1) view: about twice as fast as a
    # gather with an index expanded over the W + 1 columns.
    rows = sat.reshape(b * hp, wp)
    offset = torch.arange(b, device=sat.device)[:, None] * hp
    rows2 = rows.index_select(0, (cand.y2 + offset).reshape(-1)).view(b, hc, wp)
    rows1 = rows.index_select(0, (cand.y1 + offset).reshape(-1)).view(b, hc, wp)
    # In-place differences on the fresh gathers: each new multi-MB tensor costs page faults
    # on the CPU, and skipping two of them makes this ~5x faster at 256 x 32 x 32.
    band = rows2.sub_(rows1)  # (B, Hc, W + 1): column prefix sums of each candidate row band
    right = band.gather(2, cand.x2[:, None, :].expand(b, hc, wc))
    left = band.gather(2, cand.x1[:, None, :].expand(b, hc, wc))
    return right.sub_(left).flatten(1)


def candidate_boxes(cand: Candidates, index: Tensor) -> Tensor:
    """The (B, 4) boxes of the chosen candidate ``index`` (B,) per image."""
    wc = cand.shape[1]
    iy = torch.div(index, wc, rounding_mode="floor")[:, None]
    ix = (index % wc)[:, None]
    return torch.cat([cand.y1.gather(1, iy), cand.x1.gather(1, ix), cand.y2.gather(1, iy), cand.x2.gather(1, ix)], 1)


def _numpy_selects(scores: Tensor) -> bool:
    """Whether :func:`_order_stats_np` takes these scores (the CPU fast path, a dtype numpy has)."""
    return not capture_safe(scores.device) and scores.dtype in (torch.float64, torch.float32, torch.float16)


def _order_stats_np(scores: Tensor, k: int, need_next: bool, overwrite: bool = False) -> tuple[Tensor, Tensor]:
    """The k-th and (k + 1)-th smallest entry (0-based) of every row of a CPU tensor.

    numpy's introselect (``np.partition``) with one kth, then the minimum of the part after
    it (every entry there is >= the k-th, so its minimum is the next order statistic; ties
    included); several times faster than ``torch.kthvalue`` plus its next-statistic pass
    (benchmarks/results/kernel_choices.md, K11).
    (``np.partition`` with two kth values partitions twice and is no faster than kthvalue.)
    The values are the rows' own entries, so the result equals the torch path exactly.
    ``overwrite`` partitions ``scores`` itself (a temporary of the caller's) instead of a copy.
    """
    a = scores.detach().numpy()
    if overwrite:
        a.partition(k, axis=1)
        part = a
    else:
        part = np.partition(a, k, axis=1)
    below = torch.from_numpy(part[:, k].copy())
    if not need_next:
        return below, below
    return below, torch.from_numpy(part[:, k + 1 :].min(axis=1))


def masked_quantile(scores: Tensor, valid: Tensor | None, q: float) -> Tensor:
    """Per-row q-quantile of ``scores`` (B, N) over the entries where ``valid`` (B, N) is True.

    Linear interpolation between order statistics, the same definition (and the same
    ``lerp`` arithmetic) as ``torch.quantile(row[valid_row], q)``. Rows with no valid entry
    give NaN. No sort: one selection per row (O(N) instead of O(N log N)): numpy's introselect
    on the CPU (see :func:`_order_stats_np`), ``kthvalue`` and one pass for the next order
    statistic elsewhere.
    """
    return _masked_quantile(scores, valid, q)


def _masked_quantile(scores: Tensor, valid: Tensor | None, q: float, overwrite: bool = False) -> Tensor:
    """:func:`masked_quantile`; ``overwrite``: the CPU path may reorder ``scores`` in place."""
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape (B, N), got {tuple(scores.shape)}")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must lie in [0, 1], got {q}")
    b, n = scores.shape
    if valid is None:
        rank_f = q * (n - 1)
        lo_i = int(rank_f // 1)
        hi_i = min(lo_i + 1, n - 1)
        if _numpy_selects(scores):
            below, above = _order_stats_np(scores, lo_i, hi_i > lo_i, overwrite)
        else:
            below = scores.kthvalue(lo_i + 1, dim=1).values
            above = below
            if hi_i != lo_i:
                # The next order statistic without a second selection: it equals ``below`` when
                # at least hi + 1 entries are <= below (ties), else it is the smallest entry above.
                le = scores <= below[:, None]
                nxt = torch.where(le, torch.full_like(scores, float("inf")), scores).amin(1)
                above = torch.where(le.sum(1) >= hi_i + 1, below, nxt)
        w = torch.full_like(below, rank_f - lo_i)
        return torch.lerp(below, above, w)
    if valid.shape != scores.shape:
        raise ValueError(f"valid must have the shape of scores {tuple(scores.shape)}, got {tuple(valid.shape)}")
    count = valid.sum(1, dtype=torch.long)
    rank = q * (count - 1).clamp_min(0).to(scores.dtype)
    lo = rank.floor().long()
    hi = torch.minimum(lo + 1, (count - 1).clamp_min(0))
    if capture_safe(scores.device):
        # No host read: a sort, then the two order statistics of each row (the same values
        # as the selection below, so the same quantile).
        ordered = scores.masked_fill(~valid, float("inf")).sort(dim=1).values
        below = ordered.gather(1, lo[:, None])[:, 0]
        above = ordered.gather(1, hi[:, None])[:, 0]
        out = torch.lerp(below, above, rank - lo.to(scores.dtype))
        return torch.where(count > 0, out, torch.full_like(out, float("nan")))
    # One selection instead of a sort: pad each row so that its lo-th valid value becomes the
    # K-th of the whole row for one K shared by all rows. Row b turns pad_b = K - lo_b of its
    # invalid entries into -inf (they sort first) and the rest into +inf (they sort last).
    # K = min_b (N - count_b + lo_b) keeps 0 <= pad_b <= N - count_b whenever K >= max_b lo_b,
    # which holds for linear quantiles (q (N - 1) - q (n - 1) <= N - n); one host sync.
    k_shared, lo_max = (int(v) for v in torch.stack([(n - count + lo).min(), lo.max()]).tolist())
    if k_shared >= n:  # n - count_b + lo_b >= n for every row: no row has a valid entry
        return torch.full((b,), float("nan"), dtype=scores.dtype, device=scores.device)
    if k_shared >= lo_max:
        pad = (k_shared - lo)[:, None]
        invalid_rank = (~valid).cumsum(1)  # 1, 2, ... along each row's invalid entries
        low_fill = ~valid & (invalid_rank <= pad)
        filled = scores.masked_fill(~valid, float("inf")).masked_fill_(low_fill, float("-inf"))
        if _numpy_selects(scores):
            # The filled row's next order statistic is the (lo + 1)-th valid one when that
            # exists (hi > lo); otherwise the weight on it is 0 and ``below`` stands in.
            below, nxt = _order_stats_np(filled, k_shared, k_shared + 1 < n, overwrite=True)
            above = torch.where(hi > lo, nxt, below)
        else:
            below = filled.kthvalue(k_shared + 1, dim=1).values
            # Next valid order statistic: ``below`` again if enough valid entries tie with it,
            # else the smallest valid entry above it.
            le = valid & (scores <= below[:, None])
            nxt = scores.masked_fill(le | ~valid, float("inf")).amin(1)
            above = torch.where(le.sum(1) >= hi + 1, below, nxt)
    else:  # not reached for q in [0, 1]; a sort is always correct
        ordered = scores.masked_fill(~valid, float("inf")).sort(dim=1).values
        below = ordered.gather(1, lo[:, None])[:, 0]
        above = ordered.gather(1, hi[:, None])[:, 0]
    out = torch.lerp(below, above, rank - lo.to(scores.dtype))
    return torch.where(count > 0, out, torch.full_like(out, float("nan")))


def leading_block_quantile(scores: Tensor, grid_width: int, rows: Tensor, cols: Tensor, q: float) -> Tensor:
    """:func:`masked_quantile` where each row's valid entries are a leading block of its grid.

    ``scores`` (R, Hc * Wc) on a grid of ``grid_width`` = Wc columns; row r's valid entries
    are its grid's ``[:rows[r], :cols[r]]`` (the "inside" corners of a per-image size,
    :attr:`Candidates.valid`). The result is identical to ``masked_quantile(scores, valid,
    q)``: the same order statistics and the same ``lerp``.
    """
    return _leading_block_quantile(scores, grid_width, rows, cols, q)


def _leading_block_quantile(scores: Tensor, grid_width: int, rows: Tensor, cols: Tensor, q: float, overwrite: bool = False) -> Tensor:
    """:func:`leading_block_quantile`; ``overwrite``: the selection may reorder ``scores``.

    The blocks become a validity mask and go through the masked path (one vectorised
    selection for all rows). A per-row numpy partition of only the valid block is faster on
    the CPU (kernel_choices.md, K12) but is a Python loop over the batch, which keepmix does
    not do in an op: the batch size would set the op's cost.
    """
    if scores.ndim != 2 or (scores.shape[1] % max(grid_width, 1)) != 0:
        raise ValueError(f"scores must have shape (R, Hc * {grid_width}), got {tuple(scores.shape)}")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must lie in [0, 1], got {q}")
    rows, cols = rows.long(), cols.long()
    hc = scores.shape[1] // max(grid_width, 1)
    ys = torch.arange(hc, device=scores.device)
    xs = torch.arange(grid_width, device=scores.device)
    valid = ((ys[None, :] < rows[:, None])[:, :, None] & (xs[None, :] < cols[:, None])[:, None, :]).flatten(1)
    return _masked_quantile(scores, valid, q, overwrite)


def pick_where(mask: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """One index per row of ``mask`` (B, N) among its True entries, chosen by ``u`` (B,) in [0, 1).

    Returns ``(index (B,) int64, found (B,) bool)``; a row with no True entry has
    ``found = False`` and index 0. With ``u`` uniform the index is uniform among the row's
    True entries: the r-th True entry, r = floor(u * count), located by a running count and a
    batched ``searchsorted``, with no loop and no host-device sync.
    """
    if mask.ndim != 2 or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a (B, N) bool tensor, got {tuple(mask.shape)} {mask.dtype}")
    running = mask.cumsum(1, dtype=torch.int64 if mask.shape[1] >= 2**31 else torch.int32)
    count = running[:, -1]
    r = (u.to(torch.float64) * count.to(torch.float64)).floor().long()
    r = torch.minimum(r, (count.long() - 1).clamp_min(0))  # u < 1, but guard float rounding
    # First position whose running count reaches r + 1 is the (r+1)-th True entry.
    index = torch.searchsorted(running, (r + 1).to(running.dtype)[:, None])[:, 0]
    found = count > 0
    return torch.where(found, index, torch.zeros_like(index)).clamp_max(mask.shape[1] - 1), found
