"""A small EROFS decoder for the unit tests, written from the on-disk spec (not from the
writer): superblock, inodes, directory blocks (inline tails included), inline xattrs."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

BS = 4096
PREFIXES = {1: b"user.", 2: b"system.posix_acl_access", 3: b"system.posix_acl_default"}
PREFIXES |= {4: b"trusted.", 6: b"security."}


@dataclass
class Superblock:
    magic: int
    checksum: int
    feature_compat: int
    blkszbits: int
    root_nid: int
    inos: int
    build_time: int
    build_time_nsec: int
    blocks: int
    meta_blkaddr: int
    xattr_blkaddr: int
    uuid: bytes
    feature_incompat: int
    dirblkbits: int


@dataclass
class Inode:
    nid: int
    extended: bool
    layout: int
    mode: int
    nlink: int
    size: int
    i_u: int
    uid: int
    gid: int
    mtime: int
    xattr_size: int
    xattrs: dict[bytes, bytes] = field(default_factory=dict)

    @property
    def core(self) -> int:
        return 64 if self.extended else 32


def superblock(image: bytes) -> Superblock:
    fields = struct.unpack_from("<IIIBBHQQIIII16s16sIHHHB", image, 1024)
    return Superblock(
        magic=fields[0],
        checksum=fields[1],
        feature_compat=fields[2],
        blkszbits=fields[3],
        root_nid=fields[5],
        inos=fields[6],
        build_time=fields[7],
        build_time_nsec=fields[8],
        blocks=fields[9],
        meta_blkaddr=fields[10],
        xattr_blkaddr=fields[11],
        uuid=fields[12],
        feature_incompat=fields[14],
        dirblkbits=fields[18],
    )


def inode(image: bytes, nid: int) -> Inode:
    offset = nid * 32
    i_format, icount, mode = struct.unpack_from("<HHH", image, offset)
    sb = superblock(image)
    if i_format & 1:
        (_, _, _, _, size, i_u, _, uid, gid, mtime, _, nlink) = struct.unpack_from(
            "<HHHHQIIIIqII", image, offset
        )
    else:
        (_, _, _, nlink, size, _, i_u, _, uid, gid) = struct.unpack_from(
            "<HHHHIIIIHH", image, offset
        )
        mtime = sb.build_time
    assert i_format >> 4 == 0, f"unknown i_format bits at nid {nid}"
    xattr_size = 0 if icount == 0 else 12 + 4 * (icount - 1)
    found = Inode(
        nid,
        bool(i_format & 1),
        (i_format >> 1) & 7,
        mode,
        nlink,
        size,
        i_u,
        uid,
        gid,
        mtime,
        xattr_size,
    )
    if xattr_size:
        at = offset + found.core
        shared = image[at + 4]
        assert shared == 0
        at += 12
        end = offset + found.core + xattr_size
        while at < end:
            name_len, index, value_size = struct.unpack_from("<BBH", image, at)
            name = PREFIXES[index] + image[at + 4 : at + 4 + name_len]
            value = image[at + 4 + name_len : at + 4 + name_len + value_size]
            found.xattrs[name] = bytes(value)
            at += (4 + name_len + value_size + 3) & ~3
        assert at == end
    return found


def data(image: bytes, node: Inode) -> bytes:
    """The inode's content (directories, symlinks, files) by its data layout."""
    if node.layout == 0:
        start = node.i_u * BS
        return image[start : start + node.size] if node.size else b""
    assert node.layout == 2
    full = node.size // BS if node.size % BS else node.size // BS - 1
    tail_at = node.nid * 32 + node.core + node.xattr_size
    tail = node.size - full * BS
    assert tail_at % BS + tail <= BS, "inline tail crosses a block"
    head = image[node.i_u * BS : (node.i_u + full) * BS] if full else b""
    return head + image[tail_at : tail_at + tail]


def dir_blocks(image: bytes, node: Inode) -> list[list[tuple[bytes, int, int]]]:
    """Each block's ``(name, nid, file_type)`` entries, checking the block rules."""
    content = data(image, node)
    blocks = []
    for start in range(0, len(content), BS):
        block = content[start : start + BS]
        first_nameoff = struct.unpack_from("<H", block, 8)[0]
        count = first_nameoff // 12
        assert 12 <= first_nameoff < BS and first_nameoff % 12 == 0
        heads = [struct.unpack_from("<QHBB", block, 12 * i) for i in range(count)]
        entries = []
        for i, (nid, nameoff, file_type, _) in enumerate(heads):
            if i + 1 < count:
                end = heads[i + 1][1]
            else:
                end = block.find(b"\0", nameoff)
                end = len(block) if end < 0 else end
            entries.append((bytes(block[nameoff:end]), nid, file_type))
        blocks.append(entries)
    return blocks
