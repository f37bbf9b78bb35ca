"""An archive's compression recognised by its magic bytes, and a stream that does not
decompress reported as a damaged archive by the one extractor."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import random
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from lazybuild.errors import FormatError
from lazybuild.untar.compression import decompressed, starts_with_tar_header
from lazybuild.untar.extract import DamagedArchiveError, archive_policy, extract


def _tar(content: bytes = b"world") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("hello")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    return out.getvalue()


COMPRESSIONS: list[Callable[[bytes], bytes]] = [
    lambda data: data,
    lambda data: gzip.compress(data, mtime=0),
    bz2.compress,
    lambda data: lzma.compress(data, format=lzma.FORMAT_XZ),
    lambda data: zstandard.ZstdCompressor().compress(data),
]
IDS = ["plain", "gzip", "bzip2", "xz", "zstd"]


@pytest.mark.parametrize("compress", COMPRESSIONS, ids=IDS)
def test_each_compression_is_recognised_by_its_magic(
    compress: Callable[[bytes], bytes], tmp_path: Path
) -> None:
    with decompressed(io.BytesIO(compress(_tar()))) as stream:
        assert starts_with_tar_header(stream)
    with decompressed(io.BytesIO(compress(_tar()))) as stream:
        extract(stream, tmp_path, archive_policy(None), "test")
    assert (tmp_path / "hello").read_bytes() == b"world"


@pytest.mark.parametrize("compress", COMPRESSIONS[1:], ids=IDS[1:])
def test_a_compressed_text_is_no_tar(compress: Callable[[bytes], bytes]) -> None:
    with decompressed(io.BytesIO(compress(b"FROM scratch\n" * 100))) as stream:
        assert not starts_with_tar_header(stream)


# (zstandard's reader ends a truncated frame quietly: the tar is then what came.)
@pytest.mark.parametrize("compress", COMPRESSIONS[1:4], ids=IDS[1:4])
def test_a_truncated_stream_is_a_damaged_archive(
    compress: Callable[[bytes], bytes], tmp_path: Path
) -> None:
    data = compress(_tar(random.randbytes(1 << 16)))
    with (
        decompressed(io.BytesIO(data[: len(data) // 2])) as stream,
        pytest.raises(DamagedArchiveError) as raised,
    ):
        extract(stream, tmp_path, archive_policy(None), "the archive")
    assert isinstance(raised.value, FormatError)
    assert str(raised.value) == f"the archive: {raised.value.reason}"
