"""A git repository served by ``git daemon`` on loopback, for git build contexts."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_IDENTITY = ["-c", "user.name=lazybuild tests", "-c", "user.email=tests@lazybuild.invalid"]


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *_IDENTITY, *args], cwd=cwd, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def make_repository(root: Path) -> Path:
    """``root/r.git``: tag v1 has app/Dockerfile, app/f.txt ("v1"), app/build.log and
    app/.dockerignore naming it; branch main, one commit on, has f.txt "v2" and
    app/new.txt."""
    repo = root / "r.git"
    (repo / "app").mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main", ".")
    (repo / "app" / "Dockerfile").write_text("FROM scratch\nCOPY . /src/\n")
    (repo / "app" / "f.txt").write_text("v1\n")
    (repo / "app" / "build.log").write_text("log\n")
    (repo / "app" / ".dockerignore").write_text("*.log\n")
    (repo / "top.txt").write_text("outside app\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "one")
    git(repo, "tag", "v1")
    (repo / "app" / "f.txt").write_text("v2\n")
    (repo / "app" / "new.txt").write_text("new\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "two")
    return repo


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def git_daemon(base: Path) -> Iterator[str]:
    """``git://127.0.0.1:PORT``, serving the repositories under ``base``."""
    port = _free_port()
    process = subprocess.Popen(
        [
            "git", "daemon", "--export-all", "--reuseaddr", f"--base-path={base}",
            "--listen=127.0.0.1", f"--port={port}", str(base),
        ],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, "git daemon exited"
                assert time.monotonic() < deadline, "git daemon never listened"
                time.sleep(0.05)
        yield f"git://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)
