"""A frontend in an image: its gateway is the build, over stdin and stdout.

``python3 -m lazybuild.gateway.stdio MODULE:FUNCTION`` is a frontend image's
entrypoint: it reads the inputs, runs ``FUNCTION`` (an ``async def build(gateway)``)
under asyncio with a ``Gateway`` whose calls are messages to the build (``wire``), and
sends back what it returns, or why it failed. The protocol keeps the real stdout to
itself: file descriptor 1 is pointed at stderr first, so a stray ``print`` in the
frontend reaches the build's log instead of breaking a message. Standard library,
``lazybuild.graph`` and the gateway contract only.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import os
import sys
import traceback
from collections.abc import Mapping
from typing import Any, BinaryIO

from lazybuild.gateway.contract import (
    DirEntry,
    Frontend,
    FrontendError,
    FrontendInputs,
    FrontendResult,
    GatewayError,
    Ref,
    ResolvedConfig,
)
from lazybuild.gateway.wire import (
    HEADER_BYTES,
    ProtocolError,
    decode_body,
    decode_inputs,
    encode_message,
    length_of,
)
from lazybuild.graph import Definition

__all__ = ["StdioGateway", "main", "serve"]


def _read_exactly(stream: BinaryIO, count: int) -> bytes:
    data = b""
    while len(data) < count:
        piece = stream.read(count - len(data))
        if not piece:
            raise ProtocolError("the build closed the gateway")
        data += piece
    return data


class StdioGateway:
    """``Gateway`` over two byte streams, one call at a time (the calls block: the
    process serves one frontend, which waits for each answer anyway)."""

    def __init__(self, reader: BinaryIO, writer: BinaryIO) -> None:
        self._reader = reader
        self._writer = writer
        self._next_id = 0
        self._inputs = decode_inputs(self._receive().get("inputs"))

    @property
    def inputs(self) -> FrontendInputs:
        return self._inputs

    def send(self, message: Mapping[str, Any]) -> None:
        self._writer.write(encode_message(message))
        self._writer.flush()

    def _receive(self) -> dict[str, Any]:
        length = length_of(_read_exactly(self._reader, HEADER_BYTES))
        return decode_body(_read_exactly(self._reader, length))

    def _call(self, method: str, **params: Any) -> Any:
        self._next_id += 1
        self.send({"id": self._next_id, "method": method, "params": params})
        answer = self._receive()
        if answer.get("id") != self._next_id:
            raise ProtocolError(f"an answer to call {answer.get('id')}, not {self._next_id}")
        if "error" in answer:
            raise GatewayError(str(answer["error"]))
        return answer.get("result")

    async def solve(self, definition: Definition) -> Ref:
        result = self._call("solve", definition=definition.to_bytes().decode("utf-8"))
        return Ref(str(result["ref"]))

    async def read_file(
        self, ref: Ref, path: str, *, offset: int = 0, length: int | None = None
    ) -> bytes:
        result = self._call("read_file", ref=ref.id, path=path, offset=offset, length=length)
        return base64.b64decode(result["data"])

    async def read_dir(self, ref: Ref, path: str) -> list[DirEntry]:
        result = self._call("read_dir", ref=ref.id, path=path)
        return [
            DirEntry(e["name"], e["kind"], e["mode"], e["size"], e["linkname"])
            for e in result["entries"]
        ]

    async def resolve_image_config(self, ref: str) -> ResolvedConfig:
        result = self._call("resolve_image_config", ref=ref)
        return ResolvedConfig(str(result["ref"]), str(result["digest"]), result["config"])


def serve(frontend: Frontend, reader: BinaryIO, writer: BinaryIO) -> int:
    """Run ``frontend`` against the build at the other end; the process's exit code."""
    gateway = StdioGateway(reader, writer)

    async def build() -> object:
        return await frontend(gateway)

    try:
        result = asyncio.run(build())
    except FrontendError as error:
        gateway.send({"fail": str(error)})
        return 1
    except Exception as error:
        traceback.print_exc(file=sys.stderr)
        gateway.send({"fail": f"crashed: {type(error).__name__}: {error}"})
        return 1
    if not isinstance(result, FrontendResult) or not isinstance(result.ref, Ref):
        gateway.send({"fail": f"returned a {type(result).__name__}, not a FrontendResult"})
        return 1
    try:
        gateway.send({"return": {"ref": result.ref.id, "config": dict(result.config)}})
    except (TypeError, ValueError, ProtocolError) as error:
        gateway.send({"fail": f"returned an image config that is not JSON: {error}"})
        return 1
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 1 or ":" not in argv[0]:
        print("usage: python3 -m lazybuild.gateway.stdio MODULE:FUNCTION", file=sys.stderr)
        return 2
    module_name, _, name = argv[0].partition(":")
    frontend = getattr(importlib.import_module(module_name), name)
    protocol_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints to stderr, never into a message
    return serve(frontend, sys.stdin.buffer, protocol_out)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
