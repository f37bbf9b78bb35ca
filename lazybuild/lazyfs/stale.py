"""Mount records, and cleaning up after filesystem processes that died without unmounting.

Every running filesystem process has a record ``<state>/mounts/<id>.json``:
``{"pid", "owner_pid", "mountpoint", "control", "overlays": [paths]}``. Overlays
stacked on its layer directories are registered there, so that after a SIGKILL the
next lazybuild command can take them down before the dead FUSE mount under them.
A command that stacks overlays of local directories only (``optimize`` of an OCI
layout) keeps a record with ``pid`` 0, which is stale once its ``owner_pid`` is gone.

A record also names both processes by identity (``pid_identity``, ``owner_identity``:
pid, start time and boot, see ``lazybuild.state.processes``), filled in when it is written, so
a process that got a dead one's pid does not keep its record alive. Records without
them (written by older versions) are judged by their pids, as before.

The same cleanup removes what killed runs left besides mounts: mounts and directories
of build staging areas whose owner is gone (a RUN step's secrets tmpfs among them),
``.partial-*`` unpack directories and chunk-cache temp files of dead writers.
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

from lazybuild.state.atomicfile import write_atomic
from lazybuild.state.processes import ProcessId, owner_alive, process_alive

log = logging.getLogger(__name__)

SERVICE_MODULE = "lazybuild.lazyfs.service"
# What a filesystem process forked from the CLI calls itself (/proc/<pid>/comm).
SERVICE_NAME = "lazybuild-fs"
_MNT_DETACH = 2
_PARTIAL_PREFIX = ".partial-"  # lazyfs.unpack's unfinished unpacks
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
    pid_identity: str = ""
    owner_identity: str = ""


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
    if record.pid and not record.pid_identity:
        record.pid_identity = str(ProcessId.of(record.pid) or "")
    if record.owner_pid and not record.owner_identity:
        record.owner_identity = str(ProcessId.of(record.owner_pid) or "")
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
            pid_identity=str(data.get("pid_identity", "")),
            owner_identity=str(data.get("owner_identity", "")),
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
    cleaned = _cleanup_records(state_dir)
    remove_dead_leftovers(state_dir)
    return cleaned


def _cleanup_records(state_dir: Path) -> list[Path]:
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
    """Overlays first (they hold the FUSE mount busy), then the process, then the mounts
    below the FUSE mount (EROFS images of layers, mounted at the layers' paths), then
    the FUSE mount. Once the process is dead the paths below its mount cannot be looked
    up (ENOTCONN); the lazy unmount of the FUSE mount detaches them with it, and what is
    still mounted below it after that is reported. (An EROFS mount through a loop
    device frees the device itself when it goes: ``lazyfs.erofsmount``.)"""
    for overlay in reversed(record.overlays):
        if is_mounted(Path(overlay)):
            lazy_unmount(Path(overlay))
    if record.pid == 0:
        return  # local overlays only: no filesystem process, no FUSE mount
    mountpoint = Path(record.mountpoint)
    if _alive(record.pid, record.pid_identity) and _is_our_service(record.pid, record.owner_pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, signal.SIGKILL)
    for path in _mounted_below(mountpoint):
        _detach(Path(path))  # what fails is reported below, once the FUSE mount went
    if is_mounted(mountpoint):
        lazy_unmount(mountpoint, fuse=True)
    for path in _mounted_below(mountpoint):
        log.warning("could not unmount %s: still mounted after %s", path, mountpoint)
    Path(record.control).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        mountpoint.rmdir()


def _mounted_below(mountpoint: Path) -> list[str]:
    """Mount points strictly below ``mountpoint``, deepest first."""
    root = os.path.abspath(mountpoint)
    return sorted((p for p in mounted_paths() if p.startswith(root + "/")), key=len, reverse=True)


def _detach(path: Path) -> str | None:
    """``umount2(path, MNT_DETACH)``; why it failed, or None."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(os.fsencode(os.path.abspath(path)), _MNT_DETACH) == 0:
        return None
    return os.strerror(ctypes.get_errno())


def _alive(pid: int, identity: str) -> bool:
    """Whether the process a record names still runs: by its identity when the record
    has one, else (an older record) by its pid."""
    parsed = ProcessId.parse(identity) if identity else None
    if parsed is None or parsed.pid != pid:
        return process_alive(pid)
    return parsed.alive()


def _is_stale(record: MountRecord) -> bool:
    if record.pid == 0:
        return not _alive(record.owner_pid, record.owner_identity)
    owner_running = not record.owner_pid or _alive(record.owner_pid, record.owner_identity)
    # The owner's child counts only while the owner runs (a dead owner's pid is reused).
    owner = record.owner_pid if owner_running else 0
    if not _alive(record.pid, record.pid_identity) or not _is_our_service(record.pid, owner):
        return True
    if record.owner_pid and not _alive(record.owner_pid, record.owner_identity):
        # Its owner was killed: the process is on its way out (it exits when its owner
        # dies) and would leave the overlays stacked on it, so they come down now.
        return True
    if record.owner_pid == os.getpid() and _alive(record.owner_pid, record.owner_identity):
        # A filesystem this process started and that still runs (perhaps still
        # starting, when a probe would wait for its INIT): this process looks after it.
        return False
    return _fuse_connection_dead(Path(record.mountpoint))


def remove_dead_leftovers(state_dir: Path) -> None:
    """Take away what killed runs left besides mount records: build staging areas whose
    owner is gone (their mounts first: a RUN step's secrets tmpfs, overlays), unpack
    directories (``.partial-*``) and chunk-cache temp files of dead writers. Each name
    starts with its owner's ``ProcessId.tag`` (older ones with a pid)."""
    staging = state_dir / "build" / "staging"
    for area in _listing(staging):
        if not owner_alive(area.name):
            _remove_leftover(area)
    for partial in _listing(state_dir / "unpacked"):
        name = partial.name
        if name.startswith(_PARTIAL_PREFIX):
            # .partial-<digest hex>-<owner>-<token>
            owner = name[len(_PARTIAL_PREFIX) :].partition("-")[2]
            if not owner_alive(owner):
                _remove_leftover(partial)
    for temp in _listing(state_dir / "cache" / "staging"):
        if not (temp.name.endswith(".tmp") and owner_alive(temp.name)):
            with contextlib.suppress(OSError):
                temp.unlink()


def _listing(directory: Path) -> list[Path]:
    try:
        return sorted(directory.iterdir())
    except OSError:
        return []


def _remove_leftover(path: Path) -> None:
    """Remove ``path``, unmounting whatever is mounted at or below it first (never
    deleting through a mount)."""
    root = os.path.abspath(path)
    below = [p for p in mounted_paths() if p == root or p.startswith(root + "/")]
    for mountpoint in sorted(below, key=len, reverse=True):
        lazy_unmount(Path(mountpoint))
    if path.is_dir() and not path.is_symlink():
        if any(p == root or p.startswith(root + "/") for p in mounted_paths()):
            log.warning("not removing %s: something is still mounted below it", path)
            return
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _is_our_service(pid: int, owner_pid: int = 0) -> bool:
    """The pid is alive and is a filesystem process (not a recycled pid): one started as
    ``python -m SERVICE_MODULE``, one forked from a CLI that named itself ``SERVICE_NAME``,
    or a child of this process or of the record's (live) owner that has not named itself
    yet: the record is written as soon as the fork returns, and another command that
    looks in that moment must not take a starting filesystem for a recycled pid."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    name = status[status.find("(") + 1 : status.rfind(")")]
    state, parent = status.rpartition(")")[2].split()[:2]
    if state == "Z":
        return False
    parents = {os.getpid(), owner_pid} - {0}
    return SERVICE_MODULE.encode() in command or name == SERVICE_NAME or int(parent) in parents


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
    reason = _detach(path)
    if reason is None:
        return
    helper = shutil.which("fusermount3") if fuse else None
    if helper is not None:  # unprivileged FUSE mounts are unmounted through the helper
        result = subprocess.run(
            [helper, "-u", "-z", str(path)], capture_output=True, text=True, check=False
        )
        if result.returncode == 0:
            return
        reason = result.stderr.strip() or reason
    log.warning("could not unmount %s: %s", path, reason)
