"""SaliencyMix (Uddin et al. 2021): paste the partner's most salient box, at the same place.

The paper's definition: for a receiving image ``x`` and a source (partner) image ``x_s``,
``lam ~ Beta(alpha, alpha)`` sets a CutMix box of ``sqrt(1 - lam)`` times the image's height
and width; the box is centred on the source's most salient pixel ``argmax S(x_s)`` (clipped
at the border) and the source's pixels inside it are pasted into ``x`` at the same location.
The label weight of the source is the exact pasted area: ``lam = 1 - area / (H W)``, targets
``lam y + (1 - lam) y_s``. Defaults: ``alpha = 1``; the official recipes use ``p = 0.5`` on
CIFAR and ``p = 1`` on ImageNet (``p = 1`` here, as for :class:`keepmix.CutMix`).

**The saliency map.** ``saliency="spectral"`` (default) is the static spectral-residual
saliency of Hou & Zhang (2007) as OpenCV's ``StaticSaliencySpectralResidual`` computes it
(opencv_contrib ``modules/saliency/src/staticSaliencySpectralResidual.cpp``), batched with
``torch.fft`` in :func:`spectral_residual_saliency`. NOTE: the official SaliencyMix code
(afm-shahab-uddin/SaliencyMix, ``saliency_bbox`` in both the CIFAR and the ImageNet scripts,
every version) calls ``cv2.saliency.StaticSaliencyFineGrained_create()`` (Montabone & Soto
2010), not the spectral residual; the spectral map is the FFT-based static saliency asked for
here, not the official code's. ``saliency="gradient"`` uses a keepmix gradient map instead
(:class:`keepmix.Saliency`), passed per call as ``saliency=`` (as the KeepAugment harness
computes it) or computed by ``saliency_fn=Saliency(model)``. A ``saliency=`` map passed to a
call always wins, whatever the mode.

**Edge cases, settled.**

* Ties: the peak is the first maximum in row-major order (``np.argmax`` in the official code).
  The official code quantises its map to uint8 before the argmax; this op takes the argmax of
  the float map.
* ``per_sample=True`` (default): lam, ``p`` and the box are drawn per image and each box is
  centred on its own partner's peak; the box spans ``[c - s // 2, c - s // 2 + s)`` before
  clipping (:func:`keepmix.functional.boxes.centered_boxes`).
* ``per_sample=False`` reproduces the official code: one lam and one ``p`` draw per batch, one
  permutation, and one box for the whole batch, centred on the peak of the partner of image 0
  (``saliency_bbox(images[rand_index[0]], lam)``), with the official even edges
  ``[c - s // 2, c + s // 2)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from keepmix._checks import check_images, check_positive, check_probability
from keepmix.base import Op, RegionParams, SaliencyFn
from keepmix.functional.boxes import area_sizes, centered_boxes
from keepmix.functional.mixing import cutmix
from keepmix.mixing import check_num_classes
from keepmix.sampling import bernoulli, beta, permutation

__all__ = ["spectral_residual_saliency", "SaliencyMixParams", "SaliencyMix"]

#: OpenCV's working resolution for the spectral residual (``resImWidth = resImHeight = 64``).
SPECTRAL_SIZE = 64
# ITU-R 601 luma (OpenCV's COLOR_BGR2GRAY weights, here applied to R, G, B in their roles).
_LUMA = (0.299, 0.587, 0.114)


def _gaussian_kernel(size: int, sigma: float) -> Tensor:
    """OpenCV's ``getGaussianKernel(size, sigma)`` (float64, sums to 1)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    k = torch.exp(-(x * x) / (2.0 * sigma * sigma))
    return k / k.sum()


def _reflect101(x: Tensor, r: int) -> Tensor:
    """Pad (N, 1, h, w) by ``r`` with OpenCV's BORDER_REFLECT_101 (torch's "reflect")."""
    return F.pad(x, (r, r, r, r), mode="reflect")


def spectral_residual_saliency(images: Tensor, size: int = SPECTRAL_SIZE) -> Tensor:
    """(B, H, W) float32 spectral-residual saliency (Hou & Zhang 2007), OpenCV's recipe, batched.

    Per image, as ``StaticSaliencySpectralResidual::computeSaliencyImpl``:

    1. grey image: ``0.299 R + 0.587 G + 0.114 B`` for 3 channels (the channel itself for 1,
       the channel mean otherwise), in float64 (not rounded);
    2. resized to ``size x size`` (64) bilinearly with half-pixel centres (``INTER_LINEAR``,
       ``F.interpolate(..., "bilinear", align_corners=False)``, no antialiasing);
    3. ``A, P`` = amplitude and phase of its 2-D DFT; ``L = log A``;
    4. spectral residual ``R = L - box3x3(L)`` (3x3 mean, border reflect-101);
    5. ``s = |IDFT(exp(R + i P))|``;
    6. ``s`` blurred with OpenCV's 5x5 Gaussian of sigma 8 (reflect-101), then squared (OpenCV
       blurs before squaring; the paper writes ``g * |.|^2``), divided by its maximum;
    7. resized back to ``H x W`` bilinearly (half-pixel centres), as float32.

    The map is invariant to scaling the image (a log-amplitude difference), so uint8 and
    ``x / 255`` give the same map. Degenerate spectra are kept finite: amplitudes are floored
    at ``1e-12`` times each image's largest (a constant image then gives a constant map), which
    no non-degenerate image reaches in practice.
    """
    check_images(images)
    _, c, h, w = images.shape
    x = images.to(torch.float64)
    if c == 3:
        grey = x[:, 0] * _LUMA[0] + x[:, 1] * _LUMA[1] + x[:, 2] * _LUMA[2]
    elif c == 1:
        grey = x[:, 0]
    else:
        grey = x.mean(dim=1)
    g = F.interpolate(grey[:, None], size=(size, size), mode="bilinear", align_corners=False)
    spec = torch.fft.fft2(g)
    amp, phase = spec.abs(), spec.angle()
    floor = (amp.amax(dim=(-2, -1), keepdim=True) * 1e-12).clamp_min(torch.finfo(torch.float64).tiny)
    log_amp = amp.clamp_min(floor).log()
    residual = log_amp - F.avg_pool2d(_reflect101(log_amp, 1), 3, stride=1)
    back = torch.fft.ifft2(torch.polar(residual.exp(), phase)).abs()
    k = _gaussian_kernel(5, 8.0).to(back.device)
    blurred = F.conv2d(_reflect101(back, 2), k.view(1, 1, 5, 1))
    blurred = F.conv2d(blurred, k.view(1, 1, 1, 5))
    sal = blurred * blurred
    sal = sal / sal.amax(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    sal = sal.float()
    if (h, w) != (size, size):
        sal = F.interpolate(sal, size=(h, w), mode="bilinear", align_corners=False)
    return sal[:, 0]


def _spectral_fn(images: Tensor, labels: Tensor | None = None) -> Tensor:
    return spectral_residual_saliency(images)


def _missing_gradient_map(images: Tensor, labels: Tensor | None = None) -> Tensor:
    raise ValueError(
        "SaliencyMix(saliency='gradient') needs a saliency map: pass saliency=(B, H, W), e.g. "
        "keepmix.Saliency(model)(images, labels), or give it saliency_fn=keepmix.Saliency(model)"
    )


@dataclass(frozen=True)
class SaliencyMixParams(RegionParams):
    """SaliencyMix's boxes, partners and peaks.

    ``sizes`` (B, 2) int64: the requested box (h, w) = (floor(H sqrt(1 - lam)),
    floor(W sqrt(1 - lam))), (0, 0) where skipped by ``p``; ``boxes`` (B, 4): where the
    partner is pasted (centred on ``peaks``, clipped); ``perm`` (B,) int64: partners;
    ``peaks`` (B, 2) int64: the (y, x) of the partner's most salient pixel.
    """

    perm: Tensor
    peaks: Tensor


class SaliencyMix(Op):
    """SaliencyMix (Uddin et al. 2021): a CutMix box centred on the partner's most salient
    pixel, pasted at the same location; lam is the exact unpasted area. See the module
    docstring for the definition, the saliency maps and the settled edge cases.

    Args:
        alpha: Beta concentration of lam (> 0); the paper uses 1.
        p: probability that an image (per_sample) or the batch is mixed.
        num_classes: K, needed for (B,) integer labels.
        per_sample: per-image draws (True) or the official per-batch draw and shared box.
        saliency: ``"spectral"`` (spectral residual of the images, computed in
            ``sample_params``) or ``"gradient"`` (a keepmix gradient map: pass ``saliency=``
            per call or give ``saliency_fn``).
        saliency_fn: ``(images, labels) -> (B, H, W)``, e.g. ``keepmix.Saliency(model)``; only
            with ``saliency="gradient"``.

    ``op(images, labels) -> (mixed images, float32 (B, K) soft targets)``.
    """

    mixes_labels = True
    region = "pasted"
    params_type = SaliencyMixParams
    #: Set in __init__ outside nn.Module's registry (annotation only, for the type checker).
    saliency_fn: SaliencyFn | None

    def __init__(
        self,
        alpha: float = 1.0,
        p: float = 1.0,
        num_classes: int | None = None,
        per_sample: bool = True,
        saliency: Literal["spectral", "gradient"] = "spectral",
        saliency_fn: SaliencyFn | None = None,
    ) -> None:
        super().__init__()
        self.alpha = check_positive(alpha, "alpha")
        self.p = check_probability(p)
        self.num_classes = check_num_classes(num_classes)
        if not isinstance(per_sample, bool):
            raise TypeError(f"per_sample must be a bool, got {per_sample!r}")
        self.per_sample = per_sample
        if saliency not in ("spectral", "gradient"):
            raise ValueError(f"saliency must be 'spectral' (spectral residual) or 'gradient' (a keepmix Saliency map), got {saliency!r}")
        self.saliency = saliency
        if saliency_fn is not None:
            if not callable(saliency_fn):
                raise TypeError(f"saliency_fn must be callable (images, labels) -> (B, H, W) or None, got {type(saliency_fn).__name__}")
            if saliency != "gradient":
                raise ValueError("saliency_fn is the map of saliency='gradient'; pass saliency='gradient' with it")
        # Outside nn.Module's registry on purpose (as KeepPlacer does): the model behind a
        # Saliency must not become a submodule of the augmentation.
        object.__setattr__(self, "saliency_fn", saliency_fn)

    def needs_saliency(self, images: Tensor) -> bool:
        return True

    def saliency_source(self) -> SaliencyFn | None:
        if self.saliency == "spectral":
            return _spectral_fn
        return self.saliency_fn if self.saliency_fn is not None else _missing_gradient_map

    def regions(self, params):
        assert isinstance(params, SaliencyMixParams)
        return params.boxes

    def make_params(self, images, labels, saliency, generator) -> SaliencyMixParams:
        """Draw order: lam, applied, perm (B,) (one lam and one applied with
        ``per_sample=False``); then the peaks of the partners' maps (no randomness)."""
        b, _, h, w = images.shape
        dev = images.device
        n = b if self.per_sample else 1
        lam = beta(self.alpha, self.alpha, n, device=dev, generator=generator)
        applied = bernoulli(self.p, n, device=dev, generator=generator)
        perm = permutation(b, device=dev, generator=generator)
        # float64 so the floor matches the official int(W * sqrt(1 - lam)) on the same lam.
        sizes = area_sizes(1.0 - lam, h, w, even=not self.per_sample)  # official: the far edge c + s // 2
        sizes = torch.where(applied[:, None], sizes, torch.zeros_like(sizes)).expand(b, 2).contiguous()
        assert saliency is not None
        flat = saliency.reshape(b, h * w).argmax(dim=1)  # first maximum, row-major
        peaks = torch.stack([torch.div(flat, w, rounding_mode="floor"), flat % w], dim=1)[perm]
        if not self.per_sample:
            peaks = peaks[:1].expand(b, 2).contiguous()
        boxes = centered_boxes(peaks[:, 0], peaks[:, 1], sizes[:, 0], sizes[:, 1], h, w)
        return SaliencyMixParams(boxes=boxes, sizes=sizes, perm=perm, peaks=peaks)

    def _check_params(self, params: object, images: Tensor) -> None:
        from keepmix.functional.boxes import check_boxes
        from keepmix.functional.mixing import check_perm

        super()._check_params(params, images)
        assert isinstance(params, SaliencyMixParams)
        check_boxes(params.boxes, images.shape[0], images.shape[-2], images.shape[-1], name="params.boxes")
        check_perm(params.perm, images.shape[0], "params.perm")

    def apply_params(self, images, labels, params):
        """Paste ``images[params.perm]`` into ``params.boxes``: ``(images, targets)``."""
        out, mixed, _ = cutmix(images, labels, params.boxes, params.perm, validate=False)
        return out, mixed

    def extra_repr(self) -> str:
        fn = "" if self.saliency_fn is None else f", saliency_fn={self.saliency_fn!r}"
        return (
            f"alpha={self.alpha}, p={self.p}, num_classes={self.num_classes}, per_sample={self.per_sample}, saliency={self.saliency!r}{fn}"
        )
