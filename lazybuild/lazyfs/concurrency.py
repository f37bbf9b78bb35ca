"""Bounded concurrency that keeps order.

Trio starts the tasks of a nursery in no fixed order (on purpose, so nothing comes to
depend on it), and a ``CapacityLimiter`` grants its tokens in the order tasks first ask.
Starting one task per job behind a limiter therefore runs jobs in a shuffled order: a
prefetch listed in the order files will be read could fetch its last batch first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import trio

T = TypeVar("T")


async def in_order(
    items: Iterable[T], concurrency: int, work: Callable[[T], Awaitable[None]]
) -> None:
    """Run ``work`` on every item, at most ``concurrency`` at once, starting them in
    order. ``items`` may be a shared iterator: what is left in it when this is
    cancelled was never started."""
    pending = iter(items)

    async def worker() -> None:
        for item in pending:
            await work(item)

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
