"""Reading a program's dynamic section fetches its loader and libraries in the background."""

from __future__ import annotations

import random
import tarfile
from pathlib import Path

import pytest
import trio
import trio.testing

from lazybuild.cache.chunkcache import ChunkCache
from lazybuild.estargz.index import Node
from lazybuild.lazyfs import miss_readahead
from lazybuild.lazyfs.layer import LazyLayer
from lazybuild.lazyfs.layerset import LayerSet
from tests.unit.estargz.esgz_helpers import Member
from tests.unit.lazyfs.elf_samples import make_elf
from tests.unit.lazyfs.test_layer_fakes import Built, MemoryBlob, build_layer

LIBDIR = "usr/lib/x86_64-linux-gnu"


@pytest.fixture(autouse=True)
def no_sibling_fetches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Programs and libraries sit in directories of their own here anyway; this keeps
    the request counts about libraries alone."""
    monkeypatch.setattr(miss_readahead, "SIBLING_BUDGET_BYTES", 0)


async def settle(blob: MemoryBlob, requests: int) -> None:
    """Background fetches check the disk cache in a thread first, which
    wait_all_tasks_blocked does not wait for: wait for the requests, then a little
    longer for any that should not come."""
    with trio.fail_after(10):
        while blob.requests < requests:
            await trio.sleep(0.01)
    await trio.sleep(0.1)
    await trio.testing.wait_all_tasks_blocked()


def node_of(layer: LazyLayer, path: str) -> Node:
    node = layer.index.lookup(path)
    assert node is not None, path
    return node


def fetched_files(blob: MemoryBlob, layer: LazyLayer, paths: list[str]) -> set[str]:
    spans = [(start, start + length) for request in blob.requested for start, length in request]
    return {
        path
        for path in paths
        if all(
            any(start <= chunk.offset and chunk.end <= stop for start, stop in spans)
            for chunk in node_of(layer, path).chunks
        )
    }


def program() -> bytes:
    return make_elf(
        interpreter="/lib64/ld-linux-x86-64.so.2",
        needed=("libfoo.so.1", "libmissing.so.9"),
    )


def library_members() -> list[Member]:
    return [
        Member("lib64", type=tarfile.SYMTYPE, linkname="usr/lib64"),
        Member(
            "usr/lib64/ld-linux-x86-64.so.2",
            type=tarfile.SYMTYPE,
            linkname="../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        ),
        Member(f"{LIBDIR}/libfoo.so.1", type=tarfile.SYMTYPE, linkname="libfoo.so.1.2.3"),
    ]


def library_files(seed: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {
        f"{LIBDIR}/ld-linux-x86-64.so.2": make_elf() + rng.randbytes(3000),
        f"{LIBDIR}/libfoo.so.1.2.3": make_elf(needed=("libc.so.6",)) + rng.randbytes(3000),
        f"{LIBDIR}/libunrelated.so.4": rng.randbytes(3000),
    }


async def opened(
    built: Built, blob: MemoryBlob, tmp: Path, name: str, layers: LayerSet, image: str
) -> LazyLayer:
    layer = await LazyLayer.open(
        blob.as_remote(),
        built.descriptor,
        ChunkCache(tmp / name),
        state_dir=tmp / "state",
        layers=layers,
    )
    layers.add(layer, image)
    return layer


def test_a_programs_libraries_in_its_own_layer_come_in_one_request(tmp_path: Path) -> None:
    files = {"usr/bin/prog": program(), **library_files(1)}
    built = build_layer(files, extra_members=library_members())
    blob = MemoryBlob(built.blob)

    async def main() -> None:
        layer = await opened(built, blob, tmp_path, "cache", LayerSet(), "image")
        blob.reset()
        assert await layer.read(node_of(layer, "usr/bin/prog"), 0, 4096) == files["usr/bin/prog"]
        await settle(blob, 2)
        assert blob.requests == 2  # the program's, and its loader's and libraries' together
        loader, foo, unrelated = (
            f"{LIBDIR}/{name}"
            for name in ("ld-linux-x86-64.so.2", "libfoo.so.1.2.3", "libunrelated.so.4")
        )
        assert fetched_files(blob, layer, [loader, foo, unrelated]) == {loader, foo}
        blob.reset()
        assert await layer.read(node_of(layer, foo), 0, 8192) == files[foo]
        assert await layer.read(node_of(layer, loader), 0, 8192) == files[loader]
        assert blob.requests == 0

    trio.run(main)


def test_libraries_come_from_the_layers_of_the_same_image_only(tmp_path: Path) -> None:
    top = build_layer({"usr/bin/prog": program()})
    base_files = library_files(2)
    base = build_layer(base_files, extra_members=library_members())
    other = build_layer(library_files(3), extra_members=library_members())
    blobs = {
        name: MemoryBlob(built.blob)
        for name, built in (("top", top), ("base", base), ("other", other))
    }

    async def main() -> None:
        layers = LayerSet()
        lower = await opened(base, blobs["base"], tmp_path, "base", layers, "builder")
        upper = await opened(top, blobs["top"], tmp_path, "top", layers, "builder")
        # Another image (a runtime image) with the same paths, added last.
        unrelated = await opened(other, blobs["other"], tmp_path, "other", layers, "runtime")
        for blob in blobs.values():
            blob.reset()
        await upper.read(node_of(upper, "usr/bin/prog"), 0, 4096)
        await settle(blobs["base"], 1)
        foo = f"{LIBDIR}/libfoo.so.1.2.3"
        assert blobs["base"].requests == 1
        assert foo in fetched_files(blobs["base"], lower, [foo])
        assert blobs["other"].requests == 0
        assert unrelated is not lower
        blobs["base"].reset()
        assert await lower.read(node_of(lower, foo), 0, 8192) == base_files[foo]
        assert blobs["base"].requests == 0

    trio.run(main)
