"""A docker config that does not parse, or names a helper that is not a name: one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from lazybuild.errors import FormatError
from lazybuild.registry import credentials
from lazybuild.registry.credentials import DockerCredentialStore


def _store(tmp_path: Path, data: bytes) -> DockerCredentialStore:
    path = tmp_path / "config.json"
    path.write_bytes(data)
    return DockerCredentialStore(path)


def test_deeply_nested_config_is_a_format_error(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="nested too deeply"):
        _store(tmp_path, b'{"auths":' * 100_000).lookup("docker.io")


@pytest.mark.parametrize(
    "config",
    [
        b'{"credsStore": "a\\u0000b"}',
        b'{"credsStore": "../../bin/sh"}',
        b'{"credHelpers": {"docker.io": "/usr/bin/env"}}',
        b'{"credsStore": ["x"]}',
    ],
)
def test_helper_names_that_are_not_names_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: bytes
) -> None:
    def must_not_run(helper: str, server: str) -> None:
        raise AssertionError(f"helper {helper!r} was run")

    monkeypatch.setattr(credentials, "run_credential_helper", must_not_run)
    with pytest.raises(FormatError, match="not a plain name"):
        _store(tmp_path, config).lookup("docker.io")
