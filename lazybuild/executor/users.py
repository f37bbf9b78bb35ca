"""Docker's USER rules: which uid, gid and groups a container process runs as.

Names are looked up in the image's /etc/passwd and /etc/group, never the host's.
Numeric ids need no entry. Supplementary groups come from /etc/group, and only when
the group was not given explicitly (as in Docker and runc's libcontainer/user).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lazybuild.errors import UsageError
from lazybuild.executor.rootpath import resolve_in_root

# uid_t is 32 bits, but -1 means "unchanged" to the kernel; Docker allows 0..2^31-1.
_MAX_ID = 2**31 - 1


@dataclass(frozen=True)
class ResolvedUser:
    uid: int
    gid: int
    additional_gids: tuple[int, ...]
    home: str
    name: str


@dataclass(frozen=True)
class _PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True)
class _GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


def resolve_user(rootfs: Path, user: str) -> ResolvedUser:
    """Resolve "", "name", "uid", "name:group", "uid:gid" (and mixes) against `rootfs`."""
    user_part, _, group_part = user.partition(":")
    passwd = list(_read_passwd(rootfs))
    # "" means uid 0, looked up like "0" so root's home and groups come from the image.
    user_id = _parse_id(user_part or "0", "uid")
    entry = next(
        (e for e in passwd if (e.uid == user_id if user_id is not None else e.name == user_part)),
        None,
    )
    if entry is None:
        if user_id is None:
            raise UsageError(f"unable to find user {user_part}: no matching entries in passwd file")
        uid, gid, home, name = user_id, 0, "/", user_part or "root"
    else:
        uid, gid, home, name = entry.uid, entry.gid, entry.home or "/", entry.name
    groups = list(_read_group(rootfs))
    if group_part:
        return ResolvedUser(uid, _resolve_group(groups, group_part), (), home, name)
    supplementary: tuple[int, ...] = ()
    if entry is not None:
        supplementary = tuple(dict.fromkeys(g.gid for g in groups if entry.name in g.members))
    return ResolvedUser(uid, gid, supplementary, home, name)


def _resolve_group(groups: list[_GroupEntry], group: str) -> int:
    group_id = _parse_id(group, "gid")
    for entry in groups:
        if (entry.gid == group_id) if group_id is not None else (entry.name == group):
            return entry.gid
    if group_id is None:
        raise UsageError(f"unable to find group {group}: no matching entries in group file")
    return group_id


def _parse_id(text: str, kind: str) -> int | None:
    """The id if `text` is numeric, None if it is a name."""
    if not text.isdecimal() and not (text.startswith("-") and text[1:].isdecimal()):
        return None
    value = int(text)
    if not 0 <= value <= _MAX_ID:
        raise UsageError(f"{kind} {text} out of range: uids and gids must be in 0-{_MAX_ID}")
    return value


def _lines(rootfs: Path, path: str) -> Iterator[list[str]]:
    """Colon-separated fields of a passwd-style file; a missing file has no entries."""
    try:
        text = resolve_in_root(rootfs, path).read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if line and not line.startswith("#"):
            yield line.split(":")


def _int_field(fields: list[str], index: int) -> int | None:
    try:
        return int(fields[index])
    except (IndexError, ValueError):
        return None


def _read_passwd(rootfs: Path) -> Iterator[_PasswdEntry]:
    for fields in _lines(rootfs, "/etc/passwd"):
        uid, gid = _int_field(fields, 2), _int_field(fields, 3)
        if uid is None or gid is None:  # NIS "+" lines and damage: not a user
            continue
        home = fields[5] if len(fields) > 5 else ""
        yield _PasswdEntry(fields[0], uid, gid, home)


def _read_group(rootfs: Path) -> Iterator[_GroupEntry]:
    for fields in _lines(rootfs, "/etc/group"):
        gid = _int_field(fields, 2)
        if gid is None:
            continue
        members = fields[3].split(",") if len(fields) > 3 and fields[3] else []
        yield _GroupEntry(fields[0], gid, tuple(m.strip() for m in members))
