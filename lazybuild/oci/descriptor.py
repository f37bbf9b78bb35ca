"""OCI content descriptors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from lazybuild.errors import FormatError
from lazybuild.oci.digest import validate_digest
from lazybuild.oci.platform import Platform


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
        if not isinstance(media_type, str) or not isinstance(size, int) or size < 0:
            raise FormatError(f"{where} has a bad mediaType or size")
        annotations = data.get("annotations") or {}
        if not isinstance(annotations, dict):
            raise FormatError(f"{where} has annotations that are not an object")
        platform = data.get("platform")
        return cls(
            media_type=media_type,
            digest=validate_digest(str(digest), where),
            size=size,
            annotations={str(k): str(v) for k, v in annotations.items()},
            platform=Platform.from_json(platform) if platform is not None else None,
            urls=tuple(str(u) for u in data.get("urls") or ()),
            artifact_type=str(data.get("artifactType", "")),
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
