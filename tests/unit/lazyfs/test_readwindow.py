from __future__ import annotations

from lazybuild.lazyfs.readwindow import FIRST_WINDOW, MAX_WINDOW, NeighbourWindow


def test_random_misses_fetch_nothing_extra() -> None:
    window = NeighbourWindow()
    for offset in (10_000_000, 500, 3_000_000, 90_000_000):
        assert window.extent(offset) == 0
        window.fetched(offset, offset + 1000)


def test_a_sequential_reader_opens_and_doubles_the_window() -> None:
    window = NeighbourWindow()
    assert window.extent(0) == 0
    window.fetched(0, 1000)
    assert window.extent(1000) == FIRST_WINDOW  # right after the last fetch
    window.fetched(1000, 1000 + 2000 + FIRST_WINDOW)
    end = 3000 + FIRST_WINDOW
    assert window.extent(end + 10) == 2 * FIRST_WINDOW
    window.fetched(end + 10, end + 10 + 2 * FIRST_WINDOW)
    position = end + 10 + 2 * FIRST_WINDOW
    for _ in range(10):
        extent = window.extent(position)
        window.fetched(position, position + extent)
        position += extent
    assert extent == MAX_WINDOW


def test_interleaved_streams_are_followed_separately() -> None:
    window = NeighbourWindow()
    window.fetched(0, 100)
    window.fetched(50_000_000, 50_000_100)
    assert window.extent(100) == FIRST_WINDOW
    window.fetched(100, 100 + FIRST_WINDOW)
    assert window.extent(50_000_100) == FIRST_WINDOW
    window.fetched(50_000_100, 50_000_100 + FIRST_WINDOW)
    assert window.extent(100 + FIRST_WINDOW) == 2 * FIRST_WINDOW


def test_a_jump_resets_nothing_for_other_streams() -> None:
    window = NeighbourWindow()
    window.fetched(0, 100)
    assert window.extent(100) == FIRST_WINDOW
    window.fetched(100, 100 + FIRST_WINDOW)
    assert window.extent(99_000_000) == 0  # elsewhere: no read-ahead
    window.fetched(99_000_000, 99_000_100)
    assert window.extent(100 + FIRST_WINDOW) == 2 * FIRST_WINDOW
