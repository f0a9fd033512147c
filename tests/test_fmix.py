"""FMix: the shared contract, exact mask areas, a per-image reference of the official mask, targets by area."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from contract import K, check_op

from keepmix.fmix import FMix, fourier_noise, spectrum_scale, top_share_masks
from keepmix.sampling import beta, normal, uniform


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _redraw(b: int, h: int, w: int, alpha: float, seed: int):
    """FMix's first draws, in its documented order: spectrum draws, lam, rounding coins."""
    g = _gen(seed)
    draws = normal((b, h, w // 2 + 1, 2), generator=g, dtype=torch.float64)
    lam = beta(alpha, alpha, b, generator=g)
    coin = uniform(b, generator=g, dtype=torch.float64)
    return draws, lam, coin


def reference_mask(draws: np.ndarray, lam: float, coin: float, h: int, w: int, decay_power: float) -> np.ndarray:
    """One image's mask from the paper's definition, step by step as the official fmix.py's
    ``fftfreqnd`` (its odd-width slice included), ``get_spectrum`` (the 1 / max(W, H) floor),
    ``np.fft.irfftn``, min-max rescaling and ``binarise_mask`` (descending argsort, ceil or
    floor on a coin) do it; the complex plane is built from the real and imaginary draws, as
    the paper defines it (see FMix's docstring for the official indexing slip)."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[: w // 2 + 2] if w % 2 == 1 else np.fft.fftfreq(w)[: w // 2 + 1]
    freqs = np.sqrt(fx * fx + fy * fy)
    scale = 1.0 / np.maximum(freqs, 1.0 / max(w, h)) ** decay_power
    param = draws
    if w % 2 == 1:  # the official odd-width spectrum has one more column, which irfftn drops
        param = np.concatenate([param, np.zeros((h, 1, 2))], axis=1)
    spectrum = scale * param[..., 0] + 1j * scale * param[..., 1]
    grey = np.real(np.fft.irfftn(spectrum, (h, w), axes=(0, 1)))
    grey = (grey - grey.min()) / (grey - grey.min()).max()
    idx = grey.reshape(-1).argsort()[::-1]
    num = math.ceil(lam * grey.size) if coin > 0.5 else math.floor(lam * grey.size)
    mask = np.zeros(h * w)
    mask[idx[:num]] = 1
    return mask.reshape(h, w).astype(bool)


# --------------------------------------------------------------------------- contract


@pytest.mark.parametrize(
    "make",
    [lambda: FMix(num_classes=K), lambda: FMix(alpha=0.4, decay_power=2.0, p=0.7, num_classes=K)],
    ids=["default", "alpha0.4-p0.7"],
)
def test_contract(make):
    check_op(make)


# --------------------------------------------------------------------------- exact areas and the reference


@pytest.mark.parametrize("hw", [(32, 32), (24, 17)])
@pytest.mark.parametrize("alpha", [1.0, 0.3])
def test_mask_area_is_the_drawn_share_to_the_pixel(hw, alpha):
    h, w = hw
    b = 64
    op = FMix(alpha=alpha, num_classes=10)
    x = torch.rand(b, 3, h, w, generator=_gen(1))
    params = op.sample_params(x, torch.zeros(b, dtype=torch.long), generator=_gen(2))
    _, lam, coin = _redraw(b, h, w, alpha, seed=2)
    assert torch.equal(params.lam, lam)
    share = lam.double() * (h * w)
    want = torch.where(coin > 0.5, share.ceil(), share.floor()).long()
    counts = params.masks.sum(dim=(1, 2))
    assert torch.equal(counts, want), (counts - want).abs().max()
    assert ((counts.double() / (h * w) - lam.double()).abs() < 1.0 / (h * w)).all()
    assert lam.unique().numel() == b  # one lambda per image
    # masks differ per image (their own noise; all-True / all-False masks aside)
    mixed = params.masks[(counts > 0) & (counts < h * w)]
    assert len({m.numpy().tobytes() for m in mixed}) == mixed.shape[0] > b // 2


@pytest.mark.parametrize("hw", [(32, 32), (16, 23)])
def test_masks_match_the_official_definition_per_image(hw):
    h, w = hw
    b = 24
    op = FMix(alpha=1.0, decay_power=3.0, num_classes=10)
    x = torch.rand(b, 3, h, w, generator=_gen(3))
    params = op.sample_params(x, torch.zeros(b, dtype=torch.long), generator=_gen(4))
    draws, lam, coin = _redraw(b, h, w, 1.0, seed=4)
    noise = fourier_noise(draws, h, w, 3.0)
    for i in range(b):
        want = reference_mask(draws[i].numpy(), float(lam[i]), float(coin[i]), h, w, 3.0)
        assert torch.equal(params.masks[i], torch.from_numpy(want)), f"image {i}"
        # the grey image itself, up to the official min-max rescaling
        fy = np.fft.fftfreq(h)[:, None]
        fx = np.fft.rfftfreq(w)[None, :]
        scale = 1.0 / np.maximum(np.sqrt(fx**2 + fy**2), 1.0 / max(h, w)) ** 3.0
        grey = np.fft.irfftn(scale * (draws[i, ..., 0].numpy() + 1j * draws[i, ..., 1].numpy()), (h, w), axes=(0, 1))
        np.testing.assert_allclose(noise[i].numpy(), grey, rtol=1e-10, atol=1e-10 * np.abs(grey).max())


def test_spectrum_and_top_share_helpers():
    s = spectrum_scale(8, 6, 3.0)
    assert s.shape == (8, 4)
    assert s[0, 0] == 8.0**3  # DC floored at 1 / max(H, W)
    assert s[0, 1] == pytest.approx(6.0**3)  # f = 1/6
    assert s[4, 3] == pytest.approx(1.0 / math.sqrt(0.25 + 0.25) ** 3)  # the Nyquist corner
    noise = torch.tensor([[[0.1, 0.9], [0.5, 0.3]], [[4.0, 3.0], [2.0, 1.0]]])
    m = top_share_masks(noise, torch.tensor([2, 0]))
    assert m.tolist() == [[[False, True], [True, False]], [[False, False], [False, False]]]
    # higher decay: smoother noise (less energy in the upper half of frequencies)
    d = normal((4, 32, 17, 2), generator=_gen(5), dtype=torch.float64)
    rough, smooth = fourier_noise(d, 32, 32, 1.0), fourier_noise(d, 32, 32, 4.0)

    def tv(g):
        g = g / g.std(dim=(1, 2), keepdim=True)
        return (g.diff(dim=1).abs().mean() + g.diff(dim=2).abs().mean()).item()

    assert tv(smooth) < tv(rough)


# --------------------------------------------------------------------------- images and targets


def test_images_and_targets_by_exact_area():
    b, h, w, k = 16, 20, 28, 7
    op = FMix(alpha=1.0, num_classes=k)
    x = torch.rand(b, 3, h, w, generator=_gen(6))
    y = torch.randint(0, k, (b,), generator=_gen(7))
    params = op.sample_params(x, y, generator=_gen(8))
    out, targets = op.transform(x, y, params)
    onehot = torch.nn.functional.one_hot(y, k).float()
    for i in range(b):
        j = int(params.perm[i])
        m = params.masks[i]
        assert torch.equal(out[i][:, m], x[i][:, m]) and torch.equal(out[i][:, ~m], x[j][:, ~m])
        a = float(m.sum()) / (h * w)  # the own image's exact area
        want = a * onehot[i] + (1 - a) * onehot[j]
        torch.testing.assert_close(targets[i], want, rtol=0, atol=1e-6)
    # forward = apply(sample_params); uint8 stays exact
    xu = (x * 255).round().to(torch.uint8)
    outu, _ = op(xu, y, generator=_gen(8))
    pu = op.sample_params(xu, y, generator=_gen(8))
    assert torch.equal(outu, torch.where(pu.masks[:, None], xu, xu[pu.perm]))


def test_probability_zero_and_soft_labels():
    x = torch.rand(8, 3, 16, 16, generator=_gen(9))
    soft = torch.softmax(torch.randn(8, 4, generator=_gen(10)), dim=1)
    out, targets = FMix(p=0.0)(x, soft, generator=_gen(11))
    assert torch.equal(out, x)
    torch.testing.assert_close(targets, soft)
    params = FMix(p=0.5).sample_params(x, soft, generator=_gen(12))
    skipped = params.lam == 1
    assert skipped.any() and (~skipped).any()
    assert params.masks[skipped].all()


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": -1.0}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"decay_power": 0.0}, "decay_power"),
        ({"decay_power": float("inf")}, "decay_power"),
        ({"p": 1.5}, "p"),
        ({"num_classes": 0}, "num_classes"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=name):
        FMix(**kwargs)


def test_bad_calls_and_params():
    op = FMix(num_classes=3)
    x = torch.rand(4, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match="labels"):
        op(x)
    with pytest.raises(ValueError, match="mixes images"):
        op(x[0], y[0])
    params = op.sample_params(x, y, generator=_gen(0))
    with pytest.raises(ValueError, match="params.masks"):
        op.transform(x, y, params.replace(masks=params.masks.float()))
    with pytest.raises(ValueError, match="params.masks"):
        op.transform(x, y, params.replace(masks=params.masks[:, :4]))
    with pytest.raises(ValueError, match="params.perm"):
        op.transform(x, y, params.replace(perm=torch.tensor([0, 1, 2, 9])))
    assert op.region is None and op.regions(params) is None
    assert "decay_power=3.0" in repr(op)
