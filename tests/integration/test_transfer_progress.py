"""Transfer progress against a real Distribution registry, drawn on a real pseudo-terminal."""

from __future__ import annotations

import hashlib
import os
import pty
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import pytest
import trio

from lazybuild.cli.main import main
from lazybuild.oci import mediatypes
from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.layout import OciLayout
from lazybuild.progress import transfer
from lazybuild.progress.transfer import TerminalView, Transfer, reporting, terminal_view
from lazybuild.registry.client import RegistryClient
from lazybuild.registry.reference import Reference
from tests.e2e.buildsupport import lazybuild, rawjson_events, write_context
from tests.support.imagebuild import write_image, write_layer
from tests.support.push import push_oci_layout
from tests.support.registry import Registry
from tests.support.wanproxy import WanProxy

pytestmark = pytest.mark.root

MIB = 1024 * 1024


def descriptor(data: bytes) -> Descriptor:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return Descriptor(mediatypes.OCI_LAYER_GZIP, digest, len(data))


class Screen:
    """What a terminal on the pty's other side received (drained by a thread, so the
    writer never blocks on a full pty buffer)."""

    def __init__(self, master: int) -> None:
        self._master = master
        self._chunks: list[bytes] = []
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self._master, 65536)
            except OSError:  # the other side closed
                return
            if not data:
                return
            self._chunks.append(data)

    def text(self) -> str:
        self._thread.join(timeout=5)
        return b"".join(self._chunks).decode(errors="replace")


@contextmanager
def pseudo_terminal() -> Iterator[tuple[TextIO, Screen]]:
    master, slave = pty.openpty()
    screen = Screen(master)
    stream = open(slave, "w", encoding="utf-8", closefd=True)  # noqa: SIM115 - closed below
    try:
        yield stream, screen
    finally:
        stream.close()
        screen.text()
        os.close(master)


class Watched(TerminalView):
    """A terminal view that keeps every figure reported to it."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream, interval=0.0)
        self.figures: dict[str, list[int]] = {}

    def moved(self, moving: Transfer, done: int) -> None:
        self.figures.setdefault(moving.digest, []).append(done)
        super().moved(moving, done)


def test_push_and_download_reach_their_totals_on_a_terminal(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Loopback is fast: show every transfer, however short.
    monkeypatch.setattr(transfer, "SHOW_AFTER", 0.0)
    ref = Reference.parse(f"{registry.host}/it/transferprogress:v1")
    whole = os.urandom(3 * MIB)  # one PUT, sent in reported slices
    chunked = os.urandom(5 * MIB)  # PATCHes of 2 MiB from a file
    source = tmp_path / "chunked"
    source.write_bytes(chunked)

    with pseudo_terminal() as (stream, screen):
        assert terminal_view(stream, env={}) is not None  # a pty is a terminal
        board = Watched(stream)

        async def main() -> None:
            with reporting(board):
                async with RegistryClient(
                    monolithic_upload_limit=4 * MIB, upload_chunk_size=2 * MIB
                ) as client:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(client.push_blob, ref, descriptor(whole), whole)
                        nursery.start_soon(client.push_blob, ref, descriptor(chunked), source)
                    pieces = [p async for p in client.stream_blob(ref, descriptor(chunked))]
                    assert b"".join(pieces) == chunked

        trio.run(main)
    text = screen.text()

    for data in (whole, chunked):
        figures = board.figures[descriptor(data).digest]
        assert figures[-1] == len(data)
        assert max(figures) == len(data)
    whole_figures = board.figures[descriptor(whole).digest]
    assert len(set(whole_figures)) >= 12  # 256 KiB slices: the bar moved within the PUT
    assert board.transfers == []
    short = descriptor(chunked).digest.split(":")[1][:12]
    assert f"sha256:{short} pushed 5.0 MiB in" in text
    assert f"sha256:{short} downloaded 5.0 MiB in" in text
    assert "pushed 3.0 MiB in" in text
    assert "\x1b[J" in text  # drawn in place


def _image_layout(directory: Path) -> Path:
    """An OCI layout whose one plain gzip layer holds 3 MiB that do not compress."""
    layout = OciLayout.create(directory)
    tree = directory.parent / "tree"
    tree.mkdir()
    (tree / "noise").write_bytes(os.urandom(3 * MIB))
    write_image(layout, [write_layer(layout, tree, compresslevel=1)])
    return directory


def test_convert_shows_its_upload_on_a_terminal_only(
    registry: Registry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(transfer, "SHOW_AFTER", 0.0)
    monkeypatch.delenv("BUILDKIT_PROGRESS", raising=False)
    monkeypatch.delenv("TERM", raising=False)
    source = f"oci:{_image_layout(tmp_path / 'layout')}"
    with pseudo_terminal() as (stream, screen):
        monkeypatch.setattr(sys, "stderr", stream)
        assert main(["convert", source, f"{registry.host}/it/transferconvert:tty"]) == 0
        monkeypatch.undo()
    text = screen.text()
    assert re.search(r"sha256:[0-9a-f]{12} pushed 3\.0 MiB in", text)
    assert "] converting oci:" in text and "] done: 1 layer(s) converted" in text

    # Not a terminal: the progress lines only, no transfer lines, no escapes.
    capsys.readouterr()
    monkeypatch.setattr(transfer, "SHOW_AFTER", 0.0)
    assert main(["convert", source, f"{registry.host}/it/transferconvert:plain"]) == 0
    err = capsys.readouterr().err
    assert "] done: 1 layer(s) converted" in err
    assert "pushed" not in err and "\x1b" not in err


def _lazybuild(state: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "lazybuild", "--state-dir", str(state), *args]


def _mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as mountinfo:
        return any(line.split()[4] == str(path) for line in mountinfo)


def _mount_and_unmount(state: Path, image: str, target: Path, stderr: int) -> int:
    """``lazybuild mount`` with ``stderr``, until the mount is up; then ``umount``."""
    target.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "BUILDKIT_PROGRESS"}
    env["TERM"] = "xterm"
    process = subprocess.Popen(
        _lazybuild(state, "mount", "--no-background-fetch", image, str(target)),
        stderr=stderr,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while not _mounted(target):
            assert process.poll() is None and time.monotonic() < deadline, "no mount"
            time.sleep(0.1)
    finally:
        if _mounted(target):
            subprocess.run(_lazybuild(state, "umount", str(target)), check=False)
        code = process.wait(timeout=60)
        subprocess.run(_lazybuild(state, "prune"), check=False, capture_output=True)
    return code


def test_mount_shows_a_whole_layer_download_on_a_terminal_only(
    registry: Registry,
    wan_proxy: Callable[..., WanProxy],
    tmp_path: Path,
) -> None:
    """A plain gzip layer is downloaded whole by the filesystem process: on a terminal
    its bytes are redrawn until they reach the total; captured, nothing of it is said."""
    push_oci_layout(_image_layout(tmp_path / "layout"), registry.host, "it/wholedownload", "gz")
    # 3 MiB at 2 MB/s: a download long enough to be shown, polled a few times.
    proxy = wan_proxy(registry.host, latency=0.005, bandwidth_bits=16e6)
    image = f"{proxy.host}/it/wholedownload:gz"

    master, slave = pty.openpty()
    screen = Screen(master)
    try:
        code = _mount_and_unmount(tmp_path / "tty-state", image, tmp_path / "tty", slave)
    finally:
        os.close(slave)
    text = screen.text()
    os.close(master)
    assert code == 0, text
    label = r"sha256:[0-9a-f]{12}"
    assert re.search(rf"{label} downloading +[0-9.]+ (KiB|MiB) / 3\.0 MiB", text), text
    assert re.search(rf"{label} downloaded 3\.0 MiB in [0-9.]+s", text), text
    assert "] mounted " in text and "\x1b[J" in text

    # Not a terminal: the progress lines only, nothing of the download, no escapes.
    captured = tmp_path / "stderr.txt"
    with captured.open("wb") as stderr:
        code = _mount_and_unmount(
            tmp_path / "plain-state", image, tmp_path / "plain", stderr.fileno()
        )
    err = captured.read_text()
    assert code == 0, err
    assert "] mounted " in err
    assert " downloading " not in err and " downloaded 3.0 MiB" not in err
    assert "\x1b" not in err


def test_a_build_shows_its_base_image_whole_layer_download(
    registry: Registry,
    wan_proxy: Callable[..., WanProxy],
    tmp_path: Path,
) -> None:
    """A base image layer that is not eStargz, downloaded whole while the build runs:
    the build's fetch events carry the download's bytes until it is done."""
    push_oci_layout(_image_layout(tmp_path / "layout"), registry.host, "it/wholebuild", "gz")
    # 3 MiB at 1 MB/s: the build's display asks once a second, and sees it under way.
    proxy = wan_proxy(registry.host, latency=0.005, bandwidth_bits=8e6)
    context = write_context(tmp_path / "context", f"FROM {proxy.host}/it/wholebuild:gz\n")
    result = lazybuild(
        tmp_path / "state",
        "build",
        "--progress=rawjson",
        "--no-optimize",
        "-o",
        f"type=local,dest={tmp_path / 'out'}",
        str(context),
    )
    fetches = [event for event in rawjson_events(result.stderr) if event["type"] == "fetch"]
    downloading = [event["downloading"] for event in fetches if "downloading" in event]
    assert downloading, result.stderr
    total = downloading[0][1]
    assert all(done <= total for done, _ in downloading) and 3 * MIB < total < 4 * MIB
    # Done: counted as fetched, the download figures gone.
    assert "downloading" not in fetches[-1] and fetches[-1]["fetched"] == total
    assert (tmp_path / "out" / "noise").stat().st_size == 3 * MIB
