"""``du`` and ``prune``: the local state that outlives commands.

The measuring and freeing are plain functions (``measure_usage``, ``prune_state``)
returning what they found, rendered to lines by ``usage_lines`` / ``prune_lines``: the
daemon's ``DiskUsage`` and ``Prune`` RPCs run the very same code on its state
directory, and ``--builder`` renders their answers with the same lines.
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from lazybuild.cli.options import size, state_dir
from lazybuild.progress.lines import human_size


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    du = commands.add_parser("du", help="show the disk space lazybuild's caches use")
    _add_builder_argument(du)
    du.set_defaults(run=run_du)
    prune = commands.add_parser("prune", help="free cache space")
    prune.add_argument(
        "--keep-storage",
        type=size,
        default=0,
        metavar="SIZE",
        help="keep the most recently used chunks up to SIZE (default: remove all)",
    )
    _add_builder_argument(prune)
    prune.set_defaults(run=run_prune)


def _add_builder_argument(parser: argparse.ArgumentParser) -> None:
    from lazybuild.daemon.client import add_builder_argument

    add_builder_argument(parser)


@dataclass(frozen=True)
class UsageEntry:
    """One line of ``du``: ``count`` things of kind ``unit`` taking ``size`` bytes."""

    label: str
    count: int
    unit: str
    size: int


@dataclass(frozen=True)
class PruneEntry:
    """One line of ``prune``: ``count`` ``label`` freed, ``size`` bytes; or, with
    ``kept_because``, the part ``label`` kept and why."""

    label: str
    count: int = 0
    size: int = 0
    kept_because: str = ""


def _tree_size(root: Path) -> tuple[int, int]:
    """(files, bytes) below ``root``, counting each hardlinked inode once."""
    seen: set[tuple[int, int]] = set()
    files = total = 0
    if not root.is_dir():
        return 0, 0
    for path in root.rglob("*"):
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        if (info.st_dev, info.st_ino) in seen:
            continue
        seen.add((info.st_dev, info.st_ino))
        files += 1
        total += info.st_blocks * 512
    return files, total


def _mounts_alive(root: Path) -> bool:
    """Whether any lazybuild mount is in use (after forgetting those of killed runs)."""
    from lazybuild.lazyfs.stale import cleanup_stale_mounts, records_dir

    cleanup_stale_mounts(root)
    return any(records_dir(root).glob("*.json"))


def measure_usage(root: Path) -> list[UsageEntry]:
    """What the state directory ``root`` holds, part by part (blocking: a thread's work)."""
    from lazybuild.cache.chunkcache import ChunkCache
    from lazybuild.lazyfs import imagecache, whole_images

    chunks = ChunkCache(root / "cache").usage()
    images = imagecache.usage(root)
    whole = whole_images.usage(root)
    entries = [
        UsageEntry("chunk cache", chunks.entries, "chunks", chunks.bytes),
        UsageEntry("EROFS images", images.entries, "images", images.bytes),
        UsageEntry("whole layers", whole.entries, "images", whole.bytes),
    ]
    for name, label in (
        ("unpacked", "unpacked layers"),
        ("tocs", "layer TOCs"),
        ("build", "build cache"),
    ):
        files, total = _tree_size(root / name)
        entries.append(UsageEntry(label, files, "files", total))
    return entries


def usage_lines(root: str, entries: Iterable[UsageEntry]) -> list[str]:
    lines = [f"state directory  {root}"]
    for entry in entries:
        lines.append(
            f"{entry.label:<16} {entry.count:>8} {entry.unit:<7} {human_size(entry.size):>10}"
        )
    return lines


def prune_state(
    root: Path, keep_bytes: int, report: Callable[[PruneEntry], None] = lambda entry: None
) -> list[PruneEntry]:
    """Frees what the state directory ``root`` holds beyond ``keep_bytes`` (0: all that
    is not in use); ``report`` hears of each part as it is done (blocking: a thread's
    work)."""
    from lazybuild.cache.chunkcache import ChunkCache
    from lazybuild.lazyfs import imagecache, whole_images

    done: list[PruneEntry] = []

    def note(entry: PruneEntry) -> None:
        done.append(entry)
        report(entry)

    freed = ChunkCache(root / "cache").prune(keep_bytes)
    note(PruneEntry("chunks", freed.entries, freed.bytes))
    # Mounted ones too: a mount holds its image file open.
    whole = whole_images.prune(root, keep_bytes)
    note(PruneEntry("whole layer images", whole.entries, whole.bytes))
    # Removed even while layers are mounted: a filesystem process keeps the images it
    # serves in memory and never reads their entries again.
    if keep_bytes == 0 and (root / imagecache.IMAGE_CACHE_DIR).is_dir():
        images = imagecache.remove_all(root)
        note(PruneEntry("EROFS images", images.entries, images.bytes))
    tocs = root / "tocs"
    if keep_bytes == 0 and tocs.is_dir():
        # Also what says a layer was used here before (and is worth fetching whole when
        # built on again): after a prune, the next build starts from nothing. A running
        # filesystem process holds the TOCs it serves in memory.
        files, total = _tree_size(tocs)
        shutil.rmtree(tocs, ignore_errors=True)
        note(PruneEntry("layer TOCs", files, total))

    # Unpacked layers may be lower dirs of live overlays: only removed idle. (Skeletons
    # are what lazybuild before EROFS layers stacked over lazy ones, left in old states.)
    for name, label in (("unpacked", "unpacked layers"), ("skeletons", "old layer skeletons")):
        directory = root / name
        if keep_bytes != 0 or not directory.is_dir():
            continue
        if _mounts_alive(root):
            note(PruneEntry(label, kept_because="lazybuild mounts are in use"))
        else:
            files, total = _tree_size(directory)
            shutil.rmtree(directory)
            note(PruneEntry(f"files of {label}", files, total))
    build = root / "build"
    if keep_bytes == 0 and build.is_dir():
        # Like `docker builder prune -a`: step layers, their blobs, cache records, cache
        # mounts and remembered base images; never under a running build.
        if _build_running(build):
            note(PruneEntry("build cache", kept_because="a build is running"))
        else:
            files, total = _tree_size(build)
            shutil.rmtree(build)
            note(PruneEntry("files of build cache", files, total))
    return done


def prune_line(entry: PruneEntry) -> str:
    if entry.kept_because:
        return f"{entry.label} kept: {entry.kept_because}"
    return f"freed {entry.count} {entry.label}, {human_size(entry.size)}"


async def run_du(args: argparse.Namespace) -> int:
    import trio

    if args.builder is not None:
        from lazybuild.daemon.client import remote_usage

        root, entries = await trio.to_thread.run_sync(remote_usage, args.builder)
    else:
        local = state_dir(args)
        root, entries = str(local), await trio.to_thread.run_sync(measure_usage, local)
    for line in usage_lines(root, entries):
        print(line)
    return 0


async def run_prune(args: argparse.Namespace) -> int:
    import trio

    def show(entry: PruneEntry) -> None:
        print(prune_line(entry))

    if args.builder is not None:
        from lazybuild.daemon.client import remote_prune

        for entry in await trio.to_thread.run_sync(remote_prune, args.builder, args.keep_storage):
            show(entry)
        return 0
    # Each part is printed as it is done, as before: a prune of a big cache takes a while.
    await trio.to_thread.run_sync(prune_state, state_dir(args), args.keep_storage, show)
    return 0


def _build_running(build: Path) -> bool:
    from lazybuild.worker.layerstore import build_in_use

    return build_in_use(build.parent)
