"""Runs a build graph: keys bottom-up, results from the cache where keys hit, the rest
executed once each, independent branches at the same time.

Per solve, each vertex has three computations, each done at most once however many
paths reach it: its cache map, its output keys, and its output results. A key needs the
input *keys*, except for inputs whose ``CacheDep`` asks for a content digest, which need
the input *result*. A result is loaded when every output key hits; only on a miss are the
inputs' results asked for. So a fully cached build loads the root and nothing under it.

Every computation runs as a task in the solve's nursery, and waiters wait on its event:
the first failure cancels the nursery, and with it every other task and waiter, and the
solve raises that first failure (an op's error as ``VertexFailedError``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import trio

from lazybuild.errors import reported_error
from lazybuild.graph.definition import Definition
from lazybuild.solver._clock import now
from lazybuild.solver._concurrency import Once, bind, gather
from lazybuild.solver.cachekey import DepKey, cache_key
from lazybuild.solver.cachestore import CacheLink, CacheRecord, CacheStore
from lazybuild.solver.errors import VertexFailedError
from lazybuild.solver.op import CacheDep, CacheMap, Job, Op, PreparesToRun, Result
from lazybuild.solver.progress import ProgressSink, ProgressWriter, VertexCompleted, VertexStarted
from lazybuild.solver.vertex import Edge, Vertex, load_definition

log = logging.getLogger(__name__)

T = TypeVar("T")

ResolveOp = Callable[[Vertex], Op]
LoadResult = Callable[[CacheRecord], Awaitable[Result | None]]


class Solver:
    """Solves definitions against one cache.

    ``resolve_op`` binds a vertex to the worker's op; ``load_result`` turns a cache record
    back into a result, or ``None`` when its data is gone (then the vertex runs again).
    """

    def __init__(self, resolve_op: ResolveOp, cache: CacheStore, *, load_result: LoadResult):
        self._resolve_op = resolve_op
        self._cache = cache
        self._load_result = load_result

    async def solve(
        self,
        definition: Definition,
        *,
        no_cache: bool = False,
        progress: ProgressWriter | None = None,
        solve_id: str | None = None,
    ) -> Result | None:
        """The result of the definition's root output, owned by the caller (release it),
        or ``None`` for the empty filesystem.

        ``no_cache``: load nothing from the cache; every vertex the root needs runs (results
        are still saved, as Docker does). A vertex whose ``OpMetadata.ignore_cache`` is set
        runs, and so does everything depending on it.
        """
        graph = load_definition(definition)
        if graph.root is None:
            return None
        run = _SolveRun(
            self._resolve_op,
            self._cache,
            self._load_result,
            must_run=_must_run(graph.vertices.values(), no_cache=no_cache),
            progress=ProgressSink(progress),
            solve_id=solve_id or uuid.uuid4().hex,
        )
        return await run.result(graph.root)


@dataclass(frozen=True)
class _VertexKeys:
    """One cache key per output, and the links they were derived from."""

    outputs: tuple[str, ...]
    links: tuple[CacheLink, ...]


class _VertexTasks:
    def __init__(self) -> None:
        self.cache_map: Once[CacheMap] = Once()
        self.keys: Once[_VertexKeys] = Once()
        self.outputs: Once[list[Result]] = Once()
        self.op: Op | None = None


class _SolveRun:
    def __init__(
        self,
        resolve_op: ResolveOp,
        cache: CacheStore,
        load_result: LoadResult,
        *,
        must_run: set[str],
        progress: ProgressSink,
        solve_id: str,
    ) -> None:
        self._resolve_op = resolve_op
        self._cache = cache
        self._load_result = load_result
        self._must_run = must_run
        self._progress = progress
        self._solve_id = solve_id
        self._session: dict[str, object] = {}
        self._tasks: dict[str, _VertexTasks] = {}
        self._held: list[Result] = []  # every result this solve loaded or computed
        self._failure: BaseException | None = None
        self._nursery: trio.Nursery | None = None

    async def result(self, root: Edge) -> Result:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                outputs = await self._outputs(root.vertex)
                return outputs[root.output_index].clone()
        except BaseExceptionGroup:
            # A group (strict nurseries always group) of the first failure and the
            # cancellations it caused: the caller gets the failure itself.
            failure = self._failure
            if failure is None:
                raise
        finally:
            with trio.CancelScope(shield=True):
                for held in self._held:
                    await held.release()
        raise failure

    # The three per-vertex computations, memoised.

    def _vertex_tasks(self, vertex: Vertex) -> _VertexTasks:
        tasks = self._tasks.get(vertex.digest)
        if tasks is None:
            tasks = self._tasks[vertex.digest] = _VertexTasks()
        return tasks

    async def _cache_map(self, vertex: Vertex) -> CacheMap:
        return await self._vertex_tasks(vertex).cache_map.get(
            self._started_nursery(), lambda: self._guarded(self._compute_cache_map(vertex))
        )

    async def _keys(self, vertex: Vertex) -> _VertexKeys:
        return await self._vertex_tasks(vertex).keys.get(
            self._started_nursery(), lambda: self._guarded(self._compute_keys(vertex))
        )

    async def _outputs(self, vertex: Vertex) -> list[Result]:
        return await self._vertex_tasks(vertex).outputs.get(
            self._started_nursery(), lambda: self._guarded(self._compute_outputs(vertex))
        )

    def _started_nursery(self) -> trio.Nursery:
        assert self._nursery is not None
        return self._nursery

    async def _guarded(self, computation: Awaitable[T]) -> T:
        try:
            return await computation
        except Exception as error:
            self._record_failure(error)
            raise

    def _record_failure(self, error: Exception) -> None:
        """Remember the first error of the solve, so it is what ``result`` raises.

        Called where errors start; a group only carries errors already recorded inside it.
        """
        if self._failure is None and not isinstance(error, BaseExceptionGroup):
            self._failure = error

    # The computations.

    async def _compute_cache_map(self, vertex: Vertex) -> CacheMap:
        try:
            op = self._op(vertex)
        except Exception as error:
            # The worker has no op for this vertex (an unsupported kind or option).
            raise self._failed(vertex, "setup", error) from error
        cache_map = await self._call_op(
            vertex, "computing its cache key", op.cache_map(self._job(vertex), 0)
        )
        if len(cache_map.deps) > len(vertex.inputs):
            wrong = ValueError(f"{len(cache_map.deps)} deps for {len(vertex.inputs)} inputs")
            raise self._failed(vertex, "computing its cache key", wrong) from wrong
        return cache_map

    async def _compute_keys(self, vertex: Vertex) -> _VertexKeys:
        cache_map = await self._cache_map(vertex)
        deps = list(cache_map.deps) + [CacheDep()] * (len(vertex.inputs) - len(cache_map.deps))
        dep_keys = await gather(
            [
                bind(self._dep_key, vertex, index, edge, dep)
                for index, (edge, dep) in enumerate(zip(vertex.inputs, deps, strict=True))
            ]
        )
        return _VertexKeys(
            outputs=tuple(
                cache_key(cache_map.digest, output, dep_keys)
                for output in range(vertex.output_count)
            ),
            links=tuple(
                CacheLink(index, dep.selector, dep.digest, dep.content)
                for index, dep in enumerate(dep_keys)
            ),
        )

    async def _dep_key(self, vertex: Vertex, index: int, edge: Edge, dep: CacheDep) -> DepKey:
        if dep.compute_digest is None:
            keys = await self._keys(edge.vertex)
            return DepKey(dep.selector, keys.outputs[edge.output_index])
        outputs = await self._outputs(edge.vertex)
        action = f"computing the content key of input {index}"
        content = await self._call_op(
            vertex, action, dep.compute_digest(outputs[edge.output_index])
        )
        return DepKey(dep.selector, content, content=True)

    async def _compute_outputs(self, vertex: Vertex) -> list[Result]:
        keys = await self._keys(vertex)
        if vertex.digest not in self._must_run:
            started_at = now()
            cached = await self._load_cached(vertex, keys.outputs)
            if cached is not None:
                await self._progress.emit(self._started(vertex, started_at))
                await self._progress.emit(self._completed(vertex, started_at, cached=True))
                return cached
        op = self._op(vertex)
        if isinstance(op, PreparesToRun):
            self._started_nursery().start_soon(self._prepare, vertex, op)
        inputs = await gather([bind(self._input_result, edge) for edge in vertex.inputs])
        async with op.acquire():
            started_at = now()
            await self._progress.emit(self._started(vertex, started_at))
            try:
                outputs = await op.exec(self._job(vertex), inputs)
                self._held.extend(outputs)
                if len(outputs) != vertex.output_count:
                    raise ValueError(f"{len(outputs)} outputs, expected {vertex.output_count}")
            except Exception as error:
                await self._progress.emit(
                    self._completed(
                        vertex,
                        started_at,
                        error=str(reported_error(error, also=(Exception,)) or error),
                    )
                )
                raise self._failed(vertex, "exec", error) from error
        self._save(keys, outputs)
        await self._progress.emit(self._completed(vertex, started_at))
        return outputs

    async def _prepare(self, vertex: Vertex, op: PreparesToRun) -> None:
        try:
            await op.will_run(self._job(vertex))
        except Exception as error:  # a hint only: exec meets the problem again
            log.debug("%s: preparing to run failed: %s", vertex.name, error)

    async def _input_result(self, edge: Edge) -> Result:
        return (await self._outputs(edge.vertex))[edge.output_index]

    async def _load_cached(self, vertex: Vertex, keys: Sequence[str]) -> list[Result] | None:
        records = [self._cache.load(key) for key in keys]
        if any(record is None for record in records):
            return None
        loaded: list[Result] = []
        for record in records:
            assert record is not None
            result = await self._call_op(
                vertex, "loading its cached result", self._load_result(record)
            )
            if result is None:
                # The record outlived its data: a miss, and the run will overwrite it.
                # Outputs loaded so far are held, and released with the rest.
                return None
            self._held.append(result)
            loaded.append(result)
        return loaded

    def _save(self, keys: _VertexKeys, outputs: Sequence[Result]) -> None:
        saved_at = now()
        for key, output in zip(keys.outputs, outputs, strict=True):
            self._cache.save(key, CacheRecord(output.id, saved_at), keys.links)

    # Helpers.

    def _op(self, vertex: Vertex) -> Op:
        tasks = self._vertex_tasks(vertex)
        if tasks.op is None:
            tasks.op = self._resolve_op(vertex)
        return tasks.op

    def _job(self, vertex: Vertex) -> Job:
        return Job(self._solve_id, vertex.digest, vertex.name, self._session, self._progress)

    def _started(self, vertex: Vertex, started_at: float) -> VertexStarted:
        inputs = tuple(edge.vertex.digest for edge in vertex.inputs)
        group = vertex.metadata.progress_group
        return VertexStarted(vertex.digest, vertex.name, inputs, started_at, group)

    def _completed(
        self, vertex: Vertex, started_at: float, *, cached: bool = False, error: str | None = None
    ) -> VertexCompleted:
        return VertexCompleted(
            vertex.digest,
            vertex.name,
            cached=cached,
            started_at=started_at,
            completed_at=now(),
            error=error,
        )

    async def _call_op(self, vertex: Vertex, action: str, call: Awaitable[T]) -> T:
        try:
            return await call
        except Exception as error:
            raise self._failed(vertex, action, error) from error

    def _failed(self, vertex: Vertex, action: str, error: Exception) -> VertexFailedError:
        failure = VertexFailedError(vertex.digest, vertex.metadata.description, action, error)
        self._record_failure(failure)
        return failure


def _must_run(vertices: Iterable[Vertex], *, no_cache: bool) -> set[str]:
    """Digests of the vertices that may not be loaded from the cache: all of them with
    ``no_cache``, else those with ``ignore_cache`` and everything that depends on them
    (a step that is not cached invalidates the steps after it, as in Docker)."""
    must_run: set[str] = set()
    for vertex in vertices:  # inputs first, as loaded
        if (
            no_cache
            or vertex.metadata.ignore_cache
            or any(edge.vertex.digest in must_run for edge in vertex.inputs)
        ):
            must_run.add(vertex.digest)
    return must_run
