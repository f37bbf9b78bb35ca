"""Small images for exporter unit tests: layer blobs as files, a fake registry client."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from lazybuild.exporter.content import PreparedLayer
from lazybuild.exporter.image import AssembledImage, assemble_image
from lazybuild.oci import mediatypes
from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.platform import Platform
from lazybuild.progress import transfer
from lazybuild.registry.reference import Reference
from lazybuild.worker.layers import RemoteLayer


def gzip_layer(files: dict[str, bytes]) -> tuple[bytes, str]:
    """A gzip layer blob holding ``files``, and its diff_id."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            member = tarfile.TarInfo(name)
            member.size = len(data)
            member.mode = 0o644
            tar.addfile(member, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, mtime=0), "sha256:" + hashlib.sha256(tar_bytes).hexdigest()


def descriptor_of(data: bytes, media_type: str = mediatypes.OCI_LAYER_GZIP) -> Descriptor:
    return Descriptor(media_type, "sha256:" + hashlib.sha256(data).hexdigest(), len(data))


@dataclass
class SmallImage:
    image: AssembledImage
    layers: list[PreparedLayer]
    blobs: dict[str, bytes]  # every layer blob by digest


def small_image(
    tmp_path: Path, remote_source: str = "r.example/base@sha256:" + "a" * 64
) -> SmallImage:
    """Two layers: a base layer left in ``remote_source``'s registry, a local one on disk."""
    base, base_diff = gzip_layer({"etc/os-release": b"ID=test\n"})
    local, local_diff = gzip_layer({"app/hello": b"hello\n"})
    local_path = tmp_path / "local.blob"
    local_path.write_bytes(local)
    remote = RemoteLayer(descriptor_of(base), remote_source, base_diff)
    layers = [
        PreparedLayer(remote.descriptor, base_diff, remote=remote),
        PreparedLayer(descriptor_of(local), local_diff, local_blob=local_path),
    ]
    image = assemble_image(
        {
            "config": {"Cmd": ["/app/hello"]},
            "history": [{"created_by": "base"}, {"created_by": "app"}],
        },
        [layer.exported for layer in layers],
        base_layer_count=1,
        platform=Platform("linux", "amd64"),
        source_date_epoch=0,
    )
    blobs = {remote.descriptor.digest: base, layers[1].descriptor.digest: local}
    return SmallImage(image, layers, blobs)


@dataclass
class FakeRegistry:
    """Just enough of RegistryClient for the exporter, recording what was asked."""

    blobs: dict[tuple[str, str], bytes] = field(default_factory=dict)  # (repo name, digest)
    mountable: bool = True
    calls: list[tuple[str, str, str]] = field(default_factory=list)  # (call, repo, digest)
    manifests: dict[str, bytes] = field(default_factory=dict)

    def put(self, ref: str, data: bytes) -> str:
        digest = descriptor_of(data).digest
        self.blobs[(Reference.parse(ref).name, digest)] = data
        return digest

    async def has_blob(self, ref: Reference, digest: str) -> bool:
        self.calls.append(("has", ref.name, digest))
        return (ref.name, digest) in self.blobs

    async def mount_blob(self, ref: Reference, digest: str, mount_from: list[Reference]) -> bool:
        for source in mount_from:
            if source.registry != ref.registry or source.name == ref.name:
                continue
            self.calls.append(("mount", ref.name, digest))
            if self.mountable and (source.name, digest) in self.blobs:
                self.blobs[(ref.name, digest)] = self.blobs[(source.name, digest)]
                return True
        return False

    async def push_blob(
        self,
        ref: Reference,
        descriptor: Descriptor,
        source: Path | bytes,
        mount_from: list[Reference] = [],  # noqa: B006
    ) -> str:
        if (ref.name, descriptor.digest) in self.blobs:
            return "exists"
        if await self.mount_blob(ref, descriptor.digest, mount_from):
            return "mounted"
        data = source if isinstance(source, bytes) else source.read_bytes()
        assert descriptor_of(data).digest == descriptor.digest
        self.calls.append(("upload", ref.name, descriptor.digest))
        self.blobs[(ref.name, descriptor.digest)] = data
        return "uploaded"

    async def push_manifest(self, ref: Reference, data: bytes, media_type: str) -> str:
        digest = descriptor_of(data).digest
        self.manifests[str(ref)] = data
        return digest

    async def stream_blob(self, ref: Reference, descriptor: Descriptor) -> AsyncIterator[bytes]:
        self.calls.append(("download", ref.name, descriptor.digest))
        data = self.blobs[(ref.name, descriptor.digest)]
        yield data[:10]
        yield data[10:]


class ReportingRegistry(FakeRegistry):
    """Uploads reported to the active transfer board, as the real client reports them."""

    async def push_blob(
        self,
        ref: Reference,
        descriptor: Descriptor,
        source: Path | bytes,
        mount_from: list[Reference] = [],  # noqa: B006
    ) -> str:
        outcome = await super().push_blob(ref, descriptor, source, mount_from)
        moving = transfer.begin(descriptor.digest, descriptor.size, "pushing")
        if outcome == "uploaded" and moving is not None:
            moving.seek(descriptor.size)
        if moving is not None:
            moving.end(ok=outcome == "uploaded")
        return outcome
