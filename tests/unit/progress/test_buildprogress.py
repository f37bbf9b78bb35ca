"""The build progress display: plain output exactly, rawjson fields, the tty view's content,
and the kept output lines, fed with hand-made event sequences (and one real solve)."""

from __future__ import annotations

import io
import json
import re
from typing import Any

import pytest
import trio
import trio.testing

from lazybuild.graph import marshal
from lazybuild.progress.buildview import BuildProgress, Mode
from lazybuild.solver import (
    ProgressEvent,
    ProgressWriter,
    VertexCompleted,
    VertexFailedError,
    VertexLog,
    VertexStarted,
    VertexStatus,
)
from tests.unit.solver.fakes import World, vertex

T0 = 1000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def display(mode: Mode, **options: Any) -> tuple[BuildProgress, io.StringIO, Clock]:
    stream = io.StringIO()
    clock = Clock()
    return BuildProgress(mode, stream, clock=clock, **options), stream, clock


def started(vertex: str, name: str, at: float) -> VertexStarted:
    return VertexStarted(vertex, name, (), T0 + at)


def log(vertex: str, data: bytes, at: float, stream: str = "stdout") -> VertexLog:
    return VertexLog(vertex, stream, data, T0 + at)  # type: ignore[arg-type]


def done(
    vertex: str,
    name: str,
    start: float,
    end: float,
    *,
    cached: bool = False,
    error: str | None = None,
) -> VertexCompleted:
    return VertexCompleted(vertex, name, cached, T0 + start, T0 + end, error)


BASE = "[build 1/3] FROM docker.io/library/alpine"
MAKE = "[build 2/3] RUN make"
TEST = "[build 3/3] RUN make test"

BUILD: list[ProgressEvent] = [
    started("sha256:a", BASE, 0.0),
    done("sha256:a", BASE, 0.0, 0.1, cached=True),
    started("sha256:b", MAKE, 0.2),
    log("sha256:b", b"compiling ", 0.5),
    log("sha256:b", b"main.c\nlinking", 0.712),
    started("sha256:c", TEST, 0.8),
    log("sha256:c", b"running tests\n", 0.9, "stderr"),
    log("sha256:b", b" done\n", 1.0),
    log("sha256:b", b"no newline at the end", 1.1),
    done("sha256:b", MAKE, 0.2, 1.4),
    log("sha256:c", b"1 failed\n", 2.0),
    done("sha256:c", TEST, 0.8, 2.1, error="exit code: 2\nsee the log"),
]

PLAIN = """\
#1 [build 1/3] FROM docker.io/library/alpine
#1 CACHED

#2 [build 2/3] RUN make
#2 0.300 compiling main.c

#3 [build 3/3] RUN make test
#3 0.100 running tests

#2 [build 2/3] RUN make
#2 0.512 linking done
#2 0.900 no newline at the end
#2 DONE 1.2s

#3 [build 3/3] RUN make test
#3 1.200 1 failed
#3 ERROR: exit code: 2
#3 see the log
"""


def test_plain_prints_numbered_blocks_with_output_lines_and_outcomes() -> None:
    progress, stream, _ = display("plain")
    for event in BUILD:
        progress(event)
    progress.close()
    assert stream.getvalue() == PLAIN


def test_plain_shows_what_a_terminal_would_of_carriage_returns_and_split_characters() -> None:
    progress, stream, _ = display("plain")
    progress(started("v", "step", 0))
    progress(log("v", b"10%\r50%\r100%\r\n", 1))
    progress(log("v", b"caf\xc3", 2))
    progress(log("v", b"\xa9 \xff\n", 3))
    progress(done("v", "step", 0, 4))
    assert stream.getvalue() == (
        "#1 step\n#1 1.000 100%\n#1 2.000 caf\N{LATIN SMALL LETTER E WITH ACUTE} \ufffd\n"
        "#1 DONE 4.0s\n"
    )


def test_plain_prints_finished_statuses_and_unfinished_ones_now_and_then() -> None:
    progress, stream, _ = display("plain")
    progress(started("v", "pull", 0))
    for at, current in ((0, 0), (1, 10_000), (6, 2_000_000), (7, 3_000_000)):
        progress(VertexStatus("v", "l1", "sha256:aaa", current, 5_000_000, T0 + at))
    progress(VertexStatus("v", "l1", "sha256:aaa", 5_000_000, 5_000_000, T0 + 8, completed=True))
    progress(VertexStatus("v", "x", "extracting", 0, None, T0 + 8, completed=True))
    progress(done("v", "pull", 0, 9))
    assert stream.getvalue() == (
        "#1 pull\n"
        "#1 sha256:aaa 2.0 MB / 5.0 MB 6.0s\n"
        "#1 sha256:aaa 5.0 MB / 5.0 MB 8.0s done\n"
        "#1 extracting 0.0s done\n"
        "#1 DONE 9.0s\n"
    )


def test_plain_phases_messages_fetch_figures_and_canceled_steps() -> None:
    progress, stream, clock = display("plain")
    progress.line("resolving image docker.io/library/alpine")
    progress.fetch_status("alpine", 0, 3_000_000)
    clock.now += 1
    progress.fetch_status("alpine", 1_000_000, 3_000_000)  # too soon: shown at close
    progress(started("v", MAKE, 1))
    progress(log("v", b"half a line", 1.5))
    with progress.phase("exporting layers") as phase:
        clock.now += 0.25
        phase.line("writing layer sha256:1234")
        clock.now += 0.25
    with pytest.raises(OSError), progress.phase("pushing example.com/app") as phase:
        clock.now += 1
        raise OSError("connection reset")
    progress.close()
    progress.close()
    assert stream.getvalue() == (
        "resolving image docker.io/library/alpine\n"
        "lazy alpine: fetched 0 B / 3.0 MB (0.0%)\n"
        "\n#1 [build 2/3] RUN make\n"
        "\n#2 exporting layers\n#2 0.250 writing layer sha256:1234\n#2 DONE 0.5s\n"
        "\n#3 pushing example.com/app\n#3 ERROR: connection reset\n"
        "\n#1 [build 2/3] RUN make\n#1 0.500 half a line\n#1 CANCELED\n"
        "\nlazy alpine: fetched 1.0 MB / 3.0 MB (33.3%)\n"
    )


def test_plain_fetch_lines_only_when_changed_and_not_too_often() -> None:
    progress, stream, clock = display("plain")
    progress.fetch_status("img", 0, None)
    for _ in range(30):
        clock.now += 1
        progress.fetch_status("img", int(clock.now - T0) * 1000, None)
    progress.fetch_status("img", 30_000, None)
    progress.close()
    assert stream.getvalue().splitlines() == [
        "lazy img: fetched 0 B",
        "lazy img: fetched 10.0 KB",
        "lazy img: fetched 20.0 KB",
        "lazy img: fetched 30.0 KB",
    ]


def test_rawjson_prints_one_object_per_event_with_its_fields() -> None:
    progress, stream, clock = display("rawjson")
    progress(VertexStarted("v", MAKE, ("sha256:a",), T0, "group"))
    progress(log("v", b"caf\xc3", 1))
    progress(log("v", b"\xa9\n", 2))
    progress(log("v", b"\xff", 2, "stderr"))
    progress(VertexStatus("v", "l1", "layer", 5, 10, T0 + 3))
    progress(done("v", MAKE, 0, 4, error="boom"))
    progress.line("pushing")
    progress.fetch_status("img", 5, 10)
    progress.fetch_status("img", 5, 10)  # unchanged: not repeated
    progress.close()
    objects = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert objects == [
        {
            "type": "started",
            "vertex": "v",
            "name": MAKE,
            "inputs": ["sha256:a"],
            "started": T0,
            "progress_group": "group",
        },
        {"type": "log", "vertex": "v", "stream": "stdout", "data": "caf", "timestamp": T0 + 1},
        {"type": "log", "vertex": "v", "stream": "stdout", "data": "\u00e9\n", "timestamp": T0 + 2},
        {"type": "log", "vertex": "v", "stream": "stderr", "data": "\ufffd", "timestamp": T0 + 2},
        {
            "type": "status",
            "vertex": "v",
            "id": "l1",
            "name": "layer",
            "current": 5,
            "total": 10,
            "timestamp": T0 + 3,
            "completed": False,
        },
        {
            "type": "completed",
            "vertex": "v",
            "name": MAKE,
            "started": T0,
            "completed": T0 + 4,
            "cached": False,
            "error": "boom",
        },
        {"type": "message", "data": "pushing", "timestamp": clock.now},
        {"type": "fetch", "image": "img", "fetched": 5, "total": 10, "timestamp": clock.now},
    ]


def test_rawjson_flushes_an_incomplete_character_when_the_step_ends() -> None:
    progress, stream, _ = display("rawjson")
    progress(started("v", "x", 0))
    progress(log("v", b"a\xc3", 1))
    progress(done("v", "x", 0, 2))
    data = [json.loads(line).get("data") for line in stream.getvalue().splitlines()]
    assert data == [None, "a", "\ufffd", None]


def row(left: str, right: str, width: int) -> str:
    """A live view row: right-aligned up to, not into, the last column."""
    return left + " " * (width - 1 - len(left) - len(right)) + right


def test_tty_shows_running_steps_with_their_output_then_a_summary() -> None:
    progress, stream, clock = display("tty", terminal_size=(60, 30))
    progress(started("sha256:a", BASE, 0))
    progress(done("sha256:a", BASE, 0, 0.1, cached=True))
    clock.now += 1
    progress(started("sha256:b", MAKE, 1))
    progress(log("sha256:b", b"\x1b[31mcompiling\x1b[0m main.c\n", 1.05))
    progress(VertexStatus("sha256:b", "l", "sha256:layer", 1_000_000, 2_000_000, T0 + 1.05))
    progress.fetch_status("docker.io/library/alpine", 1_000_000, 4_000_000)
    clock.now += 2
    progress.tick()
    assert " => CACHED [build 1/3] FROM docker.io/library/alpine\n" in stream.getvalue()
    view = stream.getvalue().rsplit("\x1b[J", 1)[-1]
    assert view.splitlines() == [
        "[+] Building 3.0s (1/2)",
        row(" => [build 2/3] RUN make", "2.0s", 60),
        row(" => => sha256:layer 1.0 MB / 2.0 MB", "2.0s", 60),
        " => => # compiling main.c",
        " => lazy docker.io/library/alpine   1.0 MB / 4.0 MB (25.0%)",
    ]
    assert all(len(line) <= 59 for line in view.splitlines())
    clock.now += 1
    progress(done("sha256:b", MAKE, 1, 4))
    progress.close()
    assert stream.getvalue().rsplit("\x1b[J", 2)[-2].splitlines()[0] == row(
        " => [build 2/3] RUN make", "3.0s", 60
    )
    summary = stream.getvalue().rsplit("\x1b[J", 1)[-1]
    assert summary.splitlines() == [
        "[+] Building 4.0s (2/2) FINISHED",
        " => lazy docker.io/library/alpine: fetched 1.0 MB / 4.0 MB (25.0%)",
    ]


def test_tty_redraws_at_most_every_interval_and_erases_the_previous_view() -> None:
    progress, stream, clock = display("tty", terminal_size=(80, 24))
    progress(started("v", MAKE, 0))
    draws = stream.getvalue().count("\x1b[J")
    for i in range(50):
        clock.now += 0.01
        progress(log("v", f"line {i}\n".encode(), clock.now - T0))
    # 0.5s of events at 100 per second: about five redraws, not fifty.
    assert 4 <= stream.getvalue().count("\x1b[J") - draws <= 6
    clock.now += 1
    progress.tick()
    last = stream.getvalue().rsplit("\r", 1)[-1]
    assert re.match(r"\x1b\[\d+A\x1b\[J\[\+\] Building", last)
    assert last.splitlines()[-6:] == [f" => => # line {i}" for i in range(44, 50)]


def test_tty_fits_a_short_screen_and_reports_failure_and_cancellation() -> None:
    progress, stream, clock = display("tty", terminal_size=(40, 8))
    for n in range(4):
        progress(started(f"v{n}", f"step {n}", 0))
        progress(log(f"v{n}", b"a\nb\nc\n", 0))
    clock.now += 1
    progress.tick()
    # Six rows: no room for output lines.
    view = stream.getvalue().rsplit("\x1b[J", 1)[-1].splitlines()
    assert view == ["[+] Building 1.0s (0/4)"] + [
        row(f" => step {n}", "1.0s", 40) for n in range(4)
    ]
    progress._renderer._size = (40, 5)  # type: ignore[attr-defined]
    clock.now += 1
    progress.tick()
    view = stream.getvalue().rsplit("\x1b[J", 1)[-1].splitlines()
    assert view == ["[+] Building 2.0s (0/4)", row(" => step 0", "2.0s", 40), " => ... 3 more"]
    progress(done("v0", "step 0", 0, 1, error="exit code: 1"))
    progress.close()
    summary = stream.getvalue().rsplit("\x1b[J", 1)[-1].splitlines()
    assert summary[0].startswith(" => ERROR step 0")
    assert summary[1].startswith(" => CANCELED step 1")
    assert summary[-1] == "[+] Building 2.0s (1/4) FAILED"


MODES: list[Mode] = ["quiet", "plain", "tty", "rawjson"]


@pytest.mark.parametrize("mode", MODES)
def test_tail_keeps_the_last_lines_and_the_unfinished_one(mode: Mode) -> None:
    progress, _, _ = display(mode, tail_lines=5)
    progress(started("v", "x", 0))
    progress(log("v", b"".join(b"line %d\n" % i for i in range(30)) + b"partial", 1))
    assert progress.tail("v") == ["line 26", "line 27", "line 28", "line 29", "partial"]
    progress(log("v", b"\r\nstderr line\n", 1.5, "stderr"))
    progress(done("v", "x", 0, 2, error="failed"))
    assert progress.tail("v") == ["line 28", "line 29", "", "stderr line", "partial"]
    assert progress.tail("unknown") == []


def test_quiet_prints_nothing() -> None:
    progress, stream, _ = display("quiet")
    for event in BUILD:
        progress(event)
    progress.line("hello")
    progress.fetch_status("img", 1, 2)
    with progress.phase("export") as phase:
        phase.line("x")
    progress.close()
    assert stream.getvalue() == ""
    assert progress.tail("sha256:c") == ["running tests", "1 failed"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_is_tty_on_a_terminal_and_plain_elsewhere() -> None:
    assert BuildProgress("auto", io.StringIO()).mode == "plain"
    assert BuildProgress("auto", Terminal()).mode == "tty"
    with pytest.raises(ValueError, match="unknown progress mode"):
        BuildProgress("fancy", io.StringIO())  # type: ignore[arg-type]


def test_as_progress_routes_lines_to_the_display() -> None:
    progress, stream, _ = display("plain")
    progress.as_progress().line("mounting alpine")
    with progress.phase("export") as phase:
        phase.as_progress().line("layer 1")
    assert stream.getvalue() == ("mounting alpine\n\n#1 export\n#1 0.000 layer 1\n#1 DONE 0.0s\n")


def test_shows_a_real_solve_and_keeps_the_failing_steps_output() -> None:
    world = World()
    world.op("base", log=b"pulling\n")
    world.op("make", log=b"cc main.c\nerror: no such file\n", fail=RuntimeError("exit code: 1"))
    definition = marshal(vertex("make", vertex("base")))
    stream = io.StringIO()

    async def main() -> None:
        with BuildProgress("plain", stream) as progress:
            writer: ProgressWriter = progress
            with pytest.raises(VertexFailedError) as failure:
                await world.solver().solve(definition, progress=writer)
            assert progress.tail(failure.value.digest) == ["cc main.c", "error: no such file"]

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    output = re.sub(r"\d+\.\d+", "T", stream.getvalue())
    assert output == (
        "#1 base\n#1 T pulling\n#1 DONE Ts\n"
        "\n#2 make\n#2 T cc main.c\n#2 T error: no such file\n#2 ERROR: exit code: 1\n"
    )


def test_tty_fetch_rows_show_whole_layer_downloads_with_their_eta() -> None:
    progress, stream, clock = display("tty", terminal_size=(80, 30))
    image = "docker.io/library/debian"
    progress.fetch_status(image, 0, 50_000_000, (0, 50_000_000))
    for done_bytes in (5_000_000, 10_000_000):
        clock.now += 1
        progress.fetch_status(image, done_bytes, 50_000_000, (done_bytes, 50_000_000))
    clock.now += 1
    progress.tick()
    view = stream.getvalue().rsplit("\x1b[J", 1)[-1].splitlines()
    assert view[-2:] == [
        row(f" => lazy {image}", "10.0 MB / 50.0 MB (20.0%)", 80),
        # As of the last report (not of the redraw): the bytes came in at 5 MB/s.
        row(" => => downloading whole layers", "10.0 MB / 50.0 MB, 5.0 MB/s, ETA 8s", 80),
    ]
    # Done: the layer is counted as fetched, and the download's row goes.
    clock.now += 1
    progress.fetch_status(image, 50_000_000, 50_000_000, None)
    clock.now += 1
    progress.tick()
    view = stream.getvalue().rsplit("\x1b[J", 1)[-1].splitlines()
    assert view[-1] == row(f" => lazy {image}", "50.0 MB / 50.0 MB (100.0%)", 80)
    progress.close()


def test_plain_and_rawjson_fetch_lines_carry_the_downloads() -> None:
    progress, stream, clock = display("plain")
    progress.fetch_status("img", 0, 4_000_000, (0, 4_000_000))
    clock.now += 10
    progress.fetch_status("img", 2_000_000, 4_000_000, (2_000_000, 4_000_000))
    progress.close()
    assert stream.getvalue().splitlines() == [
        "lazy img: fetched 0 B / 4.0 MB (0.0%); downloading 0 B / 4.0 MB",
        "lazy img: fetched 2.0 MB / 4.0 MB (50.0%); "
        "downloading 2.0 MB / 4.0 MB, 200.0 KB/s, ETA 10s",
    ]
    progress, stream, clock = display("rawjson")
    progress.fetch_status("img", 1, 2, (1, 2))
    progress.fetch_status("img", 2, 2, None)
    objects = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [o.get("downloading") for o in objects] == [[1, 2], None]
    assert "downloading" not in objects[1]


def test_a_daemon_s_fetch_events_carry_the_downloads_to_the_client_display() -> None:
    from lazybuild.daemon.buildclient import _render

    daemon, sent, _ = display("rawjson")
    daemon.fetch_status("img", 1_000_000, 4_000_000, (1_000_000, 4_000_000))
    daemon.fetch_status("img", 4_000_000, 4_000_000, None)
    client, shown, _ = display("plain")
    for line in sent.getvalue().splitlines():
        _render(client, line)
    client.close()
    assert shown.getvalue().splitlines() == [
        "lazy img: fetched 1.0 MB / 4.0 MB (25.0%); downloading 1.0 MB / 4.0 MB",
        "lazy img: fetched 4.0 MB / 4.0 MB (100.0%)",
    ]
