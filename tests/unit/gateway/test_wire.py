"""The frontend image protocol's messages: framed, JSON objects, bounded both ways."""

from __future__ import annotations

import struct

import pytest

from lazybuild.gateway import FrontendInputs
from lazybuild.gateway.wire import (
    HEADER_BYTES,
    MAX_MESSAGE_BYTES,
    ProtocolError,
    decode_body,
    decode_inputs,
    encode_inputs,
    encode_message,
    length_of,
)


def test_a_message_is_its_length_then_its_json() -> None:
    framed = encode_message({"id": 1, "method": "solve", "params": {"definition": "{}"}})
    length = length_of(framed[:HEADER_BYTES])
    assert length == len(framed) - HEADER_BYTES
    assert decode_body(framed[HEADER_BYTES:]) == {
        "id": 1,
        "method": "solve",
        "params": {"definition": "{}"},
    }


def test_an_announced_length_over_the_bound_is_refused_before_reading_it() -> None:
    assert length_of(struct.pack(">I", MAX_MESSAGE_BYTES)) == MAX_MESSAGE_BYTES
    with pytest.raises(ProtocolError, match="announced, over"):
        length_of(b"garb")  # what a stray print looks like as a header


def test_a_message_over_the_bound_is_not_sent() -> None:
    with pytest.raises(ProtocolError, match="over"):
        encode_message({"data": "x" * MAX_MESSAGE_BYTES})


@pytest.mark.parametrize(
    ("body", "reason"),
    [(b"\xff", "not JSON"), (b"{", "not JSON"), (b"[1]", "a list, not an object")],
)
def test_a_body_that_is_not_a_json_object_is_a_protocol_error(body: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        decode_body(body)


def test_inputs_travel_whole() -> None:
    inputs = FrontendInputs(
        context="context",
        source=b"# syntax=x\n\xff binary too\n",
        source_name="build.toml",
        platform="linux/amd64",
        build_args={"A": "1"},
        target="t",
        labels={"l": "v"},
        context_excludes=("*.md",),
        syntax="x",
    )
    assert decode_inputs(decode_body(encode_message(encode_inputs(inputs))[HEADER_BYTES:])) == (
        inputs
    )


def test_inputs_that_do_not_decode_are_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="inputs that do not decode"):
        decode_inputs({"context": "c"})
    with pytest.raises(ProtocolError):
        decode_inputs(None)
