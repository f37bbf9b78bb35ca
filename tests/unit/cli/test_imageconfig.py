"""Docker's rules for turning an image config plus overrides into a process."""

from __future__ import annotations

import pytest

from lazybuild.errors import UsageError
from lazybuild.run.settings import DEFAULT_PATH, merge_env, run_settings

CONFIG = {
    "config": {
        "Entrypoint": ["/entry"],
        "Cmd": ["--serve"],
        "Env": ["A=1", "PATH=/x"],
        "WorkingDir": "/app",
        "User": "app",
    }
}


def test_image_defaults() -> None:
    settings = run_settings(CONFIG)
    assert settings.args == ("/entry", "--serve")
    assert settings.env == ("A=1", "PATH=/x")
    assert (settings.cwd, settings.user) == ("/app", "app")


def test_command_replaces_cmd_and_keeps_entrypoint() -> None:
    assert run_settings(CONFIG, command=["--once"]).args == ("/entry", "--once")


def test_entrypoint_override_drops_cmd() -> None:
    assert run_settings(CONFIG, entrypoint=["/bin/sh"]).args == ("/bin/sh",)
    assert run_settings(CONFIG, entrypoint=["/bin/sh"], command=["-c", "x"]).args == (
        "/bin/sh",
        "-c",
        "x",
    )


def test_overrides() -> None:
    settings = run_settings(CONFIG, workdir="/tmp", user="0:0", env=["A=2", "B=3"])
    assert (settings.cwd, settings.user) == ("/tmp", "0:0")
    assert settings.env == ("A=2", "PATH=/x", "B=3")


def test_env_from_host_and_default_path() -> None:
    assert merge_env([], ["HOME_X", "MISSING"], {"HOME_X": "h"}) == [
        "HOME_X=h",
        f"PATH={DEFAULT_PATH}",
    ]
    with pytest.raises(UsageError):
        merge_env([], ["=x"], {})


def test_no_command_at_all() -> None:
    with pytest.raises(UsageError, match="neither Entrypoint nor Cmd"):
        run_settings({"config": {}})
