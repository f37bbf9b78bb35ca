from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import httpx
import pytest
import trio

from lazybuild.errors import DigestMismatchError, RegistryError
from lazybuild.oci.descriptor import Descriptor
from lazybuild.registry.client import RegistryClient
from lazybuild.registry.reference import Reference

from .fakes import CDN, REGISTRY, FakeRegistry, descriptor_for, run

DATA = os.urandom(300_000)
REF = Reference.parse(f"{REGISTRY}/team/app:v1")
RANGES = [(250_000, 100), (10, 20), (100_000, 5000), (15, 10)]
EXPECTED = [DATA[o : o + n] for o, n in RANGES]

Body = Callable[[RegistryClient, Descriptor], Coroutine[Any, Any, Any]]


def with_client(fake: FakeRegistry, body: Body, **options: Any) -> Any:
    descriptor = fake.add_blob("team/app", DATA)

    async def main() -> Any:
        async with RegistryClient(transport=fake.transport(), **options) as client:
            return await body(client, descriptor)

    return run(main)


def test_multi_range_read_is_one_request() -> None:
    fake = FakeRegistry()

    async def body(client: RegistryClient, descriptor: Descriptor) -> None:
        blob = client.open_blob(REF, descriptor)
        assert await blob.read_ranges(RANGES) == EXPECTED
        assert blob.stats.requests == 1
        assert blob.stats.bytes_received > 5140
        assert await blob.read_at(7, 3) == DATA[7:10]
        assert await blob.read_ranges([]) == []
        assert blob.stats.requests == 2

    with_client(fake, body)
    (multi, _single) = fake.registry_requests("/blobs/")
    # Overlapping ranges are merged before asking.
    assert multi.headers["range"] == "bytes=10-29,100000-104999,250000-250099"
    assert multi.headers["accept-encoding"] == "identity"


def test_400_to_multi_range_switches_the_registry_to_single_ranges() -> None:
    fake = FakeRegistry(range_mode="reject")

    async def body(client: RegistryClient, descriptor: Descriptor) -> None:
        assert await client.open_blob(REF, descriptor).read_ranges(RANGES) == EXPECTED
        # A new blob object on the same registry does not try multi-range again.
        again = client.open_blob(REF, descriptor)
        assert await again.read_ranges(RANGES) == EXPECTED
        # Ranges this close are coalesced into one request: a round trip costs more.
        assert again.stats.requests == 1

    with_client(fake, body)
    ranges = [r.headers["range"] for r in fake.registry_requests("/blobs/")]
    assert ranges[0] == "bytes=10-29,100000-104999,250000-250099"
    assert ranges[1:] == ["bytes=10-250099", "bytes=10-250099"]


def test_whole_blob_answer_to_multi_range() -> None:
    fake = FakeRegistry(range_mode="whole")

    async def body(client: RegistryClient, descriptor: Descriptor) -> None:
        blob = client.open_blob(REF, descriptor)
        assert await blob.read_ranges(RANGES) == EXPECTED
        assert blob.stats.requests == 1

    with_client(fake, body)


def test_single_part_206_covering_all_ranges() -> None:
    fake = FakeRegistry(range_mode="coalesce")

    async def body(client: RegistryClient, descriptor: Descriptor) -> None:
        assert await client.open_blob(REF, descriptor).read_ranges(RANGES) == EXPECTED

    with_client(fake, body)


@pytest.mark.parametrize(
    ("content_range", "content", "complaint"),
    [
        ("bytes 11-12/300000", DATA[11:13], "did not return bytes 10-11"),
        ("bytes 10-11/999", DATA[10:12], "has 999 bytes, the descriptor says 300000"),
        ("bytes 10-12/300000", DATA[10:12], "announces 3 bytes, got 2"),
        (None, DATA[10:12], "without Content-Range"),
        ("bytes=10-11", DATA[10:12], "malformed Content-Range"),
    ],
)
def test_content_range_mismatch(content_range: str | None, content: bytes, complaint: str) -> None:
    fake = FakeRegistry()
    headers = {"Content-Range": content_range} if content_range else {}
    fake.queue(REGISTRY, httpx.Response(206, content=content, headers=headers))

    async def body(client: RegistryClient, descriptor: Descriptor) -> None:
        with pytest.raises(RegistryError, match=complaint):
            await client.open_blob(REF, descriptor).read_at(10, 2)

    with_client(fake, body)


def test_read_outside_the_blob_is_a_programming_error() -> None:
    async def body(client: RegistryClient, descriptor: Descriptor) -> None:
        with pytest.raises(ValueError, match="outside"):
            await client.open_blob(REF, descriptor).read_at(len(DATA) - 1, 2)

    with_client(FakeRegistry(), body)


def test_redirect_is_resolved_once_without_forwarding_authorization() -> None:
    fake = FakeRegistry(auth="basic", redirect_blobs=True)
    config_dir = _basic_config(fake)

    async def body(client: RegistryClient, descriptor: Descriptor) -> None:
        blob = client.open_blob(REF, descriptor)
        assert await blob.read_at(0, 10) == DATA[:10]
        assert await blob.read_ranges(RANGES) == EXPECTED
        # The signed URL expires: the CDN says 403 and the redirect is resolved again.
        first_signature = next(r for r in fake.requests if r.url.host == CDN).url.params
        fake.expired_signatures.add(first_signature["signature"])
        assert await blob.read_at(5, 5) == DATA[5:10]
        assert await client.get_blob(REF, descriptor) == DATA

    with_client(fake, body, docker_config=config_dir)
    cdn = [r for r in fake.requests if r.url.host == CDN]
    assert all("authorization" not in r.headers for r in cdn)
    assert [r.url.params["signature"] for r in cdn][:4] == ["sig0", "sig0", "sig0", "sig1"]
    registry_gets = [r for r in fake.registry_requests("/blobs/") if "authorization" in r.headers]
    assert len(registry_gets) == 3  # first read, after the 403, and get_blob's own endpoint


def test_stream_blob_raises_at_the_end_on_a_wrong_digest() -> None:
    fake = FakeRegistry()
    tampered = bytearray(DATA)
    tampered[-1] ^= 1
    pieces: list[bytes] = []

    async def body(client: RegistryClient, descriptor: Descriptor) -> None:
        fake.tampered[descriptor.digest] = bytes(tampered)
        with pytest.raises(DigestMismatchError, match="content hashes to"):
            async for piece in client.stream_blob(REF, descriptor):
                pieces.append(piece)
        with pytest.raises(DigestMismatchError):
            await client.get_blob(REF, descriptor)

    with_client(fake, body)
    assert b"".join(pieces) == bytes(tampered)  # every piece came before the verdict


def test_blob_longer_or_shorter_than_its_descriptor() -> None:
    fake = FakeRegistry()

    async def body(client: RegistryClient, descriptor: Descriptor) -> None:
        fake.tampered[descriptor.digest] = DATA + b"x"
        with pytest.raises(DigestMismatchError, match="longer"):
            await client.get_blob(REF, descriptor)
        fake.tampered[descriptor.digest] = DATA[:-1]
        with pytest.raises(RegistryError, match="got 299999 bytes"):
            await client.get_blob(REF, descriptor)

    with_client(fake, body)


def test_missing_blob_is_not_found() -> None:
    from lazybuild.errors import NotFoundError

    async def body(client: RegistryClient, descriptor: Descriptor) -> None:
        other = descriptor_for(b"never pushed")
        with pytest.raises(NotFoundError, match="BLOB_UNKNOWN"):
            await client.get_blob(REF, other)
        assert not await client.has_blob(REF, other.digest)
        assert await client.has_blob(REF, descriptor.digest)

    with_client(FakeRegistry(), body)


def _basic_config(fake: FakeRegistry) -> Any:
    import base64
    import json
    import tempfile
    from pathlib import Path

    directory = Path(tempfile.mkdtemp(prefix="lazybuild-test-"))
    auth = base64.b64encode(f"{fake.username}:{fake.password}".encode()).decode()
    (directory / "config.json").write_text(json.dumps({"auths": {REGISTRY: {"auth": auth}}}))
    return directory


def test_single_range_mode_keeps_distant_ranges_apart() -> None:
    fake = FakeRegistry()
    distant = [(0, 10), (299_000, 10)]

    async def body(client: RegistryClient, descriptor: Descriptor) -> None:
        blob = client.open_blob(REF, descriptor)
        assert await blob.read_ranges(distant) == [DATA[0:10], DATA[299_000:299_010]]
        assert blob.stats.requests == 2

    with_client(fake, body, single_range_registries=[REGISTRY])
    ranges = [r.headers["range"] for r in fake.registry_requests("/blobs/")]
    assert ranges == ["bytes=0-9", "bytes=299000-299009"]


class _DropsAfter(httpx.AsyncByteStream):
    """A response body that breaks off after ``keep`` bytes, like a reset connection."""

    def __init__(self, data: bytes, keep: int) -> None:
        self._data, self._keep = data, keep

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._data[: self._keep]
        raise httpx.ReadError("connection reset by peer")


def test_interrupted_stream_resumes_with_a_range_request() -> None:
    fake = FakeRegistry()
    fake.queue(REGISTRY, httpx.Response(200, stream=_DropsAfter(DATA, 100_000)))

    async def body(client: RegistryClient, descriptor: Descriptor) -> None:
        assert await client.get_blob(REF, descriptor) == DATA

    with_client(fake, body)
    ranges = [r.headers.get("range") for r in fake.registry_requests("/blobs/")]
    assert ranges == [None, "bytes=100000-"]


class _Paused(httpx.AsyncByteStream):
    """A body that sends ``head`` bytes, then waits for ``resume`` before the rest."""

    def __init__(self, data: bytes, head: int, resume: trio.Event) -> None:
        self._data, self._head, self._resume = data, head, resume

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._data[: self._head]
        await self._resume.wait()
        yield self._data[self._head :]


def test_streamed_ranges_are_handed_over_before_the_answer_ends() -> None:
    fake = FakeRegistry()
    resume = trio.Event()
    span = DATA[1000:200_010]
    headers = {"Content-Range": "bytes 1000-200009/300000"}
    fake.queue(REGISTRY, httpx.Response(206, stream=_Paused(span, 50_000, resume), headers=headers))
    wanted = [(1000, 10), (200_000, 10), (30_000, 100)]
    seen: list[tuple[int, bytes]] = []

    def arrived(index: int, data: bytes) -> None:
        seen.append((index, data))
        if len(seen) == 2:
            resume.set()  # the body goes on only once the first ranges were handed over

    async def body(client: RegistryClient, descriptor: Descriptor) -> None:
        with trio.fail_after(5):
            await client.open_blob(REF, descriptor).stream_ranges(wanted, arrived)

    with_client(fake, body, single_range_registries=[REGISTRY])
    assert seen == [(0, DATA[1000:1010]), (2, DATA[30_000:30_100]), (1, DATA[200_000:200_010])]


def test_ranges_handed_over_before_a_broken_answer_stand_and_the_rest_resumes() -> None:
    fake = FakeRegistry()
    headers = {"Content-Range": "bytes 0-99999/300000"}
    fake.queue(
        REGISTRY, httpx.Response(206, stream=_DropsAfter(DATA[:100_000], 60_000), headers=headers)
    )
    seen: dict[int, bytes] = {}

    async def body(client: RegistryClient, descriptor: Descriptor) -> None:
        blob = client.open_blob(REF, descriptor)
        await blob.stream_ranges([(0, 100), (99_000, 1000)], seen.__setitem__)

    with_client(fake, body, single_range_registries=[REGISTRY])
    assert seen == {0: DATA[:100], 1: DATA[99_000:100_000]}


def test_a_short_single_range_answer_is_an_error() -> None:
    fake = FakeRegistry()
    headers = {"Content-Range": "bytes 0-99999/300000"}
    fake.queue(REGISTRY, httpx.Response(206, content=DATA[:80_000], headers=headers))

    async def body(client: RegistryClient, descriptor: Descriptor) -> None:
        with pytest.raises(RegistryError, match="announces 100000 bytes, got 80000"):
            await client.open_blob(REF, descriptor).read_ranges([(0, 100), (99_000, 1000)])

    with_client(fake, body, single_range_registries=[REGISTRY])
