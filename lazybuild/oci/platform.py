"""Platforms (os/architecture/variant) and choosing one from an index."""

from __future__ import annotations

import platform as _host
from dataclasses import dataclass
from typing import Any

from lazybuild.errors import FormatError, UsageError

# Go's GOARCH names for what Python's platform.machine() reports.
_MACHINE_TO_GOARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i386": "386",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse ``os/arch[/variant]`` as ``--platform`` takes it."""
        parts = text.strip().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise UsageError(f"platform {text!r} is not of the form os/arch[/variant]")
        return cls(os=parts[0], architecture=parts[1], variant=parts[2] if len(parts) == 3 else "")

    @classmethod
    def from_json(cls, data: Any) -> Platform:
        if not isinstance(data, dict):
            raise FormatError("platform is not a JSON object")
        return cls(
            os=str(data.get("os", "")),
            architecture=str(data.get("architecture", "")),
            variant=str(data.get("variant", "")),
            os_version=str(data.get("os.version", "")),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.os_version:
            out["os.version"] = self.os_version
        if self.variant:
            out["variant"] = self.variant
        return out

    def matches(self, other: Platform) -> bool:
        """True when ``other`` (an index entry) can run where ``self`` is wanted."""
        if self.os != other.os or self.architecture != other.architecture:
            return False
        # An unspecified variant on either side matches; arm64's default variant is v8.
        if not self.variant or not other.variant:
            return True
        return self.variant == other.variant

    def __str__(self) -> str:
        base = f"{self.os}/{self.architecture}"
        return f"{base}/{self.variant}" if self.variant else base


def host_platform() -> Platform:
    machine = _host.machine().lower()
    arch = _MACHINE_TO_GOARCH.get(machine, machine)
    variant = "v7" if machine == "armv7l" else "v6" if machine == "armv6l" else ""
    return Platform(os="linux", architecture=arch, variant=variant)
