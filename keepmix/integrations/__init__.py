"""Drop-in integrations: a DataLoader ``collate_fn`` and a PyTorch Lightning mixin.

* :class:`keepmix.integrations.collate.AugmentCollate` applies any keepmix op to each batch
  inside the DataLoader workers, each worker with its own random stream (no extra
  dependency).
* :class:`keepmix.integrations.lightning.KeepmixAugmentation` applies an op to every training
  batch on the device, with a checkpointed generator: a mixin for a ``LightningModule`` of
  ``lightning.pytorch`` or ``pytorch_lightning``, neither of which it imports itself.
"""

from __future__ import annotations

from typing import Any

from keepmix.integrations.collate import AugmentCollate

__all__ = ["AugmentCollate", "KeepmixAugmentation"]


def __getattr__(name: str) -> Any:
    if name == "KeepmixAugmentation":  # loaded on first use, like the rest of the harness
        from keepmix.integrations.lightning import KeepmixAugmentation

        return KeepmixAugmentation
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
