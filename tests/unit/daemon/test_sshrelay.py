"""``build --ssh --builder``: the relay between the client's ForwardSsh call (threads)
and a build's steps (trio): channels carry bytes both ways and end when either side
closes; only one call per build; nothing opens once the call is gone."""

from __future__ import annotations

import threading

import pytest
import trio

from lazybuild.api.control.v1 import control_pb2
from lazybuild.daemon.sshrelay import SshRelayError, SshRelays


def _answering_client(relays: SshRelays, build_id: str, opened: list[str]) -> threading.Thread:
    """A client that answers every message with ``pong:`` + it, and closes when told."""

    def run() -> None:
        relay = relays.claim(build_id)
        assert relay is not None
        for frame in relay.frames_out():
            if frame.agent_id:
                opened.append(frame.agent_id)
            if frame.data:
                relay.deliver(
                    control_pb2.SshFrame(channel=frame.channel, data=b"pong:" + frame.data)
                )
            if frame.close:
                relay.deliver(control_pb2.SshFrame(channel=frame.channel, close=True))

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_channel_carries_bytes_both_ways_until_both_sides_close() -> None:
    relays = SshRelays()
    relay = relays.expect("b1", frozenset({"default"}))
    opened: list[str] = []

    async def main() -> None:
        client = _answering_client(relays, "b1", opened)
        for _ in range(2):
            stream = await relay.open_channel("default")
            await stream.send_all(b"ping")
            assert await stream.receive_some() == b"pong:ping"
            await stream.send_eof()
            assert await stream.receive_some() == b""
            await stream.aclose()
        assert relays.claim("b1", timeout=0) is None  # one call per build
        relays.forget("b1")
        await trio.to_thread.run_sync(client.join)

    trio.run(main)
    assert opened == ["default", "default"]


def test_nothing_opens_once_the_clients_call_is_gone() -> None:
    relays = SshRelays()
    relay = relays.expect("b2", frozenset({"default"}))
    claimed = relays.claim("b2")
    assert claimed is relay
    relay.client_gone()

    async def main() -> None:
        with pytest.raises(SshRelayError, match="not connected"):
            await relay.open_channel("default")

    trio.run(main)
    assert relays.claim("unknown", timeout=0) is None


_PIECE = 256 << 10


def test_a_client_flooding_a_channel_waits_for_the_step_to_read() -> None:
    """The client's bytes wait in the call's thread, not in the daemon's memory: a
    frame of 10 pieces is taken in as the step reads, at most 4 pieces ahead of it."""
    relays = SshRelays()
    relay = relays.expect("b3", frozenset({"default"}))
    assert relays.claim("b3") is relay

    async def main() -> None:
        stream = await relay.open_channel("default")
        channel = next(f for f in relay.frames_out() if f.agent_id).channel
        flood = threading.Thread(
            target=relay.deliver,
            args=(control_pb2.SshFrame(channel=channel, data=b"x" * (10 * _PIECE)),),
        )
        flood.start()
        await trio.sleep(0.3)
        assert flood.is_alive(), "10 pieces were taken in with nobody reading"
        received = 0
        while received < 10 * _PIECE:
            received += len(await stream.receive_some())
        await trio.to_thread.run_sync(flood.join)
        await stream.aclose()
        relays.forget("b3")

    trio.run(main)


def test_a_step_writing_to_a_client_that_does_not_read_waits() -> None:
    """A step's bytes for the client wait in the step once 16 frames are queued."""
    relays = SshRelays()
    relay = relays.expect("b4", frozenset({"default"}))
    assert relays.claim("b4") is relay
    frames = relay.frames_out()

    async def main() -> None:
        stream = await relay.open_channel("default")
        assert next(frames).agent_id == "default"
        with trio.move_on_after(0.3) as waited:
            await stream.send_all(b"y" * (20 * _PIECE))
        assert waited.cancelled_caught, "20 frames were queued for a client not reading"
        assert relay._outgoing.qsize() == 16

        async def read_all() -> int:
            got = 0
            while got < 20 * _PIECE:
                got += len((await trio.to_thread.run_sync(next, frames)).data)
            return got

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_all, b"z" * (4 * _PIECE))
            assert await read_all() == 20 * _PIECE
        relays.forget("b4")

    trio.run(main)


def test_connections_to_the_clients_agent_are_bounded() -> None:
    relays = SshRelays()
    relay = relays.expect("b5", frozenset({"default"}))
    assert relays.claim("b5") is relay

    async def main() -> None:
        streams = [await relay.open_channel("default") for _ in range(64)]
        with pytest.raises(SshRelayError, match="64 connections"):
            await relay.open_channel("default")
        await streams[0].aclose()
        await (await relay.open_channel("default")).aclose()
        relays.forget("b5")

    trio.run(main)
