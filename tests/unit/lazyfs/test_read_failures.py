"""Issue 13: a read the mount fails is recorded (layer, file, why) for its owner to
report, and a control request failing as an exception group answers with its error."""

from __future__ import annotations

import errno
import json
from collections.abc import Sequence
from typing import Any

import pyfuse3
import pytest
import trio
import trio.testing

from lazybuild.errors import DigestMismatchError, RegistryError
from lazybuild.lazyfs import control
from lazybuild.lazyfs.client import ReadFailure, describe_read_failures
from lazybuild.lazyfs.fuse import LazyFilesystem
from lazybuild.lazyfs.server import ControlServer
from tests.unit.estargz.esgz_helpers import Member
from tests.unit.lazyfs.test_control_protocol import FakeLayers
from tests.unit.lazyfs.test_fuse_images import BlobContent, image_of, read_image

LAYER = "ab" * 32


def test_a_failed_read_is_eio_for_the_workload_and_recorded_for_the_owner() -> None:
    fs = LazyFilesystem()
    content = BlobContent([Member("python3", data=b"\x7fELF" * 10)])
    image_of(content, LAYER, fs)
    content.fail_with = DigestMismatchError(
        "layer sha256:x: file 'python3': chunk 0 hashes to sha256:y (file range 0+40)"
    )
    for _ in range(3):  # the kernel retries; one record per file
        with pytest.raises(pyfuse3.FUSEError) as caught:
            read_image(fs, LAYER)
        assert caught.value.errno == errno.EIO
    failures = fs.read_failures()
    assert failures == [
        {"layer": LAYER, "path": "/python3", "error": str(content.fail_with)},
    ]
    parsed = ReadFailure.from_json(failures[0])
    assert parsed is not None and parsed.layer == f"sha256:{LAYER}"
    line = describe_read_failures([parsed, parsed])
    assert line.startswith(f"the lazy filesystem: reading /python3 of layer sha256:{LAYER}")
    assert "hashes to sha256:y" in line and line.endswith("(and 1 more file(s))")
    assert "\n" not in line


class _GroupFailingLayers(FakeLayers):
    async def fetch_all(self, digests: Sequence[str]) -> None:
        async with trio.open_nursery() as nursery:
            for digest in digests:
                nursery.start_soon(self._fail, digest)

    async def _fail(self, digest: str) -> None:
        raise RegistryError(f"layer {digest}: reading bytes 0-9 broke off (4 attempts)")


def _converse(server: ControlServer, request: control.Request) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        server_side, client_side = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.handle, server_side)
            await client_side.send_all(control.encode_request(request))
            await client_side.send_eof()
            line = await control.LineReader(client_side).next_line()
            assert line is not None
        reply: dict[str, Any] = json.loads(line)
        return reply

    return trio.run(main)


def test_a_request_failing_as_an_exception_group_answers_with_its_error() -> None:
    server = ControlServer(_GroupFailingLayers(), trio.CancelScope())
    reply = _converse(server, control.FetchAll(("sha256:aa", "sha256:bb")))
    assert reply["ok"] is False
    assert reply["error"].startswith("layer sha256:")
    assert "broke off (4 attempts)" in reply["error"]
    assert "internal error" not in reply["error"] and "ExceptionGroup" not in reply["error"]


def test_stats_carry_the_read_failures() -> None:
    failures = [{"layer": LAYER, "path": "/etc/passwd", "error": "cannot reach registry"}]
    server = ControlServer(FakeLayers(), trio.CancelScope(), read_failures=lambda: failures)
    reply = _converse(server, control.Stats())
    assert reply["ok"] is True and reply["failures"] == failures


def test_the_fetch_report_lists_failed_reads() -> None:
    from lazybuild.lazyfs.client import FetchReport, LayerFetch
    from lazybuild.run.imagemount import render_fetch_report

    digest = f"sha256:{LAYER}"
    layer = LayerFetch(digest, "lazy", 1000, 10, 1, 0, 0.1)
    failures = tuple(
        ReadFailure(digest, f"/f{n}", f"layer {digest}: file 'f{n}': does not verify")
        for n in range(7)
    )
    text = render_fetch_report(FetchReport((layer,), failures))
    failed = [line for line in text.splitlines() if line.startswith("  failed:")]
    assert failed[0] == f"  failed: reading /f0 of layer {digest} failed: does not verify"
    assert failed[-1] == "  failed: 2 more file(s)" and len(failed) == 6
    assert FetchReport((layer,), failures).to_json()["failures"][0]["path"] == "/f0"
