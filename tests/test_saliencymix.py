"""SaliencyMix: the spectral residual against a numpy / scipy reference written from its
definition, the box centred on the partner's peak, lambda exact, a per-image loop, the contract."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch
from contract import K, check_op
from torch import nn

from keepmix.saliency import Saliency
from keepmix.saliencymix import SaliencyMix, spectral_residual_saliency


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ the spectral residual


def _resize_axis(a: np.ndarray, out: int, axis: int) -> np.ndarray:
    """Linear resampling along one axis with half-pixel centres, edges clamped (OpenCV's
    INTER_LINEAR): output i samples the input at (i + 0.5) * n / out - 0.5."""
    n = a.shape[axis]
    src = np.maximum((np.arange(out) + 0.5) * (n / out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(int), n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    t = src - i0
    shape = [1] * a.ndim
    shape[axis] = out
    t = t.reshape(shape)
    return np.take(a, i0, axis=axis) * (1 - t) + np.take(a, i1, axis=axis) * t


def _resize(a: np.ndarray, h: int, w: int) -> np.ndarray:
    return _resize_axis(_resize_axis(a, h, 0), w, 1)


def _spectral_reference(img: np.ndarray) -> np.ndarray:
    """Hou & Zhang's spectral residual on one (C, H, W) image, OpenCV's steps, in numpy."""
    c, h, w = img.shape
    x = img.astype(np.float64)
    grey = 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2] if c == 3 else x.mean(0)
    g = _resize(grey, 64, 64)
    spectrum = np.fft.fft2(g)
    log_amplitude = np.log(np.abs(spectrum))
    residual = log_amplitude - scipy.ndimage.uniform_filter(log_amplitude, size=3, mode="mirror")  # reflect-101
    s = np.abs(np.fft.ifft2(np.exp(residual + 1j * np.angle(spectrum))))
    s = scipy.ndimage.gaussian_filter(s, sigma=8.0, truncate=2.0 / 8.0, mode="mirror")  # 5 x 5, sigma 8
    s = s**2
    s = (s / s.max()).astype(np.float32)
    return _resize(s.astype(np.float64), h, w)


@pytest.mark.parametrize("case", ["cifar", "nonsquare-grey", "64", "downscale"])
def test_spectral_residual_matches_the_reference(cifar_uint8, case):
    g = _gen(1)
    if case == "cifar":
        x = cifar_uint8[:8]
    elif case == "nonsquare-grey":
        x = torch.rand(3, 1, 24, 40, generator=g)
    elif case == "64":
        x = torch.rand(2, 3, 64, 64, generator=g)
    else:
        x = torch.rand(2, 3, 96, 80, generator=g)
    got = spectral_residual_saliency(x)
    assert got.shape == (x.shape[0], *x.shape[-2:]) and got.dtype == torch.float32
    want = torch.from_numpy(np.stack([_spectral_reference(im) for im in x.numpy()])).float()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_spectral_residual_is_scale_invariant_and_finite(cifar_uint8):
    x = cifar_uint8[:4]
    torch.testing.assert_close(spectral_residual_saliency(x), spectral_residual_saliency(x.float() / 255), rtol=1e-5, atol=1e-6)
    flat = spectral_residual_saliency(torch.full((2, 3, 16, 16), 0.5))
    assert torch.isfinite(flat).all() and torch.equal(flat, torch.ones_like(flat))  # a constant image: a constant map
    assert torch.isfinite(spectral_residual_saliency(torch.zeros(1, 3, 8, 8))).all()


def test_spectral_residual_finds_an_odd_one_out():
    # A lone bright dot on a regular texture is the most salient thing in the image.
    _, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    x = (0.5 + 0.25 * torch.sin(xx * 0.8)).expand(1, 3, 64, 64).clone()
    x[..., 40:43, 12:15] = 1.5
    sal = spectral_residual_saliency(x)[0]
    y, xpos = divmod(int(sal.argmax()), 64)
    assert abs(y - 41) <= 3 and abs(xpos - 13) <= 3


# ------------------------------------------------------------------ the op


def _peak(m: torch.Tensor) -> tuple[int, int]:
    flat = int(np.argmax(m.numpy()))  # the first maximum, row-major, as the official np.argmax
    return divmod(flat, m.shape[-1])


def _reference(x, y, params):
    """A per-image loop: paste x[perm[i]] into the box; lam = 1 - area / (H W) exactly."""
    b, _, h, w = x.shape
    out = x.clone()
    t = torch.zeros(b, K)
    for i in range(b):
        j = int(params.perm[i])
        y1, x1, y2, x2 = params.boxes[i].tolist()
        out[i, :, y1:y2, x1:x2] = x[j, :, y1:y2, x1:x2]
        lam = torch.tensor(1.0 - (y2 - y1) * (x2 - x1) / (h * w), dtype=torch.float64).float()
        t[i, y[i]] += lam
        t[i, y[j]] += 1.0 - lam
    return out, t


def test_box_is_centred_on_the_partners_peak(cifar_uint8):
    x = cifar_uint8[:16].float() / 255
    y = torch.arange(16) % K
    op = SaliencyMix(num_classes=K)
    params = op.sample_params(x, y, generator=_gen(2))
    sal = spectral_residual_saliency(x)
    h, w = x.shape[-2:]
    for i in range(16):
        j = int(params.perm[i])
        py, px = _peak(sal[j])
        assert params.peaks[i].tolist() == [py, px]
        sh, sw = params.sizes[i].tolist()
        want = [max(py - sh // 2, 0), max(px - sw // 2, 0), min(py - sh // 2 + sh, h), min(px - sw // 2 + sw, w)]
        assert params.boxes[i].tolist() == want
    assert torch.equal(op.regions(params), params.boxes) and op.region == "pasted"
    # The mix itself against the loop, lambda exact.
    got, targets = op.transform(x, y, params)
    want_x, want_t = _reference(x, y, params)
    assert torch.equal(got, want_x)
    torch.testing.assert_close(targets, want_t, rtol=0, atol=1e-7)


def test_sizes_follow_lambda_and_lambda_is_the_exact_area():
    b, h, w = 64, 20, 28
    x = torch.rand(b, 3, h, w, generator=_gen(3))
    y = torch.arange(b)  # one class per image: each row holds its own and its partner's share
    op = SaliencyMix(num_classes=b)
    params = op.sample_params(x, y, generator=_gen(4))
    # lam from the same generator draw: sizes are floor(side sqrt(1 - lam)).
    from keepmix.sampling import beta

    cut = torch.sqrt(1 - beta(1.0, 1.0, b, generator=_gen(4)).double())
    assert torch.equal(params.sizes, torch.stack([(h * cut).floor().long(), (w * cut).floor().long()], 1))
    _, t = op.transform(x, y, params)
    areas = (params.boxes[:, 2] - params.boxes[:, 0]) * (params.boxes[:, 3] - params.boxes[:, 1])
    share = (areas.double() / (h * w)).float()  # the float32 nearest the exact pasted share
    rows = torch.arange(b)
    moved = params.perm != rows
    assert torch.equal(t[rows[moved], params.perm[moved]], share[moved])
    assert torch.equal(t[rows[moved], y[moved]], 1.0 - share[moved])  # the own share, one float32 subtraction away
    torch.testing.assert_close(t[rows[moved], y[moved]].double(), 1.0 - areas[moved].double() / (h * w), atol=1e-7, rtol=0)
    assert len({tuple(p) for p in params.peaks.tolist()}) > 1  # per-image peaks
    assert (areas < params.sizes.prod(1)).any()  # some boxes were clipped at the border


def test_official_per_batch_mode(cifar_uint8):
    x = cifar_uint8[:12].float() / 255
    y = torch.arange(12) % K
    op = SaliencyMix(num_classes=K, per_sample=False)
    params = op.sample_params(x, y, generator=_gen(5))
    sal = spectral_residual_saliency(x)
    assert (params.boxes == params.boxes[0]).all() and (params.sizes % 2 == 0).all()
    py, px = _peak(sal[int(params.perm[0])])  # saliency_bbox(images[rand_index[0]], lam)
    sh, sw = params.sizes[0].tolist()
    assert params.boxes[0].tolist() == [max(py - sh // 2, 0), max(px - sw // 2, 0), min(py + sh // 2, 32), min(px + sw // 2, 32)]
    got, targets = op.transform(x, y, params)
    want_x, want_t = _reference(x, y, params)
    assert torch.equal(got, want_x)
    torch.testing.assert_close(targets, want_t, rtol=0, atol=1e-7)


def test_gradient_saliency_map():
    x = torch.rand(6, 3, 16, 16, generator=_gen(6))
    y = torch.arange(6) % K
    given = torch.rand(6, 16, 16, generator=_gen(7))
    op = SaliencyMix(num_classes=K, saliency="gradient")
    params = op.sample_params(x, y, saliency=given, generator=_gen(8))
    for i in range(6):
        assert params.peaks[i].tolist() == list(_peak(given[int(params.perm[i])]))
    with pytest.raises(ValueError, match=r"saliency=.gradient.\) needs a saliency map"):
        op(x, y, generator=_gen())
    # A keepmix gradient map computed by the op itself.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, K))
    fn = Saliency(model)
    op = SaliencyMix(num_classes=K, saliency="gradient", saliency_fn=fn)
    params = op.sample_params(x, y, generator=_gen(8))
    sal = fn(x, y)
    for i in range(6):
        assert params.peaks[i].tolist() == list(_peak(sal[int(params.perm[i])]))
    assert "saliency='gradient'" in repr(op) and "saliency_fn=" in repr(op)
    assert not list(op.parameters())  # the model is not a submodule of the augmentation


def test_skipped_images_come_back_unchanged():
    x = torch.rand(8, 3, 16, 16, generator=_gen(9))
    y = torch.arange(8) % K
    out, t = SaliencyMix(p=0.0, num_classes=K)(x, y, generator=_gen())
    assert torch.equal(out, x) and torch.equal(t, torch.nn.functional.one_hot(y, K).float())


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"alpha": 0.0}, "alpha"),
        ({"p": 1.5}, "p"),
        ({"num_classes": 0}, "num_classes"),
        ({"saliency": "fine"}, "saliency"),
        ({"saliency_fn": lambda x, y: x[:, 0]}, "saliency_fn"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SaliencyMix(**kwargs)


def test_bad_input():
    with pytest.raises(TypeError, match="per_sample"):
        SaliencyMix(per_sample=1)
    with pytest.raises(TypeError, match="saliency_fn"):
        SaliencyMix(saliency="gradient", saliency_fn=3)
    with pytest.raises(ValueError, match="mixes labels"):
        SaliencyMix(num_classes=K)(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="saliency"):
        SaliencyMix(num_classes=K)(torch.rand(2, 3, 8, 8), torch.zeros(2, dtype=torch.int64), saliency=torch.rand(2, 8, 9))


@pytest.mark.parametrize(
    "make",
    [lambda: SaliencyMix(num_classes=K), lambda: SaliencyMix(alpha=0.5, p=0.5, num_classes=K, per_sample=False)],
    ids=["per-sample", "official"],
)
def test_contract(make):
    check_op(make)


def test_contract_with_the_spectral_map():
    # check_op passes its own saliency maps; the op's default map must pass too.
    class Spectral(SaliencyMix):
        def _resolve_saliency(self, images, labels, saliency):
            return spectral_residual_saliency(images)

    check_op(lambda: Spectral(num_classes=K))
