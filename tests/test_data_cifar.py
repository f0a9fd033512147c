"""CIFAR-10/100 in the official python format (keepmix.data.cifar), on tiny archives built here."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from keepmix.data import CIFAR_SOURCES, ChecksumError, DataError, get_dataset, load_cifar

PER_BATCH = 3  # images per official batch file in the tiny archives


def _py2_pickle(obj: dict) -> bytes:
    """Like the official files: protocol 2, with byte-string keys and names (Python 2 str)."""

    def conv(v):
        if isinstance(v, str):
            return v.encode()
        if isinstance(v, list):
            return [conv(x) for x in v]
        return v

    return pickle.dumps({k.encode(): conv(v) for k, v in obj.items()}, protocol=2)


def _batch(rng: np.random.Generator, n: int, label_key: str, num_classes: int) -> dict:
    out = {
        "batch_label": "tiny batch",
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key: rng.integers(0, num_classes, n).tolist(),
        "filenames": [f"img_{i}.png" for i in range(n)],
    }
    if label_key == "fine_labels":
        out["coarse_labels"] = rng.integers(0, 20, n).tolist()
    return out


def _build_archive(tmp: Path, name: str, seed: int = 0) -> tuple[Path, dict[str, dict]]:
    """A tiny official-format archive for ``name``; returns it and the batches by file name."""
    src = CIFAR_SOURCES[name]
    rng = np.random.default_rng(seed)
    files: dict[str, dict] = {}
    if name == "cifar10":
        files[src.meta_file] = {"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": PER_BATCH}
        for f in src.train_files + src.test_files:
            files[f] = _batch(rng, PER_BATCH, "labels", 10)
    else:
        files[src.meta_file] = {
            "fine_label_names": [f"fine{i}" for i in range(100)],
            "coarse_label_names": [f"coarse{i}" for i in range(20)],
        }
        files["train"] = _batch(rng, 2 * PER_BATCH, "fine_labels", 100)
        files["test"] = _batch(rng, PER_BATCH, "fine_labels", 100)
    archive = tmp / "mirror" / src.archive
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tf:
        for fname, obj in files.items():
            data = _py2_pickle(obj)
            info = tarfile.TarInfo(f"{src.folder}/{fname}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return archive, files


def _md5(p: Path) -> str:
    return hashlib.md5(p.read_bytes()).hexdigest()


def _expected_images(batches: list[dict]) -> torch.Tensor:
    # Official layout: each row is the red plane (32x32, row-major), then green, then blue.
    data = np.concatenate([b["data"] for b in batches])
    out = np.empty((data.shape[0], 3, 32, 32), dtype=np.uint8)
    for c in range(3):
        out[:, c] = data[:, c * 1024 : (c + 1) * 1024].reshape(-1, 32, 32)
    return torch.from_numpy(out)


def test_cifar10_download_from_file_url_then_read(tmp_path):
    archive, files = _build_archive(tmp_path, "cifar10")
    root = tmp_path / "root"
    train = load_cifar(root, "cifar10", train=True, url=archive.as_uri(), md5=_md5(archive))
    src = CIFAR_SOURCES["cifar10"]
    assert (root / src.archive).is_file() and (root / src.folder).is_dir()
    batches = [files[f] for f in src.train_files]
    assert train.images.dtype == torch.uint8 and train.images.shape == (5 * PER_BATCH, 3, 32, 32)
    assert torch.equal(train.images, _expected_images(batches))
    assert train.labels.tolist() == sum((b["labels"] for b in batches), [])
    assert train.classes == [f"class{i}" for i in range(10)]
    assert train.coarse_labels is None

    # Second call: the folder is there, no download (a bogus URL would fail otherwise).
    test = load_cifar(root, "cifar10", train=False, url="file:///nonexistent", download=False)
    assert torch.equal(test.images, _expected_images([files["test_batch"]]))
    assert test.labels.tolist() == files["test_batch"]["labels"]


def test_cifar10_from_archive_in_root_without_download(tmp_path):
    archive, files = _build_archive(tmp_path, "cifar10")
    test = load_cifar(archive.parent, "cifar10", train=False, download=False, md5=_md5(archive))
    assert torch.equal(test.images, _expected_images([files["test_batch"]]))


def test_cifar100_fine_and_coarse_labels(tmp_path):
    archive, files = _build_archive(tmp_path, "cifar100")
    train = load_cifar(tmp_path / "r", "cifar100", url=archive.as_uri(), md5=_md5(archive))
    assert train.images.shape == (2 * PER_BATCH, 3, 32, 32)
    assert torch.equal(train.images, _expected_images([files["train"]]))
    assert train.labels.tolist() == files["train"]["fine_labels"]
    assert train.coarse_labels.tolist() == files["train"]["coarse_labels"]
    assert train.classes == [f"fine{i}" for i in range(100)]
    assert train.coarse_classes == [f"coarse{i}" for i in range(20)]
    test = load_cifar(tmp_path / "r", "cifar100", train=False, download=False)
    assert test.labels.tolist() == files["test"]["fine_labels"]


def test_download_checksum_mismatch_is_an_error_and_leaves_nothing(tmp_path):
    archive, _ = _build_archive(tmp_path, "cifar10")
    root = tmp_path / "root"
    # The default checksum is the official one, which the tiny archive does not have.
    with pytest.raises(ChecksumError, match="c58f30108f718f92721af3b95e74349a"):
        load_cifar(root, "cifar10", url=archive.as_uri())
    assert not (root / CIFAR_SOURCES["cifar10"].archive).exists()
    assert not (root / CIFAR_SOURCES["cifar10"].folder).exists()


def test_corrupt_archive_in_root_fails_the_checksum(tmp_path):
    archive, _ = _build_archive(tmp_path, "cifar10")
    with pytest.raises(ChecksumError, match="delete it"):
        load_cifar(archive.parent, "cifar10", download=False, md5="0" * 32)


def test_missing_data_without_download(tmp_path):
    with pytest.raises(DataError, match="download=True"):
        load_cifar(tmp_path, "cifar10", download=False)
    with pytest.raises(ValueError, match="cifar10"):
        load_cifar(tmp_path, "cifar1000")


def test_official_urls_and_checksums():
    assert CIFAR_SOURCES["cifar10"].url == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert CIFAR_SOURCES["cifar10"].md5 == "c58f30108f718f92721af3b95e74349a"
    assert CIFAR_SOURCES["cifar100"].url == "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    assert CIFAR_SOURCES["cifar100"].md5 == "eb9058c3a382ffc7106e4002c42a8d85"


def _extracted(tmp_path: Path) -> Path:
    archive, _ = _build_archive(tmp_path, "cifar10")
    root = tmp_path / "root"
    load_cifar(root, "cifar10", url=archive.as_uri(), md5=_md5(archive))
    return root / CIFAR_SOURCES["cifar10"].folder


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_with_foreign_globals_is_refused(tmp_path):
    folder = _extracted(tmp_path)
    (folder / "test_batch").write_bytes(pickle.dumps({"data": _Evil(), "labels": []}, protocol=2))
    with pytest.raises(DataError, match="not allowed"):
        load_cifar(folder.parent, "cifar10", train=False, download=False)


def test_malformed_batches_are_named(tmp_path):
    folder = _extracted(tmp_path)
    (folder / "test_batch").write_bytes(_py2_pickle({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}))
    with pytest.raises(DataError, match="test_batch.*3072"):
        load_cifar(folder.parent, "cifar10", train=False, download=False)
    (folder / "test_batch").write_bytes(b"\x80\x02truncated")
    with pytest.raises(DataError, match="test_batch"):
        load_cifar(folder.parent, "cifar10", train=False, download=False)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3 is missing"):
        load_cifar(folder.parent, "cifar10", train=True, download=False)


def test_get_dataset_cifar10_from_root(tmp_path, monkeypatch):
    monkeypatch.delenv("KEEPMIX_CIFAR10_JPEG", raising=False)
    folder = _extracted(tmp_path)  # an extracted folder is used as is (no checksum to match)
    train, test = get_dataset("cifar10", root=folder.parent, download=False)
    assert len(train) == 5 * PER_BATCH and len(test) == PER_BATCH
    with pytest.raises(DataError, match="download=True"):
        get_dataset("CIFAR100", root=tmp_path / "empty", download=False)
