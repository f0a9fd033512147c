"""Batched crop + flip + normalise, the on-device loader, and balanced subsets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from keepmix.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    DeviceLoader,
    class_balanced_subset,
    crop_flip,
    normalize,
    random_crop_flip,
    sample_crop_flip,
)


def _reference_crop_flip(x, offsets, flips, padding, mode):
    """The obvious per-image loop: pad, slice, flip."""
    h, w = x.shape[-2:]
    out = []
    for img, (dy, dx), f in zip(x, offsets.tolist(), flips.tolist(), strict=True):
        src = img[None].float() if mode != "zeros" else img[None]
        padded = F.pad(src, (padding,) * 4, mode="constant" if mode == "zeros" else mode).to(x.dtype)[0]
        crop = padded[:, dy : dy + h, dx : dx + w]
        out.append(crop.flip(-1) if f else crop)
    return torch.stack(out)


def _images(n, h=32, w=32, seed=0, c=3):
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_crop_flip_matches_per_image_loop(mode, dtype):
    x = _images(24, 12, 17).to(dtype)
    g = torch.Generator().manual_seed(1)
    offsets, flips = sample_crop_flip(24, 4, generator=g)
    out = crop_flip(x, offsets, flips, 4, mode)
    assert out.dtype == dtype and out.shape == x.shape
    assert torch.equal(out, _reference_crop_flip(x, offsets, flips, 4, mode))


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(5, 12),
    w=st.integers(5, 12),
    pad=st.integers(0, 4),
    seed=st.integers(0, 10_000),
    mode=st.sampled_from(["zeros", "reflect", "replicate"]),
)
def test_crop_flip_property(h, w, pad, seed, mode):
    x = _images(5, h, w, seed, c=2)
    g = torch.Generator().manual_seed(seed)
    offsets, flips = sample_crop_flip(5, pad, generator=g)
    assert int(offsets.min()) >= 0 and int(offsets.max()) <= 2 * pad
    ref = _reference_crop_flip(x, offsets, flips, pad, mode)
    assert torch.equal(crop_flip(x, offsets, flips, pad, mode), ref)


def test_crop_flip_identity_and_input_untouched():
    x = _images(4)
    before = x.clone()
    same = crop_flip(x, torch.full((4, 2), 4), torch.zeros(4, dtype=torch.bool), 4)
    assert torch.equal(same, x) and torch.equal(x, before)
    flipped = crop_flip(x, torch.full((4, 2), 4), torch.ones(4, dtype=torch.bool), 4)
    assert torch.equal(flipped, x.flip(-1))


def test_crop_flip_bad_arguments():
    x = _images(2, 8, 8)
    with pytest.raises(ValueError, match="offsets"):
        crop_flip(x, torch.zeros(3, 2, dtype=torch.int64), torch.zeros(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="flip"):
        crop_flip(x, torch.zeros(2, 2, dtype=torch.int64), torch.zeros(2))
    with pytest.raises(ValueError, match="reflect padding"):
        crop_flip(x, torch.zeros(2, 2, dtype=torch.int64), torch.zeros(2, dtype=torch.bool), 8, "reflect")
    with pytest.raises(ValueError, match="padding_mode"):
        crop_flip(x, torch.zeros(2, 2, dtype=torch.int64), torch.zeros(2, dtype=torch.bool), 2, "wrap")


def test_random_crop_flip_seeded():
    x = _images(16)
    a = random_crop_flip(x, generator=torch.Generator().manual_seed(5))
    b = random_crop_flip(x, generator=torch.Generator().manual_seed(5))
    c = random_crop_flip(x, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_normalize_matches_float64_reference(dtype):
    x = _images(6, 9, 7)
    out = normalize(x, CIFAR10_MEAN, CIFAR10_STD, dtype=dtype)
    m = torch.tensor(CIFAR10_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    s = torch.tensor(CIFAR10_STD, dtype=torch.float64).view(1, 3, 1, 1)
    ref = (x.double() / 255 - m) / s
    assert out.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)


def test_normalize_bad_arguments():
    with pytest.raises(TypeError, match="uint8"):
        normalize(torch.zeros(1, 3, 2, 2), CIFAR10_MEAN, CIFAR10_STD)
    with pytest.raises(ValueError, match="one value per channel"):
        normalize(_images(1), (0.5,), (0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="std must be > 0"):
        normalize(_images(1), CIFAR10_MEAN, (0.2, 0.0, 0.2))


# ----------------------------------------------------------------------------- DeviceLoader


def _data(n=103, classes=10, h=8, w=6):
    return _images(n, h, w, seed=7), torch.arange(n) % classes


def test_loader_batch_is_crop_flip_of_the_plan():
    x, y = _data()
    loader = DeviceLoader(x, y, 16, mean=CIFAR10_MEAN, std=CIFAR10_STD, seed=3)
    plan = loader.plan(0)
    batches = list(loader)
    assert len(batches) == len(loader) == 103 // 16
    for i, (xb, yb) in enumerate(batches):
        sl = slice(16 * i, 16 * (i + 1))
        idx = plan.order[sl]
        ref = _reference_crop_flip(x[idx], plan.offsets[sl], plan.flips[sl], 4, "zeros")
        assert torch.equal(yb, y[idx])
        torch.testing.assert_close(xb, normalize(ref, CIFAR10_MEAN, CIFAR10_STD), atol=0, rtol=0)
    # Offsets and flips are really random per image.
    assert plan.offsets.unique(dim=0).shape[0] > 20 and 0 < int(plan.flips.sum()) < 103


def test_every_sample_once_per_epoch_and_epochs_differ():
    x, y = _data()
    loader = DeviceLoader(x, y, 10, drop_last=False, normalize=False, seed=0)
    assert len(loader) == 11
    orders = []
    for _ in range(2):
        ys = torch.cat([yb for _, yb in loader])
        assert ys.numel() == 103
        orders.append(loader.plan(loader.epoch).order)
        assert sorted(orders[-1].tolist()) == list(range(103))
    assert loader.epoch == 1 and not torch.equal(orders[0], orders[1])


def test_determinism_per_seed_and_epoch():
    x, y = _data()
    a = DeviceLoader(x, y, 32, seed=11)
    b = DeviceLoader(x, y, 32, seed=11)
    c = DeviceLoader(x, y, 32, seed=12)
    a.set_epoch(4)
    b.set_epoch(4)
    c.set_epoch(4)
    for (xa, ya), (xb, yb), (xc, _) in zip(a, b, c, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and not torch.equal(xa, xc)
    assert torch.equal(a.batch(2, 1)[0], b.batch(2, 1)[0])


def test_batch_at_a_position_is_what_iteration_yields_there():
    """The resume mechanism: batch (epoch, i) of a fresh loader equals the i-th batch an
    uninterrupted iteration of that epoch yields, so a trainer needs only its position."""
    x, y = _data()
    full = DeviceLoader(x, y, 8, seed=5)
    full.set_epoch(2)
    expected = [b for b in full]
    fresh = DeviceLoader(x, y, 8, seed=5)
    for i, (xe, ye) in enumerate(expected):
        xb, yb = fresh.batch(2, i)
        assert torch.equal(xb, xe) and torch.equal(yb, ye)
    assert fresh.epoch == 0 and fresh.position == 0  # batch() does not move the loader
    assert not torch.equal(fresh.batch(3, 0)[0], expected[0][0])
    with pytest.raises(IndexError, match="out of range"):
        fresh.batch(2, len(expected))
    assert not hasattr(fresh, "load_state_dict")  # one resume mechanism: the position


def test_set_epoch_restarts_a_finished_or_other_epoch():
    x, y = _data(40)
    loader = DeviceLoader(x, y, 8, seed=1)
    first = [b[1] for b in loader]
    loader.set_epoch(0)
    again = [b[1] for b in loader]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True)) and loader.epoch == 0
    it = iter(loader)  # epoch 0 finished: iterating goes on to epoch 1
    next(it)
    assert loader.epoch == 1 and loader.position == 1


def test_sharding_is_disjoint_and_covers_the_permutation():
    x, y = _data(103)
    ids = torch.arange(103)
    per_rank = []
    for rank in range(3):
        loader = DeviceLoader(x, ids, 5, seed=9, rank=rank, world_size=3, normalize=False)
        assert len(loader) == (102 // 3) // 5
        per_rank.append(loader.plan(0).order)
    assert all(o.numel() == 34 for o in per_rank)
    union = torch.cat(per_rank)
    assert union.unique().numel() == 102  # disjoint; one image cut so the ranks stay even
    single = DeviceLoader(x, ids, 5, seed=9).plan(0).order
    assert torch.equal(torch.stack(per_rank, 1).reshape(-1), single[:102])
    # Evaluation keeps every image.
    evals = [DeviceLoader(x, ids, 5, train=False, rank=r, world_size=2).plan(0).order for r in range(2)]
    assert sorted(torch.cat(evals).tolist()) == list(range(103))


def test_eval_mode_is_ordered_unaugmented_and_keeps_the_tail():
    x, y = _data()
    loader = DeviceLoader(x, y, 25, train=False, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    xs, ys = zip(*loader, strict=True)
    assert len(loader) == 5 and xs[-1].shape[0] == 3
    assert torch.equal(torch.cat(ys), y)
    assert torch.equal(torch.cat(xs), normalize(x, CIFAR10_MEAN, CIFAR10_STD))


def test_uint8_mode_channels_last_dtype_and_scaling():
    x, y = _data()
    raw = DeviceLoader(x, y, 16, normalize=False, crop_padding=0, flip=False, seed=2)
    xb, yb = next(iter(raw))
    assert xb.dtype == torch.uint8 and torch.equal(xb, x[raw.plan(0).order[:16]])
    cl = DeviceLoader(x, y, 16, train=False, dtype=torch.bfloat16, channels_last=True)
    xb, _ = next(iter(cl))
    assert xb.dtype == torch.bfloat16 and xb.is_contiguous(memory_format=torch.channels_last)
    scaled = next(iter(DeviceLoader(x, y, 16, train=False)))[0]
    torch.testing.assert_close(scaled, x[:16].float() / 255)


def test_loader_does_not_modify_inputs_and_validates():
    x, y = _data()
    xc, yc = x.clone(), y.clone()
    for _ in DeviceLoader(x, y, 16, mean=CIFAR10_MEAN, std=CIFAR10_STD):
        pass
    assert torch.equal(x, xc) and torch.equal(y, yc)
    with pytest.raises(ValueError, match="uint8"):
        DeviceLoader(x.float(), y, 4)
    with pytest.raises(ValueError, match="labels"):
        DeviceLoader(x, y[:-1], 4)
    with pytest.raises(ValueError, match="batch_size"):
        DeviceLoader(x, y, 0)
    with pytest.raises(ValueError, match="rank"):
        DeviceLoader(x, y, 4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="cannot fill one batch"):
        DeviceLoader(x, y, 200)
    with pytest.raises(ValueError, match="both mean and std"):
        DeviceLoader(x, y, 4, mean=CIFAR10_MEAN)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_loader_on_cuda_matches_cpu():
    x, y = _data()
    cpu = DeviceLoader(x, y, 16, mean=CIFAR10_MEAN, std=CIFAR10_STD, seed=4)
    gpu = DeviceLoader(x, y, 16, mean=CIFAR10_MEAN, std=CIFAR10_STD, seed=4, device="cuda")
    assert gpu.images.is_cuda and x.device.type == "cpu"
    for (xa, ya), (xb, yb) in zip(cpu, gpu, strict=True):
        assert xb.is_cuda and yb.is_cuda
        assert torch.equal(ya, yb.cpu())
        torch.testing.assert_close(xa, xb.cpu(), atol=1e-6, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_crop_flip_on_cuda_matches_reference():
    x = _images(32).cuda()
    offsets, flips = sample_crop_flip(32, 4, generator=torch.Generator().manual_seed(0))
    for mode in ("zeros", "reflect", "replicate"):
        out = crop_flip(x, offsets, flips, 4, mode)
        assert out.is_cuda
        assert torch.equal(out.cpu(), _reference_crop_flip(x.cpu(), offsets, flips, 4, mode))


# ----------------------------------------------------------------------------- subsets


def test_class_balanced_subset_is_balanced_deterministic_and_sorted():
    labels = torch.randint(0, 7, (500,), generator=torch.Generator().manual_seed(0))
    smallest = int(torch.bincount(labels).min())
    idx = class_balanced_subset(labels, 7 * 30, seed=1)
    assert idx.dtype == torch.int64 and idx.numel() == 210 and idx.unique().numel() == 210
    assert torch.equal(idx, idx.sort().values)
    assert torch.bincount(labels[idx]).tolist() == [30] * 7
    assert torch.equal(idx, class_balanced_subset(labels, 210, seed=1))
    assert not torch.equal(idx, class_balanced_subset(labels, 210, seed=2))
    full = class_balanced_subset(labels, 7 * smallest, seed=0)
    assert torch.bincount(labels[full]).tolist() == [smallest] * 7


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 1000), k=st.integers(1, 6), per=st.integers(1, 5))
def test_class_balanced_subset_property(seed, k, per):
    labels = torch.arange(k).repeat_interleave(8)[torch.randperm(8 * k, generator=torch.Generator().manual_seed(seed))]
    idx = class_balanced_subset(labels, k * per, seed)
    assert torch.bincount(labels[idx], minlength=k).tolist() == [per] * k


def test_class_balanced_subset_unreachable():
    labels = torch.tensor([0] * 5 + [1] * 3)
    with pytest.raises(ValueError, match="multiple of the 2 classes"):
        class_balanced_subset(labels, 5, 0)
    with pytest.raises(ValueError, match="at most 3 per class"):
        class_balanced_subset(labels, 8, 0)
    with pytest.raises(ValueError, match="positive int"):
        class_balanced_subset(labels, 0, 0)
    with pytest.raises(ValueError, match="1-D integer"):
        class_balanced_subset(labels.float(), 2, 0)
