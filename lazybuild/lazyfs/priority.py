"""Foreground reads before background fetching (stargz-snapshotter's BackgroundTaskManager).

Foreground work (the requests a layer makes for readers: misses, their read-ahead,
prefetch; not reads the cache answers) runs inside ``async with gate.foreground()``.
Background work waits for ``gate.wait_quiet()``, i.e. until no foreground work has
run for ``quiet_period`` seconds, and runs each step inside ``gate.background()``,
a cancel scope that the next foreground entry cancels: a background batch never
competes with a read for the link. The caller retries a cancelled step later.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import trio

# A pause in readers' requests this long lets background fetching start. Reads from
# the cache do not count: a build over cached layers reads all the time, and the link
# is idle meanwhile.
DEFAULT_QUIET_PERIOD = 1.0


def _now_if_in_trio() -> float:
    try:
        return trio.current_time()
    except RuntimeError:  # made outside a trio run (tests): no grace period
        return -float("inf")


class ForegroundGate:
    def __init__(self, quiet_period: float = DEFAULT_QUIET_PERIOD) -> None:
        self.quiet_period = quiet_period
        self._active = 0
        # A gate is made with a mount, the busiest moment for foreground work (a walk, a
        # program start): background work first waits a quiet period from then.
        self._last_foreground = _now_if_in_trio()
        self._changed = trio.Event()
        self._background_scopes: set[trio.CancelScope] = set()

    @property
    def foreground_active(self) -> bool:
        return self._active > 0

    @asynccontextmanager
    async def foreground(self) -> AsyncIterator[None]:
        self._active += 1
        self._last_foreground = trio.current_time()
        for scope in self._background_scopes:
            scope.cancel()
        try:
            yield
        finally:
            self._active -= 1
            self._last_foreground = trio.current_time()
            self._notify()

    async def wait_quiet(self) -> None:
        """Return once no foreground work has run for ``quiet_period`` seconds."""
        while True:
            if self._active:
                await self._changed.wait()
                continue
            quiet_at = self._last_foreground + self.quiet_period
            if trio.current_time() >= quiet_at:
                await trio.lowlevel.checkpoint()
                if not self._active and trio.current_time() >= quiet_at:
                    return
                continue
            await trio.sleep_until(quiet_at)

    @contextmanager
    def background(self) -> Iterator[trio.CancelScope]:
        """A cancel scope for one background step, cancelled when foreground work starts.
        Check ``scope.cancelled_caught`` afterwards to know whether to retry."""
        with trio.CancelScope() as scope:
            if self._active:
                scope.cancel()
            self._background_scopes.add(scope)
            try:
                yield scope
            finally:
                self._background_scopes.discard(scope)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
