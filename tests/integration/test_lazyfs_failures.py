"""The lazy filesystem when things break: a killed filesystem process, a corrupted chunk."""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from lazybuild.estargz import parse_layer, tail_read_range
from lazybuild.lazyfs.client import FilesystemServiceError
from lazybuild.lazyfs.stale import cleanup_stale_mounts, mounted_paths
from lazybuild.snapshot import is_mounted
from tests.integration.test_lazyfs_mount import (
    convert,
    layers_of,
    overlay,
    scratch_state_dir,
    service_for,
)
from tests.support.registry import Registry

pytestmark = pytest.mark.root


@pytest.fixture(scope="session")
def tiny_esgz(registry: Registry, tiny_image: str) -> str:
    return convert(tiny_image, f"{registry.host}/test/lazyfs-tiny:esgz")


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    yield from scratch_state_dir(tmp_path)


def wait_for_exit(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
                return
        except OSError:
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} did not exit")


def test_sigkilled_filesystem_is_cleaned_up_with_its_overlays(
    state_dir: Path, registry: Registry, tiny_esgz: str
) -> None:
    ref, layers = layers_of(registry, tiny_esgz)

    async def body() -> None:
        async with service_for(state_dir, registry) as service:
            mounts = await service.add_image(ref, layers)
            merged_dir = state_dir / "merged"
            with overlay(merged_dir, mounts) as merged:
                service.register_overlay(merged)
                assert (merged / "hello.txt").exists()
                assert service.pid is not None
                os.kill(service.pid, signal.SIGKILL)
                await trio.to_thread.run_sync(wait_for_exit, service.pid)
                # The FUSE mount is dead; the EROFS mounts on its files still stand.
                with pytest.raises(OSError) as caught:
                    os.statvfs(service.mountpoint)
                assert caught.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
                assert str(mounts[0].path) in mounted_paths()
                cleaned = await trio.to_thread.run_sync(cleanup_stale_mounts, state_dir)
                assert cleaned == [service.mountpoint]
                assert not is_mounted(merged)
                assert str(service.mountpoint) not in mounted_paths()
                assert not list((state_dir / "mounts").glob("*.json"))
            # The service's own exit copes with the process and the mount being gone.

    trio.run(body)
    assert not [p for p in mounted_paths() if p.startswith(str(state_dir))]


def test_live_mounts_are_not_stale(state_dir: Path, registry: Registry) -> None:
    async def body() -> None:
        async with service_for(state_dir, registry) as service:
            assert await trio.to_thread.run_sync(cleanup_stale_mounts, state_dir) == []
            assert is_mounted(service.mountpoint)

    trio.run(body)


@pytest.fixture
def corrupted_cat(registry: Registry, tiny_esgz: str) -> Iterator[str]:
    """Flip one byte inside /usr/bin/cat's compressed chunk in the registry's storage
    (and put it back afterwards: blobs are shared by every repository)."""
    _, layers = layers_of(registry, tiny_esgz)
    tools = layers[1]
    hex_digest = tools.digest.partition(":")[2]
    data_path = (
        registry.root / "docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest / "data"
    )
    blob = data_path.read_bytes()
    start, _ = tail_read_range(len(blob))
    index = parse_layer(blob[start:], start, len(blob), None).index
    cat = index.lookup("usr/bin/cat")
    assert cat is not None and cat.chunks
    chunk = cat.chunks[0]
    position = (chunk.offset + chunk.end) // 2
    damaged = bytearray(blob)
    damaged[position] ^= 0xFF
    data_path.write_bytes(bytes(damaged))
    try:
        yield tiny_esgz
    finally:
        data_path.write_bytes(blob)


def test_corrupted_chunk_fails_that_read_with_eio_only(
    state_dir: Path, registry: Registry, corrupted_cat: str
) -> None:
    ref, layers = layers_of(registry, corrupted_cat)

    async def body() -> None:
        async with service_for(state_dir, registry) as service:
            tools = (await service.add_layer(ref, layers[1])).path
            with pytest.raises(OSError) as caught:
                (tools / "usr/bin/cat").read_bytes()
            assert caught.value.errno == errno.EIO
            assert (tools / "usr/bin/echo").read_bytes()[:4] == b"\x7fELF"
            assert (tools / "etc/motd").read_text() == "motd from the tools layer\n"
            log = (state_dir / "mounts" / f"{service.id}.log").read_text()
            failures = [line for line in log.splitlines() if "read failed" in line]
            assert failures
            assert all("/usr/bin/cat" in line for line in failures), failures

    trio.run(body)


def test_a_layer_that_cannot_be_opened_is_a_one_line_error(
    state_dir: Path, registry: Registry, tiny_esgz: str
) -> None:
    ref, layers = layers_of(registry, tiny_esgz)
    missing = replace(layers[-1], digest="sha256:" + "0" * 64)

    async def body() -> None:
        async with service_for(state_dir, registry) as service:
            with pytest.raises(FilesystemServiceError) as caught:
                await service.add_image(ref, [layers[0], missing])
            assert "\n" not in str(caught.value) and "0" * 64 in str(caught.value)
            # The service goes on serving.
            top = await service.add_layer(ref, layers[-1])
            assert (top.path / "hello.txt").exists()

    trio.run(body)
