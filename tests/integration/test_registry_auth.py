"""RegistryClient against Distribution with token auth, and against nothing at all."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
import trio

from lazybuild.errors import AuthError, RegistryError
from lazybuild.oci import mediatypes
from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.manifest import Manifest
from lazybuild.oci.platform import Platform
from lazybuild.registry.client import RegistryClient
from lazybuild.registry.reference import Reference
from tests.support.procs import free_port
from tests.support.registry import TokenRegistry, write_docker_config

pytestmark = pytest.mark.root


def descriptor(data: bytes) -> Descriptor:
    return Descriptor(
        mediatypes.OCI_LAYER_GZIP, "sha256:" + hashlib.sha256(data).hexdigest(), len(data)
    )


def test_token_registry_push_and_pull_with_docker_config(
    token_registry: TokenRegistry, tmp_path: Path
) -> None:
    assert token_registry.username and token_registry.password
    config = write_docker_config(
        tmp_path, token_registry.host, token_registry.username, token_registry.password
    )
    ref = Reference.parse(f"{token_registry.host}/it/authed:v1")
    data = os.urandom(3000)
    config_blob = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    config_descriptor = Descriptor(
        mediatypes.OCI_CONFIG, "sha256:" + hashlib.sha256(config_blob).hexdigest(), len(config_blob)
    )
    manifest = Manifest(mediatypes.OCI_MANIFEST, config_descriptor, (descriptor(data),)).encode()
    issued_before = len(token_registry.token_server.issued)

    async def main() -> None:
        async with RegistryClient(docker_config=config) as client:
            assert await client.push_blob(ref, descriptor(data), data) == "uploaded"
            assert await client.get_blob(ref, descriptor(data)) == data
            blob = client.open_blob(ref, descriptor(data))
            assert await blob.read_ranges([(0, 10), (2000, 10)]) == [data[:10], data[2000:2010]]
            await client.push_blob(ref, config_descriptor, config_blob)
            digest = await client.push_manifest(ref, manifest, mediatypes.OCI_MANIFEST)
            resolved = await client.resolve_image(ref, Platform("linux", "amd64"))
            assert resolved.manifest_digest == digest and resolved.manifest_bytes == manifest

    trio.run(main)
    issued = token_registry.token_server.issued[issued_before:]
    assert {token.username for token in issued} == {token_registry.username}
    # One token for pushing and one for pulling, each reused by every later request.
    assert len(issued) <= 2


def test_token_registry_wrong_password(token_registry: TokenRegistry, tmp_path: Path) -> None:
    assert token_registry.username
    config = write_docker_config(tmp_path, token_registry.host, token_registry.username, "wrong")
    ref = Reference.parse(f"{token_registry.host}/it/authed:v1")

    async def main() -> None:
        async with RegistryClient(docker_config=config) as client:
            await client.get_manifest(ref)

    with pytest.raises(AuthError) as caught:
        trio.run(main)
    assert str(caught.value) == (
        f"registry {token_registry.host}: credentials for user "
        f"'{token_registry.username}' were refused"
    )


def test_token_registry_without_credentials(token_registry: TokenRegistry, tmp_path: Path) -> None:
    ref = Reference.parse(f"{token_registry.host}/it/authed:v1")

    async def main() -> None:
        async with RegistryClient(docker_config=tmp_path / "absent.json") as client:
            await client.get_manifest(ref)

    with pytest.raises(AuthError, match="authentication required"):
        trio.run(main)


def test_unreachable_registry_fails_quickly() -> None:
    host = f"127.0.0.1:{free_port()}"  # nothing listens there

    async def main() -> None:
        async with RegistryClient() as client:
            await client.get_manifest(Reference.parse(f"{host}/x:v1"))

    start = time.monotonic()
    with pytest.raises(RegistryError) as caught:
        trio.run(main)
    assert str(caught.value) == f"cannot reach registry {host}: connection refused"
    assert time.monotonic() - start < 2.0
