"""Registry authentication: ``WWW-Authenticate`` challenges, Bearer tokens, Basic auth.

The flow is Docker's token authentication: a request answered with 401 carries a
challenge; for ``Bearer`` we ask the challenge's realm for a token covering the
scopes we need (sending Basic credentials from the docker config when there are
any, or an OAuth2 refresh-token grant for identity tokens) and retry. The challenge
is remembered per registry so later requests get a token before they are sent
instead of after a 401.

Tokens are cached per (realm, service, scopes) until shortly before ``expires_in``.
A cached token the registry rejects is dropped at once and a fresh one fetched for
a single retry: lazy reads run for hours and tokens expire under them.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import trio

from lazybuild.errors import AuthError, RegistryError
from lazybuild.registry.credentials import Credentials, DockerCredentialStore

# Distribution's token spec: a token without expires_in lasts 60 seconds.
DEFAULT_TOKEN_LIFETIME = 60.0
# Renew a little early so a token does not expire between our check and the registry's.
_EXPIRY_MARGIN = 5.0
_CLIENT_ID = "lazybuild"

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PARAM = re.compile(rf'\s*({_TOKEN})\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*')
_SCHEME = re.compile(rf"\s*({_TOKEN})")
_TOKEN68 = re.compile(r"\s+([A-Za-z0-9\-._~+/]+=*)\s*(?=,|$)")


def pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


def push_scope(repository: str) -> str:
    return f"repository:{repository}:pull,push"


def merge_scopes(scopes: Iterable[str]) -> list[str]:
    """One scope per resource with the union of its actions, sorted: a stable cache key,
    and no redundant ``repository:x:pull`` next to ``repository:x:pull,push``."""
    actions: dict[str, dict[str, None]] = {}
    for scope in scopes:
        # Resource names may contain ':' (a registry port), actions never do.
        resource, sep, wanted = scope.rpartition(":")
        if not sep or not resource:
            continue
        merged = actions.setdefault(resource, {})
        merged.update(dict.fromkeys(a for a in wanted.split(",") if a))
    return [f"{resource}:{','.join(sorted(acts))}" for resource, acts in sorted(actions.items())]


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "bearer", "basic"
    params: Mapping[str, str]  # lower-case names; realm, service, scope, error

    @property
    def scopes(self) -> list[str]:
        return self.params.get("scope", "").split()


def parse_www_authenticate(headers: Iterable[str]) -> list[Challenge]:
    """Every challenge in one or more ``WWW-Authenticate`` header values (RFC 7235).

    One header may hold several challenges separated by commas, and parameter
    values may be quoted strings with backslash escapes.
    """
    challenges: list[Challenge] = []
    for header in headers:
        scheme: str | None = None
        params: dict[str, str] = {}
        position = 0
        while position < len(header):
            if header[position] in ", \t":
                position += 1
                continue
            param = _PARAM.match(header, position)
            if param and scheme is not None:
                value = param.group(2)
                if value.startswith('"'):
                    value = re.sub(r"\\(.)", r"\1", value[1:-1])
                params[param.group(1).lower()] = value
                position = param.end()
                continue
            new_scheme = _SCHEME.match(header, position)
            if new_scheme is None:
                break  # not a token: the rest is garbage
            if scheme is not None:
                challenges.append(Challenge(scheme, params))
            scheme, params = new_scheme.group(1).lower(), {}
            position = new_scheme.end()
            token68 = _TOKEN68.match(header, position)
            if token68:
                params["token68"] = token68.group(1)
                position = token68.end()
        if scheme is not None:
            challenges.append(Challenge(scheme, params))
    return challenges


def basic_authorization(credentials: Credentials) -> str:
    pair = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(pair).decode()


@dataclass
class _CachedToken:
    value: str
    expires_at: float


class TokenCache:
    """Bearer tokens by (realm, service, scopes), each kept until it is about to expire."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tokens: dict[tuple[str, str, str], _CachedToken] = {}

    def get(self, key: tuple[str, str, str]) -> str | None:
        cached = self._tokens.get(key)
        if cached is None or cached.expires_at <= self._clock():
            return None
        return cached.value

    def put(self, key: tuple[str, str, str], token: str, expires_in: float) -> None:
        lifetime = max(expires_in - _EXPIRY_MARGIN, expires_in / 2)
        self._tokens[key] = _CachedToken(token, self._clock() + lifetime)

    def drop(self, key: tuple[str, str, str], token: str) -> None:
        """Forget ``token`` (the registry refused it) unless it was already replaced."""
        cached = self._tokens.get(key)
        if cached is not None and cached.value == token:
            del self._tokens[key]


# Sends a request to a token server, with retries but without registry auth.
TokenSender = Callable[[httpx.Request], Awaitable[httpx.Response]]


class Authenticator:
    """Authorization headers for one RegistryClient, keyed by registry name."""

    def __init__(
        self,
        credentials: DockerCredentialStore,
        send: TokenSender,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._credentials = credentials
        self._send = send
        self.tokens = TokenCache(clock)
        self._challenges: dict[str, Challenge] = {}
        self._locks: dict[tuple[str, str, str], trio.Lock] = {}

    async def authorization(self, registry: str, scopes: Sequence[str]) -> str | None:
        """The header to send up front, from the challenge this registry gave last time."""
        challenge = self._challenges.get(registry)
        if challenge is None:
            return None
        # The remembered challenge's scope was for an earlier request: do not reuse it.
        return await self._answer(registry, challenge, scopes, refused=None, extra_scopes=())

    async def reauthorize(
        self, registry: str, response: httpx.Response, scopes: Sequence[str], sent: str | None
    ) -> str:
        """A header to retry with after ``response`` (a 401) to a request that carried ``sent``."""
        challenges = parse_www_authenticate(response.headers.get_list("www-authenticate"))
        usable = [c for c in challenges if c.scheme in ("bearer", "basic")]
        if not usable:
            raise AuthError(f"registry {registry}: access denied (401 without a usable challenge)")
        # Prefer Bearer: it carries scopes, and Basic would send the password every time.
        challenge = next((c for c in usable if c.scheme == "bearer"), usable[0])
        self._challenges[registry] = challenge
        # The registry may name a scope we did not think of; ask for it too.
        return await self._answer(
            registry, challenge, scopes, refused=sent, extra_scopes=challenge.scopes
        )

    async def refused(self, registry: str, scopes: Sequence[str], sent: str | None) -> AuthError:
        """The error for a request the registry rejected even with fresh authorization."""
        credentials = await self._lookup(registry)
        if sent is not None and sent.startswith("Basic ") and credentials is not None:
            self._credentials.forget(registry)
            return _refused_error(registry, credentials)
        who = f"user {credentials.username!r}" if credentials else "anonymous access"
        wanted = " ".join(scopes) or "this request"
        hint = "" if credentials else f" (no credentials for it in {self._credentials.path})"
        return AuthError(f"registry {registry}: {who} is not allowed {wanted}{hint}")

    async def _answer(
        self,
        registry: str,
        challenge: Challenge,
        scopes: Sequence[str],
        refused: str | None,
        extra_scopes: Sequence[str],
    ) -> str:
        if challenge.scheme == "basic":
            credentials = await self._lookup(registry)
            if credentials is None:
                raise self._no_credentials(registry)
            header = basic_authorization(credentials)
            if header == refused:
                self._credentials.forget(registry)
                raise _refused_error(registry, credentials)
            return header
        realm = challenge.params.get("realm")
        if not realm:
            raise AuthError(f"registry {registry}: Bearer challenge without a realm")
        service = challenge.params.get("service", "")
        wanted = merge_scopes([*scopes, *extra_scopes])
        key = (realm, service, " ".join(wanted))
        lock = self._locks.setdefault(key, trio.Lock())
        async with lock:  # one token request per key even with many concurrent readers
            if refused is not None and refused.startswith("Bearer "):
                self.tokens.drop(key, refused.removeprefix("Bearer "))
            token = self.tokens.get(key)
            if token is None:
                token, expires_in = await self._fetch_token(registry, realm, service, wanted)
                self.tokens.put(key, token, expires_in)
        return f"Bearer {token}"

    async def _fetch_token(
        self, registry: str, realm: str, service: str, scopes: Sequence[str]
    ) -> tuple[str, float]:
        credentials = await self._lookup(registry)
        if credentials is not None and credentials.identity_token:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": credentials.identity_token,
                "client_id": _CLIENT_ID,
                "service": service,
                "scope": " ".join(scopes),
            }
            request = httpx.Request("POST", realm, data=form)
        else:
            params: list[tuple[str, str | int | float | bool | None]] = []
            if service:
                params.append(("service", service))
            params += [("scope", scope) for scope in scopes]
            headers = {}
            if credentials is not None:
                headers["Authorization"] = basic_authorization(credentials)
            request = httpx.Request("GET", realm, params=params, headers=headers)
        response = await self._send(request)
        if response.status_code in (401, 403):
            if credentials is None:
                raise self._no_credentials(registry)
            self._credentials.forget(registry)
            raise _refused_error(registry, credentials)
        if response.status_code != 200:
            raise RegistryError(
                f"registry {registry}: token server {realm} answered {response.status_code}"
            )
        return _token_from_answer(registry, response)

    async def _lookup(self, registry: str) -> Credentials | None:
        # The lookup may run a credential helper: keep it off the event loop.
        return await trio.to_thread.run_sync(self._credentials.lookup, registry)

    def _no_credentials(self, registry: str) -> AuthError:
        return AuthError(
            f"registry {registry}: authentication required and there are no credentials "
            f"for it in {self._credentials.path}"
        )


def _refused_error(registry: str, credentials: Credentials) -> AuthError:
    who = f"user {credentials.username!r}" if credentials.username else "identity token"
    return AuthError(f"registry {registry}: credentials for {who} were refused")


def _token_from_answer(registry: str, response: httpx.Response) -> tuple[str, float]:
    try:
        answer: Any = response.json()
    except ValueError:
        raise RegistryError(f"registry {registry}: token server answered non-JSON") from None
    if not isinstance(answer, dict):
        raise RegistryError(f"registry {registry}: token server answered {answer!r}")
    token = answer.get("token") or answer.get("access_token")
    if not isinstance(token, str) or not token:
        raise RegistryError(f"registry {registry}: token server answered without a token")
    expires_in = answer.get("expires_in")
    if isinstance(expires_in, int | float) and expires_in > 0:
        return token, float(expires_in)
    return token, DEFAULT_TOKEN_LIFETIME
