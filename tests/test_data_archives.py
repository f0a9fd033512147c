"""Safe extraction of tar archives and checksummed downloads (keepmix.data.archives)."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from keepmix.data import ChecksumError, DataError, UnsafeArchiveError, download_url, file_md5, safe_extract
from keepmix.data.archives import check_member


def _add_file(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _add_link(tf: tarfile.TarFile, name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    tf.addfile(info)


def _archive(path: Path, build) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        build(tf)
    return path


def test_safe_extract_extracts_a_normal_archive_with_an_inner_link(tmp_path):
    def build(tf):
        _add_file(tf, "data/a.txt", b"alpha")
        _add_file(tf, "./data/sub/b.txt", b"beta")
        _add_link(tf, "data/sub/link.txt", "../a.txt")  # stays inside

    arc = _archive(tmp_path / "ok.tar.gz", build)
    out = safe_extract(arc, tmp_path / "out")
    assert (out / "data" / "a.txt").read_bytes() == b"alpha"
    assert (out / "data" / "sub" / "b.txt").read_bytes() == b"beta"
    assert (out / "data" / "sub" / "link.txt").read_bytes() == b"alpha"


@pytest.mark.parametrize(
    "build, fragment",
    [
        (lambda tf: _add_file(tf, "/tmp/evil.txt", b"x"), "absolute"),
        (lambda tf: _add_file(tf, "data/../../evil.txt", b"x"), "'..'"),
        (lambda tf: _add_file(tf, "..", b"x"), "'..'"),
        (lambda tf: _add_link(tf, "data/link", "../../outside"), "outside"),
        (lambda tf: _add_link(tf, "data/link", "/etc/passwd"), "absolute"),
        (lambda tf: _add_link(tf, "data/hard", "../outside", tarfile.LNKTYPE), "outside"),
        (lambda tf: _add_link(tf, "data/dev", "", tarfile.CHRTYPE), "device"),
    ],
    ids=["absolute", "dotdot", "bare-dotdot", "symlink-out", "symlink-abs", "hardlink-out", "device"],
)
def test_safe_extract_rejects_malicious_members_before_writing_anything(tmp_path, build, fragment):
    def full(tf):
        _add_file(tf, "data/first.txt", b"written before the bad member in archive order")
        build(tf)

    arc = _archive(tmp_path / "evil.tar.gz", full)
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchiveError, match=fragment) as err:
        safe_extract(arc, dest)
    assert "evil.tar.gz" in str(err.value)
    assert not dest.exists()  # nothing was extracted, not even the harmless first member
    assert not (tmp_path / "evil.txt").exists()


def test_check_member_normalises_names():
    info = tarfile.TarInfo("./a//b/./c.jpg")
    assert check_member(info) == "a/b/c.jpg"


def test_safe_extract_errors_name_the_archive(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        safe_extract(tmp_path / "missing.tar.gz", tmp_path / "out")
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"this is not a tar archive")
    with pytest.raises(DataError, match="bad.tar.gz"):
        safe_extract(bad, tmp_path / "out")


def test_file_md5_matches_hashlib(tmp_path):
    data = bytes(range(256)) * 5000
    p = tmp_path / "blob"
    p.write_bytes(data)
    assert file_md5(p, chunk=4096) == hashlib.md5(data).hexdigest()


def test_download_url_file_scheme_with_checksum(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload" * 1000)
    md5 = hashlib.md5(src.read_bytes()).hexdigest()
    dest = download_url(src.as_uri(), tmp_path / "dl" / "out.bin", md5=md5.upper())
    assert dest.read_bytes() == src.read_bytes()


def test_download_url_checksum_mismatch_leaves_no_file(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload")
    dest = tmp_path / "dl" / "out.bin"
    with pytest.raises(ChecksumError, match="does not match"):
        download_url(src.as_uri(), dest, md5="0" * 32)
    assert list((tmp_path / "dl").iterdir()) == []  # neither the file nor a .part remnant


def test_download_url_unreachable_source(tmp_path):
    with pytest.raises(DataError, match="cannot download"):
        download_url((tmp_path / "nope.bin").as_uri(), tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()
