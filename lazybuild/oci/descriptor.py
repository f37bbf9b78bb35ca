"""OCI content descriptors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from lazybuild.errors import FormatError
from lazybuild.oci.digest import sha256_digest, validate_digest
from lazybuild.oci.platform import Platform


def string_map(value: Any, where: str) -> dict[str, str]:
    """An OCI annotations object (string to string); absent or null is empty."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise FormatError(f"{where} is not a JSON object")
    if not all(isinstance(v, str) for v in value.values()):
        raise FormatError(f"{where} has values that are not strings")
    return dict(value)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: Platform | None = None
    urls: tuple[str, ...] = ()
    artifact_type: str = ""

    @classmethod
    def from_json(cls, data: Any, where: str = "descriptor") -> Descriptor:
        if not isinstance(data, dict):
            raise FormatError(f"{where} is not a JSON object")
        try:
            media_type = data["mediaType"]
            digest = data["digest"]
            size = data["size"]
        except KeyError as missing:
            raise FormatError(f"{where} lacks {missing.args[0]!r}") from None
        if (
            not isinstance(media_type, str)
            or isinstance(size, bool)
            or not isinstance(size, int)
            or not 0 <= size < 1 << 63
        ):
            raise FormatError(f"{where} has a bad mediaType or size")
        if not isinstance(digest, str):
            raise FormatError(f"{where} has a digest that is not a string")
        urls = data.get("urls") or []
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise FormatError(f"{where} has urls that are not a list of strings")
        platform = data.get("platform")
        artifact_type = data.get("artifactType") or ""
        if not isinstance(artifact_type, str):
            raise FormatError(f"{where} has an artifactType that is not a string")
        return cls(
            media_type=media_type,
            digest=validate_digest(digest, where),
            size=size,
            annotations=string_map(data.get("annotations"), f"{where} annotations"),
            platform=Platform.from_json(platform) if platform is not None else None,
            urls=tuple(urls),
            artifact_type=artifact_type,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out

    def with_annotations(self, extra: Mapping[str, str]) -> Descriptor:
        return replace(self, annotations={**self.annotations, **extra})


def descriptor_for(media_type: str, data: bytes) -> Descriptor:
    """The descriptor of a document or blob held in memory: its sha256 and size."""
    return Descriptor(media_type, sha256_digest(data), len(data))
