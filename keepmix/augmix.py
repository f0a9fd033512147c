"""AugMix (Hendrycks et al. 2020) with every draw per image, and its Jensen-Shannon loss.

The paper's definition (Algorithm 1, with the official code, google-research/augmix
``cifar.py`` / ``augmentations.py``, for what the paper leaves open):

* ``width`` chains (default 3). Each chain is ``depth`` ops long; ``depth = -1`` draws the
  length uniformly from {1, 2, 3}, per chain and per image.
* Every op is drawn uniformly (with repetition) from AugMix's list: the AutoAugment ops that
  do not overlap the ImageNet-C / CIFAR-C test corruptions, ``autocontrast, equalize,
  posterize, rotate, solarize, shear_x, shear_y, translate_x, translate_y``; ``all_ops=True``
  adds ``color, contrast, brightness, sharpness`` (the official ``augmentations_all``, which
  torchvision's ``AugMix`` uses by default).
* The chain weights are ``w ~ Dirichlet(alpha, ..., alpha)`` and the skip weight is
  ``m ~ Beta(alpha, alpha)``, per image: ``x_augmix = (1 - m) x + m sum_k w_k chain_k(x)``.
* Defaults: ``severity=3, width=3, depth=-1, alpha=1`` (the official CIFAR and ImageNet
  settings), and ``all_ops=False`` (the paper's and the official default).

Magnitudes follow the official code, not torchvision's bins. Each application of an op draws
its own level ``l ~ U(0.1, severity)`` and maps it as ``augmentations.py`` does
(``int(...)`` truncates, as Python's ``int`` does on these positive values):

==============  ==========================================================  ===========
op              magnitude                                                   signed
==============  ==========================================================  ===========
Posterize       ``4 - int(l * 4 / 10)`` bits                                no
Rotate          ``int(l * 30 / 10)`` degrees                                yes
Solarize        threshold ``256 - int(l * 256 / 10)``                       no
ShearX / Y      ``l * 0.3 / 10``                                            yes
TranslateX / Y  ``int(l * (W / 3) / 10)`` / ``int(l * (H / 3) / 10)`` px    yes
Color ...       factor ``l * 1.8 / 10 + 0.1`` (Color, Contrast, Brightness,  no
                Sharpness)
==============  ==========================================================  ===========

(The official code uses the square ``IMAGE_SIZE`` for both translations; here each axis uses
its own side, as torchvision does.) At ``severity=3``: 3..4 bits, 0..8 degrees, thresholds
180..254, shears up to 0.09, translations up to ``int(0.1 W)`` pixels (3 on CIFAR), enhance
factors 0.118..0.64. torchvision's ``AugMix`` instead indexes 10-bin tables with a bin drawn
from ``range(severity)`` (so at severity 3: rotations 0 / 3.3 / 6.7 degrees, posterize 4 / 4 /
3 bits, enhance factors ``1 +- {0, 0.1, 0.2}``); this module does not follow those bins.

Geometric ops use ``interpolation="bilinear"`` by default (the official ``resample=BILINEAR``
and torchvision's default) with fill 0.

**Pixels and rounding.** Images are uint8 or floats in [0, 1] (``raw_pixels``: run before
normalisation, like the policies; a (C, H, W) image or a PIL image works too). Each chain runs
:func:`keepmix.functional.policy_ops.apply_ops` in the images' dtype, so on uint8 every op
rounds as PIL does on a PIL image. The mix is then computed in float32 (float64 for float64
images) as ``acc = (1 - m) * x``, then ``acc = acc + (m * w_k) * chain_k`` for ``k = 0, 1, ...``
in order, each coefficient rounded once to that dtype. uint8 results are rounded to the nearest
integer (half to even, ``torch.round``) and clamped to [0, 255]; float16 / bfloat16 results are
rounded once to their dtype; float results are not clipped. (torchvision truncates its uint8
mix; the official code mixes normalised float tensors and never rounds.) Where ``m == 0`` the
image comes back unchanged.

**Training with the JSD loss** (the paper's Section 3, and the official ``train``): the loss
is the cross-entropy on the clean images plus ``12 *`` the Jensen-Shannon divergence among the
predictions on the clean image and two independent AugMix views of it::

    aug1, aug2 = augmix.splits(x_uint8, generator=g)            # two independent draws
    logits = model(normalize(torch.cat([x_uint8, aug1, aug2])))
    clean, l1, l2 = logits.chunk(3)
    loss = AugMixJSDLoss()(clean, l1, l2, targets)               # CE(clean) + 12 JS
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from keepmix import sampling
from keepmix._checks import check_int, check_positive
from keepmix.base import Op, Params
from keepmix.functional.geometry import _fill_tensor, interpolation_name
from keepmix.functional.policy_ops import _OP_ID, OP_NAMES, apply_ops
from keepmix.targets import soft_target_cross_entropy

__all__ = [
    "AUGMIX_OPS",
    "AUGMIX_ALL_OPS",
    "AugMixParams",
    "AugMix",
    "augmix_magnitudes",
    "jensen_shannon_consistency",
    "AugMixJSDLoss",
]

#: AugMix's op list (the official ``augmentations.augmentations``), in its order.
AUGMIX_OPS: tuple[str, ...] = (
    "AutoContrast",
    "Equalize",
    "Posterize",
    "Rotate",
    "Solarize",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
)
#: ``all_ops=True`` (the official ``augmentations_all``): the list plus the four enhance ops.
AUGMIX_ALL_OPS: tuple[str, ...] = AUGMIX_OPS + ("Color", "Contrast", "Brightness", "Sharpness")

_SIGNED = frozenset({"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"})
_ENHANCE = ("Color", "Contrast", "Brightness", "Sharpness")
_MAX_DEPTH = 3  # depth = -1 draws 1..3


def augmix_magnitudes(ops: Tensor, levels: Tensor, height: int, width: int) -> Tensor:
    """The official unsigned magnitude of each op at each level, in :func:`apply_ops` units.

    ``ops`` int64 ids into :data:`OP_NAMES`, ``levels`` float64 of the same shape (the
    official ``sample_level(severity)`` draws). Returns float64: bits (Posterize), degrees
    (Rotate), grey level (Solarize), shear factor, pixels (Translate), and ``factor - 1`` for
    the enhance ops (:func:`apply_ops` applies ``1 + magnitude``); 0 for AutoContrast and
    Equalize. See the module docstring for the formulas.
    """
    lv = levels.double()
    trunc = lambda maxval: torch.trunc(lv * maxval / 10)
    flt = lambda maxval: lv * maxval / 10.0
    table = {
        "Posterize": 4 - trunc(4),
        "Rotate": trunc(30),
        "Solarize": 256 - trunc(256),
        "ShearX": flt(0.3),
        "ShearY": flt(0.3),
        "TranslateX": trunc(width / 3),
        "TranslateY": trunc(height / 3),
    }
    factor = flt(1.8) + 0.1
    for name in _ENHANCE:
        table[name] = factor - 1.0
    out = torch.zeros_like(lv)
    for name, value in table.items():
        out = torch.where(ops == _OP_ID[name], value, out)
    return out


@dataclass(frozen=True)
class AugMixParams(Params):
    """What AugMix does to each image.

    ``ops`` (B, width, depth) int64 ids into :data:`OP_NAMES`; ``magnitudes`` (B, width,
    depth) float64, signed, in :func:`apply_ops` units; ``applied`` (B, width, depth) bool
    (step ``d`` of chain ``k`` runs; a chain of length ``n`` has its first ``n`` steps applied);
    ``weights`` (B, width) float32 Dirichlet chain weights (rows sum to 1); ``mix`` (B,) float32
    ``m``, the weight of the chains' mixture (the clean image gets ``1 - m``).
    """

    ops: Tensor
    magnitudes: Tensor
    applied: Tensor
    weights: Tensor
    mix: Tensor


def _dirichlet(alpha: float, shape: tuple[int, int], device, generator) -> Tensor:
    """(B, K) float32 rows ~ Dirichlet(alpha, ..., alpha): normalised Gamma(alpha) draws."""
    b, k = shape
    g = sampling._gamma(alpha, b * k, device, generator).view(b, k)
    s = g.sum(dim=1, keepdim=True)
    # All K gammas underflow to 0 only for tiny alpha: split the mass evenly then.
    w = torch.where(s > 0, g / s.clamp_min(1e-300), torch.full_like(g, 1.0 / k))
    return w.float()


class AugMix(Op):
    """AugMix (Hendrycks et al. 2020): a Dirichlet mix of random op chains, mixed with the
    image by ``m ~ Beta(alpha, alpha)``; every draw (chain lengths, ops, levels, signs,
    weights, ``m``) per image. See the module docstring for the definition, the official
    magnitudes and the rounding rules.

    Args:
        severity: the ops' severity, an int in [1, 10] (official: 3).
        width: number of chains, ``k`` in the paper (3).
        depth: ops per chain, >= 1, or -1 to draw it from {1, 2, 3} per chain and image (-1).
        alpha: concentration of the Dirichlet chain weights and of the Beta skip weight (1).
        all_ops: add color, contrast, brightness and sharpness (official default False;
            torchvision's AugMix uses True).
        interpolation: ``"bilinear"`` (official) or ``"nearest"`` for the geometric ops.
        fill: the value of pixels uncovered by the geometric ops (number or one per channel,
            in the images' units; official 0).

    ``op(images)`` returns the AugMix images; with labels, ``(images, labels)`` unchanged.
    :meth:`splits` gives the two independent views the JSD loss needs.
    """

    single_image = True
    pil_image = True
    channels = (1, 3)
    raw_pixels = True
    differentiable = False  # PIL-exact integer arithmetic: refuse requires_grad images
    params_type = AugMixParams
    # Buffers registered in __init__ (annotations only, for the type checker).
    _op_ids: Tensor
    _signed: Tensor

    def __init__(
        self,
        severity: int = 3,
        width: int = 3,
        depth: int = -1,
        alpha: float = 1.0,
        all_ops: bool = False,
        interpolation: Literal["nearest", "bilinear"] = "bilinear",
        fill: float | Sequence[float] = 0.0,
    ) -> None:
        super().__init__()
        self.severity = check_int(severity, "severity", 1, 10, "an int in [1, 10]")
        self.width = check_int(width, "width", low=1)
        if not (isinstance(depth, int) and not isinstance(depth, bool) and (depth == -1 or depth >= 1)):
            raise ValueError(f"depth must be an int >= 1, or -1 (a random depth in 1..3 per chain), got {depth!r}")
        self.depth = depth
        self.alpha = check_positive(alpha, "alpha")
        if not isinstance(all_ops, bool):
            raise TypeError(f"all_ops must be a bool, got {all_ops!r}")
        self.all_ops = all_ops
        self.interpolation = interpolation_name(interpolation)  # a string, or torchvision's InterpolationMode
        t = torch.as_tensor(fill, dtype=torch.float64).flatten()
        if t.numel() not in (1, 3) or not bool(torch.isfinite(t).all()):
            raise ValueError(f"fill must be a finite number or 3 numbers (one per channel), got {fill!r}")
        self.fill = fill
        self.ops = AUGMIX_ALL_OPS if all_ops else AUGMIX_OPS
        self.register_buffer("_op_ids", torch.tensor([_OP_ID[o] for o in self.ops]), persistent=False)
        self.register_buffer("_signed", torch.tensor([name in _SIGNED for name in OP_NAMES]), persistent=False)

    @property
    def max_depth(self) -> int:
        """Steps per chain in the params (3 for ``depth=-1``)."""
        return _MAX_DEPTH if self.depth == -1 else self.depth

    def _check_images(self, images: object) -> Tensor:
        images = super()._check_images(images)
        _fill_tensor(self.fill, images)  # fill must fit the images (channels; uint8 range)
        return images

    def make_params(self, images, labels, saliency, generator) -> AugMixParams:
        """Draw order: chain lengths (B, width) when depth = -1, ops (B, width, D), levels
        (B, width, D), signs (B, width, D), chain weights, skip weights ``m``."""
        b, _, h, w = images.shape
        dev = images.device
        k, d = self.width, self.max_depth
        if self.depth == -1:
            lengths = sampling.randint(1, _MAX_DEPTH + 1, (b, k), device=dev, generator=generator)
        else:
            lengths = torch.full((b, k), self.depth, device=dev, dtype=torch.int64)
        applied = torch.arange(d, device=dev).view(1, 1, d) < lengths.unsqueeze(-1)
        pick = sampling.randint(0, len(self.ops), (b, k, d), device=dev, generator=generator)
        ops = self._op_ids.to(dev)[pick]
        levels = sampling.uniform((b, k, d), 0.1, float(self.severity), device=dev, generator=generator, dtype=torch.float64)
        flip = sampling.bernoulli(0.5, (b, k, d), device=dev, generator=generator)
        mags = augmix_magnitudes(ops, levels, h, w)
        mags = torch.where(self._signed.to(dev)[ops] & flip, -mags, mags)
        weights = _dirichlet(self.alpha, (b, k), dev, generator)
        mix = sampling.beta(self.alpha, self.alpha, b, device=dev, generator=generator)
        return AugMixParams(ops=ops, magnitudes=mags, applied=applied, weights=weights, mix=mix)

    def _check_params(self, params: object, images: Tensor) -> None:
        super()._check_params(params, images)
        assert isinstance(params, AugMixParams)
        b = images.shape[0]
        if params.ops.ndim != 3 or params.ops.shape[0] != b:
            raise ValueError(f"params.ops must have shape (B, width, depth) with B = {b}, got {tuple(params.ops.shape)}")
        steps = tuple(params.ops.shape)
        for field, shape in {"magnitudes": steps, "applied": steps, "weights": steps[:2], "mix": (b,)}.items():
            t = getattr(params, field)
            if tuple(t.shape) != shape:
                raise ValueError(f"params.{field} must have shape {shape}, got {tuple(t.shape)}")
        if params.ops.dtype != torch.int64:
            raise TypeError(f"params.ops must be int64, got {params.ops.dtype}")
        if params.applied.dtype != torch.bool:
            raise TypeError(f"params.applied must be bool, got {params.applied.dtype}")

    def apply_params(self, images, labels, params):
        """Run every chain with :func:`apply_ops` (all chains of all images in one call) and
        mix (see the module docstring for the arithmetic)."""
        b, c, h, w = images.shape
        dev = images.device
        k, d = params.ops.shape[1:]
        # Image-major stack of the chains: row i * k + j is chain j of image i.
        stacked = images.unsqueeze(1).expand(b, k, c, h, w).reshape(b * k, c, h, w)
        ops = params.ops.to(dev).reshape(b * k, d)
        mags = params.magnitudes.to(dev).reshape(b * k, d)
        applied = params.applied.to(dev).reshape(b * k, d)
        centers = torch.zeros(b * k, d, 2, device=dev)
        chains = apply_ops(stacked, ops, mags, applied, centers, self.fill, self.interpolation).view(b, k, c, h, w)
        return _mix(images, chains, params.weights.to(dev), params.mix.to(dev)), labels

    def splits(self, images, *, generator: torch.Generator | None = None, num: int = 2) -> tuple:
        """``num`` (default 2) AugMix views of ``images`` from independent draws, in order
        (the ``(aug1, aug2)`` of the JSD loss; the clean images are ``images`` themselves).

        Each view is ``self(images, generator=generator)``; the generator advances between
        them, so the views differ. Takes what ``forward`` takes (batch, (C, H, W), PIL).
        """
        check_int(num, "num", low=1)
        return tuple(self(images, generator=generator) for _ in range(num))

    def extra_repr(self) -> str:
        return (
            f"severity={self.severity}, width={self.width}, depth={self.depth}, alpha={self.alpha}, "
            f"all_ops={self.all_ops}, interpolation={self.interpolation!r}, fill={self.fill!r}"
        )


def _mix(images: Tensor, chains: Tensor, weights: Tensor, mix: Tensor) -> Tensor:
    """``(1 - m) x + sum_k (m w_k) chain_k`` with the rounding rules of the module docstring."""
    wd = torch.float64 if images.dtype == torch.float64 else torch.float32
    shape = (-1, 1, 1, 1)
    m = mix.to(wd)
    acc = images.to(wd) * (1.0 - m).view(shape)
    coef = m.view(-1, 1) * weights.to(wd)  # (B, width)
    for j in range(chains.shape[1]):  # a loop over the chains, not the batch
        acc = acc + chains[:, j].to(wd) * coef[:, j].view(shape)
    if images.dtype == torch.uint8:
        return acc.round_().clamp_(0.0, 255.0).to(torch.uint8)
    return acc.to(images.dtype)


# --------------------------------------------------------------------------------------
# The Jensen-Shannon consistency loss
# --------------------------------------------------------------------------------------


def _check_logits(**logits: Tensor) -> None:
    shape = None
    for name, t in logits.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape (B, K), got {type(t).__name__}")
        if t.ndim != 2 or not t.dtype.is_floating_point:
            raise ValueError(f"{name} must be floating point logits of shape (B, K), got {tuple(t.shape)} {t.dtype}")
        if shape is None:
            shape, first = t.shape, name
        elif t.shape != shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but {first} has {tuple(shape)}; the three must match")


def jensen_shannon_consistency(logits_clean: Tensor, logits_aug1: Tensor, logits_aug2: Tensor, *, weight: float = 12.0) -> Tensor:
    """``weight * JS(p_clean, p_aug1, p_aug2)``, AugMix's consistency term (paper weight 12).

    With ``p = softmax(logits)`` (in float32) and ``M = (p_clean + p_aug1 + p_aug2) / 3``
    clamped to [1e-7, 1] as the official code does (so ``log M`` stays finite),
    ``JS = (KL(p_clean || M) + KL(p_aug1 || M) + KL(p_aug2 || M)) / 3``, each KL summed over
    classes and averaged over the batch (``F.kl_div(log M, p, reduction="batchmean")``; a
    ``p = 0`` term contributes 0). Returns a scalar.
    """
    _check_logits(logits_clean=logits_clean, logits_aug1=logits_aug1, logits_aug2=logits_aug2)
    weight = check_positive(weight, "weight", allow_zero=True)
    probs = [F.softmax(t.float(), dim=1) for t in (logits_clean, logits_aug1, logits_aug2)]
    log_m = torch.clamp((probs[0] + probs[1] + probs[2]) / 3.0, 1e-7, 1.0).log()
    kl = [F.kl_div(log_m, p, reduction="batchmean") for p in probs]
    js = (kl[0] + kl[1] + kl[2]) / 3.0
    return weight * js


class AugMixJSDLoss(nn.Module):
    """AugMix's training loss: ``CE(logits_clean, targets) + weight * JS`` (paper: weight 12).

    ``loss(logits_clean, logits_aug1, logits_aug2, targets)``: the cross-entropy is on the
    clean images only (as in the official ``train``), ``targets`` class ids (B,) or soft
    targets (B, K); without targets it returns the weighted JS term alone (see
    :func:`jensen_shannon_consistency`). Scalar output.
    """

    def __init__(self, weight: float = 12.0) -> None:
        super().__init__()
        self.weight = check_positive(weight, "weight", allow_zero=True)

    def forward(self, logits_clean: Tensor, logits_aug1: Tensor, logits_aug2: Tensor, targets: Tensor | None = None) -> Tensor:
        js = jensen_shannon_consistency(logits_clean, logits_aug1, logits_aug2, weight=self.weight)
        if targets is None:
            return js
        return soft_target_cross_entropy(logits_clean, targets) + js

    def extra_repr(self) -> str:
        return f"weight={self.weight}"
