"""What a frontend is given and what it may ask of the build: the gateway contract.

Modelled on BuildKit's LLB bridge (``frontend/gateway/client``): a frontend is
``async def build(gateway) -> FrontendResult``. It reads its inputs (``gateway.inputs``),
solves graph definitions into result references, reads files and directories of those
results, resolves image configs, and returns one reference and the image config to
export with it, as plain data. Nothing here imports the solver, the worker or any
filesystem code: out-of-tree frontends import this and ``lazybuild.graph`` only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from lazybuild.graph import Definition

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_DIR_ENTRIES",
    "MAX_READ_BYTES",
    "DirEntry",
    "Frontend",
    "FrontendError",
    "FrontendInputs",
    "FrontendResult",
    "Gateway",
    "GatewayError",
    "Ref",
    "ResolvedConfig",
]

# Bounds on what a frontend can pull through the gateway in one call (BuildKit bounds
# its messages too): a frontend reads manifests and build files, not whole layers.
MAX_READ_BYTES = 16 << 20
MAX_DIR_ENTRIES = 65536
# The image config a frontend returns, encoded as JSON.
MAX_CONFIG_BYTES = 4 << 20


class GatewayError(Exception):
    """A gateway call the frontend got wrong: an unknown reference, a path that is not
    there or not a file, a read over the bounds. Frontends may catch it."""


class FrontendError(Exception):
    """Raised by a frontend for a problem in its input (a bad build file): the build
    fails with ``frontend NAME: <message>``, one line, no traceback."""


@dataclass(frozen=True)
class Ref:
    """A solved result of this build, opaque to the frontend. Valid until the build ends;
    a reference another build (or no solve) made is refused."""

    id: str


@dataclass(frozen=True)
class FrontendInputs:
    """``context``: the name of the local source holding the build context (give it to
    ``State.local``), with ``context_excludes`` the patterns the context was sent with
    (its ``.dockerignore``); name them on the source so its key follows them.
    ``source``: the bytes of the build file (the Dockerfile, or a frontend's own file
    named by ``-f``), ``source_name`` its file name. ``platform`` is ``os/arch[/variant]``."""

    context: str
    source: bytes
    source_name: str
    platform: str
    build_args: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    context_excludes: tuple[str, ...] = ()
    # The frontend's name as ``# syntax=`` (or BUILDKIT_SYNTAX) gave it.
    syntax: str | None = None
    # --build-context, by name: ``docker-image://REF``, or ``local:SOURCE`` (a local
    # source of the build, for ``State.local``).
    named_contexts: Mapping[str, str] = field(default_factory=dict)
    # --no-cache-filter: the stages (by name) whose steps ignore the cache.
    no_cache_filter: tuple[str, ...] = ()


@dataclass(frozen=True)
class DirEntry:
    """One entry of ``read_dir``: its name, kind, permission bits, size (files) and
    link target (symlinks)."""

    name: str
    kind: Literal["file", "dir", "symlink", "other"]
    mode: int
    size: int = 0
    linkname: str = ""


@dataclass(frozen=True)
class ResolvedConfig:
    """An image resolved for the build's platform: ``ref`` pinned by manifest digest,
    ``digest`` that manifest's digest, ``config`` its OCI image config."""

    ref: str
    digest: str
    config: Mapping[str, Any]


@dataclass(frozen=True)
class FrontendResult:
    """What a frontend returns: the reference to export and its image config, an OCI
    image config as a dict (``config``, ``history``, ``author``, …; the exporter fills in
    ``rootfs``, ``created`` and the platform)."""

    ref: Ref
    config: Mapping[str, Any] = field(default_factory=dict)


class Gateway(Protocol):
    """The build, as a frontend sees it."""

    @property
    def inputs(self) -> FrontendInputs: ...

    async def solve(self, definition: Definition) -> Ref:
        """Build ``definition`` through the build's solver and cache; a step that fails
        fails the build (the error is raised here and should be left to propagate)."""
        ...

    async def read_file(
        self, ref: Ref, path: str, *, offset: int = 0, length: int | None = None
    ) -> bytes:
        """Bytes of the file at ``path`` (symlinks resolved inside the result), at most
        ``MAX_READ_BYTES``; ``length`` None reads to the end."""
        ...

    async def read_dir(self, ref: Ref, path: str) -> list[DirEntry]:
        """The entries of the directory at ``path``, sorted by name."""
        ...

    async def resolve_image_config(self, ref: str) -> ResolvedConfig:
        """The config of image ``ref`` for the build's platform."""
        ...


Frontend = Callable[[Gateway], Awaitable[FrontendResult]]
