"""GridMask: the shared contract, exact masks against a per-image reference, the schedule, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from contract import check_op

from keepmix.gridmask import GridMask, GridMaskParams, grid_masks


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def reference_dropped(h: int, w: int, d: int, ratio: float, dy: int, dx: int, mode: int) -> np.ndarray:
    """One image's dropped pixels, built the way the official ``Grid.__call__`` builds its mask
    (a 0/1 mask with horizontal and vertical stripes of width ceil(d * ratio) zeroed, starting
    at the offset and every d pixels; mode 1 inverts it), with the offset in image coordinates."""
    length = math.ceil(d * ratio)
    mask = np.ones((h, w), np.float32)
    for i in range(-1, h // d + 2):
        s = min(max(d * i + dy, 0), h)
        t = min(max(d * i + dy + length, 0), h)
        mask[s:t, :] = 0
    for i in range(-1, w // d + 2):
        s = min(max(d * i + dx, 0), w)
        t = min(max(d * i + dx + length, 0), w)
        mask[:, s:t] = 0
    if mode == 1:
        mask = 1 - mask
    return mask == 0  # the official multiplies the image by the mask: 0 is dropped


# --------------------------------------------------------------------------- contract


@pytest.mark.parametrize(
    "make",
    [
        lambda: GridMask(d_range=(4, 9), p=0.9),
        lambda: GridMask(d_range=(3, 12), ratio=0.4, rotate=360, mode=0, fill=(1, 2, 3), p=1.0),
    ],
    ids=["unrotated", "rotated-mode0"],
)
def test_contract(make):
    check_op(make)


# --------------------------------------------------------------------------- exact masks


@pytest.mark.parametrize("mode", [1, 0])
@pytest.mark.parametrize("hw", [(32, 32), (20, 37)])
@pytest.mark.parametrize("ratio", [0.6, 0.35])
def test_unrotated_masks_match_the_per_image_reference(mode, hw, ratio):
    h, w = hw
    op = GridMask(d_range=(3, 40), ratio=ratio, mode=mode, fill=-1.0, p=0.75)
    x = torch.rand(48, 3, h, w, generator=_gen(1))
    params = op.sample_params(x, generator=_gen(2))
    out = op.transform(x, None, params)
    dropped = op.masks(params, h, w)
    assert torch.equal(grid_masks(params, h, w, mode, rotated=True), dropped)  # the accelerator path
    assert params.unit.min() >= 3 and params.unit.max() < 40 and len(set(params.unit.tolist())) > 5  # per image
    assert 0 < int(params.applied.sum()) < 48
    for i in range(48):
        d = int(params.unit[i])
        assert int(params.stripe[i]) == math.ceil(d * ratio)
        dy, dx = (int(v) for v in params.offsets[i])
        assert 0 <= dy < d and 0 <= dx < d
        if bool(params.applied[i]):
            want = torch.from_numpy(reference_dropped(h, w, d, ratio, dy, dx, mode))
        else:
            want = torch.zeros(h, w, dtype=torch.bool)
        assert torch.equal(dropped[i], want), f"image {i}: d={d}, offsets=({dy}, {dx})"
        # The output: fill where dropped, the input (bitwise) elsewhere.
        assert torch.equal(out[i][:, want], torch.full((3, int(want.sum())), -1.0))
        assert torch.equal(out[i][:, ~want], x[i][:, ~want])


@pytest.mark.parametrize("ratio", [0.6, 0.5, 0.3])
def test_masked_fraction_is_the_definition_exactly(ratio):
    # Whole units (image side a multiple of d): mode 1 drops (d - l)^2 of every d^2, mode 0
    # the rest, whatever the offsets.
    d, n = 8, 4
    x = torch.rand(16, 1, d * n, d * n, generator=_gen(3))
    length = math.ceil(d * ratio)
    for mode, per_unit in ((1, (d - length) ** 2), (0, d * d - (d - length) ** 2)):
        op = GridMask(d_range=d, ratio=ratio, mode=mode, p=1.0)
        params = op.sample_params(x, generator=_gen(4))
        assert params.unit.eq(d).all() and params.offsets.unique().numel() > 1
        counts = op.masks(params, d * n, d * n).sum(dim=(1, 2))
        assert counts.eq(per_unit * n * n).all(), (mode, counts.tolist())
    # The paper's keep ratio k = 1 - (1 - r)^2 for mode 1 when d r is whole.
    op = GridMask(d_range=10, ratio=0.6, p=1.0)
    params = op.sample_params(torch.zeros(4, 1, 40, 40), generator=_gen(5))
    kept = 1.0 - op.masks(params, 40, 40).double().mean(dim=(1, 2))
    assert torch.equal(kept, torch.full((4,), 1 - (1 - 0.6) ** 2, dtype=torch.float64))


def test_stripe_width_is_the_official_ceil():
    for ratio in (0.1, 0.3, 0.35, 0.5, 0.6, 0.7, 0.9):
        op = GridMask(d_range=(1, 300), ratio=ratio, p=1.0)
        params = op.sample_params(torch.zeros(256, 1, 4, 4), generator=_gen(6))
        want = [math.ceil(d * ratio) for d in params.unit.tolist()]
        assert params.stripe.tolist() == want


# --------------------------------------------------------------------------- rotation


def _params(b, unit, stripe, offsets, angle):
    return GridMaskParams(
        applied=torch.ones(b, dtype=torch.bool),
        unit=torch.full((b,), unit),
        stripe=torch.full((b,), stripe),
        offsets=torch.tensor(offsets),
        angle=torch.tensor(angle, dtype=torch.float32),
    )


@pytest.mark.parametrize("hw", [(16, 16), (15, 22)])
def test_rotation_by_multiples_of_90_degrees(hw):
    h, w = hw
    base = _params(3, 7, 4, [[1, 2], [0, 0], [6, 3]], [0.0, 0.0, 0.0])
    m0 = grid_masks(base, h, w)
    assert torch.equal(grid_masks(base, h, w, rotated=True), m0)  # the accelerator path at angle 0
    assert torch.equal(grid_masks(base, h, w, mode=0, rotated=True), grid_masks(base, h, w, mode=0))
    # A full turn is the unrotated grid (through the rotated path); a half turn flips both axes.
    assert torch.equal(grid_masks(base.replace(angle=torch.full((3,), 360.0)), h, w), m0)
    assert torch.equal(grid_masks(base.replace(angle=torch.full((3,), 180.0)), h, w), m0.flip(1, 2))
    if h == w:  # a quarter turn counter-clockwise is rot90 (rows to columns)
        assert torch.equal(grid_masks(base.replace(angle=torch.full((3,), 90.0)), h, w), torch.rot90(m0, 1, dims=(1, 2)))


def test_rotated_masks_keep_the_dropped_share():
    # On a large image, a rotated grid drops (d - l)^2 / d^2 of the pixels up to boundary effects.
    d, length = 16, 10
    params = _params(4, d, length, [[3, 5]] * 4, [17.0, 33.0, 45.0, 71.0])
    share = grid_masks(params, 256, 256).double().mean(dim=(1, 2))
    want = (d - length) ** 2 / d**2
    assert torch.allclose(share, torch.full((4,), want, dtype=torch.float64), atol=0.01), share.tolist()
    # and the angles are drawn per image in the range
    op = GridMask(rotate=(10, 20), p=1.0)
    angles = op.sample_params(torch.zeros(64, 1, 8, 8), generator=_gen(7)).angle
    assert angles.min() >= 10 and angles.max() < 20 and angles.unique().numel() == 64


# --------------------------------------------------------------------------- probability and schedule


def test_probability_and_linear_schedule():
    x = torch.rand(256, 1, 8, 8, generator=_gen(8))
    op = GridMask(d_range=(3, 6), p=0.8)
    assert op.p == 0.8 and op.p_max == 0.8  # starts at the bound, as the official set_prob before it is called
    assert op.set_epoch(0, 240) == 0.0
    assert torch.equal(op(x, generator=_gen(9)), x)  # p = 0: nothing masked
    assert op.set_epoch(120, 240) == pytest.approx(0.4)
    frac = op.sample_params(x, generator=_gen(10)).applied.double().mean().item()
    assert abs(frac - 0.4) < 0.1
    assert op.set_epoch(240, 240) == pytest.approx(0.8)
    assert op.set_epoch(300, 240) == pytest.approx(0.8)  # capped at P
    assert op.schedule(0.25) == pytest.approx(0.2)
    assert op.schedule(3.0) == pytest.approx(0.8)
    assert "p=0.8" in repr(op) and "p_max=0.8" in repr(op)
    with pytest.raises(ValueError, match="epoch"):
        op.set_epoch(-1, 10)
    with pytest.raises(ValueError, match="max_epochs"):
        op.set_epoch(1, 0)
    with pytest.raises(ValueError, match="progress"):
        op.schedule(-0.5)


def test_labels_pass_through_and_single_image():
    op = GridMask(d_range=(4, 8), p=1.0)
    x = torch.rand(2, 3, 16, 16, generator=_gen(11))
    y = torch.tensor([1, 2])
    out, labels = op(x, y, generator=_gen(12))
    assert labels is y and out.shape == x.shape
    assert torch.equal(op(x[0], generator=_gen(13)), op(x[:1], generator=_gen(13))[0])
    assert op.region is None and op.regions(op.sample_params(x, generator=_gen(0))) is None


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"d_range": (0, 5)}, "d_range"),
        ({"d_range": (5, 5)}, "d_range"),
        ({"d_range": (8, 4)}, "d_range"),
        ({"d_range": (4.0, 8)}, "d_range"),
        ({"d_range": 0}, "d_range"),
        ({"d_range": "big"}, "d_range"),
        ({"ratio": 0.0}, "ratio"),
        ({"ratio": 1.0}, "ratio"),
        ({"ratio": True}, "ratio"),
        ({"rotate": -1}, "rotate"),
        ({"rotate": 400}, "rotate"),
        ({"rotate": (30, 10)}, "rotate"),
        ({"rotate": float("nan")}, "rotate"),
        ({"mode": 2}, "mode"),
        ({"mode": True}, "mode"),
        ({"p": 1.5}, "p"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=name):
        GridMask(**kwargs)


def test_bad_fill_and_params():
    with pytest.raises(TypeError, match="fill"):
        GridMask(fill="grey")
    with pytest.raises(TypeError, match="fill"):
        GridMask(fill=torch.zeros(3))
    with pytest.raises(ValueError, match="fill"):
        GridMask(fill=300, p=1.0)(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    op = GridMask(d_range=(3, 5), p=1.0)
    x = torch.rand(2, 3, 8, 8)
    params = op.sample_params(x, generator=_gen(0))
    with pytest.raises(ValueError, match="params.offsets"):
        op.transform(x, None, params.replace(offsets=params.offsets[:, :1]))
    with pytest.raises(ValueError, match="params.unit"):
        op.transform(x, None, params.replace(unit=torch.zeros(2, dtype=torch.long)))
    with pytest.raises(TypeError, match="GridMaskParams"):
        op.transform(x, None, object())
