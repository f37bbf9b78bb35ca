"""Issue 13: credentials stay with their origin, reads are bounded, token keys name the
registry, uploads are never re-sent blindly, broken range answers are resumed."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from lazybuild.errors import AuthError, FormatError, RegistryError
from lazybuild.oci.descriptor import Descriptor
from lazybuild.registry.client import MAX_CONFIG_SIZE, RegistryClient
from lazybuild.registry.reference import Reference
from lazybuild.registry.retry import Retry, RetryPolicy, send_with_retries

from .fakes import digest_of, run

DATA = os.urandom(200_000)
USER, PASSWORD = "alice", "s3cret"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
Handler = Callable[[httpx.Request], httpx.Response]


def config_for(tmp_path: Path, *hosts: str) -> Path:
    path = tmp_path / "config.json"
    entry = {"auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
    path.write_text(json.dumps({"auths": dict.fromkeys(hosts, entry)}))
    return path


def with_client(handler: Handler, body: Callable[[RegistryClient], Any], **options: Any) -> Any:
    async def main() -> Any:
        transport = httpx.MockTransport(handler)
        async with RegistryClient(transport=transport, **options) as client:
            return await body(client)

    return run(main)


class _Breaks(httpx.AsyncByteStream):
    """A body that sends ``data[:after]`` and then breaks like a reset connection."""

    def __init__(self, data: bytes, after: int) -> None:
        self._data, self._after = data, after

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._data[: self._after]
        raise httpx.ReadError("connection reset by peer")


class _Endless(httpx.AsyncByteStream):
    """A body that never ends; counts what was taken of it."""

    def __init__(self) -> None:
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            self.sent += 16384
            yield b"x" * 16384


# -- credentials ----------------------------------------------------------------------


def test_upload_location_on_another_host_gets_no_authorization(tmp_path: Path) -> None:
    seen: list[tuple[str, str, str | None]] = []
    stored: dict[str, bytes] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        authorization = request.headers.get("authorization")
        seen.append((request.method, request.url.host, authorization))
        if request.url.host == "registry.test":
            if authorization != BASIC:
                return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})
            if request.method == "HEAD":
                found = request.url.path.rsplit("/", 1)[1] in stored
                return httpx.Response(200 if found else 404)
            if request.method == "POST":
                return httpx.Response(202, headers={"Location": "https://storage.test/up/1?s=x"})
        if request.url.host == "storage.test" and request.method == "PUT":
            digest = request.url.params["digest"]
            stored[digest] = request.content
            return httpx.Response(201, headers={"Docker-Content-Digest": digest})
        return httpx.Response(500)

    data = b"blob bytes"
    descriptor = Descriptor("application/octet-stream", digest_of(data), len(data))
    ref = Reference.parse("registry.test/team/app:v1")
    config = config_for(tmp_path, "registry.test")
    outcome = with_client(
        handler, lambda c: c.push_blob(ref, descriptor, data), docker_config=config
    )
    assert outcome == "uploaded"
    assert stored == {descriptor.digest: data}
    storage = [entry for entry in seen if entry[1] == "storage.test"]
    assert storage == [("PUT", "storage.test", None)]
    assert ("POST", "registry.test", BASIC) in seen


def _bearer_registry(realm: str, tokens: list[httpx.Request]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.test":
            tokens.append(request)
            if request.headers.get("authorization") != BASIC:
                return httpx.Response(401)
            return httpx.Response(200, json={"token": f"t{len(tokens)}"})
        if not request.headers.get("authorization", "").startswith("Bearer "):
            challenge = f'Bearer realm="{realm}",service="svc"'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        return httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN"}]})

    return handler


def test_basic_credentials_are_not_sent_to_a_plain_http_realm(tmp_path: Path) -> None:
    tokens: list[httpx.Request] = []
    handler = _bearer_registry("http://auth.test/token", tokens)
    ref = Reference.parse("registry.test/team/app:v1")
    config = config_for(tmp_path, "registry.test")
    with pytest.raises(AuthError, match="plain HTTP; credentials are only sent over https"):
        with_client(handler, lambda c: c.get_manifest(ref), docker_config=config)
    assert tokens and all("authorization" not in request.headers for request in tokens)


def test_basic_credentials_go_to_an_https_realm(tmp_path: Path) -> None:
    tokens: list[httpx.Request] = []
    handler = _bearer_registry("https://auth.test/token", tokens)
    ref = Reference.parse("registry.test/team/app:v1")
    config = config_for(tmp_path, "registry.test")
    with pytest.raises(RegistryError, match="MANIFEST_UNKNOWN"):
        with_client(handler, lambda c: c.get_manifest(ref), docker_config=config)
    assert [request.headers.get("authorization") for request in tokens] == [BASIC]


def test_tokens_are_not_shared_between_registries_with_one_token_server(tmp_path: Path) -> None:
    tokens: list[httpx.Request] = []
    handler = _bearer_registry("https://auth.test/token", tokens)
    config = config_for(tmp_path, "one.test", "two.test")

    async def body(client: RegistryClient) -> None:
        for host in ("one.test", "two.test", "one.test"):
            with pytest.raises(RegistryError, match="MANIFEST_UNKNOWN"):
                await client.get_manifest(Reference.parse(f"{host}/team/app:v1"))

    with_client(handler, body, docker_config=config)
    assert len(tokens) == 2  # one per registry; the third request reuses the first


# -- bounded reads ----------------------------------------------------------------------


def test_an_endless_error_body_is_read_only_for_its_message() -> None:
    body_stream = _Endless()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, stream=body_stream)

    ref = Reference.parse("registry.test/team/app:v1")
    with pytest.raises(RegistryError, match="400 Bad Request") as caught:
        with_client(handler, lambda c: c.get_manifest(ref))
    assert body_stream.sent <= 128 * 1024
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 400


def test_an_endless_token_answer_is_refused() -> None:
    body_stream = _Endless()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.test":
            return httpx.Response(200, stream=body_stream)
        challenge = 'Bearer realm="https://auth.test/token",service="svc"'
        return httpx.Response(401, headers={"WWW-Authenticate": challenge})

    ref = Reference.parse("registry.test/team/app:v1")
    with pytest.raises(RegistryError, match="larger than 1048576 bytes"):
        with_client(handler, lambda c: c.get_manifest(ref))
    assert body_stream.sent <= 2 * 1024 * 1024


def test_a_huge_config_is_refused_before_it_is_fetched() -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(500)

    config = Descriptor(
        "application/vnd.oci.image.config.v1+json", "sha256:" + "a" * 64, MAX_CONFIG_SIZE + 1
    )
    ref = Reference.parse("registry.test/team/app:v1")
    with pytest.raises(FormatError, match="larger than"):
        with_client(handler, lambda c: c.get_blob(ref, config, max_size=MAX_CONFIG_SIZE))
    assert requests == []


# -- uploads -----------------------------------------------------------------------------


class _UploadRegistry:
    """An open registry whose upload answers can be lost or fail once."""

    def __init__(self, *, lose_put_answer: bool = False, fail_first_patch: bool = False) -> None:
        self.lose_put_answer = lose_put_answer
        self.fail_first_patch = fail_first_patch
        self.blobs: dict[str, bytes] = {}
        self.uploads: dict[str, bytearray] = {}
        self.log: list[tuple[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.log.append((request.method, path))
        if request.method == "HEAD":
            digest = path.rsplit("/", 1)[1]
            if digest in self.blobs:
                return httpx.Response(200, headers={"Docker-Content-Digest": digest})
            return httpx.Response(404)
        if request.method == "POST":
            name = f"u{len(self.uploads)}"
            self.uploads[name] = bytearray()
            return httpx.Response(202, headers={"Location": f"/v2/team/app/blobs/uploads/{name}"})
        name = path.rsplit("/", 1)[1]
        if name not in self.uploads:
            return httpx.Response(404, json={"errors": [{"code": "BLOB_UPLOAD_UNKNOWN"}]})
        if request.method == "PATCH":
            if self.fail_first_patch:
                self.fail_first_patch = False
                raise httpx.ReadError("connection reset by peer")
            self.uploads[name] += request.content
            end = len(self.uploads[name]) - 1
            return httpx.Response(202, headers={"Location": path, "Range": f"0-{end}"})
        if request.method == "PUT":
            data = bytes(self.uploads.pop(name) + request.content)
            digest = request.url.params["digest"]
            assert digest_of(data) == digest
            self.blobs[digest] = data
            if self.lose_put_answer:
                self.lose_put_answer = False
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
            return httpx.Response(201, headers={"Docker-Content-Digest": digest})
        return httpx.Response(405)


def test_a_commit_whose_answer_is_lost_is_found_in_the_registry() -> None:
    registry = _UploadRegistry(lose_put_answer=True)
    descriptor = Descriptor("application/octet-stream", digest_of(DATA), len(DATA))
    ref = Reference.parse("registry.test/team/app:v1")
    outcome = with_client(registry, lambda c: c.push_blob(ref, descriptor, DATA))
    assert outcome == "uploaded"
    assert registry.blobs == {descriptor.digest: DATA}
    assert [method for method, _ in registry.log].count("PUT") == 1  # never re-sent


def test_a_broken_patch_restarts_the_upload_instead_of_sending_it_again() -> None:
    registry = _UploadRegistry(fail_first_patch=True)
    descriptor = Descriptor("application/octet-stream", digest_of(DATA), len(DATA))
    ref = Reference.parse("registry.test/team/app:v1")
    outcome = with_client(
        registry,
        lambda c: c.push_blob(ref, descriptor, DATA),
        monolithic_upload_limit=1000,
        upload_chunk_size=64 * 1024,
    )
    assert outcome == "uploaded"
    assert registry.blobs == {descriptor.digest: DATA}
    methods = [method for method, _ in registry.log]
    assert methods.count("POST") == 2
    patches = [path for method, path in registry.log if method == "PATCH"]
    assert patches[0].endswith("/u0") and all(p.endswith("/u1") for p in patches[1:])


# -- range reads ---------------------------------------------------------------------


def _ranged_blob(breaks: list[int]) -> tuple[Handler, list[str | None]]:
    """A blob server whose first answers break after ``breaks[i]`` bytes each."""
    ranges: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        header = request.headers.get("range")
        ranges.append(header)
        assert header is not None and "," not in header
        first, last = (int(x) for x in header.removeprefix("bytes=").split("-"))
        body = DATA[first : last + 1]
        headers = {"Content-Range": f"bytes {first}-{last}/{len(DATA)}"}
        if breaks:
            return httpx.Response(206, stream=_Breaks(body, breaks.pop(0)), headers=headers)
        return httpx.Response(206, content=body, headers=headers)

    return handler, ranges


def _read(handler: Handler, wanted: list[tuple[int, int]]) -> dict[int, bytes]:
    descriptor = Descriptor("application/octet-stream", digest_of(DATA), len(DATA))
    ref = Reference.parse("registry.test/team/app:v1")
    seen: dict[int, bytes] = {}

    async def body(client: RegistryClient) -> None:
        with trio.fail_after(20):
            await client.open_blob(ref, descriptor).stream_ranges(wanted, seen.__setitem__)

    with_client(handler, body, single_range_registries=["registry.test"])
    return seen


def test_a_broken_range_answer_resumes_where_it_broke_off() -> None:
    handler, ranges = _ranged_blob([30_000, 20_000, 10_000])
    seen = _read(handler, [(0, 100), (50_000, 50_000)])
    assert seen == {0: DATA[:100], 1: DATA[50_000:100_000]}
    assert ranges == [
        "bytes=0-99999",
        "bytes=30000-99999",
        "bytes=50000-99999",
        "bytes=60000-99999",
    ]


def test_a_range_answer_that_keeps_breaking_is_one_error_after_four_attempts() -> None:
    handler, ranges = _ranged_blob([1000] * 10)
    with pytest.raises(RegistryError, match=r"broke off at byte .*\(4 attempts\)"):
        _read(handler, [(0, 100_000)])
    assert len(ranges) == 4


def test_a_broken_multi_range_answer_is_asked_for_again() -> None:
    answers = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal answers
        answers += 1
        header = request.headers["range"].removeprefix("bytes=")
        parts = []
        for item in header.split(","):
            first, last = (int(x) for x in item.split("-"))
            parts.append(
                b"--B\r\nContent-Type: application/octet-stream\r\n"
                + f"Content-Range: bytes {first}-{last}/{len(DATA)}\r\n\r\n".encode()
                + DATA[first : last + 1]
                + b"\r\n"
            )
        body = b"".join(parts) + b"--B--\r\n"
        headers = {"Content-Type": "multipart/byteranges; boundary=B"}
        if answers == 1:
            return httpx.Response(206, stream=_Breaks(body, 500), headers=headers)
        return httpx.Response(206, content=body, headers=headers)

    descriptor = Descriptor("application/octet-stream", digest_of(DATA), len(DATA))
    ref = Reference.parse("registry.test/team/app:v1")

    async def body(client: RegistryClient) -> list[bytes]:
        return await client.open_blob(ref, descriptor).read_ranges([(10, 1000), (150_000, 10)])

    assert with_client(handler, body) == [DATA[10:1010], DATA[150_000:150_010]]
    assert answers == 2


# -- retry rules ---------------------------------------------------------------------


def test_retry_after_is_capped_and_the_deadline_returns_the_last_answer() -> None:
    now = [0.0]
    pauses: list[float] = []
    sent = 0

    async def send() -> httpx.Response:
        nonlocal sent
        sent += 1
        return httpx.Response(503, headers={"Retry-After": "3600"})

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)
        now[0] += seconds

    policy = RetryPolicy(max_retries=10, max_retry_after=30.0, deadline=100.0)
    response = trio.run(
        lambda: send_with_retries(send, policy, "r.test", sleep, clock=lambda: now[0])
    )
    assert response.status_code == 503
    assert pauses == [30.0, 30.0, 30.0]  # a fourth would end past the deadline
    assert sent == 4


@pytest.mark.parametrize(
    ("retry", "status", "sent"),
    [
        (Retry.UNANSWERED, 500, 1),  # the POST may have been handled: not again
        (Retry.UNANSWERED, 429, 3),  # throttled, not handled: again
        (Retry.NEVER, 503, 1),
        (Retry.ALWAYS, 500, 3),
    ],
)
def test_requests_are_retried_only_where_that_is_safe(retry: Retry, status: int, sent: int) -> None:
    count = 0

    async def send() -> httpx.Response:
        nonlocal count
        count += 1
        return httpx.Response(status)

    async def sleep(seconds: float) -> None:
        pass

    response = trio.run(
        lambda: send_with_retries(send, RetryPolicy(max_retries=2), "r.test", sleep, retry=retry)
    )
    assert response.status_code == status
    assert count == sent


def test_a_lost_answer_to_upload_data_is_not_resent() -> None:
    count = 0

    async def send() -> httpx.Response:
        nonlocal count
        count += 1
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.")

    async def sleep(seconds: float) -> None:
        pass

    with pytest.raises(RegistryError, match="disconnected"):
        trio.run(lambda: send_with_retries(send, RetryPolicy(), "r", sleep, retry=Retry.NEVER))
    assert count == 1
