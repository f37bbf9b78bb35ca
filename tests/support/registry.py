"""A real Distribution (docker-registry 2.8) on loopback, plain or with token auth."""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio

from lazybuild.oci.platform import host_platform
from lazybuild.registry.client import RegistryClient
from lazybuild.registry.reference import Reference
from tests.support import procs

REGISTRY_BINARY = "/usr/bin/docker-registry"


@dataclass(frozen=True)
class TokenAuth:
    """What the registry needs to trust a token server (see tokenserver.TokenServer)."""

    realm: str
    service: str
    issuer: str
    root_cert_bundle: Path


class Registry:
    """docker-registry serving filesystem storage from a temp dir on 127.0.0.1:PORT.

    Usable as a context manager (tests, bench) or with start()/stop().
    """

    def __init__(
        self,
        workdir: Path | None = None,
        token_auth: TokenAuth | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="lazybuild-registry-"))
        self.root = self.workdir / "storage"
        self.port = procs.free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self.token_auth = token_auth
        # Credentials a client must present to the token server (None for an open registry).
        self.username = username
        self.password = password
        self.log_path = self.workdir / "registry.log"
        self._daemon: procs.Daemon | None = None

    def config(self) -> dict[str, object]:
        config: dict[str, object] = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.root)},
                "delete": {"enabled": True},
                # Upload purging scans storage at start; pointless for short-lived tests.
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": self.host, "secret": secrets.token_hex(16)},
        }
        if self.token_auth is not None:
            config["auth"] = {
                "token": {
                    "realm": self.token_auth.realm,
                    "service": self.token_auth.service,
                    "issuer": self.token_auth.issuer,
                    "rootcertbundle": str(self.token_auth.root_cert_bundle),
                }
            }
        return config

    def start(self, timeout: float = 30.0) -> Registry:
        self.root.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "config.yml"
        # JSON is valid YAML, so no YAML library is needed to write the config.
        config_path.write_text(json.dumps(self.config(), indent=2))
        self._daemon = procs.start(
            "docker-registry", [REGISTRY_BINARY, "serve", str(config_path)], self.log_path
        )
        # 200 when open, 401 with a Bearer challenge when token auth is on: both mean "serving".
        expected = 401 if self.token_auth else 200
        try:
            self._daemon.wait_ready(
                lambda: httpx.get(f"{self.url}/v2/", timeout=2).status_code == expected,
                timeout=timeout,
                what=f"answering GET /v2/ with {expected}",
            )
        except BaseException:
            self.stop()  # the error message already carries the log tail
            raise
        return self

    def stop(self) -> None:
        if self._daemon is not None:
            self._daemon.stop()
            self._daemon = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def write_docker_config(path: Path, host: str, user: str, password: str) -> Path:
    """Write a docker config.json granting `user:password` on `host`.

    `path` is the config.json file itself, or a directory to put one in (DOCKER_CONFIG style).
    """
    if path.is_dir():
        path = path / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    existing: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    auths: dict[str, Any] = dict(existing.get("auths") or {})
    auths[host] = {"auth": auth}
    existing["auths"] = auths
    path.write_text(json.dumps(existing, indent=2) + "\n")
    path.chmod(0o600)
    return path


class TokenRegistry(Registry):
    """A Registry behind `auth: token`, with its own TokenServer as the realm.

    `.username` / `.password` are the credentials the token server accepts;
    `.token_server` exposes the issued tokens for tests that count them.
    """

    username: str
    password: str

    def __init__(self, workdir: Path | None = None) -> None:
        super().__init__(workdir)
        from tests.support.tokenserver import TokenServer

        self.token_server = TokenServer(self.workdir / "token-server")
        self.username = self.token_server.username
        self.password = self.token_server.password

    def start(self, timeout: float = 30.0) -> TokenRegistry:
        self.token_server.start()
        self.token_auth = TokenAuth(
            realm=self.token_server.realm,
            service=self.token_server.service,
            issuer=self.token_server.issuer,
            root_cert_bundle=self.token_server.cert_path,
        )
        try:
            super().start(timeout)
        except BaseException:
            self.token_server.stop()
            raise
        return self

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self.token_server.stop()

    def __enter__(self) -> TokenRegistry:
        return self.start()


def resolve_pushed(reference: str) -> tuple[str, list[str]]:
    """The digest of the image manifest ``reference`` names for this host, and its
    layers' digests, as a client sees them."""

    async def resolve() -> tuple[str, list[str]]:
        async with RegistryClient() as client:
            resolved = await client.resolve_image(Reference.parse(reference), host_platform())
            return resolved.manifest_digest, [d.digest for d in resolved.manifest.layers]

    return trio.run(resolve)
