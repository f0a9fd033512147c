"""timm's Mixup / CutMix switch as one keepmix op, with timm's names and meaning.

``MixupCutMix`` is a drop-in for ``timm.data.Mixup`` in a timm-style loop::

    mixup_fn = keepmix.MixupCutMix(mixup_alpha=0.8, cutmix_alpha=1.0, num_classes=1000)
    for x, target in loader:
        x, target = mixup_fn(x, target)        # float32 (B, K) soft targets
        loss = keepmix.SoftTargetCrossEntropy(label_smoothing=0.1)(model(x), target)

What it draws is timm's (``timm/data/mixup.py``): per batch, per pair or per image, with
probability ``prob``, CutMix (probability ``switch_prob`` when both are enabled) or Mixup;
lam ~ Beta(alpha, alpha) of the chosen one; the partner of image i is image B - 1 - i (the
batch reversed); a CutMix box of side ``int(H sqrt(1 - lam))`` with timm's edges
``[c - s//2, c + s//2)`` at a uniform centre, or with ``cutmix_minmax`` a box of sides drawn
in ``[int(H min), int(H max))`` at a uniform corner in ``[0, H - h)``; lam corrected to the
pasted area when ``correct_lam`` (always, with ``cutmix_minmax``); targets
``lam y + (1 - lam) y[flip]``, label-smoothed by ``label_smoothing``.

Where keepmix differs from timm (the defaults are timm's otherwise):

* ``mode="elem"`` and ``"pair"`` are vectorised (timm loops over the batch in Python), and
  nothing is modified in place (timm's ``"batch"`` mode mixes the caller's tensor).
* ``num_classes`` defaults to None: it is needed for (B,) class ids, and (B, K) soft labels
  give K themselves (timm requires it and takes class ids only).
* ``label_smoothing`` defaults to 0, as in current timm; smoothing in the loss instead
  (:class:`keepmix.SoftTargetCrossEntropy` ``(label_smoothing=...)``) gives the same
  targets, since smoothing is linear. Do one or the other, not both.
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
from keepmix.functional.boxes import area_sizes, centered_boxes, corner_boxes, paste
from keepmix.functional.mixing import area_lambda, mixup
from keepmix.mixing import check_num_classes
from keepmix.placers import Placer
from keepmix.sampling import beta, randint, uniform
from keepmix.targets import mix_targets

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
        label_smoothing: ``t' = (1 - eps) t + eps / K`` on the mixed targets.
        num_classes: K, needed for (B,) integer labels.
        placer: where CutMix boxes go (default: timm's uniform rule).

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

    def _draw(self, n: int, device: torch.device, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """(n,) CutMix-or-not and lam (1 where not mixed). Draw order: switch, CutMix lam,
        Mixup lam, prob (each only when it matters)."""
        both = self.mixup_alpha > 0 and self.cutmix_alpha > 0
        if both:
            use_cutmix = uniform(n, device=device, generator=generator) < self.switch_prob
        else:
            use_cutmix = torch.full((n,), self.cutmix_alpha > 0, dtype=torch.bool, device=device)
        lam = torch.ones(n, device=device)
        if self.cutmix_alpha > 0:
            lam_c = beta(self.cutmix_alpha, self.cutmix_alpha, n, device=device, generator=generator)
            lam = torch.where(use_cutmix, lam_c, lam)
        if self.mixup_alpha > 0:
            lam_m = beta(self.mixup_alpha, self.mixup_alpha, n, device=device, generator=generator)
            lam = torch.where(use_cutmix, lam, lam_m)
        if self.prob < 1.0:
            mixed = uniform(n, device=device, generator=generator) < self.prob
            lam = torch.where(mixed, lam, torch.ones_like(lam))
            use_cutmix = use_cutmix & mixed
        return use_cutmix, lam

    def _boxes(self, lam: Tensor, images: Tensor, saliency: Tensor | None, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """(n, 4) boxes and (n, 2) sizes for the n draws (timm's two box rules)."""
        n, (h, w), dev = lam.shape[0], images.shape[-2:], lam.device
        placement: Placement
        if self.cutmix_minmax is None:
            sizes = area_sizes(1.0 - lam, h, w, even=True)  # timm's far edge c + s//2: a centred box of even side
            placement = "center"
        else:
            lo, hi = self.cutmix_minmax
            sizes = torch.stack(
                [
                    randint(int(h * lo), int(h * hi), n, device=dev, generator=generator),
                    randint(int(w * lo), int(w * hi), n, device=dev, generator=generator),
                ],
                dim=1,
            )
            placement = "inside"
        if self.placer.needs_saliency:
            full = sizes[_expand_index(self.mode, images.shape[0], dev)]
            return self.placer.place(full, h, w, placement, saliency=saliency, generator=generator), full
        if self.placer.whole_boxes or placement == "inside":
            if placement == "inside":  # timm: a corner uniform in [0, H - h) (never the last one)
                top = randint(0, h - sizes[:, 0], n, device=dev, generator=generator, check=False)
                left = randint(0, w - sizes[:, 1], n, device=dev, generator=generator, check=False)
                return corner_boxes(top, left, sizes[:, 0], sizes[:, 1]), sizes
            return self.placer.place(sizes, h, w, "center", generator=generator), sizes
        cy = randint(0, h, n, device=dev, generator=generator)
        cx = randint(0, w, n, device=dev, generator=generator)
        return centered_boxes(cy, cx, sizes[:, 0], sizes[:, 1], h, w), sizes

    def make_params(self, images, labels, saliency, generator) -> MixupCutMixParams:
        b, (h, w), dev = images.shape[0], images.shape[-2:], images.device
        n = {"batch": 1, "pair": b // 2, "elem": b}[self.mode]
        use_cutmix, lam = self._draw(n, dev, generator)
        boxes, sizes = self._boxes(lam, images, saliency, generator)
        if boxes.shape[0] != n:  # a saliency placer gave every image its own box
            expand = _expand_index(self.mode, b, dev)
            use_cutmix, lam = use_cutmix[expand], lam[expand]
            n = b
        keep = use_cutmix[:, None]
        boxes = torch.where(keep, boxes, torch.zeros_like(boxes))
        sizes = torch.where(keep, sizes, torch.zeros_like(sizes))
        if self.correct_lam or self.cutmix_minmax is not None:
            lam = torch.where(use_cutmix, area_lambda(boxes, h, w), lam)
        if n != b:
            expand = _expand_index(self.mode, b, dev)
            boxes, sizes, use_cutmix, lam = boxes[expand], sizes[expand], use_cutmix[expand], lam[expand]
        perm = torch.arange(b - 1, -1, -1, device=dev)
        return MixupCutMixParams(boxes=boxes, sizes=sizes, use_cutmix=use_cutmix, lam=lam, perm=perm)

    def apply_params(self, images, labels, params):
        """Blend the Mixup images, paste the CutMix boxes: ``(images, float32 (B, K) targets)``."""
        own = torch.where(params.use_cutmix, torch.ones_like(params.lam), params.lam)
        out, _ = mixup(images, labels, own, params.perm, validate=False)
        out = paste(out, images[params.perm], params.boxes)
        targets = mix_targets(labels, labels[params.perm], params.lam)
        if self.label_smoothing > 0:
            targets = targets * (1.0 - self.label_smoothing) + self.label_smoothing / targets.shape[1]
        return out, targets

    def extra_repr(self) -> str:
        return (
            f"mixup_alpha={self.mixup_alpha}, cutmix_alpha={self.cutmix_alpha}, cutmix_minmax={self.cutmix_minmax}, "
            f"prob={self.prob}, switch_prob={self.switch_prob}, mode={self.mode!r}, correct_lam={self.correct_lam}, "
            f"label_smoothing={self.label_smoothing}, num_classes={self.num_classes}"
        )


def _expand_index(mode: Mode, batch: int, device: torch.device) -> Tensor:
    """Which draw each image takes: all the first ("batch"), its pair's ("pair")."""
    if mode == "batch":
        return torch.zeros(batch, dtype=torch.long, device=device)
    i = torch.arange(batch, device=device)
    return torch.minimum(i, batch - 1 - i)  # "pair": image j = B - 1 - i takes draw i
