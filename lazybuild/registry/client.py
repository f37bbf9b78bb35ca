"""The registry client lazybuild's commands use: manifests, images, blobs, pushes.

Everything fetched by digest is verified before it is returned. The one exception
is ``RemoteBlob`` range reads, which cannot be checked against a whole-blob digest
and are verified one level up (eStargz chunk digests).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from lazybuild.errors import DigestMismatchError, FormatError
from lazybuild.oci import mediatypes
from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.digest import sha256_digest, validate_digest, verify_digest
from lazybuild.oci.manifest import Index, Manifest, load_config, parse_document
from lazybuild.oci.platform import Platform
from lazybuild.progress import transfer as progress
from lazybuild.registry.auth import pull_scope
from lazybuild.registry.blob import BlobEndpoint, RangeModes, RemoteBlob, iter_verified_blob
from lazybuild.registry.credentials import DockerCredentialStore
from lazybuild.registry.push import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MONOLITHIC_LIMIT,
    BlobPusher,
    has_blob,
    push_manifest,
)
from lazybuild.registry.reference import Reference
from lazybuild.registry.retry import RetryPolicy
from lazybuild.registry.session import RegistrySession, body_pieces
from lazybuild.registry.tlscontext import shared_ssl_context

# Content types that say nothing about which manifest schema a body is.
_GENERIC_CONTENT_TYPES = frozenset({"", "application/json", "text/plain"})
# A manifest larger than this is not a manifest (Distribution's own limit is 4 MiB).
MAX_MANIFEST_SIZE = 4 * 1024 * 1024
# An image config is JSON describing the image; a few MiB is more than any real one.
MAX_CONFIG_SIZE = 8 * 1024 * 1024
# ``get_blob`` holds a blob in memory: larger ones are streamed or downloaded instead.
MAX_BLOB_IN_MEMORY = 64 * 1024 * 1024


@dataclass(frozen=True)
class FetchedManifest:
    digest: str
    media_type: str
    data: bytes
    document: Manifest | Index


@dataclass(frozen=True)
class ResolvedManifest:
    ref: Reference  # pinned to manifest_digest
    index: FetchedManifest | None  # the index the manifest was chosen from, if any
    manifest_digest: str
    manifest: Manifest
    manifest_bytes: bytes


@dataclass(frozen=True)
class ResolvedImage(ResolvedManifest):
    config: dict[str, Any]
    config_bytes: bytes


class RegistryClient:
    """An async (trio) registry client; use ``async with RegistryClient() as client``."""

    def __init__(
        self,
        *,
        insecure_registries: Iterable[str] = (),
        docker_config: Path | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_retries: int = 5,
        timeout: float = 30.0,
        monolithic_upload_limit: int = DEFAULT_MONOLITHIC_LIMIT,
        upload_chunk_size: int = DEFAULT_CHUNK_SIZE,
        single_range_registries: Iterable[str] = (),
    ) -> None:
        self._http = httpx.AsyncClient(
            transport=transport,
            verify=shared_ssl_context(),
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            # Redirects are followed by hand: credentials must not follow them.
            follow_redirects=False,
        )
        self.credentials = DockerCredentialStore(docker_config)
        self.retry_policy = RetryPolicy(
            max_retries=max_retries, connect_error_retries=min(2, max_retries)
        )
        self._session = RegistrySession(
            self._http, self.credentials, self.retry_policy, insecure_registries
        )
        self._range_modes = RangeModes(single_range_registries)
        self._pusher = BlobPusher(self._session, monolithic_upload_limit, upload_chunk_size)

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def get_manifest(self, ref: Reference) -> FetchedManifest:
        """The manifest or index ``ref`` names, verified against ``ref.digest`` (if pinned)
        and against the registry's Docker-Content-Digest."""
        response = await self._session.request(
            "GET",
            ref,
            f"/v2/{ref.repository}/manifests/{ref.manifest_key}",
            scopes=[pull_scope(ref.repository)],
            expect={200},
            what=f"GET manifest {ref}",
            headers={"Accept": mediatypes.MANIFEST_ACCEPT},
        )
        try:
            data = await _read_limited(response, MAX_MANIFEST_SIZE, f"manifest {ref}")
        finally:
            await response.aclose()
        where = f"manifest {ref}"
        if ref.digest is not None:
            verify_digest(data, ref.digest, where)
        announced = response.headers.get("docker-content-digest")
        if announced:
            verify_digest(data, validate_digest(announced, f"{where} Docker-Content-Digest"), where)
        digest = ref.digest or announced or sha256_digest(data)
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in _GENERIC_CONTENT_TYPES and not (
            mediatypes.is_manifest(content_type) or mediatypes.is_index(content_type)
        ):
            raise FormatError(f"{where} has unsupported media type {content_type!r}")
        document = parse_document(data, content_type, where)
        return FetchedManifest(digest, document.media_type, data, document)

    async def resolve_image(self, ref: Reference, platform: Platform) -> ResolvedImage:
        """The image ``ref`` names for ``platform``: manifest (chosen from an index if
        needed) and config, all verified."""
        resolved = await self.resolve_manifest(ref, platform)
        config = resolved.manifest.config
        config_bytes = await self.get_blob(resolved.ref, config, max_size=MAX_CONFIG_SIZE)
        return ResolvedImage(
            ref=resolved.ref,
            index=resolved.index,
            manifest_digest=resolved.manifest_digest,
            manifest=resolved.manifest,
            manifest_bytes=resolved.manifest_bytes,
            config=load_config(config_bytes, f"config {config.digest} of {resolved.ref}"),
            config_bytes=config_bytes,
        )

    async def resolve_manifest(self, ref: Reference, platform: Platform) -> ResolvedManifest:
        """The manifest ``ref`` names for ``platform`` (chosen from an index if needed),
        verified, and ``ref`` pinned to it; no config."""
        top = await self.get_manifest(ref)
        index: FetchedManifest | None = None
        fetched = top
        if isinstance(top.document, Index):
            index = top
            chosen = top.document.select(platform, str(ref))
            fetched = await self.get_manifest(ref.with_digest(chosen.digest))
            if len(fetched.data) != chosen.size:
                raise DigestMismatchError(
                    f"manifest {chosen.digest}: {len(fetched.data)} bytes, index says {chosen.size}"
                )
        manifest = fetched.document
        pinned = ref.with_digest(fetched.digest)
        if not isinstance(manifest, Manifest):
            raise FormatError(f"manifest {pinned} is a nested index")
        return ResolvedManifest(
            ref=pinned,
            index=index,
            manifest_digest=fetched.digest,
            manifest=manifest,
            manifest_bytes=fetched.data,
        )

    async def get_blob(
        self, ref: Reference, descriptor: Descriptor, *, max_size: int = MAX_BLOB_IN_MEMORY
    ) -> bytes:
        """A whole (small) blob, verified against its descriptor; FormatError without a
        request when the descriptor names more than ``max_size`` bytes (the download
        itself never takes more bytes than the descriptor names)."""
        if descriptor.size > max_size:
            raise FormatError(
                f"blob {descriptor.digest} of {ref.name}: {descriptor.size} bytes is larger "
                f"than the {max_size} bytes allowed for a {_kind_of(descriptor)}"
            )
        pieces = [piece async for piece in self.stream_blob(ref, descriptor)]
        return b"".join(pieces)

    async def stream_blob(
        self, ref: Reference, descriptor: Descriptor
    ) -> AsyncGenerator[bytes, None]:
        """The whole blob in pieces. The digest is checked after the last piece, which raises
        DigestMismatchError if it is wrong: callers must not commit data before the end.

        An interrupted download resumes with a Range request. Wrap the iterator in
        ``contextlib.aclosing`` when you may stop early, so the connection is released.
        """
        endpoint = BlobEndpoint(self._session, ref, descriptor.digest)
        # Shown on the command's transfer board, if it has one (None otherwise).
        transfer = progress.begin(descriptor.digest, descriptor.size, "downloading")
        verified = False
        try:
            retries = self.retry_policy.max_retries
            async for piece in iter_verified_blob(endpoint, descriptor, retries):
                if transfer is not None:
                    transfer.advance(len(piece))
                yield piece
            verified = True
        finally:
            if transfer is not None:
                transfer.end(ok=verified)

    def open_blob(self, ref: Reference, descriptor: Descriptor) -> RemoteBlob:
        """Random access to a blob for lazy reads (no request until the first read)."""
        endpoint = BlobEndpoint(self._session, ref, descriptor.digest)
        return RemoteBlob(endpoint, descriptor.size, self._range_modes)

    async def has_blob(self, ref: Reference, digest: str) -> bool:
        return await has_blob(self._session, ref, validate_digest(digest))

    async def push_blob(
        self,
        ref: Reference,
        descriptor: Descriptor,
        source: Path | bytes,
        mount_from: Sequence[Reference] = (),
    ) -> str:
        """Make the blob exist in ``ref``'s repository: "exists", "mounted" or "uploaded"."""
        return await self._pusher.push(ref, descriptor, source, mount_from)

    async def mount_blob(
        self, ref: Reference, digest: str, mount_from: Sequence[Reference]
    ) -> bool:
        """Cross-repository mount only (no upload); True when the registry mounted it."""
        return await self._pusher.mount(ref, validate_digest(digest), mount_from)

    async def push_manifest(self, ref: Reference, data: bytes, media_type: str) -> str:
        """PUT a manifest by ``ref``'s tag (or digest); returns the manifest digest."""
        return await push_manifest(self._session, ref, data, media_type)


def _kind_of(descriptor: Descriptor) -> str:
    return "config" if "config" in descriptor.media_type else "blob read into memory"


async def _read_limited(response: httpx.Response, limit: int, what: str) -> bytes:
    chunks: list[bytes] = []
    total = 0
    async with aclosing(body_pieces(response)) as pieces:
        async for chunk in pieces:
            total += len(chunk)
            if total > limit:
                raise FormatError(f"{what} is larger than {limit} bytes")
            chunks.append(chunk)
    return b"".join(chunks)
