"""``build --ssh``: the agents a build's ``RUN --mount=type=ssh`` steps talk to.

A socket (``$SSH_AUTH_SOCK`` for ``default``, or one named) is forwarded as it is. Key
files are loaded into a private ``ssh-agent`` started here, on a socket in a temporary
directory of its own; it is killed and the directory removed when the build ends, also
when it fails or is interrupted, and a watchdog kills it when this process is killed
(``_watchdog``), so no agent holding the keys outlives the build. ``ssh-add``
asks for a key's passphrase on the terminal, as buildx does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket as sockets
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from lazybuild.cli.build_flags import SshSource
from lazybuild.errors import UsageError

_AGENT_START_SECONDS = 10.0
_AGENT_STOP_SECONDS = 5.0


@contextlib.contextmanager
def ssh_agents(sources: Iterable[SshSource]) -> Iterator[dict[str, str]]:
    """The agent socket of every ``--ssh`` id, for as long as the block runs."""
    with contextlib.ExitStack() as stack:
        sockets: dict[str, str] = {}
        for source in sources:
            if source.socket is not None:
                sockets[source.id] = str(source.socket)
            else:
                sockets[source.id] = stack.enter_context(private_agent(source.id, source.keys))
        yield sockets


@contextlib.contextmanager
def private_agent(agent_id: str, keys: Iterable[Path]) -> Iterator[str]:
    """An ``ssh-agent`` holding ``keys``, on a socket of its own; gone afterwards."""
    directory = tempfile.mkdtemp(prefix="lazybuild-ssh-")
    try:
        socket = os.path.join(directory, "agent.sock")
        try:
            process = subprocess.Popen(
                ["ssh-agent", "-D", "-a", socket],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        except OSError as error:
            why = error.strerror
            raise UsageError(f"--ssh {agent_id}: cannot start ssh-agent: {why}") from None
        try:
            watchdog = _watchdog(process.pid, directory)
        except BaseException:  # no watchdog (fork failed, or interrupted): no agent either
            process.kill()
            process.wait()
            if process.stderr is not None:
                process.stderr.close()
            raise
        try:
            _wait_for_socket(agent_id, process, socket)
            _add_keys(agent_id, socket, keys)
            yield socket
        finally:
            _stop(process, watchdog)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _watchdog(pid: int, directory: str) -> subprocess.Popen[bytes]:
    """A shell that kills the agent ``pid`` and removes ``directory`` once its standard
    input, a pipe only this process writes, ends: when this process ends however it
    ends, SIGKILL included. (ssh-agent is set-group-id on Debian, which clears a
    parent-death signal, so the agent cannot be tied to this process directly.) In a
    session of its own, so that Ctrl-C on the terminal does not end it first."""
    script = 'read -r _; kill -TERM "$1" 2>/dev/null; rm -rf -- "$2"'
    return subprocess.Popen(
        ["sh", "-c", script, "sh", str(pid), directory],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _wait_for_socket(agent_id: str, process: subprocess.Popen[bytes], socket: str) -> None:
    # The socket file appears at bind(), before the agent listens: wait for a connection.
    deadline = time.monotonic() + _AGENT_START_SECONDS
    while not _answers(socket):
        if process.poll() is not None:
            stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise UsageError(
                f"--ssh {agent_id}: ssh-agent exited: {stderr.strip() or process.returncode}"
            )
        if time.monotonic() > deadline:
            raise UsageError(f"--ssh {agent_id}: ssh-agent did not start")
        time.sleep(0.01)


def _answers(path: str) -> bool:
    with contextlib.closing(sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM)) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def _add_keys(agent_id: str, socket: str, keys: Iterable[Path]) -> None:
    env = {**os.environ, "SSH_AUTH_SOCK": socket}
    env.pop("SSH_ASKPASS", None)  # a passphrase is asked for on the terminal, if any
    for key in keys:
        result = subprocess.run(
            ["ssh-add", "-q", str(key)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=False,
        )
        if result.returncode != 0:
            why = result.stderr.decode(errors="replace").strip().splitlines()
            raise UsageError(
                f"--ssh {agent_id}: failed to parse {key}: {why[-1] if why else 'ssh-add failed'}"
            )


def _stop(process: subprocess.Popen[bytes], watchdog: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
    # The watchdog kills the agent too; it ends before the agent is reaped, so its pid
    # cannot have been reused by then.
    if watchdog.stdin is not None:
        watchdog.stdin.close()
    try:
        watchdog.wait(_AGENT_STOP_SECONDS)
    except subprocess.TimeoutExpired:
        watchdog.kill()
        watchdog.wait()
    try:
        process.wait(_AGENT_STOP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stderr is not None:
        process.stderr.close()
