"""The training harness: config and presets, the loop, checkpoints, distributed set-up.

Typical use::

    from keepmix.train import get_preset, train
    final = train(get_preset("cifar10-small-keepcutout-quick", epochs=2))
    print(final["test_acc"], final["run_dir"])
"""

import importlib
from typing import Any

# Where each public name lives; a module is imported when one of its names is first used, so
# ``import keepmix.train`` (and keepmix itself) loads none of the loop, tqdm, yaml or matplotlib.
_WHERE = {
    "TrainConfig": "config",
    "ConfigError": "config",
    "METHODS": "config",
    "SALIENCY_MODES": "config",
    "load_config": "config",
    "save_config": "config",
    "PRESETS": "presets",
    "get_preset": "presets",
    "preset_names": "presets",
    "Trainer": "loop",
    "train": "loop",
    "RunInterrupted": "loop",
    "NonFiniteLossError": "loop",
    "FinishedRunError": "loop",
    "CheckpointError": "checkpoint",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "METHOD_REGISTRY": "registry",
    "MethodEntry": "registry",
}

__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'keepmix.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"keepmix.train.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
