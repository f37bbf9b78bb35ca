"""The lazy filesystem for real: service process, FUSE mount, overlayfs on top (needs root)."""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import stat
import tarfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
import trio

from lazybuild.cli.main import main as lazybuild_main
from lazybuild.estargz.toc import PREFETCH_FILE_MAX_BYTES
from lazybuild.lazyfs.client import (
    START_TIMEOUT,
    FilesystemServiceError,
    LayerMount,
    LazyMountService,
)
from lazybuild.lazyfs.stale import mounted_paths
from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.platform import Platform
from lazybuild.registry.client import RegistryClient
from lazybuild.registry.reference import Reference
from lazybuild.snapshot import is_mounted, mount_overlay, unmount
from tests.support import imagebuild
from tests.support.images import read_layout_image
from tests.support.registry import Registry

pytestmark = pytest.mark.root

LINUX_AMD64 = Platform.parse("linux/amd64")


def convert(source: str, destination: str) -> str:
    assert lazybuild_main(["-q", "convert", source, destination]) == 0
    return destination


@pytest.fixture(scope="session")
def tiny_esgz(registry: Registry, tiny_image: str) -> str:
    return convert(tiny_image, f"{registry.host}/test/lazyfs-tiny:esgz")


@pytest.fixture(scope="session")
def rich_esgz(registry: Registry, rich_image: str) -> str:
    return convert(rich_image, f"{registry.host}/test/lazyfs-rich:esgz")


def scratch_state_dir(tmp_path: Path) -> Iterator[Path]:
    """A private state dir; whatever is still mounted under it afterwards is taken down."""
    if os.geteuid() != 0:
        pytest.skip("FUSE and overlay mounts need root")
    try:
        yield tmp_path / "state"
    finally:
        for point in sorted(mounted_paths(), reverse=True):
            if point.startswith(str(tmp_path)):
                unmount(Path(point), lazy=True)


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    yield from scratch_state_dir(tmp_path)


def layers_of(registry: Registry, text: str) -> tuple[Reference, list[Descriptor]]:
    async def resolve() -> tuple[Reference, list[Descriptor]]:
        async with RegistryClient(insecure_registries=[registry.host]) as client:
            image = await client.resolve_image(Reference.parse(text), LINUX_AMD64)
        return image.ref, list(image.manifest.layers)

    return trio.run(resolve)


@asynccontextmanager
async def service_for(
    state_dir: Path, registry: Registry, *, background_fetch: bool = False
) -> AsyncIterator[LazyMountService]:
    async with LazyMountService(
        state_dir, insecure_registries=[registry.host], background_fetch=background_fetch
    ) as service:
        yield service


@contextmanager
def overlay(target: Path, mounts: list[LayerMount]) -> Iterator[Path]:
    target.mkdir(parents=True)
    mount_overlay(target, [m.path for m in reversed(mounts)])  # top-most first
    try:
        yield target
    finally:
        if is_mounted(target):  # a crash-cleanup test may have taken it down already
            unmount(target, lazy=True)


def toc_seconds(mtime: float) -> int:
    """An mtime as lazybuild's eStargz writer keeps it: whole seconds, truncated."""
    return math.floor(mtime)


def describe_tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything tree equality compares, by path (hardlinks as groups of paths)."""
    found: dict[str, tuple[object, ...]] = {}
    # By device too: over lazy layers (one EROFS filesystem each), overlayfs shows each
    # layer's files on a device of that layer's, with the layer's own inode numbers.
    inodes: dict[tuple[int, int], list[str]] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            relative = str(path.relative_to(root))
            info = path.lstat()
            if stat.S_ISREG(info.st_mode):
                detail: object = hashlib.sha256(path.read_bytes()).hexdigest()
                inodes.setdefault((info.st_dev, info.st_ino), []).append(relative)
            elif stat.S_ISLNK(info.st_mode):
                detail = os.readlink(path)
            else:
                detail = info.st_rdev if stat.S_ISCHR(info.st_mode) else None
            xattrs = tuple(
                sorted(
                    (n, os.getxattr(path, n, follow_symlinks=False))
                    for n in os.listxattr(path, follow_symlinks=False)
                )
            )
            size = info.st_size if not stat.S_ISDIR(info.st_mode) else None
            found[relative] = (
                info.st_mode,
                info.st_uid,
                info.st_gid,
                size,
                toc_seconds(info.st_mtime),
                detail,
                xattrs,
            )
    links = sorted(sorted(group) for group in inodes.values() if len(group) > 1)
    found["<hardlinks>"] = tuple(tuple(group) for group in links)
    return found


def test_a_filesystem_process_that_dies_starting_fails_fast_with_its_log(state_dir: Path) -> None:
    state_dir.mkdir(parents=True)
    (state_dir / "cache").write_text("a file where the chunk cache's directory goes\n")

    async def body() -> None:
        started = trio.current_time()
        with pytest.raises(FilesystemServiceError, match="did not start") as failed:
            async with LazyMountService(state_dir):
                pass
        # The end of its readiness pipe says so at once; no wait for the start timeout.
        assert trio.current_time() - started < START_TIMEOUT / 2
        assert "exit status 1" in str(failed.value)
        assert "Not a directory" in str(failed.value)
        assert "Traceback" not in str(failed.value)

    trio.run(body)
    assert [p for p in mounted_paths() if p.startswith(str(state_dir))] == []
    assert list((state_dir / "mounts").glob("*.json")) == []


def test_mount_list_read_and_stat(state_dir: Path, registry: Registry, tiny_esgz: str) -> None:
    ref, layers = layers_of(registry, tiny_esgz)

    async def body() -> None:
        async with service_for(state_dir, registry) as service:
            mounts = await service.add_image(ref, layers)
            assert [m.mode for m in mounts] == ["lazy"] * 3
            assert [m.digest for m in mounts] == [d.digest for d in layers]
            top = mounts[-1].path
            assert top.parent == service.mountpoint
            # Each layer: its EROFS image file, and the directory it is mounted on.
            assert sorted(os.listdir(service.mountpoint)) == sorted(
                name for m in mounts for name in (m.path.name, m.path.name + ".erofs")
            )
            assert (top / "hello.txt").read_bytes() == b"hello from the upper layer\n"
            assert "stargz.index.json" not in os.listdir(top)
            assert not any(n.startswith(".") for n in os.listdir(top))
            motd = (top / "etc" / "motd").lstat()
            assert stat.S_ISCHR(motd.st_mode) and motd.st_rdev == 0
            assert os.getxattr(top / "opt" / "data", "trusted.overlay.opaque") == b"y"
            tools = mounts[1].path
            cat = (tools / "usr" / "bin" / "cat").stat()
            assert stat.S_IMODE(cat.st_mode) == 0o755 and cat.st_uid == 0 and cat.st_size > 0
            with pytest.raises(OSError, match="Read-only"):
                (top / "new").write_text("x")
            report = await service.stats()
            assert [layer.mode for layer in report.layers] == ["lazy"] * 3
            assert report.bytes_fetched > 0 and all(layer.requests >= 1 for layer in report.layers)
            os.statvfs(top)  # overlayfs needs it
        assert not service.mountpoint.exists()
        assert str(service.mountpoint) not in mounted_paths()

    trio.run(body)


def expected_from_tar(blob: Path) -> dict[str, tuple[object, ...]]:
    """The top layer's entries as the mount should present them (whiteouts in overlay form)."""
    found: dict[str, tuple[object, ...]] = {}
    with tarfile.open(fileobj=gzip.open(blob)) as archive:
        for member in archive:
            name = os.path.normpath(member.name)
            base = os.path.basename(name)
            if base == ".wh..wh..opq":
                continue
            if base.startswith(".wh."):
                target = os.path.join(os.path.dirname(name), base[4:])
                found[target] = ("char",)
                continue
            if member.isdir():
                kind: object = "dir"
            elif member.issym():
                kind = ("symlink", member.linkname)
            elif member.islnk():
                kind = "hardlink"
            else:
                extracted = archive.extractfile(member) if member.isreg() else None
                kind = hashlib.sha256(extracted.read()).hexdigest() if extracted else member.type
            found[name] = (
                kind,
                member.mode & 0o7777,
                member.uid,
                member.gid,
                toc_seconds(member.mtime),
            )
    return found


def test_layer_directory_matches_its_tar(
    state_dir: Path, registry: Registry, rich_esgz: str, rich_image_layout: Path
) -> None:
    ref, layers = layers_of(registry, rich_esgz)
    source_top = read_layout_image(rich_image_layout).layers[-1]
    expected = expected_from_tar(read_layout_image(rich_image_layout).blob(source_top["digest"]))

    async def body() -> None:
        async with service_for(state_dir, registry) as service:
            top = (await service.add_layer(ref, layers[-1])).path
            for name, facts in expected.items():
                path = top / name
                info = path.lstat()
                if facts[0] == "char":
                    assert stat.S_ISCHR(info.st_mode) and info.st_rdev == 0, name
                    continue
                kind, mode, uid, gid, mtime = facts
                assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (mode, uid, gid), (
                    name
                )
                assert int(info.st_mtime) == mtime, name
                if kind == "dir":
                    assert stat.S_ISDIR(info.st_mode), name
                elif isinstance(kind, tuple):
                    assert os.readlink(path) == kind[1], name
                elif isinstance(kind, str) and len(kind) == 64:
                    assert hashlib.sha256(path.read_bytes()).hexdigest() == kind, name

    trio.run(body)


@pytest.mark.slow  # reads every file of a Debian image through cold lazy layers
def test_overlay_over_lazy_layers_equals_overlay_over_unpacked_layers(
    state_dir: Path, registry: Registry, rich_image: str, rich_esgz: str
) -> None:
    lazy_ref, lazy_layers = layers_of(registry, rich_esgz)
    plain_ref, plain_layers = layers_of(registry, rich_image)

    async def body() -> None:
        async with service_for(state_dir, registry) as service:
            lazy = await service.add_image(lazy_ref, lazy_layers)
            plain = await service.add_image(plain_ref, plain_layers)
            assert {m.mode for m in lazy} == {"lazy"} and {m.mode for m in plain} == {"unpacked"}
            # Mixed: the bottom layer unpacked, the rest lazy.
            mixed = [plain[0], *lazy[1:]]
            trees = []
            for name, mounts in (("lazy", lazy), ("plain", plain), ("mixed", mixed)):
                with overlay(state_dir / "merged" / name, mounts) as merged:
                    trees.append(await trio.to_thread.run_sync(describe_tree, merged))
            lazy_tree, plain_tree, mixed_tree = trees
            assert lazy_tree == plain_tree
            assert mixed_tree == plain_tree
            assert not any(Path(p).name.startswith(".wh.") for p in lazy_tree)
            report = await service.stats()
            assert {layer.mode for layer in report.layers} == {"lazy", "unpacked"}

    trio.run(body)


def test_overlay_honours_whiteouts_and_opaque_dirs(
    state_dir: Path, registry: Registry, tiny_esgz: str
) -> None:
    ref, layers = layers_of(registry, tiny_esgz)

    async def body() -> None:
        async with service_for(state_dir, registry) as service:
            mounts = await service.add_image(ref, layers)
            with overlay(state_dir / "merged", mounts) as merged:
                assert (merged / "hello.txt").read_text() == "hello from the upper layer\n"
                assert not (merged / "etc" / "motd").exists()
                assert os.listdir(merged / "opt" / "data") == ["new.txt"]
                assert (merged / "usr" / "bin" / "cat").is_file()

    trio.run(body)


@pytest.fixture(scope="session")
def big_file_esgz(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    """One layer with ``data/big.bin``, a file over ``PREFETCH_FILE_MAX_BYTES`` whose every
    4 KiB block differs (so a place read is a place fetched, nothing is deduplicated)."""
    scratch = tmp_path_factory.mktemp("big-file-image")
    (scratch / "root" / "data").mkdir(parents=True)
    blocks = PREFETCH_FILE_MAX_BYTES // 4096 + 256
    with open(scratch / "root" / "data" / "big.bin", "wb") as out:
        for number in range(blocks):
            out.write(number.to_bytes(8, "little") * 512)
    imagebuild.image_from_dirs(scratch / "layout", [scratch / "root"])
    return convert(f"oci:{scratch / 'layout'}", f"{registry.host}/test/lazyfs-big:esgz")


def _block_at(path: Path, offset: int) -> bytes:
    with open(path, "rb") as big:
        big.seek(offset)
        return big.read(4096)


def test_places_read_in_a_big_file_are_recorded_even_when_the_kernel_had_them(
    state_dir: Path, registry: Registry, big_file_esgz: str
) -> None:
    """What a workload reads of a big file is known only from the filesystem's reads; a
    mark that rereads big files drops the kernel's cached pages so none go unseen."""
    ref, layers = layers_of(registry, big_file_esgz)
    far = 20 << 20
    read = _block_at

    async def body() -> None:
        async with service_for(state_dir, registry) as service:
            (mount,) = await service.add_image(ref, layers)
            big = mount.path / "data" / "big.bin"
            assert read(big, 0)[:8] == (0).to_bytes(8, "little")  # now in the page cache
            plain = await service.mark_reads()
            await trio.to_thread.run_sync(read, big, 0)
            assert await service.ranges_since(plain) == {}  # served by the kernel alone
            mark = await service.mark_reads(reread_big_files=True)
            await trio.to_thread.run_sync(read, big, 0)
            block = await trio.to_thread.run_sync(read, big, far)
            assert block[:8] == (far // 4096).to_bytes(8, "little")
            places = (await service.ranges_since(mark))["data/big.bin"]
            assert any(offset == 0 for offset, _ in places)
            assert any(offset <= far < offset + length for offset, length in places)
            assert sum(length for _, length in places) < 4 << 20  # places, not the file

    trio.run(body)


def test_places_read_in_a_big_file_of_a_whole_image_layer_are_found_from_the_page_cache(
    tmp_path: Path, registry: Registry, big_file_esgz: str
) -> None:
    """A layer mounted from its whole image is read by the kernel alone; where a
    workload read in its big files is then told by the pages the kernel holds again."""
    ref, layers = layers_of(registry, big_file_esgz)
    state = tmp_path / "state"
    far = 20 << 20
    read = _block_at

    async def body() -> None:
        async with service_for(state, registry) as service:
            (lazy,) = await service.add_image(ref, layers)
            await service.fetch_all([lazy.digest])  # every chunk: the whole image is kept
        async with service_for(state, registry) as service:
            (mount,) = await service.add_image(ref, layers)
            assert mount.mode == "local"
            big = mount.path / "data" / "big.bin"
            assert read(big, 0)[:8] == (0).to_bytes(8, "little")
            mark = await service.mark_reads(reread_big_files=True)
            await trio.to_thread.run_sync(read, big, 0)
            block = await trio.to_thread.run_sync(read, big, far)
            assert block[:8] == (far // 4096).to_bytes(8, "little")
            places = (await service.ranges_since(mark))["data/big.bin"]
            assert any(offset == 0 for offset, _ in places)
            assert any(offset <= far < offset + length for offset, length in places)
            assert sum(length for _, length in places) < 4 << 20  # places, not the file
            # Told once: a later step's reads are its own.
            assert await service.ranges_since(await service.mark_reads()) == {}

    trio.run(body)
