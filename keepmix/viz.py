"""Pictures: image grids with saliency maps and regions (``keepmix show``) and accuracy curves
(``keepmix plot``).

Two layers:

* plain tensor functions (:func:`make_grid`, :func:`to_uint8_image`, :func:`saliency_to_rgb`,
  :func:`overlay`, :func:`draw_boxes`, :func:`upscale_nearest`, :func:`save_png`) that know
  nothing about augmentation methods, each exact and tested on its own;
* :func:`save_method_grid` and :func:`plot_runs`, the only functions that know about methods
  (they run ops through the protocol of :mod:`keepmix.base`: ``sample_params``, ``apply``,
  ``regions``) and about the training run's ``metrics.jsonl``.

matplotlib is needed only by :func:`plot_runs` and is imported there, so the rest of this
module (and keepmix itself) works without it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from keepmix._checks import check_generator, check_images
from keepmix.base import Op
from keepmix.functional.boxes import box_masks, check_boxes

__all__ = [
    "make_grid",
    "to_uint8_image",
    "saliency_to_rgb",
    "overlay",
    "draw_boxes",
    "upscale_nearest",
    "save_png",
    "colormap",
    "run_method",
    "InnerTransform",
    "save_method_grid",
    "MethodOutput",
    "MethodGrid",
    "load_metrics",
    "plot_runs",
    "METRICS_FILE",
    "REGION_COLORS",
]

Color = tuple[int, int, int]

#: Outline colour of a region by what happened in it: ``cut`` (the op changed the region:
#: Cutout, Random Erasing, their Keep versions), ``kept`` (the original was pasted back over an
#: augmented image: selective-paste), ``pasted`` (a patch from another image: CutMix,
#: RecursiveMix).
REGION_COLORS: dict[str, Color] = {"cut": (255, 40, 40), "kept": (40, 230, 40), "pasted": (40, 160, 255)}


# --------------------------------------------------------------------------------------------
# Bottom layer: plain tensors in, uint8 tensors out.
# --------------------------------------------------------------------------------------------


def _check_color(color: object, name: str = "color") -> Color:
    """An (r, g, b) triple of ints in [0, 255] (a single int means grey)."""
    if isinstance(color, (int, float)) and not isinstance(color, bool):
        color = (color, color, color)
    try:
        rgb = tuple(int(c) for c in color)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an int or an (r, g, b) triple of ints in [0, 255], got {color!r}") from None
    if len(rgb) != 3 or any(not 0 <= c <= 255 for c in rgb) or any(int(c) != c for c in color):  # type: ignore[union-attr]
        raise ValueError(f"{name} must be an int or an (r, g, b) triple of ints in [0, 255], got {color!r}")
    return rgb  # type: ignore[return-value]


def _as_batch(x: object, name: str) -> tuple[Tensor, bool]:
    """(B, C, H, W) view of a (C, H, W) or (B, C, H, W) tensor, and whether it was unbatched."""
    if isinstance(x, Tensor) and x.ndim == 3:
        return check_images(x.unsqueeze(0), name), True
    return check_images(x, name), False


def to_uint8_image(
    x: Tensor, mean: Sequence[float] | Tensor | None = None, std: Sequence[float] | Tensor | None = None
) -> Tensor:
    """Display form of a (B, C, H, W) or (C, H, W) image batch: uint8 in [0, 255], same shape.

    Float input is taken to hold values in [0, 1] once the normalisation is undone:
    ``x * std + mean`` per channel when ``mean``/``std`` are given (the values the data
    pipeline subtracted and divided by), then scaled by 255, rounded, and clamped. The clamp is
    for display only (an augmented normalised image can leave the range). uint8 input is
    returned unchanged (a copy); giving ``mean``/``std`` with uint8 input is an error, because
    uint8 images are never normalised.
    """
    xb, unbatched = _as_batch(x, "x")
    if (mean is None) != (std is None):
        raise ValueError("mean and std must be given together (the normalisation to undo) or both left out")
    if xb.dtype == torch.uint8:
        if mean is not None:
            raise ValueError("mean/std were given but x is uint8; uint8 images are not normalised, leave them out")
        out = xb.clone()
    else:
        xf = xb.float()
        if mean is not None:
            c = xb.shape[1]
            m = torch.as_tensor(mean, dtype=torch.float32, device=xb.device).reshape(-1)
            s = torch.as_tensor(std, dtype=torch.float32, device=xb.device).reshape(-1)
            if m.numel() not in (1, c) or s.numel() not in (1, c):
                raise ValueError(f"mean and std must have 1 or C = {c} values, got {m.numel()} and {s.numel()}")
            if bool((s <= 0).any()):
                raise ValueError(f"std must be > 0, got {s.tolist()}")
            xf = xf * s.reshape(1, -1, 1, 1) + m.reshape(1, -1, 1, 1)
        # nan_to_num: a NaN pixel shows as black rather than breaking the uint8 cast.
        out = (xf * 255.0).round().nan_to_num(0.0).clamp(0, 255).to(torch.uint8)
    return out[0] if unbatched else out


def _rgb_batch(images: Tensor, name: str) -> Tensor:
    """uint8 (B, 3, H, W) from 1- or 3-channel uint8 or [0, 1] float images."""
    images = check_images(images, name, channels=(1, 3))
    images = to_uint8_image(images)
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def make_grid(images: Tensor, nrow: int = 8, padding: int = 2, pad_value: int | Color = 0) -> Tensor:
    """Tile a batch into one uint8 (3, H', W') picture, ``nrow`` images per row.

    ``images`` is (N, C, H, W) with C = 1 (shown grey) or 3, uint8 or float in [0, 1] (see
    :func:`to_uint8_image`). Image ``i`` goes to grid row ``i // nrow`` and column
    ``i % nrow``, its top-left pixel at ``(padding + row * (H + padding),
    padding + col * (W + padding))``; so ``H' = rows * (H + padding) + padding`` and
    ``W' = cols * (W + padding) + padding`` with ``cols = min(nrow, N)``. Padding and unused
    cells of the last row have colour ``pad_value`` (an int grey level or an (r, g, b) triple).
    """
    imgs = _rgb_batch(images, "images")
    if int(nrow) != nrow or nrow < 1:
        raise ValueError(f"nrow must be a positive integer, got {nrow}")
    if int(padding) != padding or padding < 0:
        raise ValueError(f"padding must be an integer >= 0, got {padding}")
    rgb = _check_color(pad_value, "pad_value")
    n, _, h, w = imgs.shape
    cols = min(int(nrow), n)
    rows = math.ceil(n / cols)
    p = int(padding)
    # Pad the batch to a full rectangle of cells, pad each cell on its bottom/right, and
    # reshape: one pass, no per-image copy loop.
    fill = torch.tensor(rgb, dtype=torch.uint8, device=imgs.device).reshape(1, 3, 1, 1)
    cells = fill.expand(rows * cols, 3, h + p, w + p).clone()
    cells[:n, :, :h, :w] = imgs
    grid = cells.reshape(rows, cols, 3, h + p, w + p).permute(2, 0, 3, 1, 4).reshape(3, rows * (h + p), cols * (w + p))
    out = fill[0].expand(3, rows * (h + p) + p, cols * (w + p) + p).clone()
    out[:, p:, p:] = grid
    return out


def upscale_nearest(images: Tensor, scale: int) -> Tensor:
    """Enlarge (B, C, H, W) or (C, H, W) images by an integer factor, each pixel a scale x scale
    block (the same as ``F.interpolate(mode="nearest")`` with an integer factor, for any dtype)."""
    if isinstance(scale, bool) or int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    xb, unbatched = _as_batch(images, "images")
    s = int(scale)
    out = xb.repeat_interleave(s, dim=2).repeat_interleave(s, dim=3) if s > 1 else xb.clone()
    return out[0] if unbatched else out


# Control points of keepmix's own "heat" colormap, black -> purple -> red -> orange -> yellow
# -> near white. Written here rather than taken from matplotlib so that the core does not need
# matplotlib; its luminance rises strictly from point to point, hence along the whole map
# (checked in the tests), so brighter always means more salient.
_HEAT = (
    (0, 0, 0),
    (60, 10, 100),
    (170, 20, 90),
    (235, 80, 30),
    (250, 170, 20),
    (252, 240, 120),
    (255, 255, 255),
)


def colormap(values: Tensor) -> Tensor:
    """Map values in [0, 1] (any shape S) to uint8 RGB of shape (*S, 3) by linear
    interpolation between the control points of the heat colormap (values outside [0, 1]
    are clamped; NaN maps to 0)."""
    table = torch.tensor(_HEAT, dtype=torch.float32, device=values.device)
    pos = values.float().nan_to_num(0.0).clamp(0, 1) * (len(_HEAT) - 1)
    lo = pos.floor().long().clamp_max(len(_HEAT) - 2)
    frac = (pos - lo).unsqueeze(-1)
    rgb = table[lo] * (1 - frac) + table[lo + 1] * frac
    return rgb.round().clamp(0, 255).to(torch.uint8)


def saliency_to_rgb(saliency: Tensor, normalize: bool = True) -> Tensor:
    """Colour a saliency map: (H, W) -> uint8 (3, H, W), or (B, H, W) -> uint8 (B, 3, H, W).

    With ``normalize`` each map is rescaled to [0, 1] by its own min and max (a constant map
    becomes all 0, i.e. black), because saliency magnitudes differ by orders of magnitude
    between images and models; without it the values must already lie in [0, 1]. Brightness
    grows with the value.
    """
    if not isinstance(saliency, Tensor):
        raise TypeError(f"saliency must be a torch.Tensor of shape (H, W) or (B, H, W), got {type(saliency).__name__}")
    if saliency.ndim not in (2, 3) or saliency.numel() == 0:
        raise ValueError(f"saliency must be a non-empty (H, W) or (B, H, W) map, got shape {tuple(saliency.shape)}")
    if not (saliency.dtype.is_floating_point or saliency.dtype == torch.uint8):
        raise TypeError(f"saliency must be floating point or uint8, got {saliency.dtype}")
    s = saliency.unsqueeze(0) if saliency.ndim == 2 else saliency
    s = s.detach().double()
    if normalize:
        flat = s.flatten(1)
        lo = flat.amin(1).reshape(-1, 1, 1)
        span = (flat.amax(1).reshape(-1, 1, 1) - lo)
        s = torch.where(span > 0, (s - lo) / span.clamp_min(1e-300), torch.zeros_like(s))
    elif saliency.dtype == torch.uint8:
        s = s / 255.0
    elif bool(((s < 0) | (s > 1)).any()):
        raise ValueError("saliency values must lie in [0, 1] when normalize=False")
    rgb = colormap(s).permute(0, 3, 1, 2).contiguous()
    return rgb[0] if saliency.ndim == 2 else rgb


def overlay(image: Tensor, heat: Tensor, alpha: float = 0.5) -> Tensor:
    """Blend ``heat`` over ``image``: ``round((1 - alpha) * image + alpha * heat)`` as uint8.

    Both are uint8 RGB of the same shape, (3, H, W) or (B, 3, H, W); ``alpha`` in [0, 1].
    """
    for name, t in (("image", image), ("heat", heat)):
        if not isinstance(t, Tensor) or t.dtype != torch.uint8:
            raise TypeError(f"{name} must be a uint8 tensor (use to_uint8_image / saliency_to_rgb first)")
    if image.shape != heat.shape:
        raise ValueError(f"image and heat must have the same shape, got {tuple(image.shape)} and {tuple(heat.shape)}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    a = float(alpha)
    return ((1 - a) * image.float() + a * heat.to(image.device).float()).round().clamp(0, 255).to(torch.uint8)


def draw_boxes(
    images: Tensor, boxes: Tensor, color: Color | Tensor | int = REGION_COLORS["cut"], width: int = 1
) -> Tensor:
    """A copy of uint8 RGB ``images`` (B, 3, H, W) with each image's box outlined.

    ``boxes`` is (B, 4) ``(y1, x1, y2, x2)``, half-open, as everywhere in keepmix. The outline
    is drawn *inside* the box: the pixels of the box within ``width`` of its edge, so it never
    leaves the image and covers exactly the region's border pixels. An empty box (an op not
    applied to that image) draws nothing. ``color`` is one (r, g, b) for all images or a (B, 3)
    tensor of per-image colours.
    """
    images = check_images(images, "images", channels=3)
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 (use to_uint8_image first), got {images.dtype}")
    b, _, h, w = images.shape
    boxes = check_boxes(boxes, b, h, w).to(images.device)
    if isinstance(width, bool) or int(width) != width or width < 1:
        raise ValueError(f"width must be a positive integer, got {width}")
    if isinstance(color, Tensor):
        if color.shape != (b, 3):
            raise ValueError(f"a per-image color must have shape (B, 3) = ({b}, 3), got {tuple(color.shape)}")
        if color.dtype.is_floating_point or bool(((color < 0) | (color > 255)).any()):
            raise ValueError("a per-image color must hold integers in [0, 255]")
        col = color.to(device=images.device, dtype=torch.uint8).reshape(b, 3, 1, 1)
    else:
        col = torch.tensor(_check_color(color), dtype=torch.uint8, device=images.device).reshape(1, 3, 1, 1)
    wd = int(width)
    inner = boxes + torch.tensor([wd, wd, -wd, -wd], device=boxes.device)
    # box_masks of an inverted box (y2 < y1) is all False, so a box thinner than 2 * width is
    # filled completely, as it should be.
    ring = box_masks(boxes, h, w) & ~box_masks(inner, h, w)
    return torch.where(ring.unsqueeze(1), col, images)


def save_png(image: Tensor, path: str | Path) -> Path:
    """Write a uint8 (3, H, W), (1, H, W) or (H, W) image as PNG (parent folders are created)
    and return the path."""
    if not isinstance(image, Tensor) or image.dtype != torch.uint8:
        raise TypeError("image must be a uint8 tensor of shape (3, H, W), (1, H, W) or (H, W)")
    if image.ndim == 3 and image.shape[0] in (1, 3):
        arr = image.permute(1, 2, 0).squeeze(-1) if image.shape[0] == 1 else image.permute(1, 2, 0)
    elif image.ndim == 2:
        arr = image
    else:
        raise ValueError(f"image must have shape (3, H, W), (1, H, W) or (H, W), got {tuple(image.shape)}")
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.detach().cpu().contiguous().numpy()).save(path, format="PNG")
    return path


# --------------------------------------------------------------------------------------------
# Curves of training runs (``keepmix plot``).
# --------------------------------------------------------------------------------------------

#: The file a training run writes into its directory: one JSON object per epoch.
METRICS_FILE = "metrics.jsonl"


def _metrics_path(run: str | Path) -> Path:
    p = Path(run)
    if p.is_dir():
        p = p / METRICS_FILE
        if not p.is_file():
            raise FileNotFoundError(f"run directory {run} has no {METRICS_FILE} (has this run finished an epoch?)")
        return p
    if not p.is_file():
        raise FileNotFoundError(f"{run} is neither a run directory nor a metrics file")
    return p


def load_metrics(run: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records of a run: a run directory (holding ``metrics.jsonl``) or the
    path of a metrics file. Blank lines are skipped; a line that is not a JSON object is an
    error naming the file and line."""
    path = _metrics_path(run)
    records: list[dict[str, Any]] = []
    with path.open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno} is not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path}:{lineno} must hold a JSON object per epoch, got {type(rec).__name__}")
            records.append(rec)
    if not records:
        raise ValueError(f"{path} holds no records")
    return records


def _curve(records: list[dict[str, Any]], metric: str, source: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of one metric. Epochs without the metric (e.g. a test pass every k
    epochs, or a null) are left out; a run where the metric never appears is an error."""
    xs: list[float] = []
    ys: list[float] = []
    for i, rec in enumerate(records):
        v = rec.get(metric)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"{source}: {metric!r} must be a number, got {v!r} in record {i + 1}")
        xs.append(float(rec.get("epoch", i + 1)))
        ys.append(float(v))
    if not ys:
        keys = sorted({k for rec in records for k in rec})
        raise KeyError(f"{source} has no metric {metric!r}; its records hold {', '.join(keys)}")
    return xs, ys


def _fmt(v: float, like: float | None = None) -> str:
    """2 decimals for values like accuracies in %, 4 for values below 1 (fractions, losses);
    ``like`` picks the format from another value (a spread in the units of its mean)."""
    ref = v if like is None else like
    return f"{v:.2f}" if abs(ref) >= 1 else f"{v:.4f}"


# Axis labels for the metrics keepmix.train writes; any other key is shown as it is.
_METRIC_LABELS = {
    "test_acc": "test accuracy (%)",
    "train_acc": "train accuracy (%)",
    "test_loss": "test loss",
    "train_loss": "train loss",
    "images_per_s": "images / s",
}


def plot_runs(
    runs: Sequence[str | Path],
    out_png: str | Path,
    metric: str = "test_acc",
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Plot one metric of several runs against the epoch into one PNG and return its path.

    ``runs`` are run directories or ``metrics.jsonl`` files; ``labels`` (default: the run
    directory names) name them in the legend. Runs given the same label (seeds of one
    configuration) share a colour and one legend entry reporting the mean final value over
    them, ± the standard deviation and n; a label of its own reports its run's final value.
    A missing metrics file, or a run without the metric, is an error naming the run.
    """
    if isinstance(runs, (str, Path)):
        runs = [runs]
    runs = list(runs)
    if not runs:
        raise ValueError("runs is empty: give at least one run directory or metrics.jsonl file")
    if labels is None:
        labels = [(Path(r).parent.name if Path(r).is_file() else Path(r).name) or str(r) for r in runs]
    labels = [str(x) for x in labels]
    if len(labels) != len(runs):
        raise ValueError(f"labels has {len(labels)} entries but {len(runs)} runs were given")
    curves = [_curve(load_metrics(r), metric, str(r)) for r in runs]

    # Only the object-oriented API with an explicit Agg canvas: no pyplot, no global backend
    # switch, safe in a headless process and in a user's notebook alike.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    order = list(dict.fromkeys(labels))  # first-appearance order
    colors = [f"C{i % 10}" for i in range(len(order))]
    for name, color in zip(order, colors):
        idx = [i for i, lab in enumerate(labels) if lab == name]
        finals = torch.tensor([curves[i][1][-1] for i in idx], dtype=torch.float64)
        if len(idx) == 1:
            entry = f"{name} (final {_fmt(float(finals[0]))})"
        else:
            entry = f"{name} (final {_fmt(float(finals.mean()))} ± {_fmt(float(finals.std()), float(finals.mean()))}, n={len(idx)})"
        for k, i in enumerate(idx):
            xs, ys = curves[i]
            ax.plot(xs, ys, color=color, linewidth=1.4, marker="o" if len(xs) == 1 else None,
                    label=entry if k == 0 else None, alpha=1.0 if len(idx) == 1 else 0.8)
    ax.set_xlabel("epoch")
    pretty = _METRIC_LABELS.get(metric, metric)
    ax.set_ylabel(pretty)
    ax.set_title(title or f"{pretty} per epoch")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


# --------------------------------------------------------------------------------------------
# Top layer: a batch before and after each method (``keepmix show``).
# --------------------------------------------------------------------------------------------

_FONT_SIZE = 12
_LINE_H = 15  # line height of the default font at _FONT_SIZE
_TITLE_H = 3 * _LINE_H + 8
_HEADER_H = 2 * _LINE_H + 6
_LEGEND_H = _LINE_H + 8
_BG = (255, 255, 255)
_TEXT = (20, 20, 20)


def _font(size: int = _FONT_SIZE):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed-size bitmap font
        return ImageFont.load_default()


def _wrap(text: str, font, max_width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to ``max_width`` pixels; a word too long for a line is cut, and text
    beyond ``max_lines`` is dropped with an ellipsis (the picture's layout is fixed)."""
    lines: list[str] = []
    for word in text.split():
        cand = f"{lines[-1]} {word}" if lines else word
        if lines and font.getlength(cand) <= max_width:
            lines[-1] = cand
        else:
            lines.append(word)
    lines = lines or [""]
    for i, line in enumerate(lines):
        while len(line) > 1 and font.getlength(line) > max_width:
            line = line[:-1]
        lines[i] = line
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while len(last) > 1 and font.getlength(last + "…") > max_width:
            last = last[:-1]
        lines = lines[: max_lines - 1] + [last + "…"]
    return lines


@dataclass
class MethodOutput:
    """What one method did to the batch: its output (in the working form, see
    :func:`save_method_grid`), its regions (B, 4) or ``None``, and what the regions are
    (the op's ``region``, a key of :data:`REGION_COLORS`; ``None`` without regions)."""

    images: Tensor
    boxes: Tensor | None
    region: str | None


@dataclass
class MethodGrid:
    """The picture :func:`save_method_grid` wrote and where things are in it.

    ``image`` is the uint8 (3, H, W) picture saved at ``path``. Cell (row i, column j) shows
    image i under ``columns[j]`` and its top-left pixel is at
    ``(origin[0] + pad + i * (cell[0] + pad), origin[1] + pad + j * (cell[1] + pad))``.
    """

    path: Path
    image: Tensor
    columns: list[str]
    outputs: dict[str, MethodOutput]
    saliency: Tensor | None
    origin: tuple[int, int]
    cell: tuple[int, int]
    pad: int


def run_method(
    op: Callable[..., Any],
    images: Tensor,
    labels: Tensor | None = None,
    saliency: Tensor | None = None,
    generator: torch.Generator | None = None,
    name: str = "method",
) -> MethodOutput:
    """Apply one method to a batch and report its regions.

    * A keepmix op (:class:`keepmix.base.Op`) is run through its protocol, in two steps so
      that its regions are at hand::

          params = op.sample_params(images, labels, saliency=saliency, generator=generator)
          out = op.apply(images, labels if op.mixes_labels else None, params)
          boxes = op.regions(params)          # (B, 4) or None; what they are: op.region

      ``forward`` is exactly these two steps, so the output equals
      ``op(images, labels, saliency=saliency, generator=g)`` for the same seed. ``labels``
      and ``saliency`` may be None where the op needs none (an op that needs a saliency and
      gets none computes it with its own ``saliency_fn``, or raises).
    * Any other callable is called as ``op(images)``; it has no regions.
    """
    if isinstance(op, Op):
        params = op.sample_params(images, labels, saliency=saliency, generator=generator)
        out = op.apply(images, labels if op.mixes_labels else None, params)
        if op.mixes_labels:
            out = out[0]
        boxes = op.regions(params) if op.region is not None else None
        return MethodOutput(out, boxes, op.region if boxes is not None else None)
    if not callable(op):
        raise TypeError(f"method {name!r} must be a keepmix op or a callable on a batch, got {type(op).__name__}")
    out = op(images)
    if not isinstance(out, Tensor):
        raise TypeError(f"method {name!r} must return an image tensor, got {type(out).__name__}")
    return MethodOutput(out, None, None)


class InnerTransform(Op):
    """A :class:`keepmix.keep.KeepPaste`'s transform alone, drawn exactly as the KeepPaste draws it.

    ``sample_params`` is the KeepPaste's (the kept boxes, then the transform's own params,
    from the same generator); ``apply`` runs only the transform with those inner params,
    ``paste.transform.apply(images, None, params.inner)``. Given the same generator state,
    a column of ``InnerTransform(keep)`` and one of ``keep`` then show the same policy draw:
    the two pictures are identical outside the kept box (where ``keep`` restores the
    original). For a plain-callable transform (its randomness is its own) the transform is
    simply called. It has no regions of its own.
    """

    region = None

    def __init__(self, paste: Any) -> None:
        from keepmix.keep import KeepPaste, KeepPasteParams

        super().__init__()
        if not isinstance(paste, KeepPaste):
            raise TypeError(f"paste must be a keepmix.keep.KeepPaste, got {type(paste).__name__}")
        self.paste = paste
        self.params_type = KeepPasteParams

    @property
    def raw_pixels(self) -> bool:  # type: ignore[override]
        return self.paste.raw_pixels

    def needs_saliency(self, images: Tensor) -> bool:
        return self.paste.needs_saliency(images)

    def saliency_source(self):
        return self.paste.saliency_source()

    def _check_images(self, images: object) -> Tensor:
        return self.paste._check_images(images)

    def _check_params(self, params: object, images: Tensor) -> None:
        self.paste._check_params(params, images)

    def _sample(self, images, labels, saliency, generator):
        return self.paste._sample(images, labels, saliency, generator)

    def _apply_params(self, images, labels, params):
        t = self.paste.transform
        out = t.apply(images, None, params.inner) if isinstance(t, Op) else t(images)
        return out, labels


def _runs_on_raw_pixels(op: object) -> bool:
    """Whether an op runs on the uint8 batch before normalisation in training
    (``op.raw_pixels``: keepmix's policies, and KeepPaste around one). Plain callables and
    every other op run on the normalised float batch."""
    return isinstance(op, Op) and bool(op.raw_pixels)


def _prime_history(
    rm: Any, images: Tensor, labels: Tensor | None, saliency: Tensor | None, steps: int, generator: torch.Generator | None
) -> None:
    """Give a RecursiveMix the history of ``steps`` earlier steps, so the picture shows what it
    does in training (at the first step it does nothing). Step k's batch is the shown batch
    rolled by k images (with its saliency rolled alike, for a KeepRecursiveMix), so each image
    receives other images, pasted recursively; the history logits (only used by the
    consistency loss, never drawn) are zeros. ``sample_params`` + ``apply`` rather than the
    op's ``forward``, so that its ``last_params`` are left as they were."""
    if labels is None:
        raise ValueError("RecursiveMix needs labels to be shown")
    b = images.shape[0]
    for k in range(steps, 0, -1):
        xb, yb = images.roll(k, 0), labels.roll(k, 0)
        sb = None if saliency is None else saliency.roll(k, 0)
        mixed, targets = rm.apply(xb, yb, rm.sample_params(xb, yb, saliency=sb, generator=generator))
        rm.update(mixed, targets, torch.zeros(b, rm.num_classes, device=images.device))


def save_method_grid(
    images: Tensor,
    labels: Tensor | None,
    methods: Mapping[str, Callable[..., Any]],
    out_path: str | Path,
    *,
    model: Callable[[Tensor], Tensor] | None = None,
    saliency: Tensor | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    scale: int = 4,
    max_images: int = 8,
    generator: torch.Generator | None = None,
    class_names: Sequence[str] | None = None,
    untrained: bool = False,
    title: str | None = None,
    pad: int = 2,
    history_steps: int = 3,
) -> MethodGrid:
    """Draw a batch before and after each method into one PNG, like Figure 1 of KeepAugment.

    Columns: the original, its saliency map (when ``model`` or ``saliency`` is given, shown
    over a dimmed copy of the image), then one per method with its regions outlined: red
    where the op cut (Cutout, Random Erasing, selective-cut), green where the original was
    kept (selective-paste), blue where a partner was pasted (CutMix, RecursiveMix). Rows: the
    first ``max_images`` images, labelled with their class on the left.

    Args:
        images: (B, C, H, W) batch as the data pipeline gives it. uint8 is converted to float
            in [0, 1] and normalised with ``mean``/``std`` when given; float input is used as
            is (already normalised when ``mean``/``std`` are given). The model and every
            method see that float tensor, except the ops with ``raw_pixels`` (keepmix's
            policies, and KeepPaste around one), which get the uint8 batch when it is uint8,
            as in training (policies before normalisation, region and mixing ops after). The
            display undoes the normalisation.
        labels: (B,) class ids (or (B, K) soft targets) for the mixing ops, the saliency of
            the label logit and the row labels; ``None`` is allowed for methods that need none.
        methods: display name -> op (a keepmix op, run as :func:`run_method` does, or any
            callable ``op(images)``), in column order. Ops that mix need labels (and
            ``num_classes`` in their constructor for (B,) labels).
        model: a callable images -> logits; its vanilla-gradient saliency
            (:class:`keepmix.saliency.Saliency`, model state left untouched) is shown and
            passed to every keepmix op as ``saliency=``.
        saliency: a precomputed (B, H, W) saliency map instead of ``model``.
        scale: integer enlargement (nearest) so 32 px images are visible.
        generator: drives every method's random draws, so the same seed gives the same picture.
            Every column starts from the generator's state at the call, so columns that
            draw alike show the same draw (see :class:`InnerTransform`); without a generator
            the columns draw from torch's global generator in turn.
        class_names: names for the row labels (default: the class ids).
        untrained: say in the title that the saliency comes from an untrained model.
        title: the first title line (default: a description of the batch).
        pad: pixels between cells.
        history_steps: a RecursiveMix (or KeepRecursiveMix) is first run this many times on
            the batch rolled by 1, 2, ... images, so that it has a recursive history to paste
            (its own history is saved and restored: the op is left as it was).

    Returns a :class:`MethodGrid` with the picture, its layout and every method's output.
    """
    x = check_images(images, "images")
    check_generator(generator)
    if not isinstance(methods, Mapping):
        raise TypeError(f"methods must be a mapping name -> op, got {type(methods).__name__}")
    if isinstance(max_images, bool) or int(max_images) != max_images or max_images < 1:
        raise ValueError(f"max_images must be a positive integer, got {max_images}")
    if saliency is not None and model is not None:
        raise ValueError("give either model (to compute the saliency) or saliency (precomputed), not both")
    n = min(int(max_images), x.shape[0])
    x = x[:n]
    if labels is not None:
        if not isinstance(labels, Tensor) or labels.ndim not in (1, 2) or labels.shape[0] < n:
            raise ValueError(f"labels must be (B,) class ids or (B, K) soft targets for the {x.shape[0]} images")
        labels = labels[:n].to(x.device)
    if class_names is not None and labels is not None:
        ids = labels.argmax(1) if labels.ndim == 2 else labels
        if bool((ids < 0).any()) or bool((ids >= len(class_names)).any()):
            raise ValueError(f"labels must lie in [0, {len(class_names)}) to index class_names")

    # The working form every method and the model see.
    normalised = mean is not None or std is not None
    if x.dtype == torch.uint8:
        work = x.float() / 255.0
        if normalised:
            if mean is None or std is None:
                raise ValueError("mean and std must be given together or both left out")
            m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).reshape(1, -1, 1, 1)
            s = torch.as_tensor(std, dtype=torch.float32, device=x.device).reshape(1, -1, 1, 1)
            work = (work - m) / s
    else:
        work = x

    def display(t: Tensor) -> Tensor:
        if t.dtype == torch.uint8 or not normalised:
            u8 = to_uint8_image(t.detach())
        else:
            u8 = to_uint8_image(t.detach(), mean, std)
        u8 = u8.expand(-1, 3, -1, -1) if u8.shape[1] == 1 else u8
        return upscale_nearest(u8, scale).cpu()

    sal = None
    if model is not None:
        from keepmix.saliency import Saliency

        sal = Saliency(model)(work, labels).detach()
    elif saliency is not None:
        if not isinstance(saliency, Tensor) or saliency.ndim != 3 or saliency.shape[0] < n or saliency.shape[1:] != x.shape[2:]:
            raise ValueError(f"saliency must be a (B, H, W) map of the images' size {tuple(x.shape[2:])}")
        sal = saliency[:n].detach().to(x.device)

    columns = ["original"]
    cells = [display(work)]
    if sal is not None:
        columns.append("saliency" + (" (untrained model)" if untrained else ""))
        # The map over a dimmed grey copy of the image: the object stays recognisable while
        # the colours remain those of the map.
        base = display(work).float().mean(1, keepdim=True).mul(0.5).round().to(torch.uint8).expand(-1, 3, -1, -1)
        heat = upscale_nearest(saliency_to_rgb(sal).cpu(), scale)
        cells.append(overlay(base.contiguous(), heat, 0.75))
    outputs: dict[str, MethodOutput] = {}
    line = max(1, int(scale) // 2)
    if isinstance(history_steps, bool) or int(history_steps) != history_steps or history_steps < 0:
        raise ValueError(f"history_steps must be an integer >= 0, got {history_steps}")
    from keepmix.recursive import RecursiveMix

    # Every column starts from the same generator state, so two columns that draw alike
    # (an op and its Keep version, a policy and its KeepPaste through InnerTransform) show
    # the same draw.
    start = generator.get_state() if generator is not None else None
    for name, op in methods.items():
        if generator is not None:
            generator.set_state(start)
        inp = x if x.dtype == torch.uint8 and _runs_on_raw_pixels(op) else work
        if not isinstance(op, RecursiveMix):  # KeepRecursiveMix is one too
            res = run_method(op, inp, labels, sal, generator, name=str(name))
        else:
            saved = op.get_extra_state()
            try:
                op.reset()
                _prime_history(op, inp, labels, sal, int(history_steps), generator)
                res = run_method(op, inp, labels, sal, generator, name=str(name))
            finally:
                op.set_extra_state(saved)
        if res.images.shape != work.shape:
            raise ValueError(f"method {name!r} returned shape {tuple(res.images.shape)}, expected {tuple(work.shape)}")
        outputs[str(name)] = res
        cell = display(res.images)
        if res.boxes is not None:
            cell = draw_boxes(cell, res.boxes.cpu() * int(scale), REGION_COLORS[res.region], width=line)
        columns.append(str(name))
        cells.append(cell)

    # Cells row-major (image i, column j) into one grid, then the text around it with PIL.
    ncol = len(cells)
    stacked = torch.stack(cells, dim=1).reshape(n * ncol, 3, *cells[0].shape[-2:])
    grid = make_grid(stacked, nrow=ncol, padding=pad, pad_value=_BG)
    cell_h, cell_w = cells[0].shape[-2:]

    from PIL import Image, ImageDraw

    font = _font()
    row_names = []
    if labels is not None:
        ids = (labels.argmax(1) if labels.ndim == 2 else labels).tolist()
        row_names = [class_names[i] if class_names is not None else f"class {i}" for i in ids]
    left = (max(int(font.getlength(s)) for s in row_names) + 10) if row_names else 0
    top = _TITLE_H + _HEADER_H
    canvas = Image.new("RGB", (left + grid.shape[2], top + grid.shape[1] + _LEGEND_H), _BG)
    canvas.paste(Image.fromarray(grid.permute(1, 2, 0).numpy()), (left, top))
    draw = ImageDraw.Draw(canvas)
    h, w = x.shape[-2:]
    head = title or f"keepmix show: {n} images of {h}x{w}, each method applied to the same batch"
    if sal is not None:
        sub = "saliency: max over channels of |d label logit / d input|" + (
            ", from an UNTRAINED model (random weights): it shows the mechanism, not a trained map" if untrained else ""
        )
    else:
        sub = "no saliency (no model given)"
    lines = _wrap(head, font, canvas.width - 8, 1) + _wrap(sub, font, canvas.width - 8, 2)
    for k, text in enumerate(lines):
        draw.text((4, 4 + k * _LINE_H), text, fill=_TEXT, font=font)
    for j, name in enumerate(columns):
        x0 = left + pad + j * (cell_w + pad)
        for k, text in enumerate(_wrap(name, font, cell_w, 2)):
            draw.text((x0 + (cell_w - font.getlength(text)) / 2, _TITLE_H + 2 + k * _LINE_H), text, fill=_TEXT, font=font)
    for i, text in enumerate(row_names):
        y0 = top + pad + i * (cell_h + pad) + (cell_h - _LINE_H) // 2
        draw.text((4, y0), text, fill=_TEXT, font=font)
    # Legend: one coloured swatch per region kind present in the picture.
    xl, yl = 4, top + grid.shape[1] + 4
    for kind, desc in (("cut", "region cut / changed"), ("kept", "region kept from the original"), ("pasted", "patch from another image")):
        if any(o.boxes is not None and o.region == kind for o in outputs.values()):
            draw.rectangle((xl, yl + 2, xl + 10, yl + 12), outline=REGION_COLORS[kind], width=2)
            draw.text((xl + 14, yl), desc, fill=_TEXT, font=font)
            xl += 14 + int(font.getlength(desc)) + 16
    picture = torch.from_numpy(np.array(canvas)).permute(2, 0, 1).contiguous()
    path = save_png(picture, out_path)
    return MethodGrid(path, picture, columns, outputs, sal, (top, left), (cell_h, cell_w), pad)
