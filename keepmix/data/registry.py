"""Resolve a dataset name or path to ``(train, test)`` splits.

* ``"cifar10"`` / ``"cifar100"``: the official python format under ``root`` (downloaded
  with an md5 check when absent). If the environment variable ``KEEPMIX_CIFAR10_JPEG``
  (``KEEPMIX_CIFAR100_JPEG``) names an ImageFolder tarball with ``train/`` and ``test/``
  (like ``/work/shared/data/cifar10-jpeg.tar.gz``), that is used instead: no download.
* anything else: a path to an ImageFolder tree or a tar archive of one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, cast

from keepmix.data.cifar import CIFAR_SOURCES, load_cifar
from keepmix.data.image_folder import load_image_folder
from keepmix.data.split import DataError, Split
from keepmix.data.stats import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, channel_stats
from keepmix.data.subset import class_balanced_subset

__all__ = ["DATASET_NAMES", "default_data_root", "jpeg_override", "get_dataset", "normalization_stats"]

DATASET_NAMES = tuple(CIFAR_SOURCES)
_STATS = {"cifar10": (CIFAR10_MEAN, CIFAR10_STD), "cifar100": (CIFAR100_MEAN, CIFAR100_STD)}


def default_data_root() -> Path:
    """``$KEEPMIX_DATA_DIR`` if set, else ``~/.cache/keepmix/data``."""
    env = os.environ.get("KEEPMIX_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "keepmix" / "data"


def jpeg_override(name: str) -> Path | None:
    """The tarball named by ``KEEPMIX_<NAME>_JPEG`` for a CIFAR name, if that variable is set."""
    value = os.environ.get(f"KEEPMIX_{name.upper()}_JPEG")
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.exists():
        raise DataError(f"KEEPMIX_{name.upper()}_JPEG={value} does not exist")
    return path


def get_dataset(
    name_or_path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    download: bool = True,
    cache_dir: str | os.PathLike | None = None,
    *,
    size: int | Sequence[int] | None = None,
    subset: int | None = None,
    seed: int = 0,
) -> tuple[Split, Split | None]:
    """``(train, test)`` for a dataset name (``"cifar10"``, ``"cifar100"``) or a path.

    Args:
        name_or_path: a name from :data:`DATASET_NAMES`, or an ImageFolder folder / tarball
            (``test`` is None when that tree has no ``train/``+``test/`` folders).
        root: where the official CIFAR archives live or are downloaded
            (None: :func:`default_data_root`).
        download: allow downloading an official archive that is absent.
        cache_dir: decoded-tensor cache for ImageFolder sources (None: the default).
        size: resize ImageFolder images to (H, W).
        subset: keep a class-balanced, seeded subset of this many training images.
        seed: the subset's seed.
    """
    key = str(name_or_path)
    if key.lower() in CIFAR_SOURCES:
        name = cast(Literal["cifar10", "cifar100"], key.lower())  # a key of CIFAR_SOURCES
        override = jpeg_override(name)
        if override is not None:
            train, test = load_image_folder(override, cache_dir=cache_dir, size=size)
            if test is None:
                raise DataError(f"KEEPMIX_{name.upper()}_JPEG={override} has no test/ split")
        else:
            r = Path(root).expanduser() if root is not None else default_data_root()
            train = load_cifar(r, name, train=True, download=download)
            test = load_cifar(r, name, train=False, download=download)
    else:
        path = Path(key).expanduser()
        if not path.exists():
            raise DataError(f"unknown dataset {key!r}: not one of {list(DATASET_NAMES)} and no such path")
        train, test = load_image_folder(path, cache_dir=cache_dir, size=size)
    if subset is not None:
        train = train.subset(class_balanced_subset(train.labels, subset, seed))
    return train, test


def normalization_stats(name_or_path: str | os.PathLike, train: Split | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel on the [0, 1] scale: the published constants for CIFAR, else
    computed from ``train`` (required then)."""
    key = str(name_or_path).lower()
    if key in _STATS:
        return _STATS[key]
    if train is None:
        raise ValueError(f"no built-in statistics for {name_or_path!r}: pass its train split to compute them")
    return channel_stats(train.images)
