"""What an image config says about running it, with Docker's rules for overrides."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lazybuild.errors import UsageError

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class RunSettings:
    args: tuple[str, ...]
    env: tuple[str, ...]
    cwd: str
    user: str


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise UsageError(f"image config has {value!r} where a list of strings belongs")


def merge_env(base: Sequence[str], overrides: Sequence[str], host: Mapping[str, str]) -> list[str]:
    """Image env with ``--env`` applied: ``K=V`` sets, a bare ``K`` copies the host's value
    (and is dropped when the host has none), as ``docker run -e`` does."""
    merged: dict[str, str] = {}
    for item in base:
        key, _, value = item.partition("=")
        merged[key] = value
    for item in overrides:
        key, sep, value = item.partition("=")
        if not key:
            raise UsageError(f"--env {item!r}: the variable name is empty")
        if sep:
            merged[key] = value
        elif key in host:
            merged[key] = host[key]
    merged.setdefault("PATH", DEFAULT_PATH)
    return [f"{k}={v}" for k, v in merged.items()]


def run_settings(
    config: Mapping[str, Any],
    *,
    command: Sequence[str] = (),
    env: Sequence[str] = (),
    workdir: str | None = None,
    user: str | None = None,
    entrypoint: Sequence[str] | None = None,
) -> RunSettings:
    """The process to start: the image's entrypoint and cmd, with command-line overrides.

    As in Docker, a command replaces the image's Cmd and keeps its Entrypoint; an explicit
    entrypoint replaces the Entrypoint and drops the image's Cmd.
    """
    image = config.get("config") or {}
    image_entrypoint = _strings(image.get("Entrypoint"))
    image_cmd = _strings(image.get("Cmd"))
    if entrypoint is not None:
        args = [*entrypoint, *command]
    else:
        args = [*image_entrypoint, *(command or image_cmd)]
    if not args:
        raise UsageError("no command given and the image has neither Entrypoint nor Cmd")
    return RunSettings(
        args=tuple(args),
        env=tuple(merge_env(_strings(image.get("Env")), env, os.environ)),
        cwd=workdir or str(image.get("WorkingDir") or "/"),
        user=user if user is not None else str(image.get("User") or ""),
    )
