"""A DataLoader ``collate_fn`` that applies a keepmix op to each collated batch.

torchvision documents CutMix / MixUp as a ``collate_fn`` that runs after
``default_collate``; :class:`AugmentCollate` is that pattern for any keepmix op::

    loader = DataLoader(dataset, batch_size=128, shuffle=True, num_workers=4,
                        collate_fn=AugmentCollate(keepmix.CutMix(num_classes=10), seed=0))
    for images, targets in loader:   # float32 (B, K) soft targets for a mixing op
        ...
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import default_collate, get_worker_info

from keepmix._checks import check_int
from keepmix.base import Op
from keepmix.workers import worker_generator

__all__ = ["AugmentCollate"]


def _stream_key() -> tuple[int, int | None, int | None]:
    """Which process (and which DataLoader worker, for which epoch's iterator) is running."""
    info = get_worker_info()
    return (os.getpid(), None, None) if info is None else (os.getpid(), info.id, info.seed)


class AugmentCollate:
    """``collate_fn`` = ``collate_fn(samples)`` then ``op(images, labels, generator=g)``.

    Collates a list of ``(image, label)`` samples with ``collate_fn`` (torch's
    ``default_collate``), applies the keepmix ``op`` to the batch and returns what the op
    returns: ``(images, float32 (B, K) soft targets)`` for a mixing op (CutMix, Mixup,
    MixupCutMix, ...), ``(images, labels)`` for a label-preserving one (Cutout, policies, ...).

    Random streams. The generator ``g`` is made lazily, by :func:`keepmix.worker_generator`
    ``(seed)``, the first time the object is called *in the process that calls it*, and made
    again whenever that process changes (a new worker, a new epoch's workers). A generator
    created in the main process and captured by the collate function would be copied into
    every worker with the same state (by fork or by pickling), so every worker would draw
    the same boxes and lambdas for its batches; this one is never copied: pickling drops it,
    and a forked copy notices it is in another process. So:

    * each DataLoader worker draws its own stream, and each epoch's workers new ones
      (``worker_generator`` mixes in the seed the loader gives each worker);
    * a rerun with the same ``seed`` and the same loader seed
      (``DataLoader(generator=torch.Generator().manual_seed(s))`` or ``torch.manual_seed``)
      reproduces every batch exactly;
    * with ``num_workers=0`` the stream is ``torch.Generator().manual_seed(seed)``,
      continued across epochs.

    Args:
        op: a keepmix op (:class:`keepmix.Op`).
        seed: a non-negative int, the augmentation seed.
        collate_fn: how a list of samples becomes ``(images, labels)``.

    The object pickles (for ``multiprocessing_context="spawn"``) as long as ``op`` and
    ``collate_fn`` do.
    """

    def __init__(self, op: Op, seed: int = 0, collate_fn: Callable[[list[Any]], Any] = default_collate) -> None:
        if not isinstance(op, Op):
            raise TypeError(f"op must be a keepmix op (keepmix.Op, e.g. keepmix.CutMix(num_classes=10)), got {type(op).__name__}")
        if not callable(collate_fn):
            raise TypeError(f"collate_fn must be callable (list of samples -> (images, labels)), got {type(collate_fn).__name__}")
        self.op = op
        self.seed = check_int(seed, "seed", low=0, what="a non-negative int")
        self.collate_fn = collate_fn
        self._generator: torch.Generator | None = None
        self._key: tuple[int, int | None, int | None] | None = None

    def generator(self, device: torch.device | str = "cpu") -> torch.Generator:
        """This process's generator (made on first use here, see the class docstring)."""
        key = _stream_key()
        if self._generator is None or self._key != key:
            self._generator, self._key = worker_generator(self.seed, device=device), key
        return self._generator

    def __call__(self, samples: list[Any]) -> tuple[Tensor, Tensor]:
        batch = self.collate_fn(samples)
        if not isinstance(batch, Sequence) or isinstance(batch, (str, bytes)) or len(batch) != 2:
            raise TypeError(
                "AugmentCollate needs samples of (image, label) so that collate_fn(samples) gives (images, labels); "
                f"collate_fn returned {type(batch).__name__}" + (f" of length {len(batch)}" if isinstance(batch, Sequence) else "")
            )
        images, labels = batch
        if not isinstance(images, Tensor):
            raise TypeError(f"collated images must be a torch.Tensor (B, C, H, W), got {type(images).__name__}")
        return self.op(images, labels, generator=self.generator(images.device))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_generator"] = state["_key"] = None  # never ship a stream to another process
        return state

    def __repr__(self) -> str:
        fn = getattr(self.collate_fn, "__qualname__", type(self.collate_fn).__name__)
        return f"AugmentCollate(op={self.op!r}, seed={self.seed}, collate_fn={fn})"
