"""A layer owns its background work: closing it cancels the work and waits for it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
import trio.testing

from lazybuild.cache.chunkcache import ChunkCache
from lazybuild.lazyfs import miss_readahead
from lazybuild.lazyfs.layer import LazyLayer
from lazybuild.lazyfs.layer_tasks import LayerTasks
from lazybuild.lazyfs.priority import ForegroundGate
from tests.unit.lazyfs.test_layer_fakes import MemoryBlob, build_layer, open_layer


def test_closing_cancels_every_task_and_waits_for_their_ends() -> None:
    async def main() -> None:
        tasks = LayerTasks("layer x")
        ended: list[str] = []

        async def work(name: str) -> None:
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    await trio.sleep(0.05)  # like a write of fetched chunks
                ended.append(name)

        tasks.start_soon(work, "a")
        tasks.start_soon(work, "b")
        await trio.testing.wait_all_tasks_blocked()
        assert tasks.running == 2
        with trio.fail_after(5):
            await tasks.aclose()
        assert sorted(ended) == ["a", "b"] and tasks.running == 0

    trio.run(main)


def test_a_task_started_after_closing_runs_cancelled() -> None:
    """Its starter may have claimed chunks for it: it must still run to land them."""

    async def main() -> None:
        tasks = LayerTasks("layer x")
        await tasks.aclose()
        landed: list[bool] = []

        async def fetch() -> None:
            try:
                await trio.sleep_forever()
            finally:
                landed.append(True)

        tasks.start_soon(fetch)
        with trio.fail_after(5):
            await tasks.aclose()
        assert landed == [True]

    trio.run(main)


def test_tasks_run_in_the_nursery_given_and_closing_leaves_its_other_tasks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        other_done = trio.Event()
        async with trio.open_nursery() as nursery:

            async def other() -> None:
                await trio.sleep(0.05)
                other_done.set()

            nursery.start_soon(other)
            tasks = LayerTasks("layer x", nursery)

            async def fails() -> None:
                raise ValueError("a bug")

            tasks.start_soon(trio.sleep_forever)
            tasks.start_soon(fails)  # logged: must not take the service down
            await trio.testing.wait_all_tasks_blocked()
            assert tasks.running == 1
            await tasks.aclose()
            assert not other_done.is_set()
        assert other_done.is_set()

    with caplog.at_level(logging.ERROR):
        trio.run(main)
    assert "layer x: background task" in caplog.text and "a bug" in caplog.text


def test_closing_a_layer_cancels_its_background_fetch(tmp_path: Path) -> None:
    built = build_layer()
    blob = MemoryBlob(built.blob)

    async def main() -> None:
        async with trio.open_nursery() as service:
            layer = await LazyLayer.open(
                blob.as_remote(),
                built.descriptor,
                ChunkCache(tmp_path / "cache"),
                state_dir=tmp_path / "state",
                nursery=service,
            )
            blob.reset()
            blob.hold = trio.Event()
            layer.start_background_fetch(ForegroundGate(quiet_period=0))
            with trio.fail_after(5):
                while not blob.requests:
                    await trio.sleep(0.01)
            assert layer.background_tasks >= 1
            with trio.fail_after(5):
                await layer.aclose()
            assert layer.background_tasks == 0
            blob.hold.set()
            blob.hold = None
        # The service nursery did not wait on the layer, and nothing more was fetched.
        assert blob.requests == 1
        small = layer.index.lookup("small.txt")
        assert small is not None
        assert await layer.read(small, 0, 100) == built.files["small.txt"]

    trio.run(main)


def test_a_reader_waiting_on_a_cancelled_prefetch_fetches_for_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(miss_readahead, "SIBLING_BUDGET_BYTES", 0)  # the reader's request only
    built = build_layer()
    blob = MemoryBlob(built.blob)

    async def main() -> None:
        layer = await open_layer(built, blob, tmp_path)
        small = layer.index.lookup("small.txt")
        assert small is not None
        blob.reset()
        blob.hold = trio.Event()
        await layer.prefetch_files(["small.txt"])
        got: list[bytes] = []

        async def reader() -> None:
            got.append(await layer.read(small, 0, 100))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            assert blob.requests == 1 and not got  # waiting for the prefetch
            blob.hold = None  # the prefetch's request stays held: only closing ends it
            with trio.fail_after(5):
                await layer.aclose()
        assert got == [built.files["small.txt"]]
        assert blob.requests == 2  # the cancelled prefetch, then the reader's own

    trio.run(main)


def test_a_layer_is_an_async_context_manager(tmp_path: Path) -> None:
    built = build_layer()
    blob = MemoryBlob(built.blob)

    async def main() -> None:
        async with await open_layer(built, blob, tmp_path) as layer:
            blob.hold = trio.Event()
            await layer.prefetch_files(["dir/big.bin"])
            await trio.testing.wait_all_tasks_blocked()
            assert layer.background_tasks == 1
        assert layer.background_tasks == 0

    trio.run(main)
