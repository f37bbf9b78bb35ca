"""Checking fetched chunks: compressed bytes in, the verified chunk out, or the failure.

Runs in worker threads. The TOC is verified before any chunk is read, so bytes that do
not inflate to the chunk it describes (bad gzip, wrong length, wrong digest) are all
the same failure, wrong bytes, and never reach a reader or the cache.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from lazybuild.errors import DigestMismatchError, FormatError, LazybuildError
from lazybuild.estargz.reader import decompress_chunk
from lazybuild.lazyfs.chunk_site import ChunkSite

log = logging.getLogger(__name__)


def verify_group(
    where: str, group: Sequence[tuple[ChunkSite, bytes]]
) -> tuple[dict[str, bytes], dict[str, LazybuildError]]:
    """The verified contents of ``group`` and its failures, by digest."""
    verified: dict[str, bytes] = {}
    failed: dict[str, LazybuildError] = {}
    for site, compressed in group:
        try:
            verified[site.digest] = verify(where, site, compressed)
        except LazybuildError as exc:
            failed[site.digest] = exc
    return verified, failed


def verify(where: str, site: ChunkSite, compressed: bytes) -> bytes:
    """The chunk ``compressed`` inflates to, if it is the one the TOC describes."""
    where = f"{where}: file {site.file!r}"
    if not site.digest:
        raise FormatError(f"{where}: chunk {site.chunk.chunk_offset} has no chunkDigest")
    try:
        return decompress_chunk(compressed, site.chunk, where=where)
    except LazybuildError as exc:
        failure = DigestMismatchError(
            f"{exc} (file range {site.chunk.chunk_offset}+{site.chunk.size})"
        )
        log.error("%s", failure)
        raise failure from exc
