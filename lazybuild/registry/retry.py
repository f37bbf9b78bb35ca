"""Retrying registry requests: exponential backoff with jitter, ``Retry-After``, and a
short budget for refused connections.

A registry that refuses connections is almost always down or mistyped, not busy, so
it gets two quick retries (well under a second) and the CLI reports it promptly.
Throttling (429) and server errors (5xx) get the full budget and honour
``Retry-After``, capped so a hostile value cannot stall a lazy read for long; all
retries of one request end by a total deadline.

A request is retried only where sending it twice is safe: GET, HEAD, DELETE and
manifest PUTs always (``Retry.ALWAYS``); a POST that opens an upload only when no
answer came at all or the answer says it was not handled (429, 503:
``Retry.UNANSWERED``); upload data (PATCH, the committing PUT) only when the
connection was never made (``Retry.NEVER``): the caller restarts the upload instead.
"""

from __future__ import annotations

import email.utils
import errno
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum

import httpx
import trio

from lazybuild.errors import RegistryError

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Answers that say the request was not acted on: a POST may be sent again after them.
NOT_HANDLED_STATUSES = frozenset({429, 503})


class Retry(Enum):
    """How far a request may be sent again (see the module docstring)."""

    ALWAYS = "always"
    UNANSWERED = "unanswered"
    NEVER = "never"


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5
    base_delay: float = 0.25
    max_delay: float = 8.0
    max_retry_after: float = 30.0
    # Connection refused / DNS failure: retry a little, quickly (about 0.5 s in total).
    connect_error_retries: int = 2
    connect_error_delay: float = 0.15
    # No retry starts later than this after the first attempt (Retry-After included).
    deadline: float = 90.0

    def backoff(self, attempt: int) -> float:
        """The pause before retry number ``attempt`` (0-based): exponential, jittered."""
        ceiling = min(self.max_delay, self.base_delay * (2.0**attempt))
        # Jitter keeps many lazy readers that failed together from retrying together.
        return random.uniform(ceiling / 2, ceiling)

    def connect_backoff(self, attempt: int) -> float:
        return self.connect_error_delay * (2.0**attempt)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def is_connection_refused(exc: BaseException) -> bool:
    """True if ``exc`` or anything it wraps (causes, contexts, exception groups) is ECONNREFUSED.

    httpx under trio reports a refused connection as ConnectError wrapping an OSError
    wrapping an ExceptionGroup of per-address errors, so the whole tree is searched.
    """
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError) or (
            isinstance(current, OSError) and current.errno == errno.ECONNREFUSED
        ):
            return True
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                pending.append(linked)
    return False


def describe_transport_error(exc: httpx.TransportError) -> str:
    if is_connection_refused(exc):
        return "connection refused"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return str(exc) or type(exc).__name__


async def send_with_retries(
    send: Callable[[], Awaitable[httpx.Response]],
    policy: RetryPolicy,
    registry: str,
    sleep: Callable[[float], Awaitable[None]] = trio.sleep,
    *,
    retry: Retry = Retry.ALWAYS,
    clock: Callable[[], float] = time.monotonic,
) -> httpx.Response:
    """Call ``send`` until it answers with a status that is not worth retrying.

    The last response is returned even when its status is retryable, so the caller
    can report the registry's own error. Transport failures that outlast the budget
    (or that ``retry`` does not allow to retry) become ``RegistryError("cannot reach
    registry ...")``.
    """
    attempt = 0
    connect_attempt = 0
    deadline = clock() + policy.deadline
    while True:
        try:
            response = await send()
        except httpx.ConnectError as exc:
            # Nothing was sent: safe to retry whatever the request.
            pause = policy.connect_backoff(connect_attempt)
            if connect_attempt >= policy.connect_error_retries or clock() + pause > deadline:
                reason = describe_transport_error(exc)
                raise RegistryError(f"cannot reach registry {registry}: {reason}") from exc
            await sleep(pause)
            connect_attempt += 1
            continue
        except httpx.TransportError as exc:
            pause = policy.backoff(attempt)
            if retry is Retry.NEVER or attempt >= policy.max_retries or clock() + pause > deadline:
                reason = describe_transport_error(exc)
                raise RegistryError(f"cannot reach registry {registry}: {reason}") from exc
            await sleep(pause)
            attempt += 1
            continue
        status = response.status_code
        retryable = status in RETRYABLE_STATUSES and (
            retry is Retry.ALWAYS or (retry is Retry.UNANSWERED and status in NOT_HANDLED_STATUSES)
        )
        if not retryable or attempt >= policy.max_retries:
            return response
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        delay = policy.backoff(attempt)
        if retry_after is not None:
            delay = min(retry_after, policy.max_retry_after)
        if clock() + delay > deadline:
            return response  # the registry's own answer says more than a timeout would
        await response.aclose()
        await sleep(delay)
        attempt += 1
