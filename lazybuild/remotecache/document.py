"""The cache artifact's config: which layers each cache key's result is made of.

An exported cache is an OCI image manifest (``artifactType``
``application/vnd.lazybuild.cache.v1``) whose config is this document and whose layers
are the eStargz blobs of the build steps' layers. A base image's layer is not copied:
the document names the pinned image it came from (``source``), and an importer mounts
it from there, as the build did.

Decoding is strict and bounded: a cache comes from a registry, which is not trusted.
A layer's bytes are still proved by its digest (lazily: the TOC digest annotation, then
each chunk's digest) when a hit mounts it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lazybuild.errors import FormatError
from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.digest import validate_digest
from lazybuild.oci.localblob import LAYOUT_SOURCE_PREFIX
from lazybuild.registry.reference import Reference

__all__ = [
    "CACHE_ARTIFACT_TYPE",
    "CACHE_CONFIG_MEDIA_TYPE",
    "CacheDocument",
    "CacheEntry",
    "CachedLayer",
]

CACHE_ARTIFACT_TYPE = "application/vnd.lazybuild.cache.v1"
CACHE_CONFIG_MEDIA_TYPE = "application/vnd.lazybuild.cache.config.v1+json"
VERSION = 1
MAX_LAYERS = 10_000
MAX_RECORDS = 100_000
MAX_DOCUMENT_BYTES = 32 << 20
MAX_LEARNED = 10_000
MAX_LEARNED_FILES = 20_000  # per record, as ``learnedreads.MAX_FILES``
MAX_PATH = 4096
_STEP_KEY = re.compile(r"[0-9a-f]{64}")
MAX_MOUNTS = 1_000
_MOUNT_NAME = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class CachedLayer:
    """A layer of cached results: ``descriptor`` is its blob, ``diff_id`` its uncompressed
    digest; ``source`` the pinned image a base layer is mounted from, or None for a blob
    of the cache artifact itself."""

    descriptor: Descriptor
    diff_id: str
    source: str | None = None
    # A build step's layer of an earlier imported cache (re-exported by reference), not a
    # base image's.
    from_cache: bool = False


@dataclass(frozen=True)
class CacheEntry:
    """The result saved under ``key``: the layers at these positions of the document's
    list, bottom first (none: the empty filesystem), saved at ``created`` (Unix time)."""

    key: str
    layers: tuple[int, ...]
    created: float


@dataclass(frozen=True)
class CacheDocument:
    layers: tuple[CachedLayer, ...]
    records: tuple[CacheEntry, ...]
    # What RUN steps read of their base images (``worker.learnedreads``): by step key,
    # the paths per base layer, bottom first. A hint for a prefetch, never trusted more.
    learned: Mapping[str, tuple[tuple[str, ...], ...]] = field(default_factory=dict)
    # Cache mounts (``worker.cachemounts``): by name, their layers' positions, bottom first.
    mounts: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def encode(self) -> bytes:
        document: dict[str, Any] = {
            "version": VERSION,
            "layers": [_layer_json(layer) for layer in self.layers],
            "records": [
                {"key": entry.key, "layers": list(entry.layers), "created": entry.created}
                for entry in self.records
            ],
        }
        if self.mounts:
            document["mounts"] = {name: list(p) for name, p in self.mounts.items()}
        if self.learned:
            document["learned"] = {
                key: [list(paths) for paths in layers] for key, layers in self.learned.items()
            }
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes, where: str) -> CacheDocument:
        if len(data) > MAX_DOCUMENT_BYTES:
            raise FormatError(f"{where}: {len(data)} bytes is too large for a cache document")
        try:
            document = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise FormatError(f"{where}: not JSON: {exc}") from None
        if not isinstance(document, dict) or document.get("version") != VERSION:
            raise FormatError(f"{where}: not a lazybuild cache document of version {VERSION}")
        layers = _list(document.get("layers"), MAX_LAYERS, f"{where} layers")
        records = _list(document.get("records"), MAX_RECORDS, f"{where} records")
        decoded = tuple(_layer(item, f"{where} layer {i}") for i, item in enumerate(layers))
        entries = tuple(
            _entry(item, len(decoded), f"{where} record {i}") for i, item in enumerate(records)
        )
        return cls(
            decoded,
            entries,
            _learned(document.get("learned", {}), f"{where} learned"),
            _mounts(document.get("mounts", {}), len(decoded), f"{where} mounts"),
        )


def _layer_json(layer: CachedLayer) -> dict[str, Any]:
    out: dict[str, Any] = {"descriptor": layer.descriptor.to_json(), "diff_id": layer.diff_id}
    if layer.source is not None:
        out["source"] = layer.source
    if layer.from_cache:
        out["from_cache"] = True
    return out


def _list(value: Any, limit: int, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise FormatError(f"{where}: not a list")
    if len(value) > limit:
        raise FormatError(f"{where}: {len(value)} entries, more than {limit}")
    return value


def _layer(item: Any, where: str) -> CachedLayer:
    if not isinstance(item, dict):
        raise FormatError(f"{where}: not an object")
    descriptor = Descriptor.from_json(item.get("descriptor"), where)
    diff_id = validate_digest(str(item.get("diff_id")), f"{where} diff_id")
    source = item.get("source")
    if source is not None:
        if not isinstance(source, str):
            raise FormatError(f"{where}: source is not a string")
        if source.startswith(LAYOUT_SOURCE_PREFIX):
            # Local paths are never taken from a document: only the importer's own.
            raise FormatError(f"{where}: source {source!r:.100} is not a registry image")
        if Reference.parse(source).digest is None:
            raise FormatError(f"{where}: source {source!r:.100} is not pinned by digest")
    return CachedLayer(descriptor, diff_id, source, item.get("from_cache") is True)


def _entry(item: Any, layer_count: int, where: str) -> CacheEntry:
    if not isinstance(item, dict):
        raise FormatError(f"{where}: not an object")
    key = validate_digest(str(item.get("key")), f"{where} key")
    positions = _list(item.get("layers"), MAX_LAYERS, f"{where} layers")
    if not all(isinstance(p, int) and not isinstance(p, bool) for p in positions):
        raise FormatError(f"{where}: layer positions must be integers")
    if any(not 0 <= p < layer_count for p in positions):
        raise FormatError(f"{where}: a layer position outside the document's layers")
    created = item.get("created")
    if not isinstance(created, int | float) or isinstance(created, bool):
        raise FormatError(f"{where}: created is not a number")
    return CacheEntry(key, tuple(positions), float(created))


def _learned(value: Any, where: str) -> dict[str, tuple[tuple[str, ...], ...]]:
    if not isinstance(value, dict):
        raise FormatError(f"{where}: not an object")
    if len(value) > MAX_LEARNED:
        raise FormatError(f"{where}: {len(value)} records, more than {MAX_LEARNED}")
    learned = {}
    for key, layers in value.items():
        if not isinstance(key, str) or _STEP_KEY.fullmatch(key) is None:
            raise FormatError(f"{where}: {key!r:.80} is not a step key")
        lists = _list(layers, MAX_LAYERS, f"{where} {key}")
        if not all(isinstance(paths, list) for paths in lists):
            raise FormatError(f"{where} {key}: not lists of paths")
        if sum(len(paths) for paths in lists) > MAX_LEARNED_FILES:
            raise FormatError(f"{where} {key}: more than {MAX_LEARNED_FILES} paths")
        if not all(
            isinstance(path, str) and 0 < len(path) <= MAX_PATH for paths in lists for path in paths
        ):
            raise FormatError(f"{where} {key}: a path that is not a string of 1 to {MAX_PATH}")
        learned[key] = tuple(tuple(paths) for paths in lists)
    return learned


def _mounts(value: Any, layer_count: int, where: str) -> dict[str, tuple[int, ...]]:
    if not isinstance(value, dict):
        raise FormatError(f"{where}: not an object")
    if len(value) > MAX_MOUNTS:
        raise FormatError(f"{where}: {len(value)} cache mounts, more than {MAX_MOUNTS}")
    mounts = {}
    for name, positions in value.items():
        if not isinstance(name, str) or _MOUNT_NAME.fullmatch(name) is None:
            raise FormatError(f"{where}: {name!r:.80} is not a cache mount name")
        listed = _list(positions, MAX_LAYERS, f"{where} {name}")
        if not all(
            isinstance(p, int) and not isinstance(p, bool) and 0 <= p < layer_count for p in listed
        ):
            raise FormatError(f"{where} {name}: a layer position outside the document's layers")
        mounts[name] = tuple(listed)
    return mounts


def positions_of(layers: Sequence[CachedLayer], wanted: Sequence[CachedLayer]) -> tuple[int, ...]:
    """Where each of ``wanted`` sits in ``layers`` (by blob digest and source)."""
    index = {(layer.descriptor.digest, layer.source): i for i, layer in enumerate(layers)}
    return tuple(index[(layer.descriptor.digest, layer.source)] for layer in wanted)
