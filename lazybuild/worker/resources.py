"""What the worker's ops share during one build: stores, mounts, images, inputs, limits."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import trio

from lazybuild.context import BuildContext
from lazybuild.errors import LazybuildError
from lazybuild.oci.platform import Platform
from lazybuild.registry.client import RegistryClient, ResolvedImage
from lazybuild.registry.reference import Reference
from lazybuild.worker.layerstore import LayerStore
from lazybuild.worker.rootfs import LayerMounter


class ImageResolveError(LazybuildError):
    """A base image could not be resolved (unknown, unreachable, wrong platform)."""


class ImageResolver:
    """Resolves each image reference once per build (tag to manifest digest, config)."""

    def __init__(self, client: RegistryClient, platform: Platform) -> None:
        self.client = client
        self.platform = platform
        self._resolved: dict[str, ResolvedImage] = {}
        self._lock = trio.Lock()

    async def resolve(self, ref: str) -> ResolvedImage:
        async with self._lock:
            # One at a time keeps it single-flight; base images are few and this is
            # mostly a cache lookup after the driver's first pass.
            if ref not in self._resolved:
                reference = Reference.parse(ref)
                self._resolved[ref] = await self.client.resolve_image(reference, self.platform)
            return self._resolved[ref]

    def resolved(self, ref: str) -> ResolvedImage | None:
        return self._resolved.get(ref)


@dataclass
class WorkerResources:
    """``contexts``: local sources by name (``context`` is the build context);
    ``secrets``: values by id, never written to a layer or a cache record;
    ``cache_mounts``: where ``RUN --mount=type=cache`` directories persist."""

    store: LayerStore
    mounter: LayerMounter
    images: ImageResolver
    contexts: Mapping[str, BuildContext]
    secrets: Mapping[str, bytes]
    cache_mounts: Path
    platform: Platform
    default_network: Literal["host", "none"] = "host"
    exec_slots: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(2))
    file_slots: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(4))
