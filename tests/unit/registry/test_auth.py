from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from lazybuild.errors import AuthError
from lazybuild.registry.auth import (
    Challenge,
    TokenCache,
    TokenKey,
    merge_scopes,
    parse_www_authenticate,
)
from lazybuild.registry.client import RegistryClient
from lazybuild.registry.reference import Reference

from .fakes import AUTH, REGISTRY, FakeRegistry, basic, descriptor_for, run

MANIFEST = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": descriptor_for(b"{}", "application/vnd.oci.image.config.v1+json").to_json(),
    "layers": [],
}


def docker_config(tmp_path: Path, entry: dict[str, str], host: str = REGISTRY) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": {host: entry}}))
    return path


def password_entry(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def fetch_manifest_twice(fake: FakeRegistry, config: Path) -> None:
    ref = Reference.parse(f"{REGISTRY}/team/app:v1")

    async def main() -> None:
        async with RegistryClient(transport=fake.transport(), docker_config=config) as client:
            await client.get_manifest(ref)
            await client.get_manifest(ref)

    run(main)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            'Bearer realm="https://auth.test/token",service="reg",scope="repository:a/b:pull"',
            [
                Challenge(
                    "bearer",
                    {
                        "realm": "https://auth.test/token",
                        "service": "reg",
                        "scope": "repository:a/b:pull",
                    },
                )
            ],
        ),
        (
            'Basic realm="x, \\"quoted\\"", Bearer realm=https://a/t , error="insufficient_scope"',
            [
                Challenge("basic", {"realm": 'x, "quoted"'}),
                Challenge("bearer", {"realm": "https://a/t", "error": "insufficient_scope"}),
            ],
        ),
        ("Negotiate abc123==", [Challenge("negotiate", {"token68": "abc123=="})]),
        ("BASIC", [Challenge("basic", {})]),
    ],
)
def test_parse_www_authenticate(header: str, expected: list[Challenge]) -> None:
    assert parse_www_authenticate([header]) == expected


def test_merge_scopes() -> None:
    merged = merge_scopes(
        ["repository:a:pull", "repository:h:5000/b:push", "repository:a:pull,push", "junk"]
    )
    assert merged == ["repository:a:pull,push", "repository:h:5000/b:push"]


def test_token_cache_expires() -> None:
    now = [100.0]
    cache = TokenCache(clock=lambda: now[0])
    key = TokenKey("registry", "realm", "service", "repository:a:pull", "")
    cache.put(key, "t1", expires_in=60)
    assert cache.get(key) == "t1"
    now[0] += 56  # renewed a little before the registry would reject it
    assert cache.get(key) is None
    cache.put(key, "t2", expires_in=60)
    cache.drop(key, "older")
    assert cache.get(key) == "t2"
    cache.drop(key, "t2")
    assert cache.get(key) is None


def test_bearer_token_with_scope_is_fetched_once_and_reused(tmp_path: Path) -> None:
    fake = FakeRegistry(auth="bearer")
    fake.add_manifest("team/app", "v1", MANIFEST)
    fetch_manifest_twice(fake, docker_config(tmp_path, password_entry("alice", "s3cret")))
    assert len(fake.token_requests) == 1
    token_request = fake.token_requests[0]
    assert token_request.url.params.get_list("scope") == ["repository:team/app:pull"]
    assert token_request.url.params["service"] == "fake"
    assert token_request.headers["authorization"] == basic("alice", "s3cret")
    manifest_calls = fake.registry_requests("/manifests/")
    # One 401 to learn the challenge, then two authorized requests.
    assert [r.headers.get("authorization", "") != "" for r in manifest_calls] == [
        False,
        True,
        True,
    ]


def test_rejected_cached_token_is_refreshed_once(tmp_path: Path) -> None:
    fake = FakeRegistry(auth="bearer")
    fake.add_manifest("team/app", "v1", MANIFEST)
    ref = Reference.parse(f"{REGISTRY}/team/app:v1")
    config = docker_config(tmp_path, password_entry("alice", "s3cret"))

    async def main() -> None:
        async with RegistryClient(transport=fake.transport(), docker_config=config) as client:
            await client.get_manifest(ref)
            fake.tokens.clear()  # the registry no longer accepts the cached token
            await client.get_manifest(ref)

    run(main)
    assert len(fake.token_requests) == 2
    statuses = [r.headers.get("authorization") for r in fake.registry_requests("/manifests/")]
    assert statuses == [None, "Bearer token-0", "Bearer token-0", "Bearer token-1"]


def test_anonymous_bearer_pull_needs_no_credentials(tmp_path: Path) -> None:
    fake = FakeRegistry(auth="bearer", anonymous_pull=True)
    fake.add_manifest("team/app", "v1", MANIFEST)
    fetch_manifest_twice(fake, tmp_path / "no-config.json")
    assert "authorization" not in fake.token_requests[0].headers


def test_identity_token_uses_the_oauth_refresh_grant(tmp_path: Path) -> None:
    fake = FakeRegistry(auth="bearer")
    fake.add_manifest("team/app", "v1", MANIFEST)
    fetch_manifest_twice(fake, docker_config(tmp_path, {"identitytoken": "identity-alice"}))
    (token_request,) = fake.token_requests
    assert token_request.method == "POST"
    form = token_request.content.decode()
    assert "grant_type=refresh_token" in form and "refresh_token=identity-alice" in form


def test_wrong_password_is_one_clear_line(tmp_path: Path) -> None:
    fake = FakeRegistry(auth="bearer")
    fake.add_manifest("team/app", "v1", MANIFEST)
    config = docker_config(tmp_path, password_entry("alice", "wrong"))
    with pytest.raises(AuthError) as caught:
        fetch_manifest_twice(fake, config)
    assert str(caught.value) == "registry registry.test: credentials for user 'alice' were refused"


def test_missing_credentials_say_where_they_were_looked_for(tmp_path: Path) -> None:
    fake = FakeRegistry(auth="bearer")
    with pytest.raises(AuthError, match=r"authentication required.*no-config\.json"):
        fetch_manifest_twice(fake, tmp_path / "no-config.json")


def test_basic_auth_is_sent_up_front_after_the_first_challenge(tmp_path: Path) -> None:
    fake = FakeRegistry(auth="basic")
    fake.add_manifest("team/app", "v1", MANIFEST)
    fetch_manifest_twice(fake, docker_config(tmp_path, password_entry("alice", "s3cret")))
    statuses = [r.headers.get("authorization") for r in fake.registry_requests("/manifests/")]
    assert statuses == [None, basic("alice", "s3cret"), basic("alice", "s3cret")]
    assert fake.token_requests == []


def test_basic_auth_wrong_password(tmp_path: Path) -> None:
    fake = FakeRegistry(auth="basic")
    fake.add_manifest("team/app", "v1", MANIFEST)
    config = docker_config(tmp_path, password_entry("bob", "nope"))
    with pytest.raises(AuthError) as caught:
        fetch_manifest_twice(fake, config)
    assert str(caught.value) == "registry registry.test: credentials for user 'bob' were refused"


def test_push_asks_for_push_and_mount_source_scopes(tmp_path: Path) -> None:
    fake = FakeRegistry(auth="bearer")
    data = b"layer bytes"
    descriptor = fake.add_blob("team/base", data)
    config = docker_config(tmp_path, password_entry("alice", "s3cret"))

    async def main() -> str:
        async with RegistryClient(transport=fake.transport(), docker_config=config) as client:
            return await client.push_blob(
                Reference.parse(f"{REGISTRY}/team/app:v1"),
                descriptor,
                data,
                mount_from=[Reference.parse(f"{REGISTRY}/team/base:v1")],
            )

    assert run(main) == "mounted"
    scopes = [r.url.params.get_list("scope") for r in fake.token_requests]
    assert ["repository:team/app:pull,push", "repository:team/base:pull"] in scopes


def test_pull_only_token_cannot_push(tmp_path: Path) -> None:
    fake = FakeRegistry(auth="bearer", anonymous_pull=True)
    data = b"x"

    async def main() -> str:
        async with RegistryClient(
            transport=fake.transport(), docker_config=tmp_path / "none.json"
        ) as client:
            return await client.push_blob(
                Reference.parse(f"{REGISTRY}/team/app:v1"), descriptor_for(data), data
            )

    with pytest.raises(AuthError, match="anonymous access is not allowed"):
        run(main)
    assert all(r.url.host in (AUTH, REGISTRY) for r in fake.requests)
