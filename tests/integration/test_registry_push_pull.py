"""RegistryClient against a real Distribution 2.8 (docker-registry) on loopback."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import trio

from lazybuild.oci import mediatypes
from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.manifest import Index, Manifest
from lazybuild.oci.platform import Platform
from lazybuild.registry.client import RegistryClient
from lazybuild.registry.reference import Reference
from tests.support.registry import Registry

pytestmark = pytest.mark.root

CHUNKED = {"monolithic_upload_limit": 64 * 1024, "upload_chunk_size": 50_000}


def descriptor(data: bytes, media_type: str = mediatypes.OCI_LAYER_GZIP) -> Descriptor:
    return Descriptor(media_type, "sha256:" + hashlib.sha256(data).hexdigest(), len(data))


def run(body: Callable[[RegistryClient], Coroutine[Any, Any, Any]], **options: Any) -> Any:
    async def main() -> Any:
        async with RegistryClient(**options) as client:
            return await body(client)

    return trio.run(main)


def image(client: RegistryClient, ref: Reference, arch: str) -> Coroutine[Any, Any, bytes]:
    """Push a tiny image for ``arch`` (config + one layer); returns the manifest bytes."""

    async def push() -> bytes:
        layer = os.urandom(1000)
        config = json.dumps(
            {"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
        ).encode()
        config_descriptor = descriptor(config, mediatypes.OCI_CONFIG)
        await client.push_blob(ref, config_descriptor, config)
        await client.push_blob(ref, descriptor(layer), layer)
        manifest = Manifest(mediatypes.OCI_MANIFEST, config_descriptor, (descriptor(layer),))
        return manifest.encode()

    return push()


def test_monolithic_and_chunked_push_then_pull(registry: Registry, tmp_path: Path) -> None:
    ref = Reference.parse(f"{registry.host}/it/pushpull:v1")
    small = os.urandom(10_000)
    large = os.urandom(180_000)  # four PATCH chunks with the options above
    large_file = tmp_path / "large"
    large_file.write_bytes(large)

    async def body(client: RegistryClient) -> None:
        assert await client.push_blob(ref, descriptor(small), small) == "uploaded"
        assert await client.push_blob(ref, descriptor(large), large_file) == "uploaded"
        assert await client.push_blob(ref, descriptor(large), large_file) == "exists"
        assert await client.has_blob(ref, descriptor(large).digest)
        assert await client.get_blob(ref, descriptor(small)) == small
        pieces = [p async for p in client.stream_blob(ref, descriptor(large))]
        assert b"".join(pieces) == large

    run(body, **CHUNKED)


def test_manifest_push_pull_and_resolve(registry: Registry) -> None:
    ref = Reference.parse(f"{registry.host}/it/manifest:v1")

    async def body(client: RegistryClient) -> None:
        data = await image(client, ref, "amd64")
        digest = await client.push_manifest(ref, data, mediatypes.OCI_MANIFEST)
        fetched = await client.get_manifest(ref)
        assert (fetched.digest, fetched.data, fetched.media_type) == (
            digest,
            data,
            mediatypes.OCI_MANIFEST,
        )
        by_digest = await client.get_manifest(
            Reference.parse(f"{registry.host}/it/manifest@{digest}")
        )
        assert by_digest.data == data
        resolved = await client.resolve_image(ref, Platform("linux", "amd64"))
        assert resolved.index is None and resolved.manifest_digest == digest
        assert resolved.config["architecture"] == "amd64"

    run(body)


def test_cross_repository_mount(registry: Registry) -> None:
    source = Reference.parse(f"{registry.host}/it/mount-source:v1")
    target = Reference.parse(f"{registry.host}/it/mount-target:v1")
    data = os.urandom(5000)

    async def body(client: RegistryClient) -> None:
        assert await client.push_blob(source, descriptor(data), data) == "uploaded"
        result = await client.push_blob(target, descriptor(data), data, mount_from=[source])
        assert result == "mounted"
        assert await client.get_blob(target, descriptor(data)) == data

    run(body)


def test_single_and_multi_range_reads(registry: Registry) -> None:
    ref = Reference.parse(f"{registry.host}/it/ranges:v1")
    data = os.urandom(2_000_000)
    ranges = [(1_500_000, 4096), (0, 10), (700_000, 1), (1_999_990, 10), (5, 20)]

    async def body(client: RegistryClient) -> None:
        await client.push_blob(ref, descriptor(data), data)
        blob = client.open_blob(ref, descriptor(data))
        assert await blob.read_at(123_456, 1000) == data[123_456:124_456]
        assert blob.stats.requests == 1
        got = await blob.read_ranges(ranges)
        assert got == [data[offset : offset + length] for offset, length in ranges]
        # Distribution (Go's http.ServeContent) answers multipart/byteranges: one request.
        assert blob.stats.requests == 2
        assert blob.stats.bytes_received < 10_000

    run(body)


def test_index_push_and_platform_selection(registry: Registry) -> None:
    ref = Reference.parse(f"{registry.host}/it/multiarch:latest")

    async def body(client: RegistryClient) -> None:
        entries = []
        for arch in ("amd64", "arm64"):
            data = await image(client, ref, arch)
            digest = await client.push_manifest(
                ref.with_digest("sha256:" + hashlib.sha256(data).hexdigest()),
                data,
                mediatypes.OCI_MANIFEST,
            )
            entries.append(
                Descriptor(
                    mediatypes.OCI_MANIFEST, digest, len(data), platform=Platform("linux", arch)
                )
            )
        index = Index(mediatypes.OCI_INDEX, tuple(entries))
        index_digest = await client.push_manifest(ref, index.encode(), mediatypes.OCI_INDEX)
        fetched = await client.get_manifest(ref)
        assert fetched.digest == index_digest and isinstance(fetched.document, Index)
        resolved = await client.resolve_image(ref, Platform("linux", "arm64"))
        assert resolved.index is not None and resolved.index.digest == index_digest
        assert resolved.manifest_digest == entries[1].digest
        assert resolved.config["architecture"] == "arm64"

    run(body)
