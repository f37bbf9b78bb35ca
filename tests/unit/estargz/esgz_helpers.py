"""Building input tars and reading eStargz blobs back, for the estargz unit tests."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from dataclasses import dataclass, field

from lazybuild.estargz import (
    OpenedLayer,
    WriterOptions,
    WrittenLayer,
    decompress_chunk,
    encode_footer,
    parse_layer,
    tail_read_range,
    write_estargz,
)
from lazybuild.estargz.gzipmembers import compress_member
from lazybuild.estargz.tarentry import END_OF_ARCHIVE, padding, plain_file_header
from lazybuild.estargz.toc import TOC_TAR_NAME

SMALL_CHUNK = 64 << 10


@dataclass
class Member:
    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""
    mtime: float = 1_700_000_000
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, str] = field(default_factory=dict)


def make_tar(members: list[Member], tar_format: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tar_format) as archive:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.type = member.type
            info.mode = member.mode
            info.uid, info.gid = member.uid, member.gid
            info.uname, info.gname = member.uname, member.gname
            info.mtime = member.mtime
            info.linkname = member.linkname
            info.devmajor, info.devminor = member.devmajor, member.devminor
            info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in member.xattrs.items()}
            info.size = len(member.data)
            archive.addfile(info, io.BytesIO(member.data) if member.data else None)
    return buffer.getvalue()


def pseudo_random(size: int, seed: int) -> bytes:
    """Incompressible-ish deterministic bytes (so chunks really are separate members)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def rich_members(chunk: int = SMALL_CHUNK) -> list[Member]:
    return [
        Member("./", tarfile.DIRTYPE, mode=0o755),
        Member("etc/", tarfile.DIRTYPE, mode=0o755, uid=0, gid=0, uname="root", gname="root"),
        Member("etc/empty", data=b""),
        Member("etc/small.conf", data=b"hello <eStargz> & friends\n", mode=0o600),
        Member("bin/", tarfile.DIRTYPE, mode=0o755),
        Member("bin/exact", data=pseudo_random(2 * chunk, 1), mode=0o755),
        Member("bin/one-chunk", data=pseudo_random(chunk, 2), mode=0o755),
        Member("bin/multi", data=pseudo_random(3 * chunk + 1234, 3), mode=0o4755),
        Member("bin/link-to-multi", tarfile.LNKTYPE, linkname="bin/multi"),
        Member("bin/sym", tarfile.SYMTYPE, linkname="multi", mode=0o777),
        Member("dev/", tarfile.DIRTYPE, mode=0o755),
        Member("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3),
        Member("dev/sda", tarfile.BLKTYPE, mode=0o660, devmajor=8, devminor=0),
        Member("dev/fifo", tarfile.FIFOTYPE, mode=0o644),
        Member(
            "home/user/xattr-file",
            data=b"xattrs",
            uid=1000,
            gid=1000,
            uname="user",
            gname="users",
            xattrs={"user.mime": "text/plain", "security.capability": "\x01\x00\udcff"},
        ),
        Member(
            "home/user/second", data=b"same owner", uid=1000, gid=1000, uname="user", gname="users"
        ),
        Member("deep/" + "/".join(["directory-name-long"] * 8) + "/file", data=b"deep"),
        Member("epoch-file", data=b"at epoch", mtime=0),
        Member("half-second", data=b"x", mtime=1_700_000_000.5),
        Member("unicode-ñame", data=b"utf8"),
    ]


def write(tar: bytes, **options: object) -> tuple[bytes, WrittenLayer]:
    out = io.BytesIO()
    opts = WriterOptions(**{"chunk_size": SMALL_CHUNK, "workers": 2, **options})  # type: ignore[arg-type]
    written = write_estargz(io.BytesIO(tar), out, opts)
    return out.getvalue(), written


def open_blob(blob: bytes, toc_digest: str | None = None) -> OpenedLayer:
    start, _ = tail_read_range(len(blob))
    return parse_layer(blob[start:], start, len(blob), toc_digest, lambda o, n: blob[o : o + n])


def read_file(layer: OpenedLayer, blob: bytes, path: str) -> bytes:
    node = layer.index.lookup(path)
    assert node is not None, path
    return b"".join(decompress_chunk(blob[c.offset : c.end], c) for c in node.chunks)


def replace_toc(blob: bytes, layer: OpenedLayer, toc_json: bytes) -> bytes:
    """The same blob with another TOC JSON (and a footer pointing at it)."""
    tar = plain_file_header(TOC_TAR_NAME, len(toc_json)) + toc_json + padding(len(toc_json))
    member = compress_member(tar + END_OF_ARCHIVE, 6)
    return blob[: layer.toc_offset] + member + encode_footer(layer.toc_offset)


def input_files(members: list[Member]) -> dict[str, bytes]:
    return {
        os.path.normpath(m.name): m.data
        for m in members
        if m.type in (tarfile.REGTYPE, tarfile.AREGTYPE)
    }
