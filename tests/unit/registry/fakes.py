"""An in-memory registry (plus token server and CDN) behind httpx.MockTransport.

It implements just enough of the Distribution API for the client's unit tests and
has knobs for the misbehaviours real registries show (see spec §8).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio

from lazybuild.oci.descriptor import Descriptor

REGISTRY = "registry.test"
AUTH = "auth.test"
CDN = "cdn.test"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor_for(data: bytes, media_type: str = "application/octet-stream") -> Descriptor:
    return Descriptor(media_type, digest_of(data), len(data))


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def run(fn: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return trio.run(fn)


@dataclass
class FakeRegistry:
    # None (open), "basic" or "bearer".
    auth: str | None = None
    username: str = "alice"
    password: str = "s3cret"
    anonymous_pull: bool = False
    token_lifetime: int = 300
    # How multi-range GETs are answered: "multipart", "reject" (400), "whole" (200),
    # "coalesce" (a single 206 part spanning all ranges).
    range_mode: str = "multipart"
    # Serve blob GETs by redirecting to the CDN host.
    redirect_blobs: bool = False
    blobs: dict[str, bytes] = field(default_factory=dict)
    repo_blobs: dict[str, set[str]] = field(default_factory=dict)
    manifests: dict[tuple[str, str], tuple[bytes, str]] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)
    token_requests: list[httpx.Request] = field(default_factory=list)
    tokens: dict[str, set[str]] = field(default_factory=dict)
    # Responses handed out (first in, first out) before normal handling, per host.
    queued: dict[str, list[httpx.Response]] = field(default_factory=dict)
    expired_signatures: set[str] = field(default_factory=set)
    uploads: dict[str, bytearray] = field(default_factory=dict)
    # Lie about manifests / blobs: serve these bytes instead of the stored ones.
    tampered: dict[str, bytes] = field(default_factory=dict)
    manifest_digest_header: str | None = None
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    # ---- test set-up ---------------------------------------------------------------

    def add_blob(self, repository: str, data: bytes) -> Descriptor:
        digest = digest_of(data)
        self.blobs[digest] = data
        self.repo_blobs.setdefault(repository, set()).add(digest)
        return descriptor_for(data)

    def add_manifest(self, repository: str, tag: str | None, document: dict[str, Any]) -> str:
        data = json.dumps(document).encode()
        digest = digest_of(data)
        media_type = str(document.get("mediaType", ""))
        self.manifests[(repository, digest)] = (data, media_type)
        if tag:
            self.manifests[(repository, tag)] = (data, media_type)
        return digest

    def queue(self, host: str, *responses: httpx.Response) -> None:
        self.queued.setdefault(host, []).extend(responses)

    def registry_requests(self, path_part: str = "") -> list[httpx.Request]:
        return [r for r in self.requests if r.url.host == REGISTRY and path_part in r.url.path]

    # ---- dispatch ------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        host = request.url.host
        pending = self.queued.get(host)
        if pending:
            return pending.pop(0)
        if host == AUTH:
            return self._token(request)
        if host == CDN:
            return self._cdn(request)
        return self._registry(request)

    def _token(self, request: httpx.Request) -> httpx.Response:
        self.token_requests.append(request)
        if request.method == "POST":
            form = dict(x.split("=", 1) for x in request.content.decode().split("&"))
            good = form.get("refresh_token") == "identity-" + self.username
            scopes = [s for s in form.get("scope", "").replace("+", " ").split(" ") if s]
        else:
            header = request.headers.get("authorization")
            good = header == basic(self.username, self.password)
            if header is not None and not good:
                return httpx.Response(401, json={"errors": [{"code": "UNAUTHORIZED"}]})
            scopes = request.url.params.get_list("scope")
        if not good and not self.anonymous_pull:
            return httpx.Response(401, json={"errors": [{"code": "UNAUTHORIZED"}]})
        granted = {
            s if good else s.split(":")[0] + ":" + s.split(":")[1] + ":pull"
            for s in (_unquote(s) for s in scopes)
        }
        token = f"token-{next(self._ids)}"
        self.tokens[token] = granted
        return httpx.Response(200, json={"token": token, "expires_in": self.token_lifetime})

    def _allowed(self, request: httpx.Request, repository: str, action: str) -> bool:
        header: str = request.headers.get("authorization", "")
        if self.auth is None:
            return True
        if self.auth == "basic":
            return header == basic(self.username, self.password)
        scopes = self.tokens.get(header.removeprefix("Bearer "), set())
        return any(
            s.startswith(f"repository:{repository}:") and action in s.rsplit(":", 1)[1]
            for s in scopes
        )

    def _challenge(self, repository: str, action: str) -> httpx.Response:
        if self.auth == "basic":
            header = 'Basic realm="fake registry"'
        else:
            actions = "pull" if action == "pull" else "pull,push"
            header = (
                f'Bearer realm="https://{AUTH}/token",service="fake",'
                f'scope="repository:{repository}:{actions}"'
            )
        return httpx.Response(
            401,
            headers={"WWW-Authenticate": header},
            json={"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
        )

    def _registry(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v2/":
            return httpx.Response(200)
        match = re.match(r"^/v2/(.+)/(manifests|blobs)/(uploads/?(.*)|[^/]+)$", path)
        if match is None:
            return httpx.Response(404)
        repository, kind, key = match.group(1), match.group(2), match.group(3)
        action = "pull" if request.method in ("GET", "HEAD") else "push"
        if not self._allowed(request, repository, action):
            return self._challenge(repository, action)
        if kind == "manifests":
            return self._manifest(request, repository, key)
        if key.startswith("uploads"):
            return self._upload(request, repository, match.group(4) or "")
        return self._blob(request, repository, key)

    def _manifest(self, request: httpx.Request, repository: str, key: str) -> httpx.Response:
        if request.method == "PUT":
            data = request.content
            digest = digest_of(data)
            media_type = request.headers["content-type"]
            self.manifests[(repository, digest)] = (data, media_type)
            self.manifests[(repository, key)] = (data, media_type)
            return httpx.Response(201, headers={"Docker-Content-Digest": digest})
        stored = self.manifests.get((repository, key))
        if stored is None:
            return httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN"}]})
        data, media_type = stored
        digest = self.manifest_digest_header or digest_of(data)
        data = self.tampered.get(key, data)
        return httpx.Response(
            200,
            content=data,
            headers={"Content-Type": media_type, "Docker-Content-Digest": digest},
        )

    def _blob(self, request: httpx.Request, repository: str, digest: str) -> httpx.Response:
        if digest not in self.repo_blobs.get(repository, set()):
            return httpx.Response(404, json={"errors": [{"code": "BLOB_UNKNOWN"}]})
        if self.redirect_blobs:
            signature = f"sig{next(self._ids)}"
            location = f"https://{CDN}/store/{digest}?signature={signature}"
            return httpx.Response(307, headers={"Location": location})
        return self._serve(request, digest)

    def _cdn(self, request: httpx.Request) -> httpx.Response:
        if request.url.params.get("signature") in self.expired_signatures:
            return httpx.Response(403, text="Request has expired")
        return self._serve(request, request.url.path.rsplit("/", 1)[1])

    def _serve(self, request: httpx.Request, digest: str) -> httpx.Response:
        data = self.tampered.get(digest, self.blobs[digest])
        headers = {"Docker-Content-Digest": digest, "Content-Type": "application/octet-stream"}
        if request.method == "HEAD":
            return httpx.Response(200, headers={**headers, "Content-Length": str(len(data))})
        spec = request.headers.get("range")
        if spec is None:
            return httpx.Response(200, content=data, headers=headers)
        ranges = []
        for item in spec.removeprefix("bytes=").split(","):
            first, _, last = item.partition("-")
            ranges.append((int(first), min(int(last) if last else len(data) - 1, len(data) - 1)))
        if len(ranges) > 1 and self.range_mode == "reject":
            return httpx.Response(400, text="multiple ranges are not supported")
        if len(ranges) > 1 and self.range_mode == "whole":
            return httpx.Response(200, content=data, headers=headers)
        if len(ranges) > 1 and self.range_mode == "coalesce":
            ranges = [(ranges[0][0], ranges[-1][1])]
        if len(ranges) == 1:
            first, last = ranges[0]
            return httpx.Response(
                206,
                content=data[first : last + 1],
                headers={**headers, "Content-Range": f"bytes {first}-{last}/{len(data)}"},
            )
        boundary = "fake-boundary-42"
        body = b""
        for first, last in ranges:
            body += (
                f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Range: bytes {first}-{last}/{len(data)}\r\n\r\n"
            ).encode() + data[first : last + 1]
        body += f"\r\n--{boundary}--\r\n".encode()
        return httpx.Response(
            206,
            content=body,
            headers={"Content-Type": f"multipart/byteranges; boundary={boundary}"},
        )

    def _upload(self, request: httpx.Request, repository: str, upload_id: str) -> httpx.Response:
        if request.method == "POST":
            mount, source = request.url.params.get("mount"), request.url.params.get("from")
            if mount and source and mount in self.repo_blobs.get(source, set()):
                self.repo_blobs.setdefault(repository, set()).add(mount)
                return httpx.Response(201, headers={"Docker-Content-Digest": mount})
            new_id = f"up{next(self._ids)}"
            self.uploads[new_id] = bytearray()
            location = f"/v2/{repository}/blobs/uploads/{new_id}?_state=x"
            return httpx.Response(202, headers={"Location": location, "Range": "0-0"})
        buffer = self.uploads[upload_id]
        if request.method == "PATCH":
            first, _, _last = request.headers["content-range"].partition("-")
            assert int(first) == len(buffer), "chunk out of order"
            buffer += request.content
            location = f"/v2/{repository}/blobs/uploads/{upload_id}?_state=y"
            headers = {"Location": location, "Range": f"0-{len(buffer) - 1}"}
            return httpx.Response(202, headers=headers)
        if request.method == "PUT":
            buffer += request.content
            digest = request.url.params["digest"]
            if digest_of(bytes(buffer)) != digest:
                return httpx.Response(400, json={"errors": [{"code": "DIGEST_INVALID"}]})
            self.blobs[digest] = bytes(buffer)
            self.repo_blobs.setdefault(repository, set()).add(digest)
            return httpx.Response(201, headers={"Docker-Content-Digest": digest})
        if request.method == "DELETE":
            del self.uploads[upload_id]
            return httpx.Response(204)
        return httpx.Response(405)


def _unquote(text: str) -> str:
    from urllib.parse import unquote

    return unquote(text)
