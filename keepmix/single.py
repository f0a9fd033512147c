"""Single images and PIL images at the op boundary: batched once, unbatched once.

So that the per-image ops (erasing, the policies, the Keep ops given a saliency map) run
inside a ``Dataset``, as torchvision's transforms do: a (C, H, W) tensor comes back as a
(C, H, W) tensor, a PIL image as a PIL image of the same mode.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from keepmix.base import Op

__all__ = ["as_batch", "pil_to_tensor", "tensor_to_pil"]

_PIL_MODES = {"L": 1, "RGB": 3}


def _is_pil(x: object) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pillow is a dependency; guard only for a broken install
        return False
    return isinstance(x, Image.Image)


def pil_to_tensor(image: Any) -> Tensor:
    """A PIL image (mode L or RGB) as a uint8 (C, H, W) tensor."""
    if image.mode not in _PIL_MODES:
        raise ValueError(f"PIL images must have mode 'L' or 'RGB', got mode {image.mode!r}; convert it first")
    arr = np.asarray(image, dtype=np.uint8)
    t = torch.from_numpy(arr.copy())
    return t[None] if t.ndim == 2 else t.permute(2, 0, 1).contiguous()


def tensor_to_pil(image: Tensor, mode: str) -> Any:
    """A uint8 (C, H, W) tensor as a PIL image of ``mode``."""
    from PIL import Image

    arr = image.detach().cpu()
    arr = arr[0] if mode == "L" else arr.permute(1, 2, 0)
    return Image.fromarray(arr.contiguous().numpy(), mode=mode)


def as_batch(op: Op, images: Any, labels: Any, saliency: Any) -> tuple[Tensor, Any, Any, Callable[[Tensor], Any] | None]:
    """``(batch, labels, saliency, unbatch)``: a (B, C, H, W) batch as is (``unbatch`` None),
    or a single / PIL image as a batch of one with the function that turns the result back."""
    name = type(op).__name__
    if _is_pil(images):
        if not op.pil_image:
            raise TypeError(f"{name} takes a (B, C, H, W) tensor batch, not a PIL image")
        mode = images.mode
        batch = pil_to_tensor(images)[None]
        return batch, _one_label(labels, name), _one_map(saliency, name), lambda out: tensor_to_pil(out[0], mode)
    if isinstance(images, Tensor) and images.ndim == 3:
        if not op.single_image:
            raise ValueError(
                f"{name} mixes images of a batch: it takes a (B, C, H, W) batch, got a single image of shape {tuple(images.shape)}"
            )
        return images[None], _one_label(labels, name), _one_map(saliency, name), lambda out: out[0]
    if not isinstance(images, Tensor):
        what = "a (B, C, H, W) tensor" + (", a (C, H, W) image" if op.single_image else "") + (" or a PIL image" if op.pil_image else "")
        raise TypeError(f"images must be {what}, got {type(images).__name__}")
    return images, labels, saliency, None


def _one_label(labels: Any, name: str) -> Tensor | None:
    """A single image's label (a number, or a 0-d / (K,) tensor) as a row of a batch of one."""
    if labels is None:
        return None
    t = torch.as_tensor(labels)
    if t.ndim > 1:
        raise ValueError(f"{name}: the label of a single image must be a number or a (K,) vector, got shape {tuple(t.shape)}")
    return t[None]


def _one_map(saliency: Any, name: str) -> Tensor | None:
    if saliency is None:
        return None
    if not isinstance(saliency, Tensor) or saliency.ndim != 2:
        got = tuple(saliency.shape) if isinstance(saliency, Tensor) else type(saliency).__name__
        raise ValueError(f"{name}: the saliency of a single image must be an (H, W) tensor, got {got}")
    return saliency[None]
