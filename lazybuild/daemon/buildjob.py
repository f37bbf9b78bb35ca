"""One build in the daemon: the driver (``imagebuild.driver.run_build``) and the export, as
``lazybuild build`` runs them (``cli.build_commands``), with progress as
``--progress=rawjson`` events for the client to render, and archive outputs written to
the build's private directory for the call to stream back.

This repeats the export half of ``cli.build_commands._build`` through the same public
functions (profile, export, cache export) so that a build through the daemon makes the
same image; sharing one function with the CLI needs that module split (see
docs/daemon.md).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TextIO, cast

from lazybuild.api.control.v1 import control_pb2
from lazybuild.daemon.buildcontext import (
    ReceivedBuild,
    cache_export_dir,
    cache_import_dir,
    layout_marker_of,
)
from lazybuild.errors import UsageError
from lazybuild.registry.options import RegistryOptions

if TYPE_CHECKING:
    from lazybuild.exporter import ExportResult
    from lazybuild.exporter.outputs import OutputSpec
    from lazybuild.lazyfs.shared import SharedFilesystem
    from lazybuild.remotecache.spec import CacheExport, CacheImport
    from lazybuild.worker.sshforward import SshUpstream


class _EventLines(io.TextIOBase):
    """A text stream for ``BuildProgress``: each line it is given (one rawjson event)
    is handed to ``emit``. Not a terminal (``isatty`` is False)."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        super().__init__()
        self._emit = emit
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        lines = (self._pending + text).split("\n")
        self._pending = lines.pop()
        for line in lines:
            if line:
                self._emit(line)
        return len(text)


@dataclass(frozen=True)
class ArchiveDest:
    """Where the daemon writes the archive (or the directory) of ``outputs[index]``."""

    index: int
    path: Path
    directory: bool = False
    # Where the client puts it: the build's messages say that rather than ``path``.
    shown_as: str = ""
    # A local cache export (``index`` in ``cache_to``), sent back as ``CacheChunk``s.
    cache: bool = False


def _outputs(
    header: control_pb2.BuildHeader, workdir: Path
) -> tuple[list[OutputSpec], list[ArchiveDest]]:
    from lazybuild.exporter.outputs import (
        DockerOutput,
        ImageOutput,
        LocalOutput,
        OciOutput,
        TarOutput,
    )

    specs: list[OutputSpec] = []
    archives: list[ArchiveDest] = []
    for index, output in enumerate(header.outputs):
        kind = output.WhichOneof("kind")
        if kind == "image":
            specs.append(ImageOutput(tuple(output.image.names), output.image.push))
            continue
        directory = kind == "local" or (kind == "oci" and output.oci.directory)
        path = workdir / f"output-{index}{'' if directory else '.tar'}"
        if kind == "oci":
            specs.append(OciOutput(str(path), not directory, tuple(output.oci.names)))
            shown = output.oci.dest
        elif kind == "docker":
            specs.append(DockerOutput(str(path), tuple(output.docker.names)))
            shown = output.docker.dest
        elif kind == "local":
            specs.append(LocalOutput(path))
            shown = output.local.dest
        elif kind == "tar":
            specs.append(TarOutput(str(path)))
            shown = output.tar.dest
        else:
            raise UsageError(f"output {index}: no kind given")
        archives.append(ArchiveDest(index, path, directory, shown))
    return specs, archives


class KeptImports:
    """The local caches builds imported, kept after their builds for as long as the
    daemon's shared filesystem process that may have opened their layers runs.

    That process opens a layer once, by digest, reading its blob from the layout of
    the first build that needed it; a later build that sends the same layer in its own
    copy of the cache is given that open layer, whose reads go to the first build's
    layout. So a layout goes only once the process it was used with has stopped (seen
    when a later build ends; the daemon's start removes what is left). Blobs are
    hardlinks to one store (each checked against its digest before it joins), so a
    cache that every job of a CI runner sends takes its space once."""

    def __init__(self, root: Path) -> None:
        self._layouts = root / "imported-caches"
        self._store = root / "imported-blobs"
        self._lock = threading.Lock()
        self._released: list[tuple[Path, object]] = []

    def place(self, received: Path) -> Path:
        """Moves the layout a build received out of its directory; where it is now."""
        with self._lock:
            self._layouts.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._store.mkdir(mode=0o700, exist_ok=True)
            layout = self._layouts / secrets.token_hex(8)
            received.rename(layout)
            blobs = layout / "blobs" / "sha256"
            for blob in sorted(blobs.iterdir()) if blobs.is_dir() else ():
                if not re.fullmatch(r"[0-9a-f]{64}", blob.name) or not blob.is_file():
                    continue
                stored = self._store / blob.name
                if stored.is_file():
                    linked = blob.with_name(f".{blob.name}.link")
                    os.link(stored, linked)
                    os.replace(linked, blob)
                elif _sha256_hex(blob) == blob.name:
                    os.link(blob, stored)
            return layout

    def release(self, layouts: Iterable[Path], holder: object | None) -> None:
        """The build that used ``layouts`` is over; ``holder`` is the filesystem process
        it used (None: none runs). Removes what no running process may read."""
        with self._lock:
            self._released += [(layout, holder) for layout in layouts]
            kept = []
            for layout, used_with in self._released:
                if holder is not None and used_with is holder:
                    kept.append((layout, used_with))
                else:
                    shutil.rmtree(layout, ignore_errors=True)
            self._released = kept
            for stored in self._store.iterdir() if self._store.is_dir() else ():
                if stored.stat().st_nlink == 1:  # in no layout any more
                    stored.unlink()


def _sha256_hex(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as file:
        while piece := file.read(1 << 20):
            hasher.update(piece)
    return hasher.hexdigest()


_kept_imports: dict[Path, KeptImports] = {}
_kept_imports_lock = threading.Lock()


def kept_imports(state_dir: Path) -> KeptImports:
    """The daemon's one ``KeptImports`` (in its builds' directory)."""
    from lazybuild.daemon.service import BUILDS_DIR

    with _kept_imports_lock:
        return _kept_imports.setdefault(state_dir, KeptImports(state_dir / BUILDS_DIR))


def _local_caches(
    header: control_pb2.BuildHeader, workdir: Path, placed: dict[int, Path]
) -> tuple[list[CacheImport], list[CacheExport], list[ArchiveDest], list[tuple[Path, str]]]:
    """The cache specs with each local directory replaced by the daemon's own copy
    (what the client sent, ``placed`` by position, or where the export is made to be
    sent back): the client's paths name its machine, never read or written here. Also
    the exports to send back, and the daemon's paths with the client's names for them."""
    from lazybuild.remotecache.spec import cache_exports, cache_imports

    imports = cache_imports(header.cache_from)
    exports = cache_exports(header.cache_to)
    names: list[tuple[Path, str]] = []
    for index, wanted in enumerate(imports):
        if wanted.src is not None:
            # Not sent (the client has no such directory): a path that does not exist,
            # for the import's own warning.
            src = placed.get(index, cache_import_dir(workdir, index))
            imports[index] = replace(wanted, src=src)
            names.append((src, str(wanted.src)))
    sent_back = []
    for index, export in enumerate(exports):
        if export.dest is not None:
            dest = cache_export_dir(workdir, index)
            exports[index] = replace(export, dest=dest)
            names.append((dest, str(export.dest)))
            sent_back.append(
                ArchiveDest(index, dest, directory=True, shown_as=str(export.dest), cache=True)
            )
    return imports, exports, sent_back, names


def _naming_client_paths(
    emit: Callable[[str], None], archives: list[ArchiveDest], names: list[tuple[Path, str]]
) -> Callable[[str], None]:
    """``emit`` of events whose mentions of the daemon's output and cache paths name the
    client's destinations instead ("copying the root filesystem to ./rootfs")."""
    pairs = [(a.path, a.shown_as) for a in archives if a.shown_as] + names
    renames = [
        (json.dumps(str(path))[1:-1], json.dumps(shown)[1:-1])
        # The longest first, lest cache-from-1 be renamed inside cache-from-10.
        for path, shown in sorted(pairs, key=lambda pair: -len(str(pair[0])))
    ]
    if not renames:
        return emit

    def renamed(line: str) -> None:
        for daemon_path, client_path in renames:
            line = line.replace(daemon_path, client_path)
        emit(line)

    return renamed


def _sent_inputs(inputs: Iterable[Path], received: ReceivedBuild) -> list[str]:
    """The build's inputs (``--depfile``) as names of what the client sent."""
    names = []
    for path in inputs:
        if path == received.dockerfile:
            names.append("dockerfile")
        elif path.parent == received.dockerfile.parent:
            names.append("dockerignore")  # the only other file written beside it
        elif path.is_relative_to(received.context_dir):
            names.append(f"context/{path.relative_to(received.context_dir).as_posix()}")
    return names


def _network(value: str) -> Literal["default", "host", "none"]:
    if value not in ("", "default", "host", "none"):
        raise UsageError(f"--network {value}: expected default, host or none")
    return cast(Literal["default", "host", "none"], value or "default")


def _ssh_agents(header: control_pb2.BuildHeader) -> dict[str, SshUpstream]:
    """``--ssh``: each id a connection to the client's agent over its ForwardSsh call
    (``sshrelay``), never a path of its machine."""
    from lazybuild.daemon.sshrelay import relays

    relay = relays.get(header.build_id) if header.ssh_ids else None
    if relay is None:
        return {}
    return {
        agent_id: functools.partial(relay.open_channel, agent_id) for agent_id in header.ssh_ids
    }


def _named_context(name: str, value: str, received: ReceivedBuild) -> str:
    """A named context as the build takes it: a local one, or an OCI layout, where the
    daemon put what the client sent; an image as named (checked on use)."""
    if value == "local":
        return str(received.named_contexts[name])
    marker = layout_marker_of(value)
    if marker is not None:
        return f"oci-layout://{received.named_contexts[name]}{marker}"
    return value


async def run_job(
    received: ReceivedBuild,
    *,
    workdir: Path,
    state_dir: Path,
    registry: RegistryOptions,
    emit_event: Callable[[str], None],
    filesystem: SharedFilesystem | None = None,
) -> tuple[control_pb2.BuildResult, list[ArchiveDest]]:
    """Builds and exports, its lazy layers served by the daemon's ``filesystem`` (a
    build of its own starts one without); raises what the build raised
    (``BuildFailedError`` with its tail, other ``LazybuildError``s), for the caller to
    answer with."""
    import trio

    kept = kept_imports(state_dir)
    placed: dict[int, Path] = {}
    layouts: dict[str, Path] = {}
    try:
        for index in range(len(received.header.cache_from)):
            sent = cache_import_dir(workdir, index)
            if sent.is_dir():
                placed[index] = await trio.to_thread.run_sync(kept.place, sent)
        # An oci-layout:// context's layers are opened from its layout by the shared
        # filesystem process: kept as long as a local cache's.
        for name, value in received.header.named_contexts.items():
            if layout_marker_of(value) is not None:
                sent = received.named_contexts[name]
                layouts[name] = await trio.to_thread.run_sync(kept.place, sent)
        received = replace(received, named_contexts={**received.named_contexts, **layouts})
        return await _build(
            received,
            placed,
            workdir=workdir,
            state_dir=state_dir,
            registry=registry,
            emit_event=emit_event,
            filesystem=filesystem,
        )
    finally:
        holder = filesystem.service if filesystem is not None else None
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(
                kept.release, [*placed.values(), *layouts.values()], holder
            )


async def _build(
    received: ReceivedBuild,
    placed: dict[int, Path],
    *,
    workdir: Path,
    state_dir: Path,
    registry: RegistryOptions,
    emit_event: Callable[[str], None],
    filesystem: SharedFilesystem | None,
) -> tuple[control_pb2.BuildResult, list[ArchiveDest]]:
    from lazybuild.cli import build_flags
    from lazybuild.imagebuild.driver import run_build
    from lazybuild.imagebuild.exporting import ExportPlan, exporting_finish
    from lazybuild.imagebuild.profiling import ProfileRequest
    from lazybuild.imagebuild.request import BuildRequest
    from lazybuild.progress.buildview import BuildProgress
    from lazybuild.run.imagemount import render_fetch_report

    header = received.header
    cache_from, cache_exports_wanted, cache_archives, cache_names = _local_caches(
        header, workdir, placed
    )
    request = BuildRequest(
        # A local one as the daemon received it; an image as named (checked on use).
        named_contexts={
            name: _named_context(name, value, received)
            for name, value in header.named_contexts.items()
        },
        context_dir=received.context_dir,
        dockerfile=received.dockerfile,
        build_args=dict(header.build_args),
        target=header.target or None,
        platform=header.platform or None,
        no_cache=header.no_cache,
        pull=header.pull,
        secrets=dict(header.secrets),
        ssh=_ssh_agents(header),
        labels=dict(header.labels),
        source_date_epoch=(
            header.source_date_epoch if header.HasField("source_date_epoch") else None
        ),
        network=_network(header.network),
        # Checked again as the client checks them: a header is outside input.
        extra_hosts=build_flags.extra_hosts(f"{h.name}={h.address}" for h in header.extra_hosts),
        shm_size=header.shm_size if header.HasField("shm_size") else None,
        ulimits=build_flags.ulimits(f"{u.name}={u.soft}:{u.hard}" for u in header.ulimits),
        no_cache_filter=tuple(header.no_cache_filter),
        cache_from=tuple(cache_from),
        export_cache=bool(header.cache_to),
    )
    outputs, archives = _outputs(header, workdir)
    wanted = header.profiling
    record_in = record_out = None
    if wanted.HasField("record_in"):
        record_in = workdir / "record-in.json"
        record_in.write_bytes(wanted.record_in)
    if wanted.record_out:
        record_out = workdir / "record-out.json"
    profile = ProfileRequest(
        command=tuple(wanted.command) or None,
        env=tuple(wanted.env),
        timeout=wanted.timeout_seconds,
        ready=re.compile(wanted.ready_pattern) if wanted.ready_pattern else None,
        network="host" if wanted.network == "host" else "none",
        optimize_base=wanted.optimize_base,
        record_in=record_in,
        record_out=record_out,
    )
    export_result: list[ExportResult] = []
    events = _EventLines(_naming_client_paths(emit_event, archives, cache_names))
    # An io.TextIOBase is a text stream; typeshed's typing.TextIO is a separate class.
    with BuildProgress("rawjson", cast(TextIO, events)) as progress:
        finish = exporting_finish(
            ExportPlan(
                outputs,
                cache_exports_wanted,
                profile,
                profile_workload=wanted.enabled,
                source_date_epoch=request.source_date_epoch,
                assemble=header.assemble,
                registry=registry,
                annotations=build_flags.manifest_annotations(header.annotations),
            ),
            progress.line,
            export_result,
        )

        outcome = await run_build(
            request,
            state_dir=state_dir,
            registry=registry,
            progress=progress,
            finish=finish,
            on_line=progress.line,
            on_fetch=progress.fetch_status,
            shared_filesystem=filesystem,
        )
    answer = control_pb2.BuildResult(inputs=_sent_inputs(outcome.inputs, received))
    if outcome.fetch_report is not None:
        answer.fetch_report = render_fetch_report(outcome.fetch_report)
        answer.fetch_report_json = json.dumps(outcome.fetch_report.to_json(), indent=2) + "\n"
    if record_out is not None and record_out.is_file():
        answer.record = record_out.read_bytes()
    if export_result:
        exported = export_result[0]
        answer.config_digest = exported.config_digest or ""
        answer.metadata_json = json.dumps(exported.metadata(), indent=2) + "\n"
    # A cache that was not exported (the build never got that far) is not sent.
    return answer, archives + [a for a in cache_archives if a.path.is_dir()]
