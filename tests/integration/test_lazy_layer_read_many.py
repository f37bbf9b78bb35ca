"""LazyLayer.read_many against the real registry: the small files of one image read
come in one range request, where reading them one by one costs a request each."""

from __future__ import annotations

import io
import random
from pathlib import Path

import trio

from lazybuild.cache.chunkcache import ChunkCache
from lazybuild.estargz import WriterOptions, write_estargz
from lazybuild.lazyfs.layer import LazyLayer
from lazybuild.oci import mediatypes
from lazybuild.oci.descriptor import Descriptor
from lazybuild.registry.blob import RemoteBlob
from lazybuild.registry.client import RegistryClient
from lazybuild.registry.reference import Reference
from tests.support.registry import Registry
from tests.unit.estargz.esgz_helpers import Member, make_tar

FILES = 24


def build() -> tuple[bytes, Descriptor, dict[str, bytes]]:
    rng = random.Random(17)
    files = {f"site-packages/pkg/m{n:02}.py": rng.randbytes(1500) for n in range(FILES)}
    files["usr/bin/tool"] = rng.randbytes(300_000)  # elsewhere in the layer
    out = io.BytesIO()
    written = write_estargz(
        io.BytesIO(make_tar([Member(name, data=data) for name, data in files.items()])),
        out,
        WriterOptions(),
    )
    descriptor = Descriptor(
        mediatypes.OCI_LAYER_GZIP,
        written.digest,
        written.size,
        annotations={mediatypes.TOC_DIGEST_ANNOTATION: written.toc_digest},
    )
    return out.getvalue(), descriptor, files


def test_small_files_of_one_image_read_come_in_one_request(
    registry: Registry, tmp_path: Path
) -> None:
    blob, descriptor, files = build()
    names = [name for name in files if name.startswith("site-packages/")]
    ref = Reference.parse(f"{registry.host}/it/read-many:v1")

    async def main() -> None:
        async with RegistryClient(insecure_registries=[registry.host]) as client:
            await client.push_blob(ref, descriptor, blob)

            async def opened(name: str) -> tuple[LazyLayer, RemoteBlob]:
                remote = client.open_blob(ref, descriptor)
                layer = await LazyLayer.open(
                    remote,
                    descriptor,
                    ChunkCache(tmp_path / name / "cache"),
                    state_dir=tmp_path / name / "state",
                )
                return layer, remote

            layer, remote = await opened("batched")
            async with layer:
                nodes = [layer.index.lookup(name) for name in names]
                ranges = [(node, 0, node.size) for node in nodes if node is not None]
                before, http_before = layer.stats.requests, remote.stats.requests
                got = await layer.read_many(ranges)
                assert got == [files[name] for name in names]
                assert layer.stats.requests - before == 1
                assert remote.stats.requests - http_before == 1  # one HTTP range request

            # The same files read as the image read did before: one read per file.
            layer, _ = await opened("one-by-one")
            async with layer:
                before = layer.stats.requests
                async with trio.open_nursery() as nursery:
                    for name in names:
                        node = layer.index.lookup(name)
                        assert node is not None
                        nursery.start_soon(layer.read, node, 0, node.size)
                assert layer.stats.requests - before > 1

    trio.run(main)
