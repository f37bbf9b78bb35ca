"""The directories and symlinks of a stack of lazy layers, as a local directory.

Every FUSE request costs a round trip through the filesystem process (about 120 µs),
and the kernel caches a FUSE symlink's target only when the filesystem asks for it at
init, which pyfuse3 cannot. A toolchain reached through symlinked directories (Debian's
``/usr/lib/go-1.19/src`` points into ``/usr/share``) pays a readlink on every path it
opens: 10,000 of them for a ``go build`` of a small program.

The skeleton holds, on local disk, the directories and symlinks that the merged view
of a stack of layers shows, with their owners, modes, times and xattrs; regular files
and devices stay out. Stacked by overlayfs directly above those layers it changes
nothing that is seen (a directory's attributes come from the top-most layer that has
it, and it merges with those below; a symlink there shadows the same symlink below),
but symlinks resolve and directories stat on local disk. It is derived from the TOCs
alone, so it needs no layer content, and it is immutable: one per stack of layer
digests, shared by every build that mounts that stack.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from lazybuild.estargz.index import LayerIndex, Node
from lazybuild.lazyfs.inodes import present_directory

# xattrs overlayfs reads as its own instructions; a layer's are presented otherwise
# (whiteouts, opaque markers) and must not reach the skeleton as such.
_OVERLAY_XATTR_PREFIX = "trusted.overlay."


@dataclass
class MergedEntry:
    """A path of the merged view: the top-most layer's node, and a directory's entries."""

    node: Node
    children: dict[str, MergedEntry] | None = None  # None: not a directory


def merged_view(indexes: Sequence[LayerIndex]) -> MergedEntry:
    """What overlayfs shows of ``indexes`` (bottom first): whiteouts remove, opaque
    directories hide what is below, the top-most entry of a path wins."""
    root = MergedEntry(indexes[0].root, {})
    for index in indexes:
        _apply(root, index.root, at_layer_root=True)
    return root


def _apply(merged: MergedEntry, directory: Node, *, at_layer_root: bool) -> None:
    assert merged.children is not None
    listing = present_directory(directory, at_layer_root=at_layer_root)
    merged.node = directory
    if listing.opaque:
        merged.children.clear()
    for encoded, child in listing.entries:
        name = os.fsdecode(encoded)
        if child.type == "char" and child.dev_major == 0 and child.dev_minor == 0:
            merged.children.pop(name, None)  # a whiteout
        elif child.type == "dir":
            below = merged.children.get(name)
            if below is None or below.children is None:
                below = merged.children[name] = MergedEntry(child, {})
            _apply(below, child, at_layer_root=False)
        else:
            merged.children[name] = MergedEntry(child)


def count_symlinks(root: MergedEntry) -> int:
    return sum(1 for _, entry in _walk(root, "") if entry.node.type == "symlink")


def _walk(entry: MergedEntry, path: str) -> Iterator[tuple[str, MergedEntry]]:
    yield path, entry
    for name, child in (entry.children or {}).items():
        yield from _walk(child, f"{path}/{name}" if path else name)


def skeleton_name(digests: Sequence[str]) -> str:
    """The directory name of the skeleton of these layers (bottom first)."""
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()[:32]


def write_skeleton(root: MergedEntry, directory: Path) -> None:
    """Create the skeleton of ``root`` at ``directory`` (which must not exist): written
    next to it first and renamed, so a reader never sees half of one; when another
    process got there first, its copy is kept."""
    staging = directory.parent / f".{directory.name}.{secrets.token_hex(4)}"
    directory.parent.mkdir(parents=True, exist_ok=True)
    try:
        staging.mkdir()
        _write_directory(root, staging)
        try:
            staging.rename(directory)
        except OSError:
            if not directory.is_dir():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _write_directory(entry: MergedEntry, path: Path) -> None:
    for name, child in (entry.children or {}).items():
        target = path / name
        if child.children is not None:
            target.mkdir()
            _write_directory(child, target)
        elif child.node.type == "symlink":
            os.symlink(child.node.link_name, target)
            _set_xattrs(child.node, target)
            _set_owner_and_time(child.node, target)
    # After the children: creating them changes the directory's time.
    node = entry.node
    os.chown(path, node.uid, node.gid)
    os.chmod(path, node.mode)  # after chown, which clears set-id bits
    _set_xattrs(node, path)
    _set_owner_and_time(node, path)


def _set_xattrs(node: Node, path: Path) -> None:
    # An xattr the local filesystem refuses fails the skeleton (and the caller goes
    # without one): a directory missing one would hide the layer's.
    for name, value in node.xattrs.items():
        if name.startswith(_OVERLAY_XATTR_PREFIX):
            raise OSError(f"{path}: an overlayfs xattr ({name}) cannot be copied")
        os.setxattr(path, name, value, follow_symlinks=False)


def _set_owner_and_time(node: Node, path: Path) -> None:
    os.chown(path, node.uid, node.gid, follow_symlinks=False)
    seconds = node.mtime or 0
    os.utime(path, ns=(seconds * 1_000_000_000,) * 2, follow_symlinks=False)
