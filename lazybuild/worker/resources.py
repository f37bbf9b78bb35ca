"""What the worker's ops share during one build: stores, mounts, images, inputs, limits."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import trio

from lazybuild.context.listing import BuildContext
from lazybuild.errors import LazybuildError
from lazybuild.executor.spec import Ulimit
from lazybuild.oci.platform import Platform
from lazybuild.registry.client import RegistryClient, ResolvedImage
from lazybuild.registry.reference import Reference
from lazybuild.worker.cachemounts import CacheMounts
from lazybuild.worker.imagerecords import ImageRecords
from lazybuild.worker.layerstore import LayerStore
from lazybuild.worker.layoutimage import OCI_LAYOUT_SCHEME, LayoutImage, resolve_layout_image
from lazybuild.worker.learnedreads import LearnedReads
from lazybuild.worker.rootfs import LayerMounter
from lazybuild.worker.sshforward import SshUpstream


class ImageResolveError(LazybuildError):
    """A base image could not be resolved (unknown, unreachable, wrong platform)."""


class ImageResolver:
    """Resolves each image reference once per build (tag to manifest digest, config).

    With ``records``, an image resolved by an earlier build is used as it was, the way
    Docker uses a local image, unless ``pull`` asks to check the registry again.
    """

    def __init__(
        self,
        client: RegistryClient,
        platform: Platform,
        *,
        records: ImageRecords | None = None,
        pull: bool = True,
    ) -> None:
        self.client = client
        self.platform = platform
        self._records = records
        self._pull = pull
        self._resolved: dict[str, ResolvedImage] = {}
        self._locks: dict[str, trio.Lock] = {}

    async def resolve(self, ref: str) -> ResolvedImage:
        lock = self._locks.setdefault(ref, trio.Lock())
        async with lock:  # single flight per reference; different ones in parallel
            if ref not in self._resolved:
                self._resolved[ref] = await self._resolve(ref)
            return self._resolved[ref]

    async def _resolve(self, ref: str) -> ResolvedImage:
        if ref.startswith(OCI_LAYOUT_SCHEME):  # a --build-context oci-layout://, never recorded
            return await trio.to_thread.run_sync(resolve_layout_image, ref, self.platform)
        records = self._records
        if records is not None and not self._pull:
            recorded = await trio.to_thread.run_sync(records.load, ref, self.platform)
            if recorded is not None:
                return recorded
        image = await self.client.resolve_image(Reference.parse(ref), self.platform)
        if records is not None:
            await trio.to_thread.run_sync(records.save, ref, self.platform, image)
        return image

    def resolved(self, ref: str) -> ResolvedImage | None:
        return self._resolved.get(ref)

    def layout_sources(self) -> dict[str, str]:
        """The layer sources of the OCI layout images resolved so far, by manifest
        digest (``layoutimage.rehome_layout_layers``)."""
        return {
            image.manifest_digest: image.source
            for image in self._resolved.values()
            if isinstance(image, LayoutImage)
        }


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
    # What RUN steps read from their base images, for learned prefetching (None: off).
    learned: LearnedReads | None = None
    # Cache mounts that travel through build caches, and which ones steps used.
    cache_mount_state: CacheMounts | None = None
    # Hears, in one line, of an imported cache hit that could not be used.
    on_cache_miss: Callable[[str], None] = field(default=lambda message: None)
    # Digests of imported cache layers found corrupt while a step read them: a record
    # whose result has one is a miss from then on.
    refused_layers: set[str] = field(default_factory=set)
    # Learn what steps write to cache mounts (for a cache export that takes them).
    learn_cache_mount_writes: bool = False
    # RUN containers as ``--add-host`` (name, address), ``--shm-size`` (bytes) and
    # ``--ulimit`` shape them; part of every RUN step's key (see ExecOp.cache_map).
    extra_hosts: tuple[tuple[str, str], ...] = ()
    shm_size: int | None = None
    ulimits: tuple[Ulimit, ...] = ()
    # ``--ssh``: agent sockets by id, forwarded to RUN --mount=type=ssh (not in keys).
    ssh_agents: Mapping[str, SshUpstream] = field(default_factory=dict)
    exec_slots: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(2))
    file_slots: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(4))
