"""``lazybuild build`` flag values as ``docker buildx build`` spells them."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from lazybuild.errors import UsageError


def key_values(items: Iterable[str], flag: str, env: Mapping[str, str]) -> dict[str, str]:
    """``KEY=value`` pairs; a bare ``KEY`` takes its value from the environment (and is
    left out when unset), as ``--build-arg`` does in Docker."""
    values: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key:
            raise UsageError(f"{flag} {item!r}: expected KEY=VALUE")
        if sep:
            values[key] = value
        elif key in env:
            values[key] = env[key]
    return values


def labels(items: Iterable[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key or not sep:
            raise UsageError(f"--label {item!r}: expected KEY=VALUE")
        values[key] = value
    return values


def _fields(spec: str, flag: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        if not sep:
            raise UsageError(f"{flag} {spec!r}: {part!r} is not KEY=VALUE")
        fields[key.strip().lower()] = value
    return fields


def secrets(
    specs: Iterable[str], env: Mapping[str, str], files: list[Path] | None = None
) -> dict[str, bytes]:
    """``id=NAME[,src=FILE|,env=VAR][,type=file|env]``; with neither ``src`` nor ``env``
    the value comes from the variable named like the id, else the file of that name.
    The files read are appended to ``files`` (the build's inputs, for ``--depfile``)."""
    values: dict[str, bytes] = {}
    for spec in specs:
        fields = _fields(spec, "--secret")
        secret_id = fields.get("id")
        if not secret_id:
            raise UsageError(f"--secret {spec!r}: no id=")
        source = fields.get("src") or fields.get("source")
        variable = fields.get("env")
        kind = fields.get("type")
        if kind == "env" and variable is None:
            variable = source or secret_id
            source = None
        if variable is not None:
            if variable not in env:
                raise UsageError(
                    f"--secret id={secret_id}: environment variable {variable} is not set"
                )
            values[secret_id] = env[variable].encode()
            continue
        if source is None:
            if secret_id in env:
                values[secret_id] = env[secret_id].encode()
                continue
            source = secret_id
        try:
            values[secret_id] = Path(source).expanduser().read_bytes()
            if files is not None:
                files.append(Path(source).expanduser())
        except OSError as error:
            raise UsageError(
                f"--secret id={secret_id}: cannot read {source}: {error.strerror}"
            ) from None
    return values


def source_date_epoch(
    build_args: Mapping[str, str], env: Mapping[str, str] = os.environ
) -> int | None:
    """``SOURCE_DATE_EPOCH`` from the build args or the environment (buildx reads both)."""
    text = build_args.get("SOURCE_DATE_EPOCH") or env.get("SOURCE_DATE_EPOCH")
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"SOURCE_DATE_EPOCH {text!r} is not a number of seconds") from None
    if value < 0:
        raise UsageError(f"SOURCE_DATE_EPOCH {text!r} must not be negative")
    return value
