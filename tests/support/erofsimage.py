"""Whole EROFS images from ``lazybuild.erofs`` layouts, for mounting and fsck in tests.

A test image is ``layout.metadata`` followed by each regular file's bytes at its
extent; the file's bytes come from the eStargz blob through lazybuild's own reader
(every chunk verified) or from a callable (synthetic data, written sparsely).
Also: eStargz layers from small tars, the layer's tree in the overlay form the image
shows, file-backed EROFS mounts (``mount(2)`` on the image file: util-linux's ``mount``
would set up a loop device), and fsck.erofs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from lazybuild.erofs import ErofsLayout, build_layout
from lazybuild.estargz import (
    TOC,
    LayerIndex,
    Node,
    OpenedLayer,
    TOCEntry,
    WriterOptions,
    decompress_chunk,
    parse_layer,
    write_estargz,
)
from lazybuild.snapshot import syscalls
from tests.support.trees import Facts, Tree

OPAQUE_MARKER = ".wh..wh..opq"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def estargz_from_tar(tar_bytes: bytes, prioritized: list[str] | None = None) -> bytes:
    """The eStargz blob lazybuild's writer makes of an uncompressed tar."""
    out = io.BytesIO()
    write_estargz(
        io.BytesIO(tar_bytes), out, WriterOptions(prioritized_files=prioritized, workers=2)
    )
    return out.getvalue()


def open_blob(blob: bytes) -> OpenedLayer:
    return parse_layer(blob, 0, len(blob), None)


def blob_reader(blob: bytes) -> Callable[[Node], Iterator[tuple[int, bytes]]]:
    """A file's bytes from the blob, chunk by chunk: ``(file offset, bytes)``."""

    def read(node: Node) -> Iterator[tuple[int, bytes]]:
        for chunk in node.chunks:
            yield chunk.chunk_offset, decompress_chunk(blob[chunk.offset : chunk.end], chunk)

    return read


def write_image(
    layout: ErofsLayout, path: Path, read: Callable[[Node], Iterator[tuple[int, bytes]]]
) -> None:
    """The whole image at ``path``: metadata, each file's pieces at its extent, the rest
    left as holes (they read as zeros), the file exactly ``image_size`` long."""
    with path.open("wb") as image:
        image.write(layout.metadata)
        for extent in layout.extents.extents:
            for file_offset, data in read(extent.node):
                assert file_offset + len(data) <= extent.size
                image.seek(extent.offset + file_offset)
                image.write(data)
        image.truncate(layout.image_size)


def image_of_blob(blob: bytes, path: Path) -> tuple[OpenedLayer, ErofsLayout]:
    opened = open_blob(blob)
    layout = build_layout(opened.index, opened.toc_digest)
    write_image(layout, path, blob_reader(blob))
    return opened, layout


def synthetic_index(entries: list[TOCEntry], data_end: int) -> LayerIndex:
    """A ``LayerIndex`` straight from TOC entries (files whose bytes a test makes up)."""
    return LayerIndex(TOC(version=1, entries=entries), data_end=data_end, where="synthetic")


def overlay_form(tree: Tree) -> tuple[dict[str, Facts], set[str]]:
    """A layer's entries as its image shows them (whiteout markers as 0/0 char devices
    with mode 0, opaque markers as an xattr of their directory), and the opaque dirs."""
    shown: dict[str, Facts] = {}
    whiteouts: dict[str, Facts] = {}
    opaque: set[str] = set()
    for path, facts in tree.entries.items():
        parent, _, base = path.rpartition("/")
        if base == OPAQUE_MARKER:
            opaque.add(parent)
        elif base.startswith(".wh..wh."):
            continue
        elif base.startswith(".wh."):
            target = (parent + "/" if parent else "") + base[len(".wh.") :]
            whiteouts[target] = Facts(
                type="char",
                mode=0,
                uid=facts.uid,
                gid=facts.gid,
                size=0,
                sha256=EMPTY_SHA256,
                link="",
                device=(0, 0),
                xattrs=(),
                mtime=facts.mtime,
            )
        else:
            shown[path] = facts
    for target, facts in whiteouts.items():
        shown.setdefault(target, facts)
    for directory in opaque:
        if directory in shown:
            facts = shown[directory]
            xattrs = dict(facts.xattrs)
            xattrs["trusted.overlay.opaque"] = b"y"
            shown[directory] = dataclasses.replace(facts, xattrs=tuple(sorted(xattrs.items())))
    return shown, opaque


@contextmanager
def mounted(image: Path, mountpoint: Path) -> Iterator[Path]:
    """The image mounted read-only by the kernel's EROFS, file-backed; always unmounted."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    syscalls.mount(str(image), mountpoint, "erofs", syscalls.MS_RDONLY, None)
    try:
        yield mountpoint
    finally:
        syscalls.umount(mountpoint, syscalls.MNT_DETACH)


def fsck(image: Path, *extra: str) -> str:
    """fsck.erofs's verdict at message level 3; fails unless it found no errors (1.5
    exits 0 on a bad superblock checksum, so its words are checked, not only its status)."""
    result = subprocess.run(
        ["fsck.erofs", "-d3", *extra, str(image)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    verdict = (
        "Extracted filesystem successfully"
        if any("--extract=" in e for e in extra)
        else ("No errors found")
    )
    assert verdict in output, output
    assert "failed" not in output.lower(), output
    return output


def tar_of(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    """An uncompressed PAX tar of ``(info, data)`` members."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return out.getvalue()


def member(
    name: str,
    kind: bytes = tarfile.REGTYPE,
    *,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime: int = 1_700_000_000,
    link: str = "",
    device: tuple[int, int] = (0, 0),
    xattrs: dict[str, bytes] | None = None,
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.mtime = mtime
    info.linkname = link
    info.devmajor, info.devminor = device
    if xattrs:
        info.pax_headers = {
            f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape") for k, v in xattrs.items()
        }
    return info
