"""The build's side of the gateway: what a frontend's calls do (BuildKit's LLB bridge).

``BuildGateway`` solves through the driver's ``solve`` (the build's one solver setup,
cache store and worker, so a later solve of a subgraph already built is a cache hit),
hands out references to the results, and serves reads of them from read-only mounts
made on first read and taken down by ``aclose``, when the frontend is done. Image
configs come from the build's ``ImageResolver`` (each reference resolved once per
build), and every image resolved is announced (``on_image``), so its layers can be
opened while the frontend still plans.

The gateway remembers the errors it raised, so that the frontend runner can tell a
failure of the build (a step, a registry) that passed through the frontend from the
frontend's own crash.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from pathlib import Path

import trio

from lazybuild.gateway.contract import (
    DirEntry,
    FrontendInputs,
    GatewayError,
    Ref,
    ResolvedConfig,
)
from lazybuild.gateway.resultfiles import list_directory, read_bytes
from lazybuild.graph import Definition, DefinitionError, OpMetadata
from lazybuild.registry.client import ResolvedImage
from lazybuild.worker.layers import Snapshot
from lazybuild.worker.layerstore import LayerStore
from lazybuild.worker.resources import ImageResolver
from lazybuild.worker.rootfs import LayerMounter

__all__ = ["BuildGateway", "SolveDefinition"]

# The driver's solve: the definition's result, or a failure of the build.
SolveDefinition = Callable[[Definition], Awaitable[Snapshot]]


class BuildGateway:
    """One build's gateway; ``aclose`` releases its references and unmounts its views."""

    def __init__(
        self,
        inputs: FrontendInputs,
        *,
        solve: SolveDefinition,
        resolver: ImageResolver,
        mounter: LayerMounter,
        store: LayerStore,
        on_image: Callable[[ResolvedImage], None] = lambda image: None,
    ) -> None:
        self._inputs = inputs
        self._solve = solve
        self._resolver = resolver
        self._mounter = mounter
        self._store = store
        self._on_image = on_image
        self._results: dict[str, Snapshot] = {}
        self._views: dict[str, Path] = {}
        self._view_lock = trio.Lock()
        self._views_stack = AsyncExitStack()
        self._metadata: dict[str, OpMetadata] = {}
        self._raised: list[BaseException] = []

    @property
    def inputs(self) -> FrontendInputs:
        return self._inputs

    @property
    def metadata(self) -> Mapping[str, OpMetadata]:
        """Op metadata of every definition solved, by op digest (for error messages)."""
        return self._metadata

    def raised(self, error: BaseException) -> bool:
        """Whether ``error`` came out of one of this gateway's calls."""
        return any(error is known for known in self._raised)

    def _note(self, error: Exception) -> Exception:
        self._raised.append(error)
        return error

    async def solve(self, definition: Definition) -> Ref:
        if not isinstance(definition, Definition):
            raise self._note(
                GatewayError(f"solve takes a Definition, not a {type(definition).__name__}")
            )
        try:
            definition.decode()
        except DefinitionError as error:
            raise self._note(GatewayError(f"solve: invalid definition: {error}")) from None
        self._metadata.update(definition.metadata)
        try:
            snapshot = await self._solve(definition)
        except Exception as error:
            raise self._note(error) from None
        ref = Ref(secrets.token_hex(16))
        self._results[ref.id] = snapshot
        return ref

    def snapshot(self, ref: object) -> Snapshot:
        """The result ``ref`` names; ``GatewayError`` for anything this gateway did not
        hand out."""
        if isinstance(ref, Ref) and ref.id in self._results:
            return self._results[ref.id]
        raise self._note(GatewayError(f"{ref!r} is not a reference this build's solves returned"))

    async def read_file(
        self, ref: Ref, path: str, *, offset: int = 0, length: int | None = None
    ) -> bytes:
        try:
            root = await self._view(ref)
            return await trio.to_thread.run_sync(read_bytes, root, path, offset, length)
        except Exception as error:
            raise self._note(error) from None

    async def read_dir(self, ref: Ref, path: str) -> list[DirEntry]:
        try:
            root = await self._view(ref)
            return await trio.to_thread.run_sync(list_directory, root, path)
        except Exception as error:
            raise self._note(error) from None

    async def resolve_image_config(self, ref: str) -> ResolvedConfig:
        if not isinstance(ref, str):
            raise self._note(GatewayError("resolve_image_config takes an image reference"))
        try:
            image = await self._resolver.resolve(ref)
            self._on_image(image)
        except Exception as error:
            raise self._note(error) from None
        return ResolvedConfig(str(image.ref), image.manifest_digest, image.config)

    async def _view(self, ref: Ref) -> Path:
        snapshot = self.snapshot(ref)
        async with self._view_lock:
            if ref.id not in self._views:
                area = self._views_stack.enter_context(self._store.staging())
                if snapshot.layers:
                    await self._views_stack.enter_async_context(
                        self._mounter.mounted(snapshot, area.merged)
                    )
                # An empty result is the empty directory: nothing to mount.
                self._views[ref.id] = area.merged
            return self._views[ref.id]

    async def aclose(self) -> None:
        """Unmount the views and forget the references (the build's result is the
        driver's now, by snapshot)."""
        self._views.clear()
        self._results.clear()
        with trio.CancelScope(shield=True):
            await self._views_stack.aclose()
