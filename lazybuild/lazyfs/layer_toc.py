"""Opening a remote eStargz layer's TOC, verified, with a local copy of verified TOCs.

A layer is only served lazily when its descriptor carries the ``toc.digest``
annotation: the TOC is checked against it before anything else happens, and
every chunk is later checked against the TOC. The verified TOC JSON is kept in
``<state>/tocs/sha256/<hex>.json``, so opening the layer again costs one 51-byte
footer read (which yields the TOC offset and proves the blob is reachable) and
no TOC bytes. A stored TOC is re-hashed when loaded, so a damaged copy is
ignored and fetched again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import trio

from lazybuild.errors import FormatError
from lazybuild.estargz.footer import FOOTER_SIZE, parse_footer
from lazybuild.estargz.gcpause import collector_paused
from lazybuild.estargz.hints import toc_offset_hint
from lazybuild.estargz.index import LayerIndex
from lazybuild.estargz.reader import parse_layer, read_toc_region, sha256_digest
from lazybuild.estargz.toc import decode_toc_json
from lazybuild.lazyfs.fetchtrace import TOC_LABEL, trace_fetch
from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.mediatypes import TOC_DIGEST_ANNOTATION
from lazybuild.registry.blob import RandomAccessBlob

log = logging.getLogger(__name__)


class TocStore:
    """Verified TOC JSON by TOC digest, and each blob's TOC offset by blob digest.
    Blocking I/O: call from a worker thread."""

    def __init__(self, root: Path) -> None:
        self._dir = root / "tocs" / "sha256"
        self._offsets = root / "tocs" / "offsets"

    def load_offset(self, blob_digest: str) -> int | None:
        """The TOC offset seen in this blob's footer before, if any. A wrong value can
        only make chunk verification fail (EIO), never serve wrong bytes."""
        try:
            return int(self._offset_path(blob_digest).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def save_offset(self, blob_digest: str, toc_offset: int) -> None:
        _write_atomic(self._offset_path(blob_digest), str(toc_offset).encode())

    def _offset_path(self, blob_digest: str) -> Path:
        return self._offsets / blob_digest.replace(":", "-")

    def _path(self, toc_digest: str) -> Path:
        algorithm, _, hex_digest = toc_digest.partition(":")
        if algorithm != "sha256" or len(hex_digest) != 64:
            raise FormatError(f"unsupported TOC digest {toc_digest!r}")
        return self._dir / f"{hex_digest}.json"

    def has(self, toc_digest: str) -> bool:
        return self._path(toc_digest).is_file()

    def load(self, toc_digest: str) -> bytes | None:
        try:
            data = self._path(toc_digest).read_bytes()
        except FileNotFoundError:
            return None
        return data if sha256_digest(data) == toc_digest else None

    def save(self, toc_digest: str, toc_json: bytes) -> None:
        _write_atomic(self._path(toc_digest), toc_json)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        temp.write_bytes(data)
        temp.rename(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def expected_toc_digest(descriptor: Descriptor, where: str) -> str:
    expected = descriptor.annotations.get(TOC_DIGEST_ANNOTATION)
    if not expected:
        raise FormatError(
            f"{where}: no {TOC_DIGEST_ANNOTATION} annotation, so its TOC cannot be verified "
            "(unpack the layer instead)"
        )
    return expected


@dataclass(frozen=True)
class OpenedIndex:
    index: LayerIndex
    bytes_fetched: int  # for the TOC: footer and TOC, or nothing when both were kept
    requests: int
    stored: bool = False  # the TOC was kept from an earlier open on this machine


async def open_index(
    blob: RandomAccessBlob, descriptor: Descriptor, tocs: TocStore | None, where: str
) -> OpenedIndex:
    """The verified index of the layer, and what fetching it cost."""
    expected = expected_toc_digest(descriptor, where)
    if blob.size < FOOTER_SIZE:
        raise FormatError(f"{where}: {blob.size} bytes is too small for an eStargz footer")
    requests = 0

    async def read_at(offset: int, length: int) -> bytes:
        nonlocal requests
        requests += 1
        return await blob.read_at(offset, length)

    stored = await trio.to_thread.run_sync(tocs.load, expected) if tocs else None
    if stored is not None and tocs is not None:
        fetched = 0
        toc_offset = await trio.to_thread.run_sync(tocs.load_offset, descriptor.digest)
        if toc_offset is None:
            try:
                footer = parse_footer(await read_at(blob.size - FOOTER_SIZE, FOOTER_SIZE))
            except FormatError as exc:
                raise FormatError(f"{where}: {exc}") from None
            toc_offset, fetched = footer.toc_offset, FOOTER_SIZE
        if not 0 <= toc_offset < blob.size - FOOTER_SIZE:
            raise FormatError(f"{where}: TOC offset {toc_offset} outside the blob")
        if fetched:
            await trio.to_thread.run_sync(_keep_offset, tocs, descriptor.digest, toc_offset, where)

        def index_from_stored() -> LayerIndex:
            with collector_paused():  # the entries are alive until the index is made
                return LayerIndex(decode_toc_json(stored), data_end=toc_offset, where=where)

        index = await trio.to_thread.run_sync(index_from_stored)
        return OpenedIndex(index, fetched, requests, stored=True)
    started = time.perf_counter()
    tail, tail_start = await read_toc_region(
        read_at, blob.size, toc_offset_hint=toc_offset_hint(descriptor), where=where
    )
    trace_fetch(where, started, (TOC_LABEL,), len(tail))

    def parse() -> LayerIndex:
        opened = parse_layer(tail, tail_start, blob.size, expected, where=where)
        if tocs is not None:
            try:
                tocs.save(opened.toc_digest, opened.toc_json)
            except OSError as exc:  # only the next open gets slower
                log.warning("%s: cannot keep its TOC: %s", where, exc)
            _keep_offset(tocs, descriptor.digest, opened.toc_offset, where)
        return opened.index

    index = await trio.to_thread.run_sync(parse)
    return OpenedIndex(index, len(tail), requests)


def _keep_offset(tocs: TocStore, blob_digest: str, toc_offset: int, where: str) -> None:
    try:
        tocs.save_offset(blob_digest, toc_offset)
    except OSError as exc:  # only the next open gets slower
        log.warning("%s: cannot keep its TOC offset: %s", where, exc)
