"""Registry credentials from a docker ``config.json``: ``auths``, ``credHelpers``, ``credsStore``.

The file is looked up as Docker does (``$DOCKER_CONFIG/config.json``, else
``~/.docker/config.json``) and re-read whenever its size, mtime or inode change, so
credentials rotated by ``docker login`` while lazybuild runs are picked up (a
long-running lazy mount otherwise keeps failing with stale ones).

Credential helpers follow the docker-credential-helpers protocol: run
``docker-credential-<name> get``, write the server URL to stdin, read
``{"ServerURL", "Username", "Secret"}`` from stdout. A Username of ``<token>`` means
the Secret is an identity (OAuth2 refresh) token.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lazybuild.errors import AuthError, FormatError
from lazybuild.registry.reference import DOCKER_HUB

log = logging.getLogger(__name__)

# Keys under which Docker stores Docker Hub credentials.
_DOCKER_HUB_KEYS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
# What Docker passes to credential helpers for Docker Hub.
_DOCKER_HUB_SERVER_URL = "https://index.docker.io/v1/"
_IDENTITY_TOKEN_USERNAME = "<token>"
_HELPER_TIMEOUT_SECONDS = 30.0
_HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = ""
    # An OAuth2 refresh token; when set it is used instead of the password.
    identity_token: str = ""
    # Where they came from, for error messages ("~/.docker/config.json", "docker-credential-pass").
    source: str = ""


def normalize_registry_key(key: str) -> str:
    """``https://index.docker.io/v1/`` -> ``docker.io``; ``http://host:5000/x`` -> ``host:5000``."""
    host = key.strip()
    for scheme in ("https://", "http://"):
        if host.lower().startswith(scheme):
            host = host[len(scheme) :]
    host = host.split("/", 1)[0].lower()
    return DOCKER_HUB if host in _DOCKER_HUB_KEYS else host


def default_docker_config_path(environ: Mapping[str, str] = os.environ) -> Path:
    directory = environ.get("DOCKER_CONFIG")
    base = Path(directory) if directory else Path.home() / ".docker"
    return base / "config.json"


class DockerCredentialStore:
    """Credentials per registry host, read from one docker config file."""

    def __init__(self, path: Path | None = None) -> None:
        if path is None:
            path = default_docker_config_path()
        elif path.is_dir():
            path = path / "config.json"
        self.path = path
        self._signature: tuple[int, int, int] | None = None
        self._config: dict[str, Any] = {}
        self._helper_answers: dict[tuple[str, str], Credentials | None] = {}

    def lookup(self, registry: str) -> Credentials | None:
        """Credentials for ``registry`` (a Reference.registry such as ``docker.io``), or None.

        Blocking: may read the file and run a credential helper; call it from a thread.
        """
        self._reload_if_changed()
        registry = normalize_registry_key(registry)
        helper = self._helper_for(registry)
        if helper:
            found = self._ask_helper(helper, registry)
            if found is not None:
                return found
        return self._from_auths(registry)

    def forget(self, registry: str) -> None:
        """Drop cached helper answers for ``registry`` (after the registry refused them)."""
        registry = normalize_registry_key(registry)
        for key in [k for k in self._helper_answers if k[1] == registry]:
            del self._helper_answers[key]

    def _reload_if_changed(self) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._signature, self._config = None, {}
            self._helper_answers.clear()
            return
        signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if signature == self._signature:
            return
        try:
            config = json.loads(self.path.read_bytes() or b"{}")
        except (OSError, ValueError) as exc:
            raise FormatError(f"docker config {self.path} is unreadable: {exc}") from None
        except RecursionError:
            raise FormatError(f"docker config {self.path} is nested too deeply") from None
        if not isinstance(config, dict):
            raise FormatError(f"docker config {self.path} is not a JSON object")
        self._signature, self._config = signature, config
        # A rotated file may name other helpers or accounts: ask them again.
        self._helper_answers.clear()

    def _helper_for(self, registry: str) -> str:
        helpers = self._config.get("credHelpers") or {}
        if isinstance(helpers, dict):
            for key, helper in helpers.items():
                if normalize_registry_key(str(key)) == registry and helper:
                    return self._checked_helper(helper)
        store = self._config.get("credsStore")
        return self._checked_helper(store) if store else ""

    def _checked_helper(self, name: object) -> str:
        """A helper name becomes part of a program name looked up on PATH: a plain
        name only (no path, no NUL), as every docker-credential-* helper has."""
        if not isinstance(name, str) or _HELPER_NAME.fullmatch(name) is None:
            raise FormatError(
                f"docker config {self.path}: credential helper {name!r:.80} is not a plain name"
            )
        return name

    def _from_auths(self, registry: str) -> Credentials | None:
        auths = self._config.get("auths") or {}
        if not isinstance(auths, dict):
            return None
        for key, entry in auths.items():
            if normalize_registry_key(str(key)) != registry or not isinstance(entry, dict):
                continue
            username = str(entry.get("username") or "")
            password = str(entry.get("password") or "")
            if entry.get("auth"):
                try:
                    decoded = base64.b64decode(str(entry["auth"]), validate=True).decode()
                except (binascii.Error, UnicodeDecodeError):
                    raise AuthError(
                        f"docker config {self.path}: the 'auth' value for {key} is not "
                        "base64 of user:password"
                    ) from None
                username, _, password = decoded.partition(":")
            identity_token = str(entry.get("identitytoken") or "")
            if username or password or identity_token:
                return Credentials(username, password, identity_token, source=str(self.path))
        return None

    def _ask_helper(self, helper: str, registry: str) -> Credentials | None:
        server = _DOCKER_HUB_SERVER_URL if registry == DOCKER_HUB else registry
        key = (helper, registry)
        if key not in self._helper_answers:
            self._helper_answers[key] = run_credential_helper(helper, server)
        return self._helper_answers[key]


def run_credential_helper(helper: str, server: str) -> Credentials | None:
    """``docker-credential-<helper> get`` for ``server``; None when it has nothing stored."""
    program = f"docker-credential-{helper}"
    executable = shutil.which(program)
    if executable is None:
        # Docker fails hard here; a config copied from another machine often names a
        # helper that is not installed, and anonymous pulls should still work.
        log.warning("credential helper %s is not on PATH; using no credentials", program)
        return None
    try:
        done = subprocess.run(
            [executable, "get"],
            input=server.encode(),
            capture_output=True,
            timeout=_HELPER_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AuthError(f"{program} get for {server} failed: {exc}") from None
    output = done.stdout.decode(errors="replace").strip()
    if done.returncode != 0:
        message = output or done.stderr.decode(errors="replace").strip()
        if "credentials not found" in message.lower():
            return None
        raise AuthError(f"{program} get for {server} failed: {message or done.returncode}")
    try:
        answer = json.loads(output)
        username, secret = str(answer["Username"]), str(answer["Secret"])
    except (ValueError, KeyError, TypeError):
        raise AuthError(f"{program} get for {server} printed something that is not JSON") from None
    if username == _IDENTITY_TOKEN_USERNAME:
        return Credentials("", identity_token=secret, source=program)
    return Credentials(username, secret, source=program)
