"""``lazybuild build --builder ADDR`` (or ``$LAZYBUILD_HOST``): the same command, the
build done by a daemon.

The flags are read here as ``lazybuild build`` reads them (build args and secrets from
this process's environment and files, outputs and cache specs checked with the same
messages), the context is sent as a tar of what ``.dockerignore`` leaves (modes and
nanosecond mtimes kept: copied context files keep their mtimes in layers), the
daemon's progress events are rendered in the chosen ``--progress`` mode, archive outputs
land where they were asked, local build caches (``type=local``) go to the daemon and
come back as tars of their layouts, and a failure ends with the same line and exit
status.
Ctrl-C cancels the call and sends ``Cancel``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import hashlib
import io
import json
import os
import queue
import re
import secrets
import shutil
import socket
import sys
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Protocol, cast

from lazybuild.errors import LazybuildError, UsageError

if TYPE_CHECKING:
    from lazybuild.api.control.v1 import control_pb2
    from lazybuild.api.control.v1.control_pb2_grpc import ControlStub
    from lazybuild.context.sources import OciLayoutContext
    from lazybuild.exporter.outputs import OutputSpec
    from lazybuild.progress.buildview import BuildProgress

_CHUNK_BYTES = 1 << 20
# remotecache.registrycache's LOCAL_CACHE_TAG and MAX_MANIFEST_SIZE (a unit test keeps
# them equal): importing that module would add 0.2 s to the client's start-up.
LOCAL_CACHE_TAG = "buildcache"
MAX_MANIFEST_SIZE = 4 << 20
# How soon a SIGTERM noted meanwhile cancels the build.
_INTERRUPT_POLL_SECONDS = 0.1


class RemoteBuildError(LazybuildError):
    """The daemon's build failed: its one line, with its exit status."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code or 1


def _refuse_unsupported(outputs: list[OutputSpec]) -> None:
    from lazybuild.exporter.outputs import OciOutput, TarOutput

    for output in outputs:
        if isinstance(output, OciOutput) and not output.tar and output.dest == "-":
            raise UsageError("an OCI layout directory cannot go to standard output")
        if isinstance(output, TarOutput) and output.dest == "-" and sys.stdout.isatty():
            raise UsageError(
                "dest file is required for the tar exporter: refusing to write to a "
                "terminal; redirect stdout or give dest="
            )


def build_header(
    args: argparse.Namespace, secret_files: list[Path] | None = None
) -> tuple[control_pb2.BuildHeader, Path, list[OutputSpec]]:
    """The call's header, the context directory, the outputs (as parsed here); the
    secret files read are added to ``secret_files``."""
    from lazybuild.api.control.v1 import control_pb2
    from lazybuild.cli import build_flags
    from lazybuild.context.dockerignore import find_dockerignore
    from lazybuild.context.sources import (
        IMAGE_SCHEME,
        OCI_LAYOUT_SCHEME,
        named_contexts,
        parse_oci_layout,
    )
    from lazybuild.exporter.outputs import (
        DockerOutput,
        ImageOutput,
        LocalOutput,
        OciOutput,
        TarOutput,
        outputs_from_flags,
    )
    from lazybuild.remotecache.spec import cache_exports, cache_imports

    environ = dict(os.environ)
    # --ssh: only the ids travel; the agents stay here, reached over ForwardSsh.
    ssh_ids = [source.id for source in build_flags.ssh_sources(args.ssh, environ)]
    build_args = build_flags.key_values(args.build_arg, "--build-arg", environ)
    context_dir = Path(args.context)  # a str when prepare_sources has not run
    if not context_dir.is_dir():
        raise UsageError(f"build context {context_dir} is not a directory")
    outputs = outputs_from_flags(args.output, args.tag, push=args.push, load=args.load)
    _refuse_unsupported(outputs)
    if args.record_in is not None and args.workload_cmd is not None:
        raise UsageError("--record-in and --workload-cmd exclude each other")
    if args.optimize_base and not args.optimize:
        raise UsageError("--optimize-base and --no-optimize exclude each other")
    # A local cache's directory goes by its absolute path: the daemon names it so in
    # its messages (its own working directory is not this one).
    cache_from = [
        _absolute_local(spec, "src", wanted.src)
        for spec, wanted in zip(args.cache_from, cache_imports(args.cache_from), strict=True)
    ]
    cache_to = [
        _absolute_local(spec, "dest", wanted.dest)
        for spec, wanted in zip(args.cache_to, cache_exports(args.cache_to), strict=True)
    ]
    dockerfile = args.file if args.file is not None else context_dir / "Dockerfile"
    try:
        dockerfile_bytes = dockerfile.read_bytes()
    except OSError as error:
        raise UsageError(f"cannot read the Dockerfile {dockerfile}: {error.strerror}") from None
    header = control_pb2.BuildHeader(
        build_id=secrets.token_hex(16),
        dockerfile_name=dockerfile.name,
        dockerfile=dockerfile_bytes,
        build_args=build_args,
        target=args.target or "",
        platform=args.platform or "",
        no_cache=args.no_cache,
        pull=args.pull,
        secrets=build_flags.secrets(args.secret, environ, secret_files),
        labels=build_flags.labels(args.label),
        network=args.network,
        cache_from=cache_from,
        cache_to=cache_to,
        assemble=args.iidfile is not None,
        profiling=control_pb2.Profiling(
            enabled=args.optimize,
            optimize_base=args.optimize_base,
            command=list(args.workload_cmd or ()),
            env=args.workload_env,
            timeout_seconds=args.workload_timeout,
            ready_pattern=args.workload_ready.pattern if args.workload_ready else "",
            network=args.workload_network,
            record_out=args.record_out is not None,
        ),
        extra_hosts=[
            control_pb2.HostAddress(name=name, address=address)
            for name, address in build_flags.extra_hosts(args.add_host)
        ],
        ulimits=[
            control_pb2.Ulimit(name=limit.name, soft=limit.soft, hard=limit.hard)
            for limit in build_flags.ulimits(args.ulimit)
        ],
    )
    header.no_cache_filter.extend(build_flags.stage_names(args.no_cache_filter))
    header.ssh_ids.extend(ssh_ids)
    build_flags.manifest_annotations(args.annotation)  # checked here, sent as given
    header.annotations.extend(args.annotation)
    shm_size = build_flags.shm_size(args.shm_size)
    if shm_size is not None:
        header.shm_size = shm_size
    build_flags.entitlements(args.allow)  # grants nothing the daemon would refuse
    if args.record_in is not None:
        try:
            header.profiling.record_in = args.record_in.read_bytes()
        except OSError as error:
            raise UsageError(f"--record-in {args.record_in}: {error.strerror}") from None
    epoch = build_flags.source_date_epoch(build_args, environ)
    if epoch is not None:
        header.source_date_epoch = epoch
    for name, value in named_contexts(args.build_context).items():
        if value.startswith(OCI_LAYOUT_SCHEME):
            # The layout's blobs travel after the context (``write_layout_tar``); the
            # header keeps the tag and digest, never the client's directory.
            header.named_contexts[name] = layout_marker(parse_oci_layout(value))
        elif value.startswith(IMAGE_SCHEME):
            header.named_contexts[name] = value
        else:
            header.named_contexts[name] = "local"
    ignore_file = find_dockerignore(context_dir, dockerfile)
    if ignore_file is not None:
        header.dockerignore = ignore_file.read_bytes()
    for output in outputs:
        if isinstance(output, ImageOutput):
            header.outputs.add().image.CopyFrom(
                control_pb2.ImageOutput(names=output.names, push=output.push)
            )
        elif isinstance(output, OciOutput):
            header.outputs.add().oci.CopyFrom(
                control_pb2.ArchiveOutput(
                    names=output.names, directory=not output.tar, dest=output.dest
                )
            )
        elif isinstance(output, LocalOutput):
            header.outputs.add().local.CopyFrom(control_pb2.LocalOutput(dest=str(output.dest)))
        elif isinstance(output, TarOutput):
            header.outputs.add().tar.CopyFrom(control_pb2.LocalOutput(dest=output.dest))
        elif isinstance(output, DockerOutput):
            header.outputs.add().docker.CopyFrom(
                control_pb2.ArchiveOutput(
                    names=output.names, dest=output.dest or "", load=output.dest is None
                )
            )
    return header, context_dir, outputs


def _absolute_local(spec: str, key: str, directory: Path | None) -> str:
    """``spec`` with its ``src=``/``dest=`` directory made absolute (a registry cache's
    spec as it is), in buildx's CSV."""
    if directory is None:
        return spec
    (parts,) = csv.reader([spec])
    fields = [
        f"{key}={directory}" if part.partition("=")[0].strip().lower() == key else part
        for part in parts
    ]
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(fields)
    return out.getvalue()


def write_cache_tar(src: Path, out: IO[bytes]) -> bool:
    """The local cache ``src`` as a tar of what a local build's import reads of it: the
    layout's marker and index, and the blobs its cache manifest names (not the blobs
    of earlier exports the directory keeps). What is missing or malformed is left for
    the daemon's import to report, as a local build reports it. False when there is
    no such directory (nothing to send)."""
    if not src.is_dir():
        return False
    names = ["oci-layout", "index.json"]
    manifest_digest = _tagged_digest(src / "index.json", LOCAL_CACHE_TAG)
    if manifest_digest is not None:
        names.append(_blob_name(manifest_digest))
        names += _described_blobs(_json_file(src / _blob_name(manifest_digest), MAX_MANIFEST_SIZE))
    _write_layout_files(src, names, out)
    return True


def layout_marker(layout: OciLayoutContext) -> str:
    """An ``oci-layout://`` named context as the header names it: its tag and digest,
    without the client's directory (the daemon unpacks the layout's blobs in its own)."""
    tag = f":{layout.tag}" if layout.tag else ""
    digest = f"@{layout.digest}" if layout.digest else ""
    return f"oci-layout://{tag}{digest}"


def write_layout_tar(layout: OciLayoutContext, out: IO[bytes]) -> None:
    """An ``oci-layout://`` named context as a tar of what the build reads of it: the
    marker, index.json, the image its digest or tag names and, under an index, the
    manifests it lists, their configs and layers (not the layout's other images). The
    daemon checks every blob against its digest as it reads it."""
    from lazybuild.oci.layout import OciLayout

    src = layout.directory
    root = layout.digest
    if root is None:
        try:
            root = OciLayout.open(src).resolve(layout.tag).digest
        except LazybuildError as error:
            raise UsageError(f"{layout}: {error}") from None
    names = ["oci-layout", "index.json"]
    pending, seen = [root], set()
    while pending:
        digest = pending.pop()
        if digest in seen or not _is_digest(digest):
            continue
        seen.add(digest)
        names.append(_blob_name(digest))
        document = _json_file(src / _blob_name(digest), MAX_MANIFEST_SIZE)
        if not isinstance(document, dict):
            continue
        for child in _list(document.get("manifests")):  # an index: each platform's
            if isinstance(child, dict) and isinstance(child.get("digest"), str):
                pending.append(child["digest"])
        names += _described_blobs(document)
    _write_layout_files(src, names, out)


def _described_blobs(manifest: object) -> list[str]:
    """The blob names of a manifest's config and layers (none for what is not one)."""
    if not isinstance(manifest, dict):
        return []
    described = [manifest.get("config"), *_list(manifest.get("layers"))]
    return [
        _blob_name(d["digest"])
        for d in described
        if isinstance(d, dict) and _is_digest(d.get("digest"))
    ]


def _write_layout_files(src: Path, names: list[str], out: IO[bytes]) -> None:
    """The files ``names`` of the layout ``src`` (those missing left out) as a tar."""
    from lazybuild.untar.writer import TarWriter

    with TarWriter(out) as tar:
        for directory in ("blobs", "blobs/sha256"):
            member = tarfile.TarInfo(directory)
            member.type, member.mode = tarfile.DIRTYPE, 0o755
            tar.add(member)
        for name in dict.fromkeys(names):
            try:
                file = (src / name).open("rb")
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                continue
            with file:
                member = tarfile.TarInfo(name)
                member.size = os.fstat(file.fileno()).st_size
                member.mode = 0o644
                tar.add(member, file)


def _is_digest(value: object) -> bool:
    return isinstance(value, str) and re.fullmatch(r"sha256:[0-9a-f]{64}", value) is not None


def _blob_name(digest: str) -> str:
    return f"blobs/sha256/{digest.removeprefix('sha256:')}"


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def _json_file(path: Path, max_bytes: int) -> object:
    try:
        with path.open("rb") as file:
            data = file.read(max_bytes + 1)
        return None if len(data) > max_bytes else json.loads(data)
    except (OSError, ValueError):
        return None


def _tagged_digest(index_path: Path, tag: str) -> str | None:
    """The digest index.json names ``tag`` by (as ``OciLayout.resolve`` finds it)."""
    from lazybuild.oci.mediatypes import REF_NAME_ANNOTATION

    index = _json_file(index_path, 4 << 20)
    if not isinstance(index, dict):
        return None
    for entry in _list(index.get("manifests")):
        if not isinstance(entry, dict):
            continue
        annotations = entry.get("annotations")
        if isinstance(annotations, dict) and annotations.get(REF_NAME_ANNOTATION) == tag:
            digest = entry.get("digest")
            return digest if _is_digest(digest) else None
    return None


def write_context_tar(context_dir: Path, dockerfile: Path | None, out: IO[bytes]) -> None:
    """The context as the build sees it (``.dockerignore`` applied) as a PAX tar."""
    from lazybuild.context.dockerignore import load_dockerignore
    from lazybuild.context.listing import BuildContext
    from lazybuild.untar.writer import TarWriter, stat_header

    context = BuildContext(context_dir, load_dockerignore(context_dir, dockerfile))
    with TarWriter(out) as tar:
        for entry in context.files():
            if entry.type not in ("dir", "symlink", "file"):
                continue  # devices, fifos and sockets: a context transfer sends none
            path = context.root / entry.path
            info = path.lstat()
            seconds, nanos = divmod(info.st_mtime_ns, 1_000_000_000)
            member = stat_header(
                entry.path, info, mtime=seconds, linkname=entry.linkname, owner=(0, 0)
            )
            if member is None:
                continue
            # Exactly, to the nanosecond: a float would round it.
            member.pax_headers = {"mtime": f"{seconds}.{nanos:09d}"}
            if member.type == tarfile.REGTYPE:
                with path.open("rb") as file:
                    tar.add(member, file)
            else:
                tar.add(member)


def _requests(
    header: control_pb2.BuildHeader,
    tar: IO[bytes],
    caches: dict[int, IO[bytes]],
    named: dict[str, IO[bytes]] | None = None,
) -> Iterator[control_pb2.BuildRequest]:
    """The header, the context, then each local cache to import (by its position in
    ``header.cache_from``)."""
    from lazybuild.api.control.v1 import control_pb2

    yield control_pb2.BuildRequest(header=header)
    tar.seek(0)
    while chunk := tar.read(_CHUNK_BYTES):
        yield control_pb2.BuildRequest(context_chunk=chunk)
    for name, named_tar in sorted((named or {}).items()):
        named_tar.seek(0)
        while chunk := named_tar.read(_CHUNK_BYTES):
            yield control_pb2.BuildRequest(
                named_context_chunk=control_pb2.NamedContextChunk(name=name, data=chunk)
            )
    for index, cache in sorted(caches.items()):
        cache.seek(0)
        while chunk := cache.read(_CHUNK_BYTES):
            yield control_pb2.BuildRequest(
                cache_chunk=control_pb2.CacheChunk(index=index, data=chunk)
            )


class _Outputs:
    """Outputs arriving in pieces: an archive written beside its destination and
    renamed into place once the build succeeded ("-": standard output); a directory's
    tar kept aside and unpacked into the directory then (with ``untar``: nothing lands
    outside it; owners kept when this process is root, else its own)."""

    def __init__(self, outputs: list[OutputSpec], cache_dests: dict[int, Path]) -> None:
        from lazybuild.exporter.outputs import DockerOutput, LocalOutput, OciOutput, TarOutput

        # Local cache exports by their position in --cache-to: each a tar of the
        # exported layout, kept aside and merged into its directory once the build
        # succeeded.
        self._cache_dests = cache_dests
        self._caches: dict[int, IO[bytes]] = {}

        self._dests: dict[int, str] = {}
        self._directories: set[int] = set()
        self._loads: set[int] = set()  # docker tarballs for this machine's Docker engine
        for index, output in enumerate(outputs):
            if isinstance(output, LocalOutput):
                self._dests[index] = str(output.dest)
                self._directories.add(index)
            elif isinstance(output, DockerOutput) and output.dest is None:
                self._dests[index] = ""
                self._loads.add(index)
            elif isinstance(output, TarOutput):
                self._dests[index] = output.dest
            elif isinstance(output, OciOutput | DockerOutput) and output.dest is not None:
                self._dests[index] = output.dest
                if isinstance(output, OciOutput) and not output.tar:
                    self._directories.add(index)
        self._open: dict[int, tuple[IO[bytes], Path | None]] = {}
        # Tarballs to load once the call is over (``commit`` hands them over, open).
        self.to_load: list[IO[bytes]] = []

    def write(self, index: int, data: bytes) -> None:
        if index not in self._dests:
            raise UsageError(f"the builder sent output {index}, which was not asked for")
        if index not in self._open:
            dest = self._dests[index]
            if dest == "-":
                self._open[index] = (sys.stdout.buffer, None)
            elif index in self._directories or index in self._loads:
                # Closed by commit or discard (or, to load, by the caller), as the
                # partial archives are.
                self._open[index] = (tempfile.TemporaryFile(), None)  # noqa: SIM115
            else:
                final = Path(dest)
                partial = final.with_name(f".{final.name}.partial")
                self._open[index] = (partial.open("wb"), partial)
        self._open[index][0].write(data)

    def write_cache(self, index: int, data: bytes) -> None:
        if index not in self._cache_dests:
            raise UsageError(f"the builder sent cache {index}, which was not asked for")
        if index not in self._caches:
            self._caches[index] = tempfile.TemporaryFile()  # noqa: SIM115 (closed by commit or discard)
        self._caches[index].write(data)

    def commit(self) -> None:
        self._commit_outputs()
        # After the outputs, as a local build exports its caches after its image (a
        # cache that cannot be written then fails the build with the outputs there).
        caches, self._caches = self._caches, {}
        try:
            for index, cache in caches.items():
                _merge_cache(cache, self._cache_dests[index])
        finally:
            for cache in caches.values():
                cache.close()

    def _commit_outputs(self) -> None:
        for index, (file, partial) in self._open.items():
            if index in self._directories:
                _unpack_directory(file, Path(self._dests[index]))
                file.close()
            elif index in self._loads:
                file.seek(0)
                self.to_load.append(file)
            elif partial is None:
                file.flush()
            else:
                file.close()
                partial.rename(Path(self._dests[index]))
        self._open.clear()

    def discard(self) -> None:
        for cache in self._caches.values():
            cache.close()
        self._caches.clear()
        for index, (file, partial) in self._open.items():
            if index in self._directories or index in self._loads:
                file.close()
            elif partial is not None:
                file.close()
                with contextlib.suppress(FileNotFoundError):
                    partial.unlink()
        self._open.clear()


def _unpack_directory(tar: IO[bytes], dest: Path) -> None:
    from lazybuild.untar.extract import archive_policy, caller_owner, extract

    dest.mkdir(parents=True, exist_ok=True)
    tar.seek(0)
    extract(cast(BinaryIO, tar), dest, archive_policy(caller_owner()), f"the output for {dest}")


def _merge_cache(tar: IO[bytes], dest: Path) -> None:
    """The exported layout into the directory ``dest`` as a local export writes it
    (``remotecache.registrycache``): the blobs, each checked against its digest, then
    index.json naming the new cache manifest, replaced whole; earlier blobs and other
    entries of index.json stay, so a reader of the old index still finds what it
    names. Unpacked with ``untar`` in the layout's staging directory (its filesystem,
    so blobs are renamed into place, and where a local export stages its blobs)."""
    from lazybuild.oci.layout import OciLayout
    from lazybuild.untar.extract import archive_policy, caller_owner, extract

    layout = OciLayout.create(dest)
    staging = dest / "blobs" / ".staging"
    staging.mkdir(parents=True, exist_ok=True)
    received = Path(tempfile.mkdtemp(prefix="received-", dir=staging))
    try:
        tar.seek(0)
        where = f"the cache exported for {dest}"
        extract(cast(BinaryIO, tar), received, archive_policy(caller_owner()), where)
        cache = OciLayout.open(received).resolve(LOCAL_CACHE_TAG)
        blobs = received / "blobs" / "sha256"
        for blob in sorted(blobs.iterdir()) if blobs.is_dir() else ():
            digest = f"sha256:{blob.name}"
            if blob.is_file() and not blob.is_symlink() and _is_digest(digest):
                _check_digest(blob, digest, where)
                layout.adopt_blob_file(blob, digest)
        if not layout.has_blob(cache.digest):
            raise RemoteBuildError(f"{where} lacks its manifest {cache.digest}", 1)
        layout.add_ref(cache, LOCAL_CACHE_TAG)
    finally:
        shutil.rmtree(received, ignore_errors=True)


def _check_digest(path: Path, digest: str, where: str) -> None:
    hasher = hashlib.sha256()
    with path.open("rb") as file:
        while piece := file.read(_CHUNK_BYTES):
            hasher.update(piece)
    if f"sha256:{hasher.hexdigest()}" != digest:
        raise RemoteBuildError(f"{where}: blob {digest} does not match its digest", 1)


def _render(progress: BuildProgress, line: str) -> None:
    """One rawjson event into the local display, as the solver's event it was."""
    from lazybuild.solver.progress import VertexCompleted, VertexLog, VertexStarted, VertexStatus

    event = json.loads(line)
    kind = event.get("type")
    if kind == "started":
        progress(
            VertexStarted(
                event["vertex"],
                event["name"],
                tuple(event["inputs"]),
                event["started"],
                event.get("progress_group"),
            )
        )
    elif kind == "log":
        progress(
            VertexLog(event["vertex"], event["stream"], event["data"].encode(), event["timestamp"])
        )
    elif kind == "status":
        progress(
            VertexStatus(
                event["vertex"],
                event["id"],
                event["name"],
                event["current"],
                event["total"],
                event["timestamp"],
                event["completed"],
            )
        )
    elif kind == "completed":
        progress(
            VertexCompleted(
                event["vertex"],
                event["name"],
                event["cached"],
                event["started"],
                event["completed"],
                event["error"],
            )
        )
    elif kind == "message":
        progress.line(event["data"])
    elif kind == "fetch":
        downloading = event.get("downloading")  # [done, total] of whole-layer downloads
        progress.fetch_status(
            event["image"],
            event["fetched"],
            event["total"],
            (int(downloading[0]), int(downloading[1])) if downloading else None,
        )


class _Cancellable(Protocol):
    def cancel(self) -> object: ...


@dataclass
class _Call:
    """The call under way, for ``_cancel`` (filled in as the call starts)."""

    build_id: str = ""
    stub: ControlStub | None = None
    responses: _Cancellable | None = None  # the Build call
    # Docker tarballs for --load, open, once the build succeeded.
    to_load: list[IO[bytes]] = field(default_factory=list)
    # What the build's inputs are named by, for --depfile.
    secret_files: list[Path] = field(default_factory=list)
    context_dir: Path = Path()
    dockerfile: Path = Path()

    def input_path(self, name: str) -> Path | None:
        """The file here that the daemon's input ``name`` (``BuildResult.inputs``) is."""
        from lazybuild.context.dockerignore import find_dockerignore

        if name == "dockerfile":
            return self.dockerfile
        if name == "dockerignore":
            return find_dockerignore(self.context_dir, self.dockerfile)
        relative = name.removeprefix("context/")
        if relative == name or relative.startswith("/") or ".." in relative.split("/"):
            return None  # not a name this client sent
        return self.context_dir / relative


def _build_through(args: argparse.Namespace, call: _Call) -> control_pb2.BuildResult:
    """The whole call, blocking (a worker thread's): returns the final BuildResult."""
    import grpc

    from lazybuild.cli import build_flags
    from lazybuild.cli.build_ssh import ssh_agents
    from lazybuild.context.sources import (
        IMAGE_SCHEME,
        OCI_LAYOUT_SCHEME,
        named_contexts,
        parse_oci_layout,
    )
    from lazybuild.daemon.client import BuilderError, control_stub, describe_rpc_error
    from lazybuild.progress.buildview import BuildProgress, Mode
    from lazybuild.remotecache.spec import cache_exports, cache_imports

    header, context_dir, outputs = build_header(args, call.secret_files)
    dockerfile = args.file if args.file is not None else context_dir / "Dockerfile"
    call.context_dir, call.dockerfile = context_dir, dockerfile
    mode = cast(
        Mode, "quiet" if args.quiet else build_flags.progress_mode(args.progress, os.environ)
    )
    cache_dests = {
        index: export.dest
        for index, export in enumerate(cache_exports(header.cache_to))
        if export.dest is not None
    }
    received = _Outputs(outputs, cache_dests)
    with contextlib.ExitStack() as stack:
        tar = stack.enter_context(tempfile.TemporaryFile())
        write_context_tar(context_dir, dockerfile, tar)
        named: dict[str, IO[bytes]] = {}
        for name, value in named_contexts(args.build_context).items():
            if value.startswith(OCI_LAYOUT_SCHEME):
                named[name] = stack.enter_context(tempfile.TemporaryFile())
                write_layout_tar(parse_oci_layout(value), named[name])
            elif not value.startswith(IMAGE_SCHEME):
                # Its own .dockerignore applies, as to a local build's named context.
                named[name] = stack.enter_context(tempfile.TemporaryFile())
                write_context_tar(Path(value), None, named[name])
        caches: dict[int, IO[bytes]] = {}
        for index, wanted in enumerate(cache_imports(header.cache_from)):
            if wanted.src is not None:
                cache_tar = stack.enter_context(tempfile.TemporaryFile())
                if write_cache_tar(wanted.src, cache_tar):
                    caches[index] = cache_tar
        # --ssh: key files go into a private agent here, as for a local build.
        agents = stack.enter_context(ssh_agents(build_flags.ssh_sources(args.ssh, os.environ)))
        stub = stack.enter_context(control_stub(args.builder))
        call.stub, call.build_id = stub, header.build_id
        responses = stub.Build(_requests(header, tar, caches, named))
        call.responses = responses
        forwarding = _SshForwarding(stub, header.build_id, agents) if agents else None
        if forwarding is not None:
            stack.callback(forwarding.stop)
        result = None
        try:
            with BuildProgress(mode) as progress:
                for response in responses:
                    if forwarding is not None:
                        # The build is registered once it answers: connect the agents.
                        forwarding.start()
                    part = response.WhichOneof("part")
                    if part == "progress_event" and mode == "rawjson":
                        # Already the very line a local build prints, timestamps and all.
                        print(response.progress_event, file=sys.stderr, flush=True)
                    elif part == "progress_event":
                        _render(progress, response.progress_event)
                    elif part == "output":
                        received.write(response.output.index, response.output.data)
                    elif part == "cache":
                        received.write_cache(response.cache.index, response.cache.data)
                    elif part == "result":
                        result = response.result
                if result is not None and result.error and result.error_tail and mode != "quiet":
                    progress.close()
                    _print_tail(tuple(result.error_tail))
        except grpc.RpcError as error:
            received.discard()
            raise BuilderError(describe_rpc_error(args.builder, error)) from None
        except BaseException:
            received.discard()
            raise
        if result is None:
            received.discard()
            raise BuilderError(f"the builder at {args.builder} ended the build without a result")
        if result.error:
            received.discard()
            raise RemoteBuildError(result.error, result.exit_code)
        received.commit()
        call.to_load = received.to_load
        return result


class _SshForwarding:
    """``--ssh`` through the daemon: the ForwardSsh call, whose channels this client
    connects to its own agents (``sockets``: by id), a thread per connection."""

    def __init__(self, stub: ControlStub, build_id: str, sockets: dict[str, str]) -> None:
        self._stub = stub
        self._build_id = build_id
        self._sockets = sockets
        self._out: queue.Queue[control_pb2.SshFrame | None] = queue.Queue()
        self._connections: dict[int, socket.socket] = {}
        self._lock = threading.Lock()
        self._call: Any = None

    def start(self) -> None:
        if self._call is not None:
            return
        from lazybuild.api.control.v1 import control_pb2

        def frames() -> Iterator[control_pb2.SshFrame]:
            yield control_pb2.SshFrame(build_id=self._build_id)
            while (frame := self._out.get()) is not None:
                yield frame

        self._call = self._stub.ForwardSsh(frames())
        threading.Thread(target=self._receive, name="ssh-forward", daemon=True).start()

    def stop(self) -> None:
        self._out.put(None)
        if self._call is not None:
            self._call.cancel()
        with self._lock:
            connections = list(self._connections.values())
            self._connections.clear()
        for connection in connections:
            connection.close()

    def _receive(self) -> None:
        import grpc

        try:
            for frame in self._call:
                if frame.agent_id:
                    self._open(frame.channel, frame.agent_id)
                with self._lock:
                    connection = self._connections.get(frame.channel)
                if connection is None:
                    continue
                try:
                    if frame.data:
                        connection.sendall(frame.data)
                    if frame.close:
                        connection.shutdown(socket.SHUT_WR)
                except OSError:
                    self._close(frame.channel)
        except grpc.RpcError:
            pass  # the call ended (the build did, or the daemon went away)

    def _open(self, channel: int, agent_id: str) -> None:
        path = self._sockets.get(agent_id)
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if path is None:
                raise OSError(f"no agent {agent_id!r}")
            connection.connect(path)
        except OSError:
            connection.close()
            self._send(channel=channel, close=True)
            return
        with self._lock:
            self._connections[channel] = connection
        threading.Thread(
            target=self._pump, args=(channel, connection), name="ssh-agent", daemon=True
        ).start()

    def _pump(self, channel: int, connection: socket.socket) -> None:
        """The agent's bytes to the daemon, then the end of them."""
        try:
            while data := connection.recv(1 << 16):
                self._send(channel=channel, data=data)
        except OSError:
            pass
        self._send(channel=channel, close=True)
        self._close(channel)

    def _close(self, channel: int) -> None:
        with self._lock:
            connection = self._connections.pop(channel, None)
        if connection is not None:
            connection.close()

    def _send(self, **fields: object) -> None:
        from lazybuild.api.control.v1 import control_pb2

        self._out.put(control_pb2.SshFrame(**fields))  # type: ignore[arg-type]


def _print_tail(tail: tuple[str, ...]) -> None:
    print("------", file=sys.stderr)
    for line in tail:
        print(f" > {line}", file=sys.stderr)
    print("------", file=sys.stderr)


def _cancel(call: _Call) -> None:
    """Ctrl-C: the call is cancelled and the daemon told to cancel the build (either
    alone would do; both, in case the first is lost)."""
    from lazybuild.api.control.v1 import control_pb2

    if call.responses is not None:
        call.responses.cancel()
    if call.stub is not None:
        with contextlib.suppress(Exception):
            call.stub.Cancel(control_pb2.CancelRequest(build_id=call.build_id), timeout=5)


def run_remote_build(args: argparse.Namespace, terminated: Callable[[], bool]) -> int:
    """The build, done by the daemon; blocking, without trio (a client's start-up counts
    in every build it asks for). The call runs in a thread of its own, so that this one
    sees a Ctrl-C (or ``terminated()``, a SIGTERM) at once, and cancels the build."""
    from lazybuild.context.sources import cleanup_sources, prepare_sources

    # A stdin or git context is made a directory here and sent like any other.
    prepare_sources(args)
    try:
        return _run_remote_build(args, terminated)
    finally:
        cleanup_sources(args)


def _run_remote_build(args: argparse.Namespace, terminated: Callable[[], bool]) -> int:
    from lazybuild.cli import build_flags
    from lazybuild.state.atomicfile import write_atomic

    call = _Call()
    ended: list[control_pb2.BuildResult | BaseException] = []

    def converse() -> None:
        try:
            ended.append(_build_through(args, call))
        except BaseException as error:  # handed to the waiting thread
            ended.append(error)

    caller = threading.Thread(target=converse, name="lazybuild-build-call", daemon=True)
    caller.start()
    try:
        while caller.is_alive():
            caller.join(_INTERRUPT_POLL_SECONDS)
            if terminated():
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        _cancel(call)
        raise
    if isinstance(ended[0], BaseException):
        raise ended[0]
    result = ended[0]
    for tarball in call.to_load:
        # --load: into this machine's Docker engine, as a local build loads it.
        import trio

        from lazybuild.exporter.dockerload import load_into_docker

        with tarball:
            trio.run(load_into_docker, functools.partial(shutil.copyfileobj, tarball))
    if args.record_out is not None and result.HasField("record"):
        args.record_out.write_bytes(result.record)
    # BUILDKIT_PROGRESS=quiet silences the report too, as --progress=quiet does.
    quiet = args.quiet or build_flags.progress_mode(args.progress, os.environ) == "quiet"
    if result.fetch_report and not quiet:
        print(result.fetch_report, file=sys.stderr)
    if args.fetch_report is not None:
        empty = json.dumps({"layers": []}, indent=2) + "\n"
        args.fetch_report.write_text(result.fetch_report_json or empty)
    if args.iidfile is not None and result.config_digest:
        write_atomic(args.iidfile, result.config_digest.encode())
    if args.metadata_file is not None and result.metadata_json:
        args.metadata_file.write_text(result.metadata_json)
    if args.quiet and result.config_digest:
        print(result.config_digest)
    if args.depfile is not None:
        from lazybuild.imagebuild.depfile import write_depfile

        inputs = [path for name in result.inputs if (path := call.input_path(name)) is not None]
        target = args.iidfile or args.metadata_file or args.depfile
        write_depfile(args.depfile, target, [*inputs, *call.secret_files])
    return 0
