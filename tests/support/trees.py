"""What a layer or a root filesystem holds, as comparable facts per path.

Used to prove that a conversion, a lazy mount or a container's root filesystem holds
exactly what the original layers held: type, permission bits, owner, size, content
hash, link target, device numbers, xattrs, mtime to the second, and which names share
one inode.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import stat
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

from lazybuild.estargz.footer import FOOTER_SIZE
from lazybuild.estargz.index import Node
from lazybuild.estargz.layerformat import ZSTD_MAGIC, LayerFormat, detect_format
from lazybuild.estargz.reader import decompress_chunk, parse_layer

# Entries an eStargz layer adds that are not part of the image's file tree.
ESTARGZ_ARTEFACTS = frozenset({"stargz.index.json", ".prefetch.landmark", ".no.prefetch.landmark"})


@dataclass(frozen=True)
class Facts:
    type: str  # dir, reg, symlink, char, block, fifo
    mode: int  # permission bits (with setuid/setgid/sticky)
    uid: int
    gid: int
    size: int
    sha256: str
    link: str
    device: tuple[int, int]
    xattrs: tuple[tuple[str, bytes], ...]
    mtime: int


@dataclass(frozen=True)
class Tree:
    entries: dict[str, Facts]
    # Every group of two or more names that share one inode.
    hardlinks: frozenset[frozenset[str]]


def _tar_type(member: tarfile.TarInfo) -> str:
    if member.isdir():
        return "dir"
    if member.issym():
        return "symlink"
    if member.ischr():
        return "char"
    if member.isblk():
        return "block"
    if member.isfifo():
        return "fifo"
    return "reg"


def _clean(name: str) -> str:
    return os.path.normpath("/" + name).lstrip("/")


def tar_tree(stream: BinaryIO) -> Tree:
    """Facts of every entry of an (optionally gzip-compressed) tar stream, in layer form:
    whiteout files stay as they are."""
    entries: dict[str, Facts] = {}
    links: dict[str, str] = {}
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for member in tar:
            name = _clean(member.name)
            if name == ".":
                name = ""
            if member.islnk():
                links[name] = _clean(member.linkname)
                continue
            content = tar.extractfile(member).read() if member.isreg() else b""  # type: ignore[union-attr]
            xattrs = tuple(
                sorted(
                    (key[len("SCHILY.xattr.") :], value.encode("utf-8", "surrogateescape"))
                    for key, value in member.pax_headers.items()
                    if key.startswith("SCHILY.xattr.")
                )
            )
            entries[name] = Facts(
                type=_tar_type(member),
                mode=member.mode & 0o7777,
                uid=member.uid,
                gid=member.gid,
                size=len(content),
                sha256=hashlib.sha256(content).hexdigest(),
                link=member.linkname if member.issym() else "",
                device=(member.devmajor, member.devminor)
                if member.ischr() or member.isblk()
                else (0, 0),
                xattrs=xattrs,
                mtime=math.floor(member.mtime),  # seconds, truncated, as stat shows
            )
    return _with_hardlinks(entries, links)


def _with_hardlinks(entries: dict[str, Facts], links: Mapping[str, str]) -> Tree:
    groups: dict[str, set[str]] = {}
    for name, first_target in links.items():
        target = first_target
        while target in links:
            target = links[target]
        entries[name] = entries[target]
        groups.setdefault(target, {target}).add(name)
    return Tree(entries, frozenset(frozenset(g) for g in groups.values()))


def estargz_tree(blob: bytes) -> Tree:
    """Facts of every entry of an eStargz blob, read through lazybuild's reader (every
    chunk verified), without the TOC and landmark entries."""
    opened = parse_layer(blob, 0, len(blob), None)
    entries: dict[str, Facts] = {}
    names_by_node: dict[int, list[str]] = {}
    facts_by_node: dict[int, Facts] = {}
    for path, node in opened.index.paths():
        if path in ESTARGZ_ARTEFACTS or (path == "" and node.implicit):
            continue
        if id(node) not in facts_by_node:
            facts_by_node[id(node)] = _node_facts(node, blob)
        names_by_node.setdefault(id(node), []).append(path)
        entries[path] = facts_by_node[id(node)]
    hardlinks = frozenset(frozenset(n) for n in names_by_node.values() if len(n) > 1)
    return Tree(entries, hardlinks)


def _node_facts(node: Node, blob: bytes) -> Facts:
    content = b"".join(decompress_chunk(blob[c.offset : c.end], c) for c in node.chunks)
    return Facts(
        type=node.type,
        mode=node.mode & 0o7777,
        uid=node.uid,
        gid=node.gid,
        size=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        link=node.link_name if node.type == "symlink" else "",
        device=(node.dev_major, node.dev_minor) if node.type in ("char", "block") else (0, 0),
        xattrs=tuple(sorted(node.xattrs.items())),
        mtime=node.mtime or 0,
    )


def layer_format(blob_path: Path) -> LayerFormat:
    """What a layer blob is, from its magic bytes and footer (lazybuild's own detection)."""
    with blob_path.open("rb") as blob:
        head = blob.read(len(ZSTD_MAGIC))
        size = blob.seek(0, os.SEEK_END)
        blob.seek(max(0, size - FOOTER_SIZE))
        tail = blob.read()
    return detect_format("", head, tail)


def layer_tree(blob_path: Path) -> Tree:
    """Facts of a layer blob, whatever its format.

    eStargz and legacy stargz layers go through lazybuild's reader, and any error it
    raises (a bad TOC, a chunk digest mismatch) propagates: only layers that are not
    stargz at all are read with ``tarfile``.
    """
    kind = layer_format(blob_path)
    if kind in (LayerFormat.ESTARGZ, LayerFormat.LEGACY_STARGZ):
        return estargz_tree(blob_path.read_bytes())
    if kind is LayerFormat.GZIP:
        with gzip.open(blob_path, "rb") as stream:
            tree = tar_tree(stream)  # type: ignore[arg-type]
    elif kind is LayerFormat.ZSTD:
        with blob_path.open("rb") as raw:
            reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
            tree = tar_tree(reader)
    elif kind is LayerFormat.UNCOMPRESSED:
        with blob_path.open("rb") as stream:
            tree = tar_tree(stream)
    else:
        raise ValueError(f"{blob_path}: layer_tree cannot read {kind.value} layers")
    # A layer that carries a TOC but was not detected as stargz means a broken footer
    # (or broken detection); reading it as a plain tar would hide that.
    if "stargz.index.json" in tree.entries:
        raise AssertionError(f"{blob_path}: has a stargz TOC entry but no stargz footer")
    return tree


def flatten(layers: Iterable[Tree]) -> dict[str, Facts]:
    """Apply layers bottom-up with OCI whiteout rules: the root filesystem they make."""
    merged: dict[str, Facts] = {}
    for layer in layers:
        for path in sorted(layer.entries):
            parent, _, base = path.rpartition("/")
            if base == ".wh..wh..opq":
                prefix = parent + "/" if parent else ""
                for existing in [p for p in merged if p.startswith(prefix) and p != parent]:
                    if existing not in layer.entries:
                        del merged[existing]
            elif base.startswith(".wh."):
                gone = (parent + "/" if parent else "") + base[len(".wh.") :]
                for existing in [p for p in merged if p == gone or p.startswith(gone + "/")]:
                    del merged[existing]
        for path, facts in layer.entries.items():
            base = path.rpartition("/")[2]
            if not base.startswith(".wh."):
                merged[path] = facts
    return merged


def directory_tree(root: Path) -> Tree:
    """Facts of a directory on disk (a mount, an export), for comparing with ``flatten``;
    hardlinks are the names that share an inode."""
    entries: dict[str, Facts] = {}
    inodes: dict[tuple[int, int], list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            info = path.lstat()
            rel = str(path.relative_to(root))
            kind = _stat_type(info.st_mode)
            if kind == "reg":
                inodes.setdefault((info.st_dev, info.st_ino), []).append(rel)
            entries[rel] = _path_facts(path, info, kind)
    hardlinks = frozenset(frozenset(names) for names in inodes.values() if len(names) > 1)
    return Tree(entries, hardlinks)


def _path_facts(path: Path, info: os.stat_result, kind: str) -> Facts:
    content = path.read_bytes() if kind == "reg" else b""
    names = os.listxattr(path, follow_symlinks=False)
    xattrs = tuple(sorted((k, os.getxattr(path, k, follow_symlinks=False)) for k in names))
    is_device = kind in ("char", "block")
    return Facts(
        type=kind,
        mode=stat.S_IMODE(info.st_mode),
        uid=info.st_uid,
        gid=info.st_gid,
        size=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        link=os.readlink(path) if kind == "symlink" else "",
        device=(os.major(info.st_rdev), os.minor(info.st_rdev)) if is_device else (0, 0),
        xattrs=xattrs,
        mtime=int(info.st_mtime),
    )


def _stat_type(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "dir"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISCHR, "char"),
        (stat.S_ISBLK, "block"),
        (stat.S_ISFIFO, "fifo"),
    ):
        if test(mode):
            return name
    return "reg"
