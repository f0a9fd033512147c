"""FMix (Harris et al. 2020): mix two images through a thresholded low-frequency Fourier mask.

Per image: a random spectrum whose amplitudes decay as ``1 / f^decay_power`` is turned into
a smooth real image by an inverse FFT; its ``round(lam H W)`` highest pixels keep the image,
the rest come from the partner. Every image draws its own noise, lambda and partner; the
FFTs and the per-image ranking run batched (``torch.fft.irfft2`` and one ``argsort`` over
(B, H W)), with no loop over the batch and no host sync.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from keepmix._checks import check_positive, check_probability
from keepmix.base import Op, Params
from keepmix.functional.mixing import check_perm
from keepmix.functional.select import select
from keepmix.mixing import check_num_classes
from keepmix.sampling import bernoulli, beta, normal, permutation, uniform
from keepmix.targets import mix_targets

__all__ = ["FMix", "FMixParams", "fourier_noise", "spectrum_scale", "top_share_masks"]


@dataclass(frozen=True)
class FMixParams(Params):
    """FMix's masks and partners.

    ``masks`` (B, H, W) bool: True where an image keeps its own pixels (False: its partner's);
    ``lam`` (B,) float32: the drawn share ``lam ~ Beta(alpha, alpha)`` (1 where skipped by
    ``p``); the mask holds ``ceil(lam H W)`` or ``floor(lam H W)`` True pixels, and the targets
    use the mask's exact area, not ``lam``; ``perm`` (B,) int64: partners.
    """

    masks: Tensor
    lam: Tensor
    perm: Tensor


def spectrum_scale(height: int, width: int, decay_power: float, *, device=None, dtype=torch.float64) -> Tensor:
    """(H, W // 2 + 1) amplitude of each rfft2 bin: ``1 / max(f, 1 / max(H, W))^decay_power``.

    ``f = sqrt(fy^2 + fx^2)`` with ``fy`` the FFT frequencies of the rows (cycles per pixel,
    ``fftfreq(H)``) and ``fx`` those of the kept half of the columns (``rfftfreq(W)``); the
    floor ``1 / max(H, W)`` keeps the DC bin finite (the official ``get_spectrum``).
    """
    fy = torch.fft.fftfreq(height, device=device, dtype=dtype)[:, None]
    fx = torch.fft.rfftfreq(width, device=device, dtype=dtype)[None, :]
    freqs = torch.sqrt(fx * fx + fy * fy)
    return 1.0 / freqs.clamp_min(1.0 / max(height, width)) ** decay_power


def fourier_noise(draws: Tensor, height: int, width: int, decay_power: float) -> Tensor:
    """(B, H, W) low-frequency images from (B, H, W // 2 + 1, 2) standard normal draws.

    ``spectrum = scale * (draws[..., 0] + 1j draws[..., 1])`` with :func:`spectrum_scale`,
    then the real inverse FFT of size (H, W) (the official ``make_low_freq_image``, less its
    min-max rescaling, which changes no pixel's rank).
    """
    scale = spectrum_scale(height, width, decay_power, device=draws.device, dtype=draws.dtype)
    spectrum = torch.complex(draws[..., 0], draws[..., 1]) * scale
    return torch.fft.irfft2(spectrum, s=(height, width))


def top_share_masks(noise: Tensor, num: Tensor) -> Tensor:
    """(B, H, W) bool: True at exactly ``num[i]`` pixels of image i, those where
    ``noise[i]`` is highest (the official ``binarise_mask`` with ``max_soft=0``).

    One stable descending ``argsort`` over (B, H W) and a scatter of the ranks: ties (of
    probability 0 for continuous noise) go to the lower flat index, and the count is exact.
    """
    b, h, w = noise.shape
    flat = noise.reshape(b, h * w)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(h * w, device=noise.device).expand(b, h * w))
    return (ranks < num[:, None]).reshape(b, h, w)


class FMix(Op):
    """FMix (Harris et al. 2020, "FMix: Enhancing Mixed Sample Data Augmentation").

    Definition (the paper, and the official ecs-vlc/FMix ``fmix.py``), per image:

    1. a complex spectrum ``Z`` of the rfft2 shape (H, W // 2 + 1) with standard normal real
       and imaginary parts, scaled by ``1 / max(f, 1 / max(H, W))^decay_power`` (``f`` the
       bin's frequency in cycles per pixel); the grey image ``g = real(irfft2(Z))``;
    2. ``lam ~ Beta(alpha, alpha)``; the mask keeps the image's own pixels at the
       ``n`` pixels where ``g`` is highest and takes the partner's elsewhere, with
       ``n = ceil(lam H W)`` or ``floor(lam H W)`` on a fair coin (the official
       ``binarise_mask``: ``math.ceil`` if ``random.random() > 0.5`` else ``math.floor``).
       So ``lam`` is the share the image keeps of itself, as in the official
       ``x * mask + x[index] * (1 - mask)``;
    3. targets ``a y + (1 - a) y[perm]`` with ``a = n / (H W)``, the mask's exact area (the
       official loss weights by the drawn ``lam``, which differs from it by < 1 / (H W)).

    The spectrum is the paper's (a complex Gaussian ``Z`` over the whole frequency
    grid, scaled by ``1 / f^decay_power``, real part of its inverse DFT). The official
    ``make_low_freq_image`` differs by an indexing slip: ``spectrum[:, 0] + 1j * spectrum[:, 1]``
    on the (1, H, W // 2 + 1, 2) array takes rows 0 and 1 of the frequency grid instead of the
    real and imaginary planes, so its noise has no horizontal frequency above 1 / W (a 2-D FFT
    of its output is zero outside the columns 0 and +-1, checked by running the official
    function); its frequency floor, scaling and thresholding are followed here.

    The official code draws one mask and one lambda per batch; here each image draws its own
    (partners from one random permutation, as CutMix). Not offered: the official
    ``max_soft`` (soft mask edges; default 0) and ``reformulate`` (Beta(alpha + 1, alpha)).
    With probability ``1 - p`` an image is not mixed (its mask is all True, lam 1).

    Args:
        alpha: Beta concentration (> 0). Default 1 (the official ``trainer.py`` default).
        decay_power: the spectrum's decay exponent (> 0). Default 3 (the paper's and the official ``--f-decay`` default;
            larger values give smoother masks with fewer blobs).
        p: probability that an image is mixed (default 1, as the official code).
        num_classes: K, needed for (B,) integer labels.

    ``op(images, labels) -> (mixed images, float32 (B, K) soft targets)``.
    """

    mixes_labels = True
    params_type = FMixParams

    def __init__(self, alpha: float = 1.0, decay_power: float = 3.0, p: float = 1.0, num_classes: int | None = None) -> None:
        super().__init__()
        self.alpha = check_positive(alpha, "alpha")
        self.decay_power = check_positive(decay_power, "decay_power")
        self.p = check_probability(p)
        self.num_classes = check_num_classes(num_classes)

    def make_params(self, images, labels, saliency, generator) -> FMixParams:
        """Draw order: the spectrum draws (B, H, W // 2 + 1, 2) float64, lam (B,), the
        rounding coins (B,), applied (B,), perm (B,)."""
        b, _, h, w = images.shape
        dev = images.device
        draws = normal((b, h, w // 2 + 1, 2), device=dev, generator=generator, dtype=torch.float64)
        lam = beta(self.alpha, self.alpha, b, device=dev, generator=generator)
        coin = uniform(b, device=dev, generator=generator, dtype=torch.float64)
        applied = bernoulli(self.p, b, device=dev, generator=generator)
        lam = torch.where(applied, lam, torch.ones_like(lam))
        # float64: the same number as the official Python ``lam * mask.size``.
        share = lam.double() * (h * w)
        num = torch.where(coin > 0.5, share.ceil(), share.floor()).long()
        masks = top_share_masks(fourier_noise(draws, h, w, self.decay_power), num)
        return FMixParams(masks=masks, lam=lam, perm=permutation(b, device=dev, generator=generator))

    def _check_params(self, params: object, images: Tensor) -> None:
        super()._check_params(params, images)
        assert isinstance(params, FMixParams)
        b, _, h, w = images.shape
        m = params.masks
        if not isinstance(m, Tensor) or m.dtype != torch.bool or tuple(m.shape) != (b, h, w):
            got = f"{tuple(m.shape)} {m.dtype}" if isinstance(m, Tensor) else type(m).__name__
            raise ValueError(f"params.masks must be a bool tensor of shape (B, H, W) = {(b, h, w)}, got {got}")
        if m.device != images.device:
            raise ValueError(f"params.masks is on {m.device} but images are on {images.device}")
        check_perm(params.perm, b, "params.perm")

    def apply_params(self, images, labels, params):
        """Own pixels where ``params.masks``, the partner's elsewhere (both bitwise); targets
        by the mask's exact area."""
        h, w = images.shape[-2:]
        out = select(params.masks[:, None], images, images[params.perm])
        area = (params.masks.sum(dim=(1, 2)).double() / float(h * w)).float()
        y = labels.float()
        return out, mix_targets(y, y[params.perm], area)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, decay_power={self.decay_power}, p={self.p}, num_classes={self.num_classes}"
