"""``FROM image``: a base image's layers, left in the registry and mounted lazily.

The cache key is the manifest digest the reference resolves to, so a moved tag is a
miss and an unchanged one is a hit without reading any layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager

from lazybuild.graph.ops import ImageSource
from lazybuild.oci.platform import Platform
from lazybuild.registry.client import ResolvedImage
from lazybuild.solver import CacheMap, Job, Result
from lazybuild.worker.layers import RemoteLayer, Snapshot
from lazybuild.worker.layoutimage import LayoutImage
from lazybuild.worker.opbase import no_slot
from lazybuild.worker.resources import ImageResolveError, WorkerResources


def image_layers(image: ResolvedImage) -> tuple[RemoteLayer, ...]:
    diff_ids = image.config.get("rootfs", {}).get("diff_ids", [])
    layers = image.manifest.layers
    if len(diff_ids) != len(layers):
        raise ImageResolveError(
            f"{image.ref}: its config lists {len(diff_ids)} diff_ids for {len(layers)} layers"
        )
    # An OCI layout's layers are opened from the layout (``worker.layoutimage``).
    source = image.source if isinstance(image, LayoutImage) else str(image.ref)
    return tuple(
        RemoteLayer(descriptor, source, str(diff_id))
        for descriptor, diff_id in zip(layers, diff_ids, strict=True)
    )


class ImageSourceOp:
    def __init__(self, op: ImageSource, resources: WorkerResources) -> None:
        self._op = op
        self._resources = resources

    async def _resolved(self) -> ResolvedImage:
        if Platform.parse(self._op.platform) != self._resources.platform:
            raise ImageResolveError(
                f"{self._op.ref}: platform {self._op.platform} is not this machine's "
                f"({self._resources.platform}); lazybuild builds for the host platform only"
            )
        return await self._resources.images.resolve(self._op.ref)

    async def cache_map(self, job: Job, index: int) -> CacheMap:
        image = await self._resolved()
        return CacheMap(digest=image.manifest_digest)

    async def exec(self, job: Job, inputs: Sequence[Result]) -> list[Result]:
        return [Snapshot(image_layers(await self._resolved()))]

    def acquire(self) -> AbstractAsyncContextManager[None]:
        return no_slot()
