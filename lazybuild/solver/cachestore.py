"""The build cache's index: cache key -> the result stored under it, and how keys link.

A record names a result by id only; the worker owns the data and turns a record back
into a ``Result`` (``Solver(load_result=...)``). Links say which input keys (or content
digests) a key was derived from, like buildkit's ``CacheInfoLink``: lookups do not need
them, since keys are recomputed from the graph, but pruning and cache export do.

Two stores share one contract, checked by one conformance suite: ``MemoryCacheStore``
(tests, throwaway solves) and ``SQLiteCacheStore`` (on disk, shared by processes).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol

from lazybuild.solver.errors import CacheStoreError


@dataclass(frozen=True)
class CacheRecord:
    """The result saved under a key: its ``Result.id`` and when it was saved (Unix time)."""

    result_id: str
    created_at: float


@dataclass(frozen=True)
class CacheLink:
    """Input ``input_index`` contributed ``dependency`` (its cache key, or its content
    digest when ``content``) with ``selector`` to the key."""

    input_index: int
    selector: str
    dependency: str
    content: bool = False


PrunePredicate = Callable[[str, CacheRecord], bool]


class CacheStore(Protocol):
    def load(self, key: str) -> CacheRecord | None: ...

    def save(self, key: str, record: CacheRecord, links: Sequence[CacheLink] = ()) -> None:
        """Point ``key`` at ``record`` with ``links``, replacing what it had, all or nothing.

        Called only once the result is complete, so a key never names a partial result.
        """
        ...

    def links(self, key: str) -> tuple[CacheLink, ...]:
        """The links saved with ``key``, by input index; empty for an unknown key."""
        ...

    def entries(self) -> list[tuple[str, CacheRecord]]:
        """Every key and record, oldest first."""
        ...

    def prune(self, should_remove: PrunePredicate) -> list[tuple[str, CacheRecord]]:
        """Remove the entries (and their links) ``should_remove`` picks; return them so
        the caller can free their results."""
        ...


class MemoryCacheStore:
    def __init__(self) -> None:
        self._records: dict[str, CacheRecord] = {}
        self._links: dict[str, tuple[CacheLink, ...]] = {}

    def load(self, key: str) -> CacheRecord | None:
        return self._records.get(key)

    def save(self, key: str, record: CacheRecord, links: Sequence[CacheLink] = ()) -> None:
        ordered = tuple(sorted(links, key=lambda link: link.input_index))
        self._records.pop(key, None)  # re-inserted last, so entries() stays oldest first
        self._records[key] = record
        self._links[key] = ordered

    def links(self, key: str) -> tuple[CacheLink, ...]:
        return self._links.get(key, ())

    def entries(self) -> list[tuple[str, CacheRecord]]:
        return sorted(self._records.items(), key=lambda item: item[1].created_at)

    def prune(self, should_remove: PrunePredicate) -> list[tuple[str, CacheRecord]]:
        removed = [(k, r) for k, r in self.entries() if should_remove(k, r)]
        for key, _ in removed:
            del self._records[key]
            self._links.pop(key, None)
        return removed


SCHEMA_VERSION = 1

# Version 1. ``PRAGMA user_version`` holds the version; 0 means a new, empty file.
_SCHEMA = """
CREATE TABLE records (
    key TEXT PRIMARY KEY,
    result_id TEXT NOT NULL,
    created_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE links (
    key TEXT NOT NULL,
    input_index INTEGER NOT NULL,
    selector TEXT NOT NULL,
    dependency TEXT NOT NULL,
    content INTEGER NOT NULL,
    PRIMARY KEY (key, input_index)
) WITHOUT ROWID;
CREATE INDEX links_by_dependency ON links (dependency);
"""


class SQLiteCacheStore:
    """A ``CacheStore`` in one SQLite file, safe to share between processes.

    Every save is one transaction, so after a crash a key has its old entry or its new
    one, never a record without its links. WAL with ``synchronous=NORMAL`` may lose the
    last saves on power loss, which costs a cache miss and never corrupts the file.
    One instance belongs to one thread (sqlite3's rule); calls are short and synchronous,
    so the solver makes them from the event loop.
    """

    def __init__(self, path: Path | str, *, busy_timeout: float = 30.0) -> None:
        self._path = path
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE below) rather
        # than opened implicitly by the sqlite3 module.
        with _sqlite_errors(path):
            self._db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
        try:
            with _sqlite_errors(path):
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._migrate()
        except BaseException:
            self._db.close()
            raise

    def _migrate(self) -> None:
        with self._transaction():
            (version,) = self._db.execute("PRAGMA user_version").fetchone()
            if version > SCHEMA_VERSION:
                raise CacheStoreError(
                    f"build cache schema {version} is newer than this lazybuild's "
                    f"({SCHEMA_VERSION}); upgrade lazybuild or use another state directory"
                )
            if version == 0:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SQLiteCacheStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def load(self, key: str) -> CacheRecord | None:
        with _sqlite_errors(self._path):
            row = self._db.execute(
                "SELECT result_id, created_at FROM records WHERE key = ?", (key,)
            ).fetchone()
        return None if row is None else CacheRecord(row[0], row[1])

    def save(self, key: str, record: CacheRecord, links: Sequence[CacheLink] = ()) -> None:
        with _sqlite_errors(self._path), self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO records (key, result_id, created_at) VALUES (?, ?, ?)",
                (key, record.result_id, record.created_at),
            )
            self._db.execute("DELETE FROM links WHERE key = ?", (key,))
            self._db.executemany(
                "INSERT INTO links (key, input_index, selector, dependency, content)"
                " VALUES (?, ?, ?, ?, ?)",
                [
                    (key, link.input_index, link.selector, link.dependency, int(link.content))
                    for link in links
                ],
            )

    def links(self, key: str) -> tuple[CacheLink, ...]:
        with _sqlite_errors(self._path):
            rows = self._db.execute(
                "SELECT input_index, selector, dependency, content FROM links"
                " WHERE key = ? ORDER BY input_index",
                (key,),
            ).fetchall()
        return tuple(CacheLink(row[0], row[1], row[2], bool(row[3])) for row in rows)

    def entries(self) -> list[tuple[str, CacheRecord]]:
        with _sqlite_errors(self._path):
            rows = self._db.execute(
                "SELECT key, result_id, created_at FROM records ORDER BY created_at, key"
            ).fetchall()
        return [(row[0], CacheRecord(row[1], row[2])) for row in rows]

    def prune(self, should_remove: PrunePredicate) -> list[tuple[str, CacheRecord]]:
        with _sqlite_errors(self._path), self._transaction():
            removed = [(k, r) for k, r in self.entries() if should_remove(k, r)]
            for key, _ in removed:
                self._db.execute("DELETE FROM records WHERE key = ?", (key,))
                self._db.execute("DELETE FROM links WHERE key = ?", (key,))
        return removed


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on any error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        # IMMEDIATE takes the write lock up front, so two processes saving at once wait
        # (busy timeout) instead of failing with a deadlock on lock upgrade.
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self._db.execute("COMMIT")
            return
        # SQLite may have rolled back already (a full disk does): the error that got
        # us here is the one to report, not "no transaction is active".
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("ROLLBACK")


class CacheStoreFullError(CacheStoreError):
    """The build cache could not be written: its disk is full."""

    no_space = True


@contextlib.contextmanager
def _sqlite_errors(path: Path | str) -> Iterator[None]:
    """SQLite's failures as the project's own (a damaged or full cache is the user's
    to know about in one line, not a traceback)."""
    try:
        yield
    except (sqlite3.OperationalError, sqlite3.DatabaseError) as exc:
        if isinstance(exc, sqlite3.IntegrityError | sqlite3.ProgrammingError):
            raise  # a mistake of ours, not the cache's state
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            raise CacheStoreFullError(f"build cache {path}: {exc}") from exc
        raise CacheStoreError(f"build cache {path}: {exc}") from exc
