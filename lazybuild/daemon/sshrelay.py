"""``build --ssh`` through the daemon: the client's ssh agents, relayed over its
``ForwardSsh`` call.

The daemon never opens a path the client names. The client connects to its own agents
(``$SSH_AUTH_SOCK``, a socket it was given, or a private agent of key files it started)
and the daemon reaches them only through the call: each connection a RUN step makes to
its agent socket (``worker.sshforward``) becomes a channel the daemon opens with an
``SshFrame`` naming the agent id, whose bytes then go both ways in frames until each
side has closed it.

An ``SshRelay`` joins the two worlds of one build: the call's grpc threads (frames in,
frames out) and the build on the daemon's trio loop (``open_channel``, a trio stream).
A call attaches by the build's id, the capability the client alone was given with the
build (as ``Cancel`` takes it); a second call for the same build is refused.

Both sides' bytes come from outside (the client's frames, and whatever a RUN step writes
to its socket), so what the relay holds is bounded: at most ``_MAX_CHANNELS`` channels
at once, ``_CHANNEL_PIECES`` pieces of ``_FRAME_BYTES`` waiting per channel for the step
(the call's reading thread waits for room, which holds the client back through grpc's
flow control), and ``_OUTGOING_FRAMES`` data frames waiting for the client (a step's
``send_all`` waits for room).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import trio

from lazybuild.errors import LazybuildError

if TYPE_CHECKING:
    from lazybuild.api.control.v1 import control_pb2

__all__ = ["SshRelay", "SshRelayError", "SshRelays", "relays"]

# How long a step waits for the client's ForwardSsh call (it starts with the build).
ATTACH_SECONDS = 60.0
_FRAME_BYTES = 256 << 10
_MAX_CHANNELS = 64
_CHANNEL_PIECES = 4
_OUTGOING_FRAMES = 16


# A channel's bytes from the client, and the trio loop they are handed to.
_Receiver = tuple[trio.MemorySendChannel[bytes], trio.lowlevel.TrioToken]
# A frame for the client, and the loop whose room a data frame takes (None: no room).
_Outgoing = tuple["control_pb2.SshFrame", trio.lowlevel.TrioToken | None]


class SshRelayError(LazybuildError):
    """The client's ssh agents cannot be reached (its ForwardSsh call is not there)."""


class SshRelay:
    def __init__(self, build_id: str, agent_ids: frozenset[str]) -> None:
        self.build_id = build_id
        self.agent_ids = agent_ids
        self._lock = threading.Lock()
        self._attached = threading.Event()
        self._claimed = False
        self._gone = False  # the client's call ended, or the build did
        # A frame, and for a data frame the room it takes until the client has it.
        self._outgoing: queue.Queue[_Outgoing | None] = queue.Queue()
        self._channels: dict[int, _Receiver] = {}
        self._next_channel = 1
        self._room = trio.Semaphore(_OUTGOING_FRAMES)  # acquired on the build's loop

    # -- the client's call (a grpc worker thread) -------------------------------------

    def claim(self) -> bool:
        with self._lock:
            if self._claimed or self._gone:
                return False
            self._claimed = True
        self._attached.set()
        return True

    def frames_out(self) -> Iterator[control_pb2.SshFrame]:
        """The frames for the client, until the build or the call ends."""
        while (outgoing := self._outgoing.get()) is not None:
            frame, token = outgoing
            yield frame
            if token is not None:  # the client asked for the next: this one is sent
                with contextlib.suppress(trio.RunFinishedError):
                    trio.from_thread.run_sync(self._room.release, trio_token=token)

    def deliver(self, frame: control_pb2.SshFrame) -> None:
        """A frame from the client: bytes of a channel, or its end."""
        with self._lock:
            found = self._channels.get(frame.channel)
        if found is None:
            return  # a channel the build already closed
        send, token = found
        try:
            data = bytes(frame.data)
            for start in range(0, len(data), _FRAME_BYTES):
                # Waits while the channel is full: the step reads slower than the client.
                piece = data[start : start + _FRAME_BYTES]
                trio.from_thread.run(send.send, piece, trio_token=token)
            if frame.close:
                trio.from_thread.run_sync(send.close, trio_token=token)
        except (trio.RunFinishedError, trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def client_gone(self) -> None:
        """The call ended: every open channel ends, and no new one opens."""
        self._end()

    # -- the build (the daemon's trio loop) -------------------------------------------

    async def open_channel(self, agent_id: str) -> trio.abc.HalfCloseableStream:
        """A connection to the client's agent ``agent_id``."""
        attached = await trio.to_thread.run_sync(
            self._attached.wait, ATTACH_SECONDS, abandon_on_cancel=True
        )
        with self._lock:
            if not attached or self._gone:
                raise SshRelayError(
                    f"ssh agent {agent_id!r}: the client's agents are not connected to the "
                    "daemon (its ForwardSsh call is missing or ended)"
                )
            if len(self._channels) >= _MAX_CHANNELS:
                raise SshRelayError(
                    f"ssh agent {agent_id!r}: {_MAX_CHANNELS} connections to it are open already"
                )
            channel = self._next_channel
            self._next_channel += 1
            send, receive = trio.open_memory_channel[bytes](_CHANNEL_PIECES)
            self._channels[channel] = (send, trio.lowlevel.current_trio_token())
        self._put(channel=channel, agent_id=agent_id)
        return _Channel(self, channel, receive)

    def finish(self) -> None:
        """The build is over: the call's stream of frames ends."""
        self._end()

    # -- both ---------------------------------------------------------------------------

    def _put(self, **fields: object) -> None:
        from lazybuild.api.control.v1 import control_pb2

        self._outgoing.put((control_pb2.SshFrame(**fields), None))  # type: ignore[arg-type]

    async def _put_data(self, channel: int, data: bytes) -> None:
        """A data frame for the client, once fewer than ``_OUTGOING_FRAMES`` wait."""
        from lazybuild.api.control.v1 import control_pb2

        await self._room.acquire()
        frame = control_pb2.SshFrame(channel=channel, data=data)
        self._outgoing.put((frame, trio.lowlevel.current_trio_token()))

    def _forget(self, channel: int) -> None:
        with self._lock:
            self._channels.pop(channel, None)

    def _end(self) -> None:
        with self._lock:
            if self._gone:
                return
            self._gone = True
            channels = list(self._channels.values())
            self._channels.clear()
        self._attached.set()  # a step still waiting hears that it is over
        self._outgoing.put(None)
        for send, token in channels:
            try:
                trio.from_thread.run_sync(send.close, trio_token=token)
            except (trio.RunFinishedError, RuntimeError):
                # Called from the loop's own thread (the build's end): close directly.
                send.close()


class _Channel(trio.abc.HalfCloseableStream):
    """One connection to the client's agent, as a trio stream."""

    def __init__(
        self, relay: SshRelay, channel: int, receive: trio.MemoryReceiveChannel[bytes]
    ) -> None:
        self._relay = relay
        self._channel = channel
        self._receive = receive
        self._pending = b""
        self._eof_sent = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof_sent:
            raise trio.ClosedResourceError("the channel's sending side is closed")
        view = bytes(data)
        for start in range(0, len(view), _FRAME_BYTES):
            await self._relay._put_data(self._channel, view[start : start + _FRAME_BYTES])
        await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        if not self._eof_sent:
            self._eof_sent = True
            self._relay._put(channel=self._channel, close=True)
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if not self._pending:
            try:
                self._pending = await self._receive.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return b""
        limit = max_bytes or len(self._pending)
        piece, self._pending = self._pending[:limit], self._pending[limit:]
        return piece

    async def aclose(self) -> None:
        if not self._eof_sent:
            self._eof_sent = True
            self._relay._put(channel=self._channel, close=True)
        self._relay._forget(self._channel)
        self._receive.close()
        await trio.lowlevel.checkpoint()


class SshRelays:
    """The relays of the builds running, by build id."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._relays: dict[str, SshRelay] = {}

    def expect(self, build_id: str, agent_ids: frozenset[str]) -> SshRelay:
        relay = SshRelay(build_id, agent_ids)
        with self._lock:
            self._relays[build_id] = relay
            self._lock.notify_all()
        return relay

    def get(self, build_id: str) -> SshRelay | None:
        with self._lock:
            return self._relays.get(build_id)

    def claim(self, build_id: str, timeout: float = 10.0) -> SshRelay | None:
        """The relay of the build ``build_id`` for its client's call (waiting a little
        for the build to be registered); None when there is none to claim."""
        with self._lock:
            self._lock.wait_for(lambda: build_id in self._relays, timeout)
            relay = self._relays.get(build_id)
        return relay if relay is not None and relay.claim() else None

    def forget(self, build_id: str) -> None:
        with self._lock:
            relay = self._relays.pop(build_id, None)
        if relay is not None:
            relay.finish()


relays = SshRelays()
