"""Pauses of the garbage collector nest, across threads, and leave it as they found it."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from lazybuild.estargz.gcpause import collector_paused


@pytest.fixture(autouse=True)
def _collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_a_pause_switches_the_collector_off_and_on_again() -> None:
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_pause_inside_another_leaves_it_off_until_the_outer_one_ends() -> None:
    with collector_paused():
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_collector_switched_off_before_stays_off() -> None:
    gc.disable()
    with collector_paused():
        pass
    assert not gc.isenabled()


def test_an_error_inside_ends_the_pause() -> None:
    with pytest.raises(ValueError), collector_paused():
        raise ValueError
    assert gc.isenabled()


def test_overlapping_pauses_of_two_threads_end_with_the_collector_on() -> None:
    first_in = threading.Event()
    second_in = threading.Event()

    def first() -> None:
        with collector_paused():
            first_in.set()
            second_in.wait(5)

    def second() -> None:
        first_in.wait(5)
        with collector_paused():
            second_in.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert gc.isenabled()
