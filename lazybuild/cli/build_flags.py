"""``lazybuild build`` flag values as ``docker buildx build`` spells them."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lazybuild.errors import UsageError

if TYPE_CHECKING:
    from lazybuild.executor.spec import Ulimit


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


def extra_hosts(items: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """``--add-host HOST:IP`` (or buildx's ``HOST=IP``) → (name, address) pairs in order.

    The address is checked as Docker checks it: an IPv4 or IPv6 address, the latter
    optionally in brackets. Docker's ``host-gateway`` names the bridge's gateway, which
    lazybuild has no bridge for."""
    import ipaddress

    hosts: list[tuple[str, str]] = []
    for item in items:
        # "=" first: an IPv6 address is full of colons (Docker's rule).
        name, sep, address = item.partition("=")
        if not sep:
            name, sep, address = item.partition(":")
        if not sep or not name or not address:
            raise UsageError(f"--add-host {item!r}: expected HOST:IP (or HOST=IP)")
        if any(c.isspace() or c == "#" for c in name):
            raise UsageError(f"--add-host {item!r}: {name!r} is not a host name")
        if address == "host-gateway":
            raise UsageError(
                f"--add-host {item!r}: host-gateway is not supported (RUN steps use the "
                "host's network: name 127.0.0.1 instead)"
            )
        bare = address[1:-1] if address.startswith("[") and address.endswith("]") else address
        try:
            ipaddress.ip_address(bare)
        except ValueError:
            raise UsageError(f"--add-host {item!r}: {address!r} is not an IP address") from None
        hosts.append((name, bare))
    return tuple(hosts)


_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def shm_size(text: str | None) -> int | None:
    """``--shm-size`` as Docker reads it (``67108864``, ``64m``, ``1g``, ``1.5GiB``:
    binary units); None or 0 keeps the default of 64 MiB."""
    import re

    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if match is None:
        raise UsageError(f"--shm-size {text!r}: not a size (e.g. 67108864, 64m, 1g)")
    value = int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    return value or None


# Docker's --ulimit names (go-units), each the RLIMIT_ of its upper-case name.
ULIMIT_NAMES = frozenset(
    (
        "core",
        "cpu",
        "data",
        "fsize",
        "locks",
        "memlock",
        "msgqueue",
        "nice",
        "nofile",
        "nproc",
        "rss",
        "rtprio",
        "rttime",
        "sigpending",
        "stack",
    )
)


def ulimits(items: Iterable[str]) -> tuple[Ulimit, ...]:
    """``--ulimit NAME=SOFT[:HARD]`` (HARD defaults to SOFT, -1 is unlimited); a name
    given twice keeps its last value, as Docker's option map does."""
    from lazybuild.executor.spec import Ulimit

    limits: dict[str, Ulimit] = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep:
            raise UsageError(f"--ulimit {item!r}: expected TYPE=SOFT[:HARD], e.g. nofile=1024:2048")
        if name not in ULIMIT_NAMES:
            raise UsageError(f"--ulimit {item!r}: invalid ulimit type {name!r}")
        soft_text, colon, hard_text = values.partition(":")
        try:
            soft = int(soft_text)
            hard = int(hard_text) if colon else soft
        except ValueError:
            raise UsageError(f"--ulimit {item!r}: limits must be integers") from None
        if soft < -1 or hard < -1:
            raise UsageError(f"--ulimit {item!r}: limits must be -1 (unlimited) or more")
        if _unlimited(soft) > _unlimited(hard):
            raise UsageError(
                f"--ulimit {item!r}: the soft limit must be less than or equal to the hard limit"
            )
        limits[name] = Ulimit(name, soft, hard)
    return tuple(limits.values())


def _unlimited(value: int) -> float:
    return float("inf") if value == -1 else value


ENTITLEMENTS = ("network.host", "security.insecure")


def entitlements(items: Iterable[str]) -> tuple[str, ...]:
    """``--allow`` values, checked (buildx's ``invalid entitlement`` for others); a
    comma-separated list counts as several, as buildx splits it."""
    allowed: list[str] = []
    for item in items:
        for part in item.split(","):
            value = part.strip()
            if value not in ENTITLEMENTS:
                raise UsageError(
                    f"--allow {value!r}: invalid entitlement (expected one of "
                    f"{', '.join(ENTITLEMENTS)})"
                )
            if value not in allowed:
                allowed.append(value)
    return tuple(allowed)


def progress_mode(flag: str | None, env: Mapping[str, str]) -> str:
    """``--progress``, else ``BUILDKIT_PROGRESS`` (buildx's default), else ``auto``;
    a bad value from the environment is named as such."""
    from lazybuild.progress.modes import MODES

    if flag is not None:
        return flag
    value = env.get("BUILDKIT_PROGRESS", "")
    if not value:
        return "auto"
    if value not in MODES:
        raise UsageError(
            f"BUILDKIT_PROGRESS={value!r}: invalid progress mode (expected one of "
            f"{', '.join(MODES)})"
        )
    return value


def stage_names(items: Iterable[str]) -> tuple[str, ...]:
    """``--no-cache-filter`` values: stage names, each flag possibly a comma-separated
    list (buildx splits them so)."""
    names: list[str] = []
    for item in items:
        for part in item.split(","):
            if name := part.strip():
                names.append(name)
    return tuple(names)


# buildx's annotation levels; lazybuild writes one manifest per image (and an index
# only around a workload record), so only the manifest's can be honoured.
_ANNOTATION_LEVELS = ("manifest", "index", "manifest-descriptor", "index-descriptor")


def manifest_annotations(items: Iterable[str]) -> dict[str, str]:
    """``--annotation [TYPE:]KEY=VALUE`` → the manifest's annotations. As buildx, no
    type means the manifest; ``index:`` and the descriptor levels (and a platform in
    brackets) are refused in one line rather than dropped."""
    values: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--annotation {item!r}: expected [TYPE:]KEY=VALUE")
        level, colon, rest = key.partition(":")
        level_name = level.partition("[")[0]
        if colon and level_name in _ANNOTATION_LEVELS:
            if level != "manifest":
                raise UsageError(
                    f"--annotation {item!r}: only manifest annotations are supported (not {level})"
                )
            key = rest
            if not key:
                raise UsageError(f"--annotation {item!r}: expected [TYPE:]KEY=VALUE")
        values[key] = value
    return values


@dataclass(frozen=True)
class SshSource:
    """One ``--ssh`` value, resolved: an agent ``socket`` to forward, or ``keys`` (files)
    to load into a private agent of the build's own."""

    id: str
    socket: Path | None = None
    keys: tuple[Path, ...] = ()


def ssh_sources(items: Iterable[str], env: Mapping[str, str]) -> tuple[SshSource, ...]:
    """``--ssh default|ID[=SOCKET|KEY[,KEY...]]`` as buildx reads it: without paths, the
    agent of ``$SSH_AUTH_SOCK``; one path that is a socket, that agent; else key files.
    Every path is looked at here, so a wrong one fails before the build starts."""
    import stat

    found: dict[str, SshSource] = {}
    for item in items:
        agent_id, sep, paths_text = item.partition("=")
        agent_id = agent_id.strip()
        if not agent_id:
            raise UsageError(f"--ssh {item!r}: expected default or ID[=SOCKET|KEY[,KEY]]")
        if agent_id in found:
            raise UsageError(f"--ssh: invalid duplicate ID {agent_id}")
        paths = [path for path in paths_text.split(",") if path] if sep else []
        if not paths:
            socket = env.get("SSH_AUTH_SOCK", "")
            if not socket:
                raise UsageError(
                    f"--ssh {agent_id}: invalid empty ssh agent socket: make sure "
                    "SSH_AUTH_SOCK is set"
                )
            paths = [socket]
        sockets: list[Path] = []
        keys: list[Path] = []
        for text in paths:
            path = Path(text).expanduser()
            try:
                mode = path.stat().st_mode
            except OSError as error:
                raise UsageError(f"--ssh {agent_id}: {text}: {error.strerror}") from None
            if stat.S_ISSOCK(mode):
                sockets.append(path.absolute())
            elif stat.S_ISREG(mode):
                keys.append(path.absolute())
            else:
                raise UsageError(f"--ssh {agent_id}: {text} is neither a socket nor a key file")
        if sockets and (keys or len(sockets) > 1):
            raise UsageError(
                f"--ssh {agent_id}: one agent socket, or key files, not both (or two sockets)"
            )
        found[agent_id] = SshSource(
            agent_id, socket=sockets[0] if sockets else None, keys=tuple(keys)
        )
    return tuple(found.values())
