"""The CacheStore contract, run against every implementation, then SQLite's own promises
(persistence, schema versioning, atomic saves, sharing between connections)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazybuild.solver import (
    CacheLink,
    CacheRecord,
    CacheStore,
    CacheStoreError,
    MemoryCacheStore,
    SQLiteCacheStore,
)
from lazybuild.solver.cachestore import SCHEMA_VERSION

KEY = "sha256:" + "1" * 64
OTHER = "sha256:" + "2" * 64
LINKS = (
    CacheLink(0, "", "sha256:" + "a" * 64),
    CacheLink(1, "/app.c", "sha256:" + "b" * 64, content=True),
)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CacheStore]:
    if request.param == "memory":
        yield MemoryCacheStore()
    else:
        with SQLiteCacheStore(tmp_path / "cache.db") as sqlite_store:
            yield sqlite_store


def test_an_unknown_key_has_no_record_and_no_links(store: CacheStore) -> None:
    assert store.load(KEY) is None
    assert store.links(KEY) == ()
    assert store.entries() == []


def test_a_saved_record_loads_with_its_links(store: CacheStore) -> None:
    store.save(KEY, CacheRecord("snapshot-1", 100.0), LINKS)
    assert store.load(KEY) == CacheRecord("snapshot-1", 100.0)
    assert store.links(KEY) == LINKS
    assert store.load(OTHER) is None


def test_links_come_back_in_input_order(store: CacheStore) -> None:
    store.save(KEY, CacheRecord("r", 1.0), tuple(reversed(LINKS)))
    assert store.links(KEY) == LINKS


def test_saving_again_replaces_the_record_and_its_links(store: CacheStore) -> None:
    store.save(KEY, CacheRecord("old", 1.0), LINKS)
    store.save(KEY, CacheRecord("new", 2.0), LINKS[:1])
    assert store.load(KEY) == CacheRecord("new", 2.0)
    assert store.links(KEY) == LINKS[:1]
    assert store.entries() == [(KEY, CacheRecord("new", 2.0))]


def test_entries_are_oldest_first(store: CacheStore) -> None:
    store.save(KEY, CacheRecord("later", 20.0))
    store.save(OTHER, CacheRecord("earlier", 10.0))
    assert store.entries() == [
        (OTHER, CacheRecord("earlier", 10.0)),
        (KEY, CacheRecord("later", 20.0)),
    ]


def test_prune_removes_what_it_is_told_and_returns_it(store: CacheStore) -> None:
    store.save(KEY, CacheRecord("old", 1.0), LINKS)
    store.save(OTHER, CacheRecord("new", 50.0), LINKS)
    removed = store.prune(lambda key, record: record.created_at < 10)
    assert removed == [(KEY, CacheRecord("old", 1.0))]
    assert store.load(KEY) is None and store.links(KEY) == ()
    assert store.load(OTHER) == CacheRecord("new", 50.0) and store.links(OTHER) == LINKS
    assert store.prune(lambda key, record: False) == []


# SQLite only.


def test_sqlite_entries_survive_reopening(tmp_path: Path) -> None:
    with SQLiteCacheStore(tmp_path / "cache.db") as first:
        first.save(KEY, CacheRecord("r", 1.0), LINKS)
    with SQLiteCacheStore(tmp_path / "cache.db") as second:
        assert second.load(KEY) == CacheRecord("r", 1.0)
        assert second.links(KEY) == LINKS


def test_sqlite_records_its_schema_version(tmp_path: Path) -> None:
    SQLiteCacheStore(tmp_path / "cache.db").close()
    with sqlite3.connect(tmp_path / "cache.db") as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    SQLiteCacheStore(tmp_path / "cache.db").close()
    db = sqlite3.connect(tmp_path / "cache.db")
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(CacheStoreError, match="newer"):
        SQLiteCacheStore(tmp_path / "cache.db")


def test_a_save_that_fails_part_way_changes_nothing(tmp_path: Path) -> None:
    with SQLiteCacheStore(tmp_path / "cache.db") as store:
        store.save(KEY, CacheRecord("old", 1.0), LINKS)
        # The record row is written first; the bad link fails after it, inside the
        # same transaction, as a crash between the two would.
        bad_link = CacheLink(0, None, "x")  # type: ignore[arg-type]
        with pytest.raises(sqlite3.IntegrityError):
            store.save(KEY, CacheRecord("half", 2.0), (bad_link,))
        with pytest.raises(sqlite3.IntegrityError):
            store.save(OTHER, CacheRecord("half", 2.0), (bad_link,))
        assert store.load(KEY) == CacheRecord("old", 1.0)
        assert store.links(KEY) == LINKS
        assert store.load(OTHER) is None


def test_sqlite_stores_share_one_file(tmp_path: Path) -> None:
    with (
        SQLiteCacheStore(tmp_path / "cache.db") as writer,
        SQLiteCacheStore(tmp_path / "cache.db") as reader,
    ):
        writer.save(KEY, CacheRecord("r", 1.0))
        assert reader.load(KEY) == CacheRecord("r", 1.0)
