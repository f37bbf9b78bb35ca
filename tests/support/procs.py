"""Start, wait for and stop the daemons that test fixtures run.

Every daemon gets its own log file so that a fixture which fails to come up can
say what went wrong (the tail of that log) in a single assertion message.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


class DaemonError(RuntimeError):
    """A fixture daemon did not start or died; the message carries its log tail."""


def free_port() -> int:
    """Ask the kernel for a loopback port that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Daemon:
    """A child process with its log file; stop() always reaps it."""

    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes]
    _log_file: IO[bytes] | None = field(repr=False, default=None)
    _stopped: bool = field(repr=False, default=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def fail(self, what: str) -> DaemonError:
        return DaemonError(
            f"{self.name}: {what} (exit code {self.process.poll()}); "
            f"command: {' '.join(self.argv)}\n--- last lines of {self.log_path} ---\n"
            f"{log_tail(self.log_path)}"
        )

    def wait_ready(
        self, check: Callable[[], bool], timeout: float = 30.0, what: str = "ready"
    ) -> None:
        """Poll `check` until it returns True; raise with the log tail on timeout or exit."""
        deadline = time.monotonic() + timeout
        last_error: BaseException | None = None
        while time.monotonic() < deadline:
            if not self.running():
                raise self.fail(f"exited before it was {what}")
            try:
                if check():
                    return
            except Exception as exc:  # a daemon not yet listening raises all sorts
                last_error = exc
            time.sleep(0.1)
        self.stop()
        detail = f"; last check error: {last_error!r}" if last_error else ""
        raise self.fail(f"not {what} within {timeout:.0f}s{detail}")

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, wait `grace` seconds, then SIGKILL; always reap."""
        if self._stopped:  # signalling a long-gone group id again could hit a stranger
            return
        self._stopped = True
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait(timeout=30)
        # Children of the daemon (shims, helpers) live in its process group.
        self._signal(signal.SIGKILL)
        if self._log_file is not None:
            self._log_file.close()

    def _signal(self, sig: signal.Signals) -> None:
        # The group id equals the pid because start() made the child a session leader.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)


def start(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Daemon:
    """Start `argv` in its own session (so stop() can signal its whole group)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = log_path.open("ab")
    process = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    return Daemon(name, list(argv), log_path, process, log_file)


class CommandFailed(subprocess.CalledProcessError):
    """CalledProcessError whose message includes the output, so pytest shows why."""

    def __str__(self) -> str:
        return (
            f"{' '.join(map(str, self.cmd))} exited {self.returncode}\n"
            f"--- stdout ---\n{(self.stdout or '')[-4000:]}\n"
            f"--- stderr ---\n{(self.stderr or '')[-4000:]}"
        )


def run(
    argv: Sequence[str | os.PathLike[str]],
    timeout: float = 600.0,
    *,
    check: bool = True,
    env: dict[str, str] | None = None,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a short command; on failure raise CommandFailed carrying stdout and stderr."""
    completed = subprocess.run(
        [os.fspath(a) for a in argv],
        input=input_text,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    if check and completed.returncode != 0:
        raise CommandFailed(
            completed.returncode, completed.args, completed.stdout, completed.stderr
        )
    return completed


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below `path`, deepest first (the order to unmount them in)."""
    root = os.path.realpath(path)
    found: list[Path] = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            # Field 5 is the mount point, with spaces etc. escaped as octal.
            point = line.split()[4].encode().decode("unicode_escape")
            if point == root or point.startswith(root + "/"):
                found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def unmount_all_under(path: Path) -> None:
    """Lazily unmount everything below `path` so that it can be removed."""
    for point in mounts_under(path):
        subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)


def kill_processes_mentioning(needle: str) -> None:
    """SIGKILL processes whose command line contains `needle`, which must be unique to
    the caller (a temp path), e.g. to catch helpers that left the daemon's process group."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if needle.encode() in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
