"""Registry authentication: ``WWW-Authenticate`` challenges, Bearer tokens, Basic auth.

The flow is Docker's token authentication: a request answered with 401 carries a
challenge; for ``Bearer`` we ask the challenge's realm for a token covering the
scopes we need (sending Basic credentials from the docker config when there are
any, or an OAuth2 refresh-token grant for identity tokens) and retry. The challenge
is remembered per registry so later requests get a token before they are sent
instead of after a 401.

Tokens are cached per (registry, realm, service, scopes, credentials) until shortly
before ``expires_in``: two registries sharing a token server, or two users of one,
never share a token. A cached token the registry rejects is dropped at once and a
fresh one fetched for a single retry: lazy reads run for hours and tokens expire
under them.

Credentials go to a token realm only over https (or plain HTTP to loopback and to
registries the user named insecure); a realm on plain HTTP elsewhere is asked for an
anonymous token instead, and a refusal says why the credentials were kept back.
"""

from __future__ import annotations

import base64
import hashlib
import json
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


@dataclass(frozen=True)
class TokenKey:
    """What a cached token was issued for, and to whom."""

    registry: str
    realm: str
    service: str
    scope: str
    identity: str  # "" for anonymous, else a hash of the credentials


def credentials_identity(credentials: Credentials | None) -> str:
    """Tells credentials apart without keeping the secret itself in the key."""
    if credentials is None:
        return ""
    secret = "\0".join((credentials.username, credentials.password, credentials.identity_token))
    return hashlib.sha256(secret.encode()).hexdigest()[:32]


class TokenCache:
    """Bearer tokens by ``TokenKey``, each kept until it is about to expire."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tokens: dict[TokenKey, _CachedToken] = {}

    def get(self, key: TokenKey) -> str | None:
        cached = self._tokens.get(key)
        if cached is None or cached.expires_at <= self._clock():
            return None
        return cached.value

    def put(self, key: TokenKey, token: str, expires_in: float) -> None:
        lifetime = max(expires_in - _EXPIRY_MARGIN, expires_in / 2)
        self._tokens[key] = _CachedToken(token, self._clock() + lifetime)

    def drop(self, key: TokenKey, token: str) -> None:
        """Forget ``token`` (the registry refused it) unless it was already replaced."""
        cached = self._tokens.get(key)
        if cached is not None and cached.value == token:
            del self._tokens[key]


# Sends a request to a token server, with retries but without registry auth; returns
# the answer (closed) and its body, bounded.
TokenSender = Callable[[httpx.Request], Awaitable[tuple[httpx.Response, bytes]]]


def _loopback_only(host: str) -> bool:
    from lazybuild.registry.session import is_loopback_host

    return is_loopback_host(host)


class Authenticator:
    """Authorization headers for one RegistryClient, keyed by registry name."""

    def __init__(
        self,
        credentials: DockerCredentialStore,
        send: TokenSender,
        clock: Callable[[], float] = time.monotonic,
        plain_http_ok: Callable[[str], bool] = _loopback_only,
    ) -> None:
        """``plain_http_ok(host)``: whether credentials may go to ``host`` (a token
        realm's host with its port) over plain HTTP."""
        self._credentials = credentials
        self._send = send
        self._plain_http_ok = plain_http_ok
        self.tokens = TokenCache(clock)
        self._challenges: dict[str, Challenge] = {}
        self._locks: dict[TokenKey, trio.Lock] = {}
        self._known: dict[str, Credentials | None] = {}

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
            self._forget(registry)
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
                self._forget(registry)
                raise _refused_error(registry, credentials)
            return header
        realm = challenge.params.get("realm")
        if not realm:
            raise AuthError(f"registry {registry}: Bearer challenge without a realm")
        service = challenge.params.get("service", "")
        wanted = merge_scopes([*scopes, *extra_scopes])
        credentials = await self._lookup(registry)
        if credentials is not None and not self._may_send_credentials(realm):
            withheld: Credentials | None = credentials
            credentials = None
        else:
            withheld = None
        identity = credentials_identity(credentials)
        key = TokenKey(registry, realm, service, " ".join(wanted), identity)
        lock = self._locks.setdefault(key, trio.Lock())
        async with lock:  # one token request per key even with many concurrent readers
            if refused is not None and refused.startswith("Bearer "):
                self.tokens.drop(key, refused.removeprefix("Bearer "))
            token = self.tokens.get(key)
            if token is None:
                token, expires_in = await self._fetch_token(
                    registry, realm, service, wanted, credentials, withheld
                )
                self.tokens.put(key, token, expires_in)
        return f"Bearer {token}"

    def _may_send_credentials(self, realm: str) -> bool:
        """Credentials go to https realms, and to plain HTTP ones only where allowed."""
        try:
            url = httpx.URL(realm)
        except (httpx.InvalidURL, TypeError, ValueError):
            return False
        if url.scheme == "https":
            return True
        return url.scheme == "http" and self._plain_http_ok(url.netloc.decode())

    async def _fetch_token(  # noqa: PLR0917
        self,
        registry: str,
        realm: str,
        service: str,
        scopes: Sequence[str],
        credentials: Credentials | None,
        withheld: Credentials | None,
    ) -> tuple[str, float]:
        """A token from ``realm``, asked for with ``credentials`` (None: anonymously;
        ``withheld``: the credentials kept from a plain-HTTP realm, for the message)."""
        try:
            scheme = httpx.URL(realm).scheme
        except (httpx.InvalidURL, TypeError, ValueError):
            scheme = ""
        if scheme not in ("http", "https"):
            raise AuthError(f"registry {registry}: token realm {realm!r} is not an http(s) URL")
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
        response, body = await self._send(request)
        if response.status_code in (401, 403):
            if withheld is not None:
                raise AuthError(
                    f"registry {registry}: token realm {realm} is plain HTTP; credentials "
                    "are only sent over https, and anonymous access was refused"
                )
            if credentials is None:
                raise self._no_credentials(registry)
            self._forget(registry)
            raise _refused_error(registry, credentials)
        if response.status_code != 200:
            raise RegistryError(
                f"registry {registry}: token server {realm} answered {response.status_code}"
            )
        return _token_from_answer(registry, body)

    async def _lookup(self, registry: str) -> Credentials | None:
        """The registry's credentials, looked up once (until they are refused): every
        request with a token needs them for the token's key."""
        if registry not in self._known:
            # The lookup may run a credential helper: keep it off the event loop.
            found = await trio.to_thread.run_sync(self._credentials.lookup, registry)
            self._known[registry] = found
        return self._known[registry]

    def _forget(self, registry: str) -> None:
        self._known.pop(registry, None)
        self._credentials.forget(registry)

    def _no_credentials(self, registry: str) -> AuthError:
        return AuthError(
            f"registry {registry}: authentication required and there are no credentials "
            f"for it in {self._credentials.path}"
        )


def _refused_error(registry: str, credentials: Credentials) -> AuthError:
    who = f"user {credentials.username!r}" if credentials.username else "identity token"
    return AuthError(f"registry {registry}: credentials for {who} were refused")


def _token_from_answer(registry: str, body: bytes) -> tuple[str, float]:
    try:
        answer: Any = json.loads(body)
    except ValueError:
        raise RegistryError(f"registry {registry}: token server answered non-JSON") from None
    if not isinstance(answer, dict):
        kind = type(answer).__name__
        raise RegistryError(f"registry {registry}: token server answered a JSON {kind}")
    token = answer.get("token") or answer.get("access_token")
    if not isinstance(token, str) or not token:
        raise RegistryError(f"registry {registry}: token server answered without a token")
    expires_in = answer.get("expires_in")
    if isinstance(expires_in, int | float) and expires_in > 0:
        return token, float(expires_in)
    return token, DEFAULT_TOKEN_LIFETIME
