"""One authenticated, retrying HTTP conversation with registries.

Everything above this module speaks in registry paths and scopes; this module picks
the scheme (plain HTTP for loopback and insecure registries), attaches
authorization, retries, re-authenticates once on 401, and turns error answers into
the lazybuild error tree with the registry's own error code in the message.

Credentials go only where they were asked for: a registry's Authorization header is
attached to requests to that registry's own origin (scheme, host, port) and never to
another host it points at (an upload ``Location``, a blob redirect), as Docker does.
Bodies read whole are bounded: error answers and token answers alike.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import AsyncGenerator, AsyncIterable, Collection, Iterable, Mapping, Sequence
from contextlib import aclosing
from typing import Any, cast

import httpx

from lazybuild.errors import AuthError, NotFoundError, RegistryError
from lazybuild.registry.auth import Authenticator
from lazybuild.registry.credentials import DockerCredentialStore
from lazybuild.registry.reference import Reference
from lazybuild.registry.retry import Retry, RetryPolicy, send_with_retries

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Of an error answer, this much is read for its message (the rest is dropped).
MAX_ERROR_BODY = 64 * 1024
# A token answer is a small JSON document; more is not a token server's answer.
MAX_TOKEN_ANSWER = 1024 * 1024


def is_loopback_host(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ::1, with or without a port."""
    if host.startswith("["):
        name = host[1 : host.find("]")] if "]" in host else host[1:]
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


class RegistrySession:
    def __init__(
        self,
        http: httpx.AsyncClient,
        credentials: DockerCredentialStore,
        policy: RetryPolicy,
        insecure_registries: Iterable[str] = (),
    ) -> None:
        self.http = http
        self.policy = policy
        self._insecure = frozenset(insecure_registries)
        self.authenticator = Authenticator(
            credentials, self._send_token_request, plain_http_ok=self._plain_http_ok
        )

    def _plain_http_ok(self, host: str) -> bool:
        """Whether credentials may go to ``host`` over plain HTTP: loopback, or a registry
        the user named insecure."""
        return is_loopback_host(host) or host in self._insecure

    def base_url(self, ref: Reference) -> httpx.URL:
        host = ref.api_host
        plain = is_loopback_host(host) or host in self._insecure or ref.registry in self._insecure
        return httpx.URL(f"{'http' if plain else 'https'}://{host}")

    def url(self, ref: Reference, path: str) -> httpx.URL:
        return self.base_url(ref).join(path)

    async def request(
        self,
        method: str,
        ref: Reference,
        url: httpx.URL | str,
        *,
        scopes: Sequence[str],
        expect: Collection[int],
        what: str,
        headers: Mapping[str, str] | None = None,
        content: bytes | AsyncIterable[bytes] | None = None,
        retry: Retry = Retry.ALWAYS,
    ) -> httpx.Response:
        """Send an authenticated request; return the (streaming) response if its status is
        in ``expect``, else raise the matching error. The caller closes the response.

        ``url`` on another origin than ``ref``'s registry (an upload location on a
        storage host) is sent without the registry's credentials. ``retry`` says how far
        the request may be sent again (see ``retry.Retry``)."""
        if isinstance(url, str):
            url = self.url(ref, url)
        registry = ref.registry
        if not same_origin(url, self.base_url(ref)):
            response = await self._send(
                method,
                url,
                headers=headers,
                content=content,
                host_for_errors=registry,
                retry=retry,
            )
            if response.status_code not in expect:
                raise await error_for(response, registry, what)
            return response
        sent = await self.authenticator.authorization(registry, scopes)
        response = await self._send(
            method,
            url,
            headers=headers,
            content=content,
            authorization=sent,
            host_for_errors=registry,
            retry=retry,
        )
        if response.status_code == 401:
            await response.aclose()
            sent = await self.authenticator.reauthorize(registry, response, scopes, sent)
            response = await self._send(
                method,
                url,
                headers=headers,
                content=content,
                authorization=sent,
                host_for_errors=registry,
                retry=retry,
            )
            if response.status_code == 401:
                await response.aclose()
                raise await self.authenticator.refused(registry, scopes, sent)
        if response.status_code not in expect:
            raise await error_for(response, registry, what)
        return response

    async def request_plain(
        self,
        method: str,
        url: httpx.URL,
        *,
        host_for_errors: str,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send with retries and no registry credentials (redirect targets such as a CDN)."""
        return await self._send(method, url, headers=headers, host_for_errors=host_for_errors)

    async def _send(
        self,
        method: str,
        url: httpx.URL,
        *,
        headers: Mapping[str, str] | None,
        host_for_errors: str,
        content: bytes | AsyncIterable[bytes] | None = None,
        authorization: str | None = None,
        retry: Retry = Retry.ALWAYS,
    ) -> httpx.Response:
        all_headers = dict(headers or {})
        if authorization is not None:
            all_headers["Authorization"] = authorization

        async def send_once() -> httpx.Response:
            request = self.http.build_request(method, url, headers=all_headers, content=content)
            return await self.http.send(request, stream=True)

        return await send_with_retries(send_once, self.policy, host_for_errors, retry=retry)

    async def _send_token_request(self, request: httpx.Request) -> tuple[httpx.Response, bytes]:
        """The token server's answer and its body (at most ``MAX_TOKEN_ANSWER`` bytes)."""
        host = request.url.netloc.decode()

        async def send_once() -> httpx.Response:
            return await self.http.send(request, stream=True)

        response = await send_with_retries(send_once, self.policy, host)
        try:
            body = await read_bounded(response, MAX_TOKEN_ANSWER)
        except httpx.HTTPError as exc:
            raise RegistryError(f"token server {host}: answer broke off: {exc}") from exc
        finally:
            await response.aclose()
        if body is None:
            raise RegistryError(
                f"token server {host}: answer is larger than {MAX_TOKEN_ANSWER} bytes"
            )
        return response, body


def body_pieces(
    response: httpx.Response, chunk_size: int | None = None
) -> AsyncGenerator[bytes, None]:
    """``response.aiter_bytes()`` as the generator it is, to close (``aclose``, ``aclosing``)
    when reading stops early: left to the garbage collector, trio warns about it."""
    return cast(AsyncGenerator[bytes, None], response.aiter_bytes(chunk_size))


async def read_bounded(response: httpx.Response, limit: int) -> bytes | None:
    """The body of a streaming ``response``, or None when it is longer than ``limit``
    (then no more than about ``limit`` bytes were read). Does not close it."""
    announced = response.headers.get("content-length", "")
    if announced.isdigit() and int(announced) > limit:
        return None
    chunks: list[bytes] = []
    total = 0
    async with aclosing(body_pieces(response)) as pieces:
        async for chunk in pieces:
            total += len(chunk)
            if total > limit:
                return None
            chunks.append(chunk)
    return b"".join(chunks)


def describe_error_body(body: bytes) -> str:
    """``CODE: message`` from a Distribution error body, or the start of the text."""
    try:
        document: Any = json.loads(body)
        errors = document["errors"]
        parts = [f"{e.get('code', '?')}: {e.get('message', '')}".rstrip(": ") for e in errors]
        if parts:
            return "; ".join(parts)
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    text = body.decode(errors="replace").strip().replace("\n", " ")
    return text[:200]


async def error_for(response: httpx.Response, registry: str, what: str) -> RegistryError:
    """The error for an unexpected answer to ``what`` (e.g. "GET manifest x:y")."""
    body = b""
    pieces = body_pieces(response)
    try:
        async for chunk in pieces:
            body += chunk[: MAX_ERROR_BODY - len(body)]
            if len(body) >= MAX_ERROR_BODY:
                break  # enough for a message: the rest is not read
    except httpx.HTTPError:
        pass
    finally:
        await pieces.aclose()
        await response.aclose()
    detail = describe_error_body(body)
    status = f"{response.status_code} {response.reason_phrase}".strip()
    message = f"registry {registry}: {what}: {status}" + (f" ({detail})" if detail else "")
    if response.status_code == 404:
        return NotFoundError(message)
    if response.status_code in (401, 403):
        return AuthError(message)
    return RegistryError(message)
