"""A user-space TCP proxy that emulates a WAN link (netem is not available here).

Each direction of the link has a one-way latency and a bandwidth limit shared by
all connections (one token bucket per direction, like one physical link), and the
proxy counts the bytes it delivers. With latency 0 and no limit it is a plain
counting proxy. It runs an asyncio loop in a background thread.

Timing model per chunk read from one side: it is serialized onto the link at the
link's rate (the reader waits for that, which is what makes TCP back off), then
delivered to the other side no earlier than `latency` after serialization ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from dataclasses import dataclass, field

CHUNK = 16 * 1024  # small enough that a chunk is ~1 ms of link time at 100 Mbit/s
_EOF = object()


class LinkDirection:
    """Serializes chunks onto one direction of the link at `rate` bytes per second."""

    def __init__(self, rate_bytes: float | None, burst_bytes: int = 64 * 1024) -> None:
        self.rate = rate_bytes
        self.burst_seconds = burst_bytes / rate_bytes if rate_bytes else 0.0
        self._busy_until = 0.0

    def reserve(self, now: float, size: int) -> float:
        """When a chunk of `size` bytes read at `now` has finished crossing the link."""
        if not self.rate:
            return now
        # An idle link may "catch up" by up to one burst, not more.
        start = max(self._busy_until, now - self.burst_seconds)
        self._busy_until = start + size / self.rate
        return max(self._busy_until, now)


@dataclass
class ConnectionStats:
    number: int
    bytes_to_client: int = 0
    bytes_to_upstream: int = 0
    closed: bool = False


@dataclass
class WanProxy:
    """Proxy 127.0.0.1:<port> -> `upstream` ("host:port").

    latency: one-way seconds (default 20 ms each way, so 40 ms RTT added);
    bandwidth_bits: per direction, bits per second (default 100 Mbit/s; None = unlimited).
    """

    upstream: str
    latency: float = 0.020
    bandwidth_bits: float | None = 100e6
    connections: list[ConnectionStats] = field(default_factory=list)
    bytes_to_client: int = 0
    bytes_to_upstream: int = 0
    connection_count: int = 0

    def __post_init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._numbers = itertools.count(1)
        rate = self.bandwidth_bits / 8 if self.bandwidth_bits else None
        self._down = LinkDirection(rate)  # upstream -> client
        self._up = LinkDirection(rate)  # client -> upstream
        self.port = 0

    @classmethod
    def counting(cls, upstream: str) -> WanProxy:
        """No delay, no limit: only counts bytes and connections."""
        return cls(upstream, latency=0.0, bandwidth_bits=None)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def reset_counters(self) -> None:
        """Zero the byte counters and forget closed connections."""
        self.bytes_to_client = 0
        self.bytes_to_upstream = 0
        self.connection_count = 0
        self.connections = [c for c in self.connections if not c.closed]
        for stats in self.connections:
            stats.bytes_to_client = stats.bytes_to_upstream = 0

    def start(self) -> WanProxy:
        ready: threading.Event = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._handle, "127.0.0.1", 0)
                )
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:
                errors.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"wanproxy-{self.upstream}", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise RuntimeError(f"wan proxy for {self.upstream} did not start") from errors[0]
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        self._thread.join(timeout=10)
        self._loop = None
        self._thread = None

    def __enter__(self) -> WanProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        stats = ConnectionStats(next(self._numbers))
        self.connections.append(stats)
        self.connection_count += 1
        host, _, port = self.upstream.rpartition(":")
        try:
            upstream_r, upstream_w = await asyncio.open_connection(host, int(port))
        except OSError:
            client_w.close()
            stats.closed = True
            self._tasks.discard(task)
            return
        try:
            # A TaskGroup cancels the other direction when one fails.
            async with asyncio.TaskGroup() as group:
                group.create_task(
                    self._pump(client_r, upstream_w, self._up, stats, to_client=False)
                )
                group.create_task(
                    self._pump(upstream_r, client_w, self._down, stats, to_client=True)
                )
        except* OSError:
            pass  # one side went away; closing both below is all there is to do
        except* asyncio.CancelledError:
            # stop() cancels open connections. Ending quietly matters: asyncio's stream
            # server logs a traceback for a handler task that ends cancelled.
            pass
        finally:
            stats.closed = True
            for writer in (client_w, upstream_w):
                writer.close()
            self._tasks.discard(task)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        link: LinkDirection,
        stats: ConnectionStats,
        *,
        to_client: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        in_flight: asyncio.Queue[tuple[float, bytes] | object] = asyncio.Queue()
        deliver = asyncio.create_task(self._deliver(in_flight, writer, stats, to_client=to_client))
        try:
            while chunk := await reader.read(CHUNK):
                now = loop.time()
                sent = link.reserve(now, len(chunk))
                if sent > now:  # hold the reader while the link is busy: backpressure
                    await asyncio.sleep(sent - now)
                in_flight.put_nowait((sent + self.latency, chunk))
            in_flight.put_nowait(_EOF)
            await deliver
        finally:
            if not deliver.done():
                deliver.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await deliver

    async def _deliver(
        self,
        in_flight: asyncio.Queue[tuple[float, bytes] | object],
        writer: asyncio.StreamWriter,
        stats: ConnectionStats,
        *,
        to_client: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            item = await in_flight.get()
            if item is _EOF:
                if writer.can_write_eof():
                    writer.write_eof()  # pass the half-close on, as TCP would
                return
            assert isinstance(item, tuple)
            due, chunk = item
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            writer.write(chunk)
            await writer.drain()
            if to_client:
                stats.bytes_to_client += len(chunk)
                self.bytes_to_client += len(chunk)
            else:
                stats.bytes_to_upstream += len(chunk)
                self.bytes_to_upstream += len(chunk)
