"""The daemon's configuration: a TOML file (``lazybuild serve --config FILE``) validated
by pydantic, with command-line flags laid over it. Defaults need no file at all.

Every way a configuration can be wrong ends as one ``ConfigError`` line naming where
the value came from (the file, or the command line) and the field, never a traceback.
"""

from __future__ import annotations

import grp
import re
import tomllib
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from lazybuild.daemon.address import Address, parse_address
from lazybuild.errors import UsageError
from lazybuild.state.statedir import default_state_dir

DEFAULT_ADDRESS = "unix:///run/lazybuild/lazybuild.sock"

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"(\d+)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)
_DURATION_PART = re.compile(r"(\d+)([smhdw])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class ConfigError(UsageError):
    """A configuration that cannot be used; the message is the one line to show."""


def _byte_size(value: object) -> object:
    """``10737418240``, ``"10GiB"``, ``"512 MB"`` (binary units either way) → bytes."""
    if isinstance(value, str):
        match = _SIZE.fullmatch(value.strip())
        if match is None:
            raise ValueError(f"{value!r} is not a size (e.g. 10737418240, 512MiB, 10GiB)")
        return int(match.group(1)) * _UNITS[match.group(2).lower()]
    return value


def _duration(value: object) -> object:
    """Seconds, or ``"7d"``, ``"36h"``, ``"1h30m"`` → a ``timedelta``."""
    if isinstance(value, str):
        text = value.strip().lower()
        parts = _DURATION_PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"{value!r} is not a duration (e.g. 3600, 90m, 36h, 7d)")
        return timedelta(seconds=sum(int(n) * _SECONDS[u] for n, u in parts))
    if isinstance(value, int) and not isinstance(value, bool):
        return timedelta(seconds=value)
    return value


ByteSize = Annotated[int, BeforeValidator(_byte_size), Field(ge=0)]
Duration = Annotated[timedelta, BeforeValidator(_duration)]


class _Section(BaseModel):
    # Unknown keys are refused: a misspelt key silently ignored is a policy not applied.
    model_config = ConfigDict(extra="forbid", frozen=True)


class TLSConfig(_Section):
    """Mutual TLS for TCP addresses: the daemon's certificate and key, and the CA that
    client certificates must chain to (a client without one is refused)."""

    cert: Path
    key: Path
    ca: Path

    @field_validator("cert", "key", "ca")
    @classmethod
    def _readable(cls, path: Path) -> Path:
        if not path.is_file():
            raise ValueError(f"{path} is not a file")
        return path


class GCPolicy(_Section):
    """What garbage collection keeps: ``keep_bytes`` of cache at most, and nothing
    unused for longer than ``keep_duration``; either may be left unset (no bound)."""

    keep_bytes: ByteSize | None = None
    keep_duration: Duration | None = None

    @field_validator("keep_duration")
    @classmethod
    def _positive(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value <= timedelta(0):
            raise ValueError("must be longer than 0s")
        return value


def _address(value: object) -> object:
    return parse_address(value) if isinstance(value, str) else value


class DaemonConfig(_Section):
    addresses: Annotated[
        tuple[Annotated[str, BeforeValidator(_address)], ...], Field(min_length=1)
    ] = (DEFAULT_ADDRESS,)
    tls: TLSConfig | None = None
    state_dir: Path = Field(default_factory=default_state_dir)
    # Bound of the chunk cache (bytes); None: the chunk cache's own default.
    cache_size: ByteSize | None = None
    gc: GCPolicy = GCPolicy()
    max_parallel_builds: Annotated[int, Field(ge=1, le=256)] = 4
    # The largest build context (the tar a client sends) the daemon takes.
    max_context_size: ByteSize = 8 << 30
    insecure_registries: tuple[str, ...] = ()
    # Registry credentials for pulls and pushes (a docker config.json); None: as the
    # CLI finds them ($DOCKER_CONFIG, else ~/.docker of the daemon's user).
    docker_config: Path | None = None
    # The group that may use the unix socket (mode 0660); None: root's group only.
    socket_group: str | int | None = None

    @field_validator("state_dir")
    @classmethod
    def _absolute(cls, path: Path) -> Path:
        if not path.is_absolute():
            raise ValueError(f"{path} is not an absolute path")
        return path

    @field_validator("socket_group")
    @classmethod
    def _known_group(cls, group: str | int | None) -> str | int | None:
        if isinstance(group, str) and group.isdigit():
            return int(group)  # a gid, as the command line spells one
        if isinstance(group, str):
            try:
                grp.getgrnam(group)
            except KeyError:
                raise ValueError(f"no group named {group!r}") from None
        return group

    @model_validator(mode="after")
    def _tcp_needs_mutual_tls(self) -> Self:
        tcp = self.unix_and_tcp()[1]
        if tcp and self.tls is None:
            raise ValueError(
                f"{tcp[0]} needs tls.cert, tls.key and tls.ca: TCP is served with mutual TLS only"
            )
        return self

    def unix_and_tcp(self) -> tuple[list[Address], list[Address]]:
        addresses = [Address(a) for a in self.addresses]
        return [a for a in addresses if a.is_unix], [a for a in addresses if not a.is_unix]

    @property
    def socket_gid(self) -> int | None:
        if self.socket_group is None:
            return None
        if isinstance(self.socket_group, int):
            return self.socket_group
        return grp.getgrnam(self.socket_group).gr_gid


def load_config(path: Path | None, overrides: Mapping[str, Any] | None = None) -> DaemonConfig:
    """The configuration in ``path`` (defaults when None) with ``overrides`` (from the
    command line; keys as in the file, None values ignored) laid over its top level."""
    where = str(path) if path is not None else "configuration"
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with path.open("rb") as file:
                data = tomllib.load(file)
        except OSError as error:
            raise ConfigError(f"{path}: cannot read: {error.strerror or error}") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: not valid TOML: {error}") from None
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if given:
        where = f"{where} with the command line" if path is not None else "command line"
    merged = {**data, **given}
    if "tls" in given and isinstance(data.get("tls"), dict):
        merged["tls"] = {**data["tls"], **given["tls"]}
    try:
        return DaemonConfig.model_validate(merged)
    except ValidationError as error:
        raise ConfigError(f"{where}: {_first_problem(error)}") from None


def _first_problem(error: ValidationError) -> str:
    """The first failure as ``field.sub: why`` (pydantic's own report is many lines)."""
    problem = error.errors(include_url=False)[0]
    location = "".join(
        f"[{part}]" if isinstance(part, int) else f".{part}" for part in problem["loc"]
    ).removeprefix(".")
    message = str(problem["msg"]).removeprefix("Value error, ")
    if problem["type"] == "extra_forbidden":
        message = "unknown key"
    return f"{location}: {message}" if location else message
