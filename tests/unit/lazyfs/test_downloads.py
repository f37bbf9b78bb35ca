"""Whole-layer downloads under way in the filesystem process: listed by ``stats``, read
by the client, shown by ``run``/``mount`` on the transfer board and by a build's display."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, cast

import trio
import trio.testing

from lazybuild.lazyfs import control
from lazybuild.lazyfs.client import (
    FetchReport,
    LayerDownload,
    LayerFetch,
    LayerMount,
    LazyMountService,
)
from lazybuild.lazyfs.server import ControlServer, LayerSource
from lazybuild.progress import transfer
from lazybuild.progress.transfer import TerminalView
from lazybuild.run import imagemount
from tests.unit.lazyfs.test_control_protocol import FakeLayers

DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32
MIB = 1 << 20


def stats_reply(server: ControlServer) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        server_side, client_side = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.handle, server_side)
            await client_side.send_all(control.encode_request(control.Stats()))
            await client_side.send_eof()
            line = await control.LineReader(client_side).next_line()
        assert line is not None
        return cast(dict[str, Any], json.loads(line))

    return trio.run(main)


def test_stats_lists_the_downloads_under_way() -> None:
    download = {"digest": DIGEST, "done": 5, "total": 10, "seconds": 1.5}
    server = ControlServer(FakeLayers(), trio.CancelScope(), downloads=lambda: [download])
    assert stats_reply(server)["downloads"] == [download]
    assert stats_reply(ControlServer(FakeLayers(), trio.CancelScope()))["downloads"] == []


def test_the_client_reads_downloads_and_skips_malformed_ones(monkeypatch: Any) -> None:
    reply = {
        "ok": True,
        "layers": [],
        "downloads": [
            {"digest": DIGEST, "done": 5, "total": 10, "seconds": 1.5},
            {"digest": OTHER, "done": 1, "total": None},
            {"digest": DIGEST, "done": "5"},
            "nonsense",
        ],
    }
    service = LazyMountService(Path("/nonexistent"))

    async def answer(request: control.Request) -> dict[str, Any]:
        return reply

    monkeypatch.setattr(service, "_request", answer)
    report = trio.run(service.stats)
    assert report.downloads == (
        LayerDownload(DIGEST, 5, 10, 1.5),
        LayerDownload(OTHER, 1, None, 0.0),
    )
    assert report.downloads[0].to_json() == {
        "digest": DIGEST,
        "done": 5,
        "total": 10,
        "seconds": 1.5,
    }
    # One build's share of a shared process keeps them: they are under way now.
    assert report.since(FetchReport(()), set()).downloads == report.downloads


def test_a_layer_being_added_reports_its_download_to_the_process_board() -> None:
    source = LayerSource(
        filesystem=cast(Any, None),
        mountpoint=Path("/m"),
        state_dir=Path("/s"),
        client=cast(Any, None),
        cache=cast(Any, None),
        gate=cast(Any, None),
        nursery=cast(Any, None),
        background_fetch=False,
    )
    listed: list[list[dict[str, Any]]] = []
    added = control.LayerAdded(path="/u", mode="unpacked", digest=DIGEST)

    async def fake_open(ref: object, image: str, descriptor: object) -> Any:
        async def download() -> None:  # a task, as unpack_layer's download is
            moving = transfer.begin(DIGEST, 10 * MIB, "downloading")
            assert moving is not None
            moving.advance(3 * MIB)
            listed.append(source.downloads())
            moving.end()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(download)
        listed.append(source.downloads())
        from lazybuild.lazyfs.server import _Mounted

        return _Mounted(added, None, None)

    source._open = fake_open  # type: ignore[method-assign]
    descriptor = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                  "digest": DIGEST, "size": 10 * MIB}  # fmt: skip
    assert trio.run(source.add, "r.example/x:1", descriptor) == added
    (during, after) = listed
    assert [(d["digest"], d["done"], d["total"]) for d in during] == [(DIGEST, 3 * MIB, 10 * MIB)]
    assert after == []
    assert transfer.active() is None


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class FakeService:
    """Reports a download that moves on at each ``stats``, then its layer unpacked."""

    def __init__(self, steps: list[int]) -> None:
        self.steps = steps
        self.asked = 0

    async def stats(self) -> FetchReport:
        self.asked += 1
        if self.steps:
            done = self.steps.pop(0)
            return FetchReport((), (), (LayerDownload(DIGEST, done, 8 * MIB, 1.0),))
        layer = LayerFetch(DIGEST, "unpacked", 8 * MIB, 8 * MIB, 1, 0, 2.0)
        return FetchReport((layer,))


def test_run_and_mount_show_the_downloads_while_layers_are_added() -> None:
    stream = FakeTerminal()
    service = FakeService([MIB, 4 * MIB])
    mount = LayerMount(Path("/u"), "unpacked", DIGEST)

    async def adding() -> list[LayerMount]:
        await trio.sleep(imagemount._DOWNLOADS_POLL_SECONDS * 2.5)
        return [mount]

    async def main() -> list[LayerMount]:
        with transfer.reporting(TerminalView(stream, width=120)):
            return await imagemount._adding_shown(cast(Any, service), adding)

    assert trio.run(main) == [mount]
    text = stream.getvalue()
    assert "sha256:abababababab downloading 1.0 MiB / 8.0 MiB" in text
    assert "sha256:abababababab downloaded 8.0 MiB in " in text
    assert service.asked >= 2


def test_without_a_board_nothing_is_asked() -> None:
    service = FakeService([MIB])

    async def adding() -> list[LayerMount]:
        await trio.sleep(0.01)
        return []

    assert trio.run(imagemount._adding_shown, cast(Any, service), adding) == []
    assert service.asked == 0
