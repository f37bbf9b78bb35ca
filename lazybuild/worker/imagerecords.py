"""Base images a build resolved before, kept so later builds need not ask again.

Docker builds from a local image when it has one and asks the registry only with
``--pull``. lazybuild has no image store, but what a build needs of a base image is
small (manifest and config; layers stay remote): those are kept here by reference,
verified against their digests when read back, and used as Docker would use a local
image. ``--pull`` resolves again and replaces the record.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from lazybuild.errors import LazybuildError
from lazybuild.oci.manifest import Manifest, load_config, parse_document
from lazybuild.oci.platform import Platform
from lazybuild.registry.client import ResolvedImage
from lazybuild.registry.reference import Reference
from lazybuild.state.atomicfile import write_atomic


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class ImageRecords:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, ref: str, platform: Platform) -> Path:
        key = hashlib.sha256(f"{ref}\n{platform}".encode()).hexdigest()
        return self.directory / f"{key}.json"

    def load(self, ref: str, platform: Platform) -> ResolvedImage | None:
        """The recorded resolution of ``ref``, or None (none, or not intact)."""
        try:
            record = json.loads(self._path(ref, platform).read_text())
            manifest_bytes = bytes.fromhex(record["manifest"])
            config_bytes = bytes.fromhex(record["config"])
            if _sha256(manifest_bytes) != record["manifest_digest"]:
                return None
            document = parse_document(manifest_bytes, record["media_type"], ref)
            if not isinstance(document, Manifest):
                return None
            if _sha256(config_bytes) != document.config.digest:
                return None
            config = load_config(config_bytes, ref)
            pinned = Reference.parse(record["pinned"])
        except (OSError, ValueError, KeyError, TypeError, LazybuildError):
            return None
        return ResolvedImage(
            ref=pinned,
            index=None,
            manifest_digest=record["manifest_digest"],
            manifest=document,
            manifest_bytes=manifest_bytes,
            config=config,
            config_bytes=config_bytes,
        )

    def save(self, ref: str, platform: Platform, image: ResolvedImage) -> None:
        record = {
            "ref": ref,
            "pinned": str(image.ref),
            "manifest_digest": image.manifest_digest,
            "media_type": image.manifest.media_type,
            "manifest": image.manifest_bytes.hex(),
            "config": image.config_bytes.hex(),
        }
        write_atomic(self._path(ref, platform), json.dumps(record).encode())
