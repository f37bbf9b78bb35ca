"""The gateway protocol on a frontend image's stdio: length-prefixed JSON messages.

Each message is a 4-byte big-endian length, then that many bytes of one UTF-8 JSON
object. Both sides bound what they accept (``MAX_MESSAGE_BYTES``): a frontend cannot
make the build hold an unbounded message, nor the build the frontend. Standard library
only: the frontend side (``lazybuild.gateway.stdio``) runs in the frontend's image.

The conversation::

    build → frontend   {"inputs": {...FrontendInputs, source as base64...}}
    frontend → build   {"id": N, "method": "solve"|"read_file"|"read_dir"
                                   |"resolve_image_config", "params": {...}}
    build → frontend   {"id": N, "result": {...}} or {"id": N, "error": "why"}
    frontend → build   {"return": {"ref": "...", "config": {...}}} or {"fail": "why"}
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Mapping
from typing import Any

from lazybuild.gateway.contract import MAX_READ_BYTES, FrontendInputs

__all__ = [
    "HEADER_BYTES",
    "MAX_MESSAGE_BYTES",
    "ProtocolError",
    "decode_body",
    "decode_inputs",
    "encode_inputs",
    "encode_message",
    "length_of",
]

# A read_file answer (16 MiB, as base64) is the largest message there is, with room.
MAX_MESSAGE_BYTES = MAX_READ_BYTES * 4 // 3 + (1 << 20)
_HEADER = struct.Struct(">I")
HEADER_BYTES = _HEADER.size


class ProtocolError(Exception):
    """A message that breaks the protocol: too long, not JSON, not an object."""


def encode_message(message: Mapping[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(body) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"a message of {len(body)} bytes is over {MAX_MESSAGE_BYTES}")
    return _HEADER.pack(len(body)) + body


def length_of(header: bytes) -> int:
    """The body length a header announces; refused over the bound, before any is read."""
    (length,) = _HEADER.unpack(header)
    if length > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"a message of {length} bytes announced, over {MAX_MESSAGE_BYTES}")
    return int(length)


def decode_body(body: bytes) -> dict[str, Any]:
    try:
        message = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ProtocolError(f"a message that is not JSON: {error}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"a message that is a {type(message).__name__}, not an object")
    return message


def encode_inputs(inputs: FrontendInputs) -> dict[str, Any]:
    return {
        "context": inputs.context,
        "source": base64.b64encode(inputs.source).decode("ascii"),
        "source_name": inputs.source_name,
        "platform": inputs.platform,
        "build_args": dict(inputs.build_args),
        "target": inputs.target,
        "labels": dict(inputs.labels),
        "context_excludes": list(inputs.context_excludes),
        "syntax": inputs.syntax,
    }


def decode_inputs(value: Any) -> FrontendInputs:
    try:
        return FrontendInputs(
            context=str(value["context"]),
            source=base64.b64decode(value["source"], validate=True),
            source_name=str(value["source_name"]),
            platform=str(value["platform"]),
            build_args={str(k): str(v) for k, v in value["build_args"].items()},
            target=None if value["target"] is None else str(value["target"]),
            labels={str(k): str(v) for k, v in value["labels"].items()},
            context_excludes=tuple(str(p) for p in value["context_excludes"]),
            syntax=None if value["syntax"] is None else str(value["syntax"]),
        )
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        raise ProtocolError(f"inputs that do not decode: {error!r}") from None
