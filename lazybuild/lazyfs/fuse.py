"""One read-only FUSE filesystem serving every lazy layer as an EROFS image file.

A layer named ``<name>`` is shown as two entries of the root: ``/<name>.erofs``, a
read-only file holding its EROFS image (``lazybuild.erofs``), and ``/<name>``, an empty
directory the kernel mounts that image on (``erofsmount``). A layer whose whole image is
a local file (``whole_images``) is shown as the directory alone. Every lookup, stat,
readlink, getxattr and readdir inside a layer is answered by the kernel's EROFS from the
image's metadata; only reads of the image file come here.

A read of the image: below ``data_start`` a slice of the layout's metadata (local
bytes); above it, ``extents_at`` names the files and file offsets the range covers, each
read through the layer (verified chunks, chunk cache, prefetch, read-ahead), and
``ErofsLayout.read`` puts them together, zeros for the padding between files. Each piece
is reported to the access log as a read of its file, which is how the read recorder and
the workload record learn file names and offsets from image offsets.

Handlers do no blocking work themselves: content reads are awaited (the layer
decompresses and touches the disk in worker threads), the rest is dictionary lookups.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import pyfuse3

from lazybuild.erofs import ErofsLayout
from lazybuild.estargz.index import LayerIndex, Node

log = logging.getLogger(__name__)

ROOT_INODE = pyfuse3.ROOT_INODE
# An image never changes while mounted, so the kernel may cache its entries for long.
CONTENT_TIMEOUT = 24 * 3600.0
# The root lists layers, which come and go.
ROOT_TIMEOUT = 1.0
BLOCK_SIZE = 4096
DIRECTORY_SIZE = 4096

IMAGE_SUFFIX = ".erofs"
# Read failures kept for the owner's report (the first ones: they say what went wrong).
MAX_READ_FAILURES = 64

AccessLog = Callable[[str, str, int, int, int], None]
"""Called for every piece of file data read, with (layer name, path inside the layer,
offset, size, file size)."""


def image_file_name(layer_name: str) -> str:
    return layer_name + IMAGE_SUFFIX


class LayerContent(Protocol):
    index: LayerIndex

    async def read_many(
        self, ranges: Sequence[tuple[Node, int, int]]
    ) -> Sequence[bytes | Exception]:
        """Each (node, offset, size) read, together; a failed one holds its exception."""
        ...


class _LayerImage:
    """A layer shown as an EROFS image: the file ``/<name>.erofs`` (when served from
    here: ``layout`` and ``content``) and the directory ``/<name>`` the image is mounted
    on, each with an inode number of its own (never reused while mounted, and also its
    position in the root's listing)."""

    __slots__ = ("content", "directory_inode", "file_inode", "layout", "mtime_ns", "name")

    def __init__(
        self,
        name: str,
        layout: ErofsLayout | None,
        content: LayerContent | None,
        directory_inode: int,
    ) -> None:
        self.name = name
        self.layout = layout
        self.content = content
        self.directory_inode = directory_inode
        self.file_inode = directory_inode + 1
        self.mtime_ns = time.time_ns()

    @property
    def file_name(self) -> str:
        return image_file_name(self.name)

    @property
    def image_size(self) -> int:
        return 0 if self.layout is None else self.layout.image_size

    def attributes(self, *, file: bool) -> pyfuse3.EntryAttributes:
        attributes = pyfuse3.EntryAttributes()
        if file:
            attributes.st_ino = self.file_inode
            attributes.st_mode = stat.S_IFREG | 0o444
            attributes.st_nlink = 1
            attributes.st_size = self.image_size
            attributes.st_blocks = -(-self.image_size // 512)
        else:
            attributes.st_ino = self.directory_inode
            attributes.st_mode = stat.S_IFDIR | 0o755
            attributes.st_nlink = 2
            attributes.st_size = DIRECTORY_SIZE
            attributes.st_blocks = DIRECTORY_SIZE // 512
        attributes.st_blksize = BLOCK_SIZE
        attributes.st_atime_ns = attributes.st_mtime_ns = self.mtime_ns
        attributes.st_ctime_ns = self.mtime_ns
        attributes.entry_timeout = attributes.attr_timeout = CONTENT_TIMEOUT
        return attributes


def _absent() -> pyfuse3.EntryAttributes:
    """A negative entry the kernel may cache: the directory an image is mounted on never
    gains a name."""
    attributes = pyfuse3.EntryAttributes()
    attributes.st_ino = 0
    attributes.entry_timeout = CONTENT_TIMEOUT
    return attributes


def _erofs() -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(errno.EROFS)


class LazyFilesystem(pyfuse3.Operations):
    """``add_image``/``remove_image`` may be called while mounted (from the same trio loop)."""

    def __init__(
        self,
        *,
        access_log: AccessLog | None = None,
    ) -> None:
        super().__init__()
        self.access_log = access_log
        # Layers by name, and (image, is the file) by inode number.
        self._images: dict[str, _LayerImage] = {}
        self._by_inode: dict[int, tuple[_LayerImage, bool]] = {}
        # Two numbers per image; the root is 1.
        self._next_inodes = itertools.count(ROOT_INODE + 1, 2)
        self._open_images: dict[int, _LayerImage] = {}
        self._next_handle = 1
        self._root_mtime_ns = time.time_ns()
        self._session_running = False
        # Reads answered with EIO: (layer name, path) -> what failed, first ones kept.
        self._read_failures: dict[tuple[str, str], str] = {}

    # -- layers ----------------------------------------------------------------

    def add_image(self, name: str, layout: ErofsLayout, layer: LayerContent) -> None:
        """Show ``layer`` as ``/<name>.erofs`` (its EROFS image, ``layout``) and an empty
        ``/<name>`` to mount it on."""
        self._add(name, layout, layer)

    def add_mount_point(self, name: str) -> None:
        """Show an empty ``/<name>`` to mount a layer's local whole image on."""
        self._add(name, None, None)

    def _add(self, name: str, layout: ErofsLayout | None, layer: LayerContent | None) -> None:
        if not name or "/" in name or name in (".", "..") or name.endswith(IMAGE_SUFFIX):
            raise ValueError(f"bad layer name {name!r}")
        if name in self._images:
            raise ValueError(f"layer {name!r} is already mounted")
        image = _LayerImage(name, layout, layer, next(self._next_inodes))
        self._images[name] = image
        self._by_inode[image.directory_inode] = (image, False)
        if layout is not None:
            self._by_inode[image.file_inode] = (image, True)
        self._root_mtime_ns = time.time_ns()

    def remove_image(self, name: str) -> None:
        image = self._images.pop(name, None)
        if image is None:
            return
        self._by_inode.pop(image.directory_inode, None)
        self._by_inode.pop(image.file_inode, None)
        self._root_mtime_ns = time.time_ns()
        if self._session_running:
            # The kernel caches the names for CONTENT_TIMEOUT; make it look again.
            for shown in (image.name, image.file_name):
                pyfuse3.invalidate_entry_async(
                    pyfuse3.ROOT_INODE, os.fsencode(shown), ignore_enoent=True
                )

    @property
    def layer_names(self) -> list[str]:
        return list(self._images)

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

    # -- metadata --------------------------------------------------------------

    def init(self) -> None:
        self._session_running = True

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if parent_inode == ROOT_INODE:
            shown = self._image_named(os.fsdecode(name))
            if shown is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return shown[0].attributes(file=shown[1])
        if self._resolve(parent_inode)[1]:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return _absent()  # the directory an image is mounted on is empty

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if inode == ROOT_INODE:
            return self._root_attributes()
        image, file = self._resolve(inode)
        return image.attributes(file=file)

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        raise pyfuse3.FUSEError(errno.EINVAL)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        return None  # inode numbers live as long as their image

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        # overlayfs refuses a lower directory whose filesystem has no statfs.
        data = pyfuse3.StatvfsData()
        data.f_bsize = BLOCK_SIZE
        data.f_frsize = BLOCK_SIZE
        data.f_blocks = sum(image.image_size // BLOCK_SIZE for image in self._images.values())
        data.f_bfree = data.f_bavail = 0
        data.f_files = 1 + len(self._by_inode)
        data.f_ffree = data.f_favail = 0
        data.f_namemax = 255
        return data

    # -- extended attributes: none here (the images' own are the kernel's) -----

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        return []

    # -- directories -----------------------------------------------------------

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if inode != ROOT_INODE and self._resolve(inode)[1]:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode  # listings are derived from the inode; no per-open state

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        if fh != ROOT_INODE:
            return  # the directory an image is mounted on is empty
        # Offsets are inode numbers, which never move: concurrent add/remove is safe.
        shown = sorted(
            (inode, image, file)
            for inode, (image, file) in self._by_inode.items()
            if inode > start_id
        )
        for inode, image, file in shown:
            name = image.file_name if file else image.name
            if not pyfuse3.readdir_reply(
                token, os.fsencode(name), image.attributes(file=file), inode
            ):
                return

    async def releasedir(self, fh: int) -> None:
        return None

    # -- files -----------------------------------------------------------------

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise _erofs()
        image, file = self._resolve(inode)
        if not file:
            raise pyfuse3.FUSEError(errno.EISDIR)
        handle = self._next_handle
        self._next_handle += 1
        self._open_images[handle] = image
        # Direct: EROFS keeps the pages of the files in the image itself, and the
        # image's page cache would read ahead across file boundaries into files
        # nobody asked for (on-demand fetches of bytes no workload read).
        return pyfuse3.FileInfo(fh=handle, direct_io=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        image = self._open_images.get(fh)
        if image is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        return await self._read_image(image, off, size)

    async def _read_image(self, image: _LayerImage, offset: int, size: int) -> bytes:
        """Image bytes: metadata from memory, file data through the layer: the files the
        range covers read together (their missing chunks in one request), each logged
        as a read of that file."""
        layout, content = image.layout, image.content
        if layout is None or content is None:  # a mount point has no image file here
            raise pyfuse3.FUSEError(errno.EBADF)
        size = min(size, layout.image_size - offset)
        if size <= 0:
            return b""
        pieces = layout.extents_at(offset, size)
        if not pieces:
            return layout.read(offset, size, [])
        if self.access_log is not None:
            for piece in pieces:
                node = piece.node
                self.access_log(image.name, node.name, piece.file_offset, piece.length, node.size)
        try:
            results = await content.read_many(
                [(piece.node, piece.file_offset, piece.length) for piece in pieces]
            )
        except Exception as exc:
            # A bug must not take the whole mount (and every container on it) down.
            log.exception("layer %s: image read at %d failed", image.name, offset)
            self._note_read_failure(
                image.name,
                "/" + image.file_name,
                f"internal error: {type(exc).__name__}: {exc}",
            )
            raise pyfuse3.FUSEError(errno.EIO) from None
        contents: list[bytes] = []
        for piece, result in zip(pieces, results, strict=True):
            if isinstance(result, bytes):
                contents.append(result)
            else:  # a range holds why it could not be had: name its file
                log.error("layer %s: /%s: read failed: %s", image.name, piece.node.name, result)
                self._note_read_failure(image.name, "/" + piece.node.name, str(result))
        if len(contents) < len(pieces):
            raise pyfuse3.FUSEError(errno.EIO)
        try:
            return layout.read(offset, size, list(zip(pieces, contents, strict=True)))
        except ValueError as exc:  # a short read: the layer and its index disagree
            log.error("layer %s: image read at %d failed: %s", image.name, offset, exc)
            self._note_read_failure(image.name, "/" + image.file_name, str(exc))
            raise pyfuse3.FUSEError(errno.EIO) from None

    async def release(self, fh: int) -> None:
        self._open_images.pop(fh, None)

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
        if stem != name and stem in self._images and self._images[stem].layout is not None:
            return self._images[stem], True
        return None

    def _resolve(self, inode: int) -> tuple[_LayerImage, bool]:
        found = self._by_inode.get(inode)
        if found is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return found

    def _root_attributes(self) -> pyfuse3.EntryAttributes:
        attributes = pyfuse3.EntryAttributes()
        attributes.st_ino = ROOT_INODE
        attributes.st_mode = stat.S_IFDIR | 0o755
        attributes.st_nlink = 2 + len(self._images)
        attributes.st_size = DIRECTORY_SIZE
        attributes.st_blksize = BLOCK_SIZE
        attributes.st_blocks = DIRECTORY_SIZE // 512
        attributes.st_atime_ns = attributes.st_mtime_ns = self._root_mtime_ns
        attributes.st_ctime_ns = self._root_mtime_ns
        attributes.entry_timeout = attributes.attr_timeout = ROOT_TIMEOUT
        return attributes
