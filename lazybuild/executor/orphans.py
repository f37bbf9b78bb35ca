"""Containers whose lazybuild was killed: found by their owner annotation and reaped.

``run_container`` deletes its container whatever happens, except when its process is
SIGKILLed (an OOM kill, a CI job's timeout). Then the container keeps running, holding
its overlay and the lazy filesystem under it busy. Every container carries the identity
(pid and start time) of the process that runs it; a container whose owner no longer
runs is an orphan, and the next command that cleans up after killed runs kills and
deletes it before the stale mounts come down.
"""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

from lazybuild.state.processes import identity_alive

__all__ = ["OWNER_ANNOTATION", "reap_orphaned_containers"]

log = logging.getLogger(__name__)

OWNER_ANNOTATION = "org.lazybuild.owner"
_RUNC_TIMEOUT_SECONDS = 30.0


def reap_orphaned_containers(runc: str, state_root: Path) -> list[str]:
    """Kill and delete the containers under ``state_root`` whose owner is gone; returns
    their ids. Containers without our annotation (other tools' or older) are left."""
    if not state_root.is_dir():
        return []
    listed = _runc(runc, state_root, "list", "--format", "json")
    if listed is None:
        return []
    try:
        containers = json.loads(listed or "null") or []
    except ValueError:
        log.warning("runc list under %s printed no JSON; not reaping", state_root)
        return []
    reaped = []
    for container in containers:
        owner = (container.get("annotations") or {}).get(OWNER_ANNOTATION)
        if not isinstance(owner, str) or identity_alive(owner):
            continue
        container_id = str(container.get("id"))
        if container.get("status") in ("running", "paused", "created"):
            _runc(runc, state_root, "kill", container_id, "KILL")
        if _runc(runc, state_root, "delete", "--force", container_id) is not None:
            reaped.append(container_id)
    return reaped


def _runc(runc: str, state_root: Path, *args: str) -> str | None:
    """runc's stdout, or None when it failed (logged: cleanup is best effort)."""
    try:
        done = subprocess.run(
            [runc, "--root", str(state_root), *args],
            capture_output=True,
            text=True,
            timeout=_RUNC_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("runc %s failed: %s", " ".join(args), exc)
        return None
    if done.returncode != 0:
        log.warning("runc %s failed: %s", " ".join(args), done.stderr.strip())
        return None
    return done.stdout
