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
