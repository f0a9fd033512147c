"""Safe tar extraction and checksummed downloads.

A tar member may name an absolute path, climb out with ``..``, or be a link whose target lies
outside the destination; extracting such a member writes anywhere the process can. Every
member is checked before anything is written, so a malicious archive extracts nothing.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from keepmix.data.split import DataError

__all__ = ["UnsafeArchiveError", "ChecksumError", "check_member", "safe_extract", "file_md5", "download_url"]


class UnsafeArchiveError(DataError):
    """An archive member would escape the extraction folder or is not a file/folder/link."""


class ChecksumError(DataError):
    """A downloaded or given file does not have the expected checksum."""


def _normalized_member_path(name: str, archive: str) -> str:
    """The member's path relative to the archive root, or raise if it could escape."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path")
    if "\\" in name:
        raise UnsafeArchiveError(f"{archive}: member {name!r} contains a backslash")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} contains '..'")
    return "/".join(parts)


def check_member(member: tarfile.TarInfo, archive: str | os.PathLike = "archive") -> str:
    """Validate one tar member and return its normalised relative path.

    Rejected: absolute names, ``..`` components, devices/FIFOs, and symbolic or hard links
    whose target resolves outside the archive root.
    """
    archive = str(archive)
    rel = _normalized_member_path(member.name, archive)
    if member.isdev() or member.isfifo() or not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise UnsafeArchiveError(f"{archive}: member {member.name!r} is a device or special file")
    if member.issym() or member.islnk():
        target = member.linkname
        if target.startswith("/") or "\\" in target:
            raise UnsafeArchiveError(f"{archive}: link {member.name!r} points to an absolute path {target!r}")
        # A symlink's target is relative to the link's folder; a hard link's to the archive root.
        base = posixpath.dirname(rel) if member.issym() else ""
        resolved = posixpath.normpath(posixpath.join(base, target))
        if resolved == ".." or resolved.startswith("../"):
            raise UnsafeArchiveError(f"{archive}: link {member.name!r} points outside the archive ({target!r})")
    return rel


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract a (possibly compressed) tar archive into ``dest`` after checking every member.

    Raises :class:`UnsafeArchiveError` naming the first offending member, before writing
    anything. Symlinks inside the archive are allowed only if they stay inside ``dest``
    (and are also guarded against chains by tarfile's ``data`` filter where available).
    """
    archive = Path(archive)
    dest = Path(dest)
    if not archive.is_file():
        raise DataError(f"archive {archive} does not exist")
    try:
        with tarfile.open(archive, "r:*") as tf:
            members = tf.getmembers()
            for m in members:
                check_member(m, archive)
            dest.mkdir(parents=True, exist_ok=True)
            if hasattr(tarfile, "data_filter"):
                tf.extractall(dest, members=members, filter="data")
            else:  # Python < 3.11.4: members are already checked above
                tf.extractall(dest, members=members)
    except tarfile.TarError as e:
        raise DataError(f"cannot read archive {archive}: {e}") from e
    return dest


def file_md5(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex md5 of a file, read in chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download_url(url: str, dest: str | os.PathLike, md5: str | None = None, timeout: float = 60.0) -> Path:
    """Download ``url`` to the file ``dest``, checking its md5 when given.

    The data go to a temporary file next to ``dest`` that is renamed only after the checksum
    matches, so an interrupted or corrupt download never leaves a file that looks complete.
    ``file://`` URLs work too (tests use them).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.md5()
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    while block := resp.read(1 << 20):
                        h.update(block)
                        out.write(block)
            except OSError as e:  # URLError is an OSError
                raise DataError(f"cannot download {url}: {e}") from e
        if md5 is not None and h.hexdigest() != md5.lower():
            raise ChecksumError(f"{url}: md5 {h.hexdigest()} does not match the expected {md5}")
        shutil.move(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest
