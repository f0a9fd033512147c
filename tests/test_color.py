"""Point ops against PIL's ImageOps / ImageEnhance on real CIFAR-10 images (bit-exact on uint8)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

# the module, not the re-exported function ``keepmix.functional.color``
C = importlib.import_module("keepmix.functional.color")


def to_pil(img: torch.Tensor) -> Image.Image:
    arr = img.permute(1, 2, 0).numpy()
    return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)


def from_pil(im: Image.Image) -> torch.Tensor:
    a = torch.from_numpy(np.array(im))
    return a[None] if a.ndim == 2 else a.permute(2, 0, 1)


def pil_batch(x: torch.Tensor, fn) -> torch.Tensor:
    return torch.stack([from_pil(fn(to_pil(img), i)) for i, img in enumerate(x)])


ENHANCERS = {
    "brightness": ImageEnhance.Brightness,
    "color": ImageEnhance.Color,
    "contrast": ImageEnhance.Contrast,
    "sharpness": ImageEnhance.Sharpness,
}


@pytest.mark.parametrize("name", ["invert", "autocontrast", "equalize"])
def test_parameter_free_ops_match_pil_exactly(cifar_uint8, name):
    ours = getattr(C, name)(cifar_uint8)
    ref = pil_batch(cifar_uint8, lambda im, i: getattr(ImageOps, name)(im))
    assert torch.equal(ours, ref)


def test_grayscale_and_smooth_match_pil_exactly(cifar_uint8):
    assert torch.equal(C.grayscale(cifar_uint8), pil_batch(cifar_uint8, lambda im, i: im.convert("L")))
    assert torch.equal(C.smooth(cifar_uint8), pil_batch(cifar_uint8, lambda im, i: im.filter(ImageFilter.SMOOTH)))


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 6, 8])
def test_posterize_matches_pil_exactly(cifar_uint8, bits):
    ref = pil_batch(cifar_uint8, lambda im, i: ImageOps.posterize(im, bits))
    assert torch.equal(C.posterize(cifar_uint8, bits), ref)


@pytest.mark.parametrize("threshold", [0, 1, 77.5, 128, 254.2, 255, 256])
def test_solarize_matches_pil_exactly(cifar_uint8, threshold):
    ref = pil_batch(cifar_uint8, lambda im, i: ImageOps.solarize(im, threshold))
    assert torch.equal(C.solarize(cifar_uint8, threshold), ref)


@pytest.mark.parametrize("name", list(ENHANCERS))
@pytest.mark.parametrize("factor", [0.0, 0.1, 0.37, 0.9, 1.0, 1.25, 1.9])
def test_enhance_matches_pil_exactly(cifar_uint8, name, factor):
    ref = pil_batch(cifar_uint8, lambda im, i: ENHANCERS[name](im).enhance(factor))
    assert torch.equal(getattr(C, name)(cifar_uint8, factor), ref)


@pytest.mark.parametrize("name", list(ENHANCERS))
def test_enhance_per_image_factors_match_pil(cifar_uint8, name):
    factors = torch.linspace(0.0, 1.99, cifar_uint8.shape[0])
    ref = pil_batch(cifar_uint8, lambda im, i: ENHANCERS[name](im).enhance(float(factors[i])))
    assert torch.equal(getattr(C, name)(cifar_uint8, factors), ref)


def test_per_image_posterize_and_solarize_match_single_image_calls(cifar_uint8):
    x = cifar_uint8[:16]
    bits = 1 + torch.arange(16) % 8
    thr = torch.linspace(0, 256, 16)
    post = C.posterize(x, bits)
    sol = C.solarize(x, thr)
    for i in range(16):
        assert torch.equal(post[i : i + 1], C.posterize(x[i : i + 1], int(bits[i])))
        assert torch.equal(sol[i : i + 1], C.solarize(x[i : i + 1], float(thr[i])))


def test_single_channel_images_match_pil_l_mode(cifar_uint8):
    grey = C.grayscale(cifar_uint8[:16])
    for name in ENHANCERS:
        ref = pil_batch(grey, lambda im, i, name=name: ENHANCERS[name](im).enhance(0.4))
        assert torch.equal(getattr(C, name)(grey, 0.4), ref), name
    assert torch.equal(C.equalize(grey), pil_batch(grey, lambda im, i: ImageOps.equalize(im)))
    assert torch.equal(C.autocontrast(grey), pil_batch(grey, lambda im, i: ImageOps.autocontrast(im)))


@pytest.mark.parametrize(
    "name, arg, tol",
    [
        ("invert", None, 0.0),
        ("equalize", None, 0.0),
        ("posterize", 3, 0.0),
        ("solarize", 100.0, 0.0),
        ("autocontrast", None, 1.0),
        ("brightness", 0.6, 1.0),
        ("brightness", 1.7, 1.0),
        ("color", 0.3, 1.5),
        ("color", 1.8, 1.5),
        ("contrast", 0.3, 1.5),
        ("contrast", 1.8, 1.5),
        ("sharpness", 0.2, 1.5),
        ("sharpness", 1.9, 1.5),
    ],
)
def test_float_path_agrees_with_uint8_path_within_rounding(cifar_uint8, name, arg, tol):
    fn = getattr(C, name)
    args = () if arg is None else (arg,)
    xf = cifar_uint8.float() / 255.0
    out_f = fn(xf, *args)
    out_u = fn(cifar_uint8, *args)
    assert out_f.dtype == torch.float32
    assert (out_f * 255.0 - out_u.float()).abs().max().item() <= tol + 1e-3
    assert out_f.min() >= 0 and out_f.max() <= 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_float_dtypes_are_kept(cifar_uint8, dtype):
    x = (cifar_uint8[:4].double() / 255).to(dtype)
    ref = C.contrast(cifar_uint8[:4].float() / 255, 1.5)
    out = C.contrast(x, 1.5)
    assert out.dtype == dtype
    assert (out.float() - ref).abs().max() < 2e-2
    for fn in (C.equalize, C.autocontrast, C.invert, lambda t: C.posterize(t, 4), lambda t: C.sharpness(t, 0.5)):
        assert fn(x).dtype == dtype


def test_inputs_are_not_modified(cifar_uint8):
    x = cifar_uint8[:8].clone()
    xf = x.float() / 255
    before, before_f = x.clone(), xf.clone()
    for fn in (
        C.invert,
        C.autocontrast,
        C.equalize,
        lambda t: C.posterize(t, 2),
        lambda t: C.solarize(t, 50),
        lambda t: C.brightness(t, 0.5),
        lambda t: C.color(t, 0.5),
        lambda t: C.contrast(t, 0.5),
        lambda t: C.sharpness(t, 0.5),
        C.smooth,
    ):
        fn(x)
        fn(xf)
    assert torch.equal(x, before) and torch.equal(xf, before_f)


def test_constant_images_are_left_alone_by_autocontrast_and_equalize():
    x = torch.full((2, 3, 8, 8), 77, dtype=torch.uint8)
    assert torch.equal(C.autocontrast(x), x)
    assert torch.equal(C.equalize(x), x)
    xf = x.float() / 255
    assert torch.equal(C.autocontrast(xf), xf)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    levels=st.integers(1, 256),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
)
def test_equalize_and_autocontrast_match_pil_on_random_images(seed, levels, h, w):
    g = torch.Generator().manual_seed(seed)
    low = int(torch.randint(0, 257 - levels, (1,), generator=g))
    x = torch.randint(low, low + levels, (3, 3, h, w), generator=g, dtype=torch.int64).to(torch.uint8)
    assert torch.equal(C.equalize(x), pil_batch(x, lambda im, i: ImageOps.equalize(im)))
    assert torch.equal(C.autocontrast(x), pil_batch(x, lambda im, i: ImageOps.autocontrast(im)))
    f = float(torch.rand((), generator=g)) * 2
    assert torch.equal(C.sharpness(x, f), pil_batch(x, lambda im, i: ImageEnhance.Sharpness(im).enhance(f)))


def test_bad_input_is_rejected_with_clear_errors(cifar_uint8):
    x = cifar_uint8[:2]
    with pytest.raises(ValueError, match="bits"):
        C.posterize(x, 9)
    with pytest.raises(ValueError, match="bits"):
        C.posterize(x, 0)
    with pytest.raises(ValueError, match="bits"):
        C.posterize(x, torch.tensor([2.0, 2.5]))
    with pytest.raises(ValueError, match="threshold"):
        C.solarize(x, -1)
    with pytest.raises(ValueError, match="factor"):
        C.brightness(x, -0.1)
    with pytest.raises(ValueError, match="factor"):
        C.contrast(x, torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        C.color(x, torch.ones(3))
    with pytest.raises(ValueError, match="channels"):
        C.color(torch.zeros(2, 4, 5, 5), 0.5)
    with pytest.raises(TypeError, match="factor"):
        C.sharpness(x, "0.5")
    with pytest.raises(ValueError, match="images"):
        C.equalize(x[0])
    with pytest.raises(TypeError, match="images"):
        C.invert(x.long())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_exactly(cifar_uint8):
    x = cifar_uint8[:16]
    f = torch.linspace(0, 1.9, 16)
    for fn in (
        C.invert,
        C.autocontrast,
        C.equalize,
        lambda t: C.posterize(t, 1 + torch.arange(16) % 8),
        lambda t: C.solarize(t, 100),
        lambda t: C.brightness(t, f),
        lambda t: C.color(t, f),
        lambda t: C.contrast(t, f),
        lambda t: C.sharpness(t, f),
    ):
        out = fn(x.cuda())
        assert out.device.type == "cuda" and out.dtype == torch.uint8
        assert torch.equal(out.cpu(), fn(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8, torch.int64])
def test_bitwise_select_equals_where_bit_for_bit(dtype):
    from keepmix.functional.select import select as _select

    g = torch.Generator().manual_seed(0)
    a = (torch.randn(4, 3, 5, 6, generator=g) * 300).to(dtype)
    b = (torch.randn(4, 3, 5, 6, generator=g) * 300).to(dtype)
    if dtype.is_floating_point:  # special values must come through unchanged
        a[0, 0, 0, :4] = torch.tensor([float("nan"), -0.0, float("inf"), -float("inf")]).to(dtype)
        b[0, 0, 1, :2] = torch.tensor([-0.0, float("nan")]).to(dtype)
    bits = (
        (lambda t: t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])) if dtype.is_floating_point else (lambda t: t)
    )
    for cond in (
        torch.rand(4, 3, 5, 6, generator=g) < 0.5,  # same shape
        torch.rand(4, 1, 5, 6, generator=g) < 0.5,  # broadcast over channels
        torch.rand(4, 3, 5, 6, generator=g)[:1] < 0.5,
    ):  # broadcast over the batch
        assert torch.equal(bits(_select(cond, a, b)), bits(torch.where(cond, a, b)))
    # a condition larger than both values, and values that broadcast against each other
    cond = torch.rand(4, 3, 5, 6, generator=g) < 0.5
    assert torch.equal(bits(_select(cond, a[:, :1], b[:1])), bits(torch.where(cond, a[:, :1], b[:1])))


def test_float_solarize_and_autocontrast_keep_their_exact_values():
    # solarize: exactly 1 - x at and above the threshold, x below (values outside [0, 1] too);
    # autocontrast: (x - lo) / (hi - lo), and constant channels untouched (-0.0 included).
    x = torch.tensor([-0.5, -0.0, 0.0, 0.2, 0.4999, 0.5, 0.75, 1.0, 1.5]).view(1, 1, 3, 3)
    t = torch.tensor([127.5])
    want = torch.where(x >= 0.5, 1.0 - x, x)
    assert torch.equal(C.solarize(x, t), want)
    y = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    y[1, 2] = -0.0
    lo, hi = y.amin(dim=(2, 3), keepdim=True), y.amax(dim=(2, 3), keepdim=True)
    out = C.autocontrast(y)
    assert torch.equal(out[0], ((y - lo) / (hi - lo))[0])
    assert torch.equal(out[1, 2].view(torch.int32), y[1, 2].view(torch.int32))
