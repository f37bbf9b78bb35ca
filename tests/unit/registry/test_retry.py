from __future__ import annotations

import errno

import httpx
import pytest
import trio

from lazybuild.errors import RegistryError
from lazybuild.registry.retry import (
    RetryPolicy,
    is_connection_refused,
    parse_retry_after,
    send_with_retries,
)


def test_parse_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = 1_700_000_000.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:40 GMT", now=now) == pytest.approx(20.0)


def test_connection_refused_is_found_inside_exception_groups() -> None:
    inner = OSError(errno.ECONNREFUSED, "Connection refused")
    group = ExceptionGroup("all attempts failed", [inner])
    wrapped = httpx.ConnectError("all attempts to connect failed")
    wrapped.__cause__ = OSError("all attempts")
    wrapped.__cause__.__cause__ = group
    assert is_connection_refused(wrapped)
    assert not is_connection_refused(httpx.ConnectError("name resolution failed"))


def test_retries_honour_retry_after_with_a_cap() -> None:
    answers = [
        httpx.Response(429, headers={"Retry-After": "3"}),
        httpx.Response(503, headers={"Retry-After": "3600"}),
        httpx.Response(500),
        httpx.Response(200),
    ]
    pauses: list[float] = []

    async def send() -> httpx.Response:
        return answers.pop(0)

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    policy = RetryPolicy(max_retries=5, base_delay=0.5, max_retry_after=30.0)
    response = trio.run(send_with_retries, send, policy, "r.test", sleep)
    assert response.status_code == 200
    assert pauses[:2] == [3.0, 30.0]
    assert 0.5 <= pauses[2] <= 2.0  # exponential backoff with jitter for the third


def test_retry_budget_runs_out_and_returns_the_last_answer() -> None:
    async def send() -> httpx.Response:
        return httpx.Response(502)

    async def sleep(seconds: float) -> None:
        pass

    response = trio.run(send_with_retries, send, RetryPolicy(max_retries=2), "r.test", sleep)
    assert response.status_code == 502


def test_connection_refused_gives_up_quickly() -> None:
    calls = 0

    async def send() -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ConnectError("refused") from ConnectionRefusedError(errno.ECONNREFUSED, "x")

    async def main() -> float:
        start = trio.current_time()
        with pytest.raises(RegistryError, match=r"^cannot reach registry r.test:1: connection"):
            await send_with_retries(send, RetryPolicy(), "r.test:1")
        return trio.current_time() - start

    elapsed = trio.run(main)
    assert calls == 3
    assert elapsed < 1.0


def test_read_errors_are_retried() -> None:
    outcomes: list[Exception | httpx.Response] = [httpx.ReadError("reset"), httpx.Response(200)]

    async def send() -> httpx.Response:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def sleep(seconds: float) -> None:
        pass

    assert trio.run(send_with_retries, send, RetryPolicy(), "r", sleep).status_code == 200
