"""Small structured-concurrency helpers for the scheduler."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class Once(Generic[T]):
    """A value computed by one task in the solve nursery and awaited by any number.

    A failed computation stores nothing: its error fails the nursery, which cancels every
    task still waiting here, so no waiter can see a missing value.
    """

    def __init__(self) -> None:
        self._done = trio.Event()
        self._value: T | None = None
        self._started = False

    async def get(self, nursery: trio.Nursery, compute: Callable[[], Awaitable[T]]) -> T:
        if not self._started:
            self._started = True
            nursery.start_soon(self._run, compute)
        await self._done.wait()
        return self._value  # type: ignore[return-value]

    async def _run(self, compute: Callable[[], Awaitable[T]]) -> None:
        self._value = await compute()
        self._done.set()


def bind(function: Callable[..., Awaitable[T]], *args: object) -> Callable[[], Awaitable[T]]:
    return lambda: function(*args)


async def gather(calls: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run ``calls`` concurrently; their results in order."""
    results: list[T | None] = [None] * len(calls)

    async def run(index: int) -> None:
        results[index] = await calls[index]()

    async with trio.open_nursery() as nursery:
        for index in range(len(calls)):
            nursery.start_soon(run, index)
    return results  # type: ignore[return-value]
