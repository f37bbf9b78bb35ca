"""EROFS images written by ``lazybuild.erofs``, checked by fsck.erofs and mounted by the
real kernel (file-backed), compared with the layer they came from, every fact.

Whole images are put together here: the writer's metadata, then each file's bytes
(through lazybuild's verified eStargz reader) at its extent.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import stat
import struct
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazybuild.erofs import BLOCK_SIZE, build_layout
from lazybuild.estargz import TOCEntry
from lazybuild.snapshot import syscalls
from tests.support.erofsimage import (
    estargz_from_tar,
    fsck,
    image_of_blob,
    member,
    mounted,
    overlay_form,
    synthetic_index,
    tar_of,
    write_image,
)
from tests.support.trees import Facts, directory_tree, estargz_tree, flatten

pytestmark = pytest.mark.root

T0 = 1_700_000_000
# A POSIX access ACL: user::rw-, user:1000:r--, group::r--, mask::r--, other::r--.
ACL = struct.pack("<I", 2) + b"".join(
    struct.pack("<HHI", tag, perm, uid)
    for tag, perm, uid in (
        (0x01, 6, 0xFFFFFFFF),
        (0x02, 4, 1000),
        (0x04, 4, 0xFFFFFFFF),
        (0x10, 4, 0xFFFFFFFF),
        (0x20, 4, 0xFFFFFFFF),
    )
)
NOTES = {"user.a": b"1", "user.empty": b"", "trusted.t": b"\0\xff"}
CAPABILITY = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)  # v2, cap_net_raw


@pytest.fixture(autouse=True)
def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting EROFS needs root")


def assert_same_tree(mountpoint: Path, blob: bytes) -> dict[str, Facts]:
    """The mounted image equals the layer in overlay form, every fact and every
    hardlink group; returns what was compared."""
    layer = estargz_tree(blob)
    expected, _ = overlay_form(layer)
    found = directory_tree(mountpoint)
    differences = {
        path: (found.entries.get(path), expected.get(path))
        for path in set(found.entries) | set(expected)
        if found.entries.get(path) != expected.get(path)
    }
    assert not differences, dict(sorted(differences.items())[:5])
    assert found.hardlinks == layer.hardlinks
    return expected


def debian_layers(layout_dir: Path) -> Iterator[bytes]:
    """The uncompressed tars of the Debian image's layers, bottom first."""
    blobs = layout_dir / "blobs" / "sha256"
    index = json.loads((layout_dir / "index.json").read_bytes())
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_bytes())
    for layer in manifest["layers"]:
        yield gzip.decompress((blobs / layer["digest"].split(":")[1]).read_bytes())


def test_debian_layers_and_their_overlay(debian_image_layout: Path, tmp_path: Path) -> None:
    mounts: list[Path] = []
    expected_layers = []
    try:
        for number, tar in enumerate(debian_layers(debian_image_layout)):
            blob = estargz_from_tar(tar)
            image = tmp_path / f"layer{number}.erofs"
            started = time.perf_counter()
            opened, layout = image_of_blob(blob, image)
            took = time.perf_counter() - started
            assert image.stat().st_size == layout.image_size
            print(
                f"layer {number}: {layout.stats.inodes} inodes, metadata "
                f"{len(layout.metadata)} B, image {layout.image_size} B, "
                f"written with data in {took:.3f} s"
            )
            fsck(image, "--extract")  # every byte of every file read and checked too
            mountpoint = tmp_path / f"m{number}"
            with mounted(image, mountpoint):
                assert_same_tree(mountpoint, blob)
                root = mountpoint.lstat()
                assert stat.S_IMODE(root.st_mode) == opened.index.root.mode
                assert os.statvfs(mountpoint).f_blocks == layout.image_size // BLOCK_SIZE
            expected_layers.append(estargz_tree(blob))
            mountpoint.mkdir(exist_ok=True)
            syscalls.mount(str(image), mountpoint, "erofs", syscalls.MS_RDONLY, None)
            mounts.append(mountpoint)
        merged = tmp_path / "merged"
        merged.mkdir()
        lowers = ":".join(str(m) for m in reversed(mounts))
        syscalls.mount("overlay", merged, "overlay", syscalls.MS_RDONLY, f"lowerdir={lowers}")
        mounts.append(merged)
        found = directory_tree(merged).entries
        assert found == flatten(expected_layers)
    finally:
        for mountpoint in reversed(mounts):
            syscalls.umount(mountpoint, syscalls.MNT_DETACH)


def edge_case_tar() -> bytes:
    d, s, c, b, f, h = (
        tarfile.DIRTYPE,
        tarfile.SYMTYPE,
        tarfile.CHRTYPE,
        tarfile.BLKTYPE,
        tarfile.FIFOTYPE,
        tarfile.LNKTYPE,
    )
    members: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (member("etc", d, mode=0o755), None),
        (member("etc/empty"), b""),
        (member("etc/also-empty", mode=0o600, mtime=T0 + 5), b""),
        (member("etc/passwd", mtime=T0 - 100), b"root:x:0:0::/root:/bin/sh\n"),
        (member("etc/hard", h, link="etc/passwd"), None),
        (member("etc/hard2", h, link="etc/passwd"), None),
        (member("etc/" + "n" * 255), b"a name of 255 bytes\n"),
        (member("etc/owned", uid=70000, gid=70001, mode=0o4755), b"setuid\n"),
        (member("etc/block", mode=0o1777), b"z" * 4096),
        (member("etc/short", s, mode=0o777, link="passwd"), None),
        (member("etc/long", s, mode=0o777, link="/" + "x" * 4090), None),
        (member("etc/tty", c, mode=0o620, device=(5, 0)), None),
        (member("etc/disk", b, mode=0o660, device=(259, 300)), None),
        (member("etc/fifo", f, mode=0o600), None),
        (member("etc/caps", mode=0o755, xattrs={"security.capability": CAPABILITY}), b"\x7fELF"),
        (member("etc/acl", xattrs={"system.posix_acl_access": ACL}), b"acl\n"),
        (member("etc/notes", xattrs=NOTES), b"x"),
        (member("etc/.wh.gone", mtime=T0 + 9), b""),
        (member("opaque", d, mode=0o700, uid=5), None),
        (member("opaque/.wh..wh..opq"), b""),
        (member("opaque/kept"), b"kept\n"),
        (member("wide", d, mode=0o755), None),
    ]  # fmt: skip
    members += [(member(f"wide/entry-{i:05d}"), b"") for i in range(10_000)]
    deep = "deep"
    members.append((member(deep, d, mode=0o755), None))
    for level in range(150):
        deep += f"/l{level % 10}"
        members.append((member(deep, d, mode=0o755, mtime=T0 + level), None))
    members.append((member(deep + "/bottom"), b"at the bottom\n"))
    big = bytes(range(256)) * 40_000  # 10 MB: three 4 MiB chunks
    members.append((member("data/big.bin"), big))
    return tar_of(members)


def test_edge_cases(tmp_path: Path) -> None:
    prioritized = ["data/big.bin", "etc/passwd"]
    blob = estargz_from_tar(edge_case_tar(), prioritized)
    image = tmp_path / "edge.erofs"
    _, layout = image_of_blob(blob, image)
    # The data region follows the blob's order: the prioritized files first.
    names = [e.node.name for e in layout.extents.extents]
    assert names[:2] == prioritized and layout.extents.extents[0].offset == layout.data_start
    fsck(image, "--extract")
    # fsck's own extraction: every fact but xattrs (fsck.erofs 1.5 does not restore
    # them) and setuid/setgid bits (it chowns after chmod, which clears them).
    extracted = tmp_path / "extracted"
    fsck(image, f"--extract={extracted}", "--preserve")

    def extraction_facts(facts: Facts) -> Facts:
        return dataclasses.replace(facts, xattrs=(), mode=facts.mode & ~0o6000)

    expected = {p: extraction_facts(f) for p, f in overlay_form(estargz_tree(blob))[0].items()}
    found = {p: extraction_facts(f) for p, f in directory_tree(extracted).entries.items()}
    assert found == expected
    mountpoint = tmp_path / "mnt"
    with mounted(image, mountpoint):
        assert_same_tree(mountpoint, blob)
        gone = (mountpoint / "etc" / "gone").lstat()
        assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0
        assert os.getxattr(mountpoint / "opaque", "trusted.overlay.opaque") == b"y"
        assert not (mountpoint / "opaque" / ".wh..wh..opq").exists()
        assert not (mountpoint / "stargz.index.json").exists()
        assert os.getxattr(mountpoint / "etc" / "acl", "system.posix_acl_access") == ACL
        assert os.getxattr(mountpoint / "etc" / "caps", "security.capability") == CAPABILITY
        assert (mountpoint / "etc" / "passwd").stat().st_nlink == 3
        assert len(os.listdir(mountpoint / "wide")) == 10_000
        with pytest.raises(OSError, match="File name too long"):
            (mountpoint / "etc" / ("n" * 256)).lstat()
        disk = (mountpoint / "etc" / "disk").lstat()
        assert (os.major(disk.st_rdev), os.minor(disk.st_rdev)) == (259, 300)


def test_a_file_over_4_gib(tmp_path: Path) -> None:
    size = (4 << 30) + 12_345
    chunk = 64 << 20
    entries = [TOCEntry(name="big", type="reg", size=size, mode=0o644, offset=0, chunk_size=chunk)]
    entries += [
        TOCEntry("big", "chunk", offset=start, chunk_offset=start, chunk_size=length)
        for start in range(chunk, size, chunk)
        for length in [min(chunk, size - start)]
    ]
    entries.append(TOCEntry(name="after", type="reg", size=6, mode=0o600, offset=size))
    index = synthetic_index(entries, data_end=size + 100)
    layout = build_layout(index, "sha256:" + "42" * 32)
    marks = {0: b"first", (4 << 30) - 2: b"across4G", size - 4: b"last"}

    def read(node: object) -> Iterator[tuple[int, bytes]]:
        yield from (marks.items() if getattr(node, "name", "") == "big" else [(0, b"after\n")])

    image = tmp_path / "big.erofs"
    write_image(layout, image, read)  # sparse: only the marks are written
    assert image.stat().st_size == layout.image_size > 4 << 30
    big, after = layout.extents.extents
    (piece,) = layout.extents_at(big.offset + (4 << 30) + 1, 10)
    assert (piece.node.name, piece.file_offset, piece.length) == ("big", (4 << 30) + 1, 10)
    assert after.offset == big.offset + -(-size // BLOCK_SIZE) * BLOCK_SIZE
    fsck(image)  # metadata only: --extract would read the 4 GiB
    mountpoint = tmp_path / "mnt"
    with mounted(image, mountpoint):
        info = (mountpoint / "big").stat()
        assert info.st_size == size and stat.S_IMODE(info.st_mode) == 0o644
        with (mountpoint / "big").open("rb") as data:
            for offset, mark in marks.items():
                assert os.pread(data.fileno(), len(mark), offset) == mark
            assert os.pread(data.fileno(), 8, 3 << 30) == bytes(8)
            assert os.pread(data.fileno(), 100, size - 4) == b"last"
        assert (mountpoint / "after").read_bytes() == b"after\n"
