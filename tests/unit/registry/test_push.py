from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from lazybuild.errors import DigestMismatchError
from lazybuild.oci import mediatypes
from lazybuild.registry.client import RegistryClient
from lazybuild.registry.reference import Reference

from .fakes import REGISTRY, FakeRegistry, descriptor_for, digest_of, run

APP = Reference.parse(f"{REGISTRY}/team/app:v1")
BASE = Reference.parse(f"{REGISTRY}/team/base:v1")


def push(fake: FakeRegistry, *args: Any, method: str = "push_blob", **options: Any) -> Any:
    async def main() -> Any:
        async with RegistryClient(transport=fake.transport(), **options) as client:
            return await getattr(client, method)(*args)

    return run(main)


def test_small_blob_is_uploaded_in_one_put() -> None:
    fake = FakeRegistry()
    data = b"small blob"
    assert push(fake, APP, descriptor_for(data), data) == "uploaded"
    assert fake.blobs[digest_of(data)] == data
    methods = [r.method for r in fake.registry_requests()]
    assert methods == ["HEAD", "POST", "PUT"]
    assert push(fake, APP, descriptor_for(data), data) == "exists"


def test_large_blob_is_uploaded_in_chunks_from_a_file(tmp_path: Path) -> None:
    fake = FakeRegistry()
    data = os.urandom(2500)
    source = tmp_path / "layer"
    source.write_bytes(data)
    options: dict[str, Any] = {"monolithic_upload_limit": 1000, "upload_chunk_size": 1000}
    assert push(fake, APP, descriptor_for(data), source, **options) == "uploaded"
    assert fake.blobs[digest_of(data)] == data
    patches = [r for r in fake.registry_requests() if r.method == "PATCH"]
    assert [r.headers["content-range"] for r in patches] == ["0-999", "1000-1999", "2000-2499"]
    # Each PATCH goes to the Location the previous answer gave.
    assert [r.url.params["_state"] for r in patches] == ["x", "y", "y"]
    (final,) = [r for r in fake.registry_requests() if r.method == "PUT"]
    assert final.url.params["digest"] == digest_of(data) and final.content == b""


def test_cross_repository_mount() -> None:
    fake = FakeRegistry()
    data = b"shared layer"
    descriptor = fake.add_blob("team/base", data)
    other_registry = Reference.parse("elsewhere.test/team/base:v1")
    assert push(fake, APP, descriptor, data, [other_registry, BASE]) == "mounted"
    (mount,) = [r for r in fake.registry_requests() if r.method == "POST"]
    assert mount.url.params["mount"] == descriptor.digest
    assert mount.url.params["from"] == "team/base"
    assert digest_of(data) in fake.repo_blobs["team/app"]


def test_failed_mount_falls_back_to_upload_in_the_session_it_opened() -> None:
    fake = FakeRegistry()
    data = b"not in base"
    assert push(fake, APP, descriptor_for(data), data, [BASE]) == "uploaded"
    methods = [r.method for r in fake.registry_requests()]
    assert methods == ["HEAD", "POST", "PUT"]


def test_source_must_match_its_descriptor(tmp_path: Path) -> None:
    fake = FakeRegistry()
    descriptor = descriptor_for(b"expected")
    with pytest.raises(DigestMismatchError, match="expected sha256"):
        push(fake, APP, descriptor, b"EXPECTED")
    with pytest.raises(DigestMismatchError, match="source has 3 bytes"):
        push(fake, APP, descriptor, b"abc")
    options: dict[str, Any] = {"monolithic_upload_limit": 2, "upload_chunk_size": 3}
    with pytest.raises(DigestMismatchError, match="content is sha256"):
        push(fake, APP, descriptor, b"EXPECTED", **options)
    assert fake.uploads == {}  # the broken chunked upload was cancelled


def test_registry_digest_must_match() -> None:
    fake = FakeRegistry()
    data = b"blob"
    wrong = "sha256:" + "0" * 64
    fake.queue(
        REGISTRY,
        httpx.Response(404),
        httpx.Response(202, headers={"Location": "/v2/team/app/blobs/uploads/u"}),
        httpx.Response(201, headers={"Docker-Content-Digest": wrong}),
    )
    with pytest.raises(DigestMismatchError, match=f"stored it as {wrong}"):
        push(fake, APP, descriptor_for(data), data)


def test_push_manifest_by_tag_and_by_digest() -> None:
    fake = FakeRegistry()
    data = b'{"schemaVersion":2}'
    digest = push(fake, APP, data, mediatypes.OCI_MANIFEST, method="push_manifest")
    assert digest == digest_of(data)
    assert fake.manifests[("team/app", "v1")] == (data, mediatypes.OCI_MANIFEST)
    by_digest = Reference.parse(f"{REGISTRY}/team/app@{digest}")
    assert push(fake, by_digest, data, mediatypes.OCI_INDEX, method="push_manifest") == digest
    assert fake.registry_requests()[-1].url.path.endswith(f"/manifests/{digest}")
    with pytest.raises(DigestMismatchError):
        push(fake, by_digest, data + b" ", mediatypes.OCI_INDEX, method="push_manifest")
