"""The lazy filesystem process a build mounts its base images through.

A module of its own, light to import: the CLI starts the process before it imports the
build machinery, so that the two start-ups overlap.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

from lazybuild.lazyfs.client import LazyMountService
from lazybuild.registry.options import RegistryOptions

__all__ = ["OwnedFilesystem", "build_filesystem"]


def build_filesystem(
    state_dir: Path,
    registry: RegistryOptions,
    *,
    cache_max_bytes: int | None = None,
    base_image: str | None = None,
) -> LazyMountService:
    """``base_image``: the image the build will mount first (``baseahead``), opened by
    the process as soon as it starts."""
    return LazyMountService(
        state_dir,
        insecure_registries=registry.insecure_registries,
        docker_config=registry.docker_config,
        # A build reads what its steps read; fetching whole base images in the
        # background would spend the bandwidth laziness saves. A layer built on again
        # (as on a CI runner) is fetched whole, yielding to reads, and kept as a whole
        # image the next builds mount without the filesystem process.
        background_fetch=False,
        complete_reused_layers=True,
        cache_max_bytes=cache_max_bytes,
        open_image=base_image,
        open_image_record=False,
    )


class OwnedFilesystem:
    """A filesystem process of one build's own: started when the build first mounts a
    lazy layer, stopped when it ends. ``factory`` makes it; the first one it makes may
    be running already (spawned early by the CLI)."""

    shared = False

    def __init__(self, factory: Callable[[], LazyMountService]) -> None:
        self._factory = factory

    async def open(self, stack: AsyncExitStack) -> LazyMountService:
        return await stack.enter_async_context(self._factory())
