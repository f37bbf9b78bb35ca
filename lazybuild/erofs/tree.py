"""A layer's TOC view in the form its EROFS image shows it: overlayfs lower-dir form.

How overlayfs expects a lower layer, and how an unpacked layer shows it:

- ``.wh.<name>`` becomes a char device 0/0 named ``<name>``, mode 0, owned and timed
  like the marker, unless the directory has a real ``<name>``; every ``.wh.*`` name is
  left out (``.wh..wh.*`` names are whiteout metadata, never whiteouts);
- a directory holding ``.wh..wh..opq`` gets ``trusted.overlay.opaque=y``;
- the TOC and the landmark entries are left out at the layer root.

Every directory's entries are sorted by their name bytes; link counts are counted from
the names shown (a hardlinked file's names, ``2 + subdirectories`` for a directory).
Names, link targets, xattrs and numbers an EROFS image cannot hold are refused with
``UnrepresentableError``, never cut.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from lazybuild.erofs import ondisk
from lazybuild.errors import FormatError
from lazybuild.estargz.index import LayerIndex, Node
from lazybuild.estargz.toc import NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOC_TAR_NAME

WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
OPAQUE_MARKER = ".wh..wh..opq"
HIDDEN_AT_LAYER_ROOT = frozenset({TOC_TAR_NAME, PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK})
OPAQUE_XATTR = "trusted.overlay.opaque"

S_IFMT_BY_TYPE = {
    "reg": 0o100000,
    "dir": 0o040000,
    "symlink": 0o120000,
    "char": 0o020000,
    "block": 0o060000,
    "fifo": 0o010000,
}
FILE_TYPE_BY_TYPE = {
    "reg": ondisk.FT_REG,
    "dir": ondisk.FT_DIR,
    "symlink": ondisk.FT_SYMLINK,
    "char": ondisk.FT_CHR,
    "block": ondisk.FT_BLK,
    "fifo": ondisk.FT_FIFO,
}
_U32 = 0xFFFFFFFF
_S64 = (1 << 63) - 1


class UnrepresentableError(FormatError):
    """The layer holds something an EROFS image cannot (a name over 255 bytes, a link
    target over 4095 bytes, a uid over 32 bits...): the caller may fall back to another
    way of serving it."""


@dataclass(eq=False)
class ImageInode:
    """One inode of the image: a TOC node (or a whiteout made for a marker)."""

    node: Node
    type: str
    mode: int  # st_mode: type bits and permission bits
    uid: int
    gid: int
    mtime: int
    size: int
    rdev: int = 0
    target: bytes = b""  # symlink target
    xattrs: list[tuple[int, bytes, bytes]] = field(default_factory=list)  # (index, suffix, value)
    parent: ImageInode | None = None  # directories: the directory holding it
    entries: list[tuple[bytes, ImageInode]] = field(default_factory=list)  # dirs, sorted
    nlink: int = 0


def _fail(node: Node, message: str) -> UnrepresentableError:
    return UnrepresentableError(f"{node.name or '/'!r}: {message}")


def encode_xattrs(node: Node, xattrs: dict[str, bytes]) -> list[tuple[int, bytes, bytes]]:
    """``(prefix index, suffix, value)``, sorted by full name; names in namespaces an
    EROFS image cannot store (``system.nfs4_acl``, vendor prefixes) are left out, as
    mkfs.erofs leaves them out."""
    encoded = []
    for name in sorted(xattrs, key=lambda n: n.encode("utf-8")):
        raw = name.encode("utf-8")
        value = xattrs[name]
        if len(value) > ondisk.MAX_XATTR_VALUE_SIZE:
            raise _fail(node, f"xattr {name!r:.80} has a {len(value)}-byte value")
        whole = ondisk.XATTR_WHOLE_NAMES.get(raw)
        if whole is not None:
            encoded.append((whole, b"", value))
            continue
        for prefix, index in ondisk.XATTR_PREFIXES:
            if raw.startswith(prefix) and len(raw) > len(prefix):
                suffix = raw[len(prefix) :]
                if len(suffix) > ondisk.MAX_XATTR_NAME_LENGTH:
                    raise _fail(node, f"xattr name {name!r:.80} is over 255 bytes")
                encoded.append((index, suffix, value))
                break
    return encoded


def _inode_for(node: Node) -> ImageInode:
    kind = node.type
    type_bits = S_IFMT_BY_TYPE.get(kind)
    if type_bits is None:
        raise _fail(node, f"type {kind!r} has no EROFS form")
    uid = node.uid
    gid = node.gid
    if not (0 <= uid <= _U32 and 0 <= gid <= _U32):
        what, value = ("uid", uid) if not 0 <= uid <= _U32 else ("gid", gid)
        raise _fail(node, f"{what} {value} does not fit in 32 bits")
    seconds = node.mtime or 0
    if not -_S64 <= seconds <= _S64:
        raise _fail(node, f"mtime {seconds} does not fit in 64 bits")
    # Linux makes every symlink 0777 and no extractor (Docker's included) can change
    # that, so a TOC's other symlink mode would show where an unpacked layer shows 0777.
    permissions = 0o777 if kind == "symlink" else node.mode & 0o7777
    inode = ImageInode(
        node=node,
        type=kind,
        mode=type_bits | permissions,
        uid=uid,
        gid=gid,
        mtime=seconds,
        size=node.size if kind == "reg" else 0,
        xattrs=encode_xattrs(node, node.xattrs) if node.xattrs else [],
    )
    if kind == "reg":
        return inode
    if kind == "symlink":
        inode.target = node.link_name.encode("utf-8")
        if not 0 < len(inode.target) <= ondisk.MAX_SYMLINK_LENGTH:
            raise _fail(node, f"symlink target of {len(inode.target)} bytes (1 to 4095 fit)")
        inode.size = len(inode.target)
    elif kind in ("char", "block"):
        if node.dev_major > ondisk.MAX_DEV_MAJOR or node.dev_minor > ondisk.MAX_DEV_MINOR:
            raise _fail(node, f"device {node.dev_major}:{node.dev_minor} is out of range")
        inode.rdev = ondisk.encode_rdev(node.dev_major, node.dev_minor)
    return inode


def _whiteout(marker: Node) -> ImageInode:
    return ImageInode(
        node=marker,
        type="char",
        mode=S_IFMT_BY_TYPE["char"],
        uid=marker.uid,
        gid=marker.gid,
        mtime=marker.mtime or 0,
        size=0,
    )


def _shown_children(
    directory: Node, *, at_layer_root: bool
) -> tuple[dict[bytes, Node], dict[bytes, Node], bool]:
    """(real children, whiteout markers by the name they hide, opaque?)."""
    shown: dict[bytes, Node] = {}
    whiteouts: dict[bytes, Node] = {}
    opaque = False
    for name, child in directory.children.items():
        if name == OPAQUE_MARKER:
            opaque = True
        elif name.startswith(WHITEOUT_META_PREFIX) or name in (".", ".."):
            continue
        elif name.startswith(WHITEOUT_PREFIX):
            hidden = name[len(WHITEOUT_PREFIX) :]
            if hidden:
                whiteouts[hidden.encode("utf-8")] = child
        elif not (at_layer_root and name in HIDDEN_AT_LAYER_ROOT):
            shown[name.encode("utf-8")] = child
    return shown, whiteouts, opaque


def present(index: LayerIndex) -> list[ImageInode]:
    """Every inode of the image, breadth first from the root (so the root comes first,
    and a directory's children sit together); hardlinked names share one inode."""
    root = _inode_for(index.root)
    root.parent = root
    ordered = [root]
    inodes: dict[Node, ImageInode] = {index.root: root}
    queue: deque[ImageInode] = deque([root])
    while queue:
        directory = queue.popleft()
        shown, whiteouts, opaque = _shown_children(directory.node, at_layer_root=directory is root)
        if opaque:
            xattrs = dict(directory.node.xattrs)
            xattrs[OPAQUE_XATTR] = b"y"
            directory.xattrs = encode_xattrs(directory.node, xattrs)
        whiteout_names = {hidden for hidden in whiteouts if hidden not in shown}
        for hidden in whiteout_names:
            shown[hidden] = whiteouts[hidden]
        entries = []
        subdirectories = 0
        for name in sorted(shown):
            if len(name) > ondisk.MAX_NAME_LENGTH:
                raise _fail(directory.node, f"entry name of {len(name)} bytes (255 fit)")
            child = shown[name]
            if name in whiteout_names:
                inode = _whiteout(child)
                ordered.append(inode)
            else:
                existing = inodes.get(child)
                if existing is None:
                    inode = _inode_for(child)
                    inodes[child] = inode
                    ordered.append(inode)
                    if inode.type == "dir":
                        inode.parent = directory
                        queue.append(inode)
                else:
                    inode = existing
            inode.nlink += 1
            subdirectories += inode.type == "dir"
            entries.append((name, inode))
        directory.entries = entries
        directory.nlink = 2 + subdirectories
    return ordered


def release(inodes: list[ImageInode]) -> None:
    """Unlink the inodes from each other (a directory and its children refer to each
    other), so that reference counting frees them once the image is encoded instead of
    leaving tens of thousands of cycles to the garbage collector."""
    for inode in inodes:
        if inode.type == "dir":
            inode.parent = None
            inode.entries = []
