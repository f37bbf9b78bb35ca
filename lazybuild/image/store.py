"""Where images come from and go to: a registry repository or an OCI layout directory.

``convert`` and ``inspect`` talk to these two protocols only, so every combination
(registry → layout, layout → registry, ...) takes the same code path. Everything a
source returns is verified against its digest; range reads are the exception and are
verified one level up, by eStargz chunk and TOC digests.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import trio

from lazybuild.errors import DigestMismatchError, UsageError
from lazybuild.oci import mediatypes
from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.digest import new_hasher, verify_digest
from lazybuild.oci.layout import OciLayout
from lazybuild.oci.manifest import Index, Manifest, parse_document
from lazybuild.registry.blob import RemoteBlob
from lazybuild.registry.client import RegistryClient
from lazybuild.registry.reference import Reference

_COPY_PIECE = 1 << 20


@dataclass(frozen=True)
class RootDocument:
    """The manifest or index a reference names, with the exact bytes its digest covers."""

    descriptor: Descriptor
    data: bytes
    document: Manifest | Index


class ImageSource(Protocol):
    description: str

    async def root(self) -> RootDocument: ...

    async def fetch(self, descriptor: Descriptor) -> bytes: ...

    async def download(self, descriptor: Descriptor, dest: Path) -> None: ...

    async def read_range(self, descriptor: Descriptor, offset: int, length: int) -> bytes: ...


class ImageTarget(Protocol):
    description: str

    async def has_blob(self, descriptor: Descriptor) -> bool: ...

    async def put_blob(self, descriptor: Descriptor, source: Path | bytes) -> str: ...

    async def mount_blob(self, descriptor: Descriptor) -> bool: ...

    async def put_manifest(self, descriptor: Descriptor, data: bytes, *, root: bool) -> None: ...


async def listed_as_estargz(
    blob: Descriptor, toc_digest: str, uncompressed_size: Callable[[], Awaitable[int]]
) -> Descriptor:
    """How a manifest lists an eStargz ``blob`` kept as it is: an OCI gzip layer with its
    TOC digest and uncompressed size (the blob's own annotation, else measured)."""
    annotations = dict(blob.annotations)
    annotations[mediatypes.TOC_DIGEST_ANNOTATION] = toc_digest
    if mediatypes.UNCOMPRESSED_SIZE_ANNOTATION not in annotations:
        annotations[mediatypes.UNCOMPRESSED_SIZE_ANNOTATION] = str(await uncompressed_size())
    return Descriptor(mediatypes.OCI_LAYER_GZIP, blob.digest, blob.size, annotations)


async def copy_blob(
    source: ImageSource,
    target: ImageTarget,
    blob: Descriptor,
    *,
    listed_as: Descriptor,
    scratch: Path,
    transfers: trio.CapacityLimiter,
) -> str:
    """Make ``blob`` of ``source`` exist at ``target``, where a manifest lists it as
    ``listed_as`` (the same bytes, other media type or annotations): nothing when the
    target has it, a cross-repository mount when it can, else a download to ``scratch``
    and an upload (under ``transfers``). Returns exists, mounted or uploaded."""
    if await target.has_blob(listed_as):
        return "exists"
    if await target.mount_blob(listed_as):
        return "mounted"
    async with transfers:
        await source.download(blob, scratch)
        transfer = await target.put_blob(listed_as, scratch)
    scratch.unlink()
    return transfer


def parse_location(text: str) -> tuple[str, str | None] | Reference:
    """``oci:DIR[:tag]`` → (dir, tag); anything else is a registry reference."""
    if not text.startswith("oci:"):
        return Reference.parse(text)
    rest = text[len("oci:") :]
    head, sep, tail = rest.rpartition(":")
    if sep and head and tail and "/" not in tail:
        return head, tail
    return rest, None


class RegistrySource:
    def __init__(self, client: RegistryClient, ref: Reference) -> None:
        self.client = client
        self.ref = ref
        self.description = str(ref)
        # One RemoteBlob per layer keeps its resolved redirect and its fetch counters.
        self._blobs: dict[str, RemoteBlob] = {}

    async def root(self) -> RootDocument:
        fetched = await self.client.get_manifest(self.ref)
        descriptor = Descriptor(fetched.media_type, fetched.digest, len(fetched.data))
        return RootDocument(descriptor, fetched.data, fetched.document)

    async def fetch(self, descriptor: Descriptor) -> bytes:
        if mediatypes.is_manifest(descriptor.media_type) or mediatypes.is_index(
            descriptor.media_type
        ):
            # An index's children are manifests: the registry serves them as such, not
            # as blobs.
            fetched = await self.client.get_manifest(self.ref.with_digest(descriptor.digest))
            return fetched.data
        return await self.client.get_blob(self.ref, descriptor)

    async def download(self, descriptor: Descriptor, dest: Path) -> None:
        """Stream the blob to ``dest``, a staging file the caller discards if this raises."""
        pieces = self.client.stream_blob(self.ref, descriptor)
        # Closed at once when a write fails, so its connection is released.
        async with await trio.open_file(dest, "wb") as out, aclosing(pieces):
            async for piece in pieces:
                await out.write(piece)

    async def read_range(self, descriptor: Descriptor, offset: int, length: int) -> bytes:
        blob = self._blobs.get(descriptor.digest)
        if blob is None:
            blob = self._blobs[descriptor.digest] = self.client.open_blob(self.ref, descriptor)
        return await blob.read_at(offset, length)


class RegistryTarget:
    def __init__(
        self, client: RegistryClient, ref: Reference, mount_from: tuple[Reference, ...] = ()
    ) -> None:
        self.client = client
        self.ref = ref
        self.mount_from = mount_from
        self.description = str(ref)

    async def has_blob(self, descriptor: Descriptor) -> bool:
        return await self.client.has_blob(self.ref, descriptor.digest)

    async def put_blob(self, descriptor: Descriptor, source: Path | bytes) -> str:
        return await self.client.push_blob(self.ref, descriptor, source, self.mount_from)

    async def mount_blob(self, descriptor: Descriptor) -> bool:
        return await self.client.mount_blob(self.ref, descriptor.digest, self.mount_from)

    async def put_manifest(self, descriptor: Descriptor, data: bytes, *, root: bool) -> None:
        # Index children are pushed by digest; the root goes to the tag that was asked for.
        by_digest = Reference(self.ref.registry, self.ref.repository, None, descriptor.digest)
        if root and self.ref.digest is None:
            target = Reference(
                self.ref.registry, self.ref.repository, self.ref.tag or "latest", None
            )
        else:
            target = by_digest
        await self.client.push_manifest(target, data, descriptor.media_type)


class LayoutSource:
    def __init__(self, layout: OciLayout, tag: str | None) -> None:
        self.layout = layout
        self.tag = tag
        self.description = f"oci:{layout.root}" + (f":{tag}" if tag else "")

    async def root(self) -> RootDocument:
        descriptor = self.layout.resolve(self.tag)
        data = await trio.to_thread.run_sync(self.layout.read_blob, descriptor.digest)
        document = parse_document(data, descriptor.media_type, self.description)
        return RootDocument(descriptor, data, document)

    async def fetch(self, descriptor: Descriptor) -> bytes:
        return await trio.to_thread.run_sync(self.layout.read_blob, descriptor.digest)

    async def download(self, descriptor: Descriptor, dest: Path) -> None:
        await trio.to_thread.run_sync(self._copy_verified, descriptor, dest)

    async def read_range(self, descriptor: Descriptor, offset: int, length: int) -> bytes:
        def read() -> bytes:
            with self.layout.open_blob(descriptor.digest) as blob:
                blob.seek(offset)
                return blob.read(length)

        return await trio.to_thread.run_sync(read)

    def _copy_verified(self, descriptor: Descriptor, dest: Path) -> None:
        hasher = new_hasher(descriptor.digest)
        with self.layout.open_blob(descriptor.digest) as blob, dest.open("wb") as out:
            while piece := blob.read(_COPY_PIECE):
                hasher.update(piece)
                out.write(piece)
        actual = f"{descriptor.digest.split(':', 1)[0]}:{hasher.hexdigest()}"
        if actual != descriptor.digest:
            raise DigestMismatchError(
                f"{self.description}: blob {descriptor.digest} is corrupt (hashes to {actual})"
            )


class LayoutTarget:
    def __init__(self, layout: OciLayout, tag: str | None) -> None:
        self.layout = layout
        # As with registries, an image written without a tag is tagged "latest".
        self.tag = tag or "latest"
        self.description = f"oci:{layout.root}:{self.tag}"

    async def has_blob(self, descriptor: Descriptor) -> bool:
        return self.layout.has_blob(descriptor.digest)

    async def put_blob(self, descriptor: Descriptor, source: Path | bytes) -> str:
        if self.layout.has_blob(descriptor.digest):
            return "exists"
        if isinstance(source, bytes):
            verify_digest(source, descriptor.digest, f"blob for {self.description}")
            await trio.to_thread.run_sync(self.layout.write_blob, source)
        else:
            await trio.to_thread.run_sync(self._copy_in, source, descriptor)
        return "uploaded"

    async def mount_blob(self, descriptor: Descriptor) -> bool:
        return False  # a layout has no other repositories to mount from

    def _copy_in(self, source: Path, descriptor: Descriptor) -> None:
        hasher = hashlib.sha256()
        with source.open("rb") as blob, self.layout.temp_blob_file() as out:
            staged = Path(out.name)
            try:
                while piece := blob.read(_COPY_PIECE):
                    hasher.update(piece)
                    out.write(piece)
                out.flush()
                os.fsync(out.fileno())
            except BaseException:
                staged.unlink(missing_ok=True)
                raise
        if "sha256:" + hasher.hexdigest() != descriptor.digest:
            staged.unlink(missing_ok=True)
            raise DigestMismatchError(f"{source} does not hash to {descriptor.digest}")
        self.layout.adopt_blob_file(staged, descriptor.digest)

    async def put_manifest(self, descriptor: Descriptor, data: bytes, *, root: bool) -> None:
        verify_digest(data, descriptor.digest, f"manifest for {self.description}")
        await trio.to_thread.run_sync(self.layout.write_blob, data)
        if root:
            self.layout.add_ref(descriptor, self.tag)


def open_source(text: str, client: RegistryClient) -> ImageSource:
    location = parse_location(text)
    if isinstance(location, Reference):
        return RegistrySource(client, location)
    directory, tag = location
    return LayoutSource(OciLayout.open(Path(directory)), tag)


def open_target(
    text: str, client: RegistryClient, source: ImageSource | None = None
) -> ImageTarget:
    location = parse_location(text)
    if isinstance(location, Reference):
        mount_from: tuple[Reference, ...] = ()
        if isinstance(source, RegistrySource) and source.ref.registry == location.registry:
            mount_from = (source.ref,)
        return RegistryTarget(client, location, mount_from)
    directory, tag = location
    root = Path(directory)
    if root.is_dir() and not (root / "oci-layout").exists() and any(root.iterdir()):
        raise UsageError(f"{directory} exists, is not empty and is not an OCI image layout")
    return LayoutTarget(OciLayout.create(Path(directory)), tag)
