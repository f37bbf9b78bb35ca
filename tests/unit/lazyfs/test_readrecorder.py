"""The read recorder: files read since a mark, each once, in first-read order; and the
places read of big files."""

from __future__ import annotations

from lazybuild.estargz.toc import PREFETCH_FILE_MAX_BYTES
from lazybuild.lazyfs.readrecorder import PIECE_BYTES, ReadRecorder

BIG = PREFETCH_FILE_MAX_BYTES + 1


def test_files_read_since_a_mark_in_first_read_order() -> None:
    recorder = ReadRecorder()
    recorder("a", "etc/passwd", 0, 0, 0)
    mark = recorder.mark()
    for layer, path in [("b", "usr/bin/cc1"), ("a", "etc/passwd"), ("b", "usr/bin/cc1")]:
        recorder(layer, path, 0, 0, 0)
    recorder("a", "lib/libc.so.6", 0, 0, 0)
    # A file read before the mark counts again when read after it.
    assert recorder.since(mark) == {"b": ["usr/bin/cc1"], "a": ["etc/passwd", "lib/libc.so.6"]}
    assert recorder.since(0)["a"] == ["etc/passwd", "lib/libc.so.6"]


def test_concurrent_marks_each_see_what_was_read_while_they_ran() -> None:
    recorder = ReadRecorder()
    first = recorder.mark()
    recorder("x", "one", 0, 0, 0)
    second = recorder.mark()
    recorder("x", "one", 0, 0, 0)  # read again after the second mark: the second step read it too
    recorder("x", "two", 0, 0, 0)
    assert recorder.since(first) == {"x": ["one", "two"]}
    assert recorder.since(second) == {"x": ["one", "two"]}
    assert recorder.since(recorder.mark()) == {}


def test_old_events_are_forgotten_beyond_the_bound() -> None:
    recorder = ReadRecorder(max_events=10)
    mark = recorder.mark()
    for n in range(25):
        recorder("x", f"f{n}", 0, 0, 0)
    assert recorder.since(mark)["x"][-1] == "f24"
    assert len(recorder.since(mark)["x"]) <= 10
    late = recorder.mark()
    recorder("x", "late", 0, 0, 0)
    assert recorder.since(late) == {"x": ["late"]}


def test_since_stops_at_its_limit() -> None:
    recorder = ReadRecorder()
    mark = recorder.mark()
    for n in range(10):
        recorder("x", f"f{n}", 0, 0, 0)
    assert recorder.since(mark, limit=4) == {"x": ["f0", "f1", "f2", "f3"]}


def test_places_read_in_big_files_since_a_mark_in_first_read_order() -> None:
    recorder = ReadRecorder()
    recorder("x", "modules", 0, 4096, BIG)  # before the mark
    mark = recorder.mark()
    recorder("x", "modules", 10 * PIECE_BYTES + 5, 100, BIG)
    recorder("x", "modules", 11 * PIECE_BYTES, PIECE_BYTES + 1, BIG)  # joins, runs into 12
    recorder("x", "modules", 0, 4096, BIG)  # read again after the mark: counts
    recorder("x", "modules", 10 * PIECE_BYTES, 10, BIG)  # already there
    recorder("x", "small.so", 5 * PIECE_BYTES, 4096, PREFETCH_FILE_MAX_BYTES)  # whole
    assert recorder.ranges_since(mark) == {
        "x": {"modules": [(10 * PIECE_BYTES, 3 * PIECE_BYTES), (0, PIECE_BYTES)]}
    }
    # The files themselves are listed as for any read.
    assert recorder.since(mark) == {"x": ["modules", "small.so"]}
    assert recorder.ranges_since(recorder.mark()) == {}


def test_an_open_records_the_file_but_no_place() -> None:
    recorder = ReadRecorder()
    mark = recorder.mark()
    recorder("x", "modules", 0, 0, BIG)
    assert recorder.since(mark) == {"x": ["modules"]}
    assert recorder.ranges_since(mark) == {}
