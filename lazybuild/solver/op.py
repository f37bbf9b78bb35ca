"""What the worker implements for each vertex: how to key it and how to run it.

The solver never looks inside a ``Result``; in lazybuild's worker it wraps a snapshot or a
chain of layers. Results passed to ``Op.exec`` belong to the solver and are released by
it when the solve ends: an op that keeps one must ``clone()`` it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from lazybuild.solver._clock import now
from lazybuild.solver.progress import ProgressSink, VertexLog, VertexStatus


class Result(Protocol):
    @property
    def id(self) -> str:
        """Stable identity; the cache stores it and ``load_result`` turns it back into one."""
        ...

    async def release(self) -> None: ...

    def clone(self) -> Result:
        """Another reference to the same result, released independently."""
        ...


ContentDigestFunc = Callable[[Result], Awaitable[str]]


@dataclass(frozen=True)
class CacheDep:
    """How input *i* enters the vertex's cache key.

    ``selector`` narrows what of the input matters (for a copy, its source paths).
    ``compute_digest``, when given, turns the input's result into a content digest that
    replaces the input's own key (buildkit's "slow" key): a COPY whose selected files are
    unchanged then hits even though other files of its source changed. It forces the input
    to be computed or loaded, so it belongs only on inputs whose content is the point.
    """

    selector: str = ""
    compute_digest: ContentDigestFunc | None = None


@dataclass(frozen=True)
class CacheMap:
    """``digest``: the op's own checksum, stable across builds (an image by its manifest
    digest, an exec by its command, env and mounts); ``deps``: one per input, in order
    (missing trailing entries mean ``CacheDep()``)."""

    digest: str
    deps: tuple[CacheDep, ...] = ()


@dataclass(frozen=True)
class Job:
    """What an op sees of the solve it runs in, bound to one vertex.

    ``session`` is shared by every vertex of one solve (e.g. a tag-to-digest map, so one
    solve resolves a tag once).
    """

    solve_id: str
    vertex: str
    name: str
    session: dict[str, object] = field(default_factory=dict)
    progress: ProgressSink = field(default_factory=lambda: ProgressSink(None))

    async def log(self, stream: Literal["stdout", "stderr"], data: bytes) -> None:
        await self.progress.emit(VertexLog(self.vertex, stream, data, now()))

    async def status(
        self, id: str, name: str, current: int, total: int | None = None, *, completed: bool = False
    ) -> None:
        event = VertexStatus(self.vertex, id, name, current, total, now(), completed)
        await self.progress.emit(event)


class Op(Protocol):
    async def cache_map(self, job: Job, index: int) -> CacheMap:
        """How to key this vertex. ``index`` is 0: a single round for now (buildkit allows
        several so an op can refine its key); it is in the signature to keep that open."""
        ...

    async def exec(self, job: Job, inputs: Sequence[Result]) -> list[Result]:
        """Compute the outputs, one per ``Vertex.output_count``, from the input results
        (in the order of the vertex's inputs). The outputs are new references, handed to
        the solver: to pass an input through unchanged, return ``input.clone()``."""
        ...

    def acquire(self) -> AbstractAsyncContextManager[None]:
        """Held around ``exec``: a slot of whatever limits how many such ops run at once."""
        ...


@runtime_checkable
class PreparesToRun(Protocol):
    """An op that can use the time between knowing it will run and its inputs being
    ready (a RUN step's learned prefetch starts while the steps before it still run)."""

    async def will_run(self, job: Job) -> None:
        """Called once, in the background, when the vertex's result is not cached. A
        hint: whatever fails here is met again, and reported, by ``exec``."""
        ...
