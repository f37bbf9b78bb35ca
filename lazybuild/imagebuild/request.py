"""What one build is asked to do (the CLI's flags, parsed)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from lazybuild.executor.spec import Ulimit
from lazybuild.remotecache.spec import CacheImport

if TYPE_CHECKING:
    from lazybuild.worker.sshforward import SshUpstream


@dataclass(frozen=True)
class BuildRequest:
    """``dockerfile`` None means ``<context>/Dockerfile``; ``secrets`` are values by id;
    ``source_date_epoch`` pins timestamps of new layers and of the config; ``network``
    is what RUN steps without ``--network`` get ("default" is the host's: there is no
    bridge network)."""

    context_dir: Path
    dockerfile: Path | None = None
    build_args: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None
    platform: str | None = None
    no_cache: bool = False
    pull: bool = False
    secrets: Mapping[str, bytes] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    source_date_epoch: int | None = None
    network: Literal["default", "host", "none"] = "default"
    cache_from: tuple[CacheImport, ...] = ()  # remote build caches, consulted after ours
    # A cache export follows (``--cache-to``): collect what it takes (``BuildResult``).
    export_cache: bool = False
    # The RUN container (``--add-host`` name/address pairs, ``--shm-size`` bytes,
    # ``--ulimit``); each enters the RUN steps' keys when given.
    extra_hosts: tuple[tuple[str, str], ...] = ()
    shm_size: int | None = None
    ulimits: tuple[Ulimit, ...] = ()
    # --build-context, by name: a local directory, or ``docker-image://REF``.
    named_contexts: Mapping[str, str] = field(default_factory=dict)
    # --no-cache-filter: stages (by name) whose steps run whatever the cache holds.
    no_cache_filter: tuple[str, ...] = ()
    # --ssh: the agent of each id, for RUN --mount=type=ssh: its socket on this
    # machine, or (through the daemon) a connection to the client's (never part of a
    # step's key: only the mount's id and target are).
    ssh: Mapping[str, SshUpstream] = field(default_factory=dict)

    @property
    def dockerfile_path(self) -> Path:
        return self.dockerfile if self.dockerfile is not None else self.context_dir / "Dockerfile"
