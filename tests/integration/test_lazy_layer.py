"""LazyLayer against the real registry, behind a counting proxy: bytes on the wire."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from lazybuild.cache.chunkcache import ChunkCache
from lazybuild.estargz import WriterOptions, write_estargz
from lazybuild.lazyfs.layer import LazyLayer
from lazybuild.oci import mediatypes
from lazybuild.oci.descriptor import Descriptor
from lazybuild.registry.client import RegistryClient
from lazybuild.registry.reference import Reference
from tests.support.registry import Registry
from tests.support.wanproxy import WanProxy

pytestmark = pytest.mark.root

TARGET = "app/config/target.bin"
TARGET_SIZE = 1 << 20
FILLER_FILES = 25
FILLER_SIZE = 4 << 20  # 25 x 4 MiB = 100 MiB of incompressible data
HEADER_ALLOWANCE = 16 << 10  # HTTP request/response headers of a handful of requests


def build_big_layer(target: bytes) -> tuple[bytes, Descriptor]:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for index in range(FILLER_FILES):
            if index == FILLER_FILES // 2:
                info = tarfile.TarInfo(TARGET)
                info.size = len(target)
                archive.addfile(info, io.BytesIO(target))
            info = tarfile.TarInfo(f"filler/{index:02d}.bin")
            info.size = FILLER_SIZE
            archive.addfile(info, io.BytesIO(os.urandom(FILLER_SIZE)))
    blob = io.BytesIO()
    raw.seek(0)
    # Level 0 (stored): random data does not compress, and the test stays fast.
    written = write_estargz(raw, blob, WriterOptions(compression_level=0))
    descriptor = Descriptor(
        mediatypes.OCI_LAYER_GZIP,
        written.digest,
        written.size,
        annotations={mediatypes.TOC_DIGEST_ANNOTATION: written.toc_digest},
    )
    return blob.getvalue(), descriptor


def test_reading_one_file_fetches_only_its_chunks(
    registry: Registry, wan_proxy: Callable[..., WanProxy], tmp_path: Path
) -> None:
    target = os.urandom(TARGET_SIZE)
    blob, descriptor = build_big_layer(target)
    assert descriptor.size > 100_000_000
    proxy = wan_proxy(registry.host, latency=0, bandwidth_bits=None)
    cache = ChunkCache(tmp_path / "cache")
    state = tmp_path / "state"

    async def push() -> None:
        ref = Reference.parse(f"{registry.host}/it/lazy-layer:v1")
        async with RegistryClient(insecure_registries=[registry.host]) as client:
            await client.push_blob(ref, descriptor, blob)

    async def open_and_read() -> tuple[LazyLayer, bytes]:
        ref = Reference.parse(f"{proxy.host}/it/lazy-layer:v1")
        async with RegistryClient(insecure_registries=[proxy.host]) as client:
            remote = client.open_blob(ref, descriptor)
            layer = await LazyLayer.open(remote, descriptor, cache, state_dir=state)
            node = layer.index.lookup(TARGET)
            assert node is not None
            pieces = [await layer.read(node, o, 128 << 10) for o in range(0, node.size, 128 << 10)]
            return layer, b"".join(pieces)

    trio.run(push)
    proxy.reset_counters()
    first, data = trio.run(open_and_read)
    assert data == target
    toc_read = 256 << 10  # the first tail read (footer + TOC)
    assert proxy.bytes_to_client < 2 * TARGET_SIZE + toc_read + HEADER_ALLOWANCE, (
        proxy.bytes_to_client
    )
    assert first.stats.requests == 2  # tail (footer + TOC), then the file's chunks

    proxy.reset_counters()
    second, data = trio.run(open_and_read)
    assert data == target
    assert second.stats.chunks_fetched == 0
    assert second.stats.requests == 0  # TOC and TOC offset kept: no request at all
    assert proxy.bytes_to_client < HEADER_ALLOWANCE, proxy.bytes_to_client
