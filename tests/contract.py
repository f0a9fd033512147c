"""``check_op``: the contract every keepmix op is held to (like torchvision's ``check_transform``).

For one op it checks, on small batches:

* the inputs (images, labels, saliency) are untouched;
* dtype, device and channels_last are kept; labels pass through (the same object) for a
  label-preserving op, and a mixing op returns float32 (B, K) rows that sum to 1;
* the same seed gives the same output, and ``forward`` equals ``transform(sample_params)``;
* a batch of one equals a row of the batch run with the same parameters (not for ops that
  mix images of the batch);
* an empty batch (B = 0) passes through;
* non-square images, and uint8 / float16 / bfloat16 / float32 images work;
* the (C, H, W) path, and the PIL path, where the op offers them;
* CPU equals CUDA for the same parameters when a GPU is present.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from keepmix.base import Op
from keepmix.recursive import RecursiveMix

K = 5


def _gen(seed: int = 0, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def make_batch(b: int = 4, h: int = 16, w: int = 16, dtype: torch.dtype = torch.float32, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Images in the op's valid range ([0, 1] floats or uint8), labels in [0, K), a saliency map."""
    g = _gen(seed)
    if dtype == torch.uint8:
        x = torch.randint(0, 256, (b, 3, h, w), generator=g, dtype=torch.uint8)
    else:
        x = torch.rand(b, 3, h, w, generator=g).to(dtype)
    y = torch.randint(0, K, (b,), generator=g)
    s = torch.rand(b, h, w, generator=g)
    return x, y, s


def prime(op: Op, x: Tensor, y: Tensor) -> None:
    """Give a stateful op the state it has in training (RecursiveMix: one step of history)."""
    if isinstance(op, RecursiveMix):
        op.reset()
        hist = x.roll(1, 0)
        op.update(hist, y.roll(1, 0), torch.randn(x.shape[0], op.num_classes))


def _call(op: Op, x: Tensor, y: Tensor, s: Tensor, seed: int = 0):
    prime(op, x, y)
    return op(x, y, saliency=s, generator=_gen(seed, x.device.type))


def _images(out) -> Tensor:
    return out[0] if isinstance(out, tuple) else out


def _assert_same(a: Tensor, b: Tensor, what: str) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype, f"{what}: {a.shape} {a.dtype} vs {b.shape} {b.dtype}"
    assert torch.equal(a, b), f"{what}: outputs differ (max |diff| {(a.double() - b.double()).abs().max().item()})"


def check_op(make: Callable[[], Op]) -> None:
    """Run ``make()`` (a fresh op) through every check of the contract."""
    op = make()
    # A module like any other: movable and copyable (nn.Module's own methods are not shadowed).
    import copy

    op = copy.deepcopy(op.to("cpu"))
    x, y, s = make_batch()
    x0, y0, s0 = x.clone(), y.clone(), s.clone()

    # Output structure, inputs untouched.
    out = _call(op, x, y, s)
    assert torch.equal(x, x0) and torch.equal(y, y0) and torch.equal(s, s0), "the op modified its input"
    images, targets = out
    assert images.shape == x.shape and images.dtype == x.dtype and images.device == x.device
    if op.mixes_labels:
        assert targets.shape == (x.shape[0], K) and targets.dtype == torch.float32
        torch.testing.assert_close(targets.sum(1), torch.ones(x.shape[0]))
    else:
        assert targets is y, "a label-preserving op must return the labels it was given"
        prime(op, x, y)
        alone = op(x, saliency=s, generator=_gen())
        assert isinstance(alone, Tensor), "called without labels, an op returns images only"
        _assert_same(alone, images, "with and without labels")

    # Seeds, and forward = apply(sample_params).
    _assert_same(_images(_call(op, x, y, s, seed=0)), images, "same seed")
    prime(op, x, y)
    params = op.sample_params(x, y, saliency=s, generator=_gen())
    applied = op.transform(x, y, params)
    _assert_same(applied[0], images, "forward vs apply(sample_params)")
    if op.mixes_labels:
        _assert_same(applied[1], targets, "targets of forward vs apply(sample_params)")

    # A batch of one is a row of the batch (ops that mix within the batch excepted).
    if not op.mixes_labels:
        prime(op, x, y)
        params = op.sample_params(x, saliency=s, generator=_gen(3))
        whole = op.transform(x, None, params)
        for i in range(x.shape[0]):
            row = op.transform(x[i : i + 1], None, params.rows(slice(i, i + 1)))
            _assert_same(row[0], whole[i], f"row {i} alone vs in the batch")

    # Non-square images and every dtype.
    for dtype in (torch.uint8, torch.float16, torch.bfloat16, torch.float32):
        for h, w in ((16, 16), (12, 20)):
            xd, yd, sd = make_batch(h=h, w=w, dtype=dtype, seed=1)
            res = _images(_call(op, xd, yd, sd))
            assert res.shape == xd.shape and res.dtype == dtype, f"{dtype} {h}x{w}"
            if dtype.is_floating_point:
                assert torch.isfinite(res.float()).all()

    # channels_last in, channels_last out, same values.
    xc = x.contiguous(memory_format=torch.channels_last)
    res = _images(_call(op, xc, y, s))
    assert res.is_contiguous(memory_format=torch.channels_last), "channels_last was not kept"
    _assert_same(res.contiguous(), images, "channels_last vs contiguous")

    # An empty batch (B = 0) passes through, with (0, K) targets from a mixing op.
    xe, ye, se = x[:0], y[:0], s[:0]
    empty = op(xe, ye, saliency=se, generator=_gen())
    assert isinstance(empty, tuple) and empty[0].shape == xe.shape and empty[0].dtype == xe.dtype, "B = 0 images"
    if op.mixes_labels:
        assert empty[1].shape == (0, K) and empty[1].dtype == torch.float32, f"B = 0 targets: {tuple(empty[1].shape)}"
    else:
        assert empty[1] is ye, "B = 0: a label-preserving op returns the labels it was given"
        assert op(xe, saliency=se, generator=_gen()).shape == xe.shape

    # Single images and PIL images.
    if op.single_image:
        prime(op, x[:1], y[:1])
        one = op(x[:1], saliency=s[:1], generator=_gen(5))
        prime(op, x[:1], y[:1])
        single = op(x[0], saliency=s[0], generator=_gen(5))
        _assert_same(single, one[0], "(C, H, W) vs a batch of one")
        prime(op, x[:1], y[:1])
        single, label = op(x[0], y[0], saliency=s[0], generator=_gen(5))
        assert label is y[0] or torch.equal(label, y[0])
    if op.pil_image:
        from keepmix.single import pil_to_tensor, tensor_to_pil

        xu, _, su = make_batch(b=1, dtype=torch.uint8, seed=2)
        pil = tensor_to_pil(xu[0], "RGB")
        got = op(pil, saliency=su[0], generator=_gen(6))
        want = op(xu[0], saliency=su[0], generator=_gen(6))
        _assert_same(pil_to_tensor(got), want, "PIL vs tensor")

    # CPU and CUDA agree for the same parameters.
    if torch.cuda.is_available():
        prime(op, x, y)
        params = op.sample_params(x, y, saliency=s, generator=_gen())
        want = op.transform(x, y, params)
        cuda_params = params.to("cuda")
        op_cuda = make().cuda()
        prime(op_cuda, x.cuda(), y.cuda())
        got = op_cuda.transform(x.cuda(), y.cuda(), cuda_params)
        torch.testing.assert_close(got[0].cpu(), want[0], atol=1e-5, rtol=1e-5)
