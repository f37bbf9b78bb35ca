"""The daemon's shared filesystem process: lent to builds, kept between them, stopped
when idle or closed, replaced when it died (needs root: FUSE)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio

from lazybuild.lazyfs.client import LazyMountService
from lazybuild.lazyfs.shared import SharedFilesystem
from tests.integration.test_lazyfs_mount import layers_of, scratch_state_dir
from tests.support.procs import mounts_under
from tests.support.registry import Registry

pytestmark = pytest.mark.root


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    yield from scratch_state_dir(tmp_path)


def _factory(state_dir: Path, registry: Registry) -> LazyMountService:
    return LazyMountService(state_dir, insecure_registries=[registry.host], background_fetch=False)


async def _until_stopped(service: LazyMountService) -> None:
    with trio.fail_after(10):
        while service.running:
            await trio.sleep(0.05)


def test_builds_share_one_process_that_outlives_them(
    state_dir: Path, registry: Registry, tiny_image: str
) -> None:
    ref, layers = layers_of(registry, tiny_image)

    async def scenario() -> None:
        shared = SharedFilesystem(lambda: _factory(state_dir, registry))
        try:
            async with AsyncExitStack() as first, AsyncExitStack() as second:
                one = await shared.open(first)
                two = await shared.open(second)
                assert one is two and shared.users == 2
                added = await one.add_layer(ref, layers[0])
                again = await two.add_layer(ref, layers[0])
                assert added.path == again.path  # the layer is added once
            assert shared.users == 0
            service = shared.service
            assert service is not None and service.running  # kept for the next build
            assert Path(added.path).is_dir()
        finally:
            await shared.aclose()
        assert not service.running
        assert mounts_under(state_dir) == []
        with pytest.raises(trio.ClosedResourceError):
            await shared.open(AsyncExitStack())

    trio.run(scenario)


def test_an_idle_process_is_stopped_and_the_next_build_starts_another(
    state_dir: Path, registry: Registry
) -> None:
    async def scenario() -> None:
        shared = SharedFilesystem(lambda: _factory(state_dir, registry), idle_seconds=0.5)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(shared.run)
            async with AsyncExitStack() as build:
                first = await shared.open(build)
                await trio.sleep(1.0)  # held: not idle, however long
                assert first.running
            await _until_stopped(first)
            assert shared.service is None
            assert mounts_under(state_dir) == []
            async with AsyncExitStack() as build:
                second = await shared.open(build)
                assert second is not first and second.running
            nursery.cancel_scope.cancel()
        await shared.aclose()

    trio.run(scenario)


def test_a_process_with_many_layers_is_stopped_as_soon_as_it_is_idle(
    state_dir: Path, registry: Registry, tiny_image: str
) -> None:
    ref, layers = layers_of(registry, tiny_image)

    async def scenario() -> None:
        shared = SharedFilesystem(lambda: _factory(state_dir, registry), max_idle_layers=0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(shared.run)
            async with AsyncExitStack() as build:
                service = await shared.open(build)
                await service.add_layer(ref, layers[0])
            await _until_stopped(service)
            nursery.cancel_scope.cancel()
        await shared.aclose()
        assert mounts_under(state_dir) == []

    trio.run(scenario)


def test_a_process_that_died_is_replaced_and_its_mounts_cleaned_up(
    state_dir: Path, registry: Registry, tiny_image: str
) -> None:
    ref, layers = layers_of(registry, tiny_image)

    async def scenario() -> None:
        shared = SharedFilesystem(lambda: _factory(state_dir, registry))
        try:
            async with AsyncExitStack() as build:
                dead = await shared.open(build)
                await dead.add_layer(ref, layers[0])
            assert dead.pid is not None
            os.kill(dead.pid, signal.SIGKILL)
            await _until_stopped(dead)
            async with AsyncExitStack() as build:
                alive = await shared.open(build)
                assert alive is not dead and alive.running
                assert [p for p in mounts_under(state_dir) if dead.id in str(p)] == []
                assert Path((await alive.add_layer(ref, layers[0])).path).is_dir()
        finally:
            await shared.aclose()
        assert mounts_under(state_dir) == []

    trio.run(scenario)
