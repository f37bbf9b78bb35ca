"""The control protocol between lazybuild and its filesystem process: JSON lines on a unix socket.

Each request is one JSON object on one line, ``{"op": ..., ...}``; the answer is one
line, ``{"ok": true, ...}`` or ``{"ok": false, "error": "one line"}``. A connection may
carry several requests in turn; clients open one connection per request so that
requests run concurrently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import trio

from lazybuild.errors import FormatError
from lazybuild.profile.offsetranges import decode_offset_ranges

# Lists of read files travel in one line (reads_since, prefetch_files).
MAX_LINE = 16 << 20
# lazy: served by the filesystem process; local: mounted from its whole image on this
# machine; unpacked: downloaded whole and unpacked (not eStargz).
LayerMode = Literal["lazy", "local", "unpacked"]
# By layer digest and path: (offset, length) places read in a big file.
LayerRanges = dict[str, dict[str, list[tuple[int, int]]]]


@dataclass(frozen=True)
class AddLayer:
    ref: str
    descriptor: dict[str, Any]  # OCI descriptor JSON
    op: Literal["add_layer"] = "add_layer"


@dataclass(frozen=True)
class Stats:
    op: Literal["stats"] = "stats"


@dataclass(frozen=True)
class FetchAll:
    """Fetch every chunk of these (added) layers now, in large requests: for a reader
    that is about to read everything (an export of the whole root filesystem)."""

    digests: tuple[str, ...]
    op: Literal["fetch_all"] = "fetch_all"


@dataclass(frozen=True)
class MarkReads:
    """A point in the filesystem's record of reads; the answer is ``{"mark": n}``.
    ``reread_big_files`` drops the kernel's cached pages of big files first, so that
    every place read after the mark reaches the filesystem and is recorded."""

    reread_big_files: bool = False
    op: Literal["mark_reads"] = "mark_reads"


@dataclass(frozen=True)
class ReadsSince:
    """The files read since ``mark``: ``{"layers": {layer digest: [paths]},
    "ranges": {layer digest: {path: [[offset, length]]}}}``, the ranges for big files."""

    mark: int
    op: Literal["reads_since"] = "reads_since"


@dataclass(frozen=True)
class PrefetchFiles:
    """Start fetching these files of these layers, in the order given; the answer is
    ``{"chunks": n, "bytes": n}``, what was scheduled (nothing cached or in flight)."""

    files: dict[str, list[str]]  # layer digest -> paths
    # Big files are fetched only in these places (without any, not at all).
    ranges: LayerRanges = field(default_factory=dict)
    # Where the layers not added yet are (the add_layer each would get), so that the
    # prefetch can open them itself rather than wait for the owner to add them.
    layers: dict[str, AddLayer] = field(default_factory=dict)
    op: Literal["prefetch_files"] = "prefetch_files"


@dataclass(frozen=True)
class Shutdown:
    op: Literal["shutdown"] = "shutdown"


Request = AddLayer | Stats | FetchAll | MarkReads | ReadsSince | PrefetchFiles | Shutdown


@dataclass(frozen=True)
class LayerAdded:
    path: str
    mode: LayerMode
    digest: str


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def encode_request(request: Request) -> bytes:
    if isinstance(request, AddLayer):
        return encode({"op": request.op, "ref": request.ref, "descriptor": request.descriptor})
    if isinstance(request, FetchAll):
        return encode({"op": request.op, "digests": list(request.digests)})
    if isinstance(request, ReadsSince):
        return encode({"op": request.op, "mark": request.mark})
    if isinstance(request, MarkReads):
        return encode({"op": request.op, "reread_big_files": request.reread_big_files})
    if isinstance(request, PrefetchFiles):
        layers = {
            digest: {"ref": where.ref, "descriptor": where.descriptor}
            for digest, where in request.layers.items()
        }
        return encode(
            {"op": request.op, "files": request.files, "ranges": request.ranges, "layers": layers}
        )
    return encode({"op": request.op})


def decode_object(line: bytes, what: str) -> dict[str, Any]:
    try:
        message = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{what}: not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise FormatError(f"{what}: not a JSON object")
    return message


def decode_request(line: bytes) -> Request:
    message = decode_object(line, "control request")
    op = message.get("op")
    if op == "add_layer":
        ref, descriptor = message.get("ref"), message.get("descriptor")
        if not isinstance(ref, str) or not isinstance(descriptor, dict):
            raise FormatError("add_layer needs a string 'ref' and an object 'descriptor'")
        return AddLayer(ref=ref, descriptor=descriptor)
    if op == "stats":
        return Stats()
    if op == "fetch_all":
        digests = message.get("digests")
        if not isinstance(digests, list) or not all(isinstance(d, str) for d in digests):
            raise FormatError("fetch_all needs a list of layer digests")
        return FetchAll(digests=tuple(digests))
    if op == "mark_reads":
        return MarkReads(reread_big_files=message.get("reread_big_files") is True)
    if op == "reads_since":
        mark = message.get("mark")
        if not isinstance(mark, int) or isinstance(mark, bool) or mark < 0:
            raise FormatError("reads_since needs a non-negative integer 'mark'")
        return ReadsSince(mark=mark)
    if op == "prefetch_files":
        return PrefetchFiles(
            files=layer_files(message.get("files"), "prefetch_files"),
            ranges=layer_ranges(message.get("ranges", {}), "prefetch_files"),
            layers=_layer_sources(message.get("layers", {})),
        )
    if op == "shutdown":
        return Shutdown()
    raise FormatError(f"unknown control operation {op!r}")


def _layer_sources(value: Any) -> dict[str, AddLayer]:
    """``{layer digest: {"ref", "descriptor"}}`` of a prefetch_files request."""
    if not isinstance(value, dict):
        raise FormatError("prefetch_files: 'layers' must be an object")
    sources = {}
    for digest, where in value.items():
        if not isinstance(where, dict):
            raise FormatError("prefetch_files: each of 'layers' must be an object")
        ref, descriptor = where.get("ref"), where.get("descriptor")
        if not isinstance(ref, str) or not isinstance(descriptor, dict):
            raise FormatError("prefetch_files: a layer needs a string 'ref' and a 'descriptor'")
        sources[str(digest)] = AddLayer(ref=ref, descriptor=descriptor)
    return sources


def layer_files(value: Any, what: str) -> dict[str, list[str]]:
    """``{layer digest: [paths]}`` checked for shape."""
    if not isinstance(value, dict) or not all(
        isinstance(digest, str)
        and isinstance(paths, list)
        and all(isinstance(path, str) for path in paths)
        for digest, paths in value.items()
    ):
        raise FormatError(f"{what} needs an object of layer digests to lists of paths")
    return {digest: list(paths) for digest, paths in value.items()}


def layer_ranges(value: Any, what: str) -> LayerRanges:
    """``{layer digest: {path: [[offset, length]]}}`` checked for shape."""
    problem = f"{what} needs an object of layer digests to objects of paths to ranges"
    if not isinstance(value, dict):
        raise FormatError(problem)
    checked: LayerRanges = {}
    for digest, by_path in value.items():
        if not isinstance(by_path, dict):
            raise FormatError(problem)
        checked[digest] = {
            path: decode_offset_ranges(ranges, problem) for path, ranges in by_path.items()
        }
    return checked


def ok(**fields: Any) -> dict[str, Any]:
    return {"ok": True, **fields}


def failure(error: str) -> dict[str, Any]:
    return {"ok": False, "error": " ".join(error.split())}


def layer_added(reply: dict[str, Any]) -> LayerAdded:
    path, mode, digest = reply.get("path"), reply.get("mode"), reply.get("digest")
    modes = ("lazy", "local", "unpacked")
    if not isinstance(path, str) or mode not in modes or not isinstance(digest, str):
        raise FormatError(f"malformed add_layer reply {reply!r}")
    return LayerAdded(path=path, mode=mode, digest=digest)


class LineReader:
    """Lines from a trio stream, each at most MAX_LINE bytes."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = bytearray()

    async def next_line(self) -> bytes | None:
        """The next line without its newline; None at a clean end of stream."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                return line
            if len(self._buffer) > MAX_LINE:
                raise FormatError(f"control line longer than {MAX_LINE} bytes")
            data = await self._stream.receive_some(65536)
            if not data:
                if self._buffer:
                    raise FormatError("control stream ended inside a line")
                return None
            self._buffer += data
