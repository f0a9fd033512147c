"""Drop-in integrations: a DataLoader ``collate_fn`` and a PyTorch Lightning mixin.

* :class:`keepmix.integrations.collate.AugmentCollate` applies any keepmix op to each batch
  inside the DataLoader workers, each worker with its own random stream (no extra
  dependency).
* :class:`keepmix.integrations.lightning.KeepmixAugmentation` applies an op to every training
  batch on the device, with a checkpointed generator. It needs ``pytorch-lightning``
  (``pip install "keepmix[lightning]"``), which is imported only when that module (or the
  name here) is first used: ``import keepmix`` never needs it.
"""

from __future__ import annotations

from typing import Any

from keepmix.integrations.collate import AugmentCollate

__all__ = ["AugmentCollate", "KeepmixAugmentation"]


def __getattr__(name: str) -> Any:
    if name == "KeepmixAugmentation":  # imports pytorch_lightning, so only on demand
        from keepmix.integrations.lightning import KeepmixAugmentation

        return KeepmixAugmentation
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
