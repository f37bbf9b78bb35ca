"""Layers that cannot be served lazily (gzip, zstd, plain tar, eStargz without a TOC
digest) are downloaded whole and unpacked into an overlayfs lower directory.

``unpack_layer`` streams the blob (hashed on the way, see ``stream_blob``) through
decompression into a tar extractor running in a worker thread, inside a
``.partial-*`` directory; only a complete, digest-verified unpack is renamed to
``<dest_root>/<digest-hex>``. So a directory under its final name is always
complete and verified, and is reused as is. Until the digest matches, the bytes are
nobody's word: the extractor (``lazybuild.untar``) cannot touch anything outside the
partial directory whatever the tar says, and nothing reads that directory before it
is renamed. Concurrent calls for one digest in a process
wait on one lock; across processes the first rename wins and the loser discards
its copy.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import re
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import trio

from lazybuild.errors import DigestMismatchError, FormatError, NotFoundError
from lazybuild.estargz.layerformat import decompressed_stream
from lazybuild.estargz.toc import NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOC_TAR_NAME
from lazybuild.oci import mediatypes
from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.digest import new_hasher
from lazybuild.registry.client import RegistryClient
from lazybuild.registry.reference import Reference
from lazybuild.state.processes import ProcessId, owner_alive
from lazybuild.untar.extract import extract, layer_policy

_PARTIAL_PREFIX = ".partial-"
# eStargz's artefacts at a layer's root are not files of the image.
_LAYER_POLICY = layer_policy(frozenset({TOC_TAR_NAME, PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK}))
_PIPE_DEPTH = 16  # downloaded pieces buffered ahead of the extractor
_DRAIN_BLOCK = 1 << 20
_locks: dict[Path, trio.Lock] = {}


@dataclass(frozen=True)
class UnpackedLayer:
    path: Path
    digest: str
    size: int  # the blob's (compressed) size
    seconds: float
    reused: bool


def is_lazy_layer(descriptor: Descriptor) -> bool:
    """eStargz served lazily needs gzip and a TOC digest to verify the TOC against;
    every other layer is unpacked."""
    return (
        descriptor.media_type in mediatypes.GZIP_LAYERS
        and mediatypes.TOC_DIGEST_ANNOTATION in descriptor.annotations
    )


# Where a state dir keeps unpacked layers, by blob digest.
UNPACKED_DIR = "unpacked"


def unpacked_root(state_dir: Path) -> Path:
    return state_dir / UNPACKED_DIR


async def unpack_layer(
    client: RegistryClient, ref: Reference, descriptor: Descriptor, dest_root: Path
) -> UnpackedLayer:
    async def fill(partial: Path) -> None:
        await _download_and_extract(client, ref, descriptor, partial)

    return await _unpacked(descriptor, dest_root, fill)


async def unpack_verified_tar(tar: Path, descriptor: Descriptor, dest_root: Path) -> UnpackedLayer:
    """The layer ``descriptor`` names, unpacked from ``tar``: its blob decompressed, which
    the caller downloaded and verified against the digest already. A mount of the layer
    then finds it unpacked instead of downloading the blob a second time."""
    where = f"layer {descriptor.digest}"

    async def fill(partial: Path) -> None:
        await trio.to_thread.run_sync(extract_tar_file, tar, partial, where)

    return await _unpacked(descriptor, dest_root, fill)


async def unpack_blob_file(
    blob: Path, descriptor: Descriptor, dest_root: Path, what: str
) -> UnpackedLayer:
    """The layer ``descriptor`` names, unpacked from the blob file ``blob`` (an OCI
    layout's, ``what`` in messages): hashed as it is read, and kept only when its bytes
    are the descriptor's, as a downloaded layer is (the file is nobody's word either)."""

    async def fill(partial: Path) -> None:
        await trio.to_thread.run_sync(_extract_blob_file, blob, descriptor, partial, what)

    return await _unpacked(descriptor, dest_root, fill)


async def _unpacked(
    descriptor: Descriptor, dest_root: Path, fill: Callable[[Path], Awaitable[None]]
) -> UnpackedLayer:
    """``<dest_root>/<digest hex>``, made by ``fill`` in a partial directory unless it is
    there already (see the module docstring)."""
    started = time.perf_counter()
    algorithm, _, hex_digest = descriptor.digest.partition(":")
    if not re.fullmatch(r"[a-z0-9]+", algorithm) or not re.fullmatch(r"[0-9a-f]+", hex_digest):
        raise FormatError(f"layer digest {descriptor.digest!r} is not usable as a directory name")
    final = dest_root / hex_digest
    lock = _locks.setdefault(final, trio.Lock())
    async with lock:
        if not await trio.to_thread.run_sync(final.is_dir):
            partial = await trio.to_thread.run_sync(_new_partial_dir, dest_root, hex_digest)
            try:
                await fill(partial)
                await trio.to_thread.run_sync(_publish, partial, final)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(_remove_tree, partial)
                raise
            reused = False
        else:
            reused = True
    return UnpackedLayer(
        final, descriptor.digest, descriptor.size, time.perf_counter() - started, reused
    )


async def _download_and_extract(
    client: RegistryClient, ref: Reference, descriptor: Descriptor, partial: Path
) -> None:
    where = f"layer {descriptor.digest}"
    send, receive = trio.open_memory_channel[bytes](_PIPE_DEPTH)
    download_error: list[Exception] = []

    async def download() -> None:
        async with send:
            try:
                # stream_blob is an async generator: close it so the connection is released.
                async with aclosing(client.stream_blob(ref, descriptor)) as pieces:
                    async for piece in pieces:
                        await send.send(piece)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the extractor gave up; its error is the one to report
            except Exception as exc:
                download_error.append(exc)

    extract_error: list[Exception] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(download)
        try:
            await trio.to_thread.run_sync(_extract_from_channel, receive, partial, where)
        except Exception as exc:
            extract_error.append(exc)
        finally:
            await receive.aclose()
    # A digest or transfer failure explains any extraction error that came with it.
    for error in (*download_error, *extract_error):
        raise error


def _extract_from_channel(
    receive: trio.MemoryReceiveChannel[bytes], partial: Path, where: str
) -> None:
    """(worker thread)"""
    stream = decompressed_stream(io.BufferedReader(_ChannelReader(receive), _DRAIN_BLOCK))
    extract_layer_stream(stream, partial, where)
    # Read to the end so the whole blob passes through the digest check.
    while stream.read(_DRAIN_BLOCK):
        pass


def _extract_blob_file(blob: Path, descriptor: Descriptor, partial: Path, what: str) -> None:
    """(worker thread) A blob file decompressed and extracted into ``partial``, all of it
    hashed; a mismatch explains any extraction error that came with it."""
    hasher = new_hasher(descriptor.digest)
    failure: Exception | None = None
    try:
        opened = blob.open("rb")
    except FileNotFoundError:
        raise NotFoundError(f"{what} is missing") from None
    with opened as file:
        size = os.fstat(file.fileno()).st_size
        if size != descriptor.size:
            raise FormatError(f"{what} is {size} bytes, its descriptor says {descriptor.size}")
        raw = io.BufferedReader(_HashingReader(file, hasher), _DRAIN_BLOCK)
        try:
            _extract_all(decompressed_stream(raw), partial, f"layer {descriptor.digest}")
        except Exception as exc:
            failure = exc
        while raw.read(_DRAIN_BLOCK):  # a trailer, or what did not decompress
            pass
    actual = f"{descriptor.digest.partition(':')[0]}:{hasher.hexdigest()}"
    if actual != descriptor.digest:
        raise DigestMismatchError(f"{what} is corrupt (hashes to {actual})")
    if failure is not None:
        raise failure


def _extract_all(stream: BinaryIO, partial: Path, where: str) -> None:
    extract_layer_stream(stream, partial, where)
    while stream.read(_DRAIN_BLOCK):
        pass


class _HashingReader(io.RawIOBase):
    """A file's bytes, hashed as they are read (for a worker thread)."""

    def __init__(self, file: BinaryIO, hasher: hashlib._Hash) -> None:
        self._file = file
        self._hasher = hasher

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._file.read(len(target))
        self._hasher.update(data)
        target[: len(data)] = data
        return len(data)


def extract_tar_file(tar: Path, dest: Path, where: str) -> None:
    """(blocking) A layer's tar file, extracted in overlay form into ``dest``."""
    with tar.open("rb") as stream:
        extract_layer_stream(stream, dest, where)


def extract_layer_stream(stream: BinaryIO, partial: Path, where: str) -> None:
    """(worker thread) A layer's tar, extracted in overlay form (a stream that does not
    decompress is a ``FormatError`` too)."""
    extract(stream, partial, _LAYER_POLICY, f"{where}: cannot unpack")


class _ChannelReader(io.RawIOBase):
    """The pieces of a trio channel as a blocking byte stream (for a worker thread)."""

    def __init__(self, receive: trio.MemoryReceiveChannel[bytes]) -> None:
        self._receive = receive
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            try:
                self._pending = memoryview(trio.from_thread.run(self._receive.receive))
            except trio.EndOfChannel:
                return 0
        count = min(len(target), len(self._pending))
        target[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count


def _new_partial_dir(dest_root: Path, hex_digest: str) -> Path:
    dest_root.mkdir(parents=True, exist_ok=True)
    prefix = f"{_PARTIAL_PREFIX}{hex_digest}-"
    for leftover in dest_root.glob(prefix + "*"):
        # Named by its owner's pid and start time (older ones by the pid alone).
        if not owner_alive(leftover.name[len(prefix) :]):
            _remove_tree(leftover)  # a crashed unpack
    partial = dest_root / f"{prefix}{ProcessId.current().tag}-{secrets.token_hex(4)}"
    partial.mkdir(mode=0o755)
    return partial


def _publish(partial: Path, final: Path) -> None:
    try:
        partial.rename(final)
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not final.is_dir():
            raise
        _remove_tree(partial)  # another process finished the same layer first


def _remove_tree(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)
