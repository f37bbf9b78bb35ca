"""A frontend run against a real gateway (a real solver, worker and layer store; graphs
that need no mount): what it returns is checked, and every way of getting it wrong is
one line that names the frontend. The build's own failures pass through unchanged."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
import trio

from lazybuild.errors import InvalidReferenceError
from lazybuild.frontend.dockerfile.parser import ParseError
from lazybuild.gateway import (
    FrontendError,
    FrontendInputs,
    FrontendResult,
    Gateway,
    GatewayError,
    Ref,
)
from lazybuild.gateway.bridge import BuildGateway
from lazybuild.gateway.dockerfile import DockerfileFrontend
from lazybuild.gateway.running import FrontendOutput, run_frontend
from lazybuild.gateway.selection import FrontendFailedError
from lazybuild.graph import Definition, State, marshal
from lazybuild.imagebuild.filesystem import OwnedFilesystem
from lazybuild.lazyfs.client import LazyMountService
from lazybuild.oci.platform import host_platform
from lazybuild.registry.client import RegistryClient
from lazybuild.solver import MemoryCacheStore, Solver
from lazybuild.worker.layers import Snapshot
from lazybuild.worker.layerstore import LayerStore
from lazybuild.worker.resources import ImageResolver, WorkerResources
from lazybuild.worker.rootfs import LayerMounter
from lazybuild.worker.worker import Worker

FrontendFn = Callable[[Gateway], Awaitable[FrontendResult]]


def _no_filesystem() -> LazyMountService:
    raise AssertionError("these graphs mount nothing")


@asynccontextmanager
async def _gateway(tmp_path: Path, source: bytes = b"") -> AsyncIterator[BuildGateway]:
    async with RegistryClient() as client, AsyncExitStack() as stack:
        store = LayerStore(tmp_path / "state")
        mounter = LayerMounter(store, OwnedFilesystem(_no_filesystem), stack)
        resolver = ImageResolver(client, host_platform())
        resources = WorkerResources(
            store=store,
            mounter=mounter,
            images=resolver,
            contexts={},
            secrets={},
            cache_mounts=tmp_path / "cache-mounts",
            platform=host_platform(),
        )
        worker = Worker(resources)
        solver = Solver(worker.resolve_op, MemoryCacheStore(), load_result=worker.load_result)

        async def solve(definition: Definition) -> Snapshot:
            result = await solver.solve(definition)
            return result if isinstance(result, Snapshot) else Snapshot()

        inputs = FrontendInputs(
            context="context", source=source, source_name="build.toml", platform="linux/amd64"
        )
        gateway = BuildGateway(inputs, solve=solve, resolver=resolver, mounter=mounter, store=store)
        try:
            yield gateway
        finally:
            await gateway.aclose()


def _run(tmp_path: Path, frontend: FrontendFn, *, builtin: bool = False) -> FrontendOutput:
    async def main() -> FrontendOutput:
        async with _gateway(tmp_path) as gateway:
            return await run_frontend("testfe", frontend, gateway, builtin=builtin)

    return trio.run(main)


def _failure(tmp_path: Path, frontend: FrontendFn, *, builtin: bool = False) -> str:
    with pytest.raises(FrontendFailedError) as failure:
        _run(tmp_path, frontend, builtin=builtin)
    message = str(failure.value)
    assert "\n" not in message
    assert message.startswith("frontend testfe")
    return message


async def _scratch(gateway: Gateway) -> Ref:
    return await gateway.solve(marshal(State.scratch()))


def test_a_solved_reference_and_a_valid_config_are_the_builds_result(tmp_path: Path) -> None:
    async def frontend(gateway: Gateway) -> FrontendResult:
        assert gateway.inputs.source_name == "build.toml"
        return FrontendResult(await _scratch(gateway), {"config": {"Entrypoint": ["/app"]}})

    output = _run(tmp_path, frontend)
    assert output.snapshot == Snapshot()
    assert output.config.to_oci_config() == {"config": {"Entrypoint": ["/app"]}}


def test_a_result_that_is_not_a_frontend_result(tmp_path: Path) -> None:
    async def frontend(gateway: Gateway) -> Any:
        return {"ref": await _scratch(gateway)}

    message = _failure(tmp_path, frontend)
    assert message == "frontend testfe returned a dict, not a FrontendResult"


def test_a_reference_no_solve_returned(tmp_path: Path) -> None:
    async def frontend(gateway: Gateway) -> FrontendResult:
        await _scratch(gateway)
        return FrontendResult(Ref("made-up"), {})

    assert "a reference that no solve of this build returned" in _failure(tmp_path, frontend)


def test_a_reference_from_another_build(tmp_path: Path) -> None:
    kept: list[Ref] = []

    async def first(gateway: Gateway) -> FrontendResult:
        kept.append(await _scratch(gateway))
        return FrontendResult(kept[0], {})

    async def second(gateway: Gateway) -> FrontendResult:
        return FrontendResult(kept[0], {})

    _run(tmp_path, first)
    assert "no solve of this build returned" in _failure(tmp_path, second)


def test_an_invalid_image_config(tmp_path: Path) -> None:
    async def frontend(gateway: Gateway) -> FrontendResult:
        return FrontendResult(await _scratch(gateway), {"config": {"Cmd": "/app"}})

    message = _failure(tmp_path, frontend)
    assert message == (
        "frontend testfe returned an invalid image config: config.Cmd must be a list of strings"
    )


def test_a_crash_is_one_line_naming_the_frontend_and_the_exception(tmp_path: Path) -> None:
    async def frontend(gateway: Gateway) -> FrontendResult:
        raise KeyError("builder\nwith a second line")

    message = _failure(tmp_path, frontend)
    assert message == "frontend testfe crashed: KeyError: 'builder\\nwith a second line'"


def test_a_crash_inside_concurrent_work_is_one_line_too(tmp_path: Path) -> None:
    async def frontend(gateway: Gateway) -> FrontendResult:
        async def boom() -> None:
            raise ZeroDivisionError("division by zero")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(boom)
        raise AssertionError("not reached")

    message = _failure(tmp_path, frontend)
    assert message == "frontend testfe crashed: ZeroDivisionError: division by zero"


def test_a_frontend_error_is_its_message(tmp_path: Path) -> None:
    async def frontend(gateway: Gateway) -> FrontendResult:
        raise FrontendError("build.toml: builder is required")

    assert _failure(tmp_path, frontend) == "frontend testfe: build.toml: builder is required"


def test_a_gateway_call_the_frontend_got_wrong(tmp_path: Path) -> None:
    async def bad_read(gateway: Gateway) -> FrontendResult:
        await gateway.read_file(Ref("nothing"), "go.mod")
        raise AssertionError("not reached")

    async def bad_solve(gateway: Gateway) -> FrontendResult:
        await gateway.solve(Definition(ops=(b"{}",)))
        raise AssertionError("not reached")

    assert "is not a reference this build's solves returned" in _failure(tmp_path, bad_read)
    assert "solve: invalid definition" in _failure(tmp_path, bad_solve)


def test_a_gateway_error_the_frontend_handles_is_no_failure(tmp_path: Path) -> None:
    async def frontend(gateway: Gateway) -> FrontendResult:
        with suppress(GatewayError):
            await gateway.read_file(Ref("nothing"), "go.mod")
        return FrontendResult(await _scratch(gateway), {})

    assert _run(tmp_path, frontend).config.to_oci_config() == {}


def test_the_builds_own_failure_passes_through_the_frontend_unchanged(tmp_path: Path) -> None:
    async def frontend(gateway: Gateway) -> FrontendResult:
        await gateway.resolve_image_config("Not A Reference")
        raise AssertionError("not reached")

    with pytest.raises(InvalidReferenceError):
        _run(tmp_path, frontend)


def test_the_dockerfile_frontends_own_errors_are_unchanged(tmp_path: Path) -> None:
    async def main() -> None:
        async with _gateway(tmp_path, b"FROM scratch\nNOPE x\n") as gateway:
            await run_frontend("dockerfile", DockerfileFrontend(), gateway, builtin=True)

    with pytest.raises(ParseError, match="unknown instruction"):
        trio.run(main)


def test_the_dockerfile_frontend_returns_its_config_as_data(tmp_path: Path) -> None:
    dockerfile = b'FROM scratch\nENTRYPOINT ["/app"]\nLABEL a=b\n'

    async def main() -> FrontendOutput:
        async with _gateway(tmp_path, dockerfile) as gateway:
            return await run_frontend("dockerfile", DockerfileFrontend(), gateway, builtin=True)

    output = trio.run(main)
    settings = output.config.to_oci_config()["config"]
    assert settings["Entrypoint"] == ["/app"]
    assert settings["Labels"] == {"a": "b"}
