"""timm's Mixup / CutMix switch as one keepmix op, with timm's names and meaning.

``MixupCutMix`` is a drop-in for ``timm.data.Mixup`` in a timm-style loop::

    mixup_fn = keepmix.MixupCutMix(mixup_alpha=0.8, cutmix_alpha=1.0, num_classes=1000)
    for x, target in loader:
        x, target = mixup_fn(x, target)        # float32 (B, K) soft targets
        loss = keepmix.SoftTargetCrossEntropy(label_smoothing=0.1)(model(x), target)

What it draws is timm's (``timm/data/mixup.py``): per batch, per pair or per image, with
probability ``prob``, CutMix (probability ``switch_prob`` when both are enabled) or Mixup;
lam ~ Beta(alpha, alpha) of the chosen one; the partner of image i is image B - 1 - i (the
batch reversed); a CutMix box of side ``int(H sqrt(1 - lam))`` (``1 - lam`` in float64) with
timm 1.0.31's edges ``[c - s//2, c + (s + 1)//2)`` (the exact side) at a uniform centre,
clipped, or with ``cutmix_minmax`` a box of sides drawn in ``[int(H min), int(H max))`` at a
uniform corner in ``[0, H - h]`` (so it can reach the last row and column); lam corrected to
the pasted area when ``correct_lam`` (always, with ``cutmix_minmax``); targets
``lam y + (1 - lam) y[flip]``, label-smoothed by ``label_smoothing``. Setting
``mixup_enabled = False`` (timm's ``train.py`` does for its mixup-off epochs) turns mixing
off: the images come back unmixed and the targets are the (smoothed) one-hot labels, as
timm returns them.

Where keepmix differs from timm (the defaults are timm's otherwise):

* ``mode="elem"`` and ``"pair"`` are vectorised (timm loops over the batch in Python), and
  nothing is modified in place (timm's ``"batch"`` mode mixes the caller's tensor).
* ``num_classes`` defaults to None: it is needed for (B,) class ids, and (B, K) soft labels
  give K themselves (timm requires it and takes class ids only).
* ``label_smoothing`` defaults to 0; timm's ``Mixup`` defaults to 0.1 (and its ``train.py``
  passes ``--smoothing``, default 0.1), so pass ``label_smoothing=0.1`` for timm's targets.
  Smoothing in the loss instead (:class:`keepmix.SoftTargetCrossEntropy`
  ``(label_smoothing=...)``) gives the same targets, since smoothing is linear. Do one or
  the other, not both.
* timm up to 1.0.29 rounded a CutMix box down to an even side and never let a
  ``cutmix_minmax`` box touch the last row or column; keepmix follows 1.0.31.
* An odd batch is allowed in ``"batch"`` and ``"elem"`` modes (the middle image is its own
  partner and comes back unchanged); ``"pair"`` needs an even batch. timm asserts even.
* Random draws come from ``generator``, not numpy's global state.
* ``placer=KeepPlacer(...)`` places the CutMix boxes by saliency (KeepCutMix inside the
  switch); each image then has its own position, even in ``"batch"`` and ``"pair"`` modes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from keepmix._checks import check_probability, check_range_pair
from keepmix.base import Placement, RegionOp, RegionParams
from keepmix.functional.boxes import box_mask, where
from keepmix.functional.constants import cached, line
from keepmix.mixing import check_num_classes
from keepmix.placers import Placer
from keepmix.sampling import beta_columns, rand

_F64 = torch.float64

__all__ = ["MixupCutMixParams", "MixupCutMix"]

Mode = Literal["batch", "pair", "elem"]


@dataclass(frozen=True)
class MixupCutMixParams(RegionParams):
    """What the switch drew for each image.

    ``use_cutmix`` (B,) bool: CutMix (a box of the partner pasted into ``boxes``) or Mixup
    (a blend; its box is empty); ``lam`` (B,) float32: the image's own share, in its pixels
    for Mixup and in its label for both (1: the image is not mixed); ``perm`` (B,) int64:
    the partner (the batch reversed).
    """

    use_cutmix: Tensor
    lam: Tensor
    perm: Tensor


def _check_alpha(value: float, name: str) -> float:
    v = float(value)
    if not v >= 0.0 or v == float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0 (0 disables it), got {value!r}")
    return v


class MixupCutMix(RegionOp):
    """Mixup or CutMix per batch, pair or image, as timm's ``Mixup`` draws them.

    Args:
        mixup_alpha: Mixup's Beta concentration; > 0 enables Mixup.
        cutmix_alpha: CutMix's Beta concentration; > 0 enables CutMix.
        cutmix_minmax: (min, max) box side ratios; enables CutMix with boxes of random sides
            (then ``cutmix_alpha`` is 1, as in timm).
        prob: probability that a batch / pair / image is mixed at all.
        switch_prob: probability of CutMix instead of Mixup when both are enabled.
        mode: ``"batch"`` (one draw for the batch), ``"pair"`` (images i and B - 1 - i share
            a draw and swap), ``"elem"`` (one draw per image).
        correct_lam: lam is the exact unpasted area of a clipped CutMix box.
        label_smoothing: ``t' = (1 - eps) t + eps / K`` on the mixed targets (keepmix's
            default 0; timm's is 0.1).
        num_classes: K, needed for (B,) integer labels.
        placer: where CutMix boxes go (default: timm's uniform rule).

    Attribute ``mixup_enabled`` (True): False turns mixing off, as in timm (see the module docstring).

    ``op(images, labels) -> (mixed images, float32 (B, K) targets)``. See the module
    docstring for where keepmix differs from timm.
    """

    mixes_labels = True
    region = "pasted"
    params_type = MixupCutMixParams

    def __init__(
        self,
        mixup_alpha: float = 1.0,
        cutmix_alpha: float = 0.0,
        cutmix_minmax: tuple[float, float] | None = None,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        mode: Mode = "batch",
        correct_lam: bool = True,
        label_smoothing: float = 0.0,
        num_classes: int | None = None,
        placer: Placer | None = None,
    ) -> None:
        super().__init__(placer)
        self.mixup_alpha = _check_alpha(mixup_alpha, "mixup_alpha")
        self.cutmix_alpha = _check_alpha(cutmix_alpha, "cutmix_alpha")
        self.cutmix_minmax = None if cutmix_minmax is None else check_range_pair(cutmix_minmax, "cutmix_minmax", 0.0, 1.0)
        if self.cutmix_minmax is not None:
            self.cutmix_alpha = 1.0  # timm: minmax forces alpha 1
        if self.mixup_alpha == 0.0 and self.cutmix_alpha == 0.0:
            raise ValueError("enable Mixup or CutMix: mixup_alpha > 0, cutmix_alpha > 0 or cutmix_minmax given")
        self.prob = check_probability(prob, "prob")
        self.switch_prob = check_probability(switch_prob, "switch_prob")
        if mode not in ("batch", "pair", "elem"):
            raise ValueError(f"mode must be 'batch', 'pair' or 'elem', got {mode!r}")
        self.mode: Mode = mode
        if not isinstance(correct_lam, bool):
            raise TypeError(f"correct_lam must be a bool, got {correct_lam!r}")
        self.correct_lam = correct_lam
        ls = float(label_smoothing)
        if not 0.0 <= ls < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing!r}")
        self.label_smoothing = ls
        self.num_classes = check_num_classes(num_classes)
        #: timm's switch: False (timm's train.py sets it for the mixup-off epochs) mixes nothing.
        self.mixup_enabled = True

    def _check_images(self, images: object) -> Tensor:
        x = super()._check_images(images)
        if self.mode == "pair" and x.shape[0] % 2:
            raise ValueError(f"mode='pair' needs an even batch (images i and B - 1 - i are mixed together), got B = {x.shape[0]}")
        if self.cutmix_minmax is not None:
            lo, hi = self.cutmix_minmax
            for side, n in (("height", x.shape[-2]), ("width", x.shape[-1])):
                if int(n * lo) >= int(n * hi):
                    raise ValueError(
                        f"cutmix_minmax {self.cutmix_minmax} leaves no box side for an image {side} of {n} px "
                        f"(sides are drawn in [int({n} * min), int({n} * max)))"
                    )
        return x

    def needs_saliency(self, images: Tensor) -> bool:
        # No CutMix, no boxes to place: a saliency placer has nothing to do.
        return self.placer.needs_saliency and self.mixup_enabled and self.cutmix_alpha > 0

    def _unmixed(self, b: int, dev: torch.device) -> MixupCutMixParams:
        """Every image its own: empty boxes, lam 1 (``mixup_enabled = False``)."""
        zeros, false, ones, perm = cached(
            ("mixup_cutmix_unmixed", b, dev),
            lambda: (
                torch.zeros(1, 4, dtype=torch.long, device=dev).expand(b, 4),
                torch.zeros(1, dtype=torch.bool, device=dev).expand(b),
                torch.ones(1, device=dev).expand(b),
                torch.arange(b - 1, -1, -1, device=dev),
            ),
        )
        return MixupCutMixParams(boxes=zeros, sizes=zeros[:, :2], use_cutmix=false, lam=ones, perm=perm)

    def make_params(self, images, labels, saliency, generator) -> MixupCutMixParams:
        """Draw order: one (n, k) uniform draw (switch, prob, then the CutMix box: centre row
        and column, or with ``cutmix_minmax`` side fractions and corner fractions), then the
        lam of each enabled mix (one Dirichlet draw); n is 1, B / 2 or B by ``mode``."""
        b, (h, w), dev = images.shape[0], images.shape[-2:], images.device
        if not self.mixup_enabled:
            return self._unmixed(b, dev)
        n = {"batch": 1, "pair": b // 2, "elem": b}[self.mode]
        mix, cut = self.mixup_alpha > 0, self.cutmix_alpha > 0
        both = mix and cut
        minmax = self.cutmix_minmax
        box_cols = 0 if not cut else (2 if minmax is None else 4)
        widths = [1] * both + [1] * (self.prob < 1.0) + [box_cols] * (box_cols > 0)
        # Every per-draw quantity is (n, 1, 1) or (n, 1, 2): no reshaping between the steps.
        columns = list(rand((n, 1, sum(widths)), dev, generator).split(widths, 2)) if widths else []
        alphas = ((self.cutmix_alpha,) * 2,) * (cut and minmax is None) + ((self.mixup_alpha,) * 2,) * mix
        lams: tuple[Tensor, ...] = beta_columns(alphas, (n, 1), dev, generator).split(1, 2) if alphas else ()
        use_cutmix = columns.pop(0) < self.switch_prob if both else None
        mixed = columns.pop(0) < self.prob if self.prob < 1.0 else None
        lam_m = lams[-1] if mix else None
        ones = cached(("ones", dev), lambda: torch.ones(1, 1, 1, dtype=_F64, device=dev))  # broadcast: no B in the key
        boxes = sizes = None
        if cut:
            if use_cutmix is None:
                use_cutmix = cached(("true", n, dev), lambda: torch.ones(n, 1, 1, dtype=torch.bool, device=dev))
            if mixed is not None:
                use_cutmix = use_cutmix & mixed
            lam_c = lams[0] if minmax is None else ones
            if self.placer.needs_saliency:
                boxes, sizes, area = self._placed(lam_c, columns[0], use_cutmix, images, saliency, generator)
                if n != b:  # every image has its own box: the draws go per image from here
                    use_cutmix, lam_c = _expand(self.mode, b, use_cutmix), _expand(self.mode, b, lam_c)
                    lam_m = None if lam_m is None else _expand(self.mode, b, lam_m)
                    mixed = None if mixed is None else _expand(self.mode, b, mixed)
            else:
                boxes, sizes, area = self._boxes(lam_c, columns[0], use_cutmix, h, w)
            if self.correct_lam or minmax is not None:
                lam_c = area.mul(-1.0 / (h * w)).add_(1.0)  # float64: exact for the integer area
            lam = lam_c if lam_m is None else torch.where(use_cutmix, lam_c, lam_m)
        else:
            assert lam_m is not None  # Mixup or CutMix is enabled (__init__)
            lam = lam_m
            use_cutmix = cached(("false", n, dev), lambda: torch.zeros(n, 1, 1, dtype=torch.bool, device=dev))
        if mixed is not None:
            lam = torch.where(mixed, lam, ones)
        lam = lam.float()
        if boxes is None:
            boxes, sizes = cached(("zeros4", b, dev), lambda: (torch.zeros(b, 4, dtype=torch.long, device=dev),) * 2)
            sizes = sizes[:, :2]
        assert sizes is not None
        perm = torch.arange(b - 1, -1, -1, device=dev)  # built per call: a first call at a new B costs the same
        if boxes.shape[0] != b:  # "batch" or "pair": every image takes its draw
            boxes, sizes = _expand(self.mode, b, boxes), _expand(self.mode, b, sizes)
        if lam.shape[0] != b:
            lam = _expand(self.mode, b, lam)
        if use_cutmix.shape[0] != b:
            use_cutmix = _expand(self.mode, b, use_cutmix)
        return MixupCutMixParams(boxes=boxes, sizes=sizes, use_cutmix=use_cutmix.view(b), lam=lam.view(b), perm=perm)

    def _size_and_corner(self, lam_c: Tensor, u: Tensor, h: int, w: int) -> tuple[Tensor, Tensor, Placement]:
        """(n, 1, 2) float64 box sizes and their centre (``"center"``) or corner (``"inside"``)."""
        dev = u.device
        hw = line((float(h), float(w)), (1, 1, 2), _F64, dev)
        if self.cutmix_minmax is None:
            # 1 - lam in float64 before the sqrt (the official rule: int(H sqrt(1 - lam))).
            size = (lam_c.neg().add_(1.0).sqrt_() * hw).floor_()
            return size, (u * hw).floor_(), "center"
        lo, hi = self.cutmix_minmax
        # Sides uniform in [int(H lo), int(H hi)); the corner uniform in [0, H - side].
        low = line((float(int(h * lo)), float(int(w * lo))), (1, 1, 2), _F64, dev)
        span = line((float(int(h * hi) - int(h * lo)), float(int(w * hi) - int(w * lo))), (1, 1, 2), _F64, dev)
        side_u, corner_u = u.split(2, 2)
        size = torch.addcmul(low, side_u, span).floor_()
        return size, (corner_u * (hw + 1.0 - size)).floor_(), "inside"

    def _boxes(self, lam_c: Tensor, u: Tensor, use_cutmix: Tensor, h: int, w: int) -> tuple[Tensor, Tensor, Tensor]:
        """(n, 4) boxes, (n, 2) sizes and (n, 1) float64 clipped areas, timm's rules (empty where not CutMix)."""
        n, dev = u.shape[0], u.device
        size, at, placement = self._size_and_corner(lam_c, u, h, w)
        size = size * use_cutmix
        if placement == "center":
            # ceil(c -/+ s / 2) is c - s // 2 and c + (s + 1) // 2 (timm 1.0.31), then clipped.
            edges = torch.addcmul(at, size, line((-0.5, 0.5), (2, 1), _F64, dev)).ceil_()
            edges = edges.clamp_(line((0.0,), (1,), _F64, dev), line((float(h), float(w)), (1, 2), _F64, dev))
        else:
            edges = torch.addcmul(at, size, line((0.0, 1.0), (2, 1), _F64, dev))
        low, high = edges.split(1, 1)
        area = (high - low).prod(2, keepdim=True)  # (n, 1, 1)
        return edges.long().view(n, 4), size.long().view(n, 2), area

    def _placed(
        self, lam_c: Tensor, u: Tensor, use_cutmix: Tensor, images: Tensor, saliency: Tensor | None, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """A saliency placer's boxes: per image, on each image's own map (``n`` becomes B)."""
        b, (h, w), dev = images.shape[0], images.shape[-2:], images.device
        size, _, placement = self._size_and_corner(lam_c, u, h, w)
        size = (size * use_cutmix).long().view(-1, 2)
        if size.shape[0] != b:
            size = size[_expand_index(self.mode, b, dev)]
        boxes = self.placer.place(size, h, w, placement, saliency=saliency, generator=generator)
        area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).to(_F64).view(b, 1, 1)
        return boxes, size, area

    def apply_params(self, images, labels, params):
        """Blend the Mixup images, paste the CutMix boxes: ``(images, float32 (B, K) targets)``."""
        b = images.shape[0]
        exact = images.dtype in (torch.float32, torch.float64)
        work = images if exact else images.float()
        partner = work[params.perm]
        # A CutMix image's blend weight is 1 (itself); its box then takes the partner's pixels.
        own = params.lam.masked_fill(params.use_cutmix, 1.0).view(b, 1, 1, 1)
        out = partner.lerp(work, own.to(work.dtype))
        if images.dtype == torch.uint8:
            out = out.round_().to(images.dtype)
        elif not exact:
            out = out.to(images.dtype)
        if self.cutmix_alpha > 0:
            mask = box_mask(params.boxes, images.shape[-2], images.shape[-1])
            out = where(mask, partner if exact else images[params.perm], out)
        targets = labels[params.perm].lerp_(labels, params.lam.view(b, 1))
        if self.label_smoothing > 0:
            targets = targets.mul_(1.0 - self.label_smoothing).add_(self.label_smoothing / targets.shape[1])
        return out, targets

    def extra_repr(self) -> str:
        return (
            f"mixup_alpha={self.mixup_alpha}, cutmix_alpha={self.cutmix_alpha}, cutmix_minmax={self.cutmix_minmax}, "
            f"prob={self.prob}, switch_prob={self.switch_prob}, mode={self.mode!r}, correct_lam={self.correct_lam}, "
            f"label_smoothing={self.label_smoothing}, num_classes={self.num_classes}"
        )


def _expand(mode: Mode, batch: int, t: Tensor) -> Tensor:
    """Rows of one draw per batch ("batch") or per pair ("pair") given to every image."""
    if mode == "batch":
        return t.expand(batch, *t.shape[1:])
    return t[_expand_index(mode, batch, t.device)]


def _expand_index(mode: Mode, batch: int, device: torch.device) -> Tensor:
    """Which draw each image takes: all the first ("batch"), its pair's ("pair")."""

    def build() -> Tensor:
        if mode == "batch":
            return torch.zeros(batch, dtype=torch.long, device=device)
        i = torch.arange(batch, device=device)
        return torch.minimum(i, batch - 1 - i)  # "pair": image j = B - 1 - i takes draw i

    return cached(("expand_index", mode, batch, device), build)
