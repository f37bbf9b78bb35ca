"""One daemon per state directory: ``<state>/daemon.pid``, locked for the daemon's life.

The lock is an ``flock`` on the file, so the kernel drops it when the daemon dies,
however it dies: a SIGKILLed daemon never keeps the next one out, and no pid is ever
guessed at. The file holds the owner's ``ProcessId`` so that the refusal can name it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType

from lazybuild.errors import UsageError
from lazybuild.state.processes import ProcessId

PID_FILE = "daemon.pid"


class StateDirInUseError(UsageError):
    """Another daemon holds the state directory."""


class StateLock:
    """Held from ``acquire`` (or ``with``) until ``release``; not reentrant."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / PID_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            os.close(fd)
            who = f" (pid {owner.pid})" if owner is not None else ""
            raise StateDirInUseError(
                f"state directory {self.path.parent} is in use by another lazybuild daemon{who}"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{ProcessId.current()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        # Emptied before unlocking: a reader never takes a dead daemon for the owner.
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def _read_owner(fd: int) -> ProcessId | None:
    try:
        text = os.pread(fd, 128, 0).decode("ascii", errors="replace").strip()
    except OSError:
        return None
    return ProcessId.parse(text) if text else None
