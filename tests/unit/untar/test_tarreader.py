"""The tar reader: what GNU tar writes reads as tarfile reads it, and hostile headers
end in a FormatError at once instead of a hang, a huge buffer or a traceback."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from lazybuild.errors import FormatError
from lazybuild.untar import tarreader as tr
from lazybuild.untar.tarreader import TarReader
from tests.unit.untar.hostile import member, tar_bytes

_KIND = {
    tarfile.REGTYPE: tr.FILE,
    tarfile.AREGTYPE: tr.FILE,
    tarfile.DIRTYPE: tr.DIRECTORY,
    tarfile.SYMTYPE: tr.SYMLINK,
    tarfile.LNKTYPE: tr.HARDLINK,
    tarfile.FIFOTYPE: tr.FIFO,
}


def read_all(data: bytes) -> list[tuple[tr.TarEntry, bytes]]:
    reader = TarReader(io.BytesIO(data))
    found = []
    for entry in reader:
        content = b"".join(piece for _, piece in reader.data())
        found.append((entry, content))
    return found


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    deep = root / ("long-directory-name-" * 6) / ("another-long-component-" * 5)
    deep.mkdir(parents=True)
    (deep / "file-with-a-name-well-past-one-hundred-bytes.txt").write_bytes(b"deep" * 1000)
    (root / "plain").write_bytes(b"plain\n")
    os.symlink("t" * 150, root / "long-target")
    os.link(root / "plain", root / "hard")
    os.mkfifo(root / "fifo")
    (root / "ünïcode").write_bytes(b"u")
    os.utime(root / "plain", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    return root


@pytest.mark.parametrize("fmt", ["gnu", "oldgnu", "posix", "ustar", "v7"])
def test_reads_what_gnu_tar_writes_as_tarfile_does(fmt: str, tree: Path, tmp_path: Path) -> None:
    archive = tmp_path / "t.tar"
    names = sorted(p.name for p in tree.iterdir())
    if fmt in ("ustar", "v7"):
        names = [n for n in names if n not in ("long-target", "ünïcode") and "long" not in n]
    if fmt == "v7":
        names.remove("fifo")  # V7 has no fifos
    subprocess.run(["tar", f"--format={fmt}", "-cf", archive, "-C", tree, *names], check=True)
    data = archive.read_bytes()
    ours = read_all(data)
    with tarfile.open(fileobj=io.BytesIO(data), errors="surrogateescape") as theirs_tar:
        theirs = [
            (m, theirs_tar.extractfile(m).read() if m.isreg() else b"")  # type: ignore[union-attr]
            for m in theirs_tar.getmembers()
        ]
    assert len(ours) == len(theirs)
    for (entry, content), (info, expected) in zip(ours, theirs, strict=True):
        assert entry.name == info.name or entry.name.rstrip("/") == info.name
        assert entry.kind == _KIND[info.type]
        assert (entry.mode, entry.uid, entry.gid) == (info.mode, info.uid, info.gid)
        assert entry.mtime_ns // 1_000_000_000 == int(info.mtime)
        assert entry.linkname == info.linkname
        assert content == expected


def test_pax_times_keep_nanoseconds() -> None:
    info = member("f", pax_headers={"mtime": "1600000000.123456789"})
    [(entry, _)] = read_all(tar_bytes((info, b"x")))
    assert entry.mtime_ns == 1_600_000_000_123_456_789


def _header(name: str, typeflag: bytes, size: int, *, base256_size: bytes | None = None) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = typeflag
    info.size = 0
    block = bytearray(info.tobuf(tarfile.USTAR_FORMAT))
    if base256_size is not None:
        block[124:136] = base256_size
    else:
        block[124:136] = f"{size:011o}\0".encode()
    block[148:156] = b" " * 8
    block[148:156] = f"{sum(block):06o}\0 ".encode()
    return bytes(block)


def _pax(records: bytes) -> bytes:
    pad = -len(records) % 512
    return _header("pax", b"x", len(records)) + records + bytes(pad)


HOSTILE = {
    "pax-record-of-length-zero": _pax(b"0 path=x\n") + _header("f", b"0", 0),
    "pax-record-longer-than-its-header": _pax(b"99 path=x\n") + _header("f", b"0", 0),
    "pax-size-not-a-number": _pax(b"13 size=abc\n") + _header("f", b"0", 0),
    "pax-size-negative": _pax(b"12 size=-5\n") + _header("f", b"0", 0),
    "pax-path-with-nul": _pax(b"13 path=a\0b\n") + _header("f", b"0", 0),
    "pax-header-of-2-gib": _header("pax", b"x", 2 << 30),
    "gnu-long-name-of-1-tib": _header("././@LongLink", b"L", 1 << 40),
    "negative-base-256-size": _header("f", b"0", 0, base256_size=b"\xff" * 12),
    "unknown-type": _header("f", b"V", 0),
    "cut-inside-data": _header("f", b"0", 4096) + b"x" * 100,
    "cut-inside-header": _header("f", b"0", 0)[:300],
    "bad-checksum": b"x" * 512,
    "sparse-map-never-ending": _pax(
        b"22 GNU.sparse.major=1\n22 GNU.sparse.minor=0\n30 GNU.sparse.realsize=1024\n"
    )
    + _header("f", b"0", 1024)
    + b"9" * 1024,
    "sparse-map-of-huge-count": _pax(
        b"22 GNU.sparse.major=1\n22 GNU.sparse.minor=0\n30 GNU.sparse.realsize=1024\n"
    )
    + _header("f", b"0", 1024)
    + b"99999999999999\n".ljust(1024, b"\0"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_headers_are_format_errors_at_once(name: str) -> None:
    started = time.monotonic()
    with pytest.raises(FormatError):
        read_all(HOSTILE[name])
    assert time.monotonic() - started < 1.0


def test_directories_have_no_data_whatever_their_size_says() -> None:
    # Go's reader and tarfile both read the next header right after a directory's.
    data = _header("d/", b"5", 1024) + _header("f", b"0", 0) + bytes(1024)
    assert [e.name for e, _ in read_all(data)] == ["d/", "f"]
