"""The control protocol and the service's request handling, over in-memory streams."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import trio
import trio.testing

from lazybuild.errors import FormatError, NotFoundError
from lazybuild.estargz.toc import PREFETCH_FILE_MAX_BYTES
from lazybuild.lazyfs import control
from lazybuild.lazyfs.client import FetchReport, LayerFetch
from lazybuild.lazyfs.fuse import AccessLog
from lazybuild.lazyfs.readrecorder import PIECE_BYTES, ReadRecorder
from lazybuild.lazyfs.server import ControlServer
from lazybuild.lazyfs.service import parse_args
from lazybuild.lazyfs.unpack import is_lazy_layer
from lazybuild.oci import mediatypes
from lazybuild.oci.descriptor import Descriptor

DIGEST = "sha256:" + "ab" * 32


class FakeLayers:
    def __init__(self) -> None:
        self.added: list[str] = []
        self.fetched: list[str] = []
        self.prefetched_ranges: list[control.LayerRanges] = []
        self.pages_forgotten = 0

    async def add(self, ref_text: str, descriptor_json: dict[str, Any]) -> control.LayerAdded:
        if ref_text == "missing":
            raise NotFoundError("blob unknown to registry\nsecond line")
        self.added.append(ref_text)
        return control.LayerAdded(path=f"/mnt/{DIGEST[7:]}", mode="lazy", digest=DIGEST)

    async def fetch_all(self, digests: Sequence[str]) -> None:
        self.fetched.extend(digests)

    async def prefetch_files(
        self,
        files: dict[str, list[str]],
        ranges: control.LayerRanges,
        layers: Mapping[str, control.AddLayer] | None = None,
    ) -> tuple[int, int]:
        self.prefetched_ranges.append(ranges)
        return sum(len(paths) for paths in files.values()), 1000

    async def forget_big_file_pages(self) -> None:
        self.pages_forgotten += 1

    async def note_big_file_reads(self, note: AccessLog) -> None:
        note(DIGEST[7:], "usr/lib/big.so", 0, 4096, 64 << 20)

    def stats(self) -> list[dict[str, Any]]:
        return [{"mode": "lazy", "digest": DIGEST, "size": 10, "bytes_fetched": 4}]


def test_requests_round_trip() -> None:
    requests: list[control.Request] = [
        control.AddLayer(ref="r/x:1", descriptor={"digest": DIGEST}),
        control.Stats(),
        control.FetchAll(digests=(DIGEST,)),
        control.MarkReads(),
        control.MarkReads(reread_big_files=True),
        control.ReadsSince(mark=7),
        control.PrefetchFiles(files={DIGEST: ["usr/bin/cc1", "etc/passwd"]}),
        control.PrefetchFiles(
            files={DIGEST: ["usr/lib/modules"]},
            ranges={DIGEST: {"usr/lib/modules": [(0, 65536), (1 << 30, 131072)]}},
        ),
        control.PrefetchFiles(
            files={DIGEST: ["usr/bin/go"]},
            layers={DIGEST: control.AddLayer(ref="r/golang:1", descriptor={"digest": DIGEST})},
        ),
        control.Shutdown(),
    ]
    for request in requests:
        line = control.encode_request(request)
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        assert control.decode_request(line[:-1]) == request


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"{", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"op":"dance"}', "unknown control operation"),
        (b'{"op":"add_layer","ref":1}', "needs a string 'ref'"),
        (b'{"op":"reads_since","mark":-1}', "non-negative integer"),
        (b'{"op":"prefetch_files","files":{"d":"p"}}', "lists of paths"),
        (b'{"op":"prefetch_files","files":{},"ranges":{"d":{"p":[[1]]}}}', "to ranges"),
        (b'{"op":"prefetch_files","files":{},"ranges":{"d":{"p":[[0,-1]]}}}', "to ranges"),
        (b'{"op":"prefetch_files","files":{},"layers":[]}', "'layers' must be an object"),
        (b'{"op":"prefetch_files","files":{},"layers":{"d":{"ref":1}}}', "needs a string 'ref'"),
    ],
)
def test_bad_requests_are_format_errors(line: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        control.decode_request(line)


def test_failure_is_one_line() -> None:
    assert control.failure("a\nb  c") == {"ok": False, "error": "a b c"}


def test_line_reader_splits_and_limits() -> None:
    async def main() -> None:
        send, receive = trio.testing.memory_stream_pair()
        await send.send_all(b'{"a":1}\n{"b"')
        await send.send_all(b":2}\n")
        await send.send_eof()
        reader = control.LineReader(receive)
        assert await reader.next_line() == b'{"a":1}'
        assert await reader.next_line() == b'{"b":2}'
        assert await reader.next_line() is None

    trio.run(main)


def converse(lines: list[bytes]) -> tuple[list[dict[str, Any]], bool]:
    """Send ``lines`` to a ControlServer; its replies, and whether it asked to stop."""

    async def main() -> tuple[list[dict[str, Any]], bool]:
        server_side, client_side = trio.testing.memory_stream_pair()
        stop = trio.CancelScope()
        server = ControlServer(FakeLayers(), stop)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.handle, server_side)
            for line in lines:
                await client_side.send_all(line + b"\n")
            await client_side.send_eof()
            reader = control.LineReader(client_side)
            replies = []
            while (reply := await reader.next_line()) is not None:
                replies.append(json.loads(reply))
        return replies, stop.cancel_called

    return trio.run(main)


def test_server_answers_each_request_and_errors_in_one_line() -> None:
    add = control.encode_request(control.AddLayer("r/x:1", {"digest": DIGEST}))[:-1]
    missing = control.encode_request(control.AddLayer("missing", {}))[:-1]
    stats = control.encode_request(control.Stats())[:-1]
    replies, stopped = converse([add, missing, b"nonsense", stats])
    assert replies[0] == {
        "ok": True,
        "path": f"/mnt/{DIGEST[7:]}",
        "mode": "lazy",
        "digest": DIGEST,
    }
    assert replies[1] == {"ok": False, "error": "blob unknown to registry second line"}
    assert replies[2]["ok"] is False and "not JSON" in replies[2]["error"]
    assert replies[3]["layers"][0]["bytes_fetched"] == 4
    assert len(replies) == 4
    assert not stopped


def test_shutdown_is_answered_then_stops_the_service() -> None:
    replies, stopped = converse([b'{"op":"shutdown"}', b'{"op":"stats"}'])
    assert replies == [{"ok": True, "shutdown": True}]
    assert stopped


def test_fetch_report_from_stats_entries() -> None:
    entries = [
        {"mode": "lazy", "digest": DIGEST, "size": 100, "bytes_fetched": 30, "requests": 2,
         "cache_hits": 5, "fetch_seconds": 0.5, "chunks_fetched": 3},
        {"mode": "unpacked", "digest": DIGEST, "size": 50, "bytes_fetched": 50, "requests": 1,
         "cache_hits": 0, "fetch_seconds": 1.0, "reused": False},
    ]  # fmt: skip
    report = FetchReport(tuple(LayerFetch.from_json(entry) for entry in entries))
    assert report.bytes_fetched == 80 and report.size == 150
    assert report.layers[0] == LayerFetch(DIGEST, "lazy", 100, 30, 2, 5, 0.5)
    assert report.to_json()["layers"][1]["mode"] == "unpacked"


def test_only_annotated_gzip_layers_are_lazy() -> None:
    annotated = {mediatypes.TOC_DIGEST_ANNOTATION: DIGEST}
    assert is_lazy_layer(Descriptor(mediatypes.OCI_LAYER_GZIP, DIGEST, 1, annotated))
    assert is_lazy_layer(Descriptor(mediatypes.DOCKER_LAYER_GZIP, DIGEST, 1, annotated))
    assert not is_lazy_layer(Descriptor(mediatypes.OCI_LAYER_GZIP, DIGEST, 1))
    assert not is_lazy_layer(Descriptor(mediatypes.OCI_LAYER_ZSTD, DIGEST, 1, annotated))


def test_service_arguments() -> None:
    options = parse_args(
        ["--mountpoint", "/m", "--control", "/c.sock", "--state-dir", "/s",
         "--insecure-registry", "a:5000", "--insecure-registry", "b",
         "--no-background-fetch", "--cache-max-bytes", "123"]
    )  # fmt: skip
    assert options.insecure_registries == ("a:5000", "b")
    assert not options.background_fetch and options.cache_max_bytes == 123
    assert parse_args(
        ["--mountpoint", "/m", "--control", "/c", "--state-dir", "/s"]
    ).background_fetch


def test_a_client_that_goes_away_does_not_stop_the_server() -> None:
    async def main() -> None:
        server_side, client_side = trio.testing.memory_stream_pair()
        stop = trio.CancelScope()
        await client_side.send_all(b'{"op":"stats"}\n')
        await client_side.aclose()  # before the reply can be sent
        await ControlServer(FakeLayers(), stop).handle(server_side)
        assert not stop.cancel_called

    trio.run(main)


def test_server_reports_the_reads_since_a_mark_and_schedules_prefetches() -> None:
    layers = FakeLayers()
    big = PREFETCH_FILE_MAX_BYTES + 1
    places = {DIGEST: {"usr/lib/modules": [(0, 65536)]}}

    async def main() -> list[dict[str, Any]]:
        server_side, client_side = trio.testing.memory_stream_pair()
        reads = ReadRecorder()
        server = ControlServer(layers, trio.CancelScope(), reads)
        replies = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.handle, server_side)
            reader = control.LineReader(client_side)
            for request in (
                control.MarkReads(reread_big_files=True),
                control.ReadsSince(mark=0),
                control.PrefetchFiles(files={DIGEST: ["a", "b"]}, ranges=places),
            ):
                if isinstance(request, control.ReadsSince):
                    # The filesystem names layers by hex.
                    reads(DIGEST[7:], "usr/bin/cc1", 0, 4096, 10_000)
                    reads(DIGEST[7:], "usr/lib/modules", 100, 10, big)
                await client_side.send_all(control.encode_request(request))
                line = await reader.next_line()
                assert line is not None
                replies.append(json.loads(line))
            await client_side.send_eof()
        return replies

    mark, since, prefetch = trio.run(main)
    assert mark == {"ok": True, "mark": 0}
    assert layers.pages_forgotten == 1
    assert since == {
        "ok": True,
        # The last as a layer mounted from its whole image tells of it.
        "layers": {DIGEST: ["usr/bin/cc1", "usr/lib/modules", "usr/lib/big.so"]},
        "ranges": {
            DIGEST: {"usr/lib/modules": [[0, PIECE_BYTES]], "usr/lib/big.so": [[0, PIECE_BYTES]]}
        },
    }
    assert prefetch == {"ok": True, "chunks": 2, "bytes": 1000}
    assert layers.prefetched_ranges == [places]
