"""The build graph's operations: frozen values with one canonical JSON encoding.

An op's identity is ``sha256`` of its canonical JSON (see ``definition.digest_of``), so
two ops that mean the same thing must encode to the same bytes and every field here is
part of the contract with the worker. Inputs are named by digest and output index; the
op's own fields refer to them by position in ``inputs`` (``ExecMount.input``,
``Copy.src_input``, ``File.base_input``, ``Diff.lower``/``upper``), where ``None`` means
an empty filesystem (scratch), which is never an input.

Anything that must not change identity (descriptions, source lines, ``ignore_cache``)
lives in ``OpMetadata``, outside the digest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar, Literal

from lazybuild.graph._codec import DecodeError, JsonValue, canonical_json, from_json, to_json

Network = Literal["default", "none", "host"]
MountKind = Literal["bind", "cache", "tmpfs", "secret", "ssh"]
CacheSharing = Literal["shared", "private", "locked"]


@dataclass(frozen=True)
class Input:
    """Output ``output_index`` of the op whose digest is ``digest``."""

    digest: str
    output_index: int = 0


@dataclass(frozen=True, kw_only=True)
class ImageSource:
    """A base image. ``ref`` is pinned to a manifest digest (``name@sha256:...``) by the
    solve side before the op is hashed, so a moving tag never hides behind one digest."""

    json_tag: ClassVar[str] = "image"
    ref: str
    platform: str
    inputs: tuple[Input, ...] = ()


@dataclass(frozen=True, kw_only=True)
class LocalSource:
    """Files from the client side, such as the build context, by session-local ``name``."""

    json_tag: ClassVar[str] = "local"
    name: str
    include_patterns: tuple[str, ...] = ()
    exclude_patterns: tuple[str, ...] = ()
    followpaths: tuple[str, ...] = ()
    inputs: tuple[Input, ...] = ()


@dataclass(frozen=True, kw_only=True)
class HttpSource:
    """A file downloaded from ``url`` (Dockerfile ``ADD <url>``), saved as ``filename``
    (default: the URL's last path segment) with ``mode``/``uid``/``gid``. ``checksum``
    (``sha256:<hex>``, ``ADD --checksum``) must match the downloaded bytes."""

    json_tag: ClassVar[str] = "http"
    url: str
    checksum: str | None = None
    filename: str | None = None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    inputs: tuple[Input, ...] = ()


@dataclass(frozen=True, kw_only=True)
class ExecMount:
    """One mount of a process. Mount 0 is the root filesystem (``dest == "/"``).

    ``input`` indexes the op's inputs (``None``: start from scratch). ``output`` is the
    index of the op output this mount's final contents become (``None``: discarded; always
    ``None`` for read-only, cache, tmpfs, secret and ssh mounts). ``secret_id`` names the
    secret for ``kind="secret"`` and the agent socket for ``kind="ssh"``; ``mode``, ``uid``
    and ``gid`` apply to those two kinds; ``size`` (bytes) to tmpfs; ``cache_id`` and
    ``sharing`` to cache mounts. ``required`` makes a missing secret or ssh socket an error.
    """

    input: int | None = None
    dest: str
    source_path: str = "/"
    readonly: bool = False
    kind: MountKind = "bind"
    cache_id: str | None = None
    sharing: CacheSharing = "shared"
    secret_id: str | None = None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    output: int | None = None
    required: bool = False


@dataclass(frozen=True, kw_only=True)
class SecretEnv:
    """Secret ``secret_id`` exposed to the process as environment variable ``name``
    (``RUN --mount=type=secret,env=NAME``); kept out of ``env`` so it never reaches the
    cache key, the history or a layer. ``required`` makes a missing secret an error."""

    name: str
    secret_id: str
    required: bool = False


@dataclass(frozen=True, kw_only=True)
class Exec:
    """Run ``args`` in a container. ``env`` is ``KEY=value`` strings in order; ``user`` is
    as Docker's USER (``name``, ``uid``, ``name:group``...), resolved in the root filesystem,
    ``""`` meaning root. Outputs: one per mount with an ``output``, numbered from 0.

    ``proxy_env`` (``KEY=value``) is set like ``env`` but left out of the cache key, as
    Docker does for its predefined proxy args: a build behind another proxy still hits.
    ``secret_env``: secrets given to the process as environment variables.
    """

    json_tag: ClassVar[str] = "exec"
    args: tuple[str, ...]
    env: tuple[str, ...] = ()
    proxy_env: tuple[str, ...] = ()
    cwd: str = "/"
    user: str = ""
    network: Network = "default"
    hostname: str = ""
    mounts: tuple[ExecMount, ...]
    secret_env: tuple[SecretEnv, ...] = ()
    inputs: tuple[Input, ...] = ()


@dataclass(frozen=True)
class ChownOpt:
    """Owner for created files, as written by the user (``"1000"``, ``"app"``); names are
    resolved in the destination's ``/etc/passwd`` and ``/etc/group`` by the worker."""

    user: str
    group: str | None = None


@dataclass(frozen=True, kw_only=True)
class Copy:
    """Copy ``src`` of input ``src_input`` to ``dest``, as buildkit's FileActionCopy does."""

    json_tag: ClassVar[str] = "copy"
    src_input: int
    src: str
    dest: str
    follow_symlinks: bool = False
    dir_copy_contents: bool = False
    attempt_unpack_docker_compatibility: bool = False
    create_dest_path: bool = False
    allow_wildcard: bool = False
    allow_empty_wildcard: bool = False
    chown: ChownOpt | None = None
    chmod: str | None = None
    include_patterns: tuple[str, ...] = ()
    exclude_patterns: tuple[str, ...] = ()
    always_replace_existing: bool = False
    timestamp: int | None = None
    # Paths of the source that must exist even though only include patterns select
    # them (``COPY --parents`` without wildcards), as BuildKit's RequiredPaths.
    required_paths: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Mkdir:
    json_tag: ClassVar[str] = "mkdir"
    path: str
    mode: int = 0o755
    make_parents: bool = False
    chown: ChownOpt | None = None
    timestamp: int | None = None


@dataclass(frozen=True, kw_only=True)
class Mkfile:
    json_tag: ClassVar[str] = "mkfile"
    path: str
    mode: int = 0o644
    data: bytes
    chown: ChownOpt | None = None
    timestamp: int | None = None


@dataclass(frozen=True, kw_only=True)
class Rm:
    json_tag: ClassVar[str] = "rm"
    path: str
    allow_not_found: bool = False
    allow_wildcard: bool = False


FileAction = Copy | Mkdir | Mkfile | Rm


@dataclass(frozen=True, kw_only=True)
class File:
    """Apply ``actions`` in order on top of input ``base_input`` (``None``: scratch)."""

    json_tag: ClassVar[str] = "file"
    actions: tuple[FileAction, ...]
    base_input: int | None = 0
    inputs: tuple[Input, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Merge:
    """The inputs stacked in order, later ones on top (``COPY --link`` assembles with this)."""

    json_tag: ClassVar[str] = "merge"
    inputs: tuple[Input, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Diff:
    """The changes that turn ``lower`` into ``upper`` (input indexes; ``None``: scratch)."""

    json_tag: ClassVar[str] = "diff"
    lower: int | None = 0
    upper: int | None = 1
    inputs: tuple[Input, ...] = ()


Operation = ImageSource | LocalSource | HttpSource | Exec | File | Merge | Diff


@dataclass(frozen=True)
class SourceLocation:
    """Lines ``start_line..end_line`` (1-based, inclusive) of ``filename``."""

    filename: str
    start_line: int
    end_line: int


@dataclass(frozen=True, kw_only=True)
class OpMetadata:
    """What a vertex is called and where it came from; never part of its digest.

    ``ignore_cache`` makes the solver execute the vertex even when its key hits.
    """

    description: str = ""
    progress_group: str | None = None
    ignore_cache: bool = False
    source_locations: tuple[SourceLocation, ...] = ()


def encode_op(op: Operation) -> bytes:
    """The canonical JSON of ``op``: ``{"<kind>": {<non-default fields>}}``."""
    return canonical_json(to_json(op))


def decode_op(data: bytes) -> Operation:
    """Parse an op's canonical JSON; raises ``DecodeError`` if it is not exactly that."""
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DecodeError(f"op is not JSON: {error}") from None
    op: Operation = from_json(Operation, value)
    if encode_op(op) != data:
        # Same meaning, other bytes (spacing, key order, explicit defaults): the digest the
        # op was named by would not be its own.
        raise DecodeError("op is not in canonical form")
    return op


def encode_metadata(metadata: OpMetadata) -> JsonValue:
    return to_json(metadata)


def decode_metadata(value: object) -> OpMetadata:
    metadata: OpMetadata = from_json(OpMetadata, value)
    return metadata


def output_count(op: Operation) -> int:
    """How many outputs ``op`` has: one per exec mount with an ``output``; otherwise one."""
    if isinstance(op, Exec):
        return sum(1 for mount in op.mounts if mount.output is not None)
    return 1


def kind_of(op: Operation) -> str:
    return type(op).json_tag
