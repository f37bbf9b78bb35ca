"""EROFS on-disk records (uncompressed profile), packed with ``struct``; no I/O.

Field layouts follow ``include/erofs_fs.h`` as erofs-utils 1.5 and kernels before the
48-bit revision read them: 4 KiB blocks, a 128-byte superblock at byte 1024, 32-byte
compact and 64-byte extended inodes, 12-byte directory entries, inline xattr bodies.
Nothing here sets a feature bit an older kernel would refuse.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

BLOCK_SIZE_BITS = 12
BLOCK_SIZE = 1 << BLOCK_SIZE_BITS
SUPERBLOCK_OFFSET = 1024
SUPERBLOCK_SIZE = 128
MAGIC = 0xE0F5E1E2
COMPAT_SB_CHKSUM = 0x1
COMPAT_MTIME = 0x2
# Inodes live on 32-byte slots counted from meta_blkaddr (0): nid = byte offset // 32.
INODE_SLOT = 32
FIRST_INODE_OFFSET = SUPERBLOCK_OFFSET + SUPERBLOCK_SIZE  # nid 36
COMPACT_INODE_SIZE = 32
EXTENDED_INODE_SIZE = 64
LAYOUT_FLAT_PLAIN = 0
LAYOUT_FLAT_INLINE = 2
NULL_BLOCK = 0xFFFFFFFF
MAX_BLOCKS = 0xFFFFFFFF  # block addresses and the superblock's block count are 32-bit
DIRENT_SIZE = 12
XATTR_HEADER_SIZE = 12
XATTR_ENTRY_HEADER_SIZE = 4
MAX_NAME_LENGTH = 255
MAX_SYMLINK_LENGTH = 4095  # PATH_MAX - 1: one block always holds a target
MAX_XATTR_NAME_LENGTH = 255
MAX_XATTR_VALUE_SIZE = 0xFFFF
MAX_XATTR_ICOUNT = 0xFFFF
MAX_ROOT_NID = 0xFFFF
MAX_DEV_MAJOR = 0xFFF
MAX_DEV_MINOR = 0xFFFFF

# Directory entry file types (the d_type overlayfs and readdir see).
FT_REG = 1
FT_DIR = 2
FT_CHR = 3
FT_BLK = 4
FT_FIFO = 5
FT_SYMLINK = 7

# Xattr name prefixes an EROFS image can store: (full name or prefix, index). The two
# ACL names are whole-name prefixes with an empty suffix.
XATTR_WHOLE_NAMES = {
    b"system.posix_acl_access": 2,
    b"system.posix_acl_default": 3,
}
XATTR_PREFIXES = ((b"user.", 1), (b"trusted.", 4), (b"security.", 6))

_SUPERBLOCK = struct.Struct("<IIIBBHQQIIII16s16sIHHHBBIQ")
_COMPACT = struct.Struct("<HHHHIIIIHHI")
_EXTENDED = struct.Struct("<HHHHQIIIIqII16x")
_DIRENT = struct.Struct("<QHBB")
_XATTR_HEADER = struct.Struct("<IB7x")
_XATTR_ENTRY = struct.Struct("<BBH")

assert _COMPACT.size == COMPACT_INODE_SIZE
assert _EXTENDED.size == EXTENDED_INODE_SIZE
assert _DIRENT.size == DIRENT_SIZE
assert _XATTR_HEADER.size == XATTR_HEADER_SIZE


def align(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def blocks_for(size: int) -> int:
    return -(-size // BLOCK_SIZE)


def encode_rdev(major: int, minor: int) -> int:
    """Linux's "new" device encoding, as EROFS stores it in ``i_u``."""
    return (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)


def pack_superblock(
    buffer: bytearray,
    *,
    feature_compat: int,
    root_nid: int,
    inodes: int,
    build_time: int,
    blocks: int,
    uuid: bytes,
) -> None:
    """The superblock at byte 1024 (checksum 0: see ``superblock_checksum``)."""
    _SUPERBLOCK.pack_into(
        buffer,
        SUPERBLOCK_OFFSET,
        MAGIC,
        0,  # checksum
        feature_compat,
        BLOCK_SIZE_BITS,
        0,  # sb_extslots
        root_nid,
        inodes,
        build_time,
        0,  # build_time_nsec
        blocks,
        0,  # meta_blkaddr
        0,  # xattr_blkaddr
        uuid,
        b"",  # volume_name
        0,  # feature_incompat
        0,  # available_compr_algs
        0,  # extra_devices
        0,  # devt_slotoff
        0,  # dirblkbits (must be 0)
        0,  # xattr_prefix_count
        0,  # xattr_prefix_start
        0,  # packed_nid
    )


class Superblock(NamedTuple):
    """The superblock fields a stored image is checked against (``unpack_superblock``)."""

    magic: int
    checksum: int
    root_nid: int
    inodes: int
    build_time: int
    blocks: int
    uuid: bytes


def unpack_superblock(image_head: bytes | bytearray) -> Superblock:
    """The superblock of an image whose first ``SUPERBLOCK_OFFSET + SUPERBLOCK_SIZE``
    bytes are given (``struct.error`` when they are not all there)."""
    fields = _SUPERBLOCK.unpack_from(image_head, SUPERBLOCK_OFFSET)
    return Superblock(
        magic=fields[0],
        checksum=fields[1],
        root_nid=fields[5],
        inodes=fields[6],
        build_time=fields[7],
        blocks=fields[9],
        uuid=fields[12],
    )


def pack_compact_inode(
    buffer: bytearray,
    offset: int,
    *,
    layout: int,
    xattr_icount: int,
    mode: int,
    nlink: int,
    size: int,
    i_u: int,
    ino: int,
    uid: int,
    gid: int,
) -> None:
    """A 32-byte inode; its mtime is the superblock's build time (``i_mtime`` 0)."""
    _COMPACT.pack_into(
        buffer, offset, layout << 1, xattr_icount, mode, nlink, size, 0, i_u, ino, uid, gid, 0
    )


def pack_extended_inode(
    buffer: bytearray,
    offset: int,
    *,
    layout: int,
    xattr_icount: int,
    mode: int,
    nlink: int,
    size: int,
    i_u: int,
    ino: int,
    uid: int,
    gid: int,
    mtime: int,
) -> None:
    """A 64-byte inode: 64-bit size, 32-bit owners and nlink, its own mtime (ns 0)."""
    _EXTENDED.pack_into(
        buffer,
        offset,
        (layout << 1) | 1,
        xattr_icount,
        mode,
        0,  # i_nb: only 48-bit images use it
        size,
        i_u,
        ino,
        uid,
        gid,
        mtime,
        0,  # mtime_nsec
        nlink,
    )


def xattr_body(entries: list[tuple[int, bytes, bytes]]) -> bytes:
    """The inline xattr body for ``(index, suffix, value)`` entries, or b"" for none (a
    header without entries makes the kernel refuse every xattr call on the inode)."""
    if not entries:
        return b""
    parts = [_XATTR_HEADER.pack(0, 0)]
    for index, suffix, value in entries:
        record = _XATTR_ENTRY.pack(len(suffix), index, len(value)) + suffix + value
        parts.append(record + bytes(-len(record) % 4))
    return b"".join(parts)


def xattr_icount(body_size: int) -> int:
    return 0 if body_size == 0 else (body_size - XATTR_HEADER_SIZE) // 4 + 1


def encode_dir_block(entries: list[tuple[bytes, int, int]], *, padded: bool) -> bytes:
    """One directory block: ``(name, nid, file_type)`` entries (sorted), then the names
    back to back; zero-padded to a whole block when ``padded`` (a zero after the last
    name is what ends it)."""
    nameoff = DIRENT_SIZE * len(entries)
    heads = []
    for name, nid, file_type in entries:
        heads.append(_DIRENT.pack(nid, nameoff, file_type, 0))
        nameoff += len(name)
    block = b"".join(heads) + b"".join(name for name, _, _ in entries)
    return block + bytes(BLOCK_SIZE - len(block)) if padded else block


def pack_dir_block_into(
    buffer: bytearray, offset: int, entries: list[tuple[bytes, int, int]]
) -> None:
    """``encode_dir_block(entries, padded=False)`` written into ``buffer`` at ``offset``
    (a zeroed buffer needs no padding written)."""
    nameoff = DIRENT_SIZE * len(entries)
    position = offset
    pack_into = _DIRENT.pack_into
    for name, nid, file_type in entries:
        pack_into(buffer, position, nid, nameoff, file_type, 0)
        position += DIRENT_SIZE
        nameoff += len(name)
    names = b"".join([name for name, _, _ in entries])
    buffer[position : position + len(names)] = names


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c_register(data: bytes | bytearray | memoryview, seed: int = 0xFFFFFFFF) -> int:
    """CRC-32C as EROFS keeps it: the register after ``data``, with no final inversion."""
    crc = seed
    table = _CRC32C_TABLE
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


def superblock_checksum(image_head: bytes | bytearray) -> int:
    """The checksum over bytes [1024, block size) with the checksum field as 0. Block 0
    holds inodes too: compute it after everything in block 0 is final."""
    covered = bytearray(image_head[SUPERBLOCK_OFFSET:BLOCK_SIZE])
    covered[4:8] = bytes(4)
    return crc32c_register(covered)


def set_superblock_checksum(buffer: bytearray) -> None:
    struct.pack_into("<I", buffer, SUPERBLOCK_OFFSET + 4, superblock_checksum(buffer))
