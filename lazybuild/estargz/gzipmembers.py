"""Gzip members: deterministic compression of one member, streaming inflate of many.

An eStargz blob is a concatenation of independently compressed gzip members, so
members can be deflated in parallel and a byte range that starts at a member
boundary can be inflated on its own.

Python's ``gzip.decompress`` restarts its parser per member in a way that is
quadratic on blobs with tens of thousands of members, so inflation here runs one
``decompressobj`` per member and hands the leftover input to the next one.
"""

from __future__ import annotations

import struct
from collections.abc import Generator, Iterable
from typing import Protocol, cast

from zlib_ng import zlib_ng

from lazybuild.errors import FormatError

# mtime 0, XFL 0 and OS 255 ("unknown", as Go writes it) make members reproducible.
_MEMBER_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
_RAW_DEFLATE = -15
# The stubs declare zlib_ng.error loosely; at runtime it is zlib's exception class.
_ZLIB_ERROR = cast(type[Exception], zlib_ng.error)
_GZIP_WBITS = 31
# Bound on the output of one inflate call, so a tiny hostile member cannot
# expand into gigabytes before the caller gets a chance to stop.
OUTPUT_BLOCK = 1 << 20


def compress_member(payload: bytes | bytearray | memoryview, level: int) -> bytes:
    """``payload`` as one complete, deterministic gzip member (zlib-ng releases the GIL)."""
    deflated = zlib_ng.compress(payload, level, _RAW_DEFLATE)
    trailer = struct.pack("<II", zlib_ng.crc32(payload), len(payload) & 0xFFFFFFFF)
    return _MEMBER_HEADER + deflated + trailer


class _Inflater(Protocol):
    eof: bool
    unused_data: bytes
    unconsumed_tail: bytes

    def decompress(self, data: bytes, max_length: int = ...) -> bytes: ...


def _new_inflater() -> _Inflater:
    inflater: _Inflater = zlib_ng.decompressobj(wbits=_GZIP_WBITS)
    return inflater


def inflate_members(
    pieces: Iterable[bytes], where: str = "gzip stream"
) -> Generator[bytes, None, None]:
    """Inflate a concatenation of gzip members given as consecutive byte ``pieces``.

    Yields output blocks of at most ``OUTPUT_BLOCK`` bytes. Raises ``FormatError``
    (naming ``where``) for corrupt data or when the input ends inside a member.
    """
    inflater = _new_inflater()
    member_open = False
    for piece in pieces:
        data = bytes(piece)
        while data:
            if inflater.eof:
                inflater = _new_inflater()
            member_open = True
            try:
                out = inflater.decompress(data, OUTPUT_BLOCK)
            except _ZLIB_ERROR as error:
                raise FormatError(f"{where}: corrupt gzip data: {error}") from None
            if out:
                yield out
            if inflater.eof:
                member_open = False
                data = inflater.unused_data
            else:
                data = inflater.unconsumed_tail
        # Input is used up, but output may still be pending behind the block limit.
        while member_open and not inflater.eof:
            out = inflater.decompress(b"", OUTPUT_BLOCK)
            if not out:
                break
            yield out
        if inflater.eof:
            member_open = False
    if member_open:
        raise FormatError(f"{where}: truncated gzip member (input ends inside it)")


def inflate_first_member(data: bytes, limit: int, where: str) -> bytes:
    """Inflate only the gzip member at the start of ``data``; at most ``limit`` output bytes."""
    inflater = _new_inflater()
    try:
        out = inflater.decompress(data, limit + 1)
    except _ZLIB_ERROR as error:
        raise FormatError(f"{where}: corrupt gzip data: {error}") from None
    if len(out) > limit:
        raise FormatError(f"{where}: inflates to more than {limit} bytes")
    if not inflater.eof:
        raise FormatError(f"{where}: truncated gzip member")
    return out


def inflate_prefix(data: bytes, length: int, where: str, *, skip: int = 0) -> bytes:
    """Bytes ``[skip, skip + length)`` of what the members in ``data`` inflate to (exactly).

    The inflater is never asked for more than the bytes still missing, so however far
    the members would inflate, at most ``length`` bytes (plus one block while skipping)
    are ever held.
    """
    out = bytearray()
    to_skip = skip
    inflater = _new_inflater()
    pending = data
    while len(out) < length:
        if inflater.eof:
            if not pending:
                break
            inflater = _new_inflater()
        wanted = to_skip if to_skip else length - len(out)
        try:
            block = inflater.decompress(pending, min(wanted, OUTPUT_BLOCK))
        except _ZLIB_ERROR as error:
            raise FormatError(f"{where}: corrupt gzip data: {error}") from None
        if to_skip:
            to_skip -= len(block)
        else:
            out += block
        pending = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
        if not block and not inflater.eof and not pending:
            break  # the input ends inside a member
    if len(out) < length:
        got = skip - to_skip + len(out)
        raise FormatError(f"{where}: inflates to {got} bytes, expected at least {skip + length}")
    return bytes(out)
