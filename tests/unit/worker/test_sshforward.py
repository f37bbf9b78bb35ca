"""RUN --mount=type=ssh on the worker's side: the step's own socket relays to the agent;
a mount whose id was not given is skipped or fails as BuildKit says."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
from pathlib import Path

import pytest
import trio

from lazybuild.graph.ops import ExecMount
from lazybuild.worker.execmounts import MountSetupError, _ssh_socket
from lazybuild.worker.sshforward import _connect, forwarded_agent


async def _echo_agent(listener: trio.SocketListener) -> None:
    async def answer(stream: trio.SocketStream) -> None:
        async with stream:
            async for data in stream:
                await stream.send_all(b"agent:" + data)

    await trio.serve_listeners(answer, [listener])


async def _listening(path: Path) -> trio.SocketListener:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(path))
    sock.listen(8)
    return trio.SocketListener(sock)


async def _ask(path: Path, data: bytes) -> bytes:
    stream = await _connect(str(path))  # through the directory: the path is long
    async with stream:
        await stream.send_all(data)
        return await stream.receive_some(100)


def test_each_connection_is_relayed_to_the_agent_with_the_mounts_owner_and_mode(
    tmp_path: Path,
) -> None:
    agent = tmp_path / "agent.sock"
    # A staging area's path can be longer than a socket address may be.
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_echo_agent, await _listening(agent))
            async with forwarded_agent(
                str(agent), deep / "ssh1", uid=os.getuid(), gid=os.getgid(), mode=0o660
            ) as path:
                st = os.stat(path)
                assert stat.S_ISSOCK(st.st_mode)
                assert stat.S_IMODE(st.st_mode) == 0o660
                assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
                assert await _ask(path, b"one") == b"agent:one"
                assert await _ask(path, b"two") == b"agent:two"
            with pytest.raises(OSError):
                await _ask(path, b"three")
            assert stat.S_IMODE(os.stat(agent).st_mode) != 0o660  # the agent's own is untouched
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_cancelled_step_ends_its_relays_and_closes_its_socket_at_once(tmp_path: Path) -> None:
    """A step cancelled (as a Ctrl-C cancels a build) while a connection through its
    socket is open: the relay ends at once, the step's side sees the end, and nothing
    listens any more; the socket's directory goes with the staging area, unhindered."""
    agent = tmp_path / "agent.sock"
    area = tmp_path / "area"
    area.mkdir()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_echo_agent, await _listening(agent))
            client: trio.SocketStream | None = None
            with trio.fail_after(10), trio.CancelScope() as step:
                async with forwarded_agent(
                    str(agent), area / "ssh1", uid=os.getuid(), gid=os.getgid(), mode=0o600
                ) as path:
                    client = await _connect(str(path))
                    await client.send_all(b"hello")
                    assert await client.receive_some(100) == b"agent:hello"
                    step.cancel()
                    await trio.sleep_forever()
            assert step.cancelled_caught
            assert client is not None
            with trio.fail_after(10):
                assert await client.receive_some(100) == b""  # the relay hung up
            await client.aclose()
            with pytest.raises(OSError):
                await _ask(path, b"again")
            nursery.cancel_scope.cancel()

    trio.run(main)
    shutil.rmtree(area)
    assert not area.exists()


def _mount(**fields: object) -> ExecMount:
    return ExecMount(dest="/run/buildkit/ssh_agent.0", kind="ssh", **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("agents", "message"),
    [
        ({}, 'no SSH key "default" forwarded from the client'),
        ({"other": "/nowhere"}, "unset ssh forward key default"),
    ],
)
def test_a_required_mount_without_its_agent_fails_in_buildkits_words(
    agents: dict[str, str], message: str
) -> None:
    resources = _Resources(agents)

    async def main() -> None:
        async with contextlib.AsyncExitStack() as stack:
            await _ssh_socket(
                _mount(secret_id="default", required=True),
                1,
                None,  # type: ignore[arg-type]
                resources,  # type: ignore[arg-type]
                stack,
            )

    with pytest.raises(MountSetupError, match=message):
        trio.run(main)


def test_an_optional_mount_without_its_agent_is_skipped() -> None:
    async def main() -> None:
        async with contextlib.AsyncExitStack() as stack:
            spec = await _ssh_socket(
                _mount(secret_id="git"),
                1,
                None,  # type: ignore[arg-type]
                _Resources({"default": "/x"}),  # type: ignore[arg-type]
                stack,
            )
            assert spec is None

    trio.run(main)


class _Resources:
    def __init__(self, agents: dict[str, str]) -> None:
        self.ssh_agents = agents
