"""A build's inputs as the daemon receives them: the header, the context tar, then the
tars of the local caches to import, written to the build's private directory with
bounds, and unpacked there with the one tar extractor (``untar``, its archive policy:
every entry root-owned, symlinks resolved inside the root, nothing outside it).

A local cache's directory is named by the client and lives on the client's machine:
the daemon never reads a path the header names, only what the call carries. So does an
``oci-layout://`` named context: the header keeps its tag and digest, its blobs come
as a tar like a local cache's, unpacked as files and directories only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from lazybuild.api.control.v1 import control_pb2
from lazybuild.errors import FormatError, UsageError

CONTEXT_TAR = "context.tar"
OCI_LAYOUT_MARKER = "oci-layout://"


class BuildRequestError(UsageError):
    """A Build call whose messages are not a header and a context within bounds."""


@dataclass(frozen=True)
class ReceivedBuild:
    header: control_pb2.BuildHeader
    context_dir: Path
    dockerfile: Path
    # --build-context directories, by name, unpacked like the context.
    named_contexts: dict[str, Path] = field(default_factory=dict)


def cache_import_dir(workdir: Path, index: int) -> Path:
    """Where the layout of ``header.cache_from[index]`` is unpacked (absent when the
    client had no such directory, as a local build finds none)."""
    return workdir / f"cache-from-{index}"


def cache_export_dir(workdir: Path, index: int) -> Path:
    """Where the cache of ``header.cache_to[index]`` is exported, to be sent back."""
    return workdir / f"cache-to-{index}"


def receive(
    requests: Iterator[control_pb2.BuildRequest], workdir: Path, max_context_bytes: int
) -> ReceivedBuild:
    """Reads the call's messages (blocking) into ``workdir``: the context unpacked in
    ``workdir/context``, the Dockerfile (and the ignore file the client applied) in
    ``workdir/dockerfile``, each local cache sent in ``cache_import_dir``.
    ``max_context_bytes`` bounds all the tars together."""
    first = next(requests, None)
    if first is None or first.WhichOneof("part") != "header":
        raise BuildRequestError("a build starts with its header")
    header = first.header
    name = header.dockerfile_name or "Dockerfile"
    if "/" in name or name in (".", "..") or "\0" in name:
        raise BuildRequestError(f"dockerfile name {name!r} is not a file name")
    received = 0
    tar_path = workdir / CONTEXT_TAR
    cache_tars: dict[int, Path] = {}
    named_tars: dict[str, Path] = {}
    tar = tar_path.open("wb")
    try:
        for request in requests:
            part = request.WhichOneof("part")
            if part == "context_chunk" and not cache_tars and not named_tars:
                data = request.context_chunk
            elif part == "named_context_chunk" and not cache_tars:
                data = request.named_context_chunk.data
                named = request.named_context_chunk.name
                if named not in named_tars:
                    if named_tars and named < max(named_tars):
                        raise BuildRequestError("a build sends each named context in one piece")
                    if not _sent_as_files(header.named_contexts.get(named, "")):
                        raise BuildRequestError(
                            f"a build sent named context {named[:100]!r}, which it did not name "
                            "as a local one"
                        )
                    tar.close()
                    named_tars[named] = workdir / f"named-context-{len(named_tars)}.tar"
                    tar = named_tars[named].open("wb")
            elif part == "cache_chunk":
                data = request.cache_chunk.data
                index = request.cache_chunk.index
                if index not in cache_tars:
                    if cache_tars and index < max(cache_tars):
                        raise BuildRequestError("a build sends each local cache in one piece")
                    _check_local_import(header, index)
                    tar.close()
                    cache_tars[index] = workdir / f"cache-from-{index}.tar"
                    tar = cache_tars[index].open("wb")
            else:
                raise BuildRequestError(
                    "a build sends one header, then its context, then its local caches"
                )
            received += len(data)
            if received > max_context_bytes:
                # Named as the client knows what it sent: the context alone, or with
                # what came after it.
                sent = "the build context"
                if cache_tars or named_tars:
                    sent += " with its named contexts and local caches"
                raise BuildRequestError(
                    f"{sent} is larger than the daemon takes "
                    f"({max_context_bytes} bytes; max_context_size in its configuration)"
                )
            tar.write(data)
    finally:
        tar.close()
    context_dir = workdir / "context"
    context_dir.mkdir()
    if tar_path.stat().st_size:
        _unpack(tar_path, context_dir, "the build context", _CONTEXT_KINDS)
    with contextlib.suppress(FileNotFoundError):
        tar_path.unlink()
    named_dirs: dict[str, Path] = {}
    for named, value in sorted(header.named_contexts.items()):
        if _sent_as_files(value):
            # One sent empty (an empty directory) sends no chunk at all.
            named_dirs[named] = workdir / f"named-context-{len(named_dirs)}"
            named_dirs[named].mkdir()
            named_tar = named_tars.get(named)
            if named_tar is not None:
                where = f"the build context {named[:100]!r}"
                # A layout's blobs are read by the daemon as root: files only, as a cache's.
                kinds = _CONTEXT_KINDS if value == "local" else _CACHE_KINDS
                _unpack(named_tar, named_dirs[named], where, kinds)
                named_tar.unlink()
        elif not value.startswith("docker-image://"):
            raise BuildRequestError(f"named context {named[:100]!r}: {value[:100]!r} is not one")
    for index, cache_tar in cache_tars.items():
        layout = cache_import_dir(workdir, index)
        layout.mkdir()
        where = f"the local cache --cache-from {header.cache_from[index]!r}"
        _unpack(cache_tar, layout, where, _CACHE_KINDS)
        cache_tar.unlink()
    dockerfile_dir = workdir / "dockerfile"
    dockerfile_dir.mkdir()
    dockerfile = dockerfile_dir / name
    dockerfile.write_bytes(header.dockerfile)
    if header.HasField("dockerignore"):
        # Beside the Dockerfile, where it wins over the context's own (as it did for
        # the client, whichever file it came from).
        dockerfile.with_name(f"{name}.dockerignore").write_bytes(header.dockerignore)
    return ReceivedBuild(header, context_dir, dockerfile, named_dirs)


def layout_marker_of(value: str) -> str | None:
    """For a named context the header gives as ``oci-layout://[:TAG][@DIGEST]`` (its
    layout sent as files, ``buildclient.layout_marker``), the tag and digest part; None
    for any other value. A value naming a directory is none: the daemon never reads a
    path of the client's machine."""
    if not value.startswith(OCI_LAYOUT_MARKER):
        return None
    rest = value.removeprefix(OCI_LAYOUT_MARKER)
    return rest if rest == "" or rest[0] in ":@" else None


def _sent_as_files(value: str) -> bool:
    return value == "local" or layout_marker_of(value) is not None


def _check_local_import(header: control_pb2.BuildHeader, index: int) -> None:
    from lazybuild.remotecache.spec import cache_imports

    if index >= len(header.cache_from):
        raise BuildRequestError(f"a build sent local cache {index}, which it did not name")
    (spec,) = cache_imports([header.cache_from[index]])
    if spec.src is None:
        raise BuildRequestError(f"--cache-from {header.cache_from[index]!r} is not a local cache")


def _unpack(tar_path: Path, dest: Path, where: str, kinds: tuple[frozenset[str], str]) -> None:
    from lazybuild.untar.extract import archive_policy, extract

    with tar_path.open("rb") as stream:
        _refuse_other_kinds(stream, where, kinds)
        stream.seek(0)
        extract(stream, dest, archive_policy((0, 0)), where)


# The kinds of entry a client sends (``buildclient``), and how to say so.
_CONTEXT_KINDS = (
    frozenset({"file", "directory", "symlink", "hardlink"}),
    "a build context holds files, directories and links only",
)
# A cache's files are read by the daemon as root (its import, the lazy filesystem, an
# export copying imported blobs): a symlink there would have it read a file of its
# own host that the client named (and send it back in an export).
_CACHE_KINDS = (frozenset({"file", "directory"}), "a local cache holds files and directories only")


def _refuse_other_kinds(stream: BinaryIO, where: str, kinds: tuple[frozenset[str], str]) -> None:
    """Refuses the whole call for an entry of another kind: a device node (or fifo)
    made as root in the daemon's directories, and from there copied into a layer, or
    a cache's symlink, could only be a way to reach the daemon's host."""
    from lazybuild.untar.tarreader import TarReader

    allowed, rule = kinds
    name = ""
    try:
        for entry in TarReader(stream):
            name = entry.name
            if entry.kind not in allowed:
                raise BuildRequestError(f"{where}: entry {name[:200]!r} is a {entry.kind}: {rule}")
    except BuildRequestError:
        raise
    except FormatError as error:
        about = f"entry {name[:200]!r}: " if name else ""
        raise FormatError(f"{where}: {about}{error}") from None
