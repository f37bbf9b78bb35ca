"""Which layer each recorded file comes from: the top-most layer that has it.

A path of the merged root filesystem is served by the highest layer that has an entry
for it, unless a layer in between hides the lower ones: a whiteout of the path or of
one of its parents, an opaque parent directory, or a parent that is not a directory
there. Layers are described by what they contain, in either notation:

* ``TarLayerContents``: tar (OCI) notation, from a layer's tar entries or its eStargz
  TOC: ``.wh.<name>`` whiteouts, ``.wh..wh..opq`` opaque markers, parents implied;
* ``DirectoryLayerContents``: overlayfs notation, a layer directory (a lazily mounted
  layer of the lazy filesystem, an unpacked or built layer): 0/0 character devices
  for whiteouts, ``trusted.overlay.opaque=y`` on opaque directories. Nothing is read
  but metadata, and symlinks are never followed.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, Protocol

from lazybuild.errors import FormatError
from lazybuild.estargz.index import clean_name
from lazybuild.estargz.toc import (
    NO_PREFETCH_LANDMARK,
    PREFETCH_FILE_MAX_BYTES,
    PREFETCH_LANDMARK,
    TOC,
    TOC_TAR_NAME,
)
from lazybuild.profile.record import ReadRanges, RecordEntry
from lazybuild.progress.lines import human_size
from lazybuild.untar import tarreader
from lazybuild.untar.tarheader import TarFormatError
from lazybuild.untar.tarreader import TarReader

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
WHITEOUT_XATTR = "trusted.overlay.whiteout"
_ESTARGZ_ARTEFACTS = frozenset({TOC_TAR_NAME, PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK})

Visibility = Literal["present", "hidden", "absent"]
"""What a layer says about a path: it has it; it hides it (and everything below) in
lower layers; or neither, so the layers below decide."""


class LayerContents(Protocol):
    def lookup(self, path: str) -> Visibility:
        """``path``: cleaned, relative to the layer root, not empty."""
        ...


class SizedLayerContents(LayerContents, Protocol):
    def size(self, path: str) -> int:
        """The size of the file at ``path`` in this layer (0 when it has none)."""
        ...


def _ancestors(path: str) -> list[str]:
    """Proper ancestors of ``path``, top-most first: ``a/b/c`` -> ``a``, ``a/b``."""
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _whiteout_name(path: str) -> str:
    head, tail = posixpath.split(path)
    return posixpath.join(head, WHITEOUT_PREFIX + tail)


class TarLayerContents:
    """A layer given as its tar entries: name -> whether the entry is a directory; and
    the sizes of its regular files, where known."""

    def __init__(self, entries: Mapping[str, bool], sizes: Mapping[str, int] | None = None) -> None:
        self._sizes = {clean_name(name): size for name, size in (sizes or {}).items()}
        self._entries: dict[str, bool] = {}
        self._whiteouts: set[str] = set()
        self._opaque: set[str] = set()
        for name, is_dir in entries.items():
            key = clean_name(name)
            base = posixpath.basename(key)
            if not key or key in _ESTARGZ_ARTEFACTS:
                continue
            if base == OPAQUE_MARKER:
                self._opaque.add(posixpath.dirname(key))
            elif base.startswith(WHITEOUT_PREFIX):
                hidden = posixpath.join(posixpath.dirname(key), base[len(WHITEOUT_PREFIX) :])
                self._whiteouts.add(hidden)
            else:
                self._entries[key] = is_dir

    @classmethod
    def from_names(cls, names: Iterable[str], directories: Iterable[str] = ()) -> TarLayerContents:
        dirs = {clean_name(d) for d in directories}
        return cls({clean_name(n): clean_name(n) in dirs for n in names})

    @classmethod
    def from_tar(cls, stream: BinaryIO, where: str = "layer") -> TarLayerContents:
        """From an uncompressed tar stream (read once, content skipped)."""
        entries: dict[str, bool] = {}
        sizes: dict[str, int] = {}
        try:
            for member in TarReader(stream):
                key = clean_name(member.name)
                entries.pop(key, None)  # a later duplicate replaces the earlier entry
                entries[key] = member.kind == tarreader.DIRECTORY
                sizes[key] = member.size if member.kind == tarreader.FILE else 0
        except TarFormatError as exc:
            raise FormatError(f"{where}: {exc}") from None
        return cls(entries, sizes)

    @classmethod
    def from_toc(cls, toc: TOC) -> TarLayerContents:
        entries: dict[str, bool] = {}
        sizes: dict[str, int] = {}
        for entry in toc.entries:
            if entry.type != "chunk":
                key = clean_name(entry.name)
                entries.pop(key, None)
                entries[key] = entry.type == "dir"
                sizes[key] = entry.size if entry.type == "reg" else 0
        return cls(entries, sizes)

    def size(self, path: str) -> int:
        """The size of the regular file at ``path`` (0 when unknown or not a file)."""
        return self._sizes.get(path, 0)

    @property
    def paths(self) -> frozenset[str]:
        """Every path the layer has an entry for (whiteout and opaque markers excluded)."""
        return frozenset(self._entries)

    def lookup(self, path: str) -> Visibility:
        opaque_parent = False
        for ancestor in _ancestors(path):
            if ancestor in self._whiteouts:
                return "hidden"
            if self._entries.get(ancestor) is False:  # a file where lower layers have a dir
                return "hidden"
            opaque_parent = opaque_parent or ancestor in self._opaque
        if path in self._entries:
            return "present"
        if path in self._whiteouts or opaque_parent:
            return "hidden"
        return "absent"


class DirectoryLayerContents:
    """A layer directory in overlayfs notation."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def lookup(self, path: str) -> Visibility:
        opaque_parent = False
        for ancestor in _ancestors(path):
            info = self._lstat(ancestor)
            if info is None:
                return "absent"  # the layer has nothing under here, and hides nothing
            if self._is_whiteout(ancestor, info) or not stat.S_ISDIR(info.st_mode):
                return "hidden"
            opaque_parent = opaque_parent or self._xattr(ancestor, OPAQUE_XATTR) == b"y"
        info = self._lstat(path)
        if info is not None:
            return "hidden" if self._is_whiteout(path, info) else "present"
        return "hidden" if opaque_parent else "absent"

    def size(self, path: str) -> int:
        """The size of the entry at ``path`` (0 when there is none)."""
        try:
            return os.lstat(self.root / path).st_size
        except OSError:
            return 0

    def _lstat(self, path: str) -> os.stat_result | None:
        try:
            return os.lstat(self.root / path)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _is_whiteout(self, path: str, info: os.stat_result) -> bool:
        if stat.S_ISCHR(info.st_mode) and info.st_rdev == 0:
            return True
        return stat.S_ISREG(info.st_mode) and self._xattr(path, WHITEOUT_XATTR) is not None

    def _xattr(self, path: str, name: str) -> bytes | None:
        try:
            return os.getxattr(self.root / path, name, follow_symlinks=False)
        except OSError:
            return None


def prefetchable(
    paths: Sequence[str], size: Callable[[str], int], left_out: list[str]
) -> tuple[str, ...]:
    """``paths`` without files over ``PREFETCH_FILE_MAX_BYTES`` (added to ``left_out``):
    a prefetch region holds whole files."""
    kept = []
    for path in paths:
        if size(path) > PREFETCH_FILE_MAX_BYTES:
            left_out.append(path)
        else:
            kept.append(path)
    return tuple(kept)


def left_out_note(left_out: Sequence[str]) -> str:
    """What ``prefetchable`` left out, for the progress line."""
    more = ", ..." if len(left_out) > 3 else ""
    return (
        f"{len(left_out)} file(s) over {human_size(PREFETCH_FILE_MAX_BYTES)} left to "
        f"on-demand reads ({', '.join(left_out[:3])}{more})"
    )


@dataclass(frozen=True)
class LayerAssignment:
    """Recorded files grouped by layer; each group in first-access order."""

    files: tuple[tuple[str, int], ...]  # (path, layer index), in first-access order
    per_layer: tuple[tuple[str, ...], ...]  # index 0 is the bottom layer
    unassigned: tuple[str, ...]  # in no layer (written by the workload) or hidden

    def entries(
        self,
        manifest_digest: str | None = None,
        read_ranges: Mapping[str, ReadRanges] | None = None,
    ) -> list[RecordEntry]:
        """The record of these files (ctr-remote's form: only files found in a layer),
        with the places read of big files by path."""
        ranges = read_ranges or {}
        return [
            RecordEntry(path, manifest_digest, index, ranges.get(path, ()))
            for path, index in self.files
        ]


def assign_to_layers(paths: Iterable[str], layers: Sequence[LayerContents]) -> LayerAssignment:
    """Map each path (first-access order; repeats ignored) to the top-most layer that has
    it; ``layers`` is bottom first, as in a manifest."""
    files: list[tuple[str, int]] = []
    per_layer: list[list[str]] = [[] for _ in layers]
    unassigned: list[str] = []
    for path in dict.fromkeys(clean_name(p) for p in paths):
        if not path:
            continue
        index = _top_most(path, layers)
        if index is None:
            unassigned.append(path)
        else:
            files.append((path, index))
            per_layer[index].append(path)
    return LayerAssignment(tuple(files), tuple(tuple(p) for p in per_layer), tuple(unassigned))


def _top_most(path: str, layers: Sequence[LayerContents]) -> int | None:
    for index in range(len(layers) - 1, -1, -1):
        visibility = layers[index].lookup(path)
        if visibility == "present":
            return index
        if visibility == "hidden":
            return None
    return None


@dataclass(frozen=True)
class LayerPlan:
    """Recorded files by layer, and what of them each layer puts first."""

    assignment: LayerAssignment
    first: tuple[tuple[str, ...], ...]  # by layer, bottom first: what a prefetch region takes
    left_out: tuple[str, ...]  # read but too big to prefetch whole (``prefetchable``)


def plan_layers(paths: Iterable[str], layers: Sequence[SizedLayerContents]) -> LayerPlan:
    """Each recorded path assigned to the layer that serves it (``assign_to_layers``),
    and each layer's share cut to what fits a prefetch region. Blocking: a directory
    layer is looked up on disk."""
    assignment = assign_to_layers(paths, layers)
    left_out: list[str] = []
    first = tuple(
        prefetchable(assignment.per_layer[position], layer.size, left_out)
        for position, layer in enumerate(layers)
    )
    return LayerPlan(assignment, first, tuple(left_out))
