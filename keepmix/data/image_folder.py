"""ImageFolder trees (``root/<class>/*.jpg``) and their tar archives, decoded to uint8.

Two layouts are recognised (after stripping one wrapping folder, if the archive has one):

* ``<class>/<image>``: one split;
* ``train/<class>/<image>`` and ``test/<class>/<image>`` (``val/`` stands in for a missing
  ``test/``): both splits, with one class list shared by the two.

Archives are read member by member straight from the tarfile rather than extracted: one
sequential pass over the compressed stream, no tens of thousands of small files written to
disk, nothing left half-extracted. Member names are still validated (no absolute paths, no
``..``); link members are rejected, since an image set has no use for them.

Decoding uses PIL (RGB) in a process pool: decoding 32x32 JPEGs is dominated by Python
overhead under the GIL, so threads do not help while processes do (the measurements are in
benchmarks/results/image_folder_decode.md).
"""

from __future__ import annotations

import io
import multiprocessing
import os
import tarfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from keepmix.data.archives import check_member, safe_extract
from keepmix.data.cache import cache_file, default_cache_dir, load_cache, save_cache
from keepmix.data.split import DataError, Split

__all__ = ["IMAGE_EXTENSIONS", "load_image_folder", "ImageFolderDataset", "decode_image", "is_archive"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".gif", ".webp", ".tif", ".tiff"})
_SPLIT_DIRS = ("train", "test", "val")
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")
_CHUNK = 1024  # images per task sent to a decoding process


def is_archive(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a tar archive (by its suffix)."""
    return str(path).lower().endswith(_ARCHIVE_SUFFIXES)


def _is_image_name(rel: str) -> bool:
    base = rel.rsplit("/", 1)[-1]
    return not base.startswith(".") and os.path.splitext(base)[1].lower() in IMAGE_EXTENSIONS


def _parse_size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or not all(isinstance(v, int) and v > 0 for v in hw):
        raise ValueError(f"size must be a positive int or a pair (H, W) of positive ints, got {size!r}")
    return hw


def decode_image(data: bytes | str | os.PathLike, name: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode one image to a uint8 (H, W, 3) RGB array, resized (bilinear) to ``size`` if given.

    Any failure raises :class:`DataError` naming ``name`` (the file or archive member).
    """
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            im.load()  # force the full decode here, so truncated files fail here
            out: Image.Image = im
            if out.mode != "RGB":
                out = out.convert("RGB")
            if size is not None and out.size != (size[1], size[0]):
                out = out.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(out, dtype=np.uint8)
    except Exception as e:
        raise DataError(f"cannot decode image {name}: {type(e).__name__}: {e}") from None


def _decode_chunk(names: list[str], blobs: list[bytes | str], size: tuple[int, int] | None) -> tuple[np.ndarray, bytes]:
    """(n, 2) image sizes and their pixels concatenated; sizes are checked by the caller."""
    shapes = np.empty((len(names), 2), dtype=np.int64)
    parts = []
    for i, (name, blob) in enumerate(zip(names, blobs, strict=True)):
        arr = decode_image(blob, name, size)
        shapes[i] = arr.shape[:2]
        parts.append(arr.tobytes())
    return shapes, b"".join(parts)


# ----------------------------------------------------------------------------- discovery


def _scan_directory(root: Path) -> list[str]:
    rels = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            rel = os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/")
            if _is_image_name(rel):
                rels.append(rel)
    return rels


def _strip_prefix(rels: list[str]) -> str:
    """One wrapping folder common to every path (e.g. ``cifar10/train/...``), or ''."""
    firsts = {r.split("/", 1)[0] for r in rels}
    if len(firsts) == 1 and all(r.count("/") >= 2 for r in rels):
        (first,) = firsts
        if first not in _SPLIT_DIRS:
            return first + "/"
    return ""


def _layout(rels: list[str], source: str) -> tuple[list[str], dict[str, list[tuple[str, str]]], bool]:
    """Classes; per split, (relative path, class name) of every image; whether the tree has splits.

    A tree without train/test folders comes back as the single split ``"train"``.
    """
    if not rels:
        raise DataError(f"{source} holds no images (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    prefix = _strip_prefix(rels)
    parts = [r[len(prefix) :].split("/") for r in rels]
    is_split = all(p[0] in _SPLIT_DIRS for p in parts)
    splits: dict[str, list[tuple[str, str]]] = {}
    for rel, p in zip(rels, parts, strict=True):
        depth = 3 if is_split else 2
        if len(p) < depth:
            where = "split/<class>/<image>" if is_split else "<class>/<image>"
            raise DataError(f"{source}: image {rel} is not inside a class folder (expected {where})")
        split = p[0] if is_split else "train"
        cls = p[1] if is_split else p[0]
        splits.setdefault(split, []).append((rel, cls))
    if is_split:
        if "train" not in splits:
            raise DataError(f"{source} has {'/'.join(sorted(splits))} folders but no train/ folder")
        if "test" in splits:
            splits.pop("val", None)
        elif "val" in splits:
            splits["test"] = splits.pop("val")
    classes = sorted({c for items in splits.values() for _, c in items})
    return classes, splits, is_split


def _list_archive(path: Path) -> Iterator[tuple[str, bytes]]:
    """(normalised name, bytes) of each image member, in archive order."""
    try:
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                rel = check_member(m, path)
                if m.issym() or m.islnk():
                    raise DataError(f"{path}: member {m.name!r} is a link; image archives must hold plain files")
                if m.isfile() and _is_image_name(rel):
                    f = tf.extractfile(m)
                    assert f is not None  # a regular file always has data
                    yield rel, f.read()
            # tarfile ends the member list at the first unreadable header without an error,
            # which would silently drop the rest of a damaged archive. A sound archive has
            # only zero padding after its end marker; reading that to the end also makes
            # gzip check its CRC and length.
            stream = tf.fileobj
            while block := stream.read(1 << 20):
                if block.count(0) != len(block):
                    # TarFile.members: the members read so far (getmembers() would read on).
                    last = tf.members[-1].name if tf.members else "(none)"  # type: ignore[attr-defined]
                    raise DataError(f"archive {path} is damaged: unreadable data after member {last}")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataError(f"cannot read archive {path}: {e}") from e


# ----------------------------------------------------------------------------- decoding


def _make_pool(workers: int) -> Executor | None:
    if workers <= 1:
        return None
    # fork: the workers need only PIL and numpy and must not re-import the caller's script.
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx)


def _decode_all(
    items: Iterator[tuple[str, bytes | str]], size: tuple[int, int] | None, workers: int, source: str
) -> tuple[list[str], np.ndarray]:
    """Decode every (name, bytes-or-path) item; returns names and (N, H, W, 3) pixels in input order."""
    pool = _make_pool(workers)
    pending: list[Future | tuple[np.ndarray, bytes]] = []
    names: list[str] = []
    batch_names: list[str] = []
    batch_blobs: list[bytes | str] = []

    def flush() -> None:
        if pool is None:
            pending.append(_decode_chunk(batch_names.copy(), batch_blobs.copy(), size))
        else:
            pending.append(pool.submit(_decode_chunk, batch_names.copy(), batch_blobs.copy(), size))
        batch_names.clear()
        batch_blobs.clear()

    try:
        for name, blob in items:  # reading the archive overlaps with decoding in the pool
            names.append(name)
            batch_names.append(name)
            batch_blobs.append(blob)
            if len(batch_names) == _CHUNK:
                flush()
        if batch_names:
            flush()
        results = [p.result() if isinstance(p, Future) else p for p in pending]
        pending.clear()  # futures keep their results alive
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    if not names:
        raise DataError(f"{source} holds no images")
    shapes = np.concatenate([s for s, _ in results])
    expected = shapes[0]
    bad = np.nonzero((shapes != expected).any(axis=1))[0]
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"image {names[i]} is {shapes[i][0]}x{shapes[i][1]} (HxW) but {names[0]} is {expected[0]}x{expected[1]}; "
            f"every image of the set must have one size: resize them first (from Python, "
            f"keepmix.data.load_image_folder(path, size=(H, W)) resizes while decoding)"
        )
    h, w = int(expected[0]), int(expected[1])
    pixels = np.empty((len(names), h, w, 3), dtype=np.uint8)
    start = 0
    for i in range(len(results)):  # copy chunk by chunk, releasing each: one full copy at a time
        n = results[i][0].shape[0]
        pixels[start : start + n] = np.frombuffer(results[i][1], dtype=np.uint8).reshape(n, h, w, 3)
        results[i] = None
        start += n
    return names, pixels


def _gather_nchw(pixels: Tensor, rows: Tensor, chunk: int = 8192) -> Tensor:
    """``pixels[rows]`` (N, H, W, 3) as a contiguous (n, 3, H, W) tensor, in bounded chunks."""
    _, h, w, c = pixels.shape
    out = torch.empty((rows.numel(), c, h, w), dtype=torch.uint8)
    nhwc = out.permute(0, 2, 3, 1)  # a view: writing it fills ``out`` in NCHW order
    for i in range(0, rows.numel(), chunk):
        nhwc[i : i + chunk] = pixels[rows[i : i + chunk]]
    return out


def _decode_source(path: Path, size: tuple[int, int] | None, workers: int) -> tuple[list[str], dict[str, tuple[Tensor, Tensor]]]:
    source = str(path)
    if path.is_dir():
        rels = _scan_directory(path)
        classes, layout, _ = _layout(rels, source)
        items: Iterator[tuple[str, bytes | str]] = ((str(path / r), str(path / r)) for r in sorted(rels))
        names, pixels = _decode_all(items, size, workers, source)
        names = [os.path.relpath(n, path).replace(os.sep, "/") for n in names]
    else:
        names, pixels = _decode_all(((f"{path}:{rel}", blob) for rel, blob in _list_archive(path)), size, workers, source)
        names = [n[len(source) + 1 :] for n in names]
        classes, layout, _ = _layout(names, source)
    index = {n: i for i, n in enumerate(names)}
    class_id = {c: i for i, c in enumerate(classes)}
    out: dict[str, tuple[Tensor, Tensor]] = {}
    for split, entries in layout.items():
        entries = sorted(entries)  # archive order is arbitrary; sorted names are reproducible
        rows = torch.tensor([index[r] for r, _ in entries], dtype=torch.int64)
        images = _gather_nchw(torch.from_numpy(pixels), rows)
        labels = torch.tensor([class_id[c] for _, c in entries], dtype=torch.int64)
        out[split] = (images, labels)
    return classes, out


def load_image_folder(
    path: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    size: int | Sequence[int] | None = None,
    *,
    cache: bool = True,
    workers: int | None = None,
) -> tuple[Split, Split | None]:
    """Decode an ImageFolder tree or a tar archive of one into uint8 tensors: ``(train, test)``.

    Args:
        path: a folder ``root/<class>/*`` or ``root/{train,test}/<class>/*``, or a
            ``.tar.gz``/``.tgz``/``.tar`` of one. ``test`` is None for a tree without splits.
        cache_dir: where the decoded tensors are cached; None: :func:`default_cache_dir`
            (``$KEEPMIX_CACHE_DIR`` or ``~/.cache/keepmix``).
        size: resize every image to this (H, W) (an int: square) with PIL bilinear; None:
            every image must already have one size, else a :class:`DataError` names the file.
        cache: read and write the cache; False decodes every time and writes nothing.
        workers: decoding processes; None: ``min(4, os.cpu_count())``; 0 or 1: in this process.

    Raises:
        DataError: a missing path, no images, a corrupt image or one of the wrong size
            (naming the file), an image outside a class folder.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"data path {path} does not exist")
    if not (path.is_dir() or (path.is_file() and is_archive(path))):
        raise DataError(f"data path {path} must be a folder or a tar archive (.tar.gz, .tgz, .tar)")
    hw = _parse_size(size)
    if workers is None:
        workers = min(4, os.cpu_count() or 1)

    cached = None
    if cache:
        cfile = cache_file(cache_dir if cache_dir is not None else default_cache_dir(), path, f"size={hw}")
        cached = load_cache(cfile)
    if cached is not None:
        classes, splits = cached["classes"], {k: (v["images"], v["labels"]) for k, v in cached["splits"].items()}
    else:
        classes, splits = _decode_source(path, hw, workers)
        if cache:
            save_cache(
                cfile,
                {
                    "source": str(path.resolve()),
                    "classes": classes,
                    "splits": {k: {"images": im, "labels": lab} for k, (im, lab) in splits.items()},
                },
            )
    made = {k: Split(images=im, labels=lab, classes=list(classes)) for k, (im, lab) in splits.items()}
    return made["train"], made.get("test")


class ImageFolderDataset(Dataset):
    """A lazily decoded ImageFolder tree, for sets too large to hold in memory.

    Items are ``(image, label)`` with ``image`` a uint8 (3, H, W) tensor (after ``transform``,
    if given). Only file paths are held, so it pickles cheaply into DataLoader workers.
    Without ``size`` every image must have the size of the first one; a different one raises
    a :class:`DataError` naming the file when it is loaded.

    Args:
        root: ``root/<class>/*`` or ``root/{train,test}/<class>/*`` (then pick ``split``).
        split: ``"train"`` or ``"test"`` for a split tree; must be None for a plain one.
        size: resize every image to (H, W) with PIL bilinear.
        transform: applied to the uint8 (3, H, W) tensor.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = None,
        size: int | Sequence[int] | None = None,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataError(f"ImageFolderDataset root {self.root} is not an existing folder (extract archives with from_archive)")
        self.classes, layout, has_splits = _layout(_scan_directory(self.root), str(self.root))
        if split is None:
            if has_splits:
                raise DataError(f"{self.root} has the splits {sorted(layout)}: pass split=")
            split = "train"
        elif not has_splits:
            raise DataError(f"{self.root} has no train/test folders; pass split=None")
        if split not in layout:
            raise DataError(f"{self.root} has no {split!r} split (it has {sorted(layout)})")
        class_id = {c: i for i, c in enumerate(self.classes)}
        entries = sorted(layout[split])
        self.samples = [(str(self.root / r), class_id[c]) for r, c in entries]
        self.size = _parse_size(size)
        self.transform = transform
        if self.size is None:
            first = self.samples[0][0]
            self._expected = decode_image(first, first).shape[:2]
        else:
            self._expected = self.size

    @classmethod
    def from_archive(cls, archive: str | os.PathLike, extract_dir: str | os.PathLike, **kwargs) -> ImageFolderDataset:
        """Safely extract ``archive`` into ``extract_dir`` once (a marker file records it), then open it."""
        extract_dir = Path(extract_dir).expanduser()
        marker = extract_dir / ".keepmix-extracted"
        if not marker.is_file():
            safe_extract(archive, extract_dir)
            marker.write_text(str(Path(archive).resolve()))
        return cls(extract_dir, **kwargs)

    @property
    def labels(self) -> Tensor:
        """int64 (N,) labels, without decoding any image (e.g. for a balanced subset)."""
        return torch.tensor([y for _, y in self.samples], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.samples[index]
        arr = decode_image(path, path, self.size)
        if arr.shape[:2] != tuple(self._expected):
            raise DataError(
                f"image {path} is {arr.shape[0]}x{arr.shape[1]} (HxW) but this set's images are "
                f"{self._expected[0]}x{self._expected[1]}; pass size=(H, W) to resize"
            )
        img = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
        if self.transform is not None:
            img = self.transform(img)
        return img, label
