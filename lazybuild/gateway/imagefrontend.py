"""A frontend image, run as BuildKit runs one: in a container, the gateway on its stdio.

The image (``# syntax=REGISTRY/REPO:TAG``) is resolved for the build's platform and
mounted lazily like any base image, with a throw-away upper. Its entrypoint runs in
runc with no network, no host path mounted, a read-only root filesystem and the
build's stdin/stdout pipes as its only way out; its stderr is the build's log. Each of
its requests (``wire``) is answered through the build's gateway, so its solves are the
build's. Whatever it does wrong (a message over the bound or not JSON, exiting without
a result) is one line naming it; the container and its mounts are gone however the
conversation ends.
"""

from __future__ import annotations

import base64
import collections
import os
import secrets
from collections.abc import Callable
from typing import Any

import trio

from lazybuild.errors import LazybuildError, one_error
from lazybuild.executor.runc import RunResult, run_container
from lazybuild.executor.spec import ProcessSpec, generate_spec
from lazybuild.executor.users import resolve_user
from lazybuild.gateway.contract import FrontendResult, Gateway, GatewayError, Ref
from lazybuild.gateway.selection import FrontendFailedError
from lazybuild.gateway.wire import (
    HEADER_BYTES,
    ProtocolError,
    decode_body,
    encode_inputs,
    encode_message,
    length_of,
)
from lazybuild.graph import Definition, DefinitionError
from lazybuild.run.settings import run_settings
from lazybuild.worker.imageop import image_layers
from lazybuild.worker.layers import Snapshot
from lazybuild.worker.layerstore import LayerStore
from lazybuild.worker.resources import ImageResolver
from lazybuild.worker.rootfs import LayerMounter

__all__ = ["ImageFrontend"]

# After its result, the frontend has this long to exit before it is killed.
_EXIT_GRACE_SECONDS = 10.0
_STDERR_KEPT = 20
_READ_SIZE = 1 << 16


class ImageFrontend:
    def __init__(
        self,
        image: str,
        *,
        resolver: ImageResolver,
        mounter: LayerMounter,
        store: LayerStore,
        on_line: Callable[[str], None] = lambda line: None,
    ) -> None:
        self._image = image
        self._resolver = resolver
        self._mounter = mounter
        self._store = store
        self.on_line = on_line

    async def __call__(self, gateway: Gateway) -> FrontendResult:
        # Through the gateway first: a registry's refusal is the build's error, as is.
        await gateway.resolve_image_config(self._image)
        image = await self._resolver.resolve(self._image)
        snapshot = Snapshot(image_layers(image))
        with self._store.staging() as area:
            async with self._mounter.mounted(
                snapshot, area.merged, upper=area.upper, work=area.work
            ):
                try:
                    settings = run_settings(image.config)
                except LazybuildError as error:
                    raise self.failure(str(error)) from None
                user = await trio.to_thread.run_sync(resolve_user, area.merged, settings.user)
                spec = generate_spec(
                    rootfs=area.merged,
                    process=ProcessSpec(settings.args, settings.env, settings.cwd, user),
                    hostname="frontend",
                    network="none",
                    readonly_rootfs=True,
                )
                run = _Conversation(self, gateway, spec, area.scratch / "bundle")
                return await run.result()

    def failure(self, why: str) -> FrontendFailedError:
        """The one line a failure of this frontend is."""
        return FrontendFailedError(f"frontend {self._image}: {' '.join(why.split())}")


class _Conversation:
    """One run of the frontend's container and the messages exchanged with it."""

    def __init__(
        self, owner: ImageFrontend, gateway: Gateway, spec: dict[str, Any], bundle: Any
    ) -> None:
        self._owner = owner
        self._gateway = gateway
        self._spec = spec
        self._bundle = bundle
        self._exited = trio.Event()
        self._exit_code: int | None = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=_STDERR_KEPT)

    async def result(self) -> FrontendResult:
        to_child, ours_in = os.pipe()
        ours_out, from_child = os.pipe()
        err_out, err_child = os.pipe()
        child_ends = [to_child, from_child, err_child]
        writer = trio.lowlevel.FdStream(ours_in)
        reader = trio.lowlevel.FdStream(ours_out)
        errors = trio.lowlevel.FdStream(err_out)
        try:
            with one_error():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._container, child_ends)
                    nursery.start_soon(self._log, errors)
                    returned = await self._converse(reader, writer)
                    # EOF on its stdin tells the frontend it is done; then it must exit.
                    await writer.aclose()
                    with trio.move_on_after(_EXIT_GRACE_SECONDS):
                        await self._exited.wait()
                    nursery.cancel_scope.cancel()  # a frontend that lingers is killed
            return returned
        finally:
            with trio.CancelScope(shield=True):
                for stream in (writer, reader, errors):
                    await stream.aclose()
                for fd in child_ends:
                    if fd >= 0:
                        os.close(fd)

    async def _container(self, child_ends: list[int]) -> None:
        try:
            try:
                result = await self._run(child_ends)
            except LazybuildError as error:  # runc could not start its entrypoint
                raise self._owner.failure(f"cannot start: {error}") from None
            self._exit_code = result.exit_code
        finally:
            # Our copies of the child's ends closed: its pipes now end when it does.
            for position, fd in enumerate(child_ends):
                os.close(fd)
                child_ends[position] = -1
            self._exited.set()

    async def _run(self, child_ends: list[int]) -> RunResult:
        return await run_container(
            container_id="lazybuild-frontend-" + secrets.token_hex(6),
            bundle_dir=self._bundle,
            spec=self._spec,
            stdin=child_ends[0],
            stdout=child_ends[1],
            stderr=child_ends[2],
            forward_signals=False,
        )

    async def _log(self, stream: trio.lowlevel.FdStream) -> None:
        pending = b""
        while chunk := await stream.receive_some(_READ_SIZE):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                text = line.decode("utf-8", "replace").rstrip()
                self._stderr.append(text)
                self._owner.on_line(f"[frontend] {text}")
            pending = pending[-_READ_SIZE:]  # a line that never ends is cut, not kept

    async def _converse(
        self, reader: trio.lowlevel.FdStream, writer: trio.lowlevel.FdStream
    ) -> FrontendResult:
        owner = self._owner
        try:
            await writer.send_all(encode_message({"inputs": encode_inputs(self._gateway.inputs)}))
            while True:
                message = await _receive(reader)
                if message is None:
                    break
                if "return" in message:
                    return _returned(message["return"])
                if "fail" in message:
                    raise owner.failure(str(message["fail"]))
                if "method" not in message:
                    raise ProtocolError("a message that is neither a call nor a result")
                await writer.send_all(encode_message(await self._answer(message)))
        except ProtocolError as error:
            raise owner.failure(f"protocol error: {error}") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # it is gone: said below, with its exit code
        await self._exited.wait()
        last = f": {self._stderr[-1]}" if self._stderr else ""
        raise owner.failure(f"exited with code {self._exit_code} without a result{last}")

    async def _answer(self, message: dict[str, Any]) -> dict[str, Any]:
        call = message.get("id")
        try:
            return {"id": call, "result": await self._call(message)}
        except GatewayError as error:
            return {"id": call, "error": str(error)}
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            return {"id": call, "error": f"bad parameters for {message.get('method')}: {error!r}"}

    async def _call(self, message: dict[str, Any]) -> dict[str, Any]:
        gateway = self._gateway
        method, params = message["method"], message.get("params") or {}
        if method == "solve":
            try:
                definition = Definition.from_bytes(str(params["definition"]).encode("utf-8"))
            except DefinitionError as error:
                raise GatewayError(f"solve: invalid definition: {error}") from None
            return {"ref": (await gateway.solve(definition)).id}
        if method == "read_file":
            length = params.get("length")
            data = await gateway.read_file(
                Ref(str(params["ref"])),
                str(params["path"]),
                offset=int(params.get("offset") or 0),
                length=None if length is None else int(length),
            )
            return {"data": base64.b64encode(data).decode("ascii")}
        if method == "read_dir":
            entries = await gateway.read_dir(Ref(str(params["ref"])), str(params["path"]))
            return {
                "entries": [
                    {
                        "name": e.name,
                        "kind": e.kind,
                        "mode": e.mode,
                        "size": e.size,
                        "linkname": e.linkname,
                    }
                    for e in entries
                ]
            }
        if method == "resolve_image_config":
            resolved = await gateway.resolve_image_config(str(params["ref"]))
            return {"ref": resolved.ref, "digest": resolved.digest, "config": resolved.config}
        raise GatewayError(f"no gateway call named {method!r}")


async def _receive(stream: trio.lowlevel.FdStream) -> dict[str, Any] | None:
    """The next message; None at the end of the stream between messages."""
    header = await _exactly(stream, HEADER_BYTES, at_boundary=True)
    if header is None:
        return None
    body = await _exactly(stream, length_of(header), at_boundary=False)
    assert body is not None
    return decode_body(body)


async def _exactly(
    stream: trio.lowlevel.FdStream, count: int, *, at_boundary: bool
) -> bytes | None:
    data = bytearray()
    while len(data) < count:
        piece = await stream.receive_some(min(count - len(data), 1 << 20))
        if not piece:
            if at_boundary and not data:
                return None
            raise ProtocolError("the frontend's output ended inside a message")
        data += piece
    return bytes(data)


def _returned(value: object) -> FrontendResult:
    if not isinstance(value, dict) or not isinstance(value.get("ref"), str):
        raise ProtocolError("a result without a reference")
    # The config is checked by the runner, as any frontend's is.
    return FrontendResult(Ref(value["ref"]), value.get("config") or {})
