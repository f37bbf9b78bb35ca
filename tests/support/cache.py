"""A directory cache shared by test sessions: build once, atomically, under a lock.

Entries are built in a scratch directory and renamed into place only when complete,
so concurrent sessions build each entry once and a killed build never leaves a
directory that looks finished.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.support import procs

DEFAULT_CACHE = Path("/var/cache/lazybuild-tests")


def cache_dir() -> Path:
    path = Path(os.environ.get("LAZYBUILD_TEST_CACHE", str(DEFAULT_CACHE)))
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def remove_tree(path: Path) -> None:
    # A killed debootstrap can leave /proc or /sys mounted inside its target.
    procs.unmount_all_under(path)
    shutil.rmtree(path, ignore_errors=True)


def cached_dir(key: str, build: Callable[[Path], None]) -> Path:
    """The cache entry `key`, calling `build(scratch_dir)` first if it does not exist.

    `build` receives a path that does not exist yet and must create it.
    """
    cache = cache_dir()
    final = cache / key
    if final.is_dir():
        return final
    with _locked(cache / f"{key}.lock"):
        if final.is_dir():  # another session built it while we waited for the lock
            return final
        for stale in cache.glob(f"{key}.partial-*"):
            remove_tree(stale)
        scratch = cache / f"{key}.partial-{os.getpid()}"
        try:
            build(scratch)
            scratch.rename(final)
        except BaseException:
            remove_tree(scratch)
            raise
    return final
