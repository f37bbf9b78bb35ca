"""Pushing blobs and manifests (the Distribution upload protocol).

A blob is pushed in the cheapest way the registry allows: not at all when it is
already there, by cross-repository mount when a candidate repository on the same
registry has it, and otherwise by upload: one PUT for small blobs, a series of
PATCH requests with ``Content-Range`` for large ones (so memory stays bounded).

Upload data is never sent twice into one upload: a PATCH or committing PUT that
fails is not retried (the registry may have taken it), the upload starts over
instead, up to ``UPLOAD_ATTEMPTS`` times. Before starting over, and before giving
up, the blob is looked for: a commit whose answer was lost has landed all the same.
Upload locations may name another host (a storage backend); they get no
credentials (see ``session``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from pathlib import Path

import httpx
import trio

from lazybuild.errors import AuthError, DigestMismatchError, RegistryError
from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.digest import new_hasher, sha256_digest, verify_digest
from lazybuild.progress import transfer as progress
from lazybuild.registry.auth import pull_scope, push_scope
from lazybuild.registry.reference import Reference
from lazybuild.registry.retry import Retry
from lazybuild.registry.session import RegistrySession

log = logging.getLogger(__name__)

DEFAULT_MONOLITHIC_LIMIT = 32 * 1024 * 1024
DEFAULT_CHUNK_SIZE = 16 * 1024 * 1024
_OCTET_STREAM = {"Content-Type": "application/octet-stream"}
# A blob upload that fails (not for want of rights) is started over this many times in all.
UPLOAD_ATTEMPTS = 3


async def has_blob(session: RegistrySession, ref: Reference, digest: str) -> bool:
    """Whether ``ref``'s repository has the blob (and, when the registry says which
    digest it found, that it is this one)."""
    response = await session.request(
        "HEAD",
        ref,
        f"/v2/{ref.repository}/blobs/{digest}",
        scopes=[pull_scope(ref.repository)],
        # A redirect means the registry has it and serves it from elsewhere.
        expect={200, 404, 301, 302, 303, 307, 308},
        what=f"HEAD blob {digest}",
    )
    await response.aclose()
    if response.status_code == 404:
        return False
    _check_registry_digest(response, digest, f"blob {digest} in {ref.name}")
    return True


class BlobPusher:
    def __init__(
        self,
        session: RegistrySession,
        monolithic_limit: int = DEFAULT_MONOLITHIC_LIMIT,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        self.session = session
        self.monolithic_limit = monolithic_limit
        self.chunk_size = chunk_size

    async def push(
        self,
        ref: Reference,
        descriptor: Descriptor,
        source: Path | bytes,
        mount_from: Sequence[Reference] = (),
    ) -> str:
        """Make ``descriptor``'s blob exist in ``ref``'s repository.

        Returns "exists", "mounted" or "uploaded".
        """
        source_size = len(source) if isinstance(source, bytes) else source.stat().st_size
        if source_size != descriptor.size:
            raise DigestMismatchError(
                f"blob {descriptor.digest}: the source has {source_size} bytes, "
                f"the descriptor says {descriptor.size}"
            )
        if await has_blob(self.session, ref, descriptor.digest):
            return "exists"
        whole: bytes | None = None
        if descriptor.size <= self.monolithic_limit:
            whole = source if isinstance(source, bytes) else await trio.Path(source).read_bytes()
            # Checked before any upload starts: a wrong blob must fail here, not at the
            # registry, and must not leave an upload session behind.
            verify_digest(whole, descriptor.digest, f"blob to push {descriptor.digest}")
        upload_url: httpx.URL | None = None
        for candidate in mount_from:
            if candidate.registry != ref.registry or candidate.repository == ref.repository:
                continue
            mounted, upload_url = await self._try_mount(ref, descriptor.digest, candidate)
            if mounted:
                return "mounted"
        # Shown on the command's transfer board, if it has one (a no-op otherwise).
        transfer = progress.begin(descriptor.digest, descriptor.size, "pushing")
        try:
            outcome = await self._upload(
                ref, descriptor, source, whole=whole, upload_url=upload_url, transfer=transfer
            )
        except BaseException:
            if transfer is not None:
                transfer.end(ok=False)
            raise
        if transfer is not None:
            transfer.seek(descriptor.size)
            transfer.end()
        return outcome

    async def _upload(
        self,
        ref: Reference,
        descriptor: Descriptor,
        source: Path | bytes,
        *,
        whole: bytes | None,
        upload_url: httpx.URL | None,
        transfer: progress.Transfer | None,
    ) -> str:
        """Upload, started over on failure (see the module docstring); "uploaded"."""
        attempt = 1
        while True:
            try:
                if upload_url is None:
                    upload_url = await self._start_upload(ref)
                if whole is not None:
                    await self._finish(ref, descriptor, upload_url, whole, transfer)
                else:
                    await self._upload_chunked(ref, descriptor, source, upload_url, transfer)
                return "uploaded"
            except AuthError:
                raise
            except RegistryError as exc:
                # A commit whose answer was lost (or a retried one the registry no longer
                # knows the upload of) may have landed: then the push is done.
                if await self._landed(ref, descriptor.digest):
                    log.info("blob %s: %s; it is in the registry all the same", ref, exc)
                    return "uploaded"
                if attempt >= UPLOAD_ATTEMPTS:
                    raise
                log.info("upload of blob %s failed (%s); starting it over", descriptor.digest, exc)
                await trio.sleep(self.session.policy.backoff(attempt - 1))
                attempt += 1
                upload_url = None

    async def _landed(self, ref: Reference, digest: str) -> bool:
        """Whether the blob is in the repository now (False when that cannot be told)."""
        try:
            return await has_blob(self.session, ref, digest)
        except RegistryError as exc:
            log.debug("cannot tell whether blob %s landed: %s", digest, exc)
            return False

    async def mount(self, ref: Reference, digest: str, mount_from: Sequence[Reference]) -> bool:
        """Try only cross-repository mounts, never an upload: True when one worked.

        For callers that would have to download the blob first to upload it.
        """
        for candidate in mount_from:
            if candidate.registry != ref.registry or candidate.repository == ref.repository:
                continue
            mounted, upload_url = await self._try_mount(ref, digest, candidate)
            if mounted:
                return True
            if upload_url is not None:
                await self._cancel(ref, upload_url)
        return False

    async def _try_mount(
        self, ref: Reference, digest: str, candidate: Reference
    ) -> tuple[bool, httpx.URL | None]:
        """Ask for a cross-repository mount; a 202 instead opens an upload we can use."""
        url = self.session.url(ref, f"/v2/{ref.repository}/blobs/uploads/").copy_merge_params(
            {"mount": digest, "from": candidate.repository}
        )
        response = await self.session.request(
            "POST",
            ref,
            url,
            scopes=[push_scope(ref.repository), pull_scope(candidate.repository)],
            expect={201, 202},
            what=f"mount blob {digest} from {candidate.repository}",
            retry=Retry.UNANSWERED,
        )
        await response.aclose()
        if response.status_code == 201:
            _check_registry_digest(response, digest, f"mounted blob {digest}")
            return True, None
        log.debug("registry %s did not mount %s from %s", ref.registry, digest, candidate.name)
        return False, self._location(ref, response)

    async def _start_upload(self, ref: Reference) -> httpx.URL:
        response = await self.session.request(
            "POST",
            ref,
            f"/v2/{ref.repository}/blobs/uploads/",
            scopes=[push_scope(ref.repository)],
            expect={202},
            what="start blob upload",
            retry=Retry.UNANSWERED,
        )
        await response.aclose()
        return self._location(ref, response)

    async def _upload_chunked(
        self,
        ref: Reference,
        descriptor: Descriptor,
        source: Path | bytes,
        url: httpx.URL,
        transfer: progress.Transfer | None = None,
    ) -> None:
        hasher = new_hasher(descriptor.digest)
        offset = 0
        async with aclosing(_chunks(source, self.chunk_size)) as chunks:
            async for chunk in chunks:
                hasher.update(chunk)
                end = offset + len(chunk) - 1
                response = await self.session.request(
                    "PATCH",
                    ref,
                    url,
                    scopes=[push_scope(ref.repository)],
                    expect={202},
                    what=f"upload blob {descriptor.digest} bytes {offset}-{end}",
                    # Distribution's Content-Range for uploads has no "bytes " unit.
                    headers={
                        **_OCTET_STREAM,
                        "Content-Range": f"{offset}-{end}",
                        **_length(chunk, transfer),
                    },
                    content=_body(chunk, transfer, offset),
                    retry=Retry.NEVER,  # the upload starts over instead
                )
                await response.aclose()
                _check_upload_progress(response, end, descriptor.digest)
                url = self._location(ref, response)
                offset = end + 1
        actual = f"{descriptor.digest.split(':', 1)[0]}:{hasher.hexdigest()}"
        if actual != descriptor.digest:
            await self._cancel(ref, url)
            raise DigestMismatchError(f"blob to push {descriptor.digest}: content is {actual}")
        await self._finish(ref, descriptor, url, b"")

    async def _finish(
        self,
        ref: Reference,
        descriptor: Descriptor,
        url: httpx.URL,
        data: bytes,
        transfer: progress.Transfer | None = None,
    ) -> None:
        response = await self.session.request(
            "PUT",
            ref,
            url.copy_merge_params({"digest": descriptor.digest}),
            scopes=[push_scope(ref.repository)],
            expect={201},
            what=f"upload blob {descriptor.digest}",
            headers={**_OCTET_STREAM, **_length(data, transfer)},
            content=_body(data, transfer, 0),
            retry=Retry.NEVER,  # see push: the blob is looked for, the upload started over
        )
        await response.aclose()
        _check_registry_digest(response, descriptor.digest, f"uploaded blob {descriptor.digest}")

    async def _cancel(self, ref: Reference, url: httpx.URL) -> None:
        try:
            response = await self.session.request(
                "DELETE",
                ref,
                url,
                scopes=[push_scope(ref.repository)],
                expect={200, 202, 204, 404},
                what="cancel upload",
            )
            await response.aclose()
        except RegistryError as exc:  # best effort: the registry purges stale uploads itself
            log.debug("could not cancel upload %s: %s", url, exc)

    def _location(self, ref: Reference, response: httpx.Response) -> httpx.URL:
        location = response.headers.get("location")
        if not location:
            raise RegistryError(f"registry {ref.registry}: upload answer without a Location")
        # Relative locations are relative to the request; absolute ones keep their state query.
        return response.url.join(location)


async def push_manifest(
    session: RegistrySession, ref: Reference, data: bytes, media_type: str
) -> str:
    """PUT a manifest by tag (or by digest when there is no tag); returns its digest."""
    digest = sha256_digest(data)
    if ref.digest is not None:
        verify_digest(data, ref.digest, f"manifest to push as {ref}")
        digest = ref.digest
    key = ref.tag if ref.tag is not None else digest
    response = await session.request(
        "PUT",
        ref,
        f"/v2/{ref.repository}/manifests/{key}",
        scopes=[push_scope(ref.repository)],
        expect={201},
        what=f"PUT manifest {ref}",
        headers={"Content-Type": media_type},
        content=data,
    )
    await response.aclose()
    _check_registry_digest(response, digest, f"pushed manifest {ref}")
    return digest


def _check_registry_digest(response: httpx.Response, digest: str, what: str) -> None:
    announced = response.headers.get("docker-content-digest")
    # Only comparable when the registry hashed with the same algorithm.
    same_algorithm = announced is not None and _algorithm(announced) == _algorithm(digest)
    if announced and same_algorithm and announced != digest:
        raise DigestMismatchError(f"{what}: the registry stored it as {announced}, not {digest}")


def _algorithm(digest: str) -> str:
    return digest.partition(":")[0]


def _check_upload_progress(response: httpx.Response, end: int, digest: str) -> None:
    # Range: 0-<last byte received>; anything else means bytes were lost or duplicated.
    received = response.headers.get("range")
    if received and received.strip().removeprefix("bytes=") != f"0-{end}":
        raise RegistryError(
            f"upload of blob {digest}: the registry has bytes {received}, expected 0-{end}"
        )


# Slices a reported request body is sent in: the bar moves at least this often.
_REPORT_SLICE = 256 * 1024


class _ReportedBody:
    """A request body that tells ``transfer`` how far it has been sent (bytes handed to
    httpx, so the socket's buffer ahead). Iterable again: a request sent again (a retry,
    a 401 answered) sends it from its start, and the figure goes back with it."""

    def __init__(self, data: bytes, transfer: progress.Transfer, offset: int) -> None:
        self._data = data
        self._transfer = transfer
        self._offset = offset  # of the body in the blob

    def __aiter__(self) -> _ReportedSlices:
        return _ReportedSlices(self._data, self._transfer, self._offset)


class _ReportedSlices:
    """One pass over a ``_ReportedBody`` (an iterator, not an async generator: nothing
    to close when httpx stops early)."""

    def __init__(self, data: bytes, transfer: progress.Transfer, offset: int) -> None:
        self._view = memoryview(data)
        self._transfer = transfer
        self._offset = offset
        self._sent = 0
        transfer.seek(offset)

    def __aiter__(self) -> _ReportedSlices:
        return self

    async def __anext__(self) -> bytes:
        # Asked for the next slice: the one before is in httpx's hands.
        self._transfer.seek(self._offset + self._sent)
        if self._sent >= len(self._view):
            raise StopAsyncIteration
        piece = bytes(self._view[self._sent : self._sent + _REPORT_SLICE])
        self._sent += len(piece)
        return piece


def _body(data: bytes, transfer: progress.Transfer | None, offset: int) -> bytes | _ReportedBody:
    # Unreported (no board, or nothing to send): the bytes as they are, as before.
    if transfer is None or not data:
        return data
    return _ReportedBody(data, transfer, offset)


def _length(data: bytes, transfer: progress.Transfer | None) -> dict[str, str]:
    # A streamed body is sent chunked unless its length is given; registries want it.
    return {"Content-Length": str(len(data))} if transfer is not None and data else {}


async def _chunks(source: Path | bytes, chunk_size: int) -> AsyncGenerator[bytes, None]:
    if isinstance(source, bytes):
        for start in range(0, len(source), chunk_size):
            yield source[start : start + chunk_size]
        return
    async with await trio.open_file(source, "rb") as file:
        while chunk := await file.read(chunk_size):
            yield chunk
