"""TensorBoard event files for a run (``keepmix train --log tensorboard``; the ``[tensorboard]`` extra).

Written into ``<run>/tensorboard`` next to ``metrics.jsonl`` (which stays the record of the
run): per epoch ``train/loss``, ``train/acc``, ``test/loss``, ``test/acc`` (epochs that
evaluate), ``lr`` and ``images_per_s``, with the global step as the x axis; at the end the
method grid as the image ``methods``. Only rank 0 writes. A resumed run goes on writing the
event files its run directory already has.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["TensorBoardLog", "SCALARS"]

#: metrics.jsonl key -> TensorBoard tag.
SCALARS = {
    "train_loss": "train/loss",
    "train_acc": "train/acc",
    "test_loss": "test/loss",
    "test_acc": "test/acc",
    "lr": "lr",
    "images_per_s": "images_per_s",
}


class TensorBoardLog:
    """A ``SummaryWriter`` on ``log_dir`` fed with the epoch records of a run."""

    def __init__(self, log_dir: str | Path, purge_step: int | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            from keepmix.train.config import ConfigError

            raise ConfigError("--log tensorboard needs the tensorboard package: pip install 'keepmix[tensorboard]'") from None
        # purge_step: TensorBoard hides this directory's earlier events at steps >= it.
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def epoch(self, record: dict[str, Any]) -> None:
        """Write the scalars of one metrics.jsonl record at its global step."""
        step = int(record["step"])
        for key, tag in SCALARS.items():
            if record.get(key) is not None:
                self.writer.add_scalar(tag, float(record[key]), step)
        self.writer.add_scalar("epoch", float(record["epoch"]), step)
        self.writer.flush()

    def image(self, tag: str, png: str | Path, step: int) -> None:
        """Write a PNG file (the method grid) as an image."""
        import numpy as np
        from PIL import Image

        with Image.open(png) as im:
            arr = np.asarray(im.convert("RGB"))
        self.writer.add_image(tag, arr, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
