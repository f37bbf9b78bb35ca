"""Mount records, and cleaning up after filesystem processes that died without unmounting.

Every running filesystem process has a record ``<state>/mounts/<id>.json``:
``{"pid", "owner_pid", "mountpoint", "control", "overlays": [paths]}``. Overlays
stacked on its layer directories are registered there, so that after a SIGKILL the
next lazybuild command can take them down before the dead FUSE mount under them.
A command that stacks overlays of local directories only (``optimize`` of an OCI
layout) keeps a record with ``pid`` 0, which is stale once its ``owner_pid`` is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lazybuild.atomicfile import write_atomic
from lazybuild.processes import process_alive

log = logging.getLogger(__name__)

SERVICE_MODULE = "lazybuild.lazyfs.service"
# What a filesystem process forked from the CLI calls itself (/proc/<pid>/comm).
SERVICE_NAME = "lazybuild-fs"
_MNT_DETACH = 2
PROBE_TIMEOUT = 2.0
# What a FUSE mount answers once its process is gone (which one depends on how and when).
_DEAD_CONNECTION = frozenset({errno.ENOTCONN, errno.ECONNABORTED})


@dataclass
class MountRecord:
    id: str
    pid: int
    mountpoint: str
    control: str
    owner_pid: int = 0
    overlays: list[str] = field(default_factory=list)


def records_dir(state_dir: Path) -> Path:
    return state_dir / "mounts"


def record_path(state_dir: Path, record_id: str) -> Path:
    return records_dir(state_dir) / f"{record_id}.json"


@contextlib.contextmanager
def _records_locked(state_dir: Path) -> Iterator[None]:
    directory = records_dir(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def write_record(state_dir: Path, record: MountRecord) -> None:
    with _records_locked(state_dir):
        _write(state_dir, record)


def _write(state_dir: Path, record: MountRecord) -> None:
    write_atomic(record_path(state_dir, record.id), json.dumps(asdict(record)).encode())


def read_record(path: Path) -> MountRecord | None:
    try:
        data = json.loads(path.read_text())
        return MountRecord(
            id=str(data["id"]),
            pid=int(data["pid"]),
            mountpoint=str(data["mountpoint"]),
            control=str(data["control"]),
            owner_pid=int(data.get("owner_pid", 0)),
            overlays=[str(p) for p in data.get("overlays", [])],
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remove_record(state_dir: Path, record_id: str) -> None:
    with _records_locked(state_dir):
        record_path(state_dir, record_id).unlink(missing_ok=True)


def register_overlay(state_dir: Path, record_id: str, path: Path) -> None:
    """Note that an overlay mounted at ``path`` stacks layer directories of this mount."""
    _edit_overlays(state_dir, record_id, str(path), add=True)


def unregister_overlay(state_dir: Path, record_id: str, path: Path) -> None:
    _edit_overlays(state_dir, record_id, str(path), add=False)


def _edit_overlays(state_dir: Path, record_id: str, path: str, *, add: bool) -> None:
    with _records_locked(state_dir):
        record = read_record(record_path(state_dir, record_id))
        if record is None:
            raise FileNotFoundError(f"no mount record {record_id!r} in {state_dir}")
        if add and path not in record.overlays:
            record.overlays.append(path)
        elif not add and path in record.overlays:
            record.overlays.remove(path)
        _write(state_dir, record)


def cleanup_stale_mounts(state_dir: Path) -> list[Path]:
    """Unmount and forget every mount whose filesystem process is gone or whose FUSE
    connection is dead; returns their mountpoints. Safe to call at any time."""
    directory = records_dir(state_dir)
    if not directory.is_dir():
        return []
    cleaned: list[Path] = []
    for path in sorted(directory.glob("*.json")):
        record = read_record(path)
        if record is None:
            log.warning("removing unreadable mount record %s", path)
            path.unlink(missing_ok=True)
            continue
        if _is_stale(record):
            tear_down(record)
            remove_record(state_dir, record.id)
            if record.pid == 0:
                cleaned.extend(Path(overlay) for overlay in record.overlays)
            else:
                cleaned.append(Path(record.mountpoint))
    return cleaned


@contextlib.contextmanager
def local_overlays_recorded(state_dir: Path, record_id: str) -> Iterator[None]:
    """A record for overlays of local directories (no filesystem process) that this
    process mounts and registers under ``record_id`` while inside; a later cleanup
    unmounts them once this process is gone (SIGKILL skips every ``finally``)."""
    record = MountRecord(id=record_id, pid=0, mountpoint="", control="", owner_pid=os.getpid())
    write_record(state_dir, record)
    try:
        yield
    finally:
        remove_record(state_dir, record_id)


def tear_down(record: MountRecord) -> None:
    """Overlays first (they hold the FUSE mount busy), then the FUSE mount, then the process."""
    for overlay in reversed(record.overlays):
        if is_mounted(Path(overlay)):
            lazy_unmount(Path(overlay))
    if record.pid == 0:
        return  # local overlays only: no filesystem process, no FUSE mount
    mountpoint = Path(record.mountpoint)
    if _is_our_service(record.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, signal.SIGKILL)
    if is_mounted(mountpoint):
        lazy_unmount(mountpoint, fuse=True)
    Path(record.control).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        mountpoint.rmdir()


def _is_stale(record: MountRecord) -> bool:
    if record.pid == 0:
        return not process_alive(record.owner_pid)
    if not _is_our_service(record.pid):
        return True
    if record.owner_pid == os.getpid():
        # A filesystem this process started and that still runs (perhaps still
        # starting, when a probe would wait for its INIT): this process looks after it.
        return False
    return _fuse_connection_dead(Path(record.mountpoint))


def _is_our_service(pid: int) -> bool:
    """The pid is alive and is a filesystem process (not a recycled pid): one started as
    ``python -m SERVICE_MODULE``, one forked from a CLI that named itself ``SERVICE_NAME``,
    or a child of this process that has not named itself yet."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    name = status[status.find("(") + 1 : status.rfind(")")]
    state, parent = status.rpartition(")")[2].split()[:2]
    if state == "Z":
        return False
    return SERVICE_MODULE.encode() in command or name == SERVICE_NAME or int(parent) == os.getpid()


def _fuse_connection_dead(mountpoint: Path) -> bool:
    """statfs always reaches the filesystem (stat may be answered from the kernel's
    cache). A live but hung process would block it, so it runs in a thread we stop
    waiting for: a hung mount is not declared dead."""
    outcome: list[int] = []

    def probe() -> None:
        try:
            os.statvfs(mountpoint)
            outcome.append(0)
        except OSError as exc:
            outcome.append(exc.errno or 0)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT)
    return bool(outcome) and outcome[0] in _DEAD_CONNECTION


def mounted_paths() -> set[str]:
    """Mount points in this mount namespace (``/proc/self/mountinfo`` field 5, unescaped)."""
    found = set()
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
        for line in table:
            fields = line.split()
            if len(fields) > 4:
                found.add(_unescape(fields[4]))
    return found


def _unescape(field: str) -> str:
    for code in ("\\040", "\\011", "\\012", "\\134"):
        field = field.replace(code, chr(int(code[1:], 8)))
    return field


def is_mounted(path: Path) -> bool:
    return os.path.abspath(path) in mounted_paths()


def lazy_unmount(path: Path, *, fuse: bool = False) -> None:
    """Detach ``path`` now; the kernel finishes when the last user lets go."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(os.fsencode(os.path.abspath(path)), _MNT_DETACH) == 0:
        return
    reason = os.strerror(ctypes.get_errno())
    helper = shutil.which("fusermount3") if fuse else None
    if helper is not None:  # unprivileged FUSE mounts are unmounted through the helper
        result = subprocess.run(
            [helper, "-u", "-z", str(path)], capture_output=True, text=True, check=False
        )
        if result.returncode == 0:
            return
        reason = result.stderr.strip() or reason
    log.warning("could not unmount %s: %s", path, reason)
