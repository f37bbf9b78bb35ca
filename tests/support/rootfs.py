"""Real Debian root filesystems made with debootstrap, built once and cached.

They live in the shared test cache (see cache.py, $LAZYBUILD_TEST_CACHE) so that they
survive test sessions and are built once even by concurrent sessions.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
from pathlib import Path

from tests.support import procs
from tests.support.cache import cached_dir

SUITE = "bookworm"
FALLBACK_MIRROR = "http://deb.debian.org/debian"

# Builder images the benchmarks and end-to-end tests use.
GCC_PACKAGES = ["gcc", "libc6-dev"]
GOLANG_PACKAGES = ["golang-go"]
JRE_PACKAGES = ["default-jre-headless"]
PYTHON_PACKAGES = ["python3"]


def debian_mirror() -> str:
    """The Debian archive this machine's apt uses ($LAZYBUILD_DEBIAN_MIRROR overrides)."""
    override = os.environ.get("LAZYBUILD_DEBIAN_MIRROR")
    if override:
        return override
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for source in sources:
        with contextlib.suppress(OSError):
            mirror = _mirror_in(source.read_text())
            if mirror:
                return mirror
    return FALLBACK_MIRROR


def _mirror_in(text: str) -> str | None:
    # One-line format: "deb [opts] URI bookworm main".
    for match in re.finditer(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", text, re.MULTILINE):
        if match.group(2) == SUITE and "security" not in match.group(1):
            return match.group(1)
    # deb822 format: stanzas with "URIs:" and "Suites:".
    for stanza in re.split(r"\n\s*\n", text):
        uris = re.search(r"^URIs:\s*(.+)$", stanza, re.MULTILINE)
        suites = re.search(r"^Suites:\s*(.+)$", stanza, re.MULTILINE)
        if uris and suites and SUITE in suites.group(1).split():
            return uris.group(1).split()[0]
    return None


def rootfs_key(variant: str, packages: list[str]) -> str:
    wanted = sorted(set(packages))
    digest = hashlib.sha256(f"{SUITE}|{variant}|{','.join(wanted)}".encode()).hexdigest()[:12]
    label = "-".join([variant, *wanted])[:60]
    return f"rootfs-{SUITE}-{label}-{digest}"


def _shrink(root: Path) -> None:
    """Drop apt caches and logs: they make images bigger without testing anything."""
    for pattern in (
        "var/cache/apt/*.bin",
        "var/cache/apt/archives/*.deb",
        "var/lib/apt/lists/*_*",
        "var/cache/debconf/*-old",
        "var/log/*.log",
        "var/log/apt/*",
    ):
        for path in root.glob(pattern):
            if path.is_file() or path.is_symlink():
                path.unlink()


def debootstrap_rootfs(variant: str = "minbase", packages: list[str] | None = None) -> Path:
    """A Debian bookworm root filesystem with `packages`, built once and cached.

    Returns the cached directory; callers must not modify it (copy it first).
    """
    packages = sorted(set(packages or []))

    def build(scratch: Path) -> None:
        argv = ["debootstrap", f"--variant={variant}"]
        if packages:
            argv.append("--include=" + ",".join(packages))
        argv += [SUITE, str(scratch), debian_mirror()]
        started = time.monotonic()
        procs.run(argv, timeout=1800)
        _shrink(scratch)
        (scratch / ".lazybuild-rootfs").write_text(
            f"{' '.join(argv)}\nbuilt in {time.monotonic() - started:.0f}s\n"
        )

    return cached_dir(rootfs_key(variant, packages), build)
