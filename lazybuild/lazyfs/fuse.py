"""One read-only FUSE filesystem serving many layers: ``/<name>/`` is a layer's root.

The tree logic lives in ``inodes``; this module translates FUSE requests into it and
into ``LayerContent.read``. With ``LAZYBUILD_LAYER_FORMAT=erofs`` (see ``imagefile``),
a layer is shown instead as ``/<name>.erofs``, a read-only file holding an EROFS image
of it, next to ``/<name>/``, an empty directory for the kernel to mount that image on.

Handlers do no blocking work themselves: content reads are awaited (the layer
decompresses and touches the disk in worker threads), the rest is dictionary lookups.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Protocol

import pyfuse3
import trio

from lazybuild.erofs import ErofsLayout, Piece
from lazybuild.errors import LazybuildError
from lazybuild.estargz.index import LayerIndex, Node
from lazybuild.lazyfs.imagefile import IMAGE_SUFFIX, image_file_name
from lazybuild.lazyfs.inodes import ROOT_INODE, InodeTable, LayerTree, first_inode, slot_of

log = logging.getLogger(__name__)

# Layer content never changes while mounted, so the kernel may cache it for long.
CONTENT_TIMEOUT = 24 * 3600.0
# The root lists layers, which come and go.
ROOT_TIMEOUT = 1.0
BLOCK_SIZE = 4096
DIRECTORY_SIZE = 4096
OPAQUE_XATTRS = (b"trusted.overlay.opaque",)
_FILE_TYPES = {
    "dir": stat.S_IFDIR,
    "reg": stat.S_IFREG,
    "symlink": stat.S_IFLNK,
    "char": stat.S_IFCHR,
    "block": stat.S_IFBLK,
    "fifo": stat.S_IFIFO,
}
_NANOS = 1_000_000_000

# Read failures kept for the owner's report (the first ones: they say what went wrong).
MAX_READ_FAILURES = 64

AccessLog = Callable[[str, str, int, int, int], None]
"""Called on every open and read with (layer name, path inside the layer, offset, size,
file size); an open reads nothing (offset and size 0)."""


class LayerContent(Protocol):
    index: LayerIndex

    async def read(self, node: Node, offset: int, size: int) -> bytes: ...


class _OpenFile:
    __slots__ = ("content", "node", "tree")

    def __init__(self, tree: LayerTree, node: Node, content: LayerContent) -> None:
        self.tree = tree
        self.node = node
        self.content = content


class _LayerImage:
    """A layer shown as an EROFS image: the file ``/<name>.erofs`` and the directory
    ``/<name>`` the image is mounted on, each in a slot of its own."""

    __slots__ = ("content", "directory_slot", "file_slot", "layout", "mtime_ns", "name")

    def __init__(
        self, name: str, layout: ErofsLayout, content: LayerContent, table: InodeTable
    ) -> None:
        self.name = name
        self.layout = layout
        self.content = content
        self.directory_slot = table.reserve_slot()
        self.file_slot = table.reserve_slot()
        self.mtime_ns = time.time_ns()

    @property
    def file_name(self) -> str:
        return image_file_name(self.name)

    def attributes(self, *, file: bool) -> pyfuse3.EntryAttributes:
        attributes = pyfuse3.EntryAttributes()
        if file:
            attributes.st_ino = first_inode(self.file_slot)
            attributes.st_mode = stat.S_IFREG | 0o444
            attributes.st_nlink = 1
            attributes.st_size = self.layout.image_size
            attributes.st_blocks = -(-self.layout.image_size // 512)
        else:
            attributes.st_ino = first_inode(self.directory_slot)
            attributes.st_mode = stat.S_IFDIR | 0o755
            attributes.st_nlink = 2
            attributes.st_size = DIRECTORY_SIZE
            attributes.st_blocks = DIRECTORY_SIZE // 512
        attributes.st_blksize = BLOCK_SIZE
        attributes.st_atime_ns = attributes.st_mtime_ns = self.mtime_ns
        attributes.st_ctime_ns = self.mtime_ns
        attributes.entry_timeout = attributes.attr_timeout = CONTENT_TIMEOUT
        return attributes


class _OpenImage:
    __slots__ = ("image",)

    def __init__(self, image: _LayerImage) -> None:
        self.image = image


def _absent() -> pyfuse3.EntryAttributes:
    """A negative entry the kernel may cache: a layer never gains a name while mounted,
    and overlayfs looks every name up in every lower layer, so "not here" is most of what
    a build's lookups return."""
    attributes = pyfuse3.EntryAttributes()
    attributes.st_ino = 0
    attributes.entry_timeout = CONTENT_TIMEOUT
    return attributes


def _erofs() -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(errno.EROFS)


class LazyFilesystem(pyfuse3.Operations):
    """``add_layer``/``remove_layer`` may be called while mounted (from the same trio loop)."""

    def __init__(
        self,
        *,
        access_log: AccessLog | None = None,
        foreground: Callable[[], AbstractAsyncContextManager[object]] | None = None,
        opaque_xattrs: Sequence[bytes] = OPAQUE_XATTRS,
    ) -> None:
        super().__init__()
        self.access_log = access_log
        # Brackets each content read, so background fetching yields to it.
        self._foreground = foreground
        self._opaque_xattrs = tuple(opaque_xattrs)
        self._table = InodeTable()
        self._contents: dict[str, LayerContent] = {}
        self._open_files: dict[int, _OpenFile | _OpenImage] = {}
        # Layers shown as EROFS images: by layer name, and (image, is the file) by slot.
        self._images: dict[str, _LayerImage] = {}
        self._image_slots: dict[int, tuple[_LayerImage, bool]] = {}
        self._next_handle = 1
        self._root_mtime_ns = time.time_ns()
        self._session_running = False
        # Reads answered with EIO: (layer name, path) -> what failed, first ones kept.
        self._read_failures: dict[tuple[str, str], str] = {}

    # -- layers ----------------------------------------------------------------

    def add_layer(self, name: str, layer: LayerContent) -> None:
        self._table.add(name, layer.index)
        self._contents[name] = layer
        self._root_mtime_ns = time.time_ns()

    def add_image(self, name: str, layout: ErofsLayout, layer: LayerContent) -> None:
        """Show ``layer`` as ``/<name>.erofs`` (its EROFS image, ``layout``) and an empty
        ``/<name>`` to mount it on (see ``imagefile``)."""
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"bad layer name {name!r}")
        if name in self._images or self._table.by_name(name) is not None:
            raise ValueError(f"layer {name!r} is already mounted")
        image = _LayerImage(name, layout, layer, self._table)
        self._images[name] = image
        self._image_slots[image.directory_slot] = (image, False)
        self._image_slots[image.file_slot] = (image, True)
        self._root_mtime_ns = time.time_ns()

    def remove_image(self, name: str) -> None:
        image = self._images.pop(name, None)
        if image is None:
            return
        self._image_slots.pop(image.directory_slot, None)
        self._image_slots.pop(image.file_slot, None)
        self._root_mtime_ns = time.time_ns()
        if self._session_running:
            for shown in (image.name, image.file_name):
                pyfuse3.invalidate_entry_async(
                    pyfuse3.ROOT_INODE, os.fsencode(shown), ignore_enoent=True
                )

    def remove_layer(self, name: str) -> None:
        self._table.remove(name)
        self._contents.pop(name, None)
        self._root_mtime_ns = time.time_ns()
        if self._session_running:
            # The kernel caches the name for CONTENT_TIMEOUT; make it look again.
            pyfuse3.invalidate_entry_async(
                pyfuse3.ROOT_INODE, os.fsencode(name), ignore_enoent=True
            )

    async def forget_cached_pages(self, min_size: int) -> None:
        """Drop the kernel's cached pages of the regular files over ``min_size`` that it
        has seen, so their next reads come here (and reach the access log) again."""
        if not self._session_running:
            return
        inodes = [
            inode
            for tree in self._table.layers()
            for inode, node in tree.shown()
            if node.type == "reg" and node.size > min_size
        ]
        # (Image files have no cached pages: they are opened for direct I/O. The pages
        # of the files in them are the EROFS mounts', see ``LayerSource``.)
        # In a thread: the kernel waits for pages locked by reads in flight, and those
        # are answered by this loop.
        await trio.to_thread.run_sync(_invalidate_pages, inodes)

    def read_failures(self) -> list[dict[str, str]]:
        """The reads answered with EIO so far, one per file (its first failure): layer
        name, path in the layer, and what failed. The workload sees only "input/output
        error"; its owner reports these (``stats``)."""
        return [
            {"layer": layer, "path": path, "error": error}
            for (layer, path), error in self._read_failures.items()
        ]

    def _note_read_failure(self, layer: str, path: str, error: str) -> None:
        if len(self._read_failures) < MAX_READ_FAILURES:
            self._read_failures.setdefault((layer, path), " ".join(error.split()))

    @property
    def layer_names(self) -> list[str]:
        return [tree.name for tree in self._table.layers()]

    # -- metadata --------------------------------------------------------------

    def init(self) -> None:
        self._session_running = True

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if parent_inode == ROOT_INODE:
            shown = self._image_named(os.fsdecode(name))
            if shown is not None:
                return shown[0].attributes(file=shown[1])
            tree = self._table.by_name(os.fsdecode(name))
            if tree is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            node = tree.index.root
        else:
            in_image = self._image_slots.get(slot_of(parent_inode))
            if in_image is not None:
                if in_image[1]:
                    raise pyfuse3.FUSEError(errno.ENOTDIR)
                return _absent()  # the directory an image is mounted on is empty
            tree, directory = self._resolve(parent_inode)
            if directory.type != "dir":
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            found = tree.lookup(directory, name)
            if found is None:
                return _absent()
            node = found
        self._table.remember(tree)
        return self._attributes(tree, node)

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if inode == ROOT_INODE:
            return self._root_attributes()
        in_image = self._image_slots.get(slot_of(inode))
        if in_image is not None:
            return in_image[0].attributes(file=in_image[1])
        return self._attributes(*self._resolve(inode))

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        if slot_of(inode) in self._image_slots:
            raise pyfuse3.FUSEError(errno.EINVAL)
        _, node = self._resolve(inode)
        if node.type != "symlink":
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(node.link_name)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            if inode != ROOT_INODE and slot_of(inode) not in self._image_slots:
                self._table.forget(inode, count)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        # overlayfs refuses a lower directory whose filesystem has no statfs.
        layers = self._table.layers()
        data = pyfuse3.StatvfsData()
        data.f_bsize = BLOCK_SIZE
        data.f_frsize = BLOCK_SIZE
        images = list(self._images.values())
        data.f_blocks = sum(-(-tree.content_bytes // BLOCK_SIZE) for tree in layers) + sum(
            image.layout.image_size // BLOCK_SIZE for image in images
        )
        data.f_bfree = data.f_bavail = 0
        data.f_files = 1 + sum(tree.inode_count for tree in layers) + 2 * len(images)
        data.f_ffree = data.f_favail = 0
        data.f_namemax = 255
        return data

    # -- extended attributes ---------------------------------------------------

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        for xattr_name, value in self._xattrs(inode):
            if xattr_name == name:
                return value
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        return [name for name, _ in self._xattrs(inode)]

    def _xattrs(self, inode: int) -> list[tuple[bytes, bytes]]:
        if inode == ROOT_INODE or slot_of(inode) in self._image_slots:
            return []
        tree, node = self._resolve(inode)
        found = [(os.fsencode(name), value) for name, value in node.xattrs.items()]
        if node.type == "dir" and tree.listing(node).opaque:
            found += [(name, b"y") for name in self._opaque_xattrs]
        return found

    # -- directories -----------------------------------------------------------

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        in_image = self._image_slots.get(slot_of(inode))
        if in_image is not None:
            if in_image[1]:
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            return inode
        if inode != ROOT_INODE and self._resolve(inode)[1].type != "dir":
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode  # listings are derived from the inode; no per-open state

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        if fh == ROOT_INODE:
            await self._readdir_root(start_id, token)
            return
        if slot_of(fh) in self._image_slots:
            return  # the directory an image is mounted on is empty
        tree, directory = self._resolve(fh)
        entries = tree.listing(directory).entries
        for position in range(start_id, len(entries)):
            name, node = entries[position]
            if not pyfuse3.readdir_reply(token, name, self._attributes(tree, node), position + 1):
                return
            self._table.remember(tree)

    async def _readdir_root(self, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        # Offsets are slots, which never move: concurrent add/remove is safe.
        shown: list[tuple[int, str, LayerTree | None, pyfuse3.EntryAttributes]] = [
            (tree.slot, tree.name, tree, self._attributes(tree, tree.index.root))
            for tree in self._table.layers_after(start_id)
        ]
        for slot, (image, file) in self._image_slots.items():
            if slot > start_id:
                name = image.file_name if file else image.name
                shown.append((slot, name, None, image.attributes(file=file)))
        for slot, name, tree, attributes in sorted(shown, key=lambda entry: entry[0]):
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attributes, slot):
                return
            if tree is not None:
                self._table.remember(tree)

    async def releasedir(self, fh: int) -> None:
        return None

    # -- files -----------------------------------------------------------------

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise _erofs()
        in_image = self._image_slots.get(slot_of(inode))
        if in_image is not None:
            if not in_image[1]:
                raise pyfuse3.FUSEError(errno.EISDIR)
            handle = self._next_handle
            self._next_handle += 1
            self._open_files[handle] = _OpenImage(in_image[0])
            # Direct: EROFS keeps the pages of the files in the image itself, and the
            # image's page cache would read ahead across file boundaries into files
            # nobody asked for (on-demand fetches of bytes no workload read).
            return pyfuse3.FileInfo(fh=handle, direct_io=True)
        tree, node = self._resolve(inode)
        if node.type == "dir":
            raise pyfuse3.FUSEError(errno.EISDIR)
        content = self._contents.get(tree.name)
        if node.type != "reg" or content is None:
            raise pyfuse3.FUSEError(errno.EACCES if content is not None else errno.ENOENT)
        handle = self._next_handle
        self._next_handle += 1
        self._open_files[handle] = _OpenFile(tree, node, content)
        self._record_access(tree, node, 0, 0)
        # Immutable content: let the page cache keep it across opens.
        return pyfuse3.FileInfo(fh=handle, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        opened = self._open_files.get(fh)
        if opened is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        if isinstance(opened, _OpenImage):
            return await self._read_image(opened.image, off, size)
        node = opened.node
        size = min(size, node.size - off)
        if size <= 0:
            return b""
        self._record_access(opened.tree, node, off, size)
        try:
            async with self._foreground() if self._foreground else nullcontext():
                return await opened.content.read(node, off, size)
        except (LazybuildError, OSError) as exc:
            log.error("layer %s: /%s: read failed: %s", opened.tree.name, node.name, exc)
            self._note_read_failure(opened.tree.name, "/" + node.name, str(exc))
        except Exception as exc:
            # A bug must not take the whole mount (and every container on it) down.
            log.exception("layer %s: /%s: read failed", opened.tree.name, node.name)
            self._note_read_failure(
                opened.tree.name, "/" + node.name, f"internal error: {type(exc).__name__}: {exc}"
            )
        raise pyfuse3.FUSEError(errno.EIO)

    async def _read_image(self, image: _LayerImage, offset: int, size: int) -> bytes:
        """Image bytes: metadata from memory, file data through the layer, one read per
        file the range covers (concurrently), each logged as a read of that file."""
        layout = image.layout
        size = min(size, layout.image_size - offset)
        if size <= 0:
            return b""
        pieces = layout.extents_at(offset, size)
        if not pieces:
            return layout.read(offset, size, [])
        contents: list[bytes] = [b""] * len(pieces)
        failed = False

        async def read_piece(position: int, piece: Piece) -> None:
            nonlocal failed
            node = piece.node
            if self.access_log is not None:
                self.access_log(image.name, node.name, piece.file_offset, piece.length, node.size)
            try:
                contents[position] = await image.content.read(node, piece.file_offset, piece.length)
                return
            except (LazybuildError, OSError) as exc:
                log.error("layer %s: /%s: read failed: %s", image.name, node.name, exc)
                self._note_read_failure(image.name, "/" + node.name, str(exc))
            except Exception as exc:
                log.exception("layer %s: /%s: read failed", image.name, node.name)
                self._note_read_failure(
                    image.name, "/" + node.name, f"internal error: {type(exc).__name__}: {exc}"
                )
            failed = True

        async with self._foreground() if self._foreground else nullcontext():
            if len(pieces) == 1:
                await read_piece(0, pieces[0])
            else:
                async with trio.open_nursery() as nursery:
                    for position, piece in enumerate(pieces):
                        nursery.start_soon(read_piece, position, piece)
        if failed:
            raise pyfuse3.FUSEError(errno.EIO)
        try:
            return layout.read(offset, size, list(zip(pieces, contents, strict=True)))
        except ValueError as exc:  # a short read: the layer and its index disagree
            log.error("layer %s: image read at %d failed: %s", image.name, offset, exc)
            self._note_read_failure(image.name, "/" + image.file_name, str(exc))
            raise pyfuse3.FUSEError(errno.EIO) from None

    async def release(self, fh: int) -> None:
        self._open_files.pop(fh, None)

    # -- writes: a read-only filesystem ------------------------------------------

    async def setattr(self, *args: object) -> pyfuse3.EntryAttributes:
        raise _erofs()

    async def mknod(self, *args: object) -> pyfuse3.EntryAttributes:
        raise _erofs()

    async def mkdir(self, *args: object) -> pyfuse3.EntryAttributes:
        raise _erofs()

    async def unlink(self, *args: object) -> None:
        raise _erofs()

    async def rmdir(self, *args: object) -> None:
        raise _erofs()

    async def symlink(self, *args: object) -> pyfuse3.EntryAttributes:
        raise _erofs()

    async def rename(self, *args: object) -> None:
        raise _erofs()

    async def link(self, *args: object) -> pyfuse3.EntryAttributes:
        raise _erofs()

    async def write(self, *args: object) -> int:
        raise _erofs()

    async def create(self, *args: object) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        raise _erofs()

    async def setxattr(self, *args: object) -> None:
        raise _erofs()

    async def removexattr(self, *args: object) -> None:
        raise _erofs()

    # -- helpers ---------------------------------------------------------------

    def _image_named(self, name: str) -> tuple[_LayerImage, bool] | None:
        """The image a root name shows, and whether the name is its file."""
        if name in self._images:
            return self._images[name], False
        stem = name.removesuffix(IMAGE_SUFFIX)
        if stem != name and stem in self._images:
            return self._images[stem], True
        return None

    def _resolve(self, inode: int) -> tuple[LayerTree, Node]:
        found = self._table.resolve(inode)
        if found is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return found

    def _record_access(self, tree: LayerTree, node: Node, offset: int, size: int) -> None:
        if self.access_log is not None:
            self.access_log(tree.name, node.name, offset, size, node.size)

    def _attributes(self, tree: LayerTree, node: Node) -> pyfuse3.EntryAttributes:
        return node_attributes(tree.inode_of(node), node)

    def _root_attributes(self) -> pyfuse3.EntryAttributes:
        attributes = pyfuse3.EntryAttributes()
        attributes.st_ino = ROOT_INODE
        attributes.st_mode = stat.S_IFDIR | 0o755
        attributes.st_nlink = 2 + len(self._table.layers()) + len(self._images)
        attributes.st_size = DIRECTORY_SIZE
        attributes.st_blksize = BLOCK_SIZE
        attributes.st_blocks = DIRECTORY_SIZE // 512
        attributes.st_atime_ns = attributes.st_mtime_ns = self._root_mtime_ns
        attributes.st_ctime_ns = self._root_mtime_ns
        attributes.entry_timeout = attributes.attr_timeout = ROOT_TIMEOUT
        return attributes


def _invalidate_pages(inodes: Sequence[int]) -> None:
    for inode in inodes:
        # OSError: the kernel has forgotten the inode already, so nothing is cached.
        with contextlib.suppress(OSError):
            pyfuse3.invalidate_inode(inode, attr_only=False)


def node_attributes(inode: int, node: Node) -> pyfuse3.EntryAttributes:
    """``stat`` of a layer node: type bits from ``node.type``, ctime = atime = mtime."""
    attributes = pyfuse3.EntryAttributes()
    attributes.st_ino = inode
    attributes.st_mode = _FILE_TYPES[node.type] | node.mode
    attributes.st_nlink = node.nlink
    attributes.st_uid = node.uid
    attributes.st_gid = node.gid
    if node.type in ("char", "block"):
        attributes.st_rdev = os.makedev(node.dev_major, node.dev_minor)
    size = node_size(node)
    attributes.st_size = size
    attributes.st_blksize = BLOCK_SIZE
    attributes.st_blocks = -(-size // 512)
    mtime_ns = (node.mtime or 0) * _NANOS
    attributes.st_atime_ns = attributes.st_mtime_ns = attributes.st_ctime_ns = mtime_ns
    attributes.entry_timeout = attributes.attr_timeout = CONTENT_TIMEOUT
    return attributes


def node_size(node: Node) -> int:
    if node.type == "reg":
        return node.size
    if node.type == "symlink":
        return len(os.fsencode(node.link_name))
    if node.type == "dir":
        return DIRECTORY_SIZE
    return 0
