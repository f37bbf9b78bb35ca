"""A prefetch names layers the filesystem process has not added yet: it opens them
itself and starts fetching as soon as their TOC is verified, without waiting for the
owner's add_layer (a RUN step's learned prefetch, started while earlier steps run)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from lazybuild.lazyfs.client import LazyMountService
from tests.integration.test_lazyfs_mount import layers_of, scratch_state_dir, tiny_esgz
from tests.support.registry import Registry

pytestmark = pytest.mark.root

__all__ = ["tiny_esgz"]  # the module's fixture, used here


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    yield from scratch_state_dir(tmp_path)


def test_a_prefetch_opens_the_layers_it_names(
    state_dir: Path, registry: Registry, tiny_esgz: str
) -> None:
    ref, layers = layers_of(registry, tiny_esgz)
    wanted = ["usr/bin/cat", "hello.txt"]

    async def scenario() -> None:
        async with LazyMountService(
            state_dir, insecure_registries=[registry.host], background_fetch=False
        ) as service:
            assert (await service.stats()).layers == ()
            _, scheduled = await service.prefetch_files(
                {layer.digest: wanted for layer in layers},
                layers={layer.digest: (ref, layer) for layer in layers},
            )
            assert scheduled > 0
            # The owner's own adds join the layers opened for the prefetch.
            mounts = [await service.add_layer(ref, layer) for layer in layers]
            report = await service.stats()
            assert sorted(layer.digest for layer in report.layers) == sorted(
                layer.digest for layer in layers
            )
            with trio.fail_after(30):
                while (await service.stats()).bytes_fetched < scheduled:
                    await trio.sleep(0.05)
            top_down = reversed(mounts)
            hello = next(m.path / "hello.txt" for m in top_down if (m.path / "hello.txt").exists())
            assert hello.read_bytes()
            requests = sum(layer.requests for layer in (await service.stats()).layers)
            assert hello.read_bytes() and requests == sum(
                layer.requests for layer in (await service.stats()).layers
            )  # read from what the prefetch brought: no new request

    trio.run(scenario)


def test_a_prefetch_of_layers_it_is_not_told_about_is_skipped(
    state_dir: Path, registry: Registry, tiny_esgz: str
) -> None:
    _, layers = layers_of(registry, tiny_esgz)

    async def scenario() -> None:
        async with LazyMountService(
            state_dir, insecure_registries=[registry.host], background_fetch=False
        ) as service:
            files = {layer.digest: ["hello.txt"] for layer in layers}
            assert await service.prefetch_files(files) == (0, 0)
            assert (await service.stats()).layers == ()

    trio.run(scenario)
