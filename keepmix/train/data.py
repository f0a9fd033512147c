"""The trainer's view of the data: loading, subsets, normalisation constants, the loader.

The dataset lives in memory as one uint8 tensor (on the training device when it is a GPU,
as in airbench: CIFAR-10 is 150 MB). keepmix.data's DeviceLoader makes batch ``(epoch, i)``
a pure function of the seed, so a resumed run needs only (epoch, step) to continue with
exactly the batches the interrupted one would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from keepmix.train.config import ConfigError, TrainConfig
from keepmix.train.distributed import DistInfo

if TYPE_CHECKING:
    from keepmix.data import DeviceLoader, Split

__all__ = ["TrainData", "load_data", "prepare_data", "train_loader", "steps_per_epoch"]


@dataclass
class TrainData:
    """Train and test splits (``.images`` uint8 (N, 3, H, W), ``.labels`` int64) with their
    class names and the normalisation constants (on the [0, 1] scale)."""

    train: Split
    test: Split
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _subset(split: Split, n: int, seed: int, name: str) -> Split:
    from keepmix.data import class_balanced_subset

    try:
        return split.subset(class_balanced_subset(split.labels, n, seed))
    except ValueError as e:
        raise ConfigError(f"{name}={n}: {e}") from None


def load_data(config: TrainConfig, dist: DistInfo | None = None) -> TrainData:
    """Load ``config.dataset`` (and take the class-balanced subsets the config asks for)."""
    from keepmix.data import get_dataset

    train, test = get_dataset(config.dataset, root=config.data_dir or None)
    if test is None:
        raise ConfigError(f"dataset {config.dataset!r} has no test split: it needs train/ and test/ folders")
    return prepare_data(train, test, config)


def prepare_data(train: Split, test: Split, config: TrainConfig) -> TrainData:
    """Subsets, consistency checks and normalisation constants for two loaded splits."""
    if len(train.labels) == 0 or len(test.labels) == 0:
        raise ConfigError(f"dataset {config.dataset!r} has an empty {'train' if len(train.labels) == 0 else 'test'} split")
    if list(train.classes) != list(test.classes):
        raise ConfigError(
            f"dataset {config.dataset!r}: the train and test splits have different class lists "
            f"({len(train.classes)} and {len(test.classes)} classes)"
        )
    absent = sorted(set(test.labels.unique().tolist()) - set(train.labels.unique().tolist()))
    if absent:
        names = ", ".join(repr(train.classes[i]) for i in absent[:5]) + (" ..." if len(absent) > 5 else "")
        raise ConfigError(
            f"dataset {config.dataset!r}: class {names} has test images but no training images "
            f"({len(absent)} of {len(train.classes)} classes); the model could never predict it"
        )
    if tuple(train.images.shape[1:]) != tuple(test.images.shape[1:]):
        raise ConfigError(f"train images are {tuple(train.images.shape[1:])} but test images are {tuple(test.images.shape[1:])}")
    for split, n, name in ((train, config.train_subset, "train_subset"), (test, config.test_subset, "test_subset")):
        if n > len(split.labels):
            raise ConfigError(f"{name}={n} but the split has only {len(split.labels)} images")
    if config.train_subset:
        train = _subset(train, config.train_subset, config.seed, "train_subset")
    if config.test_subset:
        test = _subset(test, config.test_subset, config.seed, "test_subset")
    from keepmix.data import normalization_stats

    # Named CIFAR sets: the published constants; a folder of images: its own training set's.
    mean, std = normalization_stats(config.dataset, train)
    return TrainData(train=train, test=test, classes=list(train.classes), mean=mean, std=std)


def train_loader(data: TrainData, config: TrainConfig, dist: DistInfo, device: torch.device) -> DeviceLoader:
    """keepmix.data's DeviceLoader over the training split: the whole uint8 set on ``device``,
    crop (zero padding) + flip per image, batches as uint8 (the method normalises, after the
    uint8 policies). Its batch ``(epoch, index)`` is a pure function of the seed, so the
    trainer's position (epoch, step) is all a resume needs; ranks take disjoint slices of the
    same permutation, and the last partial batch is dropped (equal steps on every rank)."""
    from keepmix.data import DeviceLoader

    try:
        return DeviceLoader(
            data.train.images,
            data.train.labels,
            config.batch_size,
            train=True,
            device=device,
            crop_padding=config.crop_padding,
            flip=config.flip,
            seed=config.seed,
            normalize=False,
            rank=dist.rank,
            world_size=dist.world_size,
        )
    except ValueError as e:
        raise ConfigError(
            f"the training set has {len(data.train.labels)} images, too few for batch_size={config.batch_size} "
            f"on {dist.world_size} process(es): {e}"
        ) from None


def steps_per_epoch(loader: Any, config: TrainConfig) -> int:
    """Batches per epoch and rank (``max_steps_per_epoch`` caps it)."""
    steps = len(loader)
    return min(steps, config.max_steps_per_epoch) if config.max_steps_per_epoch else steps
