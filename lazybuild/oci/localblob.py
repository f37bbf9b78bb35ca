"""Blobs of an OCI layout directory read like a registry's, for lazy layers whose bytes
are on this machine (a build cache exported with ``type=local``, which a CI cache action
saves and restores).

A layer's source is then ``oci-layout:<directory>@<manifest digest>`` instead of a
registry reference. As with a registry, the bytes are not trusted: every chunk read is
verified against the TOC, whose digest the manifest's descriptor names.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import trio

from lazybuild.errors import FormatError, NotFoundError
from lazybuild.oci.digest import validate_digest
from lazybuild.registry.blob import RangeSink

__all__ = ["LAYOUT_SOURCE_PREFIX", "LocalBlob", "layout_of", "layout_source"]

LAYOUT_SOURCE_PREFIX = "oci-layout:"


def layout_source(root: Path, manifest_digest: str) -> str:
    return f"{LAYOUT_SOURCE_PREFIX}{os.path.abspath(root)}@{validate_digest(manifest_digest)}"


def layout_of(source: str) -> Path | None:
    """The layout directory a source names; None for a registry reference."""
    if not source.startswith(LAYOUT_SOURCE_PREFIX):
        return None
    root, at, digest = source.removeprefix(LAYOUT_SOURCE_PREFIX).rpartition("@")
    if not at or not root.startswith("/"):
        raise FormatError(f"layout source {source!r:.200} is not oci-layout:/DIR@DIGEST")
    validate_digest(digest, "layout source")
    return Path(root)


class LocalBlob:
    """A blob file of a layout, read in worker threads (unverified, like RemoteBlob)."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        try:
            actual = path.stat().st_size
        except FileNotFoundError:
            raise NotFoundError(f"blob {path} is missing") from None
        if actual != size:
            raise FormatError(f"blob {path} is {actual} bytes, its descriptor says {size}")

    async def read_at(self, offset: int, length: int) -> bytes:
        got: list[bytes] = []
        await self.stream_ranges([(offset, length)], lambda _, data: got.append(data))
        return got[0]

    async def stream_ranges(self, ranges: Sequence[tuple[int, int]], arrived: RangeSink) -> None:
        for offset, length in ranges:
            if offset < 0 or length < 0 or offset + length > self.size:
                raise ValueError(f"range ({offset}, {length}) is outside a {self.size}-byte blob")

        def read() -> list[bytes]:
            with self.path.open("rb") as blob:
                pieces = []
                for offset, length in ranges:
                    blob.seek(offset)
                    pieces.append(blob.read(length))
            return pieces

        for index, data in enumerate(await trio.to_thread.run_sync(read)):
            if len(data) != ranges[index][1]:
                raise FormatError(f"blob {self.path} ended early")
            arrived(index, data)
