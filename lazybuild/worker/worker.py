"""The worker as the solver sees it: an ``Op`` per vertex, and cached results reloaded."""

from __future__ import annotations

import logging

from lazybuild.context.listing import BuildContext
from lazybuild.errors import FormatError, LazybuildError, reported_error
from lazybuild.graph.ops import Diff, Exec, File, HttpSource, ImageSource, LocalSource, Merge
from lazybuild.solver import CacheRecord, Op, Vertex
from lazybuild.worker.execop import ExecOp
from lazybuild.worker.fileop import FileOp
from lazybuild.worker.httpop import HttpSourceOp
from lazybuild.worker.imageop import ImageSourceOp
from lazybuild.worker.layers import LocalLayer, Snapshot
from lazybuild.worker.layoutimage import rehome_layout_layers
from lazybuild.worker.localop import LocalSourceOp
from lazybuild.worker.resources import WorkerResources
from lazybuild.worker.stackops import DiffOp, MergeOp

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, resources: WorkerResources) -> None:
        self.resources = resources

    def resolve_op(self, vertex: Vertex) -> Op:
        operation = vertex.operation
        resources = self.resources
        if isinstance(operation, ImageSource):
            return ImageSourceOp(operation, resources)
        if isinstance(operation, LocalSource):
            return LocalSourceOp(operation, resources)
        if isinstance(operation, HttpSource):
            return HttpSourceOp(operation, resources)
        if isinstance(operation, Exec):
            return ExecOp(operation, resources, _root_image(vertex))
        if isinstance(operation, File):
            return FileOp(operation, resources, self._input_contexts(vertex))
        if isinstance(operation, Merge):
            return MergeOp(operation)
        if isinstance(operation, Diff):
            return DiffOp(operation)
        raise LazybuildError(f"the worker cannot run {type(operation).__name__} operations")

    def _input_contexts(self, vertex: Vertex) -> list[BuildContext | None]:
        contexts: list[BuildContext | None] = []
        for edge in vertex.inputs:
            source = edge.vertex.operation
            contexts.append(
                self.resources.contexts.get(source.name)
                if isinstance(source, LocalSource)
                else None
            )
        return contexts

    async def load_result(self, record: CacheRecord) -> Snapshot | None:
        """The cached snapshot, or ``None`` when one of its local layers was pruned, or a
        layer of an imported build cache cannot be opened (a blob gone, or one whose TOC
        fails its digest) or was found corrupt as a step read it: then the step runs
        again."""
        try:
            snapshot = Snapshot.from_id(record.result_id)
        except (FormatError, KeyError):
            return None
        # Base layers of an OCI layout: from this build's layout of the same image.
        snapshot = rehome_layout_layers(snapshot, self.resources.images.layout_sources())
        for layer in snapshot.layers:
            if isinstance(layer, LocalLayer) and not self.resources.store.has(layer):
                return None
        imported = [layer for layer in snapshot.remote_layers if layer.from_cache]
        if any(layer.descriptor.digest in self.resources.refused_layers for layer in imported):
            return None
        if imported:
            try:
                # Opening a layer fetches and verifies its TOC; the mount is reused later.
                await self.resources.mounter.lower_dirs(Snapshot(tuple(imported)))
            except Exception as exc:
                # Layers open concurrently: a failure may come as a group of one.
                error = reported_error(exc)
                if error is None:
                    raise
                log.info("an imported cache hit is unusable: %s", error)
                reason = " ".join(str(error).split())
                self.resources.on_cache_miss(
                    f"warning: an imported cache hit is unusable ({reason}); running its step"
                )
                return None
        return snapshot


def _root_image(vertex: Vertex) -> ImageSource | None:
    """The image at the bottom of a RUN step's root filesystem, when only RUN and file
    steps lie between (then the image's layers are the step's base layers)."""
    for _ in range(10_000):  # a chain of steps, never a cycle
        operation = vertex.operation
        if isinstance(operation, ImageSource):
            return operation
        if isinstance(operation, Exec):
            index = operation.mounts[0].input if operation.mounts else None
        elif isinstance(operation, File):
            index = operation.base_input
        else:
            return None
        if index is None or index >= len(vertex.inputs):
            return None
        vertex = vertex.inputs[index].vertex
    return None
