"""A PyTorch Lightning mixin that augments every training batch with a keepmix op.

::

    import lightning.pytorch as L              # or: import pytorch_lightning as L

    class Model(KeepmixAugmentation, L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = ...
            self.set_augmentation(keepmix.CutMix(num_classes=10), seed=0)

        def training_step(self, batch, batch_idx):
            images, targets = batch          # augmented, on the device
            return keepmix.SoftTargetCrossEntropy()(self.net(images), targets)

The mixin has no Lightning base class of its own, so it works with either package Lightning
ships (``lightning.pytorch``, the one Lightning documents, and the standalone
``pytorch_lightning``): list it before the ``LightningModule`` of the package the Trainer comes
from. (A mixin built on one package's ``LightningModule`` combined with the other's gives a
module with two LightningModule bases, which the Trainer refuses.) This module imports neither
package. A subclass that overrides ``on_after_batch_transfer``, ``on_save_checkpoint`` or
``on_load_checkpoint`` must call ``super()`` there.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from keepmix._checks import check_int
from keepmix.base import Op

__all__ = ["KeepmixAugmentation", "rank_seed"]

_MASK = (1 << 63) - 1


def rank_seed(seed: int, rank: int) -> int:
    """The seed of global rank ``rank``'s generator: ``seed`` itself on rank 0 (a single-process
    run draws ``torch.Generator().manual_seed(seed)``), a splitmix64-style mix of both otherwise."""
    if rank == 0:
        return seed
    x = (seed * 0x9E3779B97F4A7C15 + rank * 0x94D049BB133111EB) & _MASK
    x ^= x >> 31
    return (x * 0xBF58476D1CE4E5B9) & _MASK


def _check_op(op: object, name: str) -> Op:
    if not isinstance(op, Op):
        raise TypeError(
            f"{name} must be a keepmix op (keepmix.Op, e.g. keepmix.CutMix(num_classes=10) or keepmix.KeepCutout(8, ...)), "
            f"got {type(op).__name__}"
        )
    return op


# The packages whose LightningModule the mixin pairs with.
_LIGHTNING_MODULES = ("lightning.pytorch", "pytorch_lightning")


def _is_lightning_module(cls: type) -> bool:
    return any(c.__name__ == "LightningModule" and c.__module__.startswith(_LIGHTNING_MODULES) for c in cls.__mro__)


class KeepmixAugmentation:
    """Applies a keepmix op to each training batch on the device, with a resumable stream.

    A mixin: ``class Model(KeepmixAugmentation, L.LightningModule)`` with ``L`` either
    ``lightning.pytorch`` or ``pytorch_lightning``. Set the op with :meth:`set_augmentation` (after ``super().__init__()``; assigning
    ``self.keepmix_op`` and ``self.keepmix_seed`` works too). In ``on_after_batch_transfer``,
    while ``self.trainer.training``, a batch ``(images, labels)`` becomes
    ``op(images, labels, generator=g)``: ``(images, float32 (B, K) soft targets)`` for a mixing
    op, ``(images, labels)`` for a label-preserving one. Validation, test and predict batches
    (and the sanity check) pass through untouched.

    ``g`` is a ``torch.Generator`` on the batch's device, made at the first training batch and
    seeded with :func:`rank_seed` ``(seed, global_rank)``, so DDP ranks draw independent
    streams. Its state goes into every checkpoint under ``"keepmix"`` (every rank's, gathered
    from all ranks) and is restored, on the device of the next training batch, when a fit
    resumes (``trainer.fit(model, ckpt_path=...)``): the resumed run draws what the
    uninterrupted one would have. A checkpoint from another device type or world size cannot
    continue the streams; they restart from a fresh seed, with a warning.

    The op is kept outside the module tree (not a submodule): ``model.to(...)``, ``state_dict``
    and the model summary ignore it, and it runs on whatever device the batch is on.
    """

    keepmix_seed: int = 0
    # Given by the LightningModule the mixin is combined with (declared for the type checker).
    trainer: Any
    all_gather: Any

    def set_augmentation(self, op: Op | None, seed: int = 0) -> None:
        """Augment training batches with ``op`` (None: no augmentation), seeded by ``seed``."""
        if not _is_lightning_module(type(self)):
            raise TypeError(
                f"{type(self).__name__}: KeepmixAugmentation is a mixin for a LightningModule; declare "
                f"class {type(self).__name__}(KeepmixAugmentation, L.LightningModule) with L = lightning.pytorch or pytorch_lightning"
            )
        self.keepmix_op = op
        self.keepmix_seed = check_int(seed, "seed", low=0, what="a non-negative int")
        self._keepmix_generator: torch.Generator | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "keepmix_op":  # a plain attribute, not a registered submodule
            object.__setattr__(self, name, None if value is None else _check_op(value, "op"))
        else:
            super().__setattr__(name, value)

    # ----------------------------------------------------------------- the generator
    def _keepmix_rank_world(self) -> tuple[int, int]:
        return int(self.trainer.global_rank), int(self.trainer.world_size)

    def keepmix_generator(self, device: torch.device) -> torch.Generator:
        """The augmentation generator, made (or restored from a checkpoint) on ``device``."""
        g = getattr(self, "_keepmix_generator", None)
        if g is not None and g.device == device:
            return g
        rank, world = self._keepmix_rank_world()
        saved: dict[str, Any] = getattr(self, "_keepmix_pending", None) or {}
        self._keepmix_pending = None
        states, saved_device = saved.get("states"), saved.get("device")
        new = torch.Generator(device=device)
        if g is None and states is not None and saved_device == device.type and states.shape[0] == world:
            new.set_state(states[rank].clone())
        else:
            if g is not None:
                warnings.warn(f"keepmix: the training batches moved to {device}; the augmentation stream restarts", stacklevel=2)
            elif states is not None:
                warnings.warn(
                    f"keepmix: cannot continue the checkpoint's augmentation streams ({states.shape[0]} rank(s) on "
                    f"{saved_device!r}) with {world} rank(s) on {device.type!r}; they restart from a new seed",
                    stacklevel=2,
                )
            # A fresh stream: rank_seed(seed, rank) itself before the first batch.
            seed = check_int(self.keepmix_seed, "keepmix_seed", low=0, what="a non-negative int")
            new.manual_seed(rank_seed(seed, rank) ^ (self._keepmix_batches() << 1))
        self._keepmix_generator = new
        return new

    def _keepmix_batches(self) -> int:
        return int(getattr(self, "_keepmix_count", 0))

    # ----------------------------------------------------------------- Lightning hooks
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        batch = super().on_after_batch_transfer(batch, dataloader_idx)  # type: ignore[misc]  # the LightningModule's
        if not self.trainer.training:
            return batch
        if "keepmix_op" not in self.__dict__:  # a mixin that augments nothing by mistake
            raise RuntimeError(
                f"{type(self).__name__}: KeepmixAugmentation's set_augmentation(op) was never called; call "
                "self.set_augmentation(op) in __init__ after super().__init__() (set_augmentation(None) for no augmentation)"
            )
        op = self.keepmix_op
        if op is None:
            return batch
        _check_op(op, "keepmix_op")
        if not isinstance(batch, (tuple, list)) or len(batch) != 2 or not isinstance(batch[0], Tensor):
            got = f"{type(batch).__name__} of length {len(batch)}" if isinstance(batch, (tuple, list)) else type(batch).__name__
            raise TypeError(
                f"KeepmixAugmentation: the training batch (the argument batch of on_after_batch_transfer) must be "
                f"(images, labels) with images a (B, C, H, W) tensor, got {got}; "
                "override on_after_batch_transfer to unpack other batches"
            )
        images, labels = batch
        out = op(images, labels, generator=self.keepmix_generator(images.device))
        self._keepmix_count = self._keepmix_batches() + 1
        return type(batch)(out) if isinstance(batch, list) else tuple(out)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)  # type: ignore[misc]  # the LightningModule's
        g = getattr(self, "_keepmix_generator", None)
        states, device = None, None
        if g is not None:
            state = g.get_state()
            _, world = self._keepmix_rank_world()
            if world > 1:  # every rank saves; rank 0 writes: gather all the streams
                gathered = self.all_gather(state)
                assert isinstance(gathered, Tensor)
                states = gathered.cpu()
            else:
                states = state[None]
            device = g.device.type
        checkpoint["keepmix"] = {"seed": self.keepmix_seed, "batches": self._keepmix_batches(), "device": device, "states": states}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]  # the LightningModule's
        saved = checkpoint.get("keepmix")
        if saved is None:
            return
        self._keepmix_pending = saved  # restored on the device of the next training batch
        self._keepmix_generator = None
        self._keepmix_count = int(saved.get("batches", 0))
