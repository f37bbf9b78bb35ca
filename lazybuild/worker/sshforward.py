"""An ssh agent socket for one RUN step (``RUN --mount=type=ssh``), as BuildKit makes it.

The step gets a socket of its own, in its staging area, owned by the mount's ``uid``/
``gid`` with its ``mode``; every connection to it is relayed, byte for byte, to the
build's agent (``--ssh``). The agent's own socket is never chowned, chmodded or mounted
into the container, and the relay stops with the step.

Unix socket paths are limited to 107 bytes; staging areas and agent sockets are reached
through ``/proc/self/fd/N/NAME`` of their directory, whatever their length.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from lazybuild.errors import LazybuildError

log = logging.getLogger(__name__)

SOCKET_NAME = "agent.sock"
_BACKLOG = 64

# Where an agent is: its socket's path on this machine, or (a build through the daemon,
# ``daemon.sshrelay``) a function opening a connection to the client's agent.
SshUpstream = str | Callable[[], Awaitable[trio.abc.HalfCloseableStream]]


@asynccontextmanager
async def forwarded_agent(
    upstream: SshUpstream, directory: Path, *, uid: int, gid: int, mode: int
) -> AsyncIterator[Path]:
    """A socket in ``directory`` (new, 0700) relaying to the agent at ``upstream``."""
    directory.mkdir(mode=0o700)
    path = directory / SOCKET_NAME
    listening = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with _short_path(path) as short:
            await listening.bind(short)
        os.chown(path, uid, gid)
        os.chmod(path, mode & 0o777)
        listening.listen(_BACKLOG)
    except BaseException:
        listening.close()
        raise
    listener = trio.SocketListener(listening)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, _relay_to(upstream), [listener])
            try:
                yield path
            finally:
                nursery.cancel_scope.cancel()
    finally:
        listening.close()  # serve_listeners leaves it open; no await: maybe cancelled


def _relay_to(upstream: SshUpstream) -> Callable[[trio.SocketStream], Awaitable[None]]:
    async def relay(client: trio.SocketStream) -> None:
        async with client:
            try:
                agent = await (_connect(upstream) if isinstance(upstream, str) else upstream())
            except (OSError, LazybuildError) as error:
                log.warning("ssh agent: %s", error)
                return
            async with agent, trio.open_nursery() as nursery:
                nursery.start_soon(_pump, client, agent)
                nursery.start_soon(_pump, agent, client)

    return relay


async def _connect(path: str) -> trio.SocketStream:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with _short_path(Path(path)) as short:
            await sock.connect(short)
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def _pump(source: trio.abc.HalfCloseableStream, dest: trio.abc.HalfCloseableStream) -> None:
    """One direction of a connection; the other side is told of its end (half close)."""
    try:
        async for data in source:
            await dest.send_all(data)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await dest.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        # One side went away: close both, so the other direction ends too.
        await source.aclose()
        await dest.aclose()


@contextlib.contextmanager
def _short_path(path: Path) -> Iterator[str]:
    """``path`` short enough for a socket address: as it is, or through its directory's
    descriptor (held open while the address is used)."""
    text = str(path)
    if len(os.fsencode(text)) < 100:
        yield text
        return
    descriptor = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{descriptor}/{path.name}"
    finally:
        os.close(descriptor)
