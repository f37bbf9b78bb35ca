"""Facts about other processes that several modules need."""

from __future__ import annotations

import os
from pathlib import Path


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_identity(pid: int) -> str | None:
    """``pid:start-time``: names one process for as long as the machine runs, unlike a
    pid, which the kernel reuses. None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count from its end.
    fields = stat[stat.rindex(")") + 2 :].split()
    return f"{pid}:{fields[19]}"  # field 22, the start time in clock ticks since boot


def identity_alive(identity: str) -> bool:
    """Whether the process named by ``process_identity`` still runs."""
    pid_text, _, _ = identity.partition(":")
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    return process_identity(pid) == identity
