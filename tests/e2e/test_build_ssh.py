"""``build --ssh`` end to end, against what buildx documents for ``--ssh`` and BuildKit
does with ``RUN --mount=type=ssh`` (dockerd's legacy builder has no ``--ssh`` to
compare with): a real ``ssh-agent``, keys made by ``ssh-keygen``, and a step that talks
the agent protocol through the socket it was given. The base image is Debian with
python3 (no ssh client in it): ``agent.py`` asks the agent for its identities."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.buildsupport import assert_nothing_left, lazybuild, write_context
from tests.support.imagebuild import cached_rootfs_image, push_oci_layout
from tests.support.registry import Registry

AGENT_PY = """\
import os, socket, stat, struct, sys

path = os.environ["SSH_AUTH_SOCK"]
assert stat.S_ISSOCK(os.stat(path).st_mode), path
client = socket.socket(socket.AF_UNIX)
client.connect(path)
client.sendall(struct.pack(">IB", 1, 11))  # SSH_AGENTC_REQUEST_IDENTITIES


def read(count):
    data = b""
    while len(data) < count:
        more = client.recv(count - len(data))
        if not more:
            sys.exit("the agent hung up")
        data += more
    return data


length, kind = struct.unpack(">IB", read(5))
body = read(length - 1)
assert kind == 12, kind  # SSH_AGENT_IDENTITIES_ANSWER
(count,) = struct.unpack(">I", body[:4])
offset = 4
for _ in range(count):
    (size,) = struct.unpack(">I", body[offset : offset + 4])
    offset += 4 + size
    (size,) = struct.unpack(">I", body[offset : offset + 4])
    print(body[offset + 4 : offset + 4 + size].decode())
    offset += 4 + size
"""

DOCKERFILE = """\
ARG BASE
FROM ${BASE}
RUN --mount=type=bind,target=/ctx --mount=type=ssh \\
    python3 /ctx/agent.py > /keys && echo "$SSH_AUTH_SOCK" > /sock
RUN --mount=type=ssh,id=deploy,target=/agent,uid=1000,mode=0640,required=true \\
    stat -c '%a %u %F' /agent > /deploy
"""


@pytest.fixture(scope="module")
def base_image(registry: Registry, python_rootfs: Path) -> str:
    push_oci_layout(cached_rootfs_image(python_rootfs), registry.host, "test/python", "gzip")
    return f"{registry.host}/test/python:gzip"


def _key(directory: Path, comment: str) -> Path:
    path = directory / comment
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
    )
    return path


@pytest.fixture
def user_agent(tmp_path: Path) -> Iterator[str]:
    """A user's running ssh-agent (as ``eval $(ssh-agent)`` leaves it) with one key."""
    sock = str(tmp_path / "user-agent.sock")
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", sock], stdout=subprocess.DEVNULL)
    try:
        while not os.path.exists(sock):
            assert agent.poll() is None
        env = {**os.environ, "SSH_AUTH_SOCK": sock}
        subprocess.run(["ssh-add", "-q", str(_key(tmp_path, "user-key"))], env=env, check=True)
        yield sock
    finally:
        agent.terminate()
        agent.wait()


def _private_agents_left() -> list[Path]:
    return list(Path(tempfile.gettempdir()).glob("lazybuild-ssh-*"))


def test_key_files_and_a_forwarded_agent_reach_the_steps_as_buildx_documents(
    base_image: str, user_agent: str, tmp_path: Path
) -> None:
    """buildx: ``--ssh default`` is $SSH_AUTH_SOCK's agent, ``ID=KEY`` loads the key; the
    first ssh mount is SSH_AUTH_SOCK at /run/buildkit/ssh_agent.0, target/uid/mode as
    asked. The key files' agent is gone when the build is."""
    state = tmp_path / "state"
    context = write_context(tmp_path / "ctx", DOCKERFILE, {"agent.py": AGENT_PY})
    deploy_key = _key(tmp_path, "deploy-key")
    before = set(_private_agents_left())
    out = tmp_path / "out"
    lazybuild(
        state,
        "build",
        "--progress=plain",
        "--build-arg",
        f"BASE={base_image}",
        "--ssh",
        "default",
        "--ssh",
        f"deploy={deploy_key}",
        "-o",
        f"type=local,dest={out}",
        str(context),
        env={**os.environ, "SSH_AUTH_SOCK": user_agent},
    )
    assert (out / "keys").read_text().split() == ["user-key"]
    assert (out / "sock").read_text().strip() == "/run/buildkit/ssh_agent.0"
    assert (out / "deploy").read_text().strip() == "640 1000 socket"
    assert not (out / "agent").exists() or (out / "agent").stat().st_size == 0
    assert set(_private_agents_left()) == before
    assert_nothing_left(state)

    # Only the mounts' ids and targets are in the steps' keys, never the agent: the same
    # build with other keys is cached (as in BuildKit).
    other = _key(tmp_path, "other-key")
    again = lazybuild(
        state,
        "build",
        "--progress=plain",
        "--build-arg",
        f"BASE={base_image}",
        "--ssh",
        f"default={other}",
        "--ssh",
        f"deploy={other}",
        str(context),
    )
    # The last step is a hit, so the one before it is not even looked at.
    assert "[3/3] RUN --mount=type=ssh,id=deploy" in again.stderr, again.stderr
    assert "#1 CACHED" in again.stderr and "[2/3]" not in again.stderr, again.stderr
    assert set(_private_agents_left()) == before
    assert_nothing_left(state)


def test_a_mount_whose_id_was_not_given_is_skipped_or_fails_as_buildkit_says(
    base_image: str, tmp_path: Path
) -> None:
    """BuildKit: an optional ssh mount without its agent is left out (SSH_AUTH_SOCK is
    still set: it is part of the step); a required one fails the step."""
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    optional = write_context(
        tmp_path / "optional",
        "ARG BASE\nFROM ${BASE}\n"
        "RUN --mount=type=ssh test ! -e /run/buildkit/ssh_agent.0 "
        '&& echo "$SSH_AUTH_SOCK" > /sock\n',
    )
    out = tmp_path / "out"
    lazybuild(
        state,
        "build",
        "--build-arg",
        f"BASE={base_image}",
        "-o",
        f"type=local,dest={out}",
        str(optional),
        env=env,
    )
    assert (out / "sock").read_text().strip() == "/run/buildkit/ssh_agent.0"

    required = write_context(
        tmp_path / "required",
        "ARG BASE\nFROM ${BASE}\nRUN --mount=type=ssh,id=git,required=true true\n",
    )
    for flags, message in (
        ((), 'no SSH key "git" forwarded from the client'),
        (("--ssh", f"other={_key(tmp_path, 'k')}"), "unset ssh forward key git"),
    ):
        failed = lazybuild(
            state,
            "build",
            "--build-arg",
            f"BASE={base_image}",
            *flags,
            str(required),
            env=env,
            check=False,
        )
        assert failed.returncode == 1
        assert "Dockerfile:3" in failed.stderr and message in failed.stderr, failed.stderr
    assert_nothing_left(state)


def _agents_holding(sock_dir_prefix: str) -> list[str]:
    """Running ssh-agent processes whose socket lies in a private agent's directory."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"ssh-agent") and sock_dir_prefix.encode() in b" ".join(argv):
            found.append(proc.name)
    return found


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_build_takes_its_private_agent_down(
    signum: int, base_image: str, tmp_path: Path
) -> None:
    """Ctrl-C (or SIGTERM) while a step holds a connection to the agent: the build
    stops, the agent holding the key is killed and its socket directory removed, and
    nothing of the step is left (mounts, processes, its staging area).

    The step says so once connected, in words its command line (the step's title in the
    progress) does not contain: the signal comes while the step runs, not as it starts.
    """
    state = tmp_path / "state"
    context = write_context(
        tmp_path / "ctx",
        "ARG BASE\nFROM ${BASE}\n"
        "RUN --mount=type=ssh python3 -c 'import os, socket, time; "
        's = socket.socket(socket.AF_UNIX); s.connect(os.environ["SSH_AUTH_SOCK"]); '
        'print("agent-" + "is-up", flush=True); time.sleep(300)\'\n',
    )
    before = set(_private_agents_left())
    build = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lazybuild",
            "--state-dir",
            str(state),
            "build",
            "--progress=plain",
            "--build-arg",
            f"BASE={base_image}",
            "--ssh",
            f"default={_key(tmp_path, 'k')}",
            str(context),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert build.stderr is not None
        seen = ""
        deadline = time.monotonic() + 300
        while not seen.rstrip().endswith(" agent-is-up"):  # "#2 0.123 agent-is-up"
            line = build.stderr.readline()
            if not line or time.monotonic() > deadline:
                pytest.fail(f"the step never said agent-is-up:\n{seen}")
            seen += line
        started = set(_private_agents_left()) - before
        assert len(started) == 1, started
        (private,) = started
        assert _agents_holding(str(private)), private
        build.send_signal(signum)
        try:
            _, rest = build.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            build.kill()
            _, rest = build.communicate()
            pytest.fail(f"the build did not stop on {signum!r}:\n{seen}{rest}")
        assert build.returncode != 0, rest
    finally:
        if build.poll() is None:
            build.kill()
            build.wait()
    assert set(_private_agents_left()) == before
    assert not _agents_holding(str(private))
    # Right away, no next command in between: the interrupted build left nothing.
    staging = state / "build" / "staging"
    left = sorted(str(p.relative_to(staging)) for p in staging.rglob("*"))
    assert left == [], f"{left}\n{rest}"
    assert_nothing_left(state)


def test_through_the_daemon_the_clients_agents_are_relayed(
    base_image: str, user_agent: str, tmp_path: Path
) -> None:
    """``--builder``: the daemon opens no path of the client's; each connection a step
    makes to its agent socket travels over the client's ForwardSsh call to the client,
    which connects to its own agents (a running one, and a private one of key files)."""
    from tests.integration.test_daemon_build import Daemons

    daemons = Daemons(tmp_path)
    try:
        daemons.start()
        context = write_context(tmp_path / "ctx", DOCKERFILE, {"agent.py": AGENT_PY})
        out = tmp_path / "out"
        before = set(_private_agents_left())
        result = lazybuild(
            tmp_path / "client-state",
            "build",
            "--progress=plain",
            "--builder",
            daemons.address,
            "--build-arg",
            f"BASE={base_image}",
            "--ssh",
            "default",
            "--ssh",
            f"deploy={_key(tmp_path, 'deploy-key')}",
            "-o",
            f"type=local,dest={out}",
            str(context),
            env={**os.environ, "SSH_AUTH_SOCK": user_agent},
        )
        assert (out / "keys").read_text().split() == ["user-key"], result.stderr
        assert (out / "deploy").read_text().strip() == "640 1000 socket"
        assert set(_private_agents_left()) == before

        # A required mount whose id the client did not forward fails as locally.
        required = write_context(
            tmp_path / "required",
            "ARG BASE\nFROM ${BASE}\nRUN --mount=type=ssh,id=git,required=true true\n",
        )
        failed = lazybuild(
            tmp_path / "client-state",
            "build",
            "--builder",
            daemons.address,
            "--build-arg",
            f"BASE={base_image}",
            "--ssh",
            "default",
            str(required),
            env={**os.environ, "SSH_AUTH_SOCK": user_agent},
            check=False,
        )
        assert failed.returncode == 1
        assert "unset ssh forward key git" in failed.stderr, failed.stderr
    finally:
        daemons.stop_all()
