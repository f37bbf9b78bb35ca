"""Image manifests and indexes (OCI and Docker schema 2), parsed and serialised.

Unknown top-level fields are kept in ``extra`` so that a manifest rewritten by
lazybuild (convert, optimize) loses nothing it did not mean to change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from lazybuild.errors import FormatError, NotFoundError
from lazybuild.oci import mediatypes
from lazybuild.oci.descriptor import Descriptor, string_map
from lazybuild.oci.platform import Platform

_MANIFEST_KEYS = {"schemaVersion", "mediaType", "config", "layers", "annotations"}
_INDEX_KEYS = {"schemaVersion", "mediaType", "manifests", "annotations"}


def encode_json(document: dict[str, Any]) -> bytes:
    """Compact, stable JSON: the bytes whose digest names the document."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def _load(data: bytes, where: str) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, a 4300-digit number
        raise FormatError(f"{where} is not valid JSON: {str(exc)[:200]}") from None
    except RecursionError:
        raise FormatError(f"{where} is not valid JSON: nested too deeply") from None
    if not isinstance(document, dict):
        raise FormatError(f"{where} is not a JSON object")
    return document


@dataclass(frozen=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_document(cls, document: dict[str, Any], media_type: str, where: str) -> Manifest:
        layers = document.get("layers")
        if not isinstance(layers, list):
            raise FormatError(f"{where} has no layers list")
        return cls(
            media_type=media_type,
            config=Descriptor.from_json(document.get("config"), f"{where} config"),
            layers=tuple(
                Descriptor.from_json(layer, f"{where} layer {i}") for i, layer in enumerate(layers)
            ),
            annotations=string_map(document.get("annotations"), f"{where} annotations"),
            extra={k: v for k, v in document.items() if k not in _MANIFEST_KEYS},
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schemaVersion": 2, "mediaType": self.media_type}
        out["config"] = self.config.to_json()
        out["layers"] = [layer.to_json() for layer in self.layers]
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        out.update(self.extra)
        return out

    def encode(self) -> bytes:
        return encode_json(self.to_json())

    def with_layers(self, config: Descriptor, layers: list[Descriptor]) -> Manifest:
        return replace(self, config=config, layers=tuple(layers))


@dataclass(frozen=True)
class Index:
    media_type: str
    manifests: tuple[Descriptor, ...]
    annotations: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_document(cls, document: dict[str, Any], media_type: str, where: str) -> Index:
        manifests = document.get("manifests")
        if not isinstance(manifests, list):
            raise FormatError(f"{where} has no manifests list")
        return cls(
            media_type=media_type,
            manifests=tuple(
                Descriptor.from_json(m, f"{where} manifest {i}") for i, m in enumerate(manifests)
            ),
            annotations=string_map(document.get("annotations"), f"{where} annotations"),
            extra={k: v for k, v in document.items() if k not in _INDEX_KEYS},
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schemaVersion": 2, "mediaType": self.media_type}
        out["manifests"] = [m.to_json() for m in self.manifests]
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        out.update(self.extra)
        return out

    def encode(self) -> bytes:
        return encode_json(self.to_json())

    def select(self, wanted: Platform, where: str) -> Descriptor:
        """The image manifest for ``wanted``; attestation manifests are never chosen."""
        candidates = [
            m
            for m in self.manifests
            if m.platform is not None
            and wanted.matches(m.platform)
            and mediatypes.is_manifest(m.media_type)
        ]
        if not candidates:
            available = ", ".join(str(m.platform) for m in self.manifests if m.platform) or "none"
            raise NotFoundError(f"{where} has no image for {wanted} (available: {available})")
        # Prefer an exact variant match over a variant-less one.
        exact = [m for m in candidates if m.platform is not None and m.platform == wanted]
        return (exact or candidates)[0]


def parse_document(data: bytes, media_type: str, where: str) -> Manifest | Index:
    """Parse a manifest or index; ``media_type`` (the transport's) counts when the body has none."""
    document = _load(data, where)
    declared = document.get("mediaType") or media_type
    if not isinstance(declared, str):
        raise FormatError(f"{where} has a mediaType that is not a string")
    if document.get("schemaVersion") != 2:
        raise FormatError(f"{where} has schemaVersion {document.get('schemaVersion')!r}, not 2")
    if mediatypes.is_index(declared) or (not declared and "manifests" in document):
        return Index.from_document(document, declared or mediatypes.OCI_INDEX, where)
    if mediatypes.is_manifest(declared) or (not declared and "layers" in document):
        return Manifest.from_document(document, declared or mediatypes.OCI_MANIFEST, where)
    raise FormatError(f"{where} has unsupported media type {declared!r}")


def load_config(data: bytes, where: str) -> dict[str, Any]:
    """An image config as a JSON object; kept as a dict so unknown fields survive rewrites."""
    config = _load(data, where)
    rootfs = config.get("rootfs")
    if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids"), list):
        raise FormatError(f"{where} lacks rootfs.diff_ids")
    return config


def config_diff_ids(config: dict[str, Any]) -> list[str]:
    return [str(d) for d in config["rootfs"]["diff_ids"]]
