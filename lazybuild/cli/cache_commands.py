"""``du`` and ``prune``: the local state that outlives commands."""

from __future__ import annotations

import argparse
import functools
import shutil
from pathlib import Path

import trio

from lazybuild.cli.options import size, state_dir
from lazybuild.progress import human_size


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    du = commands.add_parser("du", help="show the disk space lazybuild's caches use")
    du.set_defaults(run=run_du)
    prune = commands.add_parser("prune", help="free cache space")
    prune.add_argument(
        "--keep-storage",
        type=size,
        default=0,
        metavar="SIZE",
        help="keep the most recently used chunks up to SIZE (default: remove all)",
    )
    prune.set_defaults(run=run_prune)


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


async def run_du(args: argparse.Namespace) -> int:
    from lazybuild.cache.chunkcache import ChunkCache
    from lazybuild.lazyfs import imagecache, whole_images

    root = state_dir(args)
    cache = await trio.to_thread.run_sync(ChunkCache, root / "cache")
    usage = await trio.to_thread.run_sync(cache.usage)
    images = await trio.to_thread.run_sync(imagecache.usage, root)
    whole = await trio.to_thread.run_sync(whole_images.usage, root)
    print(f"state directory  {root}")
    print(f"chunk cache      {usage.entries:>8} chunks  {human_size(usage.bytes):>10}")
    print(f"EROFS images     {images.entries:>8} images  {human_size(images.bytes):>10}")
    print(f"whole layers     {whole.entries:>8} images  {human_size(whole.bytes):>10}")
    for name, label in (
        ("unpacked", "unpacked layers"),
        ("tocs", "layer TOCs"),
        ("build", "build cache"),
    ):
        files, total = await trio.to_thread.run_sync(_tree_size, root / name)
        print(f"{label:<16} {files:>8} files   {human_size(total):>10}")
    return 0


async def run_prune(args: argparse.Namespace) -> int:
    from lazybuild.cache.chunkcache import ChunkCache
    from lazybuild.lazyfs import imagecache, whole_images

    root = state_dir(args)
    cache = await trio.to_thread.run_sync(ChunkCache, root / "cache")
    freed = await trio.to_thread.run_sync(cache.prune, args.keep_storage)
    print(f"freed {freed.entries} chunks, {human_size(freed.bytes)}")
    # Mounted ones too: a mount holds its image file open.
    whole = await trio.to_thread.run_sync(whole_images.prune, root, args.keep_storage)
    print(f"freed {whole.entries} whole layer images, {human_size(whole.bytes)}")
    # Removed even while layers are mounted: a filesystem process keeps the images it
    # serves in memory and never reads their entries again.
    if args.keep_storage == 0 and (root / imagecache.IMAGE_CACHE_DIR).is_dir():
        images = await trio.to_thread.run_sync(imagecache.remove_all, root)
        print(f"freed {images.entries} EROFS images, {human_size(images.bytes)}")
    tocs = root / "tocs"
    if args.keep_storage == 0 and tocs.is_dir():
        # Also what says a layer was used here before (and is worth fetching whole when
        # built on again): after a prune, the next build starts from nothing. A running
        # filesystem process holds the TOCs it serves in memory.
        files, total = await trio.to_thread.run_sync(_tree_size, tocs)
        await trio.to_thread.run_sync(functools.partial(shutil.rmtree, tocs, ignore_errors=True))
        print(f"freed {files} layer TOCs, {human_size(total)}")

    # Unpacked layers may be lower dirs of live overlays: only removed idle. (Skeletons
    # are what lazybuild before EROFS layers stacked over lazy ones, left in old states.)
    for name, label in (("unpacked", "unpacked layers"), ("skeletons", "old layer skeletons")):
        directory = root / name
        if args.keep_storage != 0 or not directory.is_dir():
            continue
        if await trio.to_thread.run_sync(_mounts_alive, root):
            print(f"{label} kept: lazybuild mounts are in use")
        else:
            files, total = await trio.to_thread.run_sync(_tree_size, directory)
            await trio.to_thread.run_sync(shutil.rmtree, directory)
            print(f"freed {files} files of {label}, {human_size(total)}")
    build = root / "build"
    if args.keep_storage == 0 and build.is_dir():
        # Like `docker builder prune -a`: step layers, their blobs, cache records, cache
        # mounts and remembered base images; never under a running build.
        if await trio.to_thread.run_sync(_build_running, build):
            print("build cache kept: a build is running")
        else:
            files, total = await trio.to_thread.run_sync(_tree_size, build)
            await trio.to_thread.run_sync(shutil.rmtree, build)
            print(f"freed {files} files of build cache, {human_size(total)}")
    return 0


def _build_running(build: Path) -> bool:
    from lazybuild.worker.layerstore import build_in_use

    return build_in_use(build.parent)
