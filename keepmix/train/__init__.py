"""The training harness: config and presets, the loop, checkpoints, distributed set-up.

Typical use::

    from keepmix.train import get_preset, train
    final = train(get_preset("cifar10-small-keepcutout-quick", epochs=2))
    print(final["test_acc"], final["run_dir"])
"""

from keepmix.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from keepmix.train.config import METHODS, SALIENCY_MODES, ConfigError, TrainConfig, load_config, save_config
from keepmix.train.loop import FinishedRunError, NonFiniteLossError, RunInterrupted, Trainer, train
from keepmix.train.presets import PRESETS, get_preset, preset_names

__all__ = [
    "TrainConfig",
    "ConfigError",
    "METHODS",
    "SALIENCY_MODES",
    "load_config",
    "save_config",
    "PRESETS",
    "get_preset",
    "preset_names",
    "Trainer",
    "train",
    "RunInterrupted",
    "NonFiniteLossError",
    "FinishedRunError",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
]
