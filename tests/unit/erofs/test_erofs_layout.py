"""The EROFS writer's layout, decoded without a kernel: superblock, inodes, directories,
xattrs, whiteouts, the data region's extents and reads through them, determinism."""

from __future__ import annotations

import hashlib
import itertools
import stat
import time
from typing import Any

import pytest

from lazybuild.erofs import BLOCK_SIZE, ErofsLayout, UnrepresentableError, build_layout
from lazybuild.erofs.ondisk import crc32c_register, superblock_checksum
from lazybuild.estargz import TOC, LayerIndex, TOCEntry
from tests.unit.erofs import decode

T0 = 1_700_000_000
STAMP = "2023-11-14T22:13:20Z"  # T0
LATER = "2024-01-01T00:00:00Z"


def entry(name: str, kind: str = "reg", **fields: Any) -> TOCEntry:
    fields.setdefault("modtime", STAMP)
    fields.setdefault("mode", 0o755 if kind == "dir" else 0o644)
    return TOCEntry(name=name, type=kind, **fields)


class Blob:
    """Synthetic TOC entries for regular files: each file's bytes at the next offset."""

    def __init__(self) -> None:
        self.offset = 0

    def file(self, name: str, size: int, **fields: Any) -> TOCEntry:
        made = entry(name, size=size, offset=self.offset if size else 0, **fields)
        if size:
            made.digest = made.chunk_digest = "sha256:" + "0" * 64
            self.offset += 100
        return made

    def big_file(self, name: str, size: int, chunk: int = 64 << 20) -> list[TOCEntry]:
        """A file in chunk entries of ``chunk`` bytes (the index refuses bigger chunks)."""
        head = self.file(name, size)
        head.chunk_size = chunk
        pieces = [head]
        for start in range(chunk, size, chunk):
            pieces.append(
                TOCEntry(
                    name=name,
                    type="chunk",
                    offset=self.offset,
                    chunk_offset=start,
                    chunk_size=min(chunk, size - start),
                    chunk_digest="sha256:" + "0" * 64,
                )
            )
            self.offset += 100
        return pieces


def index_of(entries: list[TOCEntry]) -> LayerIndex:
    return LayerIndex(TOC(version=1, entries=entries), data_end=1 << 50)


def walk(image: bytes) -> dict[str, decode.Inode]:
    """Every path of a decoded image ("" the root), checking each directory's blocks."""
    sb = decode.superblock(image)
    found = {"": decode.inode(image, sb.root_nid)}
    stack = [("", sb.root_nid, sb.root_nid)]
    while stack:
        path, nid, parent_nid = stack.pop()
        directory = decode.inode(image, nid)
        blocks = decode.dir_blocks(image, directory)
        names = [name for block in blocks for name, _, _ in block]
        assert names == sorted(names) and len(set(names)) == len(names), path
        by_name = {name: (child, ft) for block in blocks for name, child, ft in block}
        assert by_name[b"."][0] == nid and by_name[b".."][0] == parent_nid
        for name, (child, file_type) in by_name.items():
            if name in (b".", b".."):
                continue
            child_path = f"{path}/{name.decode()}" if path else name.decode()
            node = decode.inode(image, child)
            expected_type = {
                stat.S_IFREG: 1, stat.S_IFDIR: 2, stat.S_IFCHR: 3, stat.S_IFBLK: 4,
                stat.S_IFIFO: 5, stat.S_IFLNK: 7,
            }[stat.S_IFMT(node.mode)]  # fmt: skip
            assert file_type == expected_type, child_path
            found[child_path] = node
            if stat.S_ISDIR(node.mode):
                stack.append((child_path, child, nid))
    return found


def image_of(layout: ErofsLayout, contents: dict[str, bytes] | None = None) -> bytes:
    image = bytearray(layout.image_size)
    image[: layout.data_start] = layout.metadata
    for extent in layout.extents.extents:
        data = (contents or {}).get(extent.node.name, b"\x5a" * extent.size)
        image[extent.offset : extent.offset + extent.size] = data
    return bytes(image)


def rich_entries() -> list[TOCEntry]:
    blob = Blob()
    return [
        entry("", "dir"),
        entry("etc", "dir", modtime=LATER),
        blob.file("etc/passwd", 900),
        blob.file("etc/empty", 0),
        blob.file("etc/owned", 5, uid=70000, gid=70001),
        blob.file("etc/caps", 10, xattrs={"security.capability": b"\x01\0\0\x02" + bytes(16)}),
        entry("etc/hard", "hardlink", link_name="etc/passwd"),
        entry("etc/short", "symlink", link_name="passwd"),
        entry("etc/long", "symlink", link_name="x" * 4090),
        entry("etc/fifo", "fifo"),
        entry("etc/disk", "block", dev_major=259, dev_minor=300),
        entry("etc/tty", "char", dev_major=5, dev_minor=0),
        entry("etc/.wh.gone", modtime=LATER, uid=3),
        entry("etc/.wh.passwd"),  # a real passwd exists: no whiteout
        entry("etc/.wh..wh.plnk", "dir"),
        entry("opaque", "dir"),
        entry("opaque/.wh..wh..opq"),
        blob.file("opaque/kept", 1, xattrs={"user.foo": b"bar", "system.nfs4_acl": b"x"}),
        entry("stargz.index.json"),
        entry(".prefetch.landmark"),
        entry("sub", "dir"),
        entry("sub/stargz.index.json"),
        entry("-dash"),
    ]


@pytest.fixture(scope="module")
def rich() -> tuple[ErofsLayout, bytes, dict[str, decode.Inode]]:
    layout = build_layout(index_of(rich_entries()), "sha256:" + "ab" * 32)
    image = image_of(layout)
    return layout, image, walk(image)


def test_superblock(rich: tuple[ErofsLayout, bytes, dict[str, decode.Inode]]) -> None:
    layout, image, inodes = rich
    sb = decode.superblock(image)
    assert sb.magic == 0xE0F5E1E2 and sb.blkszbits == 12 and sb.dirblkbits == 0
    assert sb.feature_incompat == 0 and sb.feature_compat == 0x3
    assert sb.root_nid == 36 == layout.root_nid  # right after the superblock
    assert sb.meta_blkaddr == 0 and sb.xattr_blkaddr == 0
    assert sb.inos == len({n.nid for n in inodes.values()}) == layout.stats.inodes
    assert sb.build_time == T0 == layout.build_time and sb.build_time_nsec == 0
    assert sb.blocks * BLOCK_SIZE == layout.image_size == len(image)
    assert layout.data_start % BLOCK_SIZE == 0 and len(layout.metadata) == layout.data_start
    assert sb.uuid == layout.uuid and sb.uuid != bytes(16)
    assert image[:1024] == bytes(1024)
    assert sb.checksum == superblock_checksum(image)
    assert crc32c_register(b"123456789") == 0x1CF96D7C  # the spec's worked value


def test_inodes_types_owners_times_and_links(
    rich: tuple[ErofsLayout, bytes, dict[str, decode.Inode]],
) -> None:
    _, image, inodes = rich
    assert set(inodes) == {
        "", "etc", "etc/passwd", "etc/empty", "etc/owned", "etc/caps", "etc/hard",
        "etc/short", "etc/long", "etc/fifo", "etc/disk", "etc/tty", "etc/gone", "opaque",
        "opaque/kept", "sub", "sub/stargz.index.json", "-dash",
    }  # fmt: skip
    passwd, hard = inodes["etc/passwd"], inodes["etc/hard"]
    assert passwd.nid == hard.nid and passwd.nlink == 2 and passwd.mode == 0o100644
    assert not passwd.extended and passwd.mtime == T0 and passwd.layout == 0
    assert decode.data(image, passwd) == b"\x5a" * 900
    owned = inodes["etc/owned"]
    assert owned.extended and (owned.uid, owned.gid) == (70000, 70001)
    etc = inodes["etc"]
    assert etc.extended and etc.mtime == 1704067200 and etc.nlink == 2
    assert inodes[""].nlink == 5  # ., .., etc, opaque, sub
    empty = inodes["etc/empty"]
    assert empty.size == 0 and empty.i_u == 0
    assert inodes["etc/disk"].mode == stat.S_IFBLK | 0o644 and inodes["etc/disk"].i_u == 0x0011032C
    assert inodes["etc/tty"].i_u == 5 << 8 and inodes["etc/fifo"].mode == stat.S_IFIFO | 0o644
    gone = inodes["etc/gone"]
    assert (gone.mode, gone.i_u, gone.size, gone.uid) == (stat.S_IFCHR, 0, 0, 3)
    assert gone.mtime == 1704067200


def test_symlinks_inline_and_in_a_block(
    rich: tuple[ErofsLayout, bytes, dict[str, decode.Inode]],
) -> None:
    layout, image, inodes = rich
    short, long = inodes["etc/short"], inodes["etc/long"]
    assert short.layout == 2 and decode.data(image, short) == b"passwd"
    assert long.layout == 0 and decode.data(image, long) == b"x" * 4090
    assert long.i_u * BLOCK_SIZE < layout.data_start  # metadata stays local
    # The TOC says 0644; Linux shows every symlink as 0777, unpacked by Docker or not.
    assert short.mode & 0o7777 == 0o777 and long.mode & 0o7777 == 0o777


def test_xattrs_opaque_and_capabilities(
    rich: tuple[ErofsLayout, bytes, dict[str, decode.Inode]],
) -> None:
    _, _, inodes = rich
    opaque = inodes["opaque"]
    assert opaque.xattrs == {b"trusted.overlay.opaque": b"y"}
    assert opaque.xattr_size == 32  # the spec's worked example: icount 6
    kept = inodes["opaque/kept"]
    assert kept.xattrs == {b"user.foo": b"bar"}  # system.nfs4_acl has no EROFS prefix
    assert kept.xattr_size == 12 + 12
    caps = inodes["etc/caps"]
    assert caps.xattrs == {b"security.capability": b"\x01\0\0\x02" + bytes(16)}
    assert caps.xattr_size == 12 + 36
    assert inodes["etc/passwd"].xattr_size == 0


def test_directory_order_is_by_bytes_and_dash_sorts_before_dot(
    rich: tuple[ErofsLayout, bytes, dict[str, decode.Inode]],
) -> None:
    _, image, inodes = rich
    (block,) = decode.dir_blocks(image, inodes[""])
    assert [name for name, _, _ in block] == [b"-dash", b".", b"..", b"etc", b"opaque", b"sub"]
    assert inodes[""].size == 12 * 6 + len(b"-dash...etcopaquesub")


def test_big_directory_spans_blocks_in_global_order() -> None:
    blob = Blob()
    names = [f"f{i:05d}" + "y" * (i % 200) for i in range(10_000)]
    layout = build_layout(index_of([blob.file(f"big/{n}", 0) for n in names]))
    image = image_of(layout)
    inodes = walk(image)  # checks order across blocks and . / ..
    big = inodes["big"]
    blocks = decode.dir_blocks(image, big)
    assert len(blocks) > 100
    assert all(12 * len(b) + sum(len(n) for n, _, _ in b) <= BLOCK_SIZE for b in blocks)
    for before, after in itertools.pairwise(blocks):
        assert before[-1][0] < after[0][0]
        # a block is only cut when the next entry would not fit
        used = 12 * len(before) + sum(len(n) for n, _, _ in before)
        assert used + 12 + len(after[0][0]) > BLOCK_SIZE
    assert big.size == (len(blocks) - 1) * BLOCK_SIZE + 12 * len(blocks[-1]) + sum(
        len(n) for n, _, _ in blocks[-1]
    )
    assert len(inodes) == 10_002
    assert layout.stats.directory_blocks >= len(blocks) - 1


def test_255_byte_names_and_refusals() -> None:
    blob = Blob()
    name = "n" * 255
    inodes = walk(image_of(build_layout(index_of([blob.file(name, 3)]))))
    assert inodes[name].size == 3
    for bad in (
        [blob.file("m" * 256, 1)],
        [entry("link", "symlink", link_name="x" * 4096)],
        [blob.file("owner", 1, uid=1 << 32)],
        [entry("dev", "char", dev_major=4096)],
        [blob.file("xattr", 1, xattrs={"user.big": bytes(65536)})],
    ):
        with pytest.raises(UnrepresentableError):
            build_layout(index_of(bad))


def test_file_over_4_gib_is_extended_with_its_size() -> None:
    blob = Blob()
    size = (5 << 30) + 123
    layout = build_layout(index_of([*blob.big_file("huge", size), blob.file("after", 10)]))
    huge = decode.inode(layout.metadata, walk_metadata_nid(layout, b"huge"))
    assert huge.extended and huge.size == size
    first, second = layout.extents.extents
    assert (first.node.name, second.node.name) == ("huge", "after")
    assert second.offset == first.offset + -(-size // BLOCK_SIZE) * BLOCK_SIZE
    assert layout.image_size == second.offset + BLOCK_SIZE


def walk_metadata_nid(layout: ErofsLayout, name: bytes) -> int:
    root = decode.inode(layout.metadata, layout.root_nid)
    for block in decode.dir_blocks(layout.metadata, root):
        for entry_name, nid, _ in block:
            if entry_name == name:
                return nid
    raise KeyError(name)


def test_data_region_follows_blob_order_and_block_alignment() -> None:
    blob = Blob()
    # TOC order (the blob's) is not name order: prioritized files come first.
    entries = [
        blob.file("z/first", 5000),
        blob.file("a/second", 1),
        blob.file("m/third", 4096),
        blob.file("m/empty", 0),
    ]
    layout = build_layout(index_of(entries))
    extents = layout.extents.extents
    assert [e.node.name for e in extents] == ["z/first", "a/second", "m/third"]
    assert extents[0].offset == layout.data_start
    assert [e.offset - layout.data_start for e in extents] == [0, 2 * BLOCK_SIZE, 3 * BLOCK_SIZE]
    assert layout.image_size == layout.data_start + 4 * BLOCK_SIZE
    assert layout.extents.extent_of(extents[1].node) == extents[1]


def test_extents_at_straddles_files_and_padding_and_read_assembles() -> None:
    blob = Blob()
    layout = build_layout(index_of([blob.file("a", 5000), blob.file("b", 100)]))
    contents = {"a": bytes(range(256)) * 19 + b"\x01" * 136, "b": b"\x02" * 100}
    image = image_of(layout, contents)
    a, b = layout.extents.extents
    start, length = a.offset + 4990, (b.offset + 50) - (a.offset + 4990)
    pieces = layout.extents_at(start, length)
    assert [(p.node.name, p.file_offset, p.length) for p in pieces] == [
        ("a", 4990, 10),
        ("b", 0, 50),
    ]
    given = [(p, contents[p.node.name][p.file_offset : p.file_offset + p.length]) for p in pieces]
    served = layout.read(start, length, given)
    assert served == image[start : start + length]
    assert served[10 : b.offset - start] == bytes(b.offset - start - 10)  # padding: zeros
    # a read across the metadata/data boundary, and one past the image's end
    edge = layout.extents_at(layout.data_start - 100, 200)
    assert [(p.node.name, p.file_offset, p.length) for p in edge] == [("a", 0, 100)]
    assert (
        layout.read(layout.data_start - 100, 200, [(edge[0], contents["a"][:100])])
        == (image[layout.data_start - 100 : layout.data_start + 100])
    )
    assert layout.extents_at(b.offset + 100, 10) == []
    assert layout.read(layout.image_size - 10, 100, []) == bytes(10)
    assert layout.read(0, 4096, []) == layout.metadata[:4096]
    with pytest.raises(ValueError, match="bytes for a piece"):
        layout.read(a.offset, 10, [(layout.extents_at(a.offset, 10)[0], b"short")])


def test_same_toc_same_bytes_and_uuid_from_the_digest() -> None:
    first = build_layout(index_of(rich_entries()), "sha256:" + "ab" * 32)
    again = build_layout(index_of(rich_entries()), "sha256:" + "ab" * 32)
    other = build_layout(index_of(rich_entries()), "sha256:" + "cd" * 32)
    assert first.metadata == again.metadata and first.image_size == again.image_size
    assert [(e.offset, e.size, e.node.name) for e in first.extents.extents] == [
        (e.offset, e.size, e.node.name) for e in again.extents.extents
    ]
    assert other.uuid != first.uuid
    no_digest = build_layout(index_of(rich_entries()))
    assert no_digest.uuid != bytes(16)
    assert no_digest.metadata == build_layout(index_of(rich_entries())).metadata
    assert hashlib.sha256(first.metadata).digest() != hashlib.sha256(other.metadata).digest()


def test_hostile_shapes_stay_linear() -> None:
    blob = Blob()
    deep = "/".join(["d"] * 2000)
    entries = [blob.file(f"wide/{i:05d}-" + "w" * 200, 1) for i in range(10_000)]
    entries += [blob.file(f"{deep}/leaf", 1)]
    started = time.perf_counter()
    layout = build_layout(index_of(entries))
    elapsed = time.perf_counter() - started
    assert elapsed < 5, elapsed
    inodes = walk(image_of(layout))
    assert len(inodes) == 1 + 1 + 10_000 + 2000 + 1
    assert len(layout.extents) == 10_001
