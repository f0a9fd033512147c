"""RecursiveMix (Yang et al. 2022, arXiv 2203.06844): paste the previous step's mixed batch,
shrunk, into the current one, and ask the model to recognise it there.

Each training step keeps the *mixed* input batch, its soft targets and its logits (detached)
as the history. The next step resizes the whole history image ``i`` into a random box of the
current image ``i``, mixes the targets by exact area, and adds a consistency loss: the
model's last feature map, RoI-aligned over the box, goes through a linear head and is trained
towards ``softmax`` of the logits the history image had. Because the history is itself a
mixed batch, an image pasted k steps ago is still there, k times shrunk, until it vanishes;
its label weight is the product of the k ``(1 - lam)`` factors.

Usage in a training step (keepmix models expose ``forward_features``, ``classify`` and ``fc``)::

    rm = RecursiveMix(num_classes=10, alpha=0.5, omega=0.5)
    for x, y in loader:
        x_mixed, y_mixed = rm(x, y, generator=g)             # first step: x, one-hot y
        feats = model.forward_features(x_mixed)              # (B, C, h, w), before pooling
        logits = model.classify(feats)
        loss = soft_target_cross_entropy(logits, y_mixed) + rm.consistency_loss(feats, head=model.fc)
        rm.update(x_mixed, y_mixed, logits)                  # stores detached copies
        loss.backward(); opt.step(); opt.zero_grad()

``rm(x, y)`` records its params; ``consistency_loss`` uses the latest call's by default (or
the ``params=`` of an explicit ``sample_params`` / ``transform``).

For any other model, take the feature map with a forward hook on the module that produces
it (:class:`keepmix.models.FeatureHook`)::

    hook = FeatureHook(model, "layer4")
    logits = model(x_mixed); feats = hook.features
    loss = ... + rm.consistency_loss(feats, head=model.fc)

``head`` is the shared classifier (as above; the official ``--share_fc``) or an
``nn.Linear(C * oh * ow, K)`` of your own -- make it part of the model so the optimizer and
DDP see it.

Choices, and why:

* **Boxes per image** by default (``per_sample=True``): each image gets its own area ratio
  and centre; ``per_sample=False`` is the official one box per batch, with the official box
  edges ``[c - s//2, c + s//2)``. ``placer=KeepPlacer(...)`` (:class:`KeepRecursiveMix`)
  keeps the box off the receiving image's salient part (beyond the paper).
* **History dtype**: images are kept in the dtype they were fed in (what is pasted next step
  is then bit-for-bit the previous input; under AMP the input batch is float32 anyway, since
  autocast casts inside the ops). Logits and targets are kept in **float32**: AMP logits are
  float16/bfloat16, widening them is exact, and the softmax target then carries no extra
  rounding; they are (B, K), so the cost is nil.
* **Batch-size changes**: history row ``i`` is pasted into image ``i``, and the history is
  always exactly the previous step's batch (replaced whole by :meth:`RecursiveMix.update`),
  so no row is ever older than one step. A smaller batch pastes history rows ``0..B-1``
  (the rest of the previous batch is dropped when the history is replaced). A larger batch
  pastes nothing into its rows ``>= B_hist``: they train plainly (empty box, ``lam = 1``,
  consistency weight 0), reported in ``params.from_history``. No row receives its own image or
  an image from two steps back.
* **Epochs**: the history carries over epoch boundaries unless ``reset_each_epoch=True``
  (the official code resets it); call :meth:`RecursiveMix.on_epoch_start` at each epoch.
* **DDP**: every rank holds its own ``RecursiveMix`` and history (nothing is communicated).
  The consistency loss always runs the head, with weight 0 on the first step, so every
  parameter of an own head receives a gradient each step (DDP without
  ``find_unused_parameters``).
* **Resuming**: ``state_dict()`` holds the history (one batch); a resumed run with the same
  generator state continues exactly. Under DDP save each rank's history if exactness matters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from keepmix._checks import check_images, check_int, check_positive
from keepmix.base import Params, RegionOp, RegionParams
from keepmix.functional.boxes import area_sizes
from keepmix.functional.mixing import area_lambda
from keepmix.functional.resize_paste import resize_into_boxes
from keepmix.functional.roi_align import max_sampling_grid, roi_align
from keepmix.keep import keep_placer
from keepmix.placers import Placer
from keepmix.sampling import uniform
from keepmix.targets import mix_targets, soft_target_cross_entropy, to_soft_targets

__all__ = ["RecursiveMix", "RecursiveMixParams", "RecursiveMixInfo", "KeepRecursiveMix"]


@dataclass(frozen=True)
class RecursiveMixParams(RegionParams):
    """Where the history goes, and what is pasted.

    ``sizes`` (B, 2) int64: the requested box (floor(H sqrt(r)), floor(W sqrt(r))) for the
    drawn area ratio r, (0, 0) for an image with no history row; ``boxes`` (B, 4): where the
    resized history is pasted (lam is computed from the boxes at ``transform``); ``ratio`` (B,)
    float32: the drawn r; ``from_history`` (B,) bool: images that have a history row to
    receive; ``image_size`` (H, W); ``history_images`` / ``history_targets`` / ``history_logits``: the history row
    each image receives (None on a step without history).
    """

    ratio: Tensor
    from_history: Tensor
    image_size: tuple[int, int]
    history_images: Tensor | None = None
    history_targets: Tensor | None = None
    history_logits: Tensor | None = None


@dataclass(frozen=True)
class RecursiveMixInfo:
    """What :meth:`RecursiveMix.consistency_loss` needs from one step (:meth:`RecursiveMix.info`).

    ``boxes`` (B, 4) int64 where history image i went (empty: nothing pasted); ``lam`` (B,)
    float32 the exact unpasted area share; ``weights`` (B,) float32 ``omega * (1 - lam)``, the
    per-image weight of the consistency loss; ``from_history`` (B,) bool; ``history_logits``
    (B, K) float32 logits the pasted images had one step earlier (None on the first step);
    ``image_size`` (H, W).
    """

    boxes: Tensor
    lam: Tensor
    weights: Tensor
    from_history: Tensor
    history_logits: Tensor | None
    image_size: tuple[int, int]

    @property
    def has_history(self) -> bool:
        """False on a step that trained plainly (no history yet)."""
        return self.history_logits is not None


def _check_pair_of_ints(value: object, name: str) -> tuple[int, int]:
    # Not iterable: tuple() raises TypeError, the caller's error.
    pair = (value, value) if isinstance(value, int) else tuple(cast(Iterable[Any], value))
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in pair):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}")
    return pair


class RecursiveMix(RegionOp):
    """RecursiveMix with its history, its paste and its consistency loss.

    Args:
        num_classes: K.
        alpha: the paste area ratio is ``r ~ U(0, alpha)``, in (0, 1] (paper: 0.5).
        omega: weight of the consistency loss, times ``1 - lam`` per image (paper: 0.5 on
            ImageNet, 0.1 for CIFAR-10 PyramidNet).
        interpolation: how the history is resized into the box: ``"nearest"`` (official
            default) or ``"bilinear"``.
        align_corners: bilinear only; None (default) is the official code's True.
        per_sample: one area ratio and box per image (default) or one per batch (official).
        placer: where each box goes (default uniform; ``KeepPlacer`` for selective-cut).
        reset_each_epoch: forget the history in :meth:`on_epoch_start` (official behaviour).
        roi_output_size: RoIAlign bins (default 1 x 1, as in the paper); the head then takes
            ``C * oh * ow`` features.
        sampling_ratio: RoIAlign samples per bin and axis; ``-1`` adaptive (torchvision's).

    The box of image i has sides ``floor(sqrt(r_i) H)`` and ``floor(sqrt(r_i) W)``, a centre
    uniform over all pixels, and is clipped at the border (placement ``"center"``); the whole
    history image is resized into the clipped box. See the module docstring for the training
    step and the behaviour on batch-size changes, epochs, AMP, DDP and resuming.
    """

    placement = "center"
    mixes_labels = True
    region = "pasted"
    params_type = RecursiveMixParams

    def __init__(
        self,
        num_classes: int,
        alpha: float = 0.5,
        omega: float = 0.5,
        interpolation: Literal["nearest", "bilinear"] = "nearest",
        align_corners: bool | None = None,
        per_sample: bool = True,
        reset_each_epoch: bool = False,
        roi_output_size: int | tuple[int, int] = (1, 1),
        sampling_ratio: int = -1,
        placer: Placer | None = None,
    ) -> None:
        super().__init__(placer)
        check_int(num_classes, "num_classes", low=1)
        alpha = check_positive(alpha, "alpha")
        if alpha > 1.0:
            raise ValueError(f"alpha (the largest pasted area ratio) must lie in (0, 1], got {alpha}")
        if interpolation not in ("nearest", "bilinear"):
            raise ValueError(f"interpolation must be 'nearest' or 'bilinear', got {interpolation!r}")
        if align_corners is None:
            align_corners = interpolation == "bilinear"
        if align_corners and interpolation != "bilinear":
            raise ValueError("align_corners only applies to interpolation='bilinear'")
        for name, flag in (("per_sample", per_sample), ("reset_each_epoch", reset_each_epoch), ("align_corners", align_corners)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {flag!r}")
        if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, int):
            raise TypeError(f"sampling_ratio must be an int, got {sampling_ratio!r}")
        self.num_classes = num_classes
        self.alpha = alpha
        self.omega = check_positive(omega, "omega", allow_zero=True)
        self.interpolation = interpolation
        self.align_corners = align_corners
        self.per_sample = per_sample
        self.reset_each_epoch = reset_each_epoch
        self.roi_output_size = _check_pair_of_ints(roi_output_size, "roi_output_size")
        self.sampling_ratio = sampling_ratio
        self._images: Tensor | None = None
        self._targets: Tensor | None = None
        self._logits: Tensor | None = None
        #: The params of the latest ``forward`` (what ``consistency_loss`` uses by default).
        self.last_params: RecursiveMixParams | None = None

    # ------------------------------------------------------------------ history
    @property
    def has_history(self) -> bool:
        """Whether a previous step has been stored (the next call pastes it)."""
        return self._images is not None

    @property
    def history_size(self) -> int:
        """Rows in the history (0 when there is none)."""
        return 0 if self._images is None else int(self._images.shape[0])

    @property
    def history(self) -> tuple[Tensor, Tensor, Tensor] | None:
        """``(images, targets, logits)`` of the previous step, or None."""
        if self._images is None:
            return None
        # The three are set together (update) and cleared together (reset).
        return self._images, self._targets, self._logits  # type: ignore[return-value]

    def reset(self) -> None:
        """Forget the history: the next step trains plainly."""
        self._images = self._targets = self._logits = None

    def on_epoch_start(self) -> None:
        """Call at the start of every epoch; resets the history if ``reset_each_epoch``."""
        if self.reset_each_epoch:
            self.reset()

    @torch.no_grad()
    def update(self, images: Tensor, targets: Tensor, logits: Tensor) -> None:
        """Store this step's mixed batch, its targets and its logits as the next history.

        Copies are stored (detached; images in their dtype, targets and logits in float32),
        so a data loader that reuses its buffers cannot change the history afterwards.
        """
        check_images(images, "images")
        b = images.shape[0]
        t = to_soft_targets(targets, self.num_classes, b, name="targets")
        if not isinstance(logits, Tensor) or logits.ndim != 2 or tuple(logits.shape) != (b, self.num_classes):
            raise ValueError(f"logits must have shape (B, K) = {(b, self.num_classes)}, got {getattr(logits, 'shape', type(logits))}")
        if not logits.is_floating_point():
            raise TypeError(f"logits must be floating point, got {logits.dtype}")
        self._images = images.detach().clone()
        self._targets = t.detach().to(device=images.device, dtype=torch.float32, copy=True)
        self._logits = logits.detach().to(device=images.device, dtype=torch.float32, copy=True)

    def get_extra_state(self) -> dict:
        """The history for ``state_dict()`` (None entries when there is none)."""
        return {"images": self._images, "targets": self._targets, "logits": self._logits}

    def set_extra_state(self, state: dict) -> None:
        """Restore the history from ``load_state_dict()``; it moves to the batch's device on use."""
        if not isinstance(state, dict) or set(state) != {"images", "targets", "logits"}:
            raise ValueError("RecursiveMix state must be a dict with keys 'images', 'targets', 'logits'")
        images, targets, logits = state["images"], state["targets"], state["logits"]
        if images is None:
            if targets is not None or logits is not None:
                raise ValueError("RecursiveMix state has targets/logits but no images")
            self.reset()
            return
        check_images(images, "state['images']")
        b = images.shape[0]
        for name, t in (("targets", targets), ("logits", logits)):
            if not isinstance(t, Tensor) or tuple(t.shape) != (b, self.num_classes):
                raise ValueError(f"state['{name}'] must have shape {(b, self.num_classes)}, got {getattr(t, 'shape', t)}")
        self._images, self._targets, self._logits = images, targets.float(), logits.float()

    def _history_rows(self, batch: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """History images, targets, logits for rows 0..batch-1. Rows beyond the history repeat
        its last row only as padding: their box is empty and their weight is 0, so nothing of
        them is used."""
        assert self._images is not None and self._targets is not None and self._logits is not None
        if self._images.device != device:  # e.g. after load_state_dict onto the CPU
            self._images, self._targets, self._logits = (t.to(device) for t in (self._images, self._targets, self._logits))
        n = self._images.shape[0]
        if batch <= n:
            return self._images[:batch], self._targets[:batch], self._logits[:batch]
        idx = torch.arange(batch, device=device).clamp(max=n - 1)
        return self._images[idx], self._targets[idx], self._logits[idx]

    # ------------------------------------------------------------------- mixing
    def needs_saliency(self, images: Tensor) -> bool:
        return self.placer.needs_saliency and self.has_history  # the first step pastes nothing

    def make_params(self, images, labels, saliency, generator) -> RecursiveMixParams:
        """Draw order: r (B, or 1 with ``per_sample=False``), then the positions (the placer).

        With a uniform placer the draws do not depend on whether a history exists, so the
        generator advances the same way on every step of a given batch size.
        """
        b, _, h, w = images.shape
        dev = images.device
        n = b if self.per_sample else 1
        ratio = uniform(n, 0.0, self.alpha, device=dev, generator=generator)
        sizes = area_sizes(ratio, h, w, even=not self.per_sample)  # official: the far edge c + s//2
        ratio, sizes = ratio.expand(b).contiguous(), sizes.expand(b, 2).contiguous()
        from_history = torch.arange(b, device=dev) < self.history_size
        sizes = torch.where(from_history[:, None], sizes, torch.zeros_like(sizes))
        if self.placer.needs_saliency and saliency is None:  # no history: nothing to place
            boxes = torch.zeros(b, 4, dtype=torch.int64, device=dev)
        else:
            boxes = self.place(sizes, images, saliency, generator, shared=not self.per_sample)
            boxes = torch.where(from_history[:, None], boxes, torch.zeros_like(boxes))
        if self._images is None:
            return RecursiveMixParams(boxes=boxes, sizes=sizes, ratio=ratio, from_history=from_history, image_size=(h, w))
        if self._images.shape[1] != images.shape[1]:
            raise ValueError(
                f"images have {images.shape[1]} channels but the history has {self._images.shape[1]}; call reset() when the input changes"
            )
        src, src_targets, src_logits = self._history_rows(b, dev)
        if src.dtype != images.dtype:
            if src.dtype.is_floating_point != images.dtype.is_floating_point:
                # uint8 (0-255) and float images live on different scales: pasting one into the
                # other would be all-zero or out of range while the targets still weight it.
                raise ValueError(
                    f"images are {images.dtype} but the history is {src.dtype} (from the previous update): uint8 and float "
                    "images have different value ranges; feed one kind throughout, or call reset() when the input changes"
                )
            src = src.to(images.dtype)  # float to float: the same scale, only the precision changes
        return RecursiveMixParams(
            boxes=boxes,
            sizes=sizes,
            ratio=ratio,
            from_history=from_history,
            image_size=(h, w),
            history_images=src,
            history_targets=src_targets,
            history_logits=src_logits,
        )

    def apply_params(self, images, labels, params):
        """Paste the resized history into ``params.boxes``: ``(images, float32 (B, K) targets)``.

        Without a history the images are returned as they are (same tensor) with their
        one-hot / soft targets.
        """
        if params.history_images is None:
            return images, labels
        h, w = images.shape[-2:]
        mixed = resize_into_boxes(images, params.history_images.to(images.dtype), params.boxes, self.interpolation, self.align_corners)
        return mixed, mix_targets(labels, params.history_targets, area_lambda(params.boxes, h, w))

    def _after_forward(self, params: Params) -> None:
        assert isinstance(params, RecursiveMixParams)
        self.last_params = params

    def info(self, params: RecursiveMixParams | None = None) -> RecursiveMixInfo:
        """What the consistency loss needs from ``params`` (default: the latest ``forward``'s)."""
        if params is None:
            params = self.last_params
            if params is None:
                raise ValueError("RecursiveMix has not mixed a batch yet: call it (rm(images, labels)) or pass params=")
        if not isinstance(params, RecursiveMixParams):
            raise TypeError(f"params must be RecursiveMixParams from sample_params, got {type(params).__name__}")
        h, w = params.image_size
        lam = area_lambda(params.boxes, h, w)
        return RecursiveMixInfo(params.boxes, lam, self.omega * (1.0 - lam), params.from_history, params.history_logits, (h, w))

    # --------------------------------------------------------- consistency loss
    def roi_features(
        self,
        features: Tensor,
        info: RecursiveMixInfo,
        spatial_scale: float | tuple[float, float] | None = None,
        num_prefix_tokens: int = 1,
    ) -> Tensor:
        """RoIAlign (aligned) of ``features`` over each image's box: (B, C * oh * ow).

        ``features`` is a (B, C, h, w) map, or a ViT's (B, N, C) tokens: the first
        ``num_prefix_tokens`` (the class token; timm's ``model.num_prefix_tokens``) are
        dropped and the patch tokens laid out on the patch grid
        (:func:`keepmix.models.hooks.tokens_to_map`). ``spatial_scale`` defaults to feature
        side / image side per axis (pass ``1 / model.feature_stride`` to use the network's
        stride instead).
        """
        if isinstance(features, Tensor) and features.ndim == 3:
            from keepmix.models.hooks import tokens_to_map

            features = tokens_to_map(features, num_prefix_tokens, image_size=info.image_size)
        if not isinstance(features, Tensor) or features.ndim != 4 or not features.is_floating_point():
            got = getattr(features, "shape", type(features))
            raise ValueError(f"features must be a float (B, C, h, w) feature map before pooling, got {got}")
        b = info.boxes.shape[0]
        if features.shape[0] != b:
            raise ValueError(f"features have batch {features.shape[0]} but info is for {b} images")
        h, w = info.image_size
        if spatial_scale is None:
            spatial_scale = (features.shape[2] / h, features.shape[3] / w)
        sy, sx = (spatial_scale, spatial_scale) if isinstance(spatial_scale, (int, float)) else spatial_scale
        oh, ow = self.roi_output_size
        # The boxes lie inside the image, so the adaptive grid is bounded by the feature
        # extent: a static bound keeps the step free of host syncs.
        bound = (max_sampling_grid(h * sy, oh), max_sampling_grid(w * sx, ow))
        pooled = roi_align(features, info.boxes.to(features.device), (oh, ow), (sy, sx), self.sampling_ratio, True, max_grid=bound)
        return pooled.flatten(1)

    def consistency_loss(
        self,
        features: Tensor,
        head: Callable[[Tensor], Tensor],
        params: RecursiveMixParams | None = None,
        spatial_scale: float | tuple[float, float] | None = None,
        num_prefix_tokens: int = 1,
    ) -> Tensor:
        """``mean_i omega (1 - lam_i) CE(head(RoIAlign(features_i, box_i)), softmax(logits_hist_i))``.

        ``features``: the model's last feature map before pooling for the *mixed* batch
        (attached to the graph), or a ViT's (B, N, C) token output with ``num_prefix_tokens``
        leading class/register tokens (see :meth:`roi_features`); ``head``: ``model.fc`` or an own ``nn.Linear``; ``params``:
        the step's params (default: those of the latest ``forward``). Returns a
        float32 scalar. The targets come from the detached history, so no gradient reaches
        it. On a step without history the head still runs (times 0): an own head gets a
        zero gradient rather than none, which DDP needs.
        """
        if not callable(head):
            raise TypeError(f"head must be callable (e.g. model.fc), got {type(head).__name__}")
        info = self.info(params)
        out = head(self.roi_features(features, info, spatial_scale, num_prefix_tokens))
        if out.ndim != 2 or out.shape[1] != self.num_classes:
            raise ValueError(f"head must return (B, num_classes={self.num_classes}) logits, got shape {tuple(out.shape)}")
        if info.history_logits is None:
            return out.float().sum() * 0.0
        target = F.softmax(info.history_logits.to(out.device), dim=1)
        ce = soft_target_cross_entropy(out, target, reduction="none")
        return (info.weights.to(ce.device) * ce).mean()

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, alpha={self.alpha}, omega={self.omega}, interpolation={self.interpolation!r}, "
            f"per_sample={self.per_sample}, reset_each_epoch={self.reset_each_epoch}, roi_output_size={self.roi_output_size}"
        )


class KeepRecursiveMix(RecursiveMix):
    """RecursiveMix whose box avoids the receiving image's most salient region (beyond the paper).

    ``RecursiveMix(..., placer=KeepPlacer(q, score, whole_boxes, saliency_fn,
    candidate_stride))``, the placer's arguments by name: the box size comes from the area
    ratio, its position is drawn among the candidates whose saliency score (of the image that
    *receives* the history) is below the per-image q-quantile; lam stays the exact unpasted
    area. The first step (no history) needs no saliency and computes none.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        placer = keep_placer(kwargs)
        # placer also passed by the caller: Python's own "multiple values" TypeError, as intended.
        super().__init__(*args, placer=placer, **kwargs)  # type: ignore[misc]
