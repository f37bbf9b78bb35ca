"""Where the layers a build makes are kept, under ``<state>/build``.

``layers/<id>``    a committed layer's tree (overlayfs form); never changed afterwards
``staging/<owner>-<id>``   a step's upper/work/merged directories while it runs (and,
                  in ``scratch``, its bundle; its secrets on a tmpfs of their own)
``blobs/``         eStargz blobs of exported layers (the exporter's)

A step works in staging and commits by renaming its upper directory into ``layers``, so
a layer directory either is complete or does not exist; a crash leaves only staging
directories, which the next build removes.
"""

from __future__ import annotations

import contextlib
import fcntl
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lazybuild.snapshot.mountinfo import mounts_under
from lazybuild.snapshot.overlay import unmount
from lazybuild.state.processes import ProcessId, owner_alive
from lazybuild.worker.layers import LocalLayer

_LOCK_NAME = ".in-use"


@dataclass(frozen=True)
class StagingArea:
    """Directories for one step: ``upper`` becomes the layer; ``work`` is overlayfs's;
    ``merged`` is where the step's root filesystem is mounted; ``scratch`` is for files
    the step needs besides (its bundle, /etc files, secrets)."""

    root: Path

    @property
    def upper(self) -> Path:
        return self.root / "upper"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def merged(self) -> Path:
        return self.root / "merged"

    @property
    def scratch(self) -> Path:
        return self.root / "scratch"


class LayerStore:
    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "build"
        self.layers_dir = self.root / "layers"
        self.staging_dir = self.root / "staging"
        self.blobs_dir = self.root / "blobs"
        for directory in (self.layers_dir, self.staging_dir, self.blobs_dir):
            directory.mkdir(parents=True, exist_ok=True)

    def layer(self, layer_id: str) -> LocalLayer | None:
        """The committed layer ``layer_id``, or ``None`` when it is gone (pruned)."""
        path = self.layers_dir / layer_id
        return LocalLayer(layer_id, path) if path.is_dir() else None

    def has(self, layer: LocalLayer) -> bool:
        return layer.path == self.layers_dir / layer.id and layer.path.is_dir()

    @contextlib.contextmanager
    def staging(self) -> Iterator[StagingArea]:
        """A fresh staging area, removed on the way out (after ``commit`` took its upper)."""
        # Named by this process (pid and start time), so cleanup can tell a killed
        # build's areas from a live one's, even once its pid is reused.
        area = StagingArea(self.staging_dir / f"{ProcessId.current().tag}-{secrets.token_hex(8)}")
        try:
            for directory in (area.upper, area.work, area.merged, area.scratch):
                directory.mkdir(parents=True)
            yield area
        finally:
            _remove_tree(area.root)

    def commit(self, area: StagingArea) -> LocalLayer:
        """Make ``area``'s upper directory a layer (the area must be unmounted)."""
        layer_id = secrets.token_hex(16)
        target = self.layers_dir / layer_id
        area.upper.rename(target)
        return LocalLayer(layer_id, target)

    @contextlib.contextmanager
    def in_use(self) -> Iterator[None]:
        """Held by a running build (a shared lock), so ``prune`` leaves the store alone."""
        with open(self.root / _LOCK_NAME, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def staging_file(self, kind: str, suffix: str = "") -> Path:
        """A new path in staging for a temporary file, named after its owner so that
        another build's ``clean_staging`` leaves it alone while this process runs."""
        return self.staging_dir / f"{ProcessId.current().tag}-{kind}-{secrets.token_hex(8)}{suffix}"

    def empty_directory(self) -> Path:
        """A directory that stays empty: the lower layer of a filesystem built on scratch."""
        path = self.root / "empty"
        path.mkdir(exist_ok=True)
        return path

    def clean_staging(self) -> None:
        """Remove staging areas that builds which are no longer running left behind."""
        for area in self.staging_dir.iterdir():
            if not owner_alive(area.name):
                _remove_tree(area)


def build_in_use(state_dir: Path) -> bool:
    """Whether a build holds the store of ``state_dir`` (see ``LayerStore.in_use``)."""
    lock_path = state_dir / "build" / _LOCK_NAME
    if not lock_path.exists():
        return False
    with open(lock_path, "a+b") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
        return False


def _remove_tree(path: Path) -> None:
    # Never delete through a mount: anything still mounted below is unmounted first.
    for mountpoint in sorted(mounts_under(path), reverse=True):
        with contextlib.suppress(OSError):
            unmount(mountpoint, lazy=True)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
