"""A decoded-tensor cache: one file per source, keyed by what the source looks like on disk.

Decoding 60,000 JPEGs takes seconds; loading their uint8 tensors from one file memory-mapped
takes well under one. The key is the source's absolute path plus a fingerprint (size and
mtime of an archive; relative path, size and mtime of every file of a folder) and the
decoding options, so a changed source gets a new entry and the stale one is removed.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = ["default_cache_dir", "source_fingerprint", "cache_file", "load_cache", "save_cache"]

#: Bump when the layout of a cache file changes, so old files are not misread.
CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """``$KEEPMIX_CACHE_DIR`` if set, else ``~/.cache/keepmix``."""
    env = os.environ.get("KEEPMIX_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "keepmix"


def source_fingerprint(path: str | os.PathLike) -> str:
    """A string that changes whenever the file or folder tree at ``path`` changes."""
    path = Path(path)
    st = path.stat()
    if path.is_file():
        return f"file:{st.st_size}:{st.st_mtime_ns}"
    h = hashlib.sha1()
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            fst = os.stat(full)
            h.update(f"{os.path.relpath(full, path)}\0{fst.st_size}\0{fst.st_mtime_ns}\n".encode())
    return f"tree:{h.hexdigest()}"


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name or "data"


def cache_file(cache_dir: str | os.PathLike, source: str | os.PathLike, options: str = "") -> Path:
    """The cache file for ``source`` decoded with ``options`` in its current state."""
    source = Path(source).resolve()
    where = hashlib.sha1(str(source).encode()).hexdigest()[:10]
    what = hashlib.sha1(f"{CACHE_FORMAT}|{source_fingerprint(source)}|{options}".encode()).hexdigest()[:12]
    return Path(cache_dir).expanduser() / f"{_stem(source)}-{where}-{what}.pt"


def load_cache(path: Path) -> dict[str, Any] | None:
    """The cached object, memory-mapped, or None if absent or unreadable."""
    if not path.is_file():
        return None
    try:
        obj = torch.load(path, mmap=True, weights_only=True)
    except Exception as e:  # a damaged cache is rebuilt, never fatal
        warnings.warn(f"ignoring unreadable cache file {path}: {e}", stacklevel=2)
        return None
    if not isinstance(obj, dict) or obj.get("format") != CACHE_FORMAT:
        return None
    return obj


def save_cache(path: Path, obj: dict[str, Any]) -> None:
    """Write atomically (temp file + rename) and remove stale entries of the same source."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache may be shared by users of a machine
    try:
        torch.save({**obj, "format": CACHE_FORMAT}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    prefix = path.name.rsplit("-", 1)[0] + "-"
    for old in path.parent.glob(prefix + "*.pt"):
        if old != path:
            try:
                old.unlink()
            except OSError:
                pass  # another process may have removed it already
