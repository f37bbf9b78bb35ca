"""``build --ssh``: buildx's value syntax, and the private agent made of key files."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazybuild.cli.build_flags import SshSource, ssh_sources
from lazybuild.cli.build_ssh import private_agent, ssh_agents
from lazybuild.errors import UsageError


@pytest.fixture
def agent_socket(tmp_path: Path) -> Iterator[socket.socket]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listening:
        listening.bind(str(tmp_path / "agent.sock"))
        yield listening


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "lazybuild-test", "-f", str(path)],
        check=True,
    )
    return path


def test_default_and_a_bare_id_are_the_agent_of_ssh_auth_sock(
    tmp_path: Path, agent_socket: socket.socket
) -> None:
    env = {"SSH_AUTH_SOCK": str(tmp_path / "agent.sock")}
    assert ssh_sources(["default", "git"], env) == (
        SshSource("default", socket=tmp_path / "agent.sock"),
        SshSource("git", socket=tmp_path / "agent.sock"),
    )


def test_a_socket_path_or_key_files(tmp_path: Path, agent_socket: socket.socket) -> None:
    (tmp_path / "a").write_text("key a")
    (tmp_path / "b").write_text("key b")
    sock = tmp_path / "agent.sock"
    assert ssh_sources([f"default={sock}", f"keys={tmp_path / 'a'},{tmp_path / 'b'}"], {}) == (
        SshSource("default", socket=sock),
        SshSource("keys", keys=(tmp_path / "a", tmp_path / "b")),
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["default"], "invalid empty ssh agent socket: make sure SSH_AUTH_SOCK is set"),
        (["=x"], "expected default or ID"),
        (["a={missing}"], "missing: No such file or directory"),
        (["a={dir}"], "is neither a socket nor a key file"),
        (["a={sock},{key}"], "one agent socket, or key files, not both"),
        (["a={key}", "a={key}"], "invalid duplicate ID a"),
    ],
)
def test_wrong_values_are_one_line(
    values: list[str], message: str, tmp_path: Path, agent_socket: socket.socket
) -> None:
    (tmp_path / "key").write_text("k")
    names = {
        "missing": tmp_path / "missing",
        "dir": tmp_path,
        "sock": tmp_path / "agent.sock",
        "key": tmp_path / "key",
    }
    with pytest.raises(UsageError, match=message):
        ssh_sources([value.format(**names) for value in values], {})


def _listed(sock: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh-add", "-l"],
        env={**os.environ, "SSH_AUTH_SOCK": sock},
        capture_output=True,
        text=True,
        check=False,
    )


def test_key_files_live_in_a_private_agent_that_is_gone_afterwards(key: Path) -> None:
    with private_agent("default", [key]) as sock:
        listed = _listed(sock)
        assert listed.returncode == 0, listed.stderr
        assert "lazybuild-test" in listed.stdout
        directory = Path(sock).parent
    assert not directory.exists()
    assert _listed(sock).returncode != 0


def test_the_private_agent_goes_when_the_build_fails(key: Path) -> None:
    with pytest.raises(RuntimeError), ssh_agents([SshSource("default", keys=(key,))]) as agents:
        directory = Path(agents["default"]).parent
        raise RuntimeError("the build failed")
    assert not directory.exists()


def test_a_file_that_is_no_key_is_one_line(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus"
    bogus.write_text("not a key\n")
    with (
        pytest.raises(UsageError, match=rf"--ssh x: failed to parse {bogus}"),
        private_agent("x", [bogus]),
    ):
        pass
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("lazybuild-ssh-*/agent.sock"))


def test_a_socket_is_forwarded_as_it_is(tmp_path: Path, agent_socket: socket.socket) -> None:
    sock = tmp_path / "agent.sock"
    with ssh_agents([SshSource("default", socket=sock)]) as agents:
        assert agents == {"default": str(sock)}
    assert sock.exists()


def _live_agents_in(directory: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if b"ssh-agent" in argv and directory.encode() in argv and state != "Z":
            found.append(proc.name)
    return found


def test_a_killed_build_leaves_no_agent_holding_its_keys(key: Path) -> None:
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from lazybuild.cli.build_ssh import private_agent\n"
        "with private_agent('x', [Path(sys.argv[1])]) as sock:\n"
        "    print(sock, flush=True)\n"
        "    os.kill(os.getpid(), 9)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(key)], capture_output=True, text=True, check=False
    )
    assert done.returncode == -9, done.stderr
    directory = str(Path(done.stdout.strip()).parent)
    deadline = time.monotonic() + 10
    while _live_agents_in(directory) or Path(directory).exists():
        assert time.monotonic() < deadline, _live_agents_in(directory)
        time.sleep(0.05)


def test_an_agent_whose_watchdog_cannot_start_is_not_left(
    key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lazybuild.cli import build_ssh

    started: list[str] = []
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(prefix: str) -> str:
        started.append(real_mkdtemp(prefix=prefix))
        return started[-1]

    def no_watchdog(pid: int, directory: str) -> subprocess.Popen[bytes]:
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    monkeypatch.setattr(build_ssh, "_watchdog", no_watchdog)
    with pytest.raises(OSError), private_agent("x", [key]):
        pass
    (directory,) = started
    assert _live_agents_in(directory) == []
    assert not Path(directory).exists()
