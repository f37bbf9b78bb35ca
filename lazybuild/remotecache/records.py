"""Which cache records a build touched, which of them an export takes, and imported
records consulted after the local ones."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lazybuild.errors import FormatError
from lazybuild.remotecache.spec import Mode
from lazybuild.solver.cachestore import CacheLink, CacheRecord, CacheStore, PrunePredicate
from lazybuild.worker.layers import Snapshot

__all__ = ["ImportedCacheStore", "ObservedCacheStore", "TouchedRecord", "select_for_export"]


@dataclass(frozen=True)
class TouchedRecord:
    """A record the build loaded or saved, with the result it names."""

    key: str
    record: CacheRecord
    snapshot: Snapshot


class ObservedCacheStore:
    """A ``CacheStore`` that remembers every key whose record was loaded or saved through
    it (the solve's keys that have results)."""

    def __init__(self, inner: CacheStore) -> None:
        self._inner = inner
        self.touched: dict[str, CacheRecord] = {}

    def load(self, key: str) -> CacheRecord | None:
        record = self._inner.load(key)
        if record is not None:
            self.touched[key] = record
        return record

    def save(self, key: str, record: CacheRecord, links: Sequence[CacheLink] = ()) -> None:
        self._inner.save(key, record, links)
        self.touched[key] = record

    def links(self, key: str) -> tuple[CacheLink, ...]:
        return self._inner.links(key)

    def entries(self) -> list[tuple[str, CacheRecord]]:
        return self._inner.entries()

    def prune(self, should_remove: PrunePredicate) -> list[tuple[str, CacheRecord]]:
        return self._inner.prune(should_remove)

    def touched_records(self) -> list[TouchedRecord]:
        """The touched records and, through their links, the records of the keys they
        were derived from (a cached build loads only its last steps' records), oldest
        first. Records that do not name a snapshot are left out."""
        found: dict[str, CacheRecord] = {}
        pending = list(self.touched.items())
        while pending:
            key, record = pending.pop()
            if key in found:
                continue
            found[key] = record
            for link in self._inner.links(key):
                if not link.content and link.dependency not in found:
                    parent = self._inner.load(link.dependency)
                    if parent is not None:
                        pending.append((link.dependency, parent))
        touched = []
        for key, record in sorted(found.items(), key=lambda item: item[1].created_at):
            try:
                snapshot = Snapshot.from_id(record.result_id)
            except (FormatError, KeyError, TypeError):
                continue
            touched.append(TouchedRecord(key, record, snapshot))
        return touched


class ImportedCacheStore:
    """``local`` first, then records imported from remote caches (read-only: saves,
    links and pruning are the local store's)."""

    def __init__(self, local: CacheStore, imported: Mapping[str, CacheRecord]) -> None:
        self._local = local
        self._imported = dict(imported)

    def load(self, key: str) -> CacheRecord | None:
        return self._local.load(key) or self._imported.get(key)

    def save(self, key: str, record: CacheRecord, links: Sequence[CacheLink] = ()) -> None:
        self._local.save(key, record, links)

    def links(self, key: str) -> tuple[CacheLink, ...]:
        return self._local.links(key)

    def entries(self) -> list[tuple[str, CacheRecord]]:
        return self._local.entries()

    def prune(self, should_remove: PrunePredicate) -> list[tuple[str, CacheRecord]]:
        return self._local.prune(should_remove)


def select_for_export(
    touched: Sequence[TouchedRecord], mode: Mode, result: Snapshot
) -> list[TouchedRecord]:
    """``max``: every touched record; ``min``: those whose result is part of the build's
    result (its layers a prefix of the result's: the final stage's steps)."""
    if mode == "max":
        return list(touched)
    return [
        entry
        for entry in touched
        if entry.snapshot.layers == result.layers[: len(entry.snapshot.layers)]
    ]
