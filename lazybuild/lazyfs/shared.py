"""One filesystem process for many builds: the daemon's, kept warm between them.

A one-shot build starts its own filesystem process and stops it at its end; a daemon
that did the same would pay the start-up, and the opening of every base layer (its TOC
fetched, verified and laid out as an EROFS image), on every build, and two builds on
one cold image would fetch its chunks twice. ``SharedFilesystem`` starts the process
on the first build that needs it and lends it to each build for as long as the build
runs; the process adds each layer once (concurrent adds of a digest share the work)
and its chunk fetches are shared by all, so a chunk two builds need crosses the wire
once.

The process is stopped when the daemon stops, and while no build holds it: after
``IDLE_SECONDS`` without a build, or as soon as it is idle with more than
``MAX_IDLE_LAYERS`` layers open. Each layer costs the process memory (its index), and a
fresh process mounts layers that became complete in the meantime from their whole
images, with no FUSE request at all. One that died is replaced by the next build
(after its own clean-up: mounts, overlays).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AsyncExitStack

import trio

from lazybuild.lazyfs.client import LazyMountService

log = logging.getLogger(__name__)

IDLE_SECONDS = 600.0
MAX_IDLE_LAYERS = 256


class SharedFilesystem:
    """A filesystem process lent to builds; ``run`` (in the owner's nursery) stops it
    when idle, ``aclose`` for good."""

    shared = True

    def __init__(
        self,
        factory: Callable[[], LazyMountService],
        *,
        idle_seconds: float = IDLE_SECONDS,
        max_idle_layers: int = MAX_IDLE_LAYERS,
    ) -> None:
        self._factory = factory
        self._idle_seconds = idle_seconds
        self._max_idle_layers = max_idle_layers
        self._service: LazyMountService | None = None
        self._lock = trio.Lock()
        self._users = 0
        self._idle_since = trio.current_time()
        self._released = trio.Event()
        self._closed = False

    @property
    def service(self) -> LazyMountService | None:
        """The process, while one runs (for tests and ``Info``)."""
        return self._service

    @property
    def users(self) -> int:
        return self._users

    async def open(self, stack: AsyncExitStack) -> LazyMountService:
        """The running process, started if need be; lent until ``stack`` closes."""
        async with self._lock:
            if self._closed:
                raise trio.ClosedResourceError("the shared filesystem is closed")
            if self._service is not None and not self._service.running:
                log.warning("the shared filesystem process had stopped: starting a new one")
                await self._service.close()  # its mounts and the overlays on them
                self._service = None
            if self._service is None:
                service = self._factory()
                await service.__aenter__()  # stops it again itself when it fails to start
                self._service = service
            self._users += 1
            service = self._service
        stack.callback(self._release)
        return service

    def _release(self) -> None:
        self._users -= 1
        if self._users == 0:
            self._idle_since = trio.current_time()
            self._released.set()
            self._released = trio.Event()

    async def run(self) -> None:
        """Stops the process whenever it has been idle for long, or is idle with many
        layers open; until cancelled."""
        while True:
            service = self._service
            if service is None or self._users > 0:
                with trio.move_on_after(self._idle_seconds):
                    await self._released.wait()
                continue
            idle_for = trio.current_time() - self._idle_since
            if idle_for >= self._idle_seconds or await self._too_many_layers(service):
                await self._stop_if_idle(service)
                continue
            with trio.move_on_after(self._idle_seconds - idle_for):
                await self._released.wait()

    async def _too_many_layers(self, service: LazyMountService) -> bool:
        if not service.running:
            return True
        try:
            report = await service.stats()
        except Exception as error:  # a process that does not answer is stopped too
            log.warning("the shared filesystem process did not report: %s", error)
            return True
        return len(report.layers) > self._max_idle_layers

    async def _stop_if_idle(self, service: LazyMountService) -> None:
        async with self._lock:
            if self._service is service and self._users == 0:
                self._service = None
                await service.close()
                log.info("stopped the idle shared filesystem process")

    async def aclose(self) -> None:
        """Stops the process (the builds that held it are over); no more lending."""
        with trio.CancelScope(shield=True):
            async with self._lock:
                self._closed = True
                service, self._service = self._service, None
                if service is not None:
                    await service.close()
