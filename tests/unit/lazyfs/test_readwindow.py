from __future__ import annotations

from lazybuild.lazyfs.readwindow import FIRST_WINDOW, MAX_WINDOW, NeighbourWindow


def test_random_misses_fetch_nothing_extra() -> None:
    window = NeighbourWindow()
    for offset in (10_000_000, 500, 3_000_000, 90_000_000):
        assert window.extent(offset, offset + 1000, enters_file=True) == 0
        window.fetched(offset, offset + 1000)


def test_a_sequential_reader_opens_and_doubles_the_window() -> None:
    window = NeighbourWindow()
    assert window.extent(0, 1000, enters_file=True) == 0
    window.fetched(0, 1000)
    assert window.extent(1000, 3000, enters_file=True) == FIRST_WINDOW  # right after
    window.fetched(1000, 3000 + FIRST_WINDOW)
    end = 3000 + FIRST_WINDOW
    assert window.extent(end + 10, end + 20, enters_file=True) == 2 * FIRST_WINDOW
    window.fetched(end + 10, end + 20 + 2 * FIRST_WINDOW)
    position = end + 20 + 2 * FIRST_WINDOW
    for _ in range(10):
        extent = window.extent(position, position + 10, enters_file=True)
        window.fetched(position, position + 10 + extent)
        position += 10 + extent
    assert extent == MAX_WINDOW


def test_interleaved_streams_are_followed_separately() -> None:
    window = NeighbourWindow()
    window.extent(0, 100, enters_file=True)
    window.extent(50_000_000, 50_000_100, enters_file=True)
    assert window.extent(100, 200, enters_file=True) == FIRST_WINDOW
    window.fetched(100, 200 + FIRST_WINDOW)
    assert window.extent(50_000_100, 50_000_200, enters_file=True) == FIRST_WINDOW
    window.fetched(50_000_100, 50_000_200 + FIRST_WINDOW)
    assert window.extent(200 + FIRST_WINDOW, 300 + FIRST_WINDOW, enters_file=True) == (
        2 * FIRST_WINDOW
    )


def test_a_jump_resets_nothing_for_other_streams() -> None:
    window = NeighbourWindow()
    window.extent(0, 100, enters_file=True)
    assert window.extent(100, 200, enters_file=True) == FIRST_WINDOW
    window.fetched(100, 200 + FIRST_WINDOW)
    assert window.extent(99_000_000, 99_000_100, enters_file=True) == 0  # elsewhere
    window.fetched(99_000_000, 99_000_100)
    assert window.extent(200 + FIRST_WINDOW, 300 + FIRST_WINDOW, enters_file=True) == (
        2 * FIRST_WINDOW
    )


def test_a_reader_going_through_one_file_opens_no_window() -> None:
    """A big file's chunks missed in order (a program loaded) continue the stream but
    fetch nothing past them; the reader then entering the next file opens the window
    as any walk across files would."""
    window = NeighbourWindow()
    assert window.extent(0, 2_000_000, enters_file=True) == 0  # the file's first chunk
    for chunk in range(1, 6):
        start = chunk * 2_000_000
        assert window.extent(start, start + 2_000_000, enters_file=False) == 0
        window.fetched(start, start + 2_000_000)
    assert window.extent(12_000_000, 12_001_000, enters_file=True) == FIRST_WINDOW


def test_one_miss_reported_by_several_reads_is_one_step() -> None:
    """The kernel splits a file's read-ahead into several reads that arrive together
    and miss the same chunk before its request goes out: the second and later ones
    neither widen the window nor fetch another stretch."""
    window = NeighbourWindow()
    window.extent(0, 1000, enters_file=True)
    window.fetched(0, 1000)
    assert window.extent(1000, 5000, enters_file=True) == FIRST_WINDOW
    for _ in range(6):  # before the first one's request is made
        assert window.extent(1000, 5000, enters_file=True) == 0
    window.fetched(1000, 5000 + FIRST_WINDOW)
    # The stream goes on from where the one step left it, with the window it opened.
    assert window.extent(5000 + FIRST_WINDOW, 6000 + FIRST_WINDOW, enters_file=True) == (
        2 * FIRST_WINDOW
    )


def test_repeated_misses_do_not_crowd_out_other_streams() -> None:
    window = NeighbourWindow()
    window.extent(0, 100, enters_file=True)
    for _ in range(20):
        window.extent(90_000_000, 90_001_000, enters_file=True)
    assert window.extent(100, 200, enters_file=True) == FIRST_WINDOW
