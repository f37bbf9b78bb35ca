"""``ADD <url>``: a file downloaded over HTTP(S), as a layer holding just that file.

The cache key is the content: with ``--checksum`` it is known before anything is
downloaded; otherwise the file is downloaded once to learn it (BuildKit does the same)
and the download is kept for the step itself.
"""

from __future__ import annotations

import email.utils
import hashlib
import os
import tempfile
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager, aclosing
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

from lazybuild.errors import LazybuildError
from lazybuild.graph.ops import HttpSource
from lazybuild.registry.session import body_pieces
from lazybuild.solver import CacheMap, Job, Result
from lazybuild.worker.layers import Snapshot
from lazybuild.worker.opbase import op_digest, slot
from lazybuild.worker.resources import WorkerResources

_TIMEOUT = httpx.Timeout(30.0, read=300.0)
_PIECE = 1 << 20


class DownloadError(LazybuildError):
    """An ``ADD`` URL could not be downloaded, or its content is not what was promised."""


@dataclass(frozen=True)
class _Download:
    path: Path
    digest: str
    mtime: float | None


class HttpSourceOp:
    def __init__(self, op: HttpSource, resources: WorkerResources) -> None:
        self._op = op
        self._resources = resources
        self._download: _Download | None = None
        self._lock = trio.Lock()

    async def cache_map(self, job: Job, index: int) -> CacheMap:
        digest = self._op.checksum or (await self._downloaded()).digest
        return CacheMap(digest=op_digest(self._op, digest))

    def acquire(self) -> AbstractAsyncContextManager[None]:
        return slot(self._resources.file_slots)

    async def exec(self, job: Job, inputs: Sequence[Result]) -> list[Result]:
        download = await self._downloaded()
        op = self._op
        store = self._resources.store
        name = op.filename or (op.url.rstrip("/").rsplit("/", 1)[-1] or "index.html")
        with store.staging() as area:
            target = area.upper / name
            os.replace(download.path, target)
            self._download = None
            os.chown(target, op.uid or 0, op.gid or 0)
            # Docker gives downloaded files 0600 unless asked otherwise.
            os.chmod(target, op.mode if op.mode is not None else 0o600)
            if download.mtime is not None:
                os.utime(target, (download.mtime, download.mtime))
            layer = store.commit(area)
        return [Snapshot((layer,))]

    async def _downloaded(self) -> _Download:
        async with self._lock:
            if self._download is None or not self._download.path.exists():
                self._download = await self._fetch()
            return self._download

    async def _fetch(self) -> _Download:
        url = self._op.url
        descriptor, name = tempfile.mkstemp(
            dir=self._resources.store.staging_dir, prefix=f"{os.getpid()}-", suffix=".add"
        )
        path = Path(name)
        hasher = hashlib.sha256()
        try:
            with os.fdopen(descriptor, "wb") as file:
                async with (
                    httpx.AsyncClient(follow_redirects=True, timeout=_TIMEOUT) as client,
                    client.stream("GET", url) as response,
                ):
                    if response.status_code != 200:
                        raise DownloadError(f"ADD {url}: HTTP {response.status_code}")
                    modified = response.headers.get("last-modified")
                    async with aclosing(body_pieces(response, _PIECE)) as pieces:
                        async for piece in pieces:
                            hasher.update(piece)
                            await trio.to_thread.run_sync(file.write, piece)
        except httpx.HTTPError as error:
            path.unlink(missing_ok=True)
            raise DownloadError(f"ADD {url}: {error}") from None
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        digest = "sha256:" + hasher.hexdigest()
        if self._op.checksum is not None and digest != self._op.checksum:
            path.unlink(missing_ok=True)
            raise DownloadError(
                f"ADD {url}: digest mismatch: expected {self._op.checksum}, got {digest}"
            )
        return _Download(path, digest, _http_date(modified))


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
