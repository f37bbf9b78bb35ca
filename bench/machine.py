"""A description of the machine and tools a benchmark ran on, for its report section."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except OSError as exc:
        return f"unavailable ({exc.strerror})"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / (1024 * 1024)
    return 0.0


def debian_version() -> str:
    try:
        return "Debian " + Path("/etc/debian_version").read_text().strip()
    except OSError:
        return platform.platform()


def describe(tools: dict[str, list[str]]) -> list[str]:
    """Markdown bullet lines: machine, then `name: first line of <argv>` per tool."""
    lines = [
        f"- Machine: {cpu_model()}, {os.cpu_count()} cores, {memory_gib():.0f} GiB RAM, "
        f"{debian_version()}, Linux {platform.release()}",
    ]
    lines += [f"- {name}: `{_first_line(argv)}`" for name, argv in tools.items()]
    return lines


def load_line(load_before: float) -> str:
    """How busy the machine was: other work on it slows both tools alike but adds noise."""
    load_after = os.getloadavg()[0]
    return (
        f"- Load average (1 min) at start / end: {load_before:.1f} / {load_after:.1f} "
        f"on {os.cpu_count()} cores"
    )
