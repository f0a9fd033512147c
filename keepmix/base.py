"""The one call protocol every keepmix op follows.

Every op is an ``nn.Module`` with three methods, and ``forward`` is written once, here::

    params = op.sample_params(images, labels=None, *, saliency=None, generator=None)
    out    = op.transform(images, labels, params)
    out    = op(images, labels=None, *, saliency=None, generator=None)   # = transform(sample_params(...))

``out`` has the structure of the input: ``images`` when called without labels,
``(images, targets)`` with labels. Label-preserving ops hand the labels back unchanged (the
same object); mixing ops return float32 (B, K) soft targets and need labels.

* ``sample_params`` draws everything random, per image, from ``generator`` and returns a
  frozen :class:`Params` of small tensors (boxes, lambdas, partners, op ids, label weights).
  It is the only place that reads a saliency map.
* ``transform`` is deterministic given the params: it never draws a random number, never reads
  the saliency and never modifies its inputs.

No method of ``nn.Module`` is shadowed (``transform`` is torchvision v2's name), so an op is an
ordinary submodule: a model that holds one takes ``.apply(init_fn)``, ``.to()``,
``state_dict()`` and ``torch.compile``.

A new op overrides two public methods, :meth:`Op.make_params` (draw) and
:meth:`Op.apply_params` (apply); checks run once, at the boundary (:meth:`Op.forward`,
:meth:`Op.sample_params`, :meth:`Op.transform`), so those two and the kernels behind them
(:mod:`keepmix.functional`) take checked input and check nothing. ``forward`` also takes a single (C, H, W) image (ops
with ``single_image``) or a PIL image (ops with ``pil_image``) and returns the same type.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

import torch
from torch import Tensor, nn

from keepmix._checks import check_images
from keepmix.targets import check_soft_targets, to_soft_targets

__all__ = ["Params", "RegionParams", "Op", "RegionOp", "Placement", "Region", "SaliencyFn", "check_saliency", "OpOutput"]

Placement = Literal["center", "inside"]
#: What an op's regions are, for pictures: the op acted inside them ("cut"), kept the
#: original there ("kept"), or pasted another image there ("pasted").
Region = Literal["cut", "kept", "pasted"]
SaliencyFn = Callable[[Tensor, Tensor | None], Tensor]
OpOutput = Tensor | tuple[Tensor, Tensor]

P = TypeVar("P", bound="Params")


@dataclass(frozen=True)
class Params:
    """Base of every op's parameters: a frozen dataclass of per-image tensors.

    Every tensor field has the batch as its first dimension, so a row of the batch has a row
    of the parameters (:meth:`rows`). Fields may be ``None`` where an op has nothing to say.
    """

    def replace(self: P, **changes: Any) -> P:
        """A copy with some fields replaced (e.g. boxes chosen elsewhere)."""
        return dataclasses.replace(self, **changes)

    def to(self: P, device: torch.device | str) -> P:
        """The same parameters on ``device``."""
        changes: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, (Tensor, Params)):
                changes[f.name] = v.to(device)
        return dataclasses.replace(self, **changes)

    def rows(self: P, index: Tensor | slice) -> P:
        """The parameters of some images (an index tensor or a slice of the batch)."""
        changes: dict[str, Tensor | Params] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                changes[f.name] = v[index]
            elif isinstance(v, Params):
                changes[f.name] = v.rows(index)
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class RegionParams(Params):
    """Where a region op acts on each image.

    ``sizes`` (B, 2) int64 is the (h, w) the op asked for before any clipping, (0, 0) for an
    image the op skips; ``boxes`` (B, 4) int64 ``(y1, x1, y2, x2)`` is where it acts (see
    :mod:`keepmix.functional.boxes`). Subclasses add op-specific fields.
    """

    boxes: Tensor
    sizes: Tensor


def check_saliency(saliency: object, images: Tensor, name: str = "saliency") -> Tensor:
    """Check a (B, H, W) floating-point saliency map against ``images`` (B, C, H, W)."""
    if not isinstance(saliency, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, H, W), got {type(saliency).__name__}")
    b, _, h, w = images.shape
    if saliency.ndim != 3 or tuple(saliency.shape) != (b, h, w):
        raise ValueError(
            f"{name} must have shape (B, H, W) = {(b, h, w)} to match images {tuple(images.shape)}, got {tuple(saliency.shape)}"
        )
    if saliency.device != images.device:
        raise ValueError(f"{name} is on {saliency.device} but images are on {images.device}; move them to one device")
    if not saliency.dtype.is_floating_point:
        raise TypeError(f"{name} must be floating point, got {saliency.dtype}")
    return saliency


class Op(nn.Module, metaclass=abc.ABCMeta):
    """Base of every keepmix op: the boundary checks, ``forward``, and what the op is.

    Subclasses implement ``make_params(images, labels, saliency, generator) -> Params`` and
    ``apply_params(images, labels, params) -> (images, targets)`` on checked input; ``labels`` there
    are float32 (B, K) soft targets for mixing ops and the caller's labels (or None) otherwise.
    """

    #: Mixing ops need labels and return float32 (B, K) soft targets.
    mixes_labels: ClassVar[bool] = False
    #: ``forward`` also takes one (C, H, W) image (per-image ops) ...
    single_image: ClassVar[bool] = False
    #: ... and a PIL image (the policies).
    pil_image: ClassVar[bool] = False
    #: The channel counts the op supports (None: any).
    channels: ClassVar[tuple[int, ...] | None] = None
    #: The op's meaning depends on raw pixel values (uint8, or floats in [0, 1]): it runs
    #: before normalisation, like the policies.
    raw_pixels: ClassVar[bool] = False
    #: The output is differentiable with respect to the images (False: ``requires_grad``
    #: images are refused, e.g. the PIL-exact policies, whose integer arithmetic has no
    #: useful gradient).
    differentiable: ClassVar[bool] = True
    #: What :meth:`regions` marks, for pictures (None: the op has no regions).
    region: ClassVar[Region | None] = None
    #: The type ``sample_params`` returns (``transform`` refuses anything else).
    params_type: ClassVar[type[Params]] = Params
    #: K for (B,) integer labels of a mixing op (None: soft labels give K).
    num_classes: int | None = None

    # ----------------------------------------------------------------- subclass hooks
    @abc.abstractmethod
    def make_params(self, images: Tensor, labels: Tensor | None, saliency: Tensor | None, generator: torch.Generator | None) -> Params:
        """Draw every image's params for checked input (override this; unchecked)."""

    @abc.abstractmethod
    def apply_params(self, images: Tensor, labels: Tensor | None, params: Params) -> tuple[Tensor, Tensor | None]:
        """Apply checked params; returns ``(images, targets or labels)`` (override this; pure, unchecked)."""

    def _check_params(self, params: object, images: Tensor) -> None:
        """Raise unless ``params`` is this op's kind of params (subclasses add shape checks)."""
        if not isinstance(params, self.params_type):
            raise TypeError(
                f"params must be a {self.params_type.__name__} from {type(self).__name__}.sample_params, got {type(params).__name__}"
            )

    def needs_saliency(self, images: Tensor) -> bool:
        """Whether ``sample_params`` needs a saliency map for this batch."""
        return False

    def saliency_source(self) -> SaliencyFn | None:
        """The function that computes the saliency when none is passed (None: none)."""
        return None

    def regions(self, params: Params) -> Tensor | None:
        """(B, 4) boxes of the regions the op acts on (see :attr:`region`), or None."""
        return None

    def _after_forward(self, params: Params) -> None:
        """Called by ``forward`` after ``apply_params`` (a stateful op records what it needs)."""

    # ----------------------------------------------------------------- the one boundary
    # Every public entry (forward, sample_params, transform) checks its input here, once; the
    # hooks and the kernels behind them check nothing.
    def _check_images(self, images: object) -> Tensor:
        """The images check (ops with more to say about their images extend it)."""
        x = check_images(images, channels=self.channels)
        if x.requires_grad and not self.differentiable:
            raise TypeError(
                f"{type(self).__name__} is not differentiable with respect to the images, which have requires_grad=True: "
                "pass images.detach() (augment before the model, as usual)"
            )
        return x

    def _check_labels(self, images: Tensor, labels: object) -> Tensor | None:
        """The labels as ``make_params`` / ``apply_params`` take them: checked once, and float32
        (B, K) soft targets for a mixing op."""
        if labels is None:
            if self.mixes_labels:
                raise ValueError(
                    f"{type(self).__name__} mixes labels: call it with labels, op(images, labels), (B,) class ids or (B, K) soft targets"
                )
            return None
        if not isinstance(labels, Tensor):
            raise TypeError(f"labels must be a torch.Tensor of shape (B,) or (B, K), got {type(labels).__name__}")
        batch = images.shape[0]
        if labels.ndim not in (1, 2) or labels.shape[0] != batch:
            raise ValueError(f"labels must have shape (B,) or (B, K) with B = {batch} (the images' batch), got {tuple(labels.shape)}")
        if labels.device != images.device:
            raise ValueError(f"labels is on {labels.device} but images are on {images.device}; move them to one device")
        if self.mixes_labels:
            return to_soft_targets(labels, self.num_classes)
        if labels.ndim == 2 and labels.dtype.is_floating_point:
            check_soft_targets(labels)
        return labels

    def _resolve_saliency(self, images: Tensor, labels: Tensor | None, saliency: object) -> Tensor | None:
        """The saliency map ``make_params`` reads: the caller's, or the op's source's; detached
        (a map is never differentiated through), or None when the op needs none."""
        if saliency is not None:
            sal = check_saliency(saliency, images)
        elif not self.needs_saliency(images):
            return None
        else:
            fn = self.saliency_source()
            if fn is None:
                raise ValueError(
                    f"{type(self).__name__} needs a saliency map: pass saliency=(B, H, W) tensor, "
                    "or give its placer saliency_fn=Saliency(model)"
                )
            sal = check_saliency(fn(images, labels), images, name="saliency_fn(images, labels)")
        return sal.detach() if sal.requires_grad else sal

    def _validate(
        self, images: object, labels: object, saliency: object, generator: object, need_labels: bool = True
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """The one validator: ``(images, labels as the hooks take them, saliency or None)``."""
        x = self._check_images(images)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        # sample_params draws without labels too (a mixing op's draws do not depend on them).
        y = None if labels is None and not need_labels else self._check_labels(x, labels)
        sal = self._resolve_saliency(x, labels, saliency) if x.shape[0] else None  # type: ignore[arg-type]  # checked above
        return x, y, sal

    # ----------------------------------------------------------------- the protocol
    def sample_params(
        self,
        images: Tensor,
        labels: Tensor | None = None,
        *,
        saliency: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Params:
        """Draw every image's parameters from ``generator`` (eager; the only random step)."""
        x, y, sal = self._validate(images, labels, saliency, generator, need_labels=False)
        return self.make_params(x, y, sal, generator)

    def transform(self, images: Tensor, labels: Tensor | None, params: Params) -> OpOutput:
        """Apply ``params`` (deterministic; the inputs are never modified).

        Returns ``images`` when ``labels`` is None, else ``(images, targets)``.
        """
        x = self._check_images(images)
        y = self._check_labels(x, labels)
        self._check_params(params, x)
        out, targets = self.apply_params(x, y, params)
        return _finish(out, x, targets, labels)

    def forward(
        self,
        images: Any,
        labels: Tensor | None = None,
        *,
        saliency: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Any:
        """``transform(images, labels, sample_params(images, labels, saliency=..., generator=...))``.

        Returns ``images`` when called without labels, ``(images, targets)`` with labels. A
        single (C, H, W) image (with a (H, W) saliency and a scalar label) or a PIL image
        comes back as the same type, for the ops that take one. An empty batch (B = 0) comes
        back as it went in, with (0, K) targets from a mixing op.
        """
        if not isinstance(images, Tensor) or images.ndim != 4:
            return self._forward_one(images, labels, saliency, generator)
        x, y, sal = self._validate(images, labels, saliency, generator)
        if x.shape[0] == 0:
            return _finish(x, x, y, labels)
        params = self.make_params(x, y, sal, generator)
        out, targets = self.apply_params(x, y, params)
        if type(self)._after_forward is not Op._after_forward:
            self._after_forward(params)
        return _finish(out, x, targets, labels)

    def _forward_one(self, image: Any, label: Any, saliency: Any, generator: torch.Generator | None) -> Any:
        """``forward`` on one (C, H, W) or PIL image (or a bad input: ``as_batch`` names it)."""
        from keepmix.single import as_batch

        batch, batch_labels, batch_saliency, unbatch = as_batch(self, image, label, saliency)
        if unbatch is None:  # a tensor that is not 4-D and not one image: the batch check says why
            self._check_images(batch)
        out = self.forward(batch, batch_labels, saliency=batch_saliency, generator=generator)
        images = out if batch_labels is None else out[0]
        # Single images go through label-preserving ops only: the caller's label comes back.
        return unbatch(images) if label is None else (unbatch(images), label)  # type: ignore[misc]  # unbatch is set: a 4-D batch came back


def _finish(out: Tensor, images: Tensor, targets: Tensor | None, labels: Any) -> OpOutput:
    """The output in the input's structure and memory format (channels_last in, channels_last out)."""
    if (
        images.shape[1] > 1
        and images.is_contiguous(memory_format=torch.channels_last)
        and not images.is_contiguous()
        and not out.is_contiguous(memory_format=torch.channels_last)
    ):
        out = out.contiguous(memory_format=torch.channels_last)
    if labels is None:
        return out
    return out, targets if targets is not None else labels


class RegionOp(Op):
    """An op that acts on one box per image: draw sizes, place boxes, apply.

    ``placement`` is how the op itself places a box of a given size, and so the set of
    candidate positions a :class:`keepmix.placers.KeepPlacer` scores:

    * ``"center"``: the centre is uniform over all H x W pixels and the box is clipped at the
      border (Cutout, CutMix, RecursiveMix);
    * ``"inside"``: the top-left corner is uniform over the positions that keep the whole box
      inside the image (Random Erasing).

    ``placer`` decides where each box goes: :class:`keepmix.placers.UniformPlacer` (default)
    is the op's own rule, :class:`keepmix.placers.KeepPlacer` is KeepAugment's selective-cut.
    """

    placement: ClassVar[Placement] = "center"
    region: ClassVar[Region | None] = "cut"
    params_type: ClassVar[type[Params]] = RegionParams

    def __init__(self, placer: Any = None) -> None:
        super().__init__()
        from keepmix.placers import Placer, UniformPlacer

        if placer is None:
            placer = UniformPlacer()
        if not isinstance(placer, Placer):
            raise TypeError(f"placer must be a keepmix Placer (UniformPlacer, KeepPlacer), got {type(placer).__name__}")
        self.placer = placer

    def needs_saliency(self, images: Tensor) -> bool:
        return self.placer.needs_saliency

    def saliency_source(self) -> SaliencyFn | None:
        return self.placer.saliency_fn

    def regions(self, params: Params) -> Tensor | None:
        assert isinstance(params, RegionParams)
        return params.boxes

    def place(
        self, sizes: Tensor, images: Tensor, saliency: Tensor | None, generator: torch.Generator | None, shared: bool = False
    ) -> Tensor:
        """(B, 4) boxes of the given (B, 2) sizes, placed by the placer.

        ``shared``: the op draws one box for the whole batch (its official per-batch mode);
        a uniform placer then draws one position, a saliency placer still one per image.
        """
        h, w = images.shape[-2:]
        if shared and not self.placer.needs_saliency:
            return self.placer.place(sizes[:1], h, w, self.placement, generator=generator).expand(sizes.shape[0], 4).contiguous()
        return self.placer.place(sizes, h, w, self.placement, saliency=saliency, generator=generator)

    def _check_params(self, params: object, images: Tensor) -> None:
        from keepmix.functional.boxes import check_boxes

        super()._check_params(params, images)
        assert isinstance(params, RegionParams)
        check_boxes(params.boxes, images.shape[0], images.shape[-2], images.shape[-1], name="params.boxes")
