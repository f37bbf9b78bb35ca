"""Which processes a mount record may name: a filesystem process another command is
still starting is not a recycled pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from lazybuild.lazyfs.stale import _is_our_service

# A parent that forks a child which never names itself, then waits.
_OWNER = (
    "import subprocess, time\n"
    "child = subprocess.Popen(['sleep', '30'])\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(30)\n"
)


def test_a_starting_filesystem_of_another_live_command_is_not_a_recycled_pid() -> None:
    """The record is written as soon as the fork returns, before the child names itself:
    another command looking then must not judge the child a stranger (it removed a live
    build's mount record)."""
    owner = subprocess.Popen([sys.executable, "-c", _OWNER], stdout=subprocess.PIPE, text=True)
    child = 0
    try:
        assert owner.stdout is not None
        child = int(owner.stdout.readline())
        assert not _is_our_service(child)  # a stranger's unnamed child: not ours
        assert _is_our_service(child, owner.pid)  # the record's owner forked it: ours
    finally:
        if child:
            os.kill(child, signal.SIGKILL)
        owner.kill()
        owner.wait()
        if owner.stdout is not None:
            owner.stdout.close()
