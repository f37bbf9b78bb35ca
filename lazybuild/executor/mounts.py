"""Mounts of a container spec, and the ones every container gets (Docker's defaults)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MountSpec:
    """One OCI `mounts` entry: `destination` inside the container."""

    destination: str
    source: str
    type: str = "bind"
    options: tuple[str, ...] = ("rbind", "rprivate")

    def to_oci(self) -> dict[str, Any]:
        return {
            "destination": self.destination,
            "type": self.type,
            "source": self.source,
            "options": list(self.options),
        }

    @classmethod
    def read_only_bind(cls, source: str, destination: str) -> MountSpec:
        return cls(destination, source, "bind", ("rbind", "rprivate", "ro"))


# Same set, sizes and flags as Docker's default spec, so tools behave as under `docker run`.
DEFAULT_MOUNTS: tuple[MountSpec, ...] = (
    MountSpec("/proc", "proc", "proc", ("nosuid", "noexec", "nodev")),
    MountSpec("/dev", "tmpfs", "tmpfs", ("nosuid", "strictatime", "mode=755", "size=65536k")),
    MountSpec(
        "/dev/pts",
        "devpts",
        "devpts",
        ("nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"),
    ),
    MountSpec("/sys", "sysfs", "sysfs", ("nosuid", "noexec", "nodev", "ro")),
    MountSpec("/sys/fs/cgroup", "cgroup", "cgroup", ("ro", "nosuid", "noexec", "nodev")),
    MountSpec("/dev/mqueue", "mqueue", "mqueue", ("nosuid", "noexec", "nodev")),
    MountSpec(
        "/dev/shm", "shm", "tmpfs", ("nosuid", "noexec", "nodev", "mode=1777", "size=65536k")
    ),
)
