"""Facts about other processes that several modules need.

A pid alone does not name a process for long: the kernel reuses it, so a leftover
(a mount record, a staging directory, a temp file) whose owner died could be kept
forever by a stranger that got the same pid. Whatever lazybuild records about an
owner is therefore its ``ProcessId``: the pid, its start time (field 22 of
``/proc/PID/stat``, clock ticks since boot) and the boot it started in (a prefix of
``/proc/sys/kernel/random/boot_id``, since state directories outlive reboots and
start times repeat across them). An owner whose pid now runs with another start
time, or that started in another boot, is dead. Records written before identities
were kept name a pid only; those are judged by the pid, as they always were.

Two spellings: ``str(identity)`` (``pid:start:boot``) for JSON records and
annotations, ``identity.tag`` (``pid-start.boot``) as the head of a file name, which
older versions still read as ``pid-...``.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ProcessId",
    "boot_id",
    "identity_alive",
    "owner_alive",
    "process_alive",
    "process_identity",
    "start_time",
]

_BOOT_ID_LENGTH = 8
_TAG = re.compile(r"(\d+)-(\d+)\.([0-9a-f]{8})(?=-|$)")


_current: dict[int, ProcessId] = {}


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists (it may belong to another user)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@functools.cache
def boot_id() -> str:
    """A short name of this boot ("" when the kernel does not say)."""
    try:
        text = Path("/proc/sys/kernel/random/boot_id").read_text()
    except OSError:
        return ""
    return text.strip().replace("-", "")[:_BOOT_ID_LENGTH]


def start_time(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot; None when there is none
    (or it is a zombie, which is as good as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # The command name (field 2) may hold spaces and parentheses: count from its end.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])  # field 22


@dataclass(frozen=True)
class ProcessId:
    """One process for as long as it runs. ``start`` None: a legacy record (pid only)."""

    pid: int
    start: int | None = None
    boot: str | None = None

    @classmethod
    def current(cls) -> ProcessId:
        """This process (asked again after a fork: a child is another process)."""
        pid = os.getpid()
        known = _current.get(pid)
        if known is None:
            known = cls.of(pid) or cls(pid)
            _current.clear()
            _current[pid] = known
        return known

    @classmethod
    def of(cls, pid: int) -> ProcessId | None:
        """The process that runs as ``pid`` now, or None when there is none."""
        started = start_time(pid)
        return None if started is None else cls(pid, started, boot_id())

    def alive(self) -> bool:
        if self.start is None:
            return process_alive(self.pid)
        if self.boot and self.boot != boot_id():
            return False  # it ran before this machine last started
        return start_time(self.pid) == self.start

    def __str__(self) -> str:
        if self.start is None:
            return str(self.pid)
        return f"{self.pid}:{self.start}:{self.boot or ''}"

    @classmethod
    def parse(cls, text: str) -> ProcessId | None:
        """``str(identity)``, the older ``pid:start``, or a bare pid; None if neither."""
        parts = text.split(":")
        if len(parts) > 3 or not all(part.isdigit() for part in parts[:2]):
            return None
        pid = int(parts[0])
        start = int(parts[1]) if len(parts) > 1 else None
        boot = parts[2] if len(parts) > 2 and parts[2] else None
        return cls(pid, start, boot)

    @property
    def tag(self) -> str:
        """The head of a file name that names this owner (``parse_tag`` reads it back)."""
        if self.start is None:
            return str(self.pid)
        return f"{self.pid}-{self.start}.{self.boot or '0' * _BOOT_ID_LENGTH}"

    @classmethod
    def parse_tag(cls, name: str) -> ProcessId | None:
        """The owner named at the head of ``name`` (``tag`` followed by ``-`` or the end;
        or a legacy ``pid-...``), or None when the name names none."""
        match = _TAG.match(name)
        if match is not None:
            boot = match.group(3)
            return cls(int(match.group(1)), int(match.group(2)), None if boot == "0" * 8 else boot)
        pid = name.partition("-")[0]
        return cls(int(pid)) if pid.isdigit() else None


def owner_alive(name: str) -> bool:
    """Whether the owner named at the head of file name ``name`` still runs (a name that
    names no owner has none that runs)."""
    owner = ProcessId.parse_tag(name)
    return owner is not None and owner.alive()


def process_identity(pid: int) -> str | None:
    """``str(ProcessId.of(pid))``: names one process for as long as the machine runs,
    unlike a pid, which the kernel reuses. None when there is no such process."""
    identity = ProcessId.of(pid)
    return None if identity is None else str(identity)


def identity_alive(identity: str) -> bool:
    """Whether the process named by ``process_identity`` (or an older ``pid:start``)
    still runs. A bare pid is not an identity: it is judged dead here."""
    parsed = ProcessId.parse(identity)
    return parsed is not None and parsed.start is not None and parsed.alive()
