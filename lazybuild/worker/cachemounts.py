"""Cache mounts (``RUN --mount=type=cache``) that travel through a build cache.

A cache mount is a directory of this machine, ``<cache_mounts>/<name>`` (``name`` from
the mount's ``id``). One imported from another runner's build cache (``remotecache``,
``cache-mounts=true``) keeps its content as lower layers mounted lazily, like a base
image's, with the local changes in an upper directory: ``<name>/upper`` and
``<name>/work``, and the layers in ``<name>.lower.json``. A step then reads only the
entries it uses (Go's build cache: the objects it hits, not the whole cache), and an
export uploads only the upper, the changes, as one more layer on top.

A machine that has a cache mount of its own keeps it: an imported one is adopted only
where there is none.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lazybuild.errors import FormatError
from lazybuild.graph.ops import ExecMount
from lazybuild.state.atomicfile import write_atomic
from lazybuild.worker.layers import RemoteLayer, Snapshot

__all__ = ["CacheMounts", "MountContent", "cache_mount_name"]

LOWER_SUFFIX = ".lower.json"


def cache_mount_name(mount: ExecMount) -> str:
    """The directory name of a cache mount: its ``id`` (or target) hashed."""
    return hashlib.sha256(cache_mount_id(mount).encode()).hexdigest()[:32]


def cache_mount_id(mount: ExecMount) -> str:
    """What names a cache mount for the user: its ``id``, else its target."""
    return mount.cache_id or mount.dest


@dataclass(frozen=True)
class MountContent:
    """A cache mount's content for an export: ``lowers`` (imported layers, bottom
    first) and ``changes``, the directory in overlay form to write as a layer on top
    (the whole directory of a mount that has no lowers)."""

    lowers: tuple[RemoteLayer, ...]
    changes: Path
    mount_id: str = ""  # the mount's ``id`` (or target): what an export selects it by


@dataclass
class CacheMounts:
    root: Path
    # The cache mounts this build's steps used: their ids (or targets) by name.
    used: dict[str, str] = field(default_factory=dict)

    def directory(self, name: str) -> Path:
        return self.root / name

    def lowers(self, name: str) -> tuple[RemoteLayer, ...]:
        """The imported layers under cache mount ``name`` (none: a plain directory)."""
        try:
            text = (self.root / f"{name}{LOWER_SUFFIX}").read_text()
        except OSError:
            return ()
        try:
            layers = Snapshot.from_id(text).layers
        except (FormatError, KeyError, TypeError):
            return ()
        return tuple(layer for layer in layers if isinstance(layer, RemoteLayer))

    def adopt(self, imported: Mapping[str, Sequence[RemoteLayer]]) -> list[str]:
        """Take imported cache mounts this machine has none of; their names."""
        adopted = []
        for name, layers in imported.items():
            directory = self.directory(name)
            if directory.exists() and any(directory.iterdir()):
                continue  # ours wins
            with contextlib.suppress(FileNotFoundError):
                directory.rmdir()
            self.root.mkdir(parents=True, exist_ok=True)
            write_atomic(self.root / f"{name}{LOWER_SUFFIX}", Snapshot(tuple(layers)).id.encode())
            adopted.append(name)
        return adopted

    def contents(self) -> dict[str, MountContent]:
        """What an export takes of the cache mounts this build used."""
        found = {}
        for name in sorted(self.used):
            lowers = self.lowers(name)
            changes = self.directory(name) / "upper" if lowers else self.directory(name)
            if changes.is_dir():
                found[name] = MountContent(lowers, changes, self.used[name])
        return found
