"""The symlinks of a stack of lazy layers, as a local directory.

Every FUSE request costs a round trip through the filesystem process (about 120 µs),
and the kernel caches a FUSE symlink's target only when the filesystem asks for it at
init, which pyfuse3 cannot. A toolchain reached through symlinked directories (Debian's
``/usr/lib/go-1.19/src`` points into ``/usr/share``) pays a readlink on every path it
opens: 10,000 of them for a ``go build`` of a small program.

The skeleton holds, on local disk, the symlinks that the merged view of a stack of
layers shows and the directories that hold them, with their owners, modes and times;
regular files, devices and other directories stay out. Stacked by overlayfs directly
above those layers it changes nothing that is seen (a directory's attributes come from
the top-most layer that has it, and it merges with those below; a symlink there
shadows the same symlink below), but symlinks resolve on local disk. It is derived
from the TOCs alone, so it needs no layer content, and it is immutable: one per stack
of layer digests, shared by every build that mounts that stack.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import shutil
import subprocess
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lazybuild.estargz.index import LayerIndex, Node
from lazybuild.lazyfs.inodes import present_directory


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


def skeleton_name(digests: Sequence[str]) -> str:
    """The directory name of the skeleton of these layers (bottom first)."""
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()[:32]


def write_skeleton(archive: bytes, directory: Path) -> None:
    """Create the skeleton ``archive`` (``skeleton_tar``) holds at ``directory`` (which
    must not exist): written next to it first and renamed, so a reader never sees half
    of one; when another process got there first, its copy is kept. GNU tar writes it:
    small file system calls from a thread of the filesystem process would each wait
    for the interpreter lock its busy event loop holds."""
    staging = directory.parent / f".{directory.name}.{secrets.token_hex(4)}"
    directory.parent.mkdir(parents=True, exist_ok=True)
    try:
        staging.mkdir()
        extracted = subprocess.run(
            [*_TAR_EXTRACT, str(staging)], input=archive, capture_output=True, check=False
        )
        if extracted.returncode != 0:
            problem = extracted.stderr.decode(errors="replace").strip().splitlines()
            raise OSError(f"tar could not write the skeleton: {' '.join(problem[-2:])}")
        try:
            staging.rename(directory)
        except OSError:
            if not directory.is_dir():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


# Owners by number (the image's, not this machine's names), modes with set-id bits.
_TAR_EXTRACT = ("tar", "-x", "--numeric-owner", "--same-owner", "--same-permissions", "-C")


def skeleton_tar(root: MergedEntry) -> bytes | None:
    """The symlinks of ``root`` that lead to directories, and the directories that hold
    them, as a tar stream, parents first. Those are the ones path lookups go through
    again and again (``/lib`` on every library load, a toolchain's ``src``); a symlink
    left out is read from the layer as before, and every entry created costs (up to a
    millisecond on some disks). None when there is no such symlink. Raises OSError when
    one has xattrs: the skeleton would lose them and hide the layer's."""
    chosen = _chosen(root, root, ".", ())
    if not chosen:
        return None
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for path, entry in chosen:
            _add(archive, entry, path)
    return out.getvalue()


def _chosen(
    root: MergedEntry, entry: MergedEntry, path: str, parts: tuple[str, ...]
) -> list[tuple[str, MergedEntry]]:
    """``entry`` (a directory at ``parts``) and what below it holds such symlinks, parents
    first; nothing when nothing does."""
    inside: list[tuple[str, MergedEntry]] = []
    for name, child in (entry.children or {}).items():
        if child.children is not None:
            inside += _chosen(root, child, f"{path}/{name}", (*parts, name))
        elif child.node.type == "symlink" and _leads_to_directory(root, parts, child):
            inside.append((f"{path}/{name}", child))
    return [(path, entry), *inside] if inside else []


_MAX_HOPS = 16


def _leads_to_directory(root: MergedEntry, parent: tuple[str, ...], link: MergedEntry) -> bool:
    """Whether ``link`` (in directory ``parent``) resolves to a directory of ``root``."""
    target = link.node.link_name
    pending = [*(() if target.startswith("/") else parent), *target.split("/")]
    current: list[MergedEntry] = [root]  # the directories walked, root first
    hops = 0
    while pending:
        name = pending.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            if len(current) > 1:
                current.pop()
            continue
        child = (current[-1].children or {}).get(name)
        if child is None:
            return False
        if child.node.type == "symlink":
            hops += 1
            if hops > _MAX_HOPS:
                return False
            inner = child.node.link_name
            if inner.startswith("/"):
                current = [root]
            pending = [*inner.split("/"), *pending]
            continue
        if child.children is None:
            return False
        current.append(child)
    return True


def _add(archive: tarfile.TarFile, entry: MergedEntry, path: str) -> None:
    node = entry.node
    if node.xattrs:
        raise OSError(f"/{path.removeprefix('./')} has xattrs; no skeleton")
    info = tarfile.TarInfo(path)
    info.type = tarfile.DIRTYPE if entry.children is not None else tarfile.SYMTYPE
    info.linkname = node.link_name if node.type == "symlink" else ""
    info.mode, info.uid, info.gid = node.mode, node.uid, node.gid
    info.mtime = node.mtime or 0
    archive.addfile(info)
