"""The background work of one layer, owned by it: closing the layer cancels it and
waits for it.

A layer starts work nobody awaits (prefetch batches, read-ahead, the libraries of a
program, disk writes behind fetches, the background fetch of the whole layer) from
inside reads, where there is no nursery at hand. Each task runs in a cancel scope of
its own, in the service nursery given (so it ends with the service) or else as a trio
system task (tools and tests that open a layer on their own), and ``aclose`` cancels
the scopes of them all and waits until every one has finished.

A task started after ``aclose`` still runs, cancelled from the start: its starter
may have claimed chunks for it, and they must land (empty) so that their readers
fetch them themselves instead of waiting forever.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

log = logging.getLogger(__name__)


class LayerTasks:
    def __init__(self, where: str, nursery: trio.Nursery | None = None) -> None:
        self._where = where
        self._nursery = nursery
        self._scopes: set[trio.CancelScope] = set()
        self._finished = trio.Event()
        self._closed = False

    @property
    def running(self) -> int:
        return len(self._scopes)

    @property
    def closed(self) -> bool:
        return self._closed

    def start_soon(self, work: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``work(*args)`` in the background. A failure is logged, never raised: the
        work is a hint or a head start, and must not take the service down."""
        scope = trio.CancelScope()
        if self._closed:
            scope.cancel()
        self._scopes.add(scope)
        if self._nursery is not None:
            try:
                self._nursery.start_soon(self._run, scope, work, *args)
                return
            except RuntimeError:  # the service is gone: nothing is to run any more
                self._closed = True
                scope.cancel()
        trio.lowlevel.spawn_system_task(self._run, scope, work, *args)

    async def aclose(self) -> None:
        """Cancel every task and wait until all have finished (shielded work, like a
        write of fetched chunks to the cache, runs to its end first)."""
        self._closed = True
        for scope in self._scopes:
            scope.cancel()
        while self._scopes:
            await self._finished.wait()

    async def _run(
        self, scope: trio.CancelScope, work: Callable[..., Awaitable[Any]], *args: Any
    ) -> None:
        try:
            with scope:
                await work(*args)
        except Exception:
            log.exception("%s: background task %s failed", self._where, _name(work))
        finally:
            self._scopes.discard(scope)
            if not self._scopes:
                self._finished.set()
                self._finished = trio.Event()


def _name(work: Callable[..., Awaitable[Any]]) -> str:
    return getattr(work, "__qualname__", repr(work))
