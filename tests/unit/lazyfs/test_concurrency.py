"""in_order: bounded concurrency that starts jobs in the order given."""

from __future__ import annotations

import trio
import trio.testing

from lazybuild.lazyfs.concurrency import in_order


def test_jobs_start_in_order_with_at_most_the_given_number_running() -> None:
    started: list[int] = []
    running = 0
    most = 0

    async def job(number: int) -> None:
        nonlocal running, most
        started.append(number)
        running += 1
        most = max(most, running)
        await trio.sleep(0.001 * (number % 3))
        running -= 1

    for _ in range(5):  # trio's start order differs between runs; ours must not
        started.clear()
        trio.run(in_order, range(20), 3, job)
        assert started == list(range(20))
        assert most == 3


def test_what_a_cancelled_run_never_started_is_left_in_the_iterator() -> None:
    pending = iter(range(10))
    started: list[int] = []

    async def job(number: int) -> None:
        started.append(number)
        if number >= 2:
            await trio.sleep_forever()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(in_order, pending, 2, job)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert started == [0, 1, 2, 3]
    assert list(pending) == list(range(4, 10))
