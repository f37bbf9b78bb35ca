"""Solver scheduling with fake ops: dedupe, caching, invalidation, content keys,
concurrency, failure and cancellation. Delays run on trio's MockClock, so they cost
nothing and elapsed times are exact."""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from lazybuild.graph import Definition, OpMetadata, RunMount, State, marshal
from lazybuild.solver import (
    ProgressEvent,
    SQLiteCacheStore,
    VertexCompleted,
    VertexFailedError,
    VertexLog,
    VertexStarted,
    VertexStatus,
)
from tests.unit.solver.fakes import FakeResult, World, vertex


def run(main: Callable[[], Awaitable[None]]) -> None:
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def solve(world: World, definition: Definition, **options: object) -> str:
    """Solve, check that nothing but the returned result is still referenced, return its value."""
    result = await world.solver().solve(definition, **options)  # type: ignore[arg-type]
    assert isinstance(result, FakeResult)
    assert world.live == 1, "results leaked"
    value = result.value
    await result.release()
    return value


def diamond() -> Definition:
    base = vertex("base")
    return marshal(vertex("join", vertex("left", base), vertex("right", base)))


def test_a_shared_subgraph_runs_once() -> None:
    async def main() -> None:
        world = World()
        for name in ("base", "left", "right", "join"):
            world.op(name)
        assert await solve(world, diamond()) == "join(left(base),right(base))"
        assert world.exec_counts() == {"base": 1, "left": 1, "right": 1, "join": 1}
        assert world.ops["base"].cache_map_calls == 1

    run(main)


def test_a_second_solve_runs_nothing_and_loads_only_the_root() -> None:
    async def main() -> None:
        world = World()
        for name in ("base", "left", "right", "join"):
            world.op(name)
        first = await solve(world, diamond())
        world.loads = 0
        assert await solve(world, diamond()) == first
        assert world.exec_counts() == {"base": 1, "left": 1, "right": 1, "join": 1}
        assert world.loads == 1

    run(main)


def test_a_changed_input_reruns_only_what_depends_on_it() -> None:
    async def main() -> None:
        world = World()
        for name in ("a", "b", "c", "d"):
            world.op(name)
        definition = marshal(vertex("d", vertex("b", vertex("a")), vertex("c")))
        await solve(world, definition)
        world.ops["c"].cache_seed = "c moved"  # like a tag now naming another image
        assert await solve(world, definition) == "d(b(a),c)"
        assert world.exec_counts() == {"a": 1, "b": 1, "c": 2, "d": 2}

    run(main)


def test_a_vertex_that_will_run_hears_so_before_its_inputs_are_done() -> None:
    """A RUN step's learned prefetch starts while the steps before it still run; a hit
    never hears it, and a failing hint does not fail the solve on its own."""

    async def main() -> None:
        world = World()
        world.op("base", delay=5.0)
        world.op("step")
        definition = marshal(vertex("step", vertex("base")))
        started = trio.current_time()
        await solve(world, definition)
        assert world.ops["step"].will_run_at == [started]  # not after base's 5 s
        await solve(world, definition)
        assert len(world.ops["step"].will_run_at) == 1  # the second solve hits
        world.ops["base"].fail = ValueError("base fails")
        world.ops["base"].cache_seed = "base moved"
        with pytest.raises(VertexFailedError, match="base fails"):
            await solve(world, definition)  # the exec's error, not the hint's

    run(main)


def content_world(files: dict[str, str]) -> World:
    """A context source whose output is a snapshot of ``files``, a copy of "app.c" keyed
    by that file's content only, and a compile step after it."""
    world = World()
    world.op("context", produce=lambda: json.dumps(files))
    world.op("base")
    world.op(
        "copy",
        selectors={1: "/app.c"},
        content={1: lambda result: json.loads(result.value)["app.c"]},
    )
    world.op("compile")
    return world


def copy_definition() -> Definition:
    copied = vertex("copy", vertex("base"), vertex("context"))
    return marshal(vertex("compile", copied))


def test_a_content_key_ignores_unrelated_files() -> None:
    async def main() -> None:
        files = {"app.c": "int main;", "README": "v1"}
        world = content_world(files)
        # A context source's key changes with every session, as a local source's does.
        world.ops["context"].cache_seed = "session-first"
        await solve(world, copy_definition())
        files["README"] = "v2"
        world.ops["context"].cache_seed = "session-second"
        await solve(world, copy_definition())
        assert world.exec_counts() == {"context": 2, "base": 1, "copy": 1, "compile": 1}

        files["app.c"] = "int main() {}"
        world.ops["context"].cache_seed = "session-third"
        await solve(world, copy_definition())
        assert world.exec_counts() == {"context": 3, "base": 1, "copy": 2, "compile": 2}

    run(main)


def test_no_cache_runs_every_needed_vertex_and_refreshes_the_cache() -> None:
    async def main() -> None:
        world = World()
        world.op("a")
        world.op("b")
        definition = marshal(vertex("b", vertex("a")))
        await solve(world, definition)
        world.loads = 0
        await solve(world, definition, no_cache=True)
        assert world.exec_counts() == {"a": 2, "b": 2}
        assert world.loads == 0
        await solve(world, definition)
        assert world.exec_counts() == {"a": 2, "b": 2}

    run(main)


def test_ignore_cache_reruns_the_vertex_and_its_dependents_only() -> None:
    async def main() -> None:
        world = World()
        for name in ("a", "b", "c"):
            world.op(name)
        await solve(world, marshal(vertex("c", vertex("b", vertex("a")))))
        again = marshal(vertex("c", vertex("b", vertex("a"), ignore_cache=True)))
        await solve(world, again)
        assert world.exec_counts() == {"a": 1, "b": 2, "c": 2}

    run(main)


def test_a_record_whose_data_is_gone_is_a_miss() -> None:
    async def main() -> None:
        world = World()
        world.op("a")
        world.op("b")
        definition = marshal(vertex("b", vertex("a")))
        await solve(world, definition)
        world.values.clear()  # the worker lost every result
        assert await solve(world, definition) == "b(a)"
        assert world.exec_counts() == {"a": 2, "b": 2}

    run(main)


def test_independent_branches_run_at_the_same_time() -> None:
    async def main() -> None:
        world = World()
        world.op("base")
        world.op("left", delay=1.0)
        world.op("right", delay=1.0)
        world.op("join")
        started = trio.current_time()
        await solve(world, diamond())
        assert world.max_running == 2
        assert trio.current_time() - started == pytest.approx(1.0)

    run(main)


def test_acquire_bounds_concurrency() -> None:
    async def main() -> None:
        world = World()
        limiter = trio.CapacityLimiter(1)
        world.op("base")
        world.op("left", delay=1.0, limiter=limiter)
        world.op("right", delay=1.0, limiter=limiter)
        world.op("join")
        started = trio.current_time()
        await solve(world, diamond())
        assert world.max_running == 1
        assert trio.current_time() - started == pytest.approx(2.0)

    run(main)


def test_a_failure_cancels_siblings_and_names_the_vertex() -> None:
    async def main() -> None:
        world = World()
        world.op("base")
        world.op("left", delay=0.5, fail=RuntimeError("exit code 2"))
        world.op("right", delay=60.0)
        world.op("join")
        definition = diamond()
        with pytest.raises(VertexFailedError) as raised:
            await world.solver().solve(definition)
        error = raised.value
        assert error.description == "left"
        assert error.digest == digest_named(definition, "left")
        assert isinstance(error.__cause__, RuntimeError)
        assert "left" in str(error) and "exit code 2" in str(error)
        assert world.ops["right"].cancelled == 1
        assert world.ops["join"].exec_calls == 0
        assert trio.current_time() == pytest.approx(0.5)
        assert world.live == 0
        saved = {record.result_id for _, record in world.cache.entries()}
        assert [world.values[i] for i in saved] == ["base"]

    run(main)


def test_a_failing_content_key_names_the_consuming_vertex() -> None:
    async def main() -> None:
        world = World()
        world.op("src")

        def broken(result: FakeResult) -> str:
            raise OSError("unreadable")

        world.op("copy", content={1: broken})
        world.op("dst")
        definition = marshal(vertex("copy", vertex("dst"), vertex("src")))
        with pytest.raises(VertexFailedError) as raised:
            await world.solver().solve(definition)
        assert raised.value.description == "copy"
        assert "content key of input 1" in str(raised.value)

    run(main)


def test_cancelling_the_solve_stops_every_op_and_releases_everything() -> None:
    async def main() -> None:
        world = World()
        world.op("base")
        world.op("left", delay=60.0)
        world.op("right", delay=60.0)
        world.op("join")
        with trio.move_on_after(5.0) as scope:
            await world.solver().solve(diamond())
        assert scope.cancelled_caught
        assert world.ops["left"].cancelled == world.ops["right"].cancelled == 1
        assert world.live == 0
        assert len(world.cache.entries()) == 1  # only "base" finished

    run(main)


def test_an_exec_output_other_than_the_root_can_be_the_result() -> None:
    async def main() -> None:
        world = World()
        world.op("base")
        world.op("build", outputs=2)
        built = vertex("base").run(
            ["build"], mounts=[RunMount(dest="/out")], metadata=OpMetadata(description="build")
        )
        definition = marshal(built.get_mount("/out"))
        assert definition.root_output == 1
        assert await solve(world, definition) == "build(base)"
        assert len(world.cache.entries()) == 3
        await solve(world, definition)
        assert world.exec_counts() == {"base": 1, "build": 1}

    run(main)


def test_the_empty_filesystem_solves_to_none() -> None:
    async def main() -> None:
        world = World()
        assert await world.solver().solve(marshal(State.scratch())) is None

    run(main)


def test_solves_share_a_sqlite_cache(tmp_path: Path) -> None:
    async def main() -> None:
        with SQLiteCacheStore(tmp_path / "cache.db") as store:
            world = World(store)
            world.op("a")
            world.op("b")
            await solve(world, marshal(vertex("b", vertex("a"))))
        with SQLiteCacheStore(tmp_path / "cache.db") as store:
            world.cache = store
            await solve(world, marshal(vertex("b", vertex("a"))))
        assert world.exec_counts() == {"a": 1, "b": 1}

    run(main)


def test_progress_reports_each_vertex_with_its_cache_state_and_logs() -> None:
    async def main() -> None:
        world = World()
        world.op("a")
        world.op("b", log=b"compiling\n")
        definition = marshal(vertex("b", vertex("a")))
        send, receive = trio.open_memory_channel[ProgressEvent](100)
        await world.solver().solve(definition, progress=send)
        first = drain(receive)
        names = digest_names(definition)
        assert [(type(e).__name__, names[e.vertex]) for e in first] == [
            ("VertexStarted", "a"),
            ("VertexCompleted", "a"),
            ("VertexStarted", "b"),
            ("VertexLog", "b"),
            ("VertexStatus", "b"),
            ("VertexCompleted", "b"),
        ]
        started_b = first[2]
        assert isinstance(started_b, VertexStarted)
        assert started_b.inputs == (digest_named(definition, "a"),)
        log = first[3]
        assert isinstance(log, VertexLog) and log.data == b"compiling\n"
        status = first[4]
        assert isinstance(status, VertexStatus) and (status.current, status.total) == (5, 10)
        assert [e.cached for e in first if isinstance(e, VertexCompleted)] == [False, False]

        second: list[ProgressEvent] = []
        await world.solver().solve(definition, progress=second.append)
        assert [(type(e).__name__, names[e.vertex]) for e in second] == [
            ("VertexStarted", "b"),
            ("VertexCompleted", "b"),
        ]
        completed = second[1]
        assert isinstance(completed, VertexCompleted) and completed.cached

    run(main)


def test_progress_reports_the_error_of_a_failed_vertex() -> None:
    async def main() -> None:
        world = World()
        world.op("a", fail=RuntimeError("no space left"))
        events: list[ProgressEvent] = []
        with pytest.raises(VertexFailedError):
            await world.solver().solve(marshal(vertex("a")), progress=events.append)
        completed = events[-1]
        assert isinstance(completed, VertexCompleted)
        assert completed.error == "no space left" and not completed.cached

    run(main)


def test_progress_reports_a_failure_inside_an_exception_group_by_its_own_error() -> None:
    async def main() -> None:
        world = World()
        group = ExceptionGroup("Exceptions from Trio nursery", [RuntimeError("disk full")])
        world.op("a", fail=group)
        events: list[ProgressEvent] = []
        with pytest.raises(VertexFailedError):
            await world.solver().solve(marshal(vertex("a")), progress=events.append)
        completed = events[-1]
        assert isinstance(completed, VertexCompleted) and completed.error == "disk full"

    run(main)


def drain(receive: trio.MemoryReceiveChannel[ProgressEvent]) -> list[ProgressEvent]:
    events = []
    while True:
        try:
            events.append(receive.receive_nowait())
        except trio.WouldBlock:
            return events


def digest_names(definition: Definition) -> dict[str, str]:
    return {digest: meta.description for digest, meta in definition.metadata.items()}


def digest_named(definition: Definition, name: str) -> str:
    return next(d for d, meta in definition.metadata.items() if meta.description == name)


def test_a_failing_cache_map_names_the_vertex() -> None:
    async def main() -> None:
        world = World()
        world.op("a")
        broken = world.op("b")

        async def cache_map(job: object, index: int) -> object:
            raise LookupError("manifest unknown")

        broken.cache_map = cache_map  # type: ignore[method-assign,assignment]
        with pytest.raises(VertexFailedError, match="b: computing its cache key failed"):
            await world.solver().solve(marshal(vertex("b", vertex("a"))))
        assert world.exec_counts() == {"a": 0, "b": 0}

    run(main)


def test_a_vertex_the_worker_cannot_run_names_the_vertex() -> None:
    async def main() -> None:
        world = World()  # no op named "a"
        with pytest.raises(VertexFailedError, match="a: setup failed"):
            await world.solver().solve(marshal(vertex("a")))

    run(main)


def test_a_wide_random_graph_runs_each_vertex_once_with_the_right_result() -> None:
    async def main() -> None:
        rng = random.Random(4)
        world = World()
        states: list[State] = []
        expected: list[str] = []
        for index in range(60):
            name = f"v{index}"
            picks = sorted(rng.sample(range(len(states)), min(len(states), rng.randint(0, 3))))
            world.op(name, delay=rng.choice([0.0, 0.1, 1.0]))
            states.append(vertex(name, *(states[i] for i in picks)))
            args = ",".join(expected[i] for i in picks)
            expected.append(f"{name}({args})" if picks else name)
        root_name = "root"
        world.op(root_name)
        definition = marshal(vertex(root_name, *states))
        assert await solve(world, definition) == f"root({','.join(expected)})"
        assert set(world.exec_counts().values()) == {1}
        assert world.max_running > 1
        assert await solve(world, definition) == f"root({','.join(expected)})"
        assert set(world.exec_counts().values()) == {1}

    run(main)
