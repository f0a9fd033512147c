"""Shared test fixtures: a small batch of real CIFAR-10 test images.

The tarball is part of the environment (see /work/shared/data/README.md), so a missing file
is an error, not a skip. Images are chosen deterministically: the test split's files of each
class sorted by name, taken round-robin over the classes (class order = sorted names), so
every class appears and the labels are interleaved.
"""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

N_IMAGES = 64
_SESSION_CACHE: tempfile.TemporaryDirectory[str] | None = None


def pytest_configure(config: pytest.Config) -> None:
    """Point keepmix's caches at a folder of the test session's own: a run leaves nothing in
    ``~/.cache/keepmix`` (subprocesses inherit the variables)."""
    global _SESSION_CACHE
    _SESSION_CACHE = tempfile.TemporaryDirectory(prefix="keepmix-tests-")
    os.environ["KEEPMIX_CACHE_DIR"] = os.path.join(_SESSION_CACHE.name, "cache")
    os.environ["KEEPMIX_DATA_DIR"] = os.path.join(_SESSION_CACHE.name, "data")
    # No test opens a process group in the pytest process: its teardown can deadlock the whole
    # run. Spawned workers and tests/isolated.py's fresh interpreters do not see this patch.
    import torch.distributed as dist

    def _refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a test opened a process group in the pytest process: run it in a fresh process (tests/isolated.py)")

    dist.init_process_group = _refuse  # type: ignore[assignment]  # a stand-in that only raises


def pytest_unconfigure(config: pytest.Config) -> None:
    if _SESSION_CACHE is not None:
        _SESSION_CACHE.cleanup()


def pytest_runtest_logstart(nodeid: str, location: tuple[str, int | None, str]) -> None:
    """Name the running test in ``$KEEPMIX_CURRENT_TEST`` (a file), so that a run stopped from
    outside (.ci/run's time bound) can say which test it was in."""
    path = os.environ.get("KEEPMIX_CURRENT_TEST")
    if path:
        with open(path, "w") as f:
            f.write(nodeid + "\n")


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _tarball_path() -> Path:
    env = os.environ.get("KEEPMIX_CIFAR10_JPEG")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


@pytest.fixture(scope="session")
def shared_data_path() -> Path:
    """Path of cifar10-jpeg.tar.gz (env var KEEPMIX_CIFAR10_JPEG overrides the default)."""
    path = _tarball_path()
    if not path.is_file():
        pytest.fail(
            f"CIFAR-10 JPEG tarball not found at {path}; it is part of the test environment "
            "(set KEEPMIX_CIFAR10_JPEG to its path if it lives elsewhere)",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def _cifar_batch(shared_data_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    per_class: dict[str, dict[str, bytes]] = {c: {} for c in CIFAR10_CLASSES}
    # One streaming pass over the gzip (random access into a .tar.gz re-decompresses).
    with tarfile.open(shared_data_path, "r|gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 3 and parts[0] == "test" and parts[1] in per_class:
                per_class[parts[1]][parts[2]] = tar.extractfile(member).read()
    names = {c: sorted(files) for c, files in per_class.items()}
    images, labels = [], []
    rank = 0
    while len(images) < N_IMAGES:
        for label, c in enumerate(CIFAR10_CLASSES):
            if len(images) == N_IMAGES:
                break
            if rank >= len(names[c]):
                pytest.fail(f"{shared_data_path} has too few test images of class {c!r}", pytrace=False)
            with Image.open(io.BytesIO(per_class[c][names[c][rank]])) as im:
                images.append(np.asarray(im.convert("RGB")))
            labels.append(label)
        rank += 1
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels, dtype=torch.int64)


@pytest.fixture(scope="session")
def cifar_uint8(_cifar_batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """(64, 3, 32, 32) uint8 real CIFAR-10 test images, shared by the session: do not modify in place."""
    return _cifar_batch[0].clone()


@pytest.fixture(scope="session")
def cifar_labels(_cifar_batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """(64,) int64 class ids of ``cifar_uint8`` (index into the sorted class names)."""
    return _cifar_batch[1].clone()


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory, cifar_uint8, cifar_labels) -> Path:
    """An ImageFolder tree of real CIFAR-10 images: 40 train (4 per class), 24 test (>= 2 per class)."""
    root = tmp_path_factory.mktemp("cifar_tiny")
    for i, (img, label) in enumerate(zip(cifar_uint8, cifar_labels, strict=True)):
        split = "train" if i < 40 else "test"
        d = root / split / CIFAR10_CLASSES[int(label)]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(d / f"{i:04d}.png")  # lossless: exact pixels
    return root


@pytest.fixture
def isolated_env(monkeypatch, tmp_path):
    """The decoded-tensor cache and the data override stay inside this test."""
    monkeypatch.setenv("KEEPMIX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("KEEPMIX_CIFAR10_JPEG", raising=False)
