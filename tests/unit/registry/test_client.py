from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from lazybuild.errors import DigestMismatchError, FormatError, NotFoundError, RegistryError
from lazybuild.oci import mediatypes
from lazybuild.oci.manifest import Index, Manifest
from lazybuild.oci.platform import Platform
from lazybuild.registry.client import RegistryClient
from lazybuild.registry.reference import Reference
from lazybuild.registry.session import is_loopback_host

from .fakes import REGISTRY, FakeRegistry, digest_of, run

CONFIG = json.dumps({"architecture": "arm64", "os": "linux", "rootfs": {"diff_ids": []}}).encode()


def image(fake: FakeRegistry, repository: str = "team/app") -> dict[str, Any]:
    config = fake.add_blob(repository, CONFIG)
    layer = fake.add_blob(repository, b"layer")
    return {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_MANIFEST,
        "config": {**config.to_json(), "mediaType": mediatypes.OCI_CONFIG},
        "layers": [{**layer.to_json(), "mediaType": mediatypes.OCI_LAYER_GZIP}],
    }


def index_of(fake: FakeRegistry, manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    entries = []
    for platform, document in manifests.items():
        digest = fake.add_manifest("team/app", None, document)
        os_name, arch = platform.split("/")
        data = json.dumps(document).encode()
        entries.append(
            {
                "mediaType": mediatypes.OCI_MANIFEST,
                "digest": digest,
                "size": len(data),
                "platform": {"os": os_name, "architecture": arch},
            }
        )
    return {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": entries}


def call(fake: FakeRegistry, method: str, *args: Any, **options: Any) -> Any:
    async def main() -> Any:
        async with RegistryClient(transport=fake.transport(), **options) as client:
            return await getattr(client, method)(*args)

    return run(main)


def test_manifest_by_tag_and_digest() -> None:
    fake = FakeRegistry()
    document = image(fake)
    digest = fake.add_manifest("team/app", "v1", document)
    fetched = call(fake, "get_manifest", Reference.parse(f"{REGISTRY}/team/app:v1"))
    assert fetched.digest == digest
    assert fetched.media_type == mediatypes.OCI_MANIFEST
    assert isinstance(fetched.document, Manifest)
    pinned = Reference.parse(f"{REGISTRY}/team/app@{digest}")
    assert call(fake, "get_manifest", pinned).data == fetched.data
    (request, _) = fake.registry_requests("/manifests/")
    assert request.headers["accept"] == mediatypes.MANIFEST_ACCEPT


def test_manifest_digest_mismatch() -> None:
    fake = FakeRegistry()
    digest = fake.add_manifest("team/app", "v1", image(fake))
    fake.tampered[digest] = json.dumps({**image(fake), "annotations": {"x": "y"}}).encode()
    with pytest.raises(DigestMismatchError, match=f"expected {digest}"):
        call(fake, "get_manifest", Reference.parse(f"{REGISTRY}/team/app@{digest}"))
    # By tag, the registry's Docker-Content-Digest is checked instead.
    fake.manifest_digest_header = digest_of(b"something else")
    with pytest.raises(DigestMismatchError, match="expected sha256:"):
        call(fake, "get_manifest", Reference.parse(f"{REGISTRY}/team/app:v1"))


def test_unknown_manifest_media_type_is_named() -> None:
    fake = FakeRegistry()
    media_type = "application/vnd.docker.distribution.manifest.v1+prettyjws"
    fake.add_manifest("team/app", "old", {"schemaVersion": 1, "mediaType": media_type})
    with pytest.raises(FormatError, match="prettyjws"):
        call(fake, "get_manifest", Reference.parse(f"{REGISTRY}/team/app:old"))


def test_missing_manifest() -> None:
    with pytest.raises(NotFoundError, match="MANIFEST_UNKNOWN"):
        call(FakeRegistry(), "get_manifest", Reference.parse(f"{REGISTRY}/team/app:nope"))


def test_resolve_image_picks_the_platform_from_an_index() -> None:
    fake = FakeRegistry()
    amd64 = image(fake)
    arm64 = {**image(fake), "annotations": {"arch": "arm64"}}
    index_digest = fake.add_manifest(
        "team/app", "multi", index_of(fake, {"linux/amd64": amd64, "linux/arm64": arm64})
    )
    ref = Reference.parse(f"{REGISTRY}/team/app:multi")
    resolved = call(fake, "resolve_image", ref, Platform("linux", "arm64"))
    assert resolved.index is not None and isinstance(resolved.index.document, Index)
    assert resolved.index.digest == index_digest
    assert resolved.manifest.annotations == {"arch": "arm64"}
    assert resolved.manifest_digest == digest_of(json.dumps(arm64).encode())
    assert resolved.ref == ref.with_digest(resolved.manifest_digest)
    assert resolved.config_bytes == CONFIG and resolved.config["architecture"] == "arm64"
    with pytest.raises(NotFoundError, match="no image for linux/s390x"):
        call(fake, "resolve_image", ref, Platform("linux", "s390x"))


def test_resolve_image_without_an_index() -> None:
    fake = FakeRegistry()
    fake.add_manifest("team/app", "v1", image(fake))
    resolved = call(
        fake, "resolve_image", Reference.parse(f"{REGISTRY}/team/app:v1"), Platform("linux", "x")
    )
    assert resolved.index is None and resolved.config["os"] == "linux"


def test_config_digest_mismatch() -> None:
    fake = FakeRegistry()
    fake.add_manifest("team/app", "v1", image(fake))
    fake.tampered[digest_of(CONFIG)] = CONFIG.replace(b"arm64", b"amd64")
    with pytest.raises(DigestMismatchError):
        call(
            fake,
            "resolve_image",
            Reference.parse(f"{REGISTRY}/team/app:v1"),
            Platform("linux", "arm64"),
        )


def test_busy_registry_is_retried_honouring_retry_after() -> None:
    fake = FakeRegistry()
    fake.add_manifest("team/app", "v1", image(fake))
    fake.queue(
        REGISTRY,
        httpx.Response(429, headers={"Retry-After": "0"}),
        httpx.Response(503, headers={"Retry-After": "0"}),
    )
    fetched = call(fake, "get_manifest", Reference.parse(f"{REGISTRY}/team/app:v1"))
    assert isinstance(fetched.document, Manifest)
    assert len(fake.registry_requests("/manifests/")) == 3


def test_server_errors_outlast_the_budget() -> None:
    fake = FakeRegistry()
    errors = [httpx.Response(500, json={"errors": [{"code": "UNKNOWN", "message": "boom"}]})]
    fake.queue(REGISTRY, *(errors * 2))
    with pytest.raises(RegistryError, match=r"500 Internal Server Error \(UNKNOWN: boom\)"):
        call(fake, "get_manifest", Reference.parse(f"{REGISTRY}/a:v1"), max_retries=1)


def test_unreachable_registry_fails_fast() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused") from ConnectionRefusedError(111, "refused")

    async def main() -> None:
        async with RegistryClient(transport=httpx.MockTransport(refuse)) as client:
            await client.get_manifest(Reference.parse("127.0.0.1:1/x"))

    start = time.monotonic()
    with pytest.raises(RegistryError) as caught:
        run(main)
    assert str(caught.value) == "cannot reach registry 127.0.0.1:1: connection refused"
    assert time.monotonic() - start < 1.5


@pytest.mark.parametrize(
    ("host", "plain"),
    [
        ("127.0.0.1:5000", True),
        ("127.1.2.3", True),
        ("localhost:5000", True),
        ("[::1]:5000", True),
        ("registry.test", False),
        ("10.0.0.1:5000", False),
        ("insecure.test:5000", True),
    ],
)
def test_plain_http_only_for_loopback_and_insecure_registries(host: str, *, plain: bool) -> None:
    fake = FakeRegistry()
    fake.add_manifest("x", "v1", image(fake, "x"))
    call(
        fake,
        "get_manifest",
        Reference.parse(f"{host}/x:v1"),
        insecure_registries=["insecure.test:5000"],
    )
    assert fake.requests[0].url.scheme == ("http" if plain else "https")
    assert is_loopback_host(host) == (plain and "insecure" not in host)
