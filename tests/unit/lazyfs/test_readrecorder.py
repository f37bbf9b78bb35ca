"""The read recorder: files read since a mark, each once, in first-read order."""

from __future__ import annotations

from lazybuild.lazyfs.readrecorder import ReadRecorder


def test_files_read_since_a_mark_in_first_read_order() -> None:
    recorder = ReadRecorder()
    recorder("a", "etc/passwd")
    mark = recorder.mark()
    for layer, path in [("b", "usr/bin/cc1"), ("a", "etc/passwd"), ("b", "usr/bin/cc1")]:
        recorder(layer, path)
    recorder("a", "lib/libc.so.6")
    # A file read before the mark counts again when read after it.
    assert recorder.since(mark) == {"b": ["usr/bin/cc1"], "a": ["etc/passwd", "lib/libc.so.6"]}
    assert recorder.since(0)["a"] == ["etc/passwd", "lib/libc.so.6"]


def test_concurrent_marks_each_see_what_was_read_while_they_ran() -> None:
    recorder = ReadRecorder()
    first = recorder.mark()
    recorder("x", "one")
    second = recorder.mark()
    recorder("x", "one")  # read again after the second mark: the second step read it too
    recorder("x", "two")
    assert recorder.since(first) == {"x": ["one", "two"]}
    assert recorder.since(second) == {"x": ["one", "two"]}
    assert recorder.since(recorder.mark()) == {}


def test_old_events_are_forgotten_beyond_the_bound() -> None:
    recorder = ReadRecorder(max_events=10)
    mark = recorder.mark()
    for n in range(25):
        recorder("x", f"f{n}")
    assert recorder.since(mark)["x"][-1] == "f24"
    assert len(recorder.since(mark)["x"]) <= 10
    late = recorder.mark()
    recorder("x", "late")
    assert recorder.since(late) == {"x": ["late"]}


def test_since_stops_at_its_limit() -> None:
    recorder = ReadRecorder()
    mark = recorder.mark()
    for n in range(10):
        recorder("x", f"f{n}")
    assert recorder.since(mark, limit=4) == {"x": ["f0", "f1", "f2", "f3"]}
