"""Push an OCI layout's image into a registry fixture with plain HTTP calls.

This is test plumbing, deliberately independent of lazybuild's own registry client,
so that tests of that client do not depend on the code under test to set up.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Generator
from pathlib import Path

import httpx

from lazybuild.oci.layout import OciLayout


class BearerAuth(httpx.Auth):
    """Docker token auth: on a Bearer challenge fetch a token with Basic credentials
    from the realm, then send it on this and every later request."""

    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self.password = password
        self.token: str | None = None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self.token:
            request.headers["Authorization"] = f"Bearer {self.token}"
        response = yield request
        challenge = response.headers.get("WWW-Authenticate", "")
        if response.status_code != 401 or not challenge.lower().startswith("bearer "):
            return
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        query = {k: v for k, v in params.items() if k in ("service", "scope")}
        basic = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        token_response = yield httpx.Request(
            "GET",
            params["realm"],
            params=query,
            headers={"Authorization": f"Basic {basic}"},
        )
        token_response.read()
        if token_response.status_code != 200:
            return
        body = json.loads(token_response.content)
        self.token = body.get("token") or body.get("access_token")
        request.headers["Authorization"] = f"Bearer {self.token}"
        yield request


def _file_digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as data:
        while chunk := data.read(1 << 20):
            sha.update(chunk)
    return "sha256:" + sha.hexdigest()


def push_blob(client: httpx.Client, base: str, repo: str, path: Path, digest: str) -> None:
    """Monolithic upload (POST to open a session, one PUT with the whole blob)."""
    blob_url = f"{base}/v2/{repo}/blobs/{digest}"
    if client.head(blob_url).status_code == 200:
        return
    opened = client.post(f"{base}/v2/{repo}/blobs/uploads/")
    if opened.status_code != 202:
        raise RuntimeError(f"POST upload for {repo}: {opened.status_code} {opened.text}")
    # The Location carries upload state in its query; the digest is added to it.
    location = httpx.URL(base).join(opened.headers["Location"])
    size = path.stat().st_size
    with path.open("rb") as data:
        put = client.put(
            location.copy_merge_params({"digest": digest}),
            content=data,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
        )
    if put.status_code != 201:
        raise RuntimeError(f"PUT blob {digest} to {repo}: {put.status_code} {put.text}")


def push_oci_layout(
    layout_dir: Path,
    registry_host: str,
    repo: str,
    tag: str,
    *,
    source_tag: str | None = None,
    username: str | None = None,
    password: str | None = None,
) -> str:
    """Push the image `source_tag` (default: the layout's only image, or "latest") of
    an OCI layout to `registry_host/repo:tag` over plain HTTP; returns the manifest digest.
    """
    layout = OciLayout.open(layout_dir)
    descriptor = layout.resolve(source_tag)
    manifest_bytes = layout.read_blob(descriptor.digest)
    manifest = json.loads(manifest_bytes)
    base = f"http://{registry_host}"
    auth = BearerAuth(username, password) if username and password else None
    with httpx.Client(auth=auth, timeout=httpx.Timeout(60.0, read=600.0)) as client:
        for blob in [manifest["config"], *manifest["layers"]]:
            digest = blob["digest"]
            path = layout.blob_path(digest)
            if blob is not manifest["config"] and _file_digest(path) != digest:
                raise RuntimeError(f"{layout_dir}: blob {digest} does not match its name")
            push_blob(client, base, repo, path, digest)
        put = client.put(
            f"{base}/v2/{repo}/manifests/{tag}",
            content=manifest_bytes,
            headers={"Content-Type": descriptor.media_type},
        )
        if put.status_code != 201:
            raise RuntimeError(f"PUT manifest {repo}:{tag}: {put.status_code} {put.text}")
    return descriptor.digest
