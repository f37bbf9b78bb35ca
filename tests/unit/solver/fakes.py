"""Fake ops and results for scheduler tests, in the manner of buildkit's scheduler_test.

A test builds a real graph with ``vertex()`` (the description names the fake op) and a
``World`` that holds the fake ops, counts their calls, keeps "stored" results for the
cache, and counts live result references so leaks show.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field

import trio

from lazybuild.graph import OpMetadata, RunMount, State
from lazybuild.solver import CacheDep, CacheMap, CacheRecord, Job, Result, Solver
from lazybuild.solver.cachestore import CacheStore, MemoryCacheStore
from lazybuild.solver.vertex import Vertex

PLATFORM = "linux/amd64"


def vertex(name: str, *inputs: State, ignore_cache: bool = False) -> State:
    """A graph vertex run by the fake op ``name``, reading ``inputs`` in order."""
    metadata = OpMetadata(description=name, ignore_cache=ignore_cache)
    if not inputs:
        return State.image(f"example.com/{name}", PLATFORM, metadata=metadata)
    first, *rest = inputs
    mounts = [RunMount(dest=f"/in{i}", source=s, readonly=True) for i, s in enumerate(rest)]
    return first.run([name], mounts=mounts, metadata=metadata)


class FakeResult:
    def __init__(self, world: World, id: str) -> None:
        self._world = world
        self._id = id
        self._released = False
        world.live += 1

    @property
    def id(self) -> str:
        return self._id

    @property
    def value(self) -> str:
        return self._world.values[self._id]

    async def release(self) -> None:
        assert not self._released, f"{self._id} released twice"
        self._released = True
        self._world.live -= 1

    def clone(self) -> Result:
        return FakeResult(self._world, self._id)


ContentFunc = Callable[[FakeResult], str]


@dataclass
class FakeOp:
    world: World
    name: str
    cache_seed: str
    delay: float = 0.0
    fail: Exception | None = None
    content: dict[int, ContentFunc] = field(default_factory=dict)  # input -> content key
    selectors: dict[int, str] = field(default_factory=dict)
    outputs: int = 1
    limiter: trio.CapacityLimiter | None = None
    log: bytes | None = None
    produce: Callable[[], str] | None = None  # the output's value, instead of name(inputs)
    cache_map_calls: int = 0
    will_run_at: list[float] = field(default_factory=list)  # trio times of will_run calls
    exec_calls: int = 0
    completed: int = 0
    cancelled: int = 0

    async def cache_map(self, job: Job, index: int) -> CacheMap:
        self.cache_map_calls += 1
        await trio.sleep(0)
        count = max([*self.content, *self.selectors, -1]) + 1
        deps = tuple(
            CacheDep(self.selectors.get(i, ""), self._content_func(self.content.get(i)))
            for i in range(count)
        )
        return CacheMap(self.cache_seed, deps)

    @staticmethod
    def _content_func(
        func: ContentFunc | None,
    ) -> Callable[[Result], Awaitable[str]] | None:
        if func is None:
            return None

        async def compute(result: Result) -> str:
            assert isinstance(result, FakeResult)
            await trio.sleep(0)
            return func(result)

        return compute

    async def will_run(self, job: Job) -> None:
        self.will_run_at.append(trio.current_time())
        if self.fail is not None:
            raise self.fail  # a hint's failure: exec meets it again

    async def exec(self, job: Job, inputs: Sequence[Result]) -> list[Result]:
        self.exec_calls += 1
        self.world.running += 1
        self.world.max_running = max(self.world.max_running, self.world.running)
        try:
            if self.log is not None:
                await job.log("stdout", self.log)
                await job.status("fetch", "fetching layers", 5, 10)
            await trio.sleep(self.delay)
            if self.fail is not None:
                raise self.fail
        except trio.Cancelled:
            self.cancelled += 1
            raise
        finally:
            self.world.running -= 1
        self.completed += 1
        args = ",".join(self.world.values[i.id] for i in inputs)
        value = f"{self.name}({args})" if inputs else self.name
        if self.produce is not None:
            value = self.produce()
        return [self.world.new_result(value) for _ in range(self.outputs)]

    def acquire(self) -> AbstractAsyncContextManager[None]:
        return self._acquire()

    @asynccontextmanager
    async def _acquire(self) -> AsyncIterator[None]:
        if self.limiter is None:
            yield
        else:
            async with self.limiter:
                yield


class World:
    def __init__(self, cache: CacheStore | None = None) -> None:
        self.ops: dict[str, FakeOp] = {}
        self.values: dict[str, str] = {}  # result id -> value, i.e. the worker's storage
        self.live = 0
        self.running = 0
        self.max_running = 0
        self.loads = 0
        self.cache = cache if cache is not None else MemoryCacheStore()
        self._next_id = 0

    def op(self, name: str, *, seed: str | None = None, **options: object) -> FakeOp:
        fake = FakeOp(self, name, seed or f"seed-{name}", **options)  # type: ignore[arg-type]
        self.ops[name] = fake
        return fake

    def new_result(self, value: str) -> FakeResult:
        self._next_id += 1
        result_id = f"r{self._next_id}"
        self.values[result_id] = value
        return FakeResult(self, result_id)

    def resolve(self, vertex: Vertex) -> FakeOp:
        return self.ops[vertex.metadata.description]

    async def load(self, record: CacheRecord) -> Result | None:
        self.loads += 1
        if record.result_id not in self.values:
            return None
        return FakeResult(self, record.result_id)

    def solver(self) -> Solver:
        return Solver(self.resolve, self.cache, load_result=self.load)

    def exec_counts(self) -> dict[str, int]:
        return {name: op.exec_calls for name, op in self.ops.items()}
