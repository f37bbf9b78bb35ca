"""Running ``lazybuild build`` as a user would, and checking what it leaves behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from lazybuild.lazyfs.stale import SERVICE_NAME
from tests.support.procs import mounts_under

RUNC_STATE = Path("/run/lazybuild/runc")


def lazybuild(
    state: Path,
    *args: str,
    check: bool = True,
    env: dict[str, str] | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "lazybuild", "--state-dir", str(state), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"lazybuild {' '.join(args)} failed:\n{result.stderr}")
    return result


def write_context(directory: Path, dockerfile: str, files: dict[str, str] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "Dockerfile").write_text(dockerfile)
    for name, content in (files or {}).items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return directory


def rawjson_events(stderr: str) -> list[dict[str, Any]]:
    events = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


def runc_containers(state: Path) -> list[str]:
    """Containers runc still knows whose bundle lives under ``state``."""
    if not RUNC_STATE.exists():
        return []
    listing = subprocess.run(
        ["runc", "--root", str(RUNC_STATE), "list", "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    containers = json.loads(listing.stdout or "null") or []
    root = str(state.resolve())
    return [c["id"] for c in containers if str(c.get("bundle", "")).startswith(root)]


def filesystem_processes(state: Path) -> list[str]:
    """Filesystem processes of ``state``: started as ``python -m lazybuild.lazyfs.service``
    or forked from a CLI (named ``lazybuild-fs``, with the CLI's command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            name = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if str(state) in command and (
            "lazybuild.lazyfs.service" in command or name == SERVICE_NAME
        ):
            found.append(f"{entry.name} {command}")
    return found


def assert_nothing_left(state: Path) -> None:
    assert mounts_under(state) == []
    assert runc_containers(state) == []
    assert filesystem_processes(state) == []
    staging = state / "build" / "staging"
    assert not staging.exists() or list(staging.iterdir()) == []
