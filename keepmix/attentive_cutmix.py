"""Attentive CutMix (Walawalkar et al. 2020): paste the partner's most attended grid cells.

The paper's definition: a pretrained teacher's last feature map (B, C, h, w) on the source
(partner) image is its attention over an h x w grid of the image (ResNet-50's 7 x 7 on
224 x 224 ImageNet images, so each cell is a 32 x 32 patch); the top ``N`` cells by activation
(default ``N = 6``) are cut from the source and pasted into the receiving image at the same
positions. The source's label weight is the pasted area share, ``N (H / h) (W / w) / (H W) =
N / (h w)``: targets ``lam y + (1 - lam) y_s`` with ``lam = 1 - N / (h w)`` (6 / 49 pasted on
ImageNet).

Settled here (the paper and the two public implementations differ):

* A cell's activation is the sum of the map over its channels (the paper's attention; the
  ranking is the channel mean's, which OpenMixup's ``attentivemix`` uses; the xden2331
  ``attentive_cutmix`` code ranks ``output[0][-1]``, the last channel alone).
* Ties keep the lower cell index first (a stable descending sort, row-major cells), so the
  choice is deterministic; the sum is taken in float64.
* Partners come from one random permutation of the batch (OpenMixup); each image draws its own
  ``p`` (default 1: every image is mixed, as in both implementations); a skipped image comes
  back unchanged with its own targets.
* The teacher runs under ``torch.no_grad()`` in ``sample_params``, on the whole batch (the
  partners' maps are rows of it). An ``nn.Module`` teacher (or a bound method of one, e.g.
  ``model.forward_features``) runs in eval mode and gets its previous train/eval modes back
  (``eval_teacher=False`` keeps its mode), and the images are cast to its parameters' dtype
  (uint8 or AMP batches into a float32 teacher); a plain function gets the images as they are.
* A map whose grid does not divide the image (``H % h`` or ``W % w``), or with fewer than
  ``top_k`` cells, is a ``ValueError`` naming the teacher and the sizes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from keepmix._checks import check_int, check_probability
from keepmix.base import Op, Params
from keepmix.engine import check_values
from keepmix.functional.mixing import check_perm
from keepmix.functional.select import select
from keepmix.mixing import check_num_classes
from keepmix.models.hooks import FeatureHook
from keepmix.saliency import _input_dtype, _owning_module, _unwrap_ddp
from keepmix.sampling import bernoulli, permutation
from keepmix.targets import mix_targets

__all__ = ["AttentiveCutMixParams", "AttentiveCutMix", "FeatureTeacher", "top_cells"]

Teacher = Callable[[Tensor], Tensor]


class FeatureTeacher:
    """A teacher from any model: ``images -> the output of submodule module_name`` (B, C, h, w),
    captured with :class:`keepmix.models.FeatureHook` during the model's ordinary forward
    (e.g. ``FeatureTeacher(resnet, "layer4")``); ``module_name=None`` calls
    ``model.forward_features`` (keepmix models) instead.

    The hook is attached only while a call runs. :class:`AttentiveCutMix` runs the call under
    ``no_grad`` and with the model in eval mode.
    """

    def __init__(self, model: nn.Module, module_name: str | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = _unwrap_ddp(model)
        self.module_name = module_name
        if module_name is None:
            if not callable(getattr(self.model, "forward_features", None)):
                raise ValueError(
                    f"{type(self.model).__name__} has no forward_features; give module_name= (a name from model.named_modules())"
                )
            self._hook = None
        else:
            self._hook = FeatureHook(self.model, module_name, detach=True)
            self._hook.remove()

    def __call__(self, images: Tensor) -> Tensor:
        if self._hook is None:
            # nn.Module.__getattr__ is typed Tensor | Module; forward_features is a method (checked in __init__).
            return self.model.forward_features(images)  # type: ignore[operator]
        self._hook.clear()
        with self._hook:
            self.model(images)
        return self._hook.features

    def __repr__(self) -> str:
        return f"FeatureTeacher({type(self.model).__name__}, module_name={self.module_name!r})"


def _teacher_name(teacher: object) -> str:
    if isinstance(teacher, (nn.Module, FeatureTeacher)):
        return type(teacher).__name__ if isinstance(teacher, nn.Module) else repr(teacher)
    qual = getattr(teacher, "__qualname__", None)
    return type(teacher).__name__ if not isinstance(qual, str) else qual.split("<locals>.")[-1]


def top_cells(features: Tensor, top_k: int) -> Tensor:
    """(B, h, w) bool: each image's ``top_k`` cells by channel-summed activation of
    ``features`` (B, C, h, w); ties keep the lower row-major index first."""
    b, _, h, w = features.shape
    score = features.double().sum(dim=1).reshape(b, h * w)
    order = torch.sort(score, dim=1, descending=True, stable=True).indices[:, :top_k]
    cells = torch.zeros(b, h * w, dtype=torch.bool, device=features.device)
    cells.scatter_(1, order, True)
    return cells.view(b, h, w)


@dataclass(frozen=True)
class AttentiveCutMixParams(Params):
    """``perm`` (B,) int64: partners; ``cells`` (B, h, w) bool: the grid cells of the partner
    pasted into each image (all False where skipped by ``p``); the grid is the teacher's, each
    cell an (H / h) x (W / w) patch."""

    perm: Tensor
    cells: Tensor


class AttentiveCutMix(Op):
    """Attentive CutMix (Walawalkar et al. 2020): the partner's top-``top_k`` teacher cells
    pasted into each image at the same positions; lam is the exact unpasted area. See the
    module docstring for the definition and the settled edge cases.

    Args:
        teacher: any callable ``images -> feature map (B, C, h, w)``: a module returning its
            last feature map, ``model.forward_features``, a :class:`FeatureTeacher`
            (``FeatureTeacher(model, "layer4")``), a function. The paper: an ImageNet-pretrained
            ResNet-50's final 7 x 7 map.
        top_k: ``N``, the cells pasted per image (paper: 6).
        p: probability that an image is mixed.
        num_classes: K, needed for (B,) integer labels.
        eval_teacher: run an ``nn.Module`` teacher in eval mode (restored afterwards).

    ``op(images, labels) -> (mixed images, float32 (B, K) soft targets)``.
    """

    mixes_labels = True
    params_type = AttentiveCutMixParams
    #: Set in __init__ outside nn.Module's registry (annotation only, for the type checker).
    teacher: Teacher

    def __init__(
        self,
        teacher: Teacher,
        top_k: int = 6,
        p: float = 1.0,
        num_classes: int | None = None,
        eval_teacher: bool = True,
    ) -> None:
        super().__init__()
        if not callable(teacher):
            raise TypeError(f"teacher must be callable images -> feature map (B, C, h, w), got {type(teacher).__name__}")
        # Outside nn.Module's registry on purpose: the teacher's parameters must not become
        # the augmentation's (nor be moved, copied into its state_dict or trained with it).
        object.__setattr__(self, "teacher", _unwrap_ddp(teacher))
        self.top_k = check_int(top_k, "top_k", low=1)
        self.p = check_probability(p)
        self.num_classes = check_num_classes(num_classes)
        if not isinstance(eval_teacher, bool):
            raise TypeError(f"eval_teacher must be a bool, got {eval_teacher!r}")
        self.eval_teacher = eval_teacher

    def _teacher_module(self) -> nn.Module | None:
        t = self.teacher
        if isinstance(t, FeatureTeacher):
            return t.model
        return _owning_module(t)

    def features(self, images: Tensor) -> Tensor:
        """The teacher's checked (B, C, h, w) map of ``images`` (no_grad, eval mode)."""
        module = self._teacher_module()
        x = images.to(_input_dtype(module, images)) if module is not None else images
        modes = [(m, m.training) for m in module.modules()] if module is not None and self.eval_teacher else []
        try:
            if module is not None and modes:  # modes is empty without a module
                module.eval()
            with torch.no_grad():
                feats = self.teacher(x)
        finally:
            for m, mode in modes:
                m.training = mode
        self._check_features(feats, images)
        return feats

    def _check_features(self, feats: object, images: Tensor) -> None:
        name = _teacher_name(self.teacher)
        b, _, h, w = images.shape
        if not isinstance(feats, Tensor) or feats.ndim != 4 or feats.shape[0] != b:
            got = tuple(feats.shape) if isinstance(feats, Tensor) else type(feats).__name__
            raise ValueError(f"teacher {name} must return a feature map (B, C, h, w) with B = {b}, got {got}")
        fh, fw = feats.shape[-2:]
        if fh < 1 or fw < 1 or h % fh or w % fw:
            raise ValueError(
                f"teacher {name} returned a {fh}x{fw} feature map for {h}x{w} images: the grid must divide the image "
                f"(H % h == 0 and W % w == 0) so that every cell is a whole (H/h) x (W/w) patch"
            )
        if fh * fw < self.top_k:
            raise ValueError(f"top_k={self.top_k} exceeds the {fh}x{fw} = {fh * fw} cells of teacher {name}'s feature map")
        if feats.device != images.device:
            raise ValueError(f"teacher {name} returned a map on {feats.device} for images on {images.device}")
        # A NaN cell would sort as the largest and always be pasted (cells 0 and 1 of a NaN map).
        check_values(
            torch.isfinite(feats).all(),
            f"teacher {name} returned a feature map with NaN or infinite values (a diverged teacher?); Attentive CutMix needs a finite map",
        )

    def make_params(self, images, labels, saliency, generator) -> AttentiveCutMixParams:
        """Draw order: applied (B,), perm (B,); then the teacher's top cells of each partner."""
        b, dev = images.shape[0], images.device
        applied = bernoulli(self.p, b, device=dev, generator=generator)
        perm = permutation(b, device=dev, generator=generator)
        cells = top_cells(self.features(images), self.top_k)[perm]
        cells = cells & applied.view(b, 1, 1)
        return AttentiveCutMixParams(perm=perm, cells=cells)

    def _check_params(self, params: object, images: Tensor) -> None:
        super()._check_params(params, images)
        assert isinstance(params, AttentiveCutMixParams)
        b, _, h, w = images.shape
        check_perm(params.perm, b, "params.perm")
        cells = params.cells
        if not isinstance(cells, Tensor) or cells.dtype != torch.bool or cells.ndim != 3 or cells.shape[0] != b:
            got = f"{tuple(cells.shape)} {cells.dtype}" if isinstance(cells, Tensor) else type(cells).__name__
            raise ValueError(f"params.cells must be a (B, h, w) bool grid with B = {b}, got {got}")
        gh, gw = cells.shape[1:]
        if gh < 1 or gw < 1 or h % gh or w % gw:
            raise ValueError(f"params.cells is a {gh}x{gw} grid, which does not divide the {h}x{w} images")

    def apply_params(self, images, labels, params):
        """Paste the partners' cells: ``(images, float32 (B, K) targets)``."""
        h, w = images.shape[-2:]
        dev = images.device
        cells, perm = params.cells.to(dev), params.perm.to(dev)
        gh, gw = cells.shape[1:]
        mask = cells.repeat_interleave(h // gh, dim=1).repeat_interleave(w // gw, dim=2)
        out = select(mask.unsqueeze(1), images[perm], images)
        pasted = cells.sum(dim=(1, 2)) * ((h // gh) * (w // gw))
        lam = (1.0 - pasted.double() / float(h * w)).float()
        y = labels.float()
        return out, mix_targets(y, y[perm], lam)

    def extra_repr(self) -> str:
        return (
            f"teacher={_teacher_name(self.teacher)}, top_k={self.top_k}, p={self.p}, "
            f"num_classes={self.num_classes}, eval_teacher={self.eval_teacher}"
        )
