"""Timing of external commands: wall time and the CPU time their processes used."""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Timed:
    argv: list[str]
    wall_s: float
    cpu_s: float  # user + system of the command and the children it waited for
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def failure(self) -> str:
        tail = "\n".join((self.stderr or self.stdout).strip().splitlines()[-8:])
        return f"`{' '.join(self.argv)}` exited {self.returncode}:\n\n```\n{tail}\n```"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_run(
    argv: Sequence[str], env: dict[str, str] | None = None, timeout: float = 3600.0
) -> Timed:
    """Run `argv` to completion; failures are returned, not raised (reports show them)."""
    cpu_before = _children_cpu()
    started = time.monotonic()
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
            timeout=timeout,
            check=False,
        )
        returncode, stdout, stderr = done.returncode, done.stdout, done.stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        returncode, stdout, stderr = -1, "", str(exc)
    wall = time.monotonic() - started
    return Timed(list(argv), wall, _children_cpu() - cpu_before, returncode, stdout, stderr)


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None
