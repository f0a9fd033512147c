"""ImageFolder trees and their tarballs decoded to uint8, with the cache (keepmix.data.image_folder).

Real images come from the shared CIFAR-10 JPEG tarball; the tests extract a few members of it
with the tar tool (fast, C) and build small trees and tarballs from them.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from keepmix.data import (
    DataError,
    ImageFolderDataset,
    UnsafeArchiveError,
    class_balanced_subset,
    get_dataset,
    load_image_folder,
    normalization_stats,
)

SHARED = Path("/work/shared/data/cifar10-jpeg.tar.gz")
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _extract(dest: Path, *patterns: str) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-xzf", str(SHARED), "-C", str(dest), "--wildcards", *patterns], check=True)
    return dest


def _tar_of(tree: Path, archive: Path, prefix: str = "") -> Path:
    with tarfile.open(archive, "w:gz") as tf:
        for p in sorted(tree.rglob("*")):
            tf.add(p, arcname=prefix + p.relative_to(tree).as_posix(), recursive=False)
    return archive


def _pil(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory) -> Path:
    """4 train and 3 test images per class of the real set, in train/ and test/ folders."""
    return _extract(tmp_path_factory.mktemp("small"), "train/*/000[0-3].jpg", "test/*/000[0-2].jpg")


@pytest.fixture(scope="module")
def small_tar(small_tree, tmp_path_factory) -> Path:
    return _tar_of(small_tree, tmp_path_factory.mktemp("tar") / "small.tar.gz")


def _copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_tarball_train_and_test_match_pil(small_tree, small_tar, tmp_path):
    train, test = load_image_folder(small_tar, cache_dir=tmp_path, workers=0)
    assert train.classes == CLASSES and test.classes == CLASSES
    assert train.images.shape == (40, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (30, 3, 32, 32)
    assert torch.bincount(train.labels).tolist() == [4] * 10
    # Sorted by path: class by class, file by file; every image exactly as PIL decodes it.
    expected = sorted(small_tree.glob("train/*/*.jpg"))
    for i, p in enumerate(expected):
        assert train.labels[i] == CLASSES.index(p.parent.name)
        assert torch.equal(train.images[i], _pil(p)), p


def test_folder_tarball_wrapped_tarball_and_pool_agree(small_tree, small_tar, tmp_path):
    ref_train, ref_test = load_image_folder(small_tar, cache=False, workers=0)
    wrapped = _tar_of(small_tree, tmp_path / "wrapped.tgz", prefix="cifar10/")
    for src, workers in ((small_tree, 0), (small_tar, 2), (wrapped, 0)):
        train, test = load_image_folder(src, cache=False, workers=workers)
        assert torch.equal(train.images, ref_train.images) and torch.equal(train.labels, ref_train.labels)
        assert torch.equal(test.images, ref_test.images) and torch.equal(test.labels, ref_test.labels)


def test_plain_class_tree_has_no_test_split_and_val_stands_in(small_tree, tmp_path):
    plain = _copy_tree(small_tree / "train", tmp_path / "plain")
    train, test = load_image_folder(plain, cache=False, workers=0)
    assert test is None and len(train) == 40 and train.classes == CLASSES
    tv = tmp_path / "tv"
    shutil.copytree(small_tree / "train", tv / "train")
    shutil.copytree(small_tree / "test", tv / "val")
    train, val = load_image_folder(tv, cache=False, workers=0)
    assert len(val) == 30


def test_cache_second_load_equal_fast_and_invalidated(small_tree, tmp_path):
    src = _tar_of(small_tree, tmp_path / "src.tar.gz")
    cache = tmp_path / "cache"
    first, _ = load_image_folder(src, cache_dir=cache, workers=0)
    files = list(cache.glob("*.pt"))
    assert len(files) == 1 and files[0].name.startswith("src-")
    t0 = time.perf_counter()
    second, _ = load_image_folder(src, cache_dir=cache, workers=0)
    assert time.perf_counter() - t0 < 5.0  # generous: a cache hit is a memory-map, not a decode
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)

    # Replace the source by one with an extra class: the stale entry goes, the new one is right.
    extra = _copy_tree(small_tree, tmp_path / "extra")
    shutil.copytree(extra / "train" / "cat", extra / "train" / "zebra")
    _tar_of(extra, src)
    os.utime(src, ns=(time.time_ns(), time.time_ns() + 10**9))
    third, _ = load_image_folder(src, cache_dir=cache, workers=0)
    assert third.classes == CLASSES + ["zebra"] and len(third) == 44
    assert len(list(cache.glob("*.pt"))) == 1


def test_cache_tracks_folder_contents_and_size_option(small_tree, tmp_path):
    tree = _copy_tree(small_tree, tmp_path / "tree")
    cache = tmp_path / "cache"
    a, _ = load_image_folder(tree, cache_dir=cache, workers=0)
    b, _ = load_image_folder(tree, cache_dir=cache, size=16, workers=0)
    assert b.image_size == (16, 16) and a.image_size == (32, 32)
    victim = tree / "train" / "bird" / "0000.jpg"
    Image.new("RGB", (32, 32), (255, 0, 0)).save(victim)
    c, _ = load_image_folder(tree, cache_dir=cache, workers=0)
    i = CLASSES.index("bird") * 4
    assert torch.equal(c.images[i], _pil(victim)) and not torch.equal(c.images[i], a.images[i])


def test_unreadable_cache_is_rebuilt_and_cache_false_writes_nothing(small_tar, tmp_path):
    cache = tmp_path / "cache"
    ref, _ = load_image_folder(small_tar, cache_dir=cache, workers=0)
    (f,) = cache.glob("*.pt")
    f.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable cache"):
        again, _ = load_image_folder(small_tar, cache_dir=cache, workers=0)
    assert torch.equal(again.images, ref.images)
    load_image_folder(small_tar, cache_dir=tmp_path / "none", cache=False, workers=0)
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("as_tar", [False, True])
def test_corrupt_image_error_names_the_file(small_tree, tmp_path, workers, as_tar):
    tree = _copy_tree(small_tree, tmp_path / "tree")
    bad = tree / "train" / "dog" / "0002.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    src = _tar_of(tree, tmp_path / "t.tar.gz") if as_tar else tree
    with pytest.raises(DataError, match=r"cannot decode image .*train/dog/0002\.jpg"):
        load_image_folder(src, cache=False, workers=workers)


def test_wrong_size_image_error_names_the_file_unless_resized(small_tree, tmp_path):
    tree = _copy_tree(small_tree, tmp_path / "tree")
    odd = tree / "test" / "ship" / "0001.jpg"
    Image.open(odd).resize((40, 30)).save(odd)
    with pytest.raises(DataError, match=r"test/ship/0001\.jpg is 30x40.*size="):
        load_image_folder(tree, cache=False, workers=0)
    train, test = load_image_folder(tree, cache=False, workers=0, size=(32, 32))
    i = CLASSES.index("ship") * 3 + 1
    ref = np.array(Image.open(odd).convert("RGB").resize((32, 32), Image.BILINEAR))
    assert torch.equal(test.images[i], torch.from_numpy(ref).permute(2, 0, 1))
    assert torch.equal(test.images[0], _pil(tree / "test" / "airplane" / "0000.jpg"))  # 32x32 kept as is


def test_non_rgb_images_are_converted_to_rgb(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "t" / "a").mkdir(parents=True)
    (tmp_path / "t" / "b").mkdir()
    gray = Image.fromarray(rng.integers(0, 256, (8, 6), dtype=np.uint8), "L")
    rgba = Image.fromarray(rng.integers(0, 256, (8, 6, 4), dtype=np.uint8), "RGBA")
    gray.save(tmp_path / "t" / "a" / "g.png")
    rgba.save(tmp_path / "t" / "b" / "r.png")
    (tmp_path / "t" / "b" / "notes.txt").write_text("not an image: ignored")
    train, test = load_image_folder(tmp_path / "t", cache=False, workers=0)
    assert test is None and train.images.shape == (2, 3, 8, 6)
    assert torch.equal(train.images[0], torch.from_numpy(np.array(gray.convert("RGB"))).permute(2, 0, 1))
    assert torch.equal(train.images[1], torch.from_numpy(np.array(rgba.convert("RGB"))).permute(2, 0, 1))


def test_bad_paths_and_layouts(tmp_path, small_tree):
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(tmp_path / "missing", cache=False)
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    (tmp_path / "empty" / "cls" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="holds no images"):
        load_image_folder(tmp_path / "empty", cache=False)
    loose = _copy_tree(small_tree / "train", tmp_path / "loose")
    shutil.copy(loose / "cat" / "0000.jpg", loose / "stray.jpg")
    with pytest.raises(DataError, match="stray.jpg is not inside a class folder"):
        load_image_folder(loose, cache=False, workers=0)
    (tmp_path / "file.zip").write_bytes(b"zip")
    with pytest.raises(DataError, match="folder or a tar archive"):
        load_image_folder(tmp_path / "file.zip", cache=False)
    with pytest.raises(ValueError, match="size"):
        load_image_folder(small_tree, cache=False, size=(0, 3))


def test_malicious_tarball_is_rejected(tmp_path):
    arc = tmp_path / "evil.tar.gz"
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "PNG")
    with tarfile.open(arc, "w:gz") as tf:
        info = tarfile.TarInfo("train/cls/../../../escape.png")
        info.size = len(buf.getvalue())
        tf.addfile(info, io.BytesIO(buf.getvalue()))
    with pytest.raises(UnsafeArchiveError, match="'..'"):
        load_image_folder(arc, cache=False, workers=0)


def test_full_test_split_decodes(tmp_path_factory):
    """All 10,000 real test images: counts, one cached load, agreement with PIL on a sample."""
    root = _extract(tmp_path_factory.mktemp("full"), "test/*")
    tree = root / "test"
    cache = tmp_path_factory.mktemp("fullcache")
    split, none = load_image_folder(tree, cache_dir=cache, workers=2)
    assert none is None and split.images.shape == (10000, 3, 32, 32)
    assert torch.bincount(split.labels).tolist() == [1000] * 10
    for i in (0, 4321, 9999):
        cls = CLASSES[int(split.labels[i])]
        name = sorted((tree / cls).iterdir())[i % 1000]
        assert torch.equal(split.images[i], _pil(name))
    again, _ = load_image_folder(tree, cache_dir=cache)
    assert torch.equal(again.images, split.images)
    mean, std = normalization_stats(tree, split)
    assert all(abs(m - e) < 0.02 for m, e in zip(mean, (0.4914, 0.4822, 0.4465), strict=True))
    assert all(abs(s - e) < 0.02 for s, e in zip(std, (0.2470, 0.2435, 0.2616), strict=True))


def test_image_folder_dataset_matches_decoded_split(small_tree, tmp_path):
    train, test = load_image_folder(small_tree, cache=False, workers=0)
    ds = ImageFolderDataset(small_tree, split="test")
    assert len(ds) == 30 and ds.classes == CLASSES and torch.equal(ds.labels, test.labels)
    img, label = ds[7]
    assert torch.equal(img, test.images[7]) and label == int(test.labels[7])
    loader = DataLoader(ds, batch_size=16, num_workers=1, shuffle=False)
    images = torch.cat([x for x, _ in loader])
    assert torch.equal(images, test.images)
    with pytest.raises(DataError, match="pass split="):
        ImageFolderDataset(small_tree)
    small = ImageFolderDataset(small_tree, split="train", size=8, transform=lambda x: x.flip(-1))
    assert small[0][0].shape == (3, 8, 8)


def test_image_folder_dataset_wrong_size_and_from_archive(small_tree, small_tar, tmp_path):
    tree = _copy_tree(small_tree / "train", tmp_path / "plain")
    odd = tree / "deer" / "0003.jpg"
    Image.open(odd).resize((20, 20)).save(odd)
    ds = ImageFolderDataset(tree)
    i = [p for p, _ in ds.samples].index(str(odd))
    with pytest.raises(DataError, match=r"deer/0003\.jpg is 20x20"):
        ds[i]
    arch = ImageFolderDataset.from_archive(small_tar, tmp_path / "extracted", split="train")
    assert len(arch) == 40 and (tmp_path / "extracted" / "train" / "cat" / "0000.jpg").is_file()


def test_get_dataset_path_env_override_and_subset(small_tar, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    train, test = get_dataset(small_tar, cache_dir=cache)
    ref_train, ref_test = load_image_folder(small_tar, cache=False, workers=0)
    assert torch.equal(train.images, ref_train.images) and torch.equal(test.images, ref_test.images)

    monkeypatch.setenv("KEEPMIX_CIFAR10_JPEG", str(small_tar))
    train, test = get_dataset("cifar10", root=tmp_path / "nothing-here", download=False, cache_dir=cache, subset=20, seed=3)
    keep = class_balanced_subset(ref_train.labels, 20, seed=3)
    assert torch.equal(train.images, ref_train.images[keep]) and torch.bincount(train.labels).tolist() == [2] * 10
    assert len(test) == 30

    monkeypatch.setenv("KEEPMIX_CIFAR10_JPEG", str(tmp_path / "gone.tar.gz"))
    with pytest.raises(DataError, match="KEEPMIX_CIFAR10_JPEG"):
        get_dataset("cifar10", cache_dir=cache)
    with pytest.raises(DataError, match="unknown dataset 'imagenet-9000'"):
        get_dataset("imagenet-9000")
    with pytest.raises(ValueError, match="not reachable"):
        get_dataset(small_tar, cache_dir=cache, subset=45)


def test_damaged_archive_is_an_error_not_a_silently_shorter_set(small_tree, tmp_path):
    arc = _tar_of(small_tree, tmp_path / "plain.tar")  # uncompressed: bytes are easy to damage
    with tarfile.open(arc) as tf:
        victim = [m for m in tf.getmembers() if m.isfile()][5]
    data = bytearray(arc.read_bytes())
    data[victim.offset : victim.offset + 100] = b"\xff" * 100  # a header tarfile cannot parse
    arc.write_bytes(bytes(data))
    with pytest.raises(DataError, match="damaged"):
        load_image_folder(arc, cache=False, workers=0)
    gz = _tar_of(small_tree, tmp_path / "cut.tar.gz")
    gz.write_bytes(gz.read_bytes()[:-200])  # truncated download
    with pytest.raises(DataError, match="cut.tar.gz"):
        load_image_folder(gz, cache=False, workers=0)
