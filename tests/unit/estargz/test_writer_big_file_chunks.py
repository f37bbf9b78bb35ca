"""Layers written for a workload cut files too big to prefetch whole into finer chunks."""

from __future__ import annotations

import io
import tarfile

from lazybuild.estargz.reader import parse_layer
from lazybuild.estargz.toc import PREFETCH_FILE_MAX_BYTES
from lazybuild.estargz.writer import WriterOptions, write_estargz


def _tar(files: dict[str, bytes]) -> io.BytesIO:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out.seek(0)
    return out


def _chunk_sizes(blob: bytes, name: str) -> list[int]:
    index = parse_layer(blob, 0, len(blob), None).index
    node = index.lookup(name)
    assert node is not None
    return [chunk.size for chunk in node.chunks]


def test_only_files_over_the_prefetch_limit_get_the_finer_chunks() -> None:
    big = bytes(range(256)) * ((PREFETCH_FILE_MAX_BYTES + 3000) // 256)
    small = b"s" * (5 << 20)
    files = {"big.bin": big, "small.bin": small}
    options = WriterOptions(chunk_size=4 << 20, big_file_chunk_size=1 << 20)
    out = io.BytesIO()
    write_estargz(_tar(files), out, options)
    sizes = _chunk_sizes(out.getvalue(), "big.bin")
    assert len(sizes) == len(big) // (1 << 20) + 1 and set(sizes[:-1]) == {1 << 20}
    assert _chunk_sizes(out.getvalue(), "small.bin") == [4 << 20, 1 << 20]
    # Without the option, the big file has the layer's chunk size like any other.
    plain = io.BytesIO()
    write_estargz(_tar(files), plain, WriterOptions(chunk_size=4 << 20))
    assert set(_chunk_sizes(plain.getvalue(), "big.bin")[:-1]) == {4 << 20}
