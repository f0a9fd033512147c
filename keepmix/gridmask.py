"""GridMask (Chen et al. 2020): drop a regular grid of squares from each image.

The image is tiled by square units of side ``d``; in each unit, two stripes of width
``l = ceil(d * ratio)`` (one horizontal, one vertical) form a cross and the rest of the unit
is a ``(d - l) x (d - l)`` square. ``mode=1`` (the paper's GridMask, the official ImageNet
script's default) drops the squares and keeps the stripes, so the kept share of a unit is
``1 - (1 - l / d)^2`` (the paper's keep ratio ``k = 1 - (1 - r)^2``); ``mode=0`` (the
official "revised GridMask") does the opposite. The grid is shifted by a random offset and
optionally rotated. Labels pass through unchanged.

Everything is per image and batched: every image draws its own ``d``, offsets and angle,
and all masks are computed at once from per-pixel index arithmetic (no rasterised mask per
image, no loop over the batch; drawing and masking need no host sync).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

import torch
from torch import Tensor

from keepmix._checks import check_int, check_probability
from keepmix.base import Op, Params
from keepmix.engine import capture_safe, check_values
from keepmix.functional.erasing import check_fill, fill_tensor
from keepmix.functional.select import select
from keepmix.sampling import bernoulli, randint, uniform

__all__ = ["GridMask", "GridMaskParams", "grid_masks"]


@dataclass(frozen=True)
class GridMaskParams(Params):
    """Every image's grid.

    ``applied`` (B,) bool: whether the image is masked (``p``); ``unit`` (B,) int64: the unit
    size ``d``; ``stripe`` (B,) int64: the stripe width ``l = ceil(d * ratio)``; ``offsets``
    (B, 2) int64 ``(dy, dx)`` in ``[0, d)``: rows ``dy + k d ... dy + k d + l - 1`` (any
    integer k) form the horizontal stripes, likewise columns for the vertical ones;
    ``angle`` (B,) float32: the grid's counter-clockwise rotation in degrees about the image
    centre (0: unrotated).
    """

    applied: Tensor
    unit: Tensor
    stripe: Tensor
    offsets: Tensor
    angle: Tensor


def _stripe_hits(index: Tensor, offset: Tensor, unit: Tensor, stripe: Tensor) -> Tensor:
    """Whether integer coordinates ``index`` fall in a stripe: ``(index - offset) mod d < l``.

    ``index`` (B, ...) int64; ``offset``, ``unit``, ``stripe`` broadcast against it.
    """
    return torch.remainder(index - offset, unit) < stripe


def grid_masks(params: GridMaskParams, height: int, width: int, mode: int = 1, rotated: bool | None = None) -> Tensor:
    """(B, H, W) bool: True where each image is dropped (the deterministic core of GridMask).

    A pixel ``(y, x)`` is on a horizontal stripe when ``(y - dy) mod d < l`` and on a vertical
    one when ``(x - dx) mod d < l``. ``mode=1`` drops the pixels on neither (the squares),
    ``mode=0`` the pixels on either (the cross). Images with ``applied`` False drop nothing.

    Rotation (nearest sampling of the rotated grid): the centre ``(y + 0.5, x + 0.5)`` of each
    pixel is rotated by ``-angle`` about the image centre ``(H / 2, W / 2)``; the grid pixel
    it lands in (``floor`` of the rotated coordinates) decides. An angle of 0 gives the
    unrotated grid exactly.

    ``rotated``: take the general (rotating) path (True) or the separable unrotated one
    (False, angles ignored); None (default) takes the separable one on the CPU when every
    angle is 0. Both give the same masks at angle 0.
    """
    unit = params.unit.clamp_min(1)
    stripe = params.stripe
    dy, dx = params.offsets[:, 0], params.offsets[:, 1]
    dev = unit.device
    if rotated is None:
        # Asking whether any angle is nonzero is a host read: the CPU fast path only.
        rotated = capture_safe(params.angle.device) or bool(params.angle.ne(0).any())
    if not rotated:
        rows = _stripe_hits(torch.arange(height, device=dev)[None, :], dy[:, None], unit[:, None], stripe[:, None])
        cols = _stripe_hits(torch.arange(width, device=dev)[None, :], dx[:, None], unit[:, None], stripe[:, None])
        rows, cols = rows[:, :, None], cols[:, None, :]
    else:
        # float64 so that the back-rotated coordinates land in the same grid pixel on every device.
        theta = params.angle.to(torch.float64) * (math.pi / 180.0)
        cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
        py = (torch.arange(height, device=dev, dtype=torch.float64) + 0.5 - height / 2.0)[None, :, None]
        px = (torch.arange(width, device=dev, dtype=torch.float64) + 0.5 - width / 2.0)[None, None, :]
        # The grid was rotated counter-clockwise (y down): output pixel p reads grid point R^-1 p.
        sy = torch.floor(px * sin + py * cos + height / 2.0).long()
        sx = torch.floor(px * cos - py * sin + width / 2.0).long()
        b = unit.shape[0]
        view = (b, 1, 1)
        rows = _stripe_hits(sy, dy.view(view), unit.view(view), stripe.view(view))
        cols = _stripe_hits(sx, dx.view(view), unit.view(view), stripe.view(view))
    if mode == 1:
        drop = ~rows & ~cols
    else:
        drop = rows | cols
    return drop & params.applied.view(-1, 1, 1)


def _check_d_range(d_range: Any) -> tuple[int, int]:
    if isinstance(d_range, int) and not isinstance(d_range, bool):
        d = check_int(d_range, "d_range", low=1, what="a positive int (a fixed unit size) or a pair (d_min, d_max)")
        return d, d + 1
    try:
        lo, hi = d_range
    except (TypeError, ValueError):
        raise ValueError(
            f"d_range must be a positive int or a pair (d_min, d_max) of ints with 1 <= d_min < d_max, got {d_range!r}"
        ) from None
    for v in (lo, hi):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"d_range must hold ints (pixels), got {d_range!r}")
    if not 1 <= lo < hi:
        raise ValueError(
            f"d_range must satisfy 1 <= d_min < d_max (d is drawn from d_min ... d_max - 1, as the official "
            f"np.random.randint(d1, d2)), got {d_range!r}"
        )
    return lo, hi


def _check_rotate(rotate: Any) -> tuple[float, float]:
    if isinstance(rotate, Real) and not isinstance(rotate, bool):
        r = float(rotate)
        if not (math.isfinite(r) and 0.0 <= r <= 360.0):
            raise ValueError(f"rotate must be a number of degrees in [0, 360] (0: no rotation) or a pair (min, max), got {rotate!r}")
        return 0.0, r
    try:
        lo, hi = (float(v) for v in rotate)
    except (TypeError, ValueError):
        raise ValueError(f"rotate must be a number of degrees or a pair (min, max) of degrees, got {rotate!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi and hi - lo <= 360.0):
        raise ValueError(f"rotate must be a pair (min, max) of finite degrees with min <= max <= min + 360, got {rotate!r}")
    return lo, hi


class GridMask(Op):
    """GridMask (Chen et al. 2020, "GridMask Data Augmentation"): drop a grid of squares.

    Definition (the paper, and the official akuxcw/GridMask ``imagenet_grid/utils/grid.py``
    and ``imagenet_amp.py``): with probability ``p`` per image, draw a unit size ``d`` uniformly from the integers ``d_min ... d_max - 1``
    (the official ``np.random.randint(d1, d2)``), offsets ``dy, dx`` uniform in ``[0, d)``,
    and an angle uniform in the ``rotate`` range. The stripe width is
    ``l = ceil(d * ratio)`` (the official ``math.ceil(d * self.ratio)``, computed in float64
    as Python does). Rows ``y`` with ``(y - dy) mod d < l`` and columns with
    ``(x - dx) mod d < l`` are the stripes:

    * ``mode=1`` (GridMask; the official ImageNet script's ``--mode`` default, where the
      ``Grid`` class itself defaults to 0): the stripes are kept and the
      ``(d - l)``-sided squares between them are set to ``fill``. ``ratio`` is the paper's
      ``r`` (the kept share of a unit's side), so a unit keeps ``1 - (1 - r)^2``;
    * ``mode=0`` (the official "revised GridMask"): the squares are kept, the stripes dropped.

    The grid is infinite (the official code draws it on a square of the image's diagonal and
    crops the centre, which covers the image at any angle); ``offsets`` are given in the
    image's own coordinates (a uniform shift modulo ``d``, the same distribution as the
    official start offsets). Rotation: the official rotates the drawn mask by an integer
    ``np.random.randint(rotate)`` degrees with PIL's nearest filter; here the angle is a
    continuous uniform draw and each pixel takes the value of the grid pixel its centre falls
    in after rotating back about the image centre (nearest sampling, batched).

    **Schedule** (the paper increases the probability linearly to an upper bound ``P``; the
    official ``set_prob``): ``p`` given here is the upper bound ``P``
    and the op starts at it; call :meth:`set_epoch` ``(epoch, max_epochs)`` each epoch to set
    ``self.p = P * min(1, epoch / max_epochs)``, or :meth:`schedule` ``(progress)`` with the
    fraction of the ramp done. The official ImageNet run ramps over the first 240 of 300
    epochs (``max_epochs = 0.8 * epochs``).

    Args:
        d_range: ``(d_min, d_max)``, unit sizes ``d_min <= d < d_max`` in pixels, or an int
            for one fixed ``d``. Official ImageNet (224 px): ``(96, 224)``. Default
            ``(14, 32)``: the same range relative to the image side, for 32 px CIFAR images
            (96/224 * 32 ~ 14; the largest unit stays just under the image side).
        ratio: ``r`` in (0, 1), the stripe width over the unit size (``l = ceil(d r)``).
            Default 0.6 (the official ImageNet script's; the ``Grid`` class defaults to 0.5).
            With ``mode=1`` a unit then keeps 84%.
        rotate: degrees: a number ``R`` draws the angle uniformly in ``[0, R)`` (the official
            ``randint(R)``; ImageNet: 360), a pair ``(min, max)`` in ``[min, max)``; 0 (the
            default) is no rotation.
        mode: 1 (drop the squares, GridMask) or 0 (drop the stripes, revised GridMask).
        fill: the value of the dropped pixels: a number or one per channel (default 0: the
            official multiplies the normalised batch by the 0/1 mask, so 0 is the mean). On
            uint8 images an integer in [0, 255].
        p: the probability ``P`` that an image is masked (the schedule's upper bound).
            Default 0.8, the official ImageNet setting.

    Input (B, C, H, W) or (C, H, W), float or uint8, any device; output same dtype and device.
    """

    single_image = True
    params_type = GridMaskParams
    d_range: tuple[int, int]
    ratio: float
    rotate: tuple[float, float]
    mode: int
    fill: float | tuple[float, ...] | Tensor
    p: float
    p_max: float

    def __init__(
        self,
        d_range: int | tuple[int, int] = (14, 32),
        ratio: float = 0.6,
        rotate: float | tuple[float, float] = 0.0,
        mode: int = 1,
        fill: float | Sequence[float] = 0.0,
        p: float = 0.8,
    ) -> None:
        super().__init__()
        self.d_range = _check_d_range(d_range)
        if isinstance(ratio, bool) or not isinstance(ratio, Real) or not (0.0 < float(ratio) < 1.0):
            raise ValueError(f"ratio must be a number strictly between 0 and 1 (the stripe width over the unit size), got {ratio!r}")
        self.ratio = float(ratio)
        self.rotate = _check_rotate(rotate)
        if isinstance(mode, bool) or mode not in (0, 1):
            raise ValueError(f"mode must be 1 (drop the squares: GridMask) or 0 (drop the stripes: revised GridMask), got {mode!r}")
        self.mode = int(mode)
        if isinstance(fill, Tensor):
            raise TypeError("fill must be a number or a sequence of numbers (one per channel), not a tensor")
        self.fill = check_fill(fill)
        self.p_max = check_probability(p)
        self.p = self.p_max

    # ------------------------------------------------------------------ the schedule
    def set_epoch(self, epoch: int, max_epochs: int) -> float:
        """The paper's linear ramp: ``p = P * min(1, epoch / max_epochs)`` (the official
        ``set_prob``); returns the new ``p``. ``epoch`` counts from 0."""
        epoch = check_int(epoch, "epoch", low=0)
        max_epochs = check_int(max_epochs, "max_epochs", low=1)
        self.p = self.p_max * min(1.0, epoch / max_epochs)
        return self.p

    def schedule(self, progress: float) -> float:
        """``p = P * min(1, progress)`` for ``progress`` >= 0, the fraction of the ramp done
        (e.g. ``step / ramp_steps``, per step instead of per epoch); returns the new ``p``."""
        if isinstance(progress, bool) or not isinstance(progress, Real) or not (math.isfinite(float(progress)) and float(progress) >= 0.0):
            raise ValueError(f"progress must be a finite number >= 0 (the fraction of the ramp done), got {progress!r}")
        self.p = self.p_max * min(1.0, float(progress))
        return self.p

    def get_extra_state(self) -> dict[str, float]:
        """The scheduled ``p`` travels in ``state_dict()``, so a resumed run goes on where the ramp was."""
        return {"p": self.p}

    def set_extra_state(self, state: dict[str, float]) -> None:
        if not isinstance(state, dict) or set(state) != {"p"}:
            raise ValueError(f"GridMask state must be a dict with the key 'p', got {state!r}")
        self.p = check_probability(state["p"], "state['p']")

    # ------------------------------------------------------------------ the protocol
    def make_params(self, images, labels, saliency, generator) -> GridMaskParams:
        """Draw order: applied (``p``; nothing when p is 0 or 1), d (B,), offsets (B, 2),
        then the angle (B,) when ``rotate`` is not 0."""
        b, dev = images.shape[0], images.device
        applied = bernoulli(self.p, b, device=dev, generator=generator)
        lo, hi = self.d_range
        unit = randint(lo, hi, b, device=dev, generator=generator)
        # float64 product and ceil: Python's math.ceil(d * ratio) bit for bit.
        stripe = torch.ceil(unit.to(torch.float64) * self.ratio).long()
        offsets = randint(0, unit[:, None].expand(b, 2), (b, 2), device=dev, generator=generator, check=False)
        r0, r1 = self.rotate
        if r1 > r0:
            angle = uniform(b, r0, r1, device=dev, generator=generator)
        else:
            angle = torch.full((b,), r0, device=dev)
        return GridMaskParams(applied=applied, unit=unit, stripe=stripe, offsets=offsets, angle=angle)

    def _check_params(self, params: object, images: Tensor) -> None:
        super()._check_params(params, images)
        assert isinstance(params, GridMaskParams)
        b = images.shape[0]
        shapes = {"applied": (b,), "unit": (b,), "stripe": (b,), "offsets": (b, 2), "angle": (b,)}
        for name, shape in shapes.items():
            v = getattr(params, name)
            if not isinstance(v, Tensor) or tuple(v.shape) != shape:
                got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
                raise ValueError(f"params.{name} must be a tensor of shape {shape}, got {got}")
            if v.device != images.device:
                raise ValueError(f"params.{name} is on {v.device} but images are on {images.device}")
        check_values(params.unit >= 1, "params.unit must hold unit sizes >= 1")

    def masks(self, params: GridMaskParams, height: int, width: int) -> Tensor:
        """(B, H, W) bool: True where each image is set to ``fill`` (see :func:`grid_masks`)."""
        return grid_masks(params, height, width, self.mode)

    def apply_params(self, images, labels, params):
        """``images`` with the dropped pixels set to ``fill``; the rest bitwise unchanged."""
        drop = self.masks(params, images.shape[-2], images.shape[-1])
        return select(drop[:, None], fill_tensor(self.fill, images), images), labels

    def extra_repr(self) -> str:
        return (
            f"d_range={self.d_range}, ratio={self.ratio}, rotate={self.rotate}, mode={self.mode}, "
            f"fill={self.fill}, p={self.p}, p_max={self.p_max}"
        )
