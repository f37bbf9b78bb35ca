"""The filesystem process forked from the CLI: waiting on it, signalling it, and
recognising it as a filesystem process though it keeps the CLI's command line."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import trio

from lazybuild.lazyfs import stale
from lazybuild.lazyfs.forkedservice import ForkedProcess, can_fork
from lazybuild.lazyfs.stale import SERVICE_NAME


def _spawn(*argv: str) -> int:
    return os.posix_spawnp(argv[0], list(argv), dict(os.environ))


def test_a_forked_child_is_waited_for_and_signalled_until_reaped() -> None:
    process = ForkedProcess(_spawn("sleep", "30"))
    assert process.poll() is None

    async def main() -> int:
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            return await process.wait()

    assert trio.run(main) == -signal.SIGTERM
    assert process.poll() == -signal.SIGTERM
    process.send_signal(signal.SIGKILL)  # reaped: its pid may be someone else's now


def test_the_exit_status_is_the_childs() -> None:
    process = ForkedProcess(_spawn("sh", "-c", "exit 3"))
    assert trio.run(process.wait) == 3


def test_forking_needs_a_single_threaded_process() -> None:
    seen: list[bool] = []
    worker = threading.Thread(target=lambda: seen.append(can_fork()))
    worker.start()
    worker.join()
    assert seen == [False]


def test_a_process_named_like_a_forked_filesystem_is_one(tmp_path: Path) -> None:
    sleep = shutil.which("sleep")
    assert sleep is not None
    named = tmp_path / SERVICE_NAME
    shutil.copy(sleep, named)
    # Started by a shell that exits: not our child, so only its name can tell.
    for program, ours in ((str(named), True), (sleep, False)):
        started = subprocess.run(
            ["sh", "-c", f"{program} 30 >/dev/null 2>&1 & echo $!"],
            capture_output=True,
            text=True,
            check=True,
        )
        pid = int(started.stdout)
        try:
            assert stale._is_our_service(pid) is ours
        finally:
            os.kill(pid, signal.SIGKILL)


def test_a_child_not_named_yet_is_ours_until_it_is_a_zombie() -> None:
    pid = _spawn("sleep", "30")
    assert stale._is_our_service(pid)
    os.kill(pid, signal.SIGKILL)
    with open(f"/proc/{pid}/stat") as status:
        while status.read().rpartition(")")[2].split()[0] != "Z":
            status.seek(0)
    assert not stale._is_our_service(pid)
    os.waitpid(pid, 0)
    assert not stale._is_our_service(pid)
