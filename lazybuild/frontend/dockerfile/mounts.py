"""``RUN --mount=type=...,key=value`` specifications.

The value is CSV (so ``source="a,b"`` may quote a comma). Keys, aliases, defaults and
checks follow the Dockerfile reference for ``RUN --mount``. Values are expanded with the
stage's ARG/ENV before they are interpreted, which is why parsing takes an expander.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, cast

from lazybuild.frontend.dockerfile.suggest import did_you_mean

__all__ = ["MOUNT_TYPES", "MountSpecError", "RunMount", "check_mount_from_literal", "parse_mount"]

MountType = Literal["bind", "cache", "tmpfs", "secret", "ssh"]
Sharing = Literal["shared", "private", "locked"]
MOUNT_TYPES: tuple[str, ...] = ("bind", "cache", "tmpfs", "secret", "ssh")
_SHARING_MODES = ("shared", "private", "locked")
_SIZE_UNITS = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
# Every key BuildKit's frontend knows, in its order: what a mistyped key is matched with.
_MOUNT_KEYS = (
    "type", "from", "source", "target", "readonly", "id", "sharing", "required", "size",
    "mode", "uid", "gid", "src", "dst", "destination", "ro", "rw", "readwrite", "env",
)  # fmt: skip


class MountSpecError(ValueError):
    """A ``--mount`` value that makes no sense; the caller adds the line number."""


@dataclass(frozen=True)
class RunMount:
    """One ``--mount`` of a RUN step, with the reference's defaults filled in.

    ``source`` is a path in ``from_`` (a stage, image or the build context when None)
    for bind mounts and a sub-path of the cache for cache mounts. For secret mounts
    ``id`` names the secret and ``target`` defaults to ``/run/secrets/<id>``; ``env``
    (newer frontends) also exposes it as an environment variable. ssh mounts leave
    ``target`` None: the agent socket path is chosen at run time. ``sharing`` is set
    (default ``shared``) for cache mounts only.
    """

    type: MountType
    target: str | None
    source: str | None = None
    from_: str | None = None
    id: str | None = None
    sharing: Sharing | None = None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    readonly: bool = False
    required: bool = False
    size: int | None = None
    env: str | None = None


def _parse_bool(key: str, value: str | None) -> bool:
    if value is None:
        return True
    lowered = value.lower()
    if lowered in ("1", "t", "true"):
        return True
    if lowered in ("0", "f", "false"):
        return False
    raise MountSpecError(f"invalid value for {key}: {value!r}")


def _parse_int(key: str, value: str, base: int = 10) -> int:
    try:
        return int(value, base)
    except ValueError:
        raise MountSpecError(f"invalid value for {key}: {value!r}") from None


def _parse_size(value: str) -> int:
    text = value.strip().lower()
    if len(text) > 1 and text.endswith("b") and text[-2] in _SIZE_UNITS:
        text = text[:-1]  # "64mb" means "64m"
    unit = text[-1] if text and text[-1] in _SIZE_UNITS else ""
    number = text[: -len(unit)] if unit else text
    try:
        return int(float(number) * _SIZE_UNITS.get(unit, 1))
    except ValueError:
        raise MountSpecError(f"invalid value for size: {value!r}") from None


def check_mount_from_literal(spec: str) -> None:
    """A mount's ``from=`` takes no variables, as in BuildKit (checked as written, before
    expansion): a ``$`` followed by anything is refused."""
    try:
        fields = next(csv.reader([spec]))
    except (csv.Error, StopIteration):
        return  # parse_mount reports it
    for field_text in fields:
        key, sep, value = field_text.partition("=")
        if sep and key.strip().lower() == "from" and "$" in value[:-1]:
            raise MountSpecError(
                "'from' doesn't support variable expansion, define alias stage instead"
            )


def parse_mount(spec: str, expand: Callable[[str], str] = lambda word: word) -> RunMount:
    """Parse one ``--mount`` value; ``expand`` is applied to every value first."""
    try:
        fields = next(csv.reader([spec]))
    except (csv.Error, StopIteration):
        raise MountSpecError(f"invalid mount specification {spec!r}") from None
    values: dict[str, str | None] = {}
    for field_text in fields:
        key, sep, raw_value = field_text.partition("=")
        key = key.strip().lower()
        if not key:
            continue
        values[key] = expand(raw_value) if sep else None
    mount_type = values.pop("type", None) or "bind"
    if mount_type not in MOUNT_TYPES:
        raise MountSpecError(
            did_you_mean(f"unsupported mount type {mount_type!r}", mount_type, MOUNT_TYPES)
        )
    target = source = from_ = mount_id = env = None
    sharing: str | None = None
    mode = uid = gid = size = None
    readonly = mount_type == "bind"
    required = False
    for key, value in values.items():
        if key in ("readonly", "ro"):
            readonly = _parse_bool(key, value)
            continue
        if key in ("readwrite", "rw"):
            readonly = not _parse_bool(key, value)
            continue
        if key == "required":
            required = _parse_bool(key, value)
            continue
        if value is None:
            message = f"unexpected key {key!r} without a value in {spec!r}"
            raise MountSpecError(did_you_mean(message, key, _MOUNT_KEYS))
        if key in ("target", "dst", "destination"):
            target = value
        elif key in ("source", "src"):
            source = value
        elif key == "from":
            from_ = value
        elif key == "id":
            mount_id = value
        elif key == "sharing":
            if value not in _SHARING_MODES:
                message = f"unsupported sharing value {value!r}"
                raise MountSpecError(did_you_mean(message, value, _SHARING_MODES))
            sharing = value
        elif key == "mode":
            mode = _parse_int(key, value, 8)
        elif key == "uid":
            uid = _parse_int(key, value)
        elif key == "gid":
            gid = _parse_int(key, value)
        elif key == "size":
            size = _parse_size(value)
        elif key == "env":
            env = value
        else:
            raise MountSpecError(
                did_you_mean(f"unexpected key {key!r} in {spec!r}", key, _MOUNT_KEYS)
            )
    if "sharing" in values and mount_type != "cache":
        raise MountSpecError(f"invalid cache sharing set for {mount_type} mount")
    if from_ is not None and mount_type in ("secret", "ssh", "tmpfs"):
        raise MountSpecError(f"{mount_type} mount should not have a from")
    if mount_type == "secret":
        if mount_id is None and source is not None:
            mount_id = source
            source = None
        if mount_id is None and target is not None:
            mount_id = target.rstrip("/").rsplit("/", 1)[-1]
        if mount_id is None:
            raise MountSpecError("secret mount needs an id or a target")
        if target is None and env is None:
            target = f"/run/secrets/{mount_id}"
    elif mount_type == "ssh":
        mount_id = mount_id or "default"
    elif target is None:
        raise MountSpecError(f"mount type={mount_type} needs a target")
    if mount_type == "cache":
        sharing = sharing or "shared"
        # BuildKit keys an anonymous cache mount by its target path.
        mount_id = mount_id or target
    return RunMount(
        type=cast(MountType, mount_type),
        target=target,
        source=source,
        from_=from_,
        id=mount_id,
        sharing=cast(Sharing | None, sharing),
        mode=mode,
        uid=uid,
        gid=gid,
        readonly=readonly,
        required=required,
        size=size,
        env=env,
    )
