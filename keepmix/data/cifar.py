"""CIFAR-10 and CIFAR-100 in the official python (pickle) format.

``root`` holds either the extracted folder (``cifar-10-batches-py`` / ``cifar-100-python``)
or the official archive; when both are absent and ``download=True`` the archive is fetched
from the official URL and its md5 checked before it is used.

The batches are pickles. They are read with an unpickler that only rebuilds numpy arrays,
lists, dicts, strings and numbers, so a tampered file cannot run code when loaded.
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from keepmix.data.archives import ChecksumError, download_url, file_md5, safe_extract
from keepmix.data.split import DataError, Split

__all__ = ["CIFAR_SOURCES", "CifarSource", "load_cifar"]


@dataclass(frozen=True)
class CifarSource:
    """Where the official archive of one CIFAR variant lives and what it contains."""

    url: str
    md5: str
    archive: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str


CIFAR_SOURCES: dict[str, CifarSource] = {
    "cifar10": CifarSource(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        archive="cifar-10-python.tar.gz",
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        meta_file="batches.meta",
    ),
    "cifar100": CifarSource(
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        archive="cifar-100-python.tar.gz",
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        meta_file="meta",
    ),
}

# What a CIFAR pickle may reference: numpy's array reconstruction (under its numpy 1 and
# numpy 2 module names) and nothing else.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # how Python 3 writes bytes at pickle protocol 2
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D401 - pickle hook
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")


def _load_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            # The official files were written by Python 2: byte strings stay bytes.
            obj = _ArrayOnlyUnpickler(io.BufferedReader(f), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise DataError(f"cannot read CIFAR batch {path}: {e}") from e
    if not isinstance(obj, dict):
        raise DataError(f"CIFAR batch {path} holds a {type(obj).__name__}, expected a dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _names(values: list) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _ensure_folder(root: Path, src: CifarSource, download: bool, url: str | None, md5: str | None, name: str) -> Path:
    folder = root / src.folder
    if folder.is_dir():
        return folder
    archive = root / src.archive
    expected = md5 if md5 is not None else src.md5
    if not archive.is_file():
        if not download:
            raise DataError(f"neither {folder} nor {archive} exists; pass download=True or point root at a folder that holds one")
        try:
            download_url(url or src.url, archive, md5=expected)
        except ChecksumError:
            raise
        except DataError as e:
            env = f"KEEPMIX_{name.upper()}_JPEG"
            raise DataError(
                f"{e}. Without a network: set {env} to a local ImageFolder tarball with train/ and test/ "
                f"(e.g. cifar10-jpeg.tar.gz), or put {src.archive} into {root}"
            ) from None
    elif (actual := file_md5(archive)) != expected:
        raise ChecksumError(f"{archive}: md5 {actual} does not match the expected {expected}; delete it to download again")
    safe_extract(archive, root)
    if not folder.is_dir():
        raise DataError(f"{archive} did not contain the folder {src.folder}/")
    return folder


def load_cifar(
    root: str | os.PathLike,
    name: Literal["cifar10", "cifar100"] = "cifar10",
    train: bool = True,
    download: bool = True,
    *,
    url: str | None = None,
    md5: str | None = None,
) -> Split:
    """One split of CIFAR-10 or CIFAR-100 from the official python format.

    Args:
        root: folder holding ``cifar-10-batches-py/`` (``cifar-100-python/``) or the official
            ``.tar.gz``; the archive is downloaded here when absent and ``download`` is true.
        name: ``"cifar10"`` or ``"cifar100"``.
        train: the 50,000 training images, else the 10,000 test images.
        download: fetch the archive when neither the folder nor the archive is in ``root``.
        url: override the official URL (a mirror; tests use ``file://``).
        md5: override the official checksum (with ``url``).

    Returns:
        A :class:`Split` with uint8 images (N, 3, 32, 32). CIFAR-100 labels are the 100 fine
        classes; the 20 superclasses are in ``coarse_labels`` / ``coarse_classes``.
    """
    if name not in CIFAR_SOURCES:
        raise ValueError(f"name must be one of {sorted(CIFAR_SOURCES)}, got {name!r}")
    src = CIFAR_SOURCES[name]
    folder = _ensure_folder(Path(root).expanduser(), src, download, url, md5, name)

    meta_path = folder / src.meta_file
    if not meta_path.is_file():
        raise DataError(f"CIFAR metadata file {meta_path} is missing")
    meta = _load_pickle(meta_path)
    label_key, names_key = ("labels", "label_names") if name == "cifar10" else ("fine_labels", "fine_label_names")
    if names_key not in meta:
        raise DataError(f"{meta_path} has no {names_key!r} entry")
    classes = _names(meta[names_key])

    images, labels, coarse = [], [], []
    for fname in src.train_files if train else src.test_files:
        path = folder / fname
        if not path.is_file():
            raise DataError(f"CIFAR batch {path} is missing")
        batch = _load_pickle(path)
        if "data" not in batch or label_key not in batch:
            raise DataError(f"CIFAR batch {path} lacks 'data' or {label_key!r}")
        data = np.asarray(batch["data"])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(f"CIFAR batch {path}: 'data' must be uint8 (N, 3072), got {data.dtype} {data.shape}")
        lab = np.asarray(batch[label_key], dtype=np.int64)
        if lab.shape != (data.shape[0],):
            raise DataError(f"CIFAR batch {path}: {data.shape[0]} images but {lab.shape[0]} labels")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(lab)
        if name == "cifar100":
            coarse.append(np.asarray(batch["coarse_labels"], dtype=np.int64))

    return Split(
        images=torch.from_numpy(np.concatenate(images)),
        labels=torch.from_numpy(np.concatenate(labels)),
        classes=classes,
        coarse_labels=torch.from_numpy(np.concatenate(coarse)) if coarse else None,
        coarse_classes=_names(meta["coarse_label_names"]) if coarse else None,
    )
