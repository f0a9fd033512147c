"""Pictures of what ops do (``keepmix show`` and the grid at the end of a run).

The only part of keepmix.viz that knows about augmentation: it runs ops through the op
protocol of :mod:`keepmix.base` and asks it, never the op's type, what to draw:
``sample_params`` + ``transform`` for the output, ``op.region`` / ``op.regions(params)`` for the
boxes and their colour, ``op.mixes_labels`` for whether labels go in, ``op.raw_pixels`` for
whether the op runs on the uint8 batch (before normalisation, as in training). The drawing
itself is :mod:`keepmix.viz.draw`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

from keepmix._checks import check_generator, check_images
from keepmix.base import Op
from keepmix.viz.draw import REGION_COLORS, draw_boxes, make_grid, overlay, saliency_to_rgb, save_png, to_uint8_image, upscale_nearest

__all__ = ["MethodOutput", "MethodGrid", "run_method", "InnerTransform", "save_method_grid"]

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
          out = op.transform(images, labels if op.mixes_labels else None, params)
          boxes = op.regions(params)          # (B, 4) or None; what they are: op.region

      ``forward`` is exactly these two steps, so the output equals
      ``op(images, labels, saliency=saliency, generator=g)`` for the same seed. ``labels``
      and ``saliency`` may be None where the op needs none (an op that needs a saliency and
      gets none computes it with its own ``saliency_fn``, or raises).
    * Any other callable is called as ``op(images)``; it has no regions.
    """
    if isinstance(op, Op):
        params = op.sample_params(images, labels, saliency=saliency, generator=generator)
        result = op.transform(images, labels if op.mixes_labels else None, params)
        out = result[0] if isinstance(result, tuple) else result  # a tuple exactly when op.mixes_labels
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
    from the same generator); ``transform`` runs only the transform with those inner params,
    ``paste.inner.transform(images, None, params.inner)``. Given the same generator state,
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
        # Per instance: KeepPasteParams is imported lazily above (keepmix.keep is not imported at module level).
        self.params_type = KeepPasteParams  # type: ignore[misc]

    # A property over Op's plain class attribute: the answer is the wrapped KeepPaste's.
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

    def make_params(self, images, labels, saliency, generator):
        return self.paste.make_params(images, labels, saliency, generator)

    def apply_params(self, images, labels, params):
        t = self.paste.inner
        out = t.transform(images, None, params.inner) if isinstance(t, Op) else t(images)
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
    consistency loss, never drawn) are zeros. ``sample_params`` + ``transform`` rather than the
    op's ``forward``, so that its ``last_params`` are left as they were."""
    if labels is None:
        raise ValueError("RecursiveMix needs labels to be shown")
    b = images.shape[0]
    for k in range(steps, 0, -1):
        xb, yb = images.roll(k, 0), labels.roll(k, 0)
        sb = None if saliency is None else saliency.roll(k, 0)
        mixed, targets = rm.transform(xb, yb, rm.sample_params(xb, yb, saliency=sb, generator=generator))
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
    saliency_note: str | None = None,
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
        history_steps: an op that keeps a history of earlier steps (RecursiveMix,
            KeepRecursiveMix: one with ``reset``, ``update`` and ``get_extra_state`` /
            ``set_extra_state``) is first run this many times on the batch rolled by 1, 2, ...
            images, so that it has a recursive history to paste (its own history is saved and
            restored: the op is left as it was).
        saliency_note: the subtitle's description of the saliency map (default: the
            full-resolution gradient map that ``model`` gives).

    Returns a :class:`MethodGrid` with the picture, its layout and every method's output.
    """
    x = check_images(images, "images")
    check_generator(generator)
    if not isinstance(methods, Mapping):
        raise TypeError(f"methods must be a mapping name -> op, got {type(methods).__name__}")
    if isinstance(max_images, bool) or int(max_images) != max_images or max_images < 1:
        raise ValueError(f"max_images must be a positive integer, got {max_images}")
    if isinstance(history_steps, bool) or int(history_steps) != history_steps or history_steps < 0:
        raise ValueError(f"history_steps must be an integer >= 0, got {history_steps}")
    if saliency is not None and model is not None:
        raise ValueError("give either model (to compute the saliency) or saliency (precomputed), not both")
    n = min(int(max_images), x.shape[0])
    x = x[:n]
    labels = _check_labels(labels, x, n, class_names)
    work = _working_form(x, mean, std)
    show = _Display(mean is not None or std is not None, mean, std, scale)
    sal = _saliency_of(model, saliency, work, labels, x, n)

    columns, cells = ["original"], [show(work)]
    if sal is not None:
        columns.append("saliency" + (" (untrained model)" if untrained else ""))
        cells.append(_saliency_cell(show(work), sal, scale))
    outputs: dict[str, MethodOutput] = {}
    # Every column starts from the same generator state, so two columns that draw alike
    # (an op and its Keep version, a policy and its KeepPaste through InnerTransform) show
    # the same draw.
    start = generator.get_state() if generator is not None else None
    for name, op in methods.items():
        if generator is not None and start is not None:  # start is None exactly without a generator
            generator.set_state(start)
        inp = x if x.dtype == torch.uint8 and _runs_on_raw_pixels(op) else work
        res = _run_column(op, inp, labels, sal, generator, str(name), int(history_steps))
        if res.images.shape != work.shape:
            raise ValueError(f"method {name!r} returned shape {tuple(res.images.shape)}, expected {tuple(work.shape)}")
        outputs[str(name)] = res
        columns.append(str(name))
        cells.append(_method_cell(show(res.images), res, scale))

    size = (int(x.shape[-2]), int(x.shape[-1]))
    texts = _Texts(title, _subtitle(sal, untrained, saliency_note), columns, _row_names(labels, class_names), size, n)
    picture, origin = _compose(cells, texts, outputs, pad)
    path = save_png(picture, out_path)
    cell = (int(cells[0].shape[-2]), int(cells[0].shape[-1]))
    return MethodGrid(path, picture, columns, outputs, sal, origin, cell, pad)


def _check_labels(labels: Tensor | None, x: Tensor, n: int, class_names: Sequence[str] | None) -> Tensor | None:
    """The first ``n`` labels on the images' device, checked: (B,) ids or (B, K) soft targets
    whose rows sum to 1, within ``class_names`` when given."""
    if labels is None:
        return None
    if not isinstance(labels, Tensor) or labels.ndim not in (1, 2) or labels.shape[0] < n:
        raise ValueError(f"labels must be (B,) class ids or (B, K) soft targets for the {x.shape[0]} images")
    labels = labels[:n].to(x.device)
    if labels.ndim == 2:
        if not labels.dtype.is_floating_point:
            raise TypeError(
                f"labels of shape (B, K) are soft targets and must be floating point, got {labels.dtype}; give class ids as shape (B,)"
            )
        sums = labels.double().sum(1)
        off = (sums - 1).abs() > 1e-3
        if bool((labels < 0).any()) or bool(off.any()):
            bad = int(off.nonzero()[0]) if bool(off.any()) else 0
            raise ValueError(
                f"labels of shape (B, K) are soft targets: each row must be >= 0 and sum to 1, but row {bad} sums to {float(sums[bad]):.4g}"
            )
    if class_names is not None:
        ids = labels.argmax(1) if labels.ndim == 2 else labels
        if bool((ids < 0).any()) or bool((ids >= len(class_names)).any()):
            raise ValueError(f"labels must lie in [0, {len(class_names)}) to index class_names")
    return labels


def _working_form(x: Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> Tensor:
    """The float batch every method and the model see: uint8 to [0, 1], normalised when
    ``mean``/``std`` are given; float input as it is."""
    if x.dtype != torch.uint8:
        return x
    work = x.float() / 255.0
    if mean is None and std is None:
        return work
    if mean is None or std is None:
        raise ValueError("mean and std must be given together or both left out")
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).reshape(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).reshape(1, -1, 1, 1)
    return (work - m) / s


@dataclass
class _Display:
    """A batch in working form -> uint8 RGB cells, enlarged ``scale`` times, on the CPU."""

    normalised: bool
    mean: Sequence[float] | None
    std: Sequence[float] | None
    scale: int

    def __call__(self, t: Tensor) -> Tensor:
        if t.dtype == torch.uint8 or not self.normalised:
            u8 = to_uint8_image(t.detach())
        else:
            u8 = to_uint8_image(t.detach(), self.mean, self.std)
        u8 = u8.expand(-1, 3, -1, -1) if u8.shape[1] == 1 else u8
        return upscale_nearest(u8, self.scale).cpu()


def _saliency_of(
    model: Callable[[Tensor], Tensor] | None, saliency: Tensor | None, work: Tensor, labels: Tensor | None, x: Tensor, n: int
) -> Tensor | None:
    """The (n, H, W) map shown and passed to the ops: the model's gradient saliency, or the given one."""
    if model is not None:
        from keepmix.saliency import Saliency

        return Saliency(model)(work, labels).detach()
    if saliency is None:
        return None
    if not isinstance(saliency, Tensor) or saliency.ndim != 3 or saliency.shape[0] < n or saliency.shape[1:] != x.shape[2:]:
        raise ValueError(f"saliency must be a (B, H, W) map of the images' size {tuple(x.shape[2:])}")
    return saliency[:n].detach().to(x.device)


def _saliency_cell(shown: Tensor, sal: Tensor, scale: int) -> Tensor:
    """The map over a dimmed grey copy of the image: the object stays recognisable while the
    colours remain those of the map."""
    base = shown.float().mean(1, keepdim=True).mul(0.5).round().to(torch.uint8).expand(-1, 3, -1, -1)
    heat = upscale_nearest(saliency_to_rgb(sal).cpu(), scale)
    return overlay(base.contiguous(), heat, 0.75)


def _keeps_history(op: object) -> bool:
    """Whether ``op`` keeps a history of earlier steps to paste from (the protocol RecursiveMix
    follows: ``reset``, ``update``, ``get_extra_state`` / ``set_extra_state``)."""
    return all(callable(getattr(op, a, None)) for a in ("reset", "update", "get_extra_state", "set_extra_state"))


def _run_column(
    op: Callable[..., Any], inp: Tensor, labels: Tensor | None, sal: Tensor | None, generator: torch.Generator | None, name: str, steps: int
) -> MethodOutput:
    """One method's column: :func:`run_method`, after ``steps`` primed steps for an op with a
    history (its own history is restored afterwards)."""
    if not _keeps_history(op):
        return run_method(op, inp, labels, sal, generator, name=name)
    h = cast(Any, op)
    saved = h.get_extra_state()
    try:
        h.reset()
        _prime_history(h, inp, labels, sal, steps, generator)
        return run_method(op, inp, labels, sal, generator, name=name)
    finally:
        h.set_extra_state(saved)


def _method_cell(shown: Tensor, res: MethodOutput, scale: int) -> Tensor:
    """A method's output with its regions outlined in their colour."""
    if res.boxes is None or res.region is None:
        return shown
    return draw_boxes(shown, res.boxes.cpu() * int(scale), REGION_COLORS[res.region], width=max(1, int(scale) // 2))


def _row_names(labels: Tensor | None, class_names: Sequence[str] | None) -> list[str]:
    if labels is None:
        return []
    ids = (labels.argmax(1) if labels.ndim == 2 else labels).tolist()
    return [class_names[i] if class_names is not None else f"class {i}" for i in ids]


def _subtitle(sal: Tensor | None, untrained: bool, note: str | None) -> str:
    if sal is None:
        return "no saliency (no model given)"
    text = note or "saliency: max over channels of |d label logit / d input|"
    if untrained:
        text += ", from an UNTRAINED model (random weights): it shows the mechanism, not a trained map"
    return text


@dataclass
class _Texts:
    """The words around the grid: title, subtitle, column headers, row names."""

    title: str | None
    subtitle: str
    columns: list[str]
    rows: list[str]
    size: tuple[int, int]
    n: int


def _compose(cells: list[Tensor], texts: _Texts, outputs: Mapping[str, MethodOutput], pad: int) -> tuple[Tensor, tuple[int, int]]:
    """Cells row-major (image i, column j) into one grid, then the text around it with PIL.
    Returns the picture (uint8 (3, H, W)) and the grid's top-left corner ``(top, left)``."""
    from PIL import Image, ImageDraw

    n, ncol = texts.n, len(cells)
    stacked = torch.stack(cells, dim=1).reshape(n * ncol, 3, *cells[0].shape[-2:])
    grid = make_grid(stacked, nrow=ncol, padding=pad, pad_value=_BG)
    cell_h, cell_w = cells[0].shape[-2:]
    font = _font()
    left = (max(int(font.getlength(s)) for s in texts.rows) + 10) if texts.rows else 0
    top = _TITLE_H + _HEADER_H
    canvas = Image.new("RGB", (left + grid.shape[2], top + grid.shape[1] + _LEGEND_H), _BG)
    canvas.paste(Image.fromarray(grid.permute(1, 2, 0).numpy()), (left, top))
    draw = ImageDraw.Draw(canvas)
    h, w = texts.size
    head = texts.title or f"keepmix show: {n} images of {h}x{w}, each method applied to the same batch"
    lines = _wrap(head, font, canvas.width - 8, 1) + _wrap(texts.subtitle, font, canvas.width - 8, 2)
    for k, text in enumerate(lines):
        draw.text((4, 4 + k * _LINE_H), text, fill=_TEXT, font=font)
    for j, name in enumerate(texts.columns):
        x0 = left + pad + j * (cell_w + pad)
        for k, text in enumerate(_wrap(name, font, cell_w, 2)):
            draw.text((x0 + (cell_w - font.getlength(text)) / 2, _TITLE_H + 2 + k * _LINE_H), text, fill=_TEXT, font=font)
    for i, text in enumerate(texts.rows):
        draw.text((4, top + pad + i * (cell_h + pad) + (cell_h - _LINE_H) // 2), text, fill=_TEXT, font=font)
    _legend(draw, font, outputs, 4, top + grid.shape[1] + 4)
    return torch.from_numpy(np.array(canvas)).permute(2, 0, 1).contiguous(), (top, left)


def _legend(draw: Any, font: Any, outputs: Mapping[str, MethodOutput], xl: int, yl: int) -> None:
    """One coloured swatch per region kind present in the picture."""
    for kind, desc in (("cut", "region cut / changed"), ("kept", "region kept from the original"), ("pasted", "patch from another image")):
        if any(o.boxes is not None and o.region == kind for o in outputs.values()):
            draw.rectangle((xl, yl + 2, xl + 10, yl + 12), outline=REGION_COLORS[kind], width=2)
            draw.text((xl + 14, yl), desc, fill=_TEXT, font=font)
            xl += 14 + int(font.getlength(desc)) + 16
