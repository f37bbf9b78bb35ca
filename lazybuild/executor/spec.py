"""The OCI runtime spec (config.json) of one container, as plain data.

Pure: no I/O, so every default can be checked by a unit test. The defaults follow
Docker's (capabilities, masked and read-only paths, mounts, namespaces), because
Dockerfiles are written against what `docker build` gives a RUN step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from lazybuild.executor.mounts import DEFAULT_MOUNTS, MountSpec
from lazybuild.executor.users import ResolvedUser

Network = Literal["host", "none"]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

# Kernel interfaces that leak host details or let a container poke at hardware.
MASKED_PATHS: tuple[str, ...] = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)

READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)

# Soft limit 1024 keeps select()-based programs safe; the hard limit lets servers
# raise it, as under Docker with systemd's defaults.
NOFILE_SOFT = 1024
NOFILE_HARD = 524288

# Docker allows all device nodes to be created (mknod) but opened only if listed;
# runc itself adds the standard ones (null, zero, full, tty, random, urandom, pts).
_DEVICE_RULES: tuple[dict[str, Any], ...] = (
    {"allow": False, "access": "rwm"},
    {"allow": True, "type": "c", "access": "m"},
    {"allow": True, "type": "b", "access": "m"},
)

# In a private network namespace Docker lets any user bind low ports and ping.
_PRIVATE_NETWORK_SYSCTLS = {
    "net.ipv4.ip_unprivileged_port_start": "0",
    "net.ipv4.ping_group_range": "0 2147483647",
}


@dataclass(frozen=True)
class Ulimit:
    """``--ulimit NAME=SOFT[:HARD]`` as Docker spells it (``nofile``, ``nproc``...);
    -1 is unlimited."""

    name: str
    soft: int
    hard: int

    def to_oci(self) -> dict[str, Any]:
        return {
            "type": "RLIMIT_" + self.name.upper(),
            "soft": _rlimit_value(self.soft),
            "hard": _rlimit_value(self.hard),
        }


def _rlimit_value(value: int) -> int:
    # The runtime spec's limits are unsigned: Docker's -1 is RLIM_INFINITY.
    return value if value >= 0 else (1 << 64) - 1


def _rlimits(ulimits: Sequence[Ulimit]) -> list[dict[str, Any]]:
    given = {limit.name for limit in ulimits}
    limits = (
        []
        if "nofile" in given
        else [{"type": "RLIMIT_NOFILE", "soft": NOFILE_SOFT, "hard": NOFILE_HARD}]
    )
    return limits + [limit.to_oci() for limit in ulimits]


def _with_shm_size(mounts: Sequence[MountSpec], size: int) -> tuple[MountSpec, ...]:
    return tuple(
        replace(
            m,
            options=(*(o for o in m.options if not o.startswith("size=")), f"size={size}"),
        )
        if m.destination == "/dev/shm"
        else m
        for m in mounts
    )


@dataclass(frozen=True)
class ProcessSpec:
    args: Sequence[str]
    env: Sequence[str]
    cwd: str
    user: ResolvedUser
    terminal: bool = False


def generate_spec(
    *,
    rootfs: Path,
    process: ProcessSpec,
    hostname: str,
    network: Network,
    readonly_rootfs: bool = False,
    extra_mounts: Sequence[MountSpec] = (),
    shm_size: int | None = None,
    ulimits: Sequence[Ulimit] = (),
) -> dict[str, Any]:
    """config.json for `process` in `rootfs`; `cgroupsPath` is left to the runner,
    which knows the container id. ``shm_size`` (bytes) sizes /dev/shm instead of
    Docker's 64 MiB; ``ulimits`` replace the default limit of the same kind."""
    if network not in ("host", "none"):
        raise ValueError(f"unknown network mode {network!r}")
    if not process.args:
        raise ValueError("a container process needs at least one argument")
    if not process.cwd.startswith("/"):
        raise ValueError(f"working directory must be absolute, not {process.cwd!r}")
    linux: dict[str, Any] = {
        "namespaces": _namespaces(network),
        "maskedPaths": list(MASKED_PATHS),
        "readonlyPaths": list(READONLY_PATHS),
        "resources": {"devices": [dict(rule) for rule in _DEVICE_RULES]},
    }
    if network == "none":
        linux["sysctl"] = dict(_PRIVATE_NETWORK_SYSCTLS)
    defaults = DEFAULT_MOUNTS if shm_size is None else _with_shm_size(DEFAULT_MOUNTS, shm_size)
    return {
        "ociVersion": "1.0.2",
        "process": _process(process, ulimits),
        "root": {"path": str(rootfs), "readonly": readonly_rootfs},
        "hostname": hostname,
        "mounts": [m.to_oci() for m in _merge_mounts(defaults, extra_mounts)],
        "linux": linux,
    }


def process_env(process: ProcessSpec) -> list[str]:
    """The environment with Docker's fallbacks: PATH and HOME if unset, TERM for a tty."""
    env = list(process.env)
    names = {entry.partition("=")[0] for entry in env}
    if "PATH" not in names:
        env.insert(0, f"PATH={DEFAULT_PATH}")
    if "HOME" not in names:
        env.append(f"HOME={process.user.home}")
    if process.terminal and "TERM" not in names:
        env.append("TERM=xterm")
    return env


def _process(process: ProcessSpec, ulimits: Sequence[Ulimit] = ()) -> dict[str, Any]:
    capabilities = list(DEFAULT_CAPABILITIES)
    user: dict[str, Any] = {"uid": process.user.uid, "gid": process.user.gid}
    if process.user.additional_gids:
        user["additionalGids"] = list(process.user.additional_gids)
    return {
        "terminal": process.terminal,
        "user": user,
        "args": list(process.args),
        "env": process_env(process),
        "cwd": process.cwd,
        # No inheritable or ambient set: since CVE-2022-24769 Docker grants neither,
        # so an unprivileged exec cannot pick the capabilities up.
        "capabilities": {
            "bounding": capabilities,
            "effective": list(capabilities),
            "permitted": list(capabilities),
        },
        "rlimits": _rlimits(ulimits),
        "noNewPrivileges": False,
    }


def _namespaces(network: Network) -> list[dict[str, str]]:
    kinds = ["pid", "ipc", "uts", "mount"]
    if network != "host":
        kinds.append("network")
    return [{"type": kind} for kind in kinds]


def _merge_mounts(defaults: Sequence[MountSpec], extra: Sequence[MountSpec]) -> list[MountSpec]:
    """Defaults first; an extra mount on the same destination replaces the default."""
    replaced = {m.destination for m in extra}
    return [m for m in defaults if m.destination not in replaced] + list(extra)
