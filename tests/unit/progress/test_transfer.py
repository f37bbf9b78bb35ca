"""The transfer board: rows (bytes, rate, ETA), throttled redraws, quiet off a terminal."""

from __future__ import annotations

import io
import re

import trio

from lazybuild.progress import transfer
from lazybuild.progress.lines import Progress
from lazybuild.progress.transfer import (
    LineReport,
    TerminalView,
    binary_size,
    duration,
    reporting,
    terminal_view,
    wants_live_view,
)

MIB = 1024 * 1024
DIGEST = "sha256:" + "0123456789abcdef" * 4
OTHER = "sha256:" + "fedcba9876543210" * 4
_ESCAPE = re.compile(r"\r|\x1b\[[0-9]*[AJ]")


class FakeTerminal(io.StringIO):
    """A stream that says it is a terminal, counting its writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def view(stream: FakeTerminal, clock: Clock, **options: object) -> TerminalView:
    return TerminalView(stream, clock=clock, width=120, **options)  # type: ignore[arg-type]


def last_screen(stream: FakeTerminal) -> list[str]:
    """The rows of the last redraw, escapes taken out."""
    text = stream.getvalue()
    last = text.rsplit("\x1b[J", 1)[-1]
    return [_ESCAPE.sub("", line) for line in last.splitlines()]


def test_sizes_and_durations() -> None:
    assert binary_size(512) == "512 B"
    assert binary_size(12.3 * MIB) == "12.3 MiB"
    assert binary_size(3 * 1024 * MIB) == "3.0 GiB"
    assert duration(4.6) == "5s"
    assert duration(125) == "2m05s"
    assert duration(3720) == "1h02m"


def test_row_shows_bytes_rate_and_eta() -> None:
    stream, clock = FakeTerminal(), Clock()
    board = view(stream, clock)
    pushing = board.begin(DIGEST, 40 * MIB, "pushing")
    clock.now += 1.0
    pushing.advance(10 * MIB)
    (row,) = last_screen(stream)
    assert row.startswith("sha256:0123456789ab pushing")
    assert "10.0 MiB / 40.0 MiB" in row
    assert "10.0 MiB/s" in row
    assert row.endswith("ETA 3s")


def test_rate_follows_the_recent_window() -> None:
    stream, clock = FakeTerminal(), Clock()
    board = view(stream, clock)
    download = board.begin(DIGEST, 100 * MIB, "downloading")
    for _ in range(10):  # 1 MiB/s for ten seconds
        clock.now += 1.0
        download.advance(MIB)
    for _ in range(6):  # then 4 MiB/s: the old samples leave the window
        clock.now += 1.0
        download.advance(4 * MIB)
    (row,) = last_screen(stream)
    assert "4.0 MiB/s" in row
    assert "34.0 MiB / 100.0 MiB" in row
    assert "ETA 17s" in row


def test_redraws_are_throttled() -> None:
    stream, clock = FakeTerminal(), Clock()
    board = view(stream, clock, interval=0.2)
    pushing = board.begin(DIGEST, 10 * MIB, "pushing")
    clock.now += 1.0
    pushing.advance(1)
    drawn = stream.writes
    for _ in range(1000):  # a thousand pieces within one interval: no redraw
        clock.now += 0.0001
        pushing.advance(1024)
    assert stream.writes == drawn
    clock.now += 0.2
    pushing.advance(1024)
    assert stream.writes == drawn + 1


def test_short_transfers_write_nothing() -> None:
    stream, clock = FakeTerminal(), Clock()
    board = view(stream, clock)
    config = board.begin(DIGEST, 2000, "pushing")
    clock.now += 0.1
    config.advance(2000)
    config.end()
    board.close()
    assert stream.getvalue() == ""


def test_a_finished_transfer_is_printed_once_above_the_others() -> None:
    stream, clock = FakeTerminal(), Clock()
    board = view(stream, clock)
    first = board.begin(DIGEST, 4 * MIB, "pushing")
    second = board.begin(OTHER, 8 * MIB, "pushing")
    clock.now += 2.0
    first.advance(4 * MIB)
    second.advance(MIB)
    assert [row.split()[0] for row in last_screen(stream)] == [
        "sha256:0123456789ab",
        "sha256:fedcba987654",
    ]
    first.end()
    screen = last_screen(stream)
    assert screen[0] == "sha256:0123456789ab pushed 4.0 MiB in 2.0s (2.0 MiB/s)"
    assert screen[1].startswith("sha256:fedcba987654 pushing")
    # The live row is erased before the next draw: one row up, then cleared.
    clock.now += 1.0
    second.advance(MIB)
    assert stream.getvalue().endswith(f"\r\x1b[1A\x1b[J{last_screen(stream)[0]}\n")
    board.close()
    assert stream.getvalue().endswith("\r\x1b[1A\x1b[J")


def test_a_failed_transfer_leaves_without_a_line() -> None:
    stream, clock = FakeTerminal(), Clock()
    board = view(stream, clock)
    pushing = board.begin(DIGEST, 4 * MIB, "pushing")
    clock.now += 1.0
    pushing.advance(MIB)
    pushing.end(ok=False)
    assert last_screen(stream) == []
    assert "pushed" not in stream.getvalue()


def test_an_upload_started_over_goes_back() -> None:
    stream, clock = FakeTerminal(), Clock()
    board = view(stream, clock)
    pushing = board.begin(DIGEST, 10 * MIB, "pushing")
    clock.now += 1.0
    pushing.seek(8 * MIB)
    clock.now += 1.0
    pushing.seek(0)
    clock.now += 1.0
    pushing.seek(2 * MIB)
    (row,) = last_screen(stream)
    assert "2.0 MiB / 10.0 MiB" in row
    assert "2.0 MiB/s" in row  # measured since it went back, not a negative rate


def test_many_transfers_are_counted_past_max_rows() -> None:
    stream, clock = FakeTerminal(), Clock()
    board = view(stream, clock, max_rows=2)
    transfers = [board.begin(f"sha256:{i:064x}", MIB, "downloading") for i in range(5)]
    clock.now += 1.0
    transfers[0].advance(1)
    screen = last_screen(stream)
    assert len(screen) == 3 and screen[-1] == "... and 3 more"


def test_rows_fit_the_terminal() -> None:
    stream, clock = FakeTerminal(), Clock()
    board = TerminalView(stream, clock=clock, width=30)
    pushing = board.begin(DIGEST, 40 * MIB, "pushing")
    clock.now += 1.0
    pushing.advance(MIB)
    assert all(len(row) <= 29 for row in last_screen(stream))


def test_progress_lines_go_above_the_live_rows() -> None:
    stream, clock = FakeTerminal(), Clock()
    board = view(stream, clock)
    with reporting(board):
        pushing = board.begin(DIGEST, 4 * MIB, "pushing")
        clock.now += 1.0
        pushing.advance(MIB)
        Progress().line("converting layer 1")
        screen = last_screen(stream)
        assert screen[0].endswith("] converting layer 1")
        assert screen[1].startswith("sha256:0123456789ab pushing")


def test_only_a_terminal_gets_a_view() -> None:
    tty = FakeTerminal()
    assert isinstance(terminal_view(tty, env={}), TerminalView)
    assert terminal_view(io.StringIO(), env={}) is None
    assert terminal_view(tty, quiet=True, env={}) is None
    assert terminal_view(tty, env={"TERM": "dumb"}) is None
    for mode in ("plain", "rawjson", "quiet"):
        assert terminal_view(tty, env={"BUILDKIT_PROGRESS": mode}) is None
        assert not wants_live_view(tty, mode=mode, env={})
    # tty is forced, as buildx forces it; an explicit mode wins over the environment.
    assert wants_live_view(io.StringIO(), env={"BUILDKIT_PROGRESS": "tty"})
    assert wants_live_view(tty, mode="auto", env={"BUILDKIT_PROGRESS": "plain"})
    # No colours are written, so NO_COLOR changes nothing.
    assert wants_live_view(tty, env={"NO_COLOR": "1"})


def test_without_a_board_nothing_is_tracked() -> None:
    assert transfer.active() is None
    assert transfer.begin(DIGEST, 10, "pushing") is None
    with reporting(None):
        assert transfer.begin(DIGEST, 10, "pushing") is None


def test_reporting_installs_and_closes() -> None:
    stream, clock = FakeTerminal(), Clock()
    board = view(stream, clock)
    with reporting(board):
        assert transfer.active() is board
        pushing = transfer.begin(DIGEST, MIB, "pushing")
        assert pushing is not None
        clock.now += 1.0
        pushing.advance(1)
    assert transfer.active() is None
    assert stream.getvalue().endswith("\r\x1b[1A\x1b[J")  # the live row erased


def test_tasks_started_inside_report_to_the_board() -> None:
    stream, clock = FakeTerminal(), Clock()
    board = view(stream, clock)
    done: list[int] = []

    async def upload(index: int) -> None:
        started = transfer.begin(f"sha256:{index:064x}", 4, "pushing")
        assert started is not None
        for _ in range(4):
            await trio.sleep(0)
            started.advance(1)
        done.append(started.done)
        started.end()

    async def main() -> None:
        with reporting(board):
            async with trio.open_nursery() as nursery:
                for index in range(3):
                    nursery.start_soon(upload, index)

    trio.run(main)
    assert done == [4, 4, 4]
    assert board.transfers == []


def test_line_report_says_long_transfers_now_and_then() -> None:
    said: list[str] = []
    clock = Clock()
    board = LineReport(said.append, clock=clock, every=10.0)
    pushing = board.begin(DIGEST, 100 * MIB, "pushing")
    short = board.begin(OTHER, 10, "pushing")
    short.advance(10)
    short.end()
    for _ in range(25):
        clock.now += 1.0
        pushing.advance(2 * MIB)
    pushing.seek(100 * MIB)
    pushing.end()
    assert len(said) == 3
    assert " ".join(said[0].split()[:7]) == "sha256:0123456789ab pushing 20.0 MiB / 100.0 MiB"
    assert "ETA" in said[1]
    assert said[2] == "sha256:0123456789ab pushed 100.0 MiB in 25.0s (4.0 MiB/s)"


def test_a_mirror_shows_another_process_transfers_as_reported() -> None:
    stream, clock = FakeTerminal(), Clock()
    board = view(stream, clock)
    mirror = transfer.Mirror(board)
    # First seen 2 s into the download: its rate counts from its start, not from now.
    mirror.update([(DIGEST, 4 * MIB, 40 * MIB, 2.0)])
    (row,) = last_screen(stream)
    assert row.startswith("sha256:0123456789ab downloading 4.0 MiB / 40.0 MiB")
    assert "2.0 MiB/s" in row
    assert row.endswith("ETA 18s")
    clock.now += 1.0
    mirror.update([(DIGEST, 8 * MIB, 40 * MIB, 3.0), (OTHER, 0, 10 * MIB, 0.0)])
    assert last_screen(stream)[0].startswith("sha256:0123456789ab downloading 8.0 MiB / 40.0")
    clock.now += 1.0
    # Gone from the report: the first one ended well (its layer is there), at its total;
    # the other failed, and leaves without a line.
    mirror.update([], finished={DIGEST})
    assert "sha256:0123456789ab downloaded 40.0 MiB in 4.0s (10.0 MiB/s)\n" in stream.getvalue()
    assert board.transfers == []
    assert last_screen(stream) == []  # nothing left live
    mirror.close()
    board.close()
    assert "fedcba987654 downloaded" not in stream.getvalue()


def test_a_closed_mirror_ends_what_it_still_shows() -> None:
    stream, clock = FakeTerminal(), Clock()
    board = view(stream, clock)
    mirror = transfer.Mirror(board)
    mirror.update([(DIGEST, MIB, 2 * MIB, 1.0), (OTHER, MIB, 2 * MIB, 1.0)])
    clock.now += 1.0
    mirror.close(finished={OTHER})
    assert board.transfers == []
    assert last_screen(stream) == ["sha256:fedcba987654 downloaded 2.0 MiB in 2.0s (1.0 MiB/s)"]


def test_lines_unless_shown_says_lines_only_without_a_board() -> None:
    said: list[str] = []
    with transfer.lines_unless_shown(said.append):
        board = transfer.active()
        assert isinstance(board, LineReport)
    assert transfer.active() is None
    mine = LineReport(said.append)
    with reporting(mine), transfer.lines_unless_shown(said.append):
        assert transfer.active() is mine
