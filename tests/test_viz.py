"""Tests of keepmix.viz: exact pixel layout of the bottom layer, and the two pictures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from keepmix import viz
from keepmix.functional.boxes import box_masks

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


@pytest.fixture(scope="module")
def cifar(cifar_uint8, cifar_labels) -> tuple[torch.Tensor, torch.Tensor]:
    """(64, 3, 32, 32) uint8 real CIFAR-10 test images and their labels (tests/conftest.py)."""
    return cifar_uint8, cifar_labels


# ------------------------------------------------------------------------------------------
# make_grid
# ------------------------------------------------------------------------------------------


def test_make_grid_layout_exact():
    n, h, w, pad = 5, 3, 4, 2
    imgs = torch.arange(n, dtype=torch.uint8).mul(40).add(10).reshape(n, 1, 1, 1).expand(n, 3, h, w).clone()
    imgs[:, 1] += 1  # distinct channels
    grid = viz.make_grid(imgs, nrow=3, padding=pad, pad_value=(7, 8, 9))
    assert grid.dtype == torch.uint8
    assert grid.shape == (3, 2 * (h + pad) + pad, 3 * (w + pad) + pad)
    expected = torch.tensor([7, 8, 9], dtype=torch.uint8).reshape(3, 1, 1).expand_as(grid).clone()
    for i in range(n):
        r, c = divmod(i, 3)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        expected[:, y : y + h, x : x + w] = imgs[i]
    assert torch.equal(grid, expected)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 7),
    nrow=st.integers(1, 4),
    pad=st.integers(0, 3),
    h=st.integers(1, 5),
    w=st.integers(1, 5),
    gray=st.booleans(),
)
def test_make_grid_matches_loop(n, nrow, pad, h, w, gray):
    g = torch.Generator().manual_seed(n * 1000 + nrow * 100 + pad * 10 + h)
    c = 1 if gray else 3
    imgs = torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=g)
    grid = viz.make_grid(imgs, nrow=nrow, padding=pad, pad_value=255)
    cols = min(nrow, n)
    rows = -(-n // cols)
    ref = torch.full((3, rows * (h + pad) + pad, cols * (w + pad) + pad), 255, dtype=torch.uint8)
    for i in range(n):
        r, cc = divmod(i, cols)
        ref[:, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + cc * (w + pad) : pad + cc * (w + pad) + w] = imgs[i]
    assert torch.equal(grid, ref)


def test_make_grid_float_and_errors():
    x = torch.tensor([0.0, 0.5, 1.0, 1.7]).reshape(1, 1, 2, 2).expand(1, 3, 2, 2)
    grid = viz.make_grid(x, padding=0)
    assert grid[:, 0, 0].tolist() == [0] * 3 and grid[:, 0, 1].tolist() == [128] * 3
    assert grid[:, 1, 0].tolist() == [255] * 3 and grid[:, 1, 1].tolist() == [255] * 3  # clamped for display
    with pytest.raises(ValueError, match="channels"):
        viz.make_grid(torch.zeros(2, 4, 3, 3))
    with pytest.raises(ValueError, match="nrow"):
        viz.make_grid(torch.zeros(2, 3, 3, 3), nrow=0)
    with pytest.raises(ValueError, match="pad_value"):
        viz.make_grid(torch.zeros(2, 3, 3, 3), pad_value=(1, 2))
    with pytest.raises(ValueError, match="4 dimensions"):
        viz.make_grid(torch.zeros(3, 3, 3))


# ------------------------------------------------------------------------------------------
# to_uint8_image, upscale_nearest
# ------------------------------------------------------------------------------------------


def test_to_uint8_image_inverts_normalisation(cifar):
    images = cifar[0][:16]
    mean, std = torch.tensor(CIFAR_MEAN), torch.tensor(CIFAR_STD)
    normed = (images.float() / 255 - mean.reshape(1, 3, 1, 1)) / std.reshape(1, 3, 1, 1)
    back = viz.to_uint8_image(normed, CIFAR_MEAN, CIFAR_STD)
    assert back.dtype == torch.uint8 and back.shape == images.shape
    assert (back.int() - images.int()).abs().max() == 0  # fp32 error << half a grey level
    # fp16 loses precision, but stays within one grey level.
    back16 = viz.to_uint8_image(normed.half(), CIFAR_MEAN, CIFAR_STD)
    assert (back16.int() - images.int()).abs().max() <= 1
    # Unbatched input keeps its shape; uint8 passes through as a copy.
    assert torch.equal(viz.to_uint8_image(normed[0], mean, std), images[0])
    out = viz.to_uint8_image(images)
    assert torch.equal(out, images) and out.data_ptr() != images.data_ptr()


def test_to_uint8_image_errors():
    with pytest.raises(ValueError, match="together"):
        viz.to_uint8_image(torch.zeros(1, 3, 2, 2), mean=CIFAR_MEAN)
    with pytest.raises(ValueError, match="uint8"):
        viz.to_uint8_image(torch.zeros(1, 3, 2, 2, dtype=torch.uint8), CIFAR_MEAN, CIFAR_STD)
    with pytest.raises(ValueError, match="C = 3"):
        viz.to_uint8_image(torch.zeros(1, 3, 2, 2), (0.5, 0.5), (0.5, 0.5))
    with pytest.raises(ValueError, match="std"):
        viz.to_uint8_image(torch.zeros(1, 3, 2, 2), (0.5,), (0.0,))


@pytest.mark.parametrize("scale", [1, 2, 3])
def test_upscale_nearest_matches_interpolate(scale):
    x = torch.randn(2, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(viz.upscale_nearest(x, scale), F.interpolate(x, scale_factor=scale, mode="nearest"))
    u8 = viz.to_uint8_image(x.sigmoid())
    assert torch.equal(viz.upscale_nearest(u8[0], scale), F.interpolate(u8.float(), scale_factor=scale)[0].to(torch.uint8))
    with pytest.raises(ValueError, match="scale"):
        viz.upscale_nearest(x, 1.5)


# ------------------------------------------------------------------------------------------
# saliency_to_rgb, overlay
# ------------------------------------------------------------------------------------------


def _luma(rgb: torch.Tensor) -> torch.Tensor:
    return 0.2126 * rgb[..., 0].float() + 0.7152 * rgb[..., 1].float() + 0.0722 * rgb[..., 2].float()


def test_saliency_to_rgb_shape_and_monotone_brightness():
    ramp = torch.linspace(0, 1, 1001).reshape(1, -1)
    rgb = viz.saliency_to_rgb(ramp, normalize=False)
    assert rgb.shape == (3, 1, 1001) and rgb.dtype == torch.uint8
    luma = _luma(rgb[:, 0].T)
    # Never darker for a larger value, up to the rounding of each channel to an integer (at most
    # half a level per channel, so at most one level of luma between two colours).
    assert bool((luma[1:] >= luma[:-1] - 1.0).all())
    assert bool((luma[100:] > luma[:-100]).all())  # and strictly brighter a tenth further on
    assert luma[-1] - luma[0] > 250  # black to white
    assert rgb[:, 0, 0].tolist() == [0, 0, 0] and rgb[:, 0, -1].tolist() == [255, 255, 255]
    # Batched, per-image min-max: a scaled and shifted map gives the same colours; a constant
    # map is black.
    s = torch.rand(2, 6, 5, generator=torch.Generator().manual_seed(1))
    batch = torch.stack([s[0], 1e-3 * s[0] + 3.0, torch.full((6, 5), 2.5)])
    out = viz.saliency_to_rgb(batch)
    assert out.shape == (3, 3, 6, 5)
    assert (out[0].int() - out[1].int()).abs().max() <= 1
    assert out[2].eq(0).all()
    assert torch.equal(viz.saliency_to_rgb(batch[0]), out[0])


def test_saliency_to_rgb_errors():
    with pytest.raises(ValueError, match="shape"):
        viz.saliency_to_rgb(torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        viz.saliency_to_rgb(torch.full((2, 2), 2.0), normalize=False)
    with pytest.raises(TypeError, match="saliency"):
        viz.saliency_to_rgb(np.zeros((2, 2)))


def test_overlay_blend():
    img = torch.full((3, 2, 2), 100, dtype=torch.uint8)
    heat = torch.full((3, 2, 2), 201, dtype=torch.uint8)
    assert viz.overlay(img, heat, 0.0).eq(100).all()
    assert viz.overlay(img, heat, 1.0).eq(201).all()
    assert viz.overlay(img, heat, 0.5).eq(150).all()  # 150.5 rounds half to even
    assert viz.overlay(img, heat, 0.25).eq(125).all()
    with pytest.raises(ValueError, match="alpha"):
        viz.overlay(img, heat, 1.5)
    with pytest.raises(TypeError, match="uint8"):
        viz.overlay(img.float(), heat)
    with pytest.raises(ValueError, match="same shape"):
        viz.overlay(img, heat[:, :1])


# ------------------------------------------------------------------------------------------
# draw_boxes
# ------------------------------------------------------------------------------------------


def _draw_boxes_loop(images, boxes, color, width):
    out = images.clone()
    for i, (y1, x1, y2, x2) in enumerate(boxes.tolist()):
        if y2 <= y1 or x2 <= x1:
            continue
        for y in range(y1, y2):
            for x in range(x1, x2):
                if min(y - y1, y2 - 1 - y, x - x1, x2 - 1 - x) < width:
                    out[i, :, y, x] = torch.tensor(color, dtype=torch.uint8)
    return out


@settings(max_examples=30, deadline=None)
@given(data=st.data(), width=st.integers(1, 3), h=st.integers(1, 12), w=st.integers(1, 12))
def test_draw_boxes_matches_loop(data, width, h, w):
    b = 3
    rows = []
    for _ in range(b):
        y1 = data.draw(st.integers(0, h))
        y2 = data.draw(st.integers(y1, h))
        x1 = data.draw(st.integers(0, w))
        x2 = data.draw(st.integers(x1, w))
        rows.append([y1, x1, y2, x2])
    boxes = torch.tensor(rows)
    images = torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(h * w))
    before = images.clone()
    out = viz.draw_boxes(images, boxes, color=(1, 2, 3), width=width)
    assert torch.equal(out, _draw_boxes_loop(images, boxes, (1, 2, 3), width))
    assert torch.equal(images, before)  # not modified in place


def test_draw_boxes_exact_outline_and_per_image_color():
    images = torch.zeros(2, 3, 6, 7, dtype=torch.uint8)
    boxes = torch.tensor([[1, 1, 5, 6], [0, 0, 0, 0]])
    colors = torch.tensor([[255, 0, 0], [0, 255, 0]])
    out = viz.draw_boxes(images, boxes, color=colors)
    ring = torch.tensor(
        [
            [0, 0, 0, 0, 0, 0, 0],
            [0, 1, 1, 1, 1, 1, 0],
            [0, 1, 0, 0, 0, 1, 0],
            [0, 1, 0, 0, 0, 1, 0],
            [0, 1, 1, 1, 1, 1, 0],
            [0, 0, 0, 0, 0, 0, 0],
        ],
        dtype=torch.uint8,
    )
    assert torch.equal(out[0, 0], ring * 255) and out[0, 1:].eq(0).all()
    assert out[1].eq(0).all()  # empty box: op not applied, nothing drawn
    with pytest.raises(ValueError, match="inside"):
        viz.draw_boxes(images, torch.tensor([[0, 0, 7, 7], [0, 0, 1, 1]]))
    with pytest.raises(TypeError, match="uint8"):
        viz.draw_boxes(images.float(), boxes)
    with pytest.raises(ValueError, match="width"):
        viz.draw_boxes(images, boxes, width=0)


# ------------------------------------------------------------------------------------------
# save_png
# ------------------------------------------------------------------------------------------


def test_save_png_roundtrip(tmp_path):
    img = torch.randint(0, 256, (3, 5, 9), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    path = viz.save_png(img, tmp_path / "sub" / "x.png")
    back = torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1)
    assert torch.equal(back, img)
    gray = viz.save_png(img[:1], tmp_path / "g.png")
    assert torch.equal(torch.from_numpy(np.array(Image.open(gray))), img[0])
    with pytest.raises(TypeError, match="uint8"):
        viz.save_png(img.float(), tmp_path / "bad.png")
    with pytest.raises(ValueError, match="shape"):
        viz.save_png(img[None], tmp_path / "bad.png")


# ------------------------------------------------------------------------------------------
# plot_runs
# ------------------------------------------------------------------------------------------


def _write_run(d: Path, accs, extra=None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    with (d / "metrics.jsonl").open("w") as f:
        for e, a in enumerate(accs, 1):
            rec = {"epoch": e, "train_loss": 2.0 / e, "train_acc": a - 5, "test_acc": a}
            rec.update(extra or {})
            f.write(json.dumps(rec) + "\n")
        f.write("\n")  # a trailing blank line is fine
    return d


def test_plot_runs_writes_png(tmp_path):
    a = _write_run(tmp_path / "cutout", [40.0, 60.0, 70.0, 75.0])
    b = _write_run(tmp_path / "keepcutout", [42.0, 63.0, 72.0, 78.0])
    c = _write_run(tmp_path / "keepcutout_s2", [41.0, 61.0, 71.0, 76.0])
    out = viz.plot_runs([a, b, c / "metrics.jsonl"], tmp_path / "curves.png", labels=["Cutout", "KeepCutout", "KeepCutout"])
    img = Image.open(out)
    assert img.format == "PNG" and img.size == (840, 540)
    arr = np.asarray(img.convert("RGB"))
    assert arr.std() > 10  # not a blank canvas


def test_plot_runs_errors(tmp_path):
    a = _write_run(tmp_path / "a", [1.0, 2.0])
    with pytest.raises(KeyError, match="test_top5"):
        viz.plot_runs([a], tmp_path / "x.png", metric="test_top5")
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        (tmp_path / "empty").mkdir()
        viz.plot_runs([a, tmp_path / "empty"], tmp_path / "x.png")
    with pytest.raises(FileNotFoundError, match="neither"):
        viz.plot_runs([tmp_path / "nope"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="labels"):
        viz.plot_runs([a], tmp_path / "x.png", labels=["a", "b"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.jsonl").write_text('{"epoch": 1, "test_acc": 3}\n{oops\n')
    with pytest.raises(ValueError, match=":2"):
        viz.plot_runs([bad], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_load_metrics_skips_epochs_without_metric(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    lines = [{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.5, "test_acc": 50.0}, {"epoch": 3, "test_acc": None}]
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    assert viz._curve(viz.load_metrics(d), "test_acc", "r") == ([2.0], [50.0])
    assert viz.plot_runs([d], tmp_path / "one.png").is_file()


# ------------------------------------------------------------------------------------------
# save_method_grid / run_method
# ------------------------------------------------------------------------------------------

from keepmix.base import Op, Params  # noqa: E402
from keepmix.keep import KeepAutoAugment, KeepCutMix, KeepCutout, KeepPaste  # noqa: E402
from keepmix.mixing import CutMix, Mixup  # noqa: E402
from keepmix.regional import Cutout  # noqa: E402

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(32, 10),
    )


def _invert(x: torch.Tensor) -> torch.Tensor:
    return 1.0 - x


def _methods():
    return {
        "Cutout": Cutout(16),
        "KeepCutout": KeepCutout(16),
        "Mixup": Mixup(num_classes=10),
        "CutMix": CutMix(num_classes=10),
        "KeepCutMix": KeepCutMix(num_classes=10),
        "KeepPaste(invert)": KeepPaste(_invert, 16),
    }


def _cell(grid: viz.MethodGrid, i: int, j: int) -> torch.Tensor:
    (oy, ox), (ch, cw), p = grid.origin, grid.cell, grid.pad
    y, x = oy + p + i * (ch + p), ox + p + j * (cw + p)
    return grid.image[:, y : y + ch, x : x + cw]


def test_save_method_grid_picture(cifar, tmp_path):
    images, labels = cifar[0][:4], cifar[1][:4]
    model = _tiny_model().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    scale = 3
    grid = viz.save_method_grid(
        images,
        labels,
        _methods(),
        tmp_path / "show.png",
        model=model,
        scale=scale,
        generator=torch.Generator().manual_seed(0),
        class_names=CLASSES,
        untrained=True,
    )
    # The PNG on disk is the returned picture, of the size its layout says.
    png = torch.from_numpy(np.array(Image.open(grid.path))).permute(2, 0, 1)
    assert torch.equal(png, grid.image)
    assert grid.columns == ["original", "saliency (untrained model)", *_methods()]
    ncol, p = len(grid.columns), grid.pad
    assert grid.cell == (32 * scale, 32 * scale)
    assert png.shape[1] == grid.origin[0] + 4 * (96 + p) + p + viz._LEGEND_H
    assert png.shape[2] == grid.origin[1] + ncol * (96 + p) + p
    # Model untouched (saliency pass restores state and mode).
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    for i in range(4):
        # Column 0 is the original, pixel for pixel (uint8 in, no normalisation).
        assert torch.equal(_cell(grid, i, 0), viz.upscale_nearest(images[i], scale))
        # Cutout column: the image with the box filled (0 = black here) and outlined in red.
        out = grid.outputs["Cutout"]
        box = out.boxes[i] * scale
        expected = viz.draw_boxes(
            viz.upscale_nearest(viz.to_uint8_image(out.images[i : i + 1]), scale), box[None], viz.REGION_COLORS["cut"], width=1
        )[0]
        assert torch.equal(_cell(grid, i, 2), expected)
        assert out.region == "cut"
    assert grid.outputs["KeepCutout"].region == "cut"
    assert grid.outputs["CutMix"].region == "pasted" and grid.outputs["KeepCutMix"].region == "pasted"
    assert grid.outputs["KeepPaste(invert)"].region == "kept" and grid.outputs["Mixup"].boxes is None
    # KeepPaste: inside the kept box the original, outside the inverted image.
    kp = grid.outputs["KeepPaste(invert)"]
    work = images.float() / 255
    inside = torch.zeros(4, 1, 32, 32, dtype=torch.bool)
    for i, (y1, x1, y2, x2) in enumerate(kp.boxes.tolist()):
        inside[i, :, y1:y2, x1:x2] = True
    assert torch.equal(kp.images, torch.where(inside, work, 1.0 - work))
    # The saliency column is not the original and the text areas are not blank.
    assert not torch.equal(_cell(grid, 0, 1), _cell(grid, 0, 0))
    assert grid.image[:, : grid.origin[0]].float().std() > 5


def test_save_method_grid_same_seed_same_picture(cifar, tmp_path):
    images, labels = cifar[0][8:11], cifar[1][8:11]
    sal = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(5))
    kw = dict(saliency=sal, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), scale=2)
    a = viz.save_method_grid(images, labels, _methods(), tmp_path / "a.png", generator=torch.Generator().manual_seed(1), **kw)
    b = viz.save_method_grid(images, labels, _methods(), tmp_path / "b.png", generator=torch.Generator().manual_seed(1), **kw)
    c = viz.save_method_grid(images, labels, _methods(), tmp_path / "c.png", generator=torch.Generator().manual_seed(2), **kw)
    assert torch.equal(a.image, b.image) and not torch.equal(a.image, c.image)
    assert torch.equal(a.saliency, sal)
    # Normalised working form: the original column still shows the original pixels
    # (within one level of float rounding).
    for i in range(3):
        assert (_cell(a, i, 0).int() - viz.upscale_nearest(images[i], 2).int()).abs().max() <= 1


@pytest.mark.parametrize("name", ["Cutout", "KeepCutout", "CutMix", "KeepCutMix", "KeepPaste(invert)", "Mixup"])
def test_run_method_matches_forward(cifar, name):
    images, labels = cifar[0][:6].float() / 255, cifar[1][:6]
    sal = torch.rand(6, 32, 32, generator=torch.Generator().manual_seed(3))
    op = _methods()[name]
    res = viz.run_method(op, images, labels, sal, torch.Generator().manual_seed(7), name=name)
    g = torch.Generator().manual_seed(7)
    if name.startswith("Keep"):
        ref = op(images, labels, saliency=sal, generator=g)
    elif name in ("Cutout",):
        ref = op(images, generator=g)
    else:
        ref = op(images, labels, generator=g)
    ref = ref[0] if isinstance(ref, tuple) else ref
    assert torch.equal(res.images, ref)


def test_run_method_plain_callable():
    x = torch.rand(2, 3, 8, 8)
    res = viz.run_method(lambda im: im.flip(-1), x)
    assert torch.equal(res.images, x.flip(-1)) and res.boxes is None
    with pytest.raises(TypeError, match="callable"):
        viz.run_method(42, x)


def test_save_method_grid_errors(cifar, tmp_path):
    images, labels = cifar[0][:2], cifar[1][:2]
    with pytest.raises(ValueError, match="not both"):
        viz.save_method_grid(images, labels, {}, tmp_path / "x.png", model=_tiny_model(), saliency=torch.zeros(2, 32, 32))
    with pytest.raises(ValueError, match="shape"):
        viz.save_method_grid(images, labels, {"crop": lambda im: im[..., :16]}, tmp_path / "x.png")
    with pytest.raises(TypeError, match="mapping"):
        viz.save_method_grid(images, labels, ["cutout"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="saliency"):
        viz.save_method_grid(images, labels, {"k": KeepCutout(16)}, tmp_path / "x.png")  # no map, no model
    with pytest.raises(ValueError, match="class_names"):
        viz.save_method_grid(images, labels, {}, tmp_path / "x.png", class_names=("a",))
    assert not (tmp_path / "x.png").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_save_method_grid_cuda(cifar, tmp_path):
    images, labels = cifar[0][:3].cuda(), cifar[1][:3].cuda()
    model = _tiny_model().cuda()
    grid = viz.save_method_grid(
        images, labels, _methods(), tmp_path / "g.png", model=model, generator=torch.Generator("cuda").manual_seed(0)
    )
    assert grid.path.is_file() and grid.image.device.type == "cpu"
    assert grid.outputs["KeepCutout"].images.device.type == "cuda"
    cpu = viz.draw_boxes(viz.to_uint8_image(images.float() / 255), torch.tensor([[1, 1, 9, 9]] * 3))
    gpu = viz.draw_boxes(viz.to_uint8_image(images.float() / 255), torch.tensor([[1, 1, 9, 9]] * 3, device="cuda"))
    assert torch.equal(cpu.cuda(), gpu)


def test_recursivemix_gets_a_history_and_is_left_as_it_was(cifar, tmp_path):
    from keepmix.recursive import KeepRecursiveMix, RecursiveMix

    images, labels = cifar[0][:4], cifar[1][:4]
    fresh = RecursiveMix(10)
    used = KeepRecursiveMix(10)
    prev = torch.rand(3, 3, 32, 32)
    used.update(prev, torch.tensor([1, 2, 3]), torch.randn(3, 10))
    before = used.get_extra_state()
    sal = torch.rand(4, 32, 32, generator=torch.Generator().manual_seed(0))
    grid = viz.save_method_grid(
        images,
        labels,
        {"rm": fresh, "keep rm": used},
        tmp_path / "rm.png",
        saliency=sal,
        generator=torch.Generator().manual_seed(0),
        history_steps=2,
    )
    work = images.float() / 255
    for name in ("rm", "keep rm"):
        out = grid.outputs[name]
        assert out.region == "pasted"
        areas = (out.boxes[:, 2] - out.boxes[:, 0]) * (out.boxes[:, 3] - out.boxes[:, 1])
        assert bool((areas > 0).all())  # every image received its history
        outside = ~box_masks(out.boxes, 32, 32)[:, None]
        assert torch.equal(out.images * outside, work * outside)  # untouched outside the box
        assert not torch.equal(out.images, work)
    assert not fresh.has_history
    after = used.get_extra_state()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="history_steps"):
        viz.save_method_grid(images, labels, {"rm": fresh}, tmp_path / "x.png", history_steps=-1)


class _PolicyLike(Op):
    """Stands in for a keepmix.policies op (``raw_pixels``): the grid must hand it the uint8 batch."""

    raw_pixels = True

    def make_params(self, images, labels, saliency, generator):
        return Params()

    def apply_params(self, images, labels, params):
        assert images.dtype == torch.uint8
        return 255 - images, labels


def test_policies_get_the_uint8_batch(cifar, tmp_path):
    images, labels = cifar[0][:3], cifar[1][:3]
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    sal = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    grid = viz.save_method_grid(
        images,
        labels,
        {"policy": _PolicyLike(), "keep policy": KeepPaste(_PolicyLike(), 8), "cutout": Cutout(8)},
        tmp_path / "p.png",
        saliency=sal,
        mean=mean,
        std=std,
    )
    assert torch.equal(grid.outputs["policy"].images, 255 - images)
    kept = grid.outputs["keep policy"]
    inside = box_masks(kept.boxes, 32, 32)[:, None]
    assert kept.images.dtype == torch.uint8 and torch.equal(kept.images, torch.where(inside, images, 255 - images))
    # Region ops run on the normalised float batch: Cutout's fill 0 is the mean colour.
    cut = grid.outputs["cutout"]
    assert cut.images.dtype == torch.float32
    assert (
        _cell(grid, 0, 4).int()
        - viz.draw_boxes(
            viz.upscale_nearest(viz.to_uint8_image(cut.images[:1], mean, std), 4), cut.boxes[:1] * 4, viz.REGION_COLORS["cut"], 2
        )[0].int()
    ).abs().max() == 0


def test_every_column_starts_from_the_same_generator_state(cifar, tmp_path):
    images, labels = cifar[0][:4], cifar[1][:4]
    grid = viz.save_method_grid(
        images,
        labels,
        {"a": Cutout(8), "b": Cutout(8), "c": CutMix(num_classes=10)},
        tmp_path / "s.png",
        generator=torch.Generator().manual_seed(3),
    )
    assert torch.equal(grid.outputs["a"].images, grid.outputs["b"].images)
    assert torch.equal(grid.outputs["a"].boxes, grid.outputs["b"].boxes)
    ref = CutMix(num_classes=10)(images.float() / 255, labels, generator=torch.Generator().manual_seed(3))[0]
    assert torch.equal(grid.outputs["c"].images, ref)  # the third column too: as if drawn first


def test_inner_transform_draws_the_keep_paste_policy(cifar):
    from keepmix.policies import AutoAugment

    images, labels = cifar[0][:8], cifar[1][:8]
    sal = torch.rand(8, 32, 32, generator=torch.Generator().manual_seed(4))
    keep = KeepAutoAugment("cifar10", size=12)
    inner = viz.InnerTransform(keep)
    assert inner.raw_pixels and inner.region is None
    res = viz.run_method(inner, images, labels, sal, torch.Generator().manual_seed(5))
    params = keep.sample_params(images, labels, saliency=sal, generator=torch.Generator().manual_seed(5))
    assert res.boxes is None and torch.equal(res.images, keep.inner.transform(images, None, params.inner))
    # The same policy draw as an AutoAugment given those params; identical to the Keep column outside its box.
    assert torch.equal(res.images, AutoAugment("cifar10").transform(images, None, params.inner))
    kept = viz.run_method(keep, images, labels, sal, torch.Generator().manual_seed(5))
    outside = ~box_masks(kept.boxes, 32, 32)[:, None]
    assert torch.equal(kept.images * outside, res.images * outside)
    assert torch.equal(kept.images * ~outside, images * ~outside)
    with pytest.raises(TypeError, match="KeepPaste"):
        viz.InnerTransform(Cutout(8))


def test_run_method_uses_the_protocol(cifar):
    images, labels = cifar[0][:4].float() / 255, cifar[1][:4]
    res = viz.run_method(Mixup(num_classes=10), images, labels, None, torch.Generator().manual_seed(0))
    assert res.boxes is None and res.region is None
    res = viz.run_method(KeepPaste(_invert, 8), images, labels, torch.rand(4, 32, 32), torch.Generator().manual_seed(0))
    assert res.region == "kept" and res.boxes.shape == (4, 4)
    with pytest.raises(TypeError, match="tensor"):
        viz.run_method(lambda im: (im, None), images)
    with pytest.raises(ValueError, match="labels"):  # a mixing op shown without labels
        viz.run_method(CutMix(num_classes=10), images)


def test_no_module_inspects_signatures():
    """Ops are driven by their protocol (keepmix.base.Op), never by reading signatures."""
    root = Path(__file__).resolve().parent.parent / "keepmix"
    offenders = [str(p.relative_to(root)) for p in sorted(root.rglob("*.py")) if "inspect.signature" in p.read_text()]
    assert offenders == []


# ------------------------------------------------------------------------------------------
# keepmix show: columns for GridMask, AugMix, Attentive CutMix, ResizeMix, SaliencyMix, FMix
# ------------------------------------------------------------------------------------------
def test_show_columns_for_the_baselines_of_keepaugments_table_5(cifar, tmp_path):
    from keepmix.models import build_model
    from keepmix.saliencymix import SaliencyMix
    from keepmix.train.config import TrainConfig
    from keepmix.train.show import BASELINE_SHOW_METHODS, grid_ops, method_ops

    images, labels = cifar[0][:4], cifar[1][:4]
    torch.manual_seed(0)
    model = build_model("small", num_classes=10).eval()
    config = TrainConfig(model="small", saliency="lowres")
    ops = grid_ops(method_ops(config, BASELINE_SHOW_METHODS, model, 10, CIFAR_MEAN, CIFAR_STD))
    assert list(ops) == list(BASELINE_SHOW_METHODS)
    # Every image is mixed / masked in the picture, and the teacher is the shown model.
    assert ops["gridmask"].p == 1.0 and ops["saliencymix"].p == 1.0 and ops["saliencymix_gradient"].p == 1.0
    assert ops["attentive_cutmix"].teacher.model is model
    grid = viz.save_method_grid(
        images,
        labels,
        ops,
        tmp_path / "baselines.png",
        model=model,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
        generator=torch.Generator().manual_seed(0),
        untrained=True,
    )
    assert Path(grid.path).is_file() and grid.columns[2:] == list(BASELINE_SHOW_METHODS)
    out = grid.outputs
    # Pixel masks and grid cells: no boxes; pasted partners: blue boxes.
    for name in ("gridmask", "fmix", "attentive_cutmix", "augmix"):
        assert out[name].boxes is None and out[name].region is None
    for name in ("resizemix", "keepresizemix", "saliencymix", "saliencymix_gradient"):
        assert out[name].region == "pasted" and out[name].boxes.shape == (4, 4)
    work = (images.float() / 255 - torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    assert all(not torch.equal(out["gridmask"].images[i], work[i]) for i in range(4))  # every image masked
    # The spectral SaliencyMix column uses its own spectral map, not the model's gradient map
    # the grid hands every op: it equals a plain SaliencyMix called without a map.
    plain = SaliencyMix(p=1.0, num_classes=10)
    want, _ = plain(work, labels, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out["saliencymix"].images, want)
