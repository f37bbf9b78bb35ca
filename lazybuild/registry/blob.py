"""Reading blobs: whole and verified, or by byte ranges for lazy mounts.

Blob GETs may be redirected to a CDN or object store. The redirect is resolved
once per blob and its final URL remembered, so each lazy read costs one request;
credentials are never sent to a redirect target on another origin. Signed URLs
expire, so the URL is resolved again after ``REDIRECT_TTL`` or when the target
answers 401/403.
"""

from __future__ import annotations

import logging
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from functools import partial
from typing import Protocol, TypeVar

import httpx
import trio

from lazybuild.errors import DigestMismatchError, RegistryError
from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.digest import new_hasher
from lazybuild.registry.auth import pull_scope
from lazybuild.registry.ranges import (
    Part,
    merge_spans,
    multipart_boundary,
    parse_content_range,
    parse_multipart_byteranges,
    range_header,
    single_part,
)
from lazybuild.registry.reference import Reference
from lazybuild.registry.session import (
    REDIRECT_STATUSES,
    RegistrySession,
    body_pieces,
    error_for,
    same_origin,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

# Receives one requested range's bytes: (its index in the request, the bytes).
RangeSink = Callable[[int, bytes], None]

# ghcr.io's signed S3 URLs reportedly last about 300 s; resolve again well before that.
REDIRECT_TTL = 240.0
MAX_REDIRECT_HOPS = 3
# Ranges closer than this are fetched together in single-range mode: one request for a
# little waste beats many round trips.
DEFAULT_COALESCE_GAP = 256 * 1024
# Keeps the Range header well under common header size limits.
MAX_RANGES_PER_REQUEST = 128
_NO_TRANSFORM = {"Accept-Encoding": "identity"}
# An answer that breaks off is asked for this many times in all.
RANGE_ATTEMPTS = 4
# Bytes of multipart framing allowed per part beyond the parts' own bytes.
MULTIPART_OVERHEAD = 4096


@dataclass(frozen=True)
class FetchStats:
    requests: int
    bytes_received: int


class _BrokeOffError(RegistryError):
    """An answer that ended before its last byte: worth asking for again."""


class RangeModes:
    """Which registries take multi-range requests; shared by all blobs of one client.

    Some registries answer a multi-range request with 400 (GCS behind gcr.io) or with
    the whole blob (ECR); after either, that registry gets single ranges for good.
    """

    def __init__(self, single_range_registries: Iterable[str] = ()) -> None:
        self._single = set(single_range_registries)

    def multi_range_ok(self, registry: str) -> bool:
        return registry not in self._single

    def use_single_ranges(self, registry: str, reason: str) -> None:
        if registry not in self._single:
            log.info("registry %s: %s; using single-range requests from now on", registry, reason)
            self._single.add(registry)


class BlobEndpoint:
    """Where one blob's bytes come from, following (and remembering) redirects."""

    def __init__(
        self,
        session: RegistrySession,
        ref: Reference,
        digest: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session = session
        self.ref = ref
        self.digest = digest
        self.where = f"registry {ref.registry}: blob {ref.name}@{digest}"
        self.requests = 0
        self.bytes_received = 0
        self._clock = clock
        self._location: httpx.URL | None = None
        self._resolved_at = 0.0

    async def get(
        self, headers: Mapping[str, str], also_expect: Collection[int] = ()
    ) -> httpx.Response:
        """A streaming GET answered 200/206 (or a status in ``also_expect``)."""
        expect = {200, 206, *also_expect}
        if self._location is not None and self._clock() - self._resolved_at < REDIRECT_TTL:
            response = await self._get_redirected(self._location, headers)
            if response.status_code not in (401, 403):
                return await self._checked(response, expect)
            # An expired signed URL: resolve the redirect again, once.
            await response.aclose()
        self._location = None
        response = await self.session.request(
            "GET",
            self.ref,
            f"/v2/{self.ref.repository}/blobs/{self.digest}",
            scopes=[pull_scope(self.ref.repository)],
            expect=expect | REDIRECT_STATUSES,
            what=f"GET blob {self.digest}",
            headers=headers,
        )
        self.requests += 1
        registry_origin = response.url
        hops = 0
        while response.status_code in REDIRECT_STATUSES:
            location = response.headers.get("location")
            await response.aclose()
            if not location:
                raise RegistryError(f"{self.where}: redirect without a Location")
            hops += 1
            if hops > MAX_REDIRECT_HOPS:
                raise RegistryError(f"{self.where}: more than {MAX_REDIRECT_HOPS} redirects")
            target = response.url.join(location)
            if same_origin(target, registry_origin):
                response = await self.session.request(
                    "GET",
                    self.ref,
                    target,
                    scopes=[pull_scope(self.ref.repository)],
                    expect=expect | REDIRECT_STATUSES,
                    what=f"GET blob {self.digest}",
                    headers=headers,
                )
                self.requests += 1
            else:
                response = await self._get_redirected(target, headers)
                self._location, self._resolved_at = target, self._clock()
        return await self._checked(response, expect)

    async def _get_redirected(self, url: httpx.URL, headers: Mapping[str, str]) -> httpx.Response:
        # No Authorization: the target is another origin (CDN, S3) that must not see it.
        self.requests += 1
        return await self.session.request_plain(
            "GET", url, host_for_errors=self.ref.registry, headers=headers
        )

    async def _checked(self, response: httpx.Response, expect: Collection[int]) -> httpx.Response:
        if response.status_code not in expect:
            raise await error_for(response, self.ref.registry, f"GET blob {self.digest}")
        return response


async def iter_verified_blob(
    endpoint: BlobEndpoint, descriptor: Descriptor, max_retries: int, backoff: float = 0.25
) -> AsyncIterator[bytes]:
    """The blob's bytes in pieces; raises DigestMismatchError after the last piece if the
    digest or size is wrong. An interrupted download resumes with a Range request."""
    size = descriptor.size
    where = endpoint.where
    hasher = new_hasher(descriptor.digest)
    received = 0
    failures = 0
    while True:
        headers = dict(_NO_TRANSFORM)
        if received:
            headers["Range"] = f"bytes={received}-"
        response = await endpoint.get(headers)
        received_pieces = body_pieces(response)
        try:
            skip = 0
            if response.status_code == 206:
                content_range = parse_content_range(response.headers.get("content-range"), where)
                if content_range.start != received:
                    raise RegistryError(
                        f"{where}: resumed at {content_range.start}, not {received}"
                    )
            elif received:
                skip = received  # the server ignored Range and starts from byte 0 again
            async for received_piece in received_pieces:
                endpoint.bytes_received += len(received_piece)
                piece = received_piece
                if skip:
                    dropped = min(skip, len(piece))
                    piece, skip = piece[dropped:], skip - dropped
                if received + len(piece) > size:
                    raise DigestMismatchError(f"{where}: longer than the {size} bytes described")
                if piece:
                    hasher.update(piece)
                    received += len(piece)
                    yield piece
        except (httpx.TransportError, httpx.StreamError) as exc:
            failures += 1
            if failures > max_retries:
                raise RegistryError(f"{where}: download interrupted: {exc}") from exc
            await trio.sleep(backoff * 2 ** (failures - 1))
            continue
        finally:
            await received_pieces.aclose()
            await response.aclose()
        break
    if received != size:
        raise RegistryError(f"{where}: got {received} bytes, the descriptor says {size}")
    actual = f"{descriptor.digest.split(':', 1)[0]}:{hasher.hexdigest()}"
    if actual != descriptor.digest:
        raise DigestMismatchError(f"{where}: content hashes to {actual}")


class RandomAccessBlob(Protocol):
    """What lazy reads need of a blob: its size, and bytes of ranges (unverified)."""

    size: int

    async def read_at(self, offset: int, length: int) -> bytes: ...

    async def stream_ranges(
        self, ranges: Sequence[tuple[int, int]], arrived: RangeSink
    ) -> None: ...


class RemoteBlob:
    """Random access to a blob in a registry, for lazy reads.

    Range reads are NOT verified here: a digest covers the whole blob. Callers verify
    what they read one level up (eStargz chunk digests from the verified TOC) and
    must not trust bytes from ``read_at``/``read_ranges`` otherwise.
    """

    def __init__(
        self,
        endpoint: BlobEndpoint,
        size: int,
        range_modes: RangeModes,
        coalesce_gap: int = DEFAULT_COALESCE_GAP,
    ) -> None:
        self.size = size
        self._endpoint = endpoint
        self._modes = range_modes
        self._coalesce_gap = coalesce_gap

    @property
    def stats(self) -> FetchStats:
        return FetchStats(self._endpoint.requests, self._endpoint.bytes_received)

    async def read_at(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (unverified, see the class docstring)."""
        return (await self.read_ranges([(offset, length)]))[0]

    async def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """The bytes of each (offset, length) pair, in the order given (unverified)."""
        got: list[bytes] = [b""] * len(ranges)

        def keep(index: int, data: bytes) -> None:
            got[index] = data

        await self.stream_ranges(ranges, keep)
        return got

    async def stream_ranges(self, ranges: Sequence[tuple[int, int]], arrived: RangeSink) -> None:
        """Hand each (offset, length) pair's bytes to ``arrived(index, data)`` (unverified)
        as soon as the last of them is received: the first ranges of a large single-range
        answer are used while the rest is on the wire. Raises RegistryError when a range
        cannot be had; the ranges handed over until then stand.

        One request with a multi-range header when the registry allows it (its parts
        are handed over once the whole answer is in); otherwise one streamed request
        per group of nearby ranges. An answer that breaks off is asked for again, up to
        ``RANGE_ATTEMPTS`` times with a backoff; a streamed one from the byte it broke
        off at, so what arrived is neither fetched nor handed over twice.
        """
        for offset, length in ranges:
            if offset < 0 or length < 0 or offset + length > self.size:
                raise ValueError(f"range ({offset}, {length}) is outside a {self.size}-byte blob")
        delivery = _Delivery(ranges, arrived)
        spans = merge_spans(ranges)
        registry = self._endpoint.ref.registry
        pending = spans
        while len(pending) > 1 and self._modes.multi_range_ok(registry):
            batch, rest = pending[:MAX_RANGES_PER_REQUEST], pending[MAX_RANGES_PER_REQUEST:]
            parts = await self._retrying(partial(self._fetch_multi, batch))
            if parts is None:
                self._modes.use_single_ranges(registry, "multi-range request answered 400")
                break
            delivery.from_parts(parts)
            pending = rest
        if pending:
            leftover = [(start, stop - start) for start, stop in pending]
            for start, stop in merge_spans(leftover, max_gap=self._coalesce_gap):
                stream = delivery.span(start, stop)
                await self._retrying(partial(self._stream_span, stream, stop))
        delivery.check_complete(self._endpoint.where)

    async def _retrying(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """``attempt()`` again while its answer breaks off, up to ``RANGE_ATTEMPTS``."""
        failures = 0
        while True:
            try:
                return await attempt()
            except _BrokeOffError as exc:
                failures += 1
                if failures >= RANGE_ATTEMPTS:
                    raise RegistryError(f"{exc} ({failures} attempts)") from exc
                log.info("%s; asking again", exc)
                await trio.sleep(self._endpoint.session.policy.backoff(failures - 1))

    async def _fetch_multi(self, spans: Sequence[tuple[int, int]]) -> list[Part] | None:
        """Parts covering ``spans``; None when the request was refused with 400."""
        where = self._endpoint.where
        headers = {**_NO_TRANSFORM, "Range": range_header(spans)}
        response = await self._endpoint.get(headers, also_expect={400})
        pieces = body_pieces(response)
        try:
            if response.status_code == 400:
                return None
            if response.status_code == 200:
                self._modes.use_single_ranges(
                    self._endpoint.ref.registry, "multi-range request answered with the blob"
                )
                return await self._spans_of_whole_blob(response, pieces, spans)
            # Parts may be merged into one, but never hold more than the spans' extent.
            limit = spans[-1][1] - spans[0][0] + MULTIPART_OVERHEAD * len(spans)
            body = bytearray()
            async for piece in pieces:
                self._endpoint.bytes_received += len(piece)
                body.extend(piece)
                if len(body) > limit:
                    raise RegistryError(f"{where}: multi-range answer is larger than the blob")
        except (httpx.TransportError, httpx.StreamError) as exc:
            raise _BrokeOffError(
                f"{where}: multi-range answer for {len(spans)} range(s) broke off: {exc}"
            ) from exc
        finally:
            await pieces.aclose()
            await response.aclose()
        boundary = multipart_boundary(response.headers.get("content-type", ""))
        if boundary is not None:
            parts = parse_multipart_byteranges(bytes(body), boundary, where)
        else:
            parts = [single_part(bytes(body), response.headers.get("content-range"), where)]
        for part in parts:
            self._check_total(part.total)
        return parts

    async def _spans_of_whole_blob(
        self,
        response: httpx.Response,
        pieces: AsyncIterator[bytes],
        spans: Sequence[tuple[int, int]],
    ) -> list[Part]:
        """Keep only the spans of a 200 answer, and stop reading after the last one."""
        announced = response.headers.get("content-length")
        if announced is not None and announced.isdigit():
            self._check_total(int(announced))
        last_needed = max(stop for _, stop in spans)
        buffers = [bytearray() for _ in spans]
        position = 0
        async for piece in pieces:
            self._endpoint.bytes_received += len(piece)
            piece_stop = position + len(piece)
            for (start, stop), buffer in zip(spans, buffers, strict=True):
                lo, hi = max(start, position), min(stop, piece_stop)
                if lo < hi:
                    buffer.extend(piece[lo - position : hi - position])
            position = piece_stop
            if position >= last_needed:
                break
        if position < last_needed:
            raise RegistryError(f"{self._endpoint.where}: blob ended at byte {position}")
        return [
            Part(start, bytes(buffer)) for (start, _), buffer in zip(spans, buffers, strict=True)
        ]

    async def _stream_span(self, stream: _SpanStream, stop: int) -> None:
        """The bytes of ``stream`` from where it stands up to ``stop`` in one single-range
        request, handed to it as they come (a 200 answer with the whole blob is read up to
        ``stop`` only). Raises ``_BrokeOffError`` when the answer ends early."""
        start = stream.position
        if start >= stop:
            return
        where = self._endpoint.where
        headers = {**_NO_TRANSFORM, "Range": range_header([(start, stop)])}
        response = await self._endpoint.get(headers)
        pieces = body_pieces(response)
        header: str | None = None
        end = stop
        position = first = start
        try:
            if response.status_code == 206:
                header = response.headers.get("content-range")
                content_range = parse_content_range(header, where)
                self._check_total(content_range.total)
                if content_range.start > start or content_range.end + 1 < stop:
                    raise RegistryError(
                        f"{where}: the registry did not return bytes {start}-{stop - 1} "
                        f"(it sent {content_range.start}-{content_range.end})"
                    )
                position, end = content_range.start, content_range.end + 1
                first = position
            else:
                announced = response.headers.get("content-length")
                if announced is not None and announced.isdigit():
                    self._check_total(int(announced))
                position, end = 0, stop  # the rest of the blob is not needed
            async for piece in pieces:
                self._endpoint.bytes_received += len(piece)
                lo, hi = max(start, position), min(stop, position + len(piece))
                if lo < hi:
                    stream.extend(piece[lo - position : hi - position])
                position += len(piece)
                if position >= end:
                    break
        except (httpx.TransportError, httpx.StreamError) as exc:
            raise _BrokeOffError(
                f"{where}: reading bytes {start}-{stop - 1} broke off at byte {position}: {exc}"
            ) from exc
        finally:
            await pieces.aclose()
            await response.aclose()
        if response.status_code == 206 and position != end:
            # A complete answer that holds less than it announces: a registry that lies,
            # not a connection that broke.
            raise RegistryError(
                f"{where}: Content-Range {header!r} announces {end - first} bytes, "
                f"got {position - first}"
            )
        if position < stop:
            raise RegistryError(f"{where}: blob ended at byte {position}")

    def _check_total(self, total: int | None) -> None:
        if total is not None and total != self.size:
            raise RegistryError(
                f"{self._endpoint.where}: the registry has {total} bytes, the descriptor says "
                f"{self.size}"
            )


class _Delivery:
    """Hands each requested range over once, as soon as the bytes holding it are in."""

    def __init__(self, ranges: Sequence[tuple[int, int]], arrived: RangeSink) -> None:
        self._ranges = ranges
        self._arrived = arrived
        self._delivered = [False] * len(ranges)
        for index, (_, length) in enumerate(ranges):
            if length == 0:
                self.hand_over(index, b"")

    def from_parts(self, parts: Sequence[Part]) -> None:
        """Every range that one of ``parts`` holds whole."""
        for index, (offset, length) in enumerate(self._ranges):
            if self._delivered[index]:
                continue
            for part in parts:
                if part.start <= offset and offset + length <= part.stop:
                    begin = offset - part.start
                    self.hand_over(index, part.data[begin : begin + length])
                    break

    def span(self, start: int, stop: int) -> _SpanStream:
        """A receiver for bytes [start, stop), arriving in order."""
        inside = [
            index
            for index, (offset, length) in enumerate(self._ranges)
            if not self._delivered[index] and start <= offset and offset + length <= stop
        ]
        inside.sort(key=lambda index: sum(self._ranges[index]))
        return _SpanStream(self, start, inside)

    def check_complete(self, where: str) -> None:
        for index, done in enumerate(self._delivered):
            if not done:
                offset, length = self._ranges[index]
                raise RegistryError(
                    f"{where}: the registry did not return bytes {offset}-{offset + length - 1}"
                )

    def range_at(self, index: int) -> tuple[int, int]:
        return self._ranges[index]

    def hand_over(self, index: int, data: bytes) -> None:
        self._delivered[index] = True
        self._arrived(index, data)


class _SpanStream:
    """The bytes of one span as they arrive; hands over its ranges by their ends."""

    def __init__(self, delivery: _Delivery, start: int, by_end: list[int]) -> None:
        self._delivery = delivery
        self._start = start
        self._by_end = by_end
        self._next = 0
        self._buffer = bytearray()

    @property
    def position(self) -> int:
        """The blob offset of the next byte expected (where a resumed request starts)."""
        return self._start + len(self._buffer)

    def extend(self, data: bytes) -> None:
        self._buffer.extend(data)
        known_stop = self._start + len(self._buffer)
        while self._next < len(self._by_end):
            index = self._by_end[self._next]
            offset, length = self._delivery.range_at(index)
            if offset + length > known_stop:
                break
            begin = offset - self._start
            self._delivery.hand_over(index, bytes(self._buffer[begin : begin + length]))
            self._next += 1
