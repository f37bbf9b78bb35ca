"""Layers served as EROFS images: the filesystem
process serves each lazy layer as one image file and the kernel mounts it, through the
CLI as a user runs it, against a real registry, FUSE, EROFS, overlayfs and runc.

The tree a mount shows equals the unpacked image, every fact; a chunk that fails its
digest fails the reads of its own file only (EIO), and says so; a filesystem process
killed mid-read leaves no mount, loop device or hung reader once the next command ran;
``run`` runs a program from the images.
"""

from __future__ import annotations

import errno
import fcntl
import gzip
import hashlib
import json
import os
import random
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from tarfile import CHRTYPE
from typing import Any

import pytest

from lazybuild.estargz import parse_footer, parse_layer
from lazybuild.lazyfs.client import STOP_TIMEOUT
from lazybuild.lazyfs.erofsmount import (
    FS_IOC_GETFSSYSFSPATH,
    ErofsUnavailableError,
    mount_erofs,
    unmount_erofs,
)
from lazybuild.lazyfs.readahead import READAHEAD_KIB
from lazybuild.oci.layout import OciLayout
from lazybuild.snapshot import syscalls
from tests.integration.test_hostile_toc_cli import _AnnotatedLayer
from tests.integration.test_lazy_commands import (
    _expected_tree,
    convert,
    lazybuild_argv,
    lazybuild_mount,
    mounts_under,
)
from tests.support.erofsimage import estargz_from_tar, image_of_blob, member, tar_of
from tests.support.faultproxy import FaultProxy, corrupt
from tests.support.imagebuild import image_from_dirs, push_oci_layout, write_image
from tests.support.images import read_layout_image
from tests.support.registry import Registry
from tests.support.trees import directory_tree
from tests.support.wanproxy import WanProxy

pytestmark = pytest.mark.root


@pytest.fixture(autouse=True)
def _as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting EROFS needs root")


def _mounts(under: Path) -> list[tuple[str, str, str]]:
    """(mountpoint, filesystem type, source) of the mounts at or below ``under``."""
    found = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            tail = fields[fields.index("-") + 1 :]
            point = fields[4]
            if point == str(under) or point.startswith(str(under) + "/"):
                found.append((point, tail[0], tail[1]))
    return found


def _loop_devices_backed_under(path: Path) -> list[str]:
    found = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with open(backing) as name:
            if str(path) in name.read():
                found.append(backing.parent.parent.name)
    return found


def _filesystem_pid(state: Path) -> int:
    (record,) = (state / "mounts").glob("*.json")
    return int(json.loads(record.read_text())["pid"])


def _state_dir_clean(state: Path) -> None:
    assert _mounts(state) == []
    assert _loop_devices_backed_under(state) == []
    assert list((state / "mounts").glob("*.json")) == []


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "state"
    yield root
    subprocess.run(lazybuild_argv(root, "prune"), check=False, capture_output=True)
    assert mounts_under(root) == []


def test_mounted_tree_equals_the_unpacked_image(
    rich_image: str, rich_image_layout: Path, registry: Registry, state: Path, tmp_path: Path
) -> None:
    reference = f"{registry.host}/test/rich:erofs-serving"
    convert(rich_image, reference)
    target = tmp_path / "mnt"
    with lazybuild_mount(state, reference, target):
        erofs = [mount for mount in _mounts(state) if mount[1] == "erofs"]
        fuse = [mount for mount in _mounts(state) if mount[1].startswith("fuse")]
        read_ahead = {_read_ahead_kib(Path(point)) for point, _, _ in erofs}
        tree = directory_tree(target)
    (fuse_root,) = [point for point, _, _ in fuse]
    # One EROFS mount per layer, from its image file, at the layer's path in the mount.
    assert len(erofs) == len(read_layout_image(rich_image_layout).layers)
    for point, _, source in erofs:
        assert Path(point).parent == Path(fuse_root)
        assert source == point + ".erofs"
    assert read_ahead == {READAHEAD_KIB}  # as the FUSE mount's
    assert tree.entries == _expected_tree(rich_image_layout)
    assert frozenset({"srv/big.bin", "srv/big-hardlink.bin"}) in tree.hardlinks
    _state_dir_clean(state)


def _read_ahead_kib(mountpoint: Path) -> int:
    descriptor = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    try:
        answer = fcntl.ioctl(descriptor, FS_IOC_GETFSSYSFSPATH, bytes(129))
    finally:
        os.close(descriptor)
    device = answer[1 : 1 + answer[0]].decode().rpartition("/")[2]
    return int((Path("/sys/class/bdi") / device / "read_ahead_kb").read_text())


# -- an image of our own: files to corrupt, files to read slowly ---------------------------


@pytest.fixture(scope="module")
def files_image(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """One eStargz layer (lazybuild-converted) with ``bad/bad.bin`` (1 MiB, to corrupt),
    ``good/`` files and ``slow/big.bin`` (12 MiB, to read slowly); the image's path in
    the registry (without host) and the tree it came from."""
    tree = tmp_path_factory.mktemp("files") / "tree"
    generator = random.Random(14)
    for path, size in (
        ("bad/bad.bin", 1 << 20),
        ("good/a.txt", 300),
        ("good/b.bin", 1 << 20),
        ("slow/big.bin", 12 << 20),
    ):
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / path).write_bytes(generator.randbytes(size))
    layout = tmp_path_factory.mktemp("files-layout") / "layout"
    image_from_dirs(layout, [tree])
    push_oci_layout(layout, registry.host, "test/erofs-files", "gzip")
    convert(f"{registry.host}/test/erofs-files:gzip", f"{registry.host}/test/erofs-files:esgz")
    return "test/erofs-files:esgz", tree


def _chunk_offset(registry: Registry, image: str, path: str) -> tuple[str, int]:
    """The layer digest and the blob offset of the first chunk of ``path`` in it."""
    name, _, tag = image.partition(":")
    manifest_path = registry.root / "docker/registry/v2/repositories" / name / "_manifests/tags"
    link = (manifest_path / tag / "current/link").read_text().strip()
    manifest = json.loads(_blob(registry, link))
    (layer,) = manifest["layers"]
    blob = _blob(registry, layer["digest"])
    footer = parse_footer(blob[-51:])
    opened = parse_layer(blob[footer.toc_offset :], footer.toc_offset, len(blob), None)
    node = opened.index.lookup(path)
    assert node is not None
    return layer["digest"], node.chunks[0].offset


def _blob(registry: Registry, digest: str) -> bytes:
    hex_digest = digest.partition(":")[2]
    directory = registry.root / "docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest
    return (directory / "data").read_bytes()


def _starting_at(offset: int) -> Callable[[str], bool]:
    """A Range predicate: the first range starts at ``offset``."""
    return lambda header: header.startswith(f"bytes={offset}-")


def test_a_corrupted_chunk_is_eio_for_its_file_only_and_reported(
    files_image: tuple[str, Path], registry: Registry, state: Path, tmp_path: Path
) -> None:
    image, tree = files_image
    digest, offset = _chunk_offset(registry, image, "bad/bad.bin")
    target = tmp_path / "mnt"
    report = tmp_path / "report.json"
    with FaultProxy(registry.host) as proxy:
        # Past a multipart answer's first part head: inside bad.bin's compressed bytes.
        proxy.add(corrupt(400, method="GET", path=digest, ranged=_starting_at(offset), times=None))
        reference = f"{proxy.host}/{image}"
        options = ("--no-background-fetch", "--fetch-report", str(report))
        with lazybuild_mount(state, reference, target, *options):
            assert (target / "good/b.bin").read_bytes() == (tree / "good/b.bin").read_bytes()
            with pytest.raises(OSError) as failed:
                (target / "bad/bad.bin").read_bytes()
            assert failed.value.errno == errno.EIO
            for path in ("good/a.txt", "good/b.bin", "slow/big.bin"):
                assert (target / path).read_bytes() == (tree / path).read_bytes(), path
            (log,) = (state / "mounts").glob("*.log")
            logged = [line for line in log.read_text().splitlines() if "read failed" in line]
        assert sum(fault.hits for fault in proxy.faults) > 0
    assert logged and all("/bad/bad.bin: read failed" in line for line in logged), logged
    failures = json.loads(report.read_text())["failures"]
    assert {failure["path"] for failure in failures} == {"/bad/bad.bin"}, failures
    _state_dir_clean(state)


def test_a_filesystem_killed_mid_read_leaves_nothing_after_the_next_command(
    files_image: tuple[str, Path],
    registry: Registry,
    wan_proxy: Callable[..., WanProxy],
    state: Path,
    tmp_path: Path,
) -> None:
    image, _ = files_image
    proxy = wan_proxy(registry.host, latency=0.02, bandwidth_bits=8e6)  # 1 MB/s
    target = tmp_path / "mnt"
    with lazybuild_mount(
        state, f"{proxy.host}/{image}", target, "--no-background-fetch"
    ) as mount_command:
        filesystem = _filesystem_pid(state)
        reader = subprocess.Popen(
            ["cat", str(target / "slow/big.bin")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while proxy.bytes_to_client < 2 << 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reader.poll() is None, "the read should still be under way"
        # The owner first, so that nobody cleans up but the next command.
        os.kill(mount_command.pid, signal.SIGKILL)
        os.kill(filesystem, signal.SIGKILL)
        mount_command.wait()
        _, reader_errors = reader.communicate(timeout=30)  # not hung
        assert reader.returncode != 0
        assert any(kind == "erofs" for _, kind, _ in _mounts(state)), "left by the kill"
        du = subprocess.run(
            lazybuild_argv(state, "du"), capture_output=True, text=True, timeout=60, check=False
        )
        assert du.returncode == 0, du.stderr
        assert "could not unmount" not in du.stderr, du.stderr
        _state_dir_clean(state)
    assert reader_errors


def test_run_runs_a_program_from_erofs_layers(
    tiny_image: str, registry: Registry, state: Path, tmp_path: Path
) -> None:
    reference = f"{registry.host}/test/erofs-serving-tiny:esgz"  # a repository of its own
    convert(tiny_image, reference)
    report = tmp_path / "report.json"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            lazybuild_argv(state, "-q", "run", *args),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    hello = run("--fetch-report", str(report), reference)  # the image's command
    assert hello.returncode == 0, hello.stderr
    assert hello.stdout == "hello from the upper layer\n"
    layers = json.loads(report.read_text())["layers"]
    assert len(layers) == 3 and all(layer["mode"] == "lazy" for layer in layers)
    # Through the overlay of the three EROFS mounts: an opaque directory, a whiteout.
    shown = run(reference, "cat", "/opt/data/new.txt")
    assert (shown.returncode, shown.stdout) == (0, "new\n"), shown.stderr
    assert run(reference, "cat", "/opt/data/old.txt").returncode == 1
    assert run(reference, "cat", "/etc/motd").returncode == 1
    _state_dir_clean(state)


def test_the_loop_device_fallback_mounts_and_frees_its_device(tmp_path: Path) -> None:
    """What kernels before 6.12 get (they refuse a regular file as the source)."""
    blob = estargz_from_tar(
        tar_of(
            [(member("etc/hello"), b"hello\n"), (member("dev/null", CHRTYPE, device=(1, 3)), None)]
        )
    )
    image = tmp_path / "layer.erofs"
    image_of_blob(blob, image)
    target = tmp_path / "mnt"
    target.mkdir()
    mount = mount_erofs(image, target, file_backed=False)
    source = mount.source
    try:
        assert source.startswith("/dev/loop")
        assert [kind for _, kind, _ in _mounts(target)] == ["erofs"]
        assert (target / "etc/hello").read_bytes() == b"hello\n"
        device = (target / "dev/null").lstat()  # nodev: still a device, not openable
        assert stat.S_ISCHR(device.st_mode)
        assert (os.major(device.st_rdev), os.minor(device.st_rdev)) == (1, 3)
        assert _loop_devices_backed_under(tmp_path) == [source.removeprefix("/dev/")]
    finally:
        unmount_erofs(mount)
    assert _mounts(target) == []
    deadline = time.monotonic() + 10  # the device detaches itself when the mount goes
    while _loop_devices_backed_under(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _loop_devices_backed_under(tmp_path) == []


def test_unmounting_never_waits_on_the_filesystem_itself(
    files_image: tuple[str, Path], registry: Registry, state: Path, tmp_path: Path
) -> None:
    """The EROFS mounts come down through descriptors: by path, the walk through the FUSE
    mount asks the process for the root's attributes once they expire (after 1 s), and
    the process, busy unmounting, never answered (the stop took the kill timeout)."""
    image, _ = files_image
    target = tmp_path / "mnt"
    with lazybuild_mount(state, f"{registry.host}/{image}", target) as mount_command:
        time.sleep(1.5)
        stopping = time.monotonic()
        subprocess.run(lazybuild_argv(state, "umount", str(target)), check=True, timeout=60)
        mount_command.wait(timeout=60)
    assert time.monotonic() - stopping < STOP_TIMEOUT / 2
    assert mount_command.returncode == 0
    _state_dir_clean(state)


def test_a_kernel_refusing_file_backed_mounts_gets_a_loop_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before 6.12 the kernel answers a regular file as the source with EINVAL/ENOTBLK;
    a kernel without EROFS with ENODEV, which is one line saying what to do."""
    image = tmp_path / "layer.erofs"
    image_of_blob(estargz_from_tar(tar_of([(member("etc/hello"), b"hello\n")])), image)
    target = tmp_path / "mnt"
    target.mkdir()
    real_mount = syscalls.mount

    def old_kernel(source: str, *args: Any) -> None:
        if not source.startswith("/dev/loop"):
            raise OSError(errno.ENOTBLK, os.strerror(errno.ENOTBLK), source)
        real_mount(source, *args)

    monkeypatch.setattr(syscalls, "mount", old_kernel)
    mount = mount_erofs(image, target)
    try:
        assert mount.source.startswith("/dev/loop")
        assert (target / "etc/hello").read_bytes() == b"hello\n"
    finally:
        unmount_erofs(mount)

    def no_erofs(source: str, *args: Any) -> None:
        raise OSError(errno.ENODEV, os.strerror(errno.ENODEV), source)

    monkeypatch.setattr(syscalls, "mount", no_erofs)
    with pytest.raises(ErofsUnavailableError, match="modprobe erofs"):
        mount_erofs(image, target)
    deadline = time.monotonic() + 10
    while _loop_devices_backed_under(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _loop_devices_backed_under(tmp_path) == []


def test_a_layer_no_erofs_image_can_hold_is_unpacked_instead(
    registry: Registry, state: Path, tmp_path: Path
) -> None:
    """A name over 255 bytes fits a TOC but no EROFS directory (nor any Linux one): the
    layer goes the unpacked way, which refuses it in one line, and nothing stays
    mounted or half-written."""
    long_name = "n" * 300
    tar = tar_of([(member("etc/hello"), b"hello\n"), (member(f"srv/{long_name}"), b"x")])
    blob = estargz_from_tar(tar)
    opened = parse_layer(blob, 0, len(blob), None)
    layout = OciLayout.create(tmp_path / "layout")
    digest = layout.write_blob(blob)
    diff_id = "sha256:" + hashlib.sha256(gzip.decompress(blob)).hexdigest()
    layer = _AnnotatedLayer(digest, diff_id, len(blob), toc_digest=opened.toc_digest)
    write_image(layout, [layer])
    push_oci_layout(tmp_path / "layout", registry.host, "test/erofs-unrepresentable", "v1")
    image = f"{registry.host}/test/erofs-unrepresentable:v1"
    target = tmp_path / "mnt"
    target.mkdir()
    result = subprocess.run(
        lazybuild_argv(state, "mount", image, str(target)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("lazybuild: error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    # The unpacked way was taken, and said which entry it could not write.
    assert "cannot unpack: entry 'srv/nnn" in errors[0] and "File name too long" in errors[0]
    _state_dir_clean(state)
    assert not list((state / "unpacked").glob(".partial-*"))
    assert not list(state.glob("erofs/*.meta"))
