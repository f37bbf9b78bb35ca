"""Pieces every worker op shares: the op's own cache digest and its concurrency slot."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import trio

from lazybuild.graph.ops import Operation, encode_op


def op_digest(op: Operation, salt: str = "") -> str:
    """``sha256`` of the op's canonical JSON without its inputs (the solver keys those
    separately), plus ``salt`` for what the worker adds to the key."""
    data = encode_op(replace(op, inputs=()))
    return "sha256:" + hashlib.sha256(data + salt.encode()).hexdigest()


@asynccontextmanager
async def no_slot() -> AsyncIterator[None]:
    yield


@asynccontextmanager
async def slot(limiter: trio.CapacityLimiter) -> AsyncIterator[None]:
    async with limiter:
        yield
