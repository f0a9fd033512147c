"""Your own op: override make_params (draw) and apply_params (apply); forward comes from keepmix."""

from dataclasses import dataclass

import torch
from torch import Tensor

import keepmix as km


@dataclass(frozen=True)
class GrayscaleParams(km.Params):
    gray: Tensor  # (B,) bool: which images turn grey


class RandomGrayscale(km.Op):
    """Each image turns grey with probability ``p`` (ITU-R 601-2 luma weights)."""

    single_image = True  # also takes one (C, H, W) image, e.g. inside a Dataset
    channels = (3,)
    params_type = GrayscaleParams

    def __init__(self, p: float = 0.2) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p}")
        self.p = p

    def make_params(self, images, labels, saliency, generator) -> GrayscaleParams:
        # Eager, per image, from the generator: the only random step.
        u = torch.rand(images.shape[0], device=images.device, generator=generator)
        return GrayscaleParams(gray=u < self.p)

    def apply_params(self, images, labels, params):
        # Pure: no random draw, no host read, the input untouched.
        weights = torch.tensor([0.299, 0.587, 0.114], device=images.device).view(1, 3, 1, 1)
        luma = (images.float() * weights).sum(1, keepdim=True).expand_as(images)
        if not images.dtype.is_floating_point:
            luma = luma.round().clamp(0, 255)
        out = torch.where(params.gray.view(-1, 1, 1, 1), luma.to(images.dtype), images)
        return out, labels


if __name__ == "__main__":
    op = RandomGrayscale(p=0.5)
    images = torch.rand(8, 3, 32, 32)
    params = op.sample_params(images, generator=torch.Generator().manual_seed(0))
    out = op.transform(images, None, params)  # the same as op(images, generator=...)
    print(params.gray.tolist(), out.shape)
