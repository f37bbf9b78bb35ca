from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from lazybuild.errors import AuthError, FormatError
from lazybuild.registry.credentials import (
    Credentials,
    DockerCredentialStore,
    default_docker_config_path,
    normalize_registry_key,
)

HELPER = """#!/bin/sh
read server
echo "$server" >> "{log}"
case "$server" in
  registry.test) echo '{{"ServerURL":"registry.test","Username":"alice","Secret":"s3cret"}}' ;;
  https://index.docker.io/v1/) echo '{{"ServerURL":"x","Username":"<token>","Secret":"idt"}}' ;;
  broken.test) echo "the keychain is locked" >&2; exit 3 ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac
"""


def write_config(path: Path, config: dict[str, object]) -> Path:
    path.write_text(json.dumps(config))
    return path


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def helper_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A docker-credential-fake helper on PATH; returns the file it logs requests to."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "helper.log"
    script = bin_dir / "docker-credential-fake"
    script.write_text(HELPER.format(log=log))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


@pytest.mark.parametrize(
    ("key", "normal"),
    [
        ("https://index.docker.io/v1/", "docker.io"),
        ("index.docker.io", "docker.io"),
        ("registry-1.docker.io", "docker.io"),
        ("http://127.0.0.1:5000/v2/", "127.0.0.1:5000"),
        ("Ghcr.IO", "ghcr.io"),
    ],
)
def test_registry_keys_normalise(key: str, normal: str) -> None:
    assert normalize_registry_key(key) == normal


def test_auths_entries(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "config.json",
        {
            "auths": {
                "https://index.docker.io/v1/": {"auth": b64("hub:pa:ss")},
                "http://127.0.0.1:5000": {"username": "u", "password": "p"},
                "oauth.test": {"identitytoken": "refresh-me"},
            }
        },
    )
    store = DockerCredentialStore(config)
    assert store.lookup("docker.io") == Credentials("hub", "pa:ss", source=str(config))
    assert store.lookup("127.0.0.1:5000") == Credentials("u", "p", source=str(config))
    found = store.lookup("oauth.test")
    assert found is not None and found.identity_token == "refresh-me"
    assert store.lookup("other.test") is None


def test_a_directory_or_docker_config_env_finds_config_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(tmp_path / "config.json", {"auths": {"r.test": {"auth": b64("a:b")}}})
    assert DockerCredentialStore(tmp_path).path == tmp_path / "config.json"
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert default_docker_config_path() == tmp_path / "config.json"
    found = DockerCredentialStore().lookup("r.test")
    assert found is not None and found.username == "a"


def test_missing_and_broken_files(tmp_path: Path) -> None:
    assert DockerCredentialStore(tmp_path / "absent.json").lookup("r.test") is None
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    with pytest.raises(FormatError, match="unreadable"):
        DockerCredentialStore(bad_json).lookup("r.test")
    bad_auth = write_config(tmp_path / "auth.json", {"auths": {"r.test": {"auth": "!!"}}})
    with pytest.raises(AuthError, match="not base64"):
        DockerCredentialStore(bad_auth).lookup("r.test")


def test_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    path = write_config(tmp_path / "config.json", {"auths": {"r.test": {"auth": b64("u:old")}}})
    store = DockerCredentialStore(path)
    assert store.lookup("r.test") == Credentials("u", "old", source=str(path))
    write_config(path, {"auths": {"r.test": {"auth": b64("u:rotated")}}})
    # Same size would be possible; make sure the mtime moves as it would in real life.
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert store.lookup("r.test") == Credentials("u", "rotated", source=str(path))
    path.unlink()
    assert store.lookup("r.test") is None


def test_cred_helpers_and_creds_store(tmp_path: Path, helper_log: Path) -> None:
    path = write_config(
        tmp_path / "config.json",
        {
            "credHelpers": {"registry.test": "fake"},
            "auths": {"registry.test": {}, "plain.test": {"auth": b64("p:q")}},
        },
    )
    store = DockerCredentialStore(path)
    expected = Credentials("alice", "s3cret", source="docker-credential-fake")
    assert store.lookup("registry.test") == expected
    assert store.lookup("registry.test") == expected
    assert helper_log.read_text().splitlines() == ["registry.test"]  # answers are cached
    store.forget("registry.test")
    store.lookup("registry.test")
    assert len(helper_log.read_text().splitlines()) == 2
    # Without a credHelpers entry the file's auths are used.
    assert store.lookup("plain.test") == Credentials("p", "q", source=str(path))

    write_config(path, {"credsStore": "fake", "auths": {"plain.test": {"auth": b64("p:q")}}})
    store = DockerCredentialStore(path)
    hub = store.lookup("docker.io")
    assert hub is not None and hub.identity_token == "idt" and hub.username == ""
    # The helper has nothing for plain.test: fall back to the auths entry.
    assert store.lookup("plain.test") == Credentials("p", "q", source=str(path))
    assert store.lookup("unknown.test") is None
    with pytest.raises(AuthError, match=r"docker-credential-fake get for broken\.test failed"):
        store.lookup("broken.test")


def test_missing_helper_means_no_credentials(tmp_path: Path) -> None:
    path = write_config(tmp_path / "config.json", {"credsStore": "not-installed-anywhere"})
    assert DockerCredentialStore(path).lookup("r.test") is None
