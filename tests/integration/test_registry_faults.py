"""Faults between lazybuild and a real registry (docker-registry behind a fault proxy):
resets mid-body, 5xx, 429 with Retry-After, a token expiring mid-pull, lost answers, a
slow trickle, a registry that disappears. Each is retried where that is safe, else one
clear error line; never a hung mount, never a wrong byte."""

from __future__ import annotations

import base64
import errno
import functools
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from lazybuild.cli.main import main as lazybuild_main
from lazybuild.errors import RegistryError
from lazybuild.estargz.footer import parse_footer
from lazybuild.lazyfs.client import FilesystemServiceError, LazyMountService
from lazybuild.lazyfs.stale import mounted_paths
from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.digest import sha256_digest
from lazybuild.oci.platform import Platform
from lazybuild.registry.client import RegistryClient
from lazybuild.registry.reference import Reference
from lazybuild.snapshot import unmount
from tests.support.faultproxy import (
    FaultProxy,
    corrupt,
    drop,
    lose_answer,
    reset_after,
    status,
    trickle,
    unauthorized,
)
from tests.support.imagebuild import push_oci_layout
from tests.support.registry import Registry, TokenRegistry

pytestmark = pytest.mark.root

LINUX_AMD64 = Platform.parse("linux/amd64")


@pytest.fixture
def proxy(registry: Registry) -> Iterator[FaultProxy]:
    with FaultProxy(registry.host) as started:
        yield started


@pytest.fixture(scope="module")
def tiny_lazy(registry: Registry, tiny_image: str) -> str:
    """The tiny image as eStargz, in the registry (reach it through the proxy)."""
    destination = f"{registry.host}/test/faults-tiny:esgz"
    assert lazybuild_main(["-q", "convert", tiny_image, destination]) == 0
    return destination


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "state"
    try:
        yield state
    finally:
        for point in sorted(mounted_paths(), reverse=True):
            if point.startswith(str(tmp_path)):
                unmount(Path(point), lazy=True)


def through(proxy: FaultProxy, reference: str) -> Reference:
    """``reference`` (in the registry fixture) reached through ``proxy``."""
    return Reference.parse(proxy.host + "/" + reference.split("/", 1)[1])


def registry_blob(registry: Registry, digest: str) -> bytes:
    hex_digest = digest.partition(":")[2]
    path = registry.root / "docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest
    return (path / "data").read_bytes()


async def resolve_layers(ref: Reference) -> tuple[Reference, list[Descriptor]]:
    async with RegistryClient() as client:
        image = await client.resolve_image(ref, LINUX_AMD64)
    return image.ref, list(image.manifest.layers)


# -- pulls ---------------------------------------------------------------------------------


def test_a_pull_rides_out_5xx_429_drops_resets_and_a_trickle(
    proxy: FaultProxy, registry: Registry, tiny_image: str
) -> None:
    ref = through(proxy, tiny_image)
    proxy.add(
        status(429, retry_after="1", method="GET", path="/manifests/"),
        drop(method="GET", path="/manifests/"),
        status(503, method="GET", path="/manifests/"),
        trickle(piece=128, pause=0.002, method="GET", path="/manifests/"),
        status(502, method="GET", path="/blobs/"),
    )

    async def body() -> None:
        async with RegistryClient() as client:
            started = time.monotonic()
            image = await client.resolve_image(ref, LINUX_AMD64)
            assert time.monotonic() - started >= 1.0  # Retry-After was honoured
            layer = max(image.manifest.layers, key=lambda d: d.size)
            proxy.add(reset_after(1000, method="GET", path=layer.digest, times=2))
            data = await client.get_blob(image.ref, layer)  # verified against its digest
        assert data == registry_blob(registry, layer.digest)
        resumed = [s.range for s in proxy.requests("GET", layer.digest)]
        assert resumed[0] == "" and all(r.startswith("bytes=") for r in resumed[1:])
        assert len(resumed) == 3

    trio.run(body)
    actions = [s.action for s in proxy.requests("GET", "/manifests/")]
    assert actions[:4] == ["status", "drop", "status", "trickle"]


def test_range_reads_resume_after_resets_and_give_up_with_one_line(
    proxy: FaultProxy, registry: Registry, tiny_lazy: str
) -> None:
    ref, layers = trio.run(resolve_layers, through(proxy, tiny_lazy))
    layer = max(layers, key=lambda d: d.size)
    blob = registry_blob(registry, layer.digest)
    span = min(len(blob), 300_000)

    async def read(ranges: list[tuple[int, int]], *, multi: bool = True) -> list[bytes]:
        options = {} if multi else {"single_range_registries": [ref.registry]}
        async with RegistryClient(**options) as client:  # type: ignore[arg-type]
            return await client.open_blob(ref, layer).read_ranges(ranges)

    proxy.add(reset_after(20_000, method="GET", path=layer.digest, ranged=True, times=3))
    assert trio.run(functools.partial(read, [(0, span)], multi=False)) == [blob[:span]]
    asked = [s.range for s in proxy.requests("GET", layer.digest)]
    assert asked[0] == f"bytes=0-{span - 1}"
    assert len(asked) == 4 and all(r.endswith(f"-{span - 1}") for r in asked)
    assert asked[1] != asked[0]  # resumed where it broke off, not from the start

    proxy.clear()
    proxy.add(reset_after(500, method="GET", path=layer.digest, ranged="multi", times=1))
    wanted = [(0, 100), (span - 100, 100)]
    assert trio.run(read, wanted) == [blob[:100], blob[span - 100 : span]]
    assert [s.action for s in proxy.requests("GET", layer.digest)] == ["reset", "forward"]

    proxy.clear()
    proxy.add(reset_after(1000, method="GET", path=layer.digest, ranged=True, times=None))
    with pytest.raises(RegistryError) as caught:
        trio.run(functools.partial(read, [(0, span)], multi=False))
    assert "(4 attempts)" in str(caught.value) and "\n" not in str(caught.value)
    assert len(proxy.requests("GET", layer.digest)) == 4


def test_a_token_that_expires_mid_pull_is_renewed(
    token_registry: TokenRegistry, tmp_path: Path
) -> None:
    with FaultProxy(token_registry.host) as proxy:
        config = tmp_path / "config.json"
        pair = f"{token_registry.username}:{token_registry.password}".encode()
        auths = {proxy.host: {"auth": base64.b64encode(pair).decode()}}
        config.write_text(json.dumps({"auths": auths}))
        ref = Reference.parse(f"{proxy.host}/test/faults-token:v1")
        data = b"token test " * 20_000
        descriptor = Descriptor("application/octet-stream", sha256_digest(data), len(data))

        async def body() -> None:
            async with RegistryClient(docker_config=config) as client:
                assert await client.push_blob(ref, descriptor, data) == "uploaded"
                issued = len(token_registry.token_server.issued)
                proxy.add(unauthorized(method="GET", path=descriptor.digest))
                assert await client.get_blob(ref, descriptor) == data
                assert len(token_registry.token_server.issued) == issued + 1

        trio.run(body)
        gets = proxy.requests("GET", descriptor.digest)
        assert [s.action for s in gets] == ["unauthorized", "forward"]
        assert all(s.had_authorization for s in gets)


# -- pushes --------------------------------------------------------------------------------


def test_a_push_whose_commit_answer_is_lost_checks_the_registry(
    proxy: FaultProxy, registry: Registry
) -> None:
    ref = Reference.parse(f"{proxy.host}/test/faults-push:v1")
    data = b"lost commit " * 10_000
    descriptor = Descriptor("application/octet-stream", sha256_digest(data), len(data))
    proxy.add(lose_answer(method="PUT", path="/blobs/uploads/"))

    async def body() -> None:
        async with RegistryClient() as client:
            assert await client.push_blob(ref, descriptor, data) == "uploaded"

    trio.run(body)
    assert len(proxy.requests("PUT", "/blobs/uploads/")) == 1  # never sent twice
    assert proxy.requests("HEAD", descriptor.digest)[-1].action == "forward"
    assert registry_blob(registry, descriptor.digest) == data


def test_a_chunked_upload_broken_mid_way_starts_over(proxy: FaultProxy, registry: Registry) -> None:
    ref = Reference.parse(f"{proxy.host}/test/faults-chunked:v1")
    data = bytes(range(256)) * 2000  # 512 KB in 128 KiB chunks
    descriptor = Descriptor("application/octet-stream", sha256_digest(data), len(data))
    proxy.add(drop(method="PATCH", path="/blobs/uploads/"))

    async def body() -> None:
        async with RegistryClient(
            monolithic_upload_limit=1000, upload_chunk_size=128 * 1024
        ) as client:
            assert await client.push_blob(ref, descriptor, data) == "uploaded"

    trio.run(body)
    assert len(proxy.requests("POST", "/blobs/uploads/")) == 2  # the upload started over
    assert registry_blob(registry, descriptor.digest) == data


def test_convert_through_faults_pushes_the_same_image(
    proxy: FaultProxy, registry: Registry, tiny_image_layout: Path, tiny_lazy: str
) -> None:
    # A source repository of its own: a blob linked in the source's repository is
    # mounted across, not uploaded, and other tests convert the tiny image into tags
    # of its shared repository; the upload faults below would then see no upload.
    push_oci_layout(tiny_image_layout, registry.host, "test/faults-source", "latest")
    source = str(through(proxy, f"{registry.host}/test/faults-source:latest"))
    destination = f"{proxy.host}/test/faults-converted:esgz"
    proxy.add(
        reset_after(2000, method="GET", path="/blobs/sha256:", times=1),
        lose_answer(method="PUT", path="/blobs/uploads/", times=1),
        status(500, method="PUT", path="/manifests/", times=1),
        status(503, retry_after="0", method="POST", path="/blobs/uploads/", times=1),
    )
    assert lazybuild_main(["-q", "convert", source, destination]) == 0
    missed = [(f.action, f.method, f.path) for f in proxy.faults if f.hits != 1]
    assert not missed, (missed, [(r.method, r.path, r.range, r.action) for r in proxy.seen])

    async def manifests() -> tuple[str, str]:
        async with RegistryClient() as client:
            ours = await client.get_manifest(Reference.parse(destination))
            clean = await client.get_manifest(Reference.parse(tiny_lazy))
        return ours.digest, clean.digest

    ours, clean = trio.run(manifests)
    assert ours == clean  # the same bytes as a conversion without faults


# -- lazy reads ----------------------------------------------------------------------------


def test_lazy_reads_when_the_registry_disappears_fail_fast_and_say_where(
    proxy: FaultProxy, state_dir: Path, tiny_lazy: str
) -> None:
    ref, layers = trio.run(resolve_layers, through(proxy, tiny_lazy))

    async def body() -> None:
        async with LazyMountService(
            state_dir, insecure_registries=[proxy.host], background_fetch=False
        ) as service:
            mounts = await service.add_image(ref, layers)
            top = mounts[-1].path
            proxy.add(reset_after(3000, method="GET", ranged=True, times=2))
            text = await trio.to_thread.run_sync((top / "hello.txt").read_text)
            assert text == "hello from the upper layer\n"  # resets were retried

            proxy.disappear()
            echo = mounts[1].path / "usr/bin/echo"
            started = time.monotonic()
            with pytest.raises(OSError) as caught:
                await trio.to_thread.run_sync(echo.read_bytes)
            assert caught.value.errno == errno.EIO
            assert time.monotonic() - started < 15  # no hung mount
            report = await service.stats()
            assert [f.path for f in report.failures] == ["/usr/bin/echo"]
            assert report.failures[0].layer == layers[1].digest
            assert "cannot reach registry" in report.failures[0].error

            with pytest.raises(FilesystemServiceError) as failed:
                await service.fetch_all([layer.digest for layer in layers])
            message = str(failed.value)
            assert "cannot reach registry" in message and "\n" not in message
            assert "ExceptionGroup" not in message and "internal error" not in message

            proxy.reappear()  # same port: the mount recovers
            data = await trio.to_thread.run_sync(echo.read_bytes)
            assert data[:4] == b"\x7fELF"

    trio.run(body)


def test_fetch_all_survives_resets_on_range_reads(
    proxy: FaultProxy, state_dir: Path, registry: Registry, tiny_lazy: str
) -> None:
    ref, layers = trio.run(resolve_layers, through(proxy, tiny_lazy))

    async def body() -> None:
        async with LazyMountService(
            state_dir, insecure_registries=[proxy.host], background_fetch=False
        ) as service:
            mounts = await service.add_image(ref, layers)
            proxy.add(reset_after(5000, method="GET", ranged=True, times=3))
            await service.fetch_all([layer.digest for layer in layers])
            proxy.disappear()  # everything is local now
            data = await trio.to_thread.run_sync((mounts[1].path / "usr/bin/cat").read_bytes)
            assert data[:4] == b"\x7fELF"

    trio.run(body)
    assert [s.action for s in proxy.requests("GET")].count("reset") == 3


def _toc_offsets(registry: Registry, layers: list[Descriptor]) -> dict[str, int]:
    return {
        layer.digest: parse_footer(registry_blob(registry, layer.digest)[-51:]).toc_offset
        for layer in layers
    }


def _before(offset: int) -> Callable[[str], bool]:
    """A Range predicate: every part of it ends before ``offset`` (chunks, not the TOC)."""

    def check(header: str) -> bool:
        if not header.startswith("bytes="):
            return False
        ends = [part.strip().partition("-")[2] for part in header[6:].split(",")]
        return all(end.isdigit() and int(end) < offset for end in ends)

    return check


def test_run_reports_chunks_that_fail_verification_with_one_line(
    proxy: FaultProxy, registry: Registry, tiny_lazy: str, tmp_path: Path
) -> None:
    ref, layers = trio.run(resolve_layers, through(proxy, tiny_lazy))
    for digest, offset in _toc_offsets(registry, layers).items():
        proxy.add(corrupt(method="GET", path=digest, ranged=_before(offset), times=None))
    state = tmp_path / "state"
    try:
        result = subprocess.run(
            [sys.executable, "-m", "lazybuild", "--state-dir", str(state), "-q", "run", str(ref)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        subprocess.run(
            [sys.executable, "-m", "lazybuild", "--state-dir", str(state), "prune"],
            capture_output=True,
            check=False,
        )
    assert result.returncode != 0
    assert result.stdout == ""  # never a wrong byte
    errors = [line for line in result.stderr.splitlines() if line.startswith("lazybuild: error:")]
    assert len(errors) == 1, result.stderr
    assert "the lazy filesystem: reading /" in errors[0]
    assert any(layer.digest in errors[0] for layer in layers), errors[0]
    assert sum(fault.hits for fault in proxy.faults) > 0
