"""Kernel EROFS mounts of the layer images the filesystem process serves.

``mount_erofs(image, target)`` mounts an image file read-only: straight from the file
where the kernel allows it (Linux >= 6.12), else through a read-only loop device set
up with ``LOOP_CONFIGURE`` and ``LO_FLAGS_AUTOCLEAR``, so the device detaches itself
when the mount lets go of it (on unmount, lazy or not, and when a process that set it
up dies before mounting). Call it from a worker thread when the image is served by the
calling process: the kernel reads the superblock through it, and walking to the
target through the FUSE mount may ask it for attributes.

``unmount_erofs`` unmounts through a descriptor of the mount's root opened at mount
time (``/proc/self/fd/N``), not through its path: a path walk through the FUSE mount
can wait for an answer from the process that serves it, which is the caller.

Flags: read-only, ``nosuid``, ``nodev``, as the FUSE mount the layers came from so
far. ``nodev`` only refuses opening device nodes through this mount: the nodes are
still listed and stat'ed as devices, and overlayfs, which stacks the mount as a lower
directory, still sees 0/0 character devices as whiteouts (its own mount decides about
opening devices).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from lazybuild.errors import LazybuildError
from lazybuild.lazyfs.readahead import READAHEAD_KIB
from lazybuild.snapshot import syscalls

log = logging.getLogger(__name__)

MS_NOSUID = 0x2
MS_NODEV = 0x4
MOUNT_FLAGS = syscalls.MS_RDONLY | MS_NOSUID | MS_NODEV

# <linux/loop.h>
LOOP_CONFIGURE = 0x4C0A
LOOP_CTL_GET_FREE = 0x4C82
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
# <linux/fs.h>: _IOR(0x15, 1, struct fs_sysfs_path { __u8 len; __u8 name[128]; })
FS_IOC_GETFSSYSFSPATH = 0x80000000 | (129 << 16) | (0x15 << 8) | 1
_LOOP_ATTEMPTS = 8
# What a kernel without file-backed EROFS mounts says to a regular file as the source.
_NOT_A_BLOCK_DEVICE = frozenset({errno.ENOTBLK, errno.EINVAL})


class ErofsUnavailableError(LazybuildError):
    """The kernel has no EROFS filesystem."""


class _LoopInfo64(ctypes.Structure):
    _fields_ = [
        ("lo_device", ctypes.c_uint64),
        ("lo_inode", ctypes.c_uint64),
        ("lo_rdevice", ctypes.c_uint64),
        ("lo_offset", ctypes.c_uint64),
        ("lo_sizelimit", ctypes.c_uint64),
        ("lo_number", ctypes.c_uint32),
        ("lo_encrypt_type", ctypes.c_uint32),
        ("lo_encrypt_key_size", ctypes.c_uint32),
        ("lo_flags", ctypes.c_uint32),
        ("lo_file_name", ctypes.c_uint8 * 64),
        ("lo_crypt_name", ctypes.c_uint8 * 64),
        ("lo_encrypt_key", ctypes.c_uint8 * 32),
        ("lo_init", ctypes.c_uint64 * 2),
    ]


class _LoopConfig(ctypes.Structure):
    _fields_ = [
        ("fd", ctypes.c_uint32),
        ("block_size", ctypes.c_uint32),
        ("info", _LoopInfo64),
        ("reserved", ctypes.c_uint64 * 8),
    ]


@dataclass(frozen=True)
class ErofsMount:
    target: Path
    source: str  # the image file, or the loop device it is mounted through
    root: int  # an O_PATH descriptor of the mount's root, for unmounting


def mount_erofs(image: Path, target: Path, *, file_backed: bool = True) -> ErofsMount:
    """Mount ``image`` at ``target`` (an existing directory). ``file_backed=False``
    goes straight to a loop device (for tests of the fallback)."""
    source = str(image)
    mounted = False
    if file_backed:
        try:
            _mount(source, target)
            mounted = True
        except OSError as exc:
            if exc.errno not in _NOT_A_BLOCK_DEVICE:
                raise
            log.info("no file-backed EROFS mount here (%s): using a loop device", exc.strerror)
    if not mounted:
        source, descriptor = attach_loop(image)
        try:
            _mount(source, target)
        finally:
            os.close(descriptor)  # the mount holds the device now; autoclear does the rest
    try:
        root = os.open(target, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        _detach(str(target))
        raise
    _widen_readahead(target)
    return ErofsMount(target, source, root)


def _widen_readahead(target: Path) -> None:
    """Give a file-backed mount the read-ahead the FUSE mount has (its own device's
    default is 128 KiB: a cached 256 MiB file read 40% slower on a fresh mount). Its
    device is found by ``FS_IOC_GETFSSYSFSPATH`` (Linux >= 6.10); best effort."""
    try:
        descriptor = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            answer = fcntl.ioctl(descriptor, FS_IOC_GETFSSYSFSPATH, bytes(129))
        finally:
            os.close(descriptor)
        name = answer[1 : 1 + answer[0]].decode().rpartition("/")[2]
        setting = Path("/sys/class/bdi") / name / "read_ahead_kb"
        if name and setting.exists():
            setting.write_text(f"{READAHEAD_KIB}\n")
    except (OSError, UnicodeDecodeError) as exc:
        log.debug("cannot set the read-ahead of %s: %s", target, exc)


def _mount(source: str, target: Path) -> None:
    try:
        syscalls.mount(source, target, "erofs", MOUNT_FLAGS, None)
    except OSError as exc:
        if exc.errno == errno.ENODEV:
            raise ErofsUnavailableError(
                "the kernel has no EROFS filesystem, which lazy layers are mounted with:"
                " load it with `modprobe erofs` (Linux 5.4 or later, CONFIG_EROFS_FS)"
            ) from exc
        raise


def attach_loop(image: Path) -> tuple[str, int]:
    """A free loop device bound read-only to ``image`` with autoclear; returns its path
    and an open descriptor of it (the device stays bound while one is open)."""
    backing = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
    try:
        control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        try:
            for _ in range(_LOOP_ATTEMPTS):
                number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
                device = f"/dev/loop{number}"
                loop = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
                config = _LoopConfig()
                config.fd = backing
                config.info.lo_flags = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR
                try:
                    fcntl.ioctl(loop, LOOP_CONFIGURE, config)
                except OSError as exc:
                    os.close(loop)
                    if exc.errno == errno.EBUSY:  # another process took it meanwhile
                        time.sleep(0.01)
                        continue
                    raise
                return device, loop
        finally:
            os.close(control)
    finally:
        os.close(backing)
    raise OSError(errno.EBUSY, "no free loop device", str(image))


def unmount_erofs(mount: ErofsMount) -> None:
    """Detach the mount now (lazily: overlays or readers still on it keep it until they
    let go); a loop device under it then detaches itself. Never waits for FUSE."""
    try:
        _detach(f"/proc/self/fd/{mount.root}", mount.target)
    finally:
        os.close(mount.root)


def _detach(path: str, shown: Path | None = None) -> None:
    try:
        syscalls.umount(Path(path), syscalls.MNT_DETACH)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOENT):  # not mounted (any more)
            log.warning("could not unmount %s: %s", shown or path, exc.strerror)
