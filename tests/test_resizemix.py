"""ResizeMix: the shared contract, a per-image F.interpolate reference, the area lambda, Keep placement."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from contract import K, check_op

from keepmix.functional.boxes import box_areas
from keepmix.placers import KeepPlacer, UniformPlacer
from keepmix.resizemix import ResizeMix
from keepmix.sampling import uniform


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def reference(x: torch.Tensor, boxes: torch.Tensor, perm: torch.Tensor, mode: str) -> torch.Tensor:
    """A straightforward per-image loop: the partner resized with F.interpolate into the box."""
    out = x.clone()
    for i in range(x.shape[0]):
        y1, x1, y2, x2 = (int(v) for v in boxes[i])
        if y2 > y1 and x2 > x1:
            src = x[int(perm[i])][None]
            kw = {"align_corners": False} if mode == "bilinear" else {}
            work = src.float() if src.dtype == torch.uint8 and mode == "bilinear" else src
            patch = F.interpolate(work, size=(y2 - y1, x2 - x1), mode=mode, **kw)[0]
            if x.dtype == torch.uint8 and mode == "bilinear":
                patch = patch.round().clamp(0, 255).to(torch.uint8)
            out[i, :, y1:y2, x1:x2] = patch
    return out


# --------------------------------------------------------------------------- contract


@pytest.mark.parametrize(
    "make",
    [
        lambda: ResizeMix(num_classes=K),
        lambda: ResizeMix(scale=(0.3, 0.9), p=0.8, num_classes=K, interpolation="bilinear", placer=KeepPlacer(q=0.6)),
    ],
    ids=["default", "keep-bilinear"],
)
def test_contract(make):
    check_op(make)


# --------------------------------------------------------------------------- against the per-image loop


@pytest.mark.parametrize("hw", [(32, 32), (24, 37)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_nearest_matches_the_per_image_loop_bitwise(hw, dtype):
    h, w = hw
    b = 32
    x = torch.rand(b, 3, h, w, generator=_gen(1))
    x = (x * 255).round().to(torch.uint8) if dtype == torch.uint8 else x
    y = torch.randint(0, 10, (b,), generator=_gen(2))
    op = ResizeMix(p=0.9, num_classes=10)
    params = op.sample_params(x, y, generator=_gen(3))
    out, targets = op.transform(x, y, params)
    assert torch.equal(out, reference(x, params.boxes, params.perm, "nearest"))
    # the area lambda: the exact unpasted share of each image
    lam = 1.0 - box_areas(params.boxes).double() / (h * w)
    onehot = F.one_hot(y, 10).double()
    want = lam[:, None] * onehot + (1 - lam[:, None]) * onehot[params.perm]
    torch.testing.assert_close(targets.double(), want, rtol=0, atol=1e-6)
    assert (lam < 1).any() and (lam == 1).any()  # some pasted, some skipped by p


def test_bilinear_matches_the_per_image_loop():
    x = torch.rand(16, 3, 28, 20, generator=_gen(4))
    y = torch.randint(0, 5, (16,), generator=_gen(5))
    op = ResizeMix(num_classes=5, interpolation="bilinear")
    params = op.sample_params(x, y, generator=_gen(6))
    out, _ = op.transform(x, y, params)
    torch.testing.assert_close(out, reference(x, params.boxes, params.perm, "bilinear"), rtol=1e-5, atol=1e-5)
    xu = (x * 255).round().to(torch.uint8)
    outu, _ = op.transform(xu, y, params)
    diff = (outu.int() - reference(xu, params.boxes, params.perm, "bilinear").int()).abs()
    assert diff.max() <= 1  # PyTorch's uint8 kernel uses fixed-point weights


def test_scale_is_of_the_side_and_drawn_per_image():
    b, h, w = 256, 40, 30
    x = torch.zeros(b, 1, h, w)
    op = ResizeMix(scale=(0.1, 0.8), num_classes=3)
    params = op.sample_params(x, torch.zeros(b, dtype=torch.long), generator=_gen(7))
    tau = uniform(b, 0.1, 0.8, generator=_gen(7), dtype=torch.float64)  # the first draw
    assert torch.equal(params.sizes[:, 0], (h * tau).floor().long())
    assert torch.equal(params.sizes[:, 1], (w * tau).floor().long())
    # the centre rule: boxes clipped at the border, so some are smaller than asked
    got = torch.stack([params.boxes[:, 2] - params.boxes[:, 0], params.boxes[:, 3] - params.boxes[:, 1]], 1)
    assert (got <= params.sizes).all() and (got < params.sizes).any()
    # whole boxes keep every box at its size (the partner never squeezed)
    whole = ResizeMix(num_classes=3, placer=UniformPlacer(whole_boxes=True))
    pw = whole.sample_params(x, torch.zeros(b, dtype=torch.long), generator=_gen(7))
    got = torch.stack([pw.boxes[:, 2] - pw.boxes[:, 0], pw.boxes[:, 3] - pw.boxes[:, 1]], 1)
    assert torch.equal(got, pw.sizes)
    # mean pasted area ~ E[tau^2] = (0.8^3 - 0.1^3) / (3 * 0.7)
    share = box_areas(pw.boxes).double().mean() / (h * w)
    assert abs(share.item() - (0.8**3 - 0.1**3) / 2.1) < 0.03


def test_keep_placer_places_the_paste_on_low_saliency():
    b, h, w = 16, 32, 32
    x = torch.rand(b, 3, h, w, generator=_gen(8))
    y = torch.randint(0, 4, (b,), generator=_gen(9))
    sal = torch.rand(b, h, w, generator=_gen(10))
    placer = KeepPlacer(q=0.5, whole_boxes=True)
    op = ResizeMix(num_classes=4, placer=placer)
    params = op.sample_params(x, y, saliency=sal, generator=_gen(11))
    # the same draws by hand: tau, then the placer's selection for those sizes
    g = _gen(11)
    tau = uniform(b, 0.1, 0.8, generator=g, dtype=torch.float64)
    sizes = torch.stack([(h * tau).floor().long(), (w * tau).floor().long()], 1)
    sel = placer.select(sal, sizes, "center", generator=g)
    assert torch.equal(params.boxes, sel.boxes)
    # every box whose selection found a candidate below tau scores below it
    from keepmix.functional.regions import box_sums

    scores = box_sums(sel.sat, params.boxes)
    ok = ~sel.fallback
    assert ok.any() and (scores[ok] < sel.tau[ok]).all()
    out, _ = op.transform(x, y, params)
    assert torch.equal(out, reference(x, params.boxes, params.perm, "nearest"))
    # and the saliency function route
    op_fn = ResizeMix(num_classes=4, placer=KeepPlacer(saliency_fn=lambda im, lab: sal))
    out_fn, _ = op_fn(x, y, generator=_gen(12))
    out_s, _ = ResizeMix(num_classes=4, placer=KeepPlacer())(x, y, saliency=sal, generator=_gen(12))
    assert torch.equal(out_fn, out_s)


def test_probability_zero_regions_and_repr():
    x = torch.rand(4, 3, 16, 16, generator=_gen(13))
    soft = torch.softmax(torch.randn(4, 6, generator=_gen(14)), 1)
    op = ResizeMix(p=0.0)
    out, targets = op(x, soft, generator=_gen(15))
    assert torch.equal(out, x)
    torch.testing.assert_close(targets, soft)
    params = ResizeMix().sample_params(x, soft, generator=_gen(16))
    assert ResizeMix.region == "pasted" and torch.equal(ResizeMix().regions(params), params.boxes)
    assert "scale=(0.1, 0.8)" in repr(ResizeMix()) and "interpolation='nearest'" in repr(ResizeMix())


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"scale": (0.0, 0.5)}, "scale"),
        ({"scale": (0.6, 0.2)}, "scale"),
        ({"scale": (0.1, 1.5)}, "scale"),
        ({"scale": 0.5}, "scale"),
        ({"p": -0.1}, "p"),
        ({"num_classes": 0}, "num_classes"),
        ({"interpolation": "bicubic"}, "interpolation"),
        ({"align_corners": True}, "align_corners"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ResizeMix(**kwargs)


def test_bad_types_and_calls():
    with pytest.raises(TypeError, match="placer"):
        ResizeMix(placer="keep")
    with pytest.raises(TypeError, match="align_corners"):
        ResizeMix(interpolation="bilinear", align_corners=1)
    op = ResizeMix(num_classes=3)
    x = torch.rand(2, 3, 8, 8)
    y = torch.tensor([0, 2])
    with pytest.raises(ValueError, match="labels"):
        op(x)
    params = op.sample_params(x, y, generator=_gen(0))
    with pytest.raises(ValueError, match="params.perm"):
        op.transform(x, y, params.replace(perm=torch.tensor([0, 5])))
    with pytest.raises(ValueError, match="params.boxes"):
        op.transform(x, y, params.replace(boxes=torch.tensor([[0, 0, 9, 4], [0, 0, 1, 1]])))
    with pytest.raises(ValueError, match="saliency"):
        ResizeMix(num_classes=3, placer=KeepPlacer())(x, y)
