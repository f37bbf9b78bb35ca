"""The filesystem process forked from the CLI instead of started as a new interpreter.

A new interpreter spends ~0.35 s importing trio, pyfuse3 and httpx before it mounts;
``lazybuild run`` and ``build`` wait for that before the first TOC request. A fork of
the CLI, taken before ``trio.run`` while it is still one thread, has the interpreter
and trio already: it serves ~0.13 s later. The child is set up the way ``client``
starts the interpreter (own session, default signal handlers, stdin from /dev/null,
output to the mount's log) and then runs the same ``service.main``.

A forked child keeps the CLI's command line, so it names itself ``SERVICE_NAME``
(``/proc/<pid>/comm``) for whoever checks that a recorded pid is still a filesystem
process (``stale``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import traceback
from collections.abc import Sequence

import trio

from lazybuild.lazyfs.stale import SERVICE_NAME


def can_fork() -> bool:
    """Forking is only safe from a process that runs one thread (no trio yet, no
    thread pool, not a test runner's worker thread)."""
    return threading.current_thread() is threading.main_thread() and threading.active_count() == 1


def fork_service(argv: Sequence[str], *, log_fd: int, keep_fd: int) -> ForkedProcess:
    """Fork a child that runs ``service.main(argv)`` with ``log_fd`` as its stdout and
    stderr and ``keep_fd`` (its ready pipe) open; every other descriptor is closed."""
    if not can_fork():
        raise RuntimeError("fork_service needs a single-threaded process")
    # Buffered output would be written twice, once by each process.
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns to the caller
        os._exit(_child(argv, log_fd, keep_fd))
    return ForkedProcess(pid)


def _child(argv: Sequence[str], log_fd: int, keep_fd: int) -> int:
    try:
        os.setsid()  # the user's Ctrl-C reaches lazybuild, which stops the mount in order
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        # As in any Python process: a reply to a client that went away is an error for
        # that connection, not a SIGPIPE that ends the filesystem under its mounts.
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.closerange(3, keep_fd)
        os.closerange(keep_fd + 1, os.sysconf("SC_OPEN_MAX"))
        os.chdir("/")
        with open("/proc/self/comm", "w", encoding="ascii") as comm:
            comm.write(SERVICE_NAME)
        from lazybuild.lazyfs import service

        return service.main(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # exiting anyway: nobody left to tell
                stream.flush()


class ForkedProcess:
    """A forked child, with the part of ``trio.Process``'s interface the client uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: gone all the same
                self.returncode = -1
            else:
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    async def wait(self) -> int:
        if self.poll() is None:
            # A pidfd becomes readable when the process exits; no polling, no SIGCHLD.
            pidfd = os.pidfd_open(self.pid)
            try:
                await trio.lowlevel.wait_readable(pidfd)
            finally:
                os.close(pidfd)
        code = self.poll()
        assert code is not None, "a pidfd is readable only once its process exited"
        return code

    def send_signal(self, signum: int) -> None:
        # Never after the reap: the pid may name another process by then.
        if self.poll() is None:
            os.kill(self.pid, signum)
