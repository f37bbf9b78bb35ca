"""The daemon's garbage collection: the configured ``[gc]`` policy, applied at start and
then every ``GC_INTERVAL_SECONDS``.

``keep_bytes`` is ``lazybuild prune --keep-storage`` (``cli.cache_commands.prune_state``:
the least recently used chunks and whole layer images beyond it go). ``keep_duration``
removes chunks unused for longer: the chunk cache keeps each chunk's last use as its
file's mtime (its LRU order), and removing an entry is safe under a running filesystem
process, as a concurrent ``prune`` is: a chunk found missing is fetched again.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import trio

from lazybuild.cli.cache_commands import PruneEntry, prune_state
from lazybuild.daemon.config import GCPolicy

GC_INTERVAL_SECONDS = 600.0


def collect(state_dir: Path, policy: GCPolicy, now: float | None = None) -> list[PruneEntry]:
    """Applies ``policy`` once; returns what it freed (blocking: a thread's work)."""
    freed: list[PruneEntry] = []
    if policy.keep_duration is not None:
        cutoff = (time.time() if now is None else now) - policy.keep_duration.total_seconds()
        count = size = 0
        for path, info in _chunk_files(state_dir / "cache"):
            if info.st_mtime < cutoff:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    count += 1
                    size += info.st_size
        label = f"chunks unused for {_spelled(policy.keep_duration)}"
        freed.append(PruneEntry(label, count, size))
    if policy.keep_bytes is not None:
        freed.extend(prune_state(state_dir, policy.keep_bytes))
    return freed


def _spelled(duration: timedelta) -> str:
    """``7d``, ``1h30m``: as the configuration spells durations."""
    left = int(duration.total_seconds())
    parts = []
    for unit, seconds in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if left >= seconds:
            parts.append(f"{left // seconds}{unit}")
            left %= seconds
    return "".join(parts) or "0s"


def _chunk_files(cache: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """The chunk cache's entries (``<cache>/chunks/sha256/<shard>/<digest>``)."""
    chunks = cache / "chunks" / "sha256"
    if not chunks.is_dir():
        return
    for shard in chunks.iterdir():
        if not shard.is_dir():
            continue
        with os.scandir(shard) as listing:
            for item in listing:
                with contextlib.suppress(FileNotFoundError):
                    yield Path(item.path), item.stat(follow_symlinks=False)


async def collect_periodically(
    state_dir: Path, policy: GCPolicy, report: Callable[[PruneEntry], None]
) -> None:
    """Applies ``policy`` now and every ``GC_INTERVAL_SECONDS`` until cancelled; each
    part that freed something is reported. Nothing to do without a policy."""
    if policy.keep_bytes is None and policy.keep_duration is None:
        return
    while True:
        for entry in await trio.to_thread.run_sync(collect, state_dir, policy):
            if entry.count or entry.kept_because:
                report(entry)
        await trio.sleep(GC_INTERVAL_SECONDS)
