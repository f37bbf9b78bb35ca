"""``--cache-to`` and ``--cache-from`` values, as ``docker buildx build`` spells them:
``type=registry,ref=REF[,mode=min|max][,cache-mounts=true]`` (``ref=`` alone, or a bare
reference, for ``--cache-to``), and ``type=local,dest=DIR`` / ``type=local,src=DIR``
(an OCI layout directory, for CI cache actions that save and restore one).

Values are CSV fields, as buildx reads them, so a list is one quoted field:
``'type=registry,ref=REF,"cache-mounts=go-build,go-mod"'`` exports those cache mounts
only (by ``id``, or by target for a mount without one); ``cache-mounts=true`` all.
``cache-mount-layers=N`` (default 8): a cache mount exported over N imported layers goes
as one merged layer."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lazybuild.errors import FormatError, UsageError
from lazybuild.registry.reference import Reference

__all__ = ["CacheExport", "CacheImport", "cache_exports", "cache_imports"]

Mode = Literal["min", "max"]
_TYPES = ("registry", "local")


@dataclass(frozen=True)
class CacheExport:
    """To a registry (``ref``) or to a local OCI layout directory (``dest``)."""

    ref: Reference | None
    mode: Mode = "min"
    cache_mounts: bool = False  # also the content of the build's cache mounts
    dest: Path | None = None
    # Only the cache mounts of these ids (or targets); None: all of them.
    cache_mount_ids: frozenset[str] | None = None
    # A cache mount with this many imported layers is exported as one layer again:
    # each exporting runner adds one, and every lookup walks the stack, but merging
    # reads the whole mount (large caches want a higher bound).
    cache_mount_layers: int = 8

    def exports_mount(self, mount_id: str) -> bool:
        return self.cache_mounts and (
            self.cache_mount_ids is None or mount_id in self.cache_mount_ids
        )

    def __str__(self) -> str:
        return str(self.ref) if self.ref is not None else f"local cache {self.dest}"


@dataclass(frozen=True)
class CacheImport:
    """From a registry (``ref``) or from a local OCI layout directory (``src``)."""

    ref: Reference | None
    src: Path | None = None

    def __str__(self) -> str:
        return str(self.ref) if self.ref is not None else f"local cache {self.src}"


def cache_exports(specs: Iterable[str]) -> list[CacheExport]:
    exports = []
    for spec in specs:
        fields = _fields(
            spec,
            "--cache-to",
            allowed={"type", "ref", "dest", "mode", "cache-mounts", "cache-mount-layers"},
        )
        mode = fields.get("mode", "min")
        if mode not in ("min", "max"):
            raise UsageError(f"--cache-to {spec!r}: mode must be min or max, not {mode!r}")
        enabled, ids = _cache_mounts(fields.get("cache-mounts", "false"), spec)
        depth = _positive(fields.get("cache-mount-layers", "8"), "cache-mount-layers", spec)
        chosen: Mode = "max" if mode == "max" else "min"
        if fields["type"] == "local":
            dest = _directory(fields, "dest", spec, "--cache-to")
            exports.append(CacheExport(None, chosen, enabled, dest, ids, depth))
        else:
            ref = _ref(fields, spec, "--cache-to")
            exports.append(CacheExport(ref, chosen, enabled, None, ids, depth))
    return exports


def _positive(value: str, key: str, spec: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise UsageError(f"--cache-to {spec!r}: {key} must be a whole number of at least 1")
    return int(value)


def _cache_mounts(value: str, spec: str) -> tuple[bool, frozenset[str] | None]:
    """``cache-mounts=``: true, false, or the ids of the mounts to export."""
    if value.lower() in ("true", "false"):
        return value.lower() == "true", None
    ids = frozenset(part.strip() for part in value.split(",") if part.strip())
    if not ids:
        raise UsageError(f"--cache-to {spec!r}: cache-mounts must be true, false or mount ids")
    return True, ids


def cache_imports(specs: Iterable[str]) -> list[CacheImport]:
    imports = []
    for spec in specs:
        fields = _fields(spec, "--cache-from", allowed={"type", "ref", "src"})
        if fields["type"] == "local":
            imports.append(CacheImport(None, _directory(fields, "src", spec, "--cache-from")))
        else:
            imports.append(CacheImport(_ref(fields, spec, "--cache-from")))
    return imports


def _fields(spec: str, flag: str, *, allowed: set[str]) -> dict[str, str]:
    if "=" not in spec:
        return {"type": "registry", "ref": spec}  # a bare reference, as buildx takes it
    fields: dict[str, str] = {}
    try:
        (parts,) = csv.reader([spec])  # buildx's CSV: a quoted field may hold commas
    except csv.Error as exc:
        raise UsageError(f"{flag} {spec!r}: {exc}") from None
    for part in parts:
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or not key:
            raise UsageError(f"{flag} {spec!r}: {part!r} is not KEY=VALUE")
        fields[key] = value.strip()
    kind = fields.setdefault("type", "registry")
    if kind not in _TYPES:
        raise UsageError(f"{flag} {spec!r}: cache type {kind!r} is not supported (registry, local)")
    unknown = sorted(set(fields) - allowed)
    if unknown:
        known = ", ".join(sorted(allowed))
        raise UsageError(f"{flag} {spec!r}: unknown key {unknown[0]!r} (known: {known})")
    return fields


def _directory(fields: dict[str, str], key: str, spec: str, flag: str) -> Path:
    text = fields.get(key)
    if not text:
        raise UsageError(f"{flag} {spec!r}: type=local needs {key}=DIR")
    return Path(text).expanduser().absolute()


def _ref(fields: dict[str, str], spec: str, flag: str) -> Reference:
    text = fields.get("ref")
    if not text:
        raise UsageError(f"{flag} {spec!r}: no ref=")
    try:
        ref = Reference.parse(text)
    except FormatError as exc:
        raise UsageError(f"{flag} {spec!r}: {exc}") from None
    if ref.digest is not None and flag == "--cache-to":
        raise UsageError(f"{flag} {spec!r}: a cache is exported to a tag, not a digest")
    return ref
