"""The graph's file actions (``Copy``, ``Mkdir``, ``Mkfile``, ``Rm``) done on a root
filesystem on the host, with the semantics of BuildKit's FileOp (tonistiigi/fsutil's
``copy``) and so of Dockerfile ``COPY``/``ADD``/``WORKDIR``.

Containment: every path, in the destination and in each source, resolves inside its
root the way the container would see it (``lazybuild.executor.rootpath``): an absolute
symlink counts from the root and ``..`` stops there. Below the path an action names,
nothing is followed: copied trees are walked with ``lstat``, entries are created with
``O_EXCL``/``O_NOFOLLOW`` or replace what was there, and a destination directory that
turns out to be a symlink is an error rather than a way out.

Copy, as fsutil does it:

* ``src`` may hold wildcards (Go ``filepath.Match``, any component) with
  ``allow_wildcard``; no match is an error unless ``allow_empty_wildcard``. A literal
  ``src`` that does not exist is an error. ``follow_symlinks`` follows the last
  component of ``src`` (earlier ones always are).
* The destination: ``dest`` ending in ``/`` (or ``/.``) names a directory, created if
  needed; a file goes into an existing directory, or becomes ``dest`` exactly. A
  directory is copied as itself (into ``dest`` when that exists) or, with
  ``dir_copy_contents``, its entries merge into ``dest``. Several wildcard matches
  always go into ``dest`` as a directory. Missing parents are made 0755, owned by the
  ``chown`` owner when there is one, so ``create_dest_path`` only decides whether a
  missing parent of ``dest`` is an error first.
* Entries keep type, mode, owner, mtime (nanoseconds) and xattrs; hard links between
  copied files stay links; devices, fifos and sockets are recreated. ``chown`` and
  ``chmod`` (octal, or symbolic as chmod(1) without umask) apply to every copied entry,
  ``timestamp`` (seconds since the epoch) becomes every copied entry's and every made
  directory's atime and mtime.
* Copying a file onto a directory, or a directory onto a non-directory, is an error
  unless ``always_replace_existing``; directories merge. Below the top of a copy an
  existing directory takes the source directory's metadata; the top keeps its own mode
  and owner and takes the source's times.
* ``include_patterns``/``exclude_patterns`` are .dockerignore patterns relative to a
  copied directory; directories left out are still made when something below them is
  taken. Exclusions also apply to wildcard matches, relative to the wildcard's base.
* ``required_paths`` must exist in the source, whatever the patterns select
  (``COPY --parents`` names a path through an include pattern).
* ``attempt_unpack_docker_compatibility`` (``ADD``): a source file that is a tar archive
  is extracted into ``dest`` instead (see ``lazybuild.worker.archive``).

Mkdir with ``make_parents`` makes every missing directory with ``mode``, owner and
timestamp and is a no-op on an existing directory. Mkfile writes ``data`` (truncating an
existing file) and sets ``mode`` exactly. Rm removes recursively, never following the
last component. Modes are applied exactly, whatever the process umask.

Blocking code: the worker runs it in a thread.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import functools
import os
import posixpath
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from lazybuild.context.dockerignore import DockerIgnore, IgnorePattern
from lazybuild.context.listing import _go_match_regex as go_match_regex
from lazybuild.errors import LazybuildError, UsageError
from lazybuild.executor.errors import ContainerError
from lazybuild.executor.rootpath import resolve_in_root
from lazybuild.executor.users import resolve_user
from lazybuild.graph.ops import ChownOpt, Copy, FileAction, Mkdir, Mkfile, Rm
from lazybuild.untar.extract import set_xattr
from lazybuild.worker.archive import ArchiveError, extract_tar, is_tar_archive

__all__ = ["FileActionError", "Owner", "apply_actions", "resolve_owner"]

_MAX_ID = 2**31 - 1  # uid_t is 32 bits, and -1 means "unchanged" to the kernel
_NS_PER_SECOND = 1_000_000_000
_DEFAULT_DIR_MODE = 0o755
_SENDFILE_CHUNK = 1 << 30
_COPY_BLOCK = 1 << 20


class FileActionError(LazybuildError):
    """A file action that cannot be done as asked: a missing source, a bad name or mode,
    a destination in the way."""


# -- owners ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Owner:
    """A resolved numeric owner."""

    uid: int
    gid: int


def resolve_owner(chown: ChownOpt | None, dest_root: Path) -> Owner | None:
    """The numeric owner ``chown`` names; names are looked up in ``dest_root``'s
    ``/etc/passwd`` and ``/etc/group`` (symlinks resolved inside ``dest_root``).

    As BuildKit: a numeric user alone means the same number as group, a user name
    alone that user's primary group; an empty user is root. Unknown names are errors.
    """
    if chown is None:
        return None
    uid, primary_gid = _user_ids(chown.user or "0", dest_root)
    gid = primary_gid if not chown.group else _group_id(chown.group, dest_root)
    return Owner(uid, gid)


def _numeric_id(text: str, kind: str) -> int | None:
    """The id when ``text`` is a number, None when it is a name."""
    if not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    if value > _MAX_ID:
        raise FileActionError(f"chown: {kind} {text} is out of range (0-{_MAX_ID})")
    return value


def _user_ids(user: str, dest_root: Path) -> tuple[int, int]:
    number = _numeric_id(user, "uid")
    if number is not None:
        return number, number
    try:
        entry = resolve_user(dest_root, user)
    except UsageError:
        raise FileActionError(f"chown: user {user!r} not found in /etc/passwd") from None
    return entry.uid, entry.gid


def _group_id(group: str, dest_root: Path) -> int:
    number = _numeric_id(group, "gid")
    if number is not None:
        return number
    try:
        # USER's rules with user 0 (which needs no entry) leave only the group to look up.
        return resolve_user(dest_root, f"0:{group}").gid
    except UsageError:
        raise FileActionError(f"chown: group {group!r} not found in /etc/group") from None


# -- paths -------------------------------------------------------------------------------


def _clean(path: str) -> str:
    """``path`` as an absolute, lexically clean container path (``..`` stops at ``/``)."""
    return posixpath.normpath("/" + path.lstrip("/"))


def _names_directory(path: str) -> bool:
    """True for a destination that says "into this directory" (``dir/``, ``dir/.``)."""
    return path in ("", ".") or path.endswith(("/", "/."))


def _in_root(root: Path, path: str) -> Path:
    try:
        return resolve_in_root(root, path)
    except ContainerError:
        raise FileActionError(f"{path}: too many levels of symbolic links") from None


def _resolve(root: Path, path: str, *, follow_last: bool) -> Path:
    """The host path of container ``path`` in ``root``, symlinks resolved inside ``root``.

    Without ``follow_last`` a symlink in the last component is the result itself.
    """
    cleaned = _clean(path)
    if follow_last or cleaned == "/":
        return _in_root(root, cleaned)
    parent, name = posixpath.split(cleaned)
    return _in_root(root, parent) / name


def _container_path(root: Path, host: Path) -> str:
    relative = host.relative_to(root).as_posix()
    return "/" if relative == "." else f"/{relative}"


def _is_within(path: Path, directory: Path) -> bool:
    real_directory = os.path.realpath(directory)
    real_path = os.path.realpath(path)
    return os.path.commonpath([real_path, real_directory]) == real_directory


# -- wildcards ---------------------------------------------------------------------------


def _has_wildcard(path: str) -> bool:
    """Go's ``containsWildcards``: ``*``, ``?`` or ``[`` not escaped by a backslash."""
    escaped = False
    for char in path:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in "*?[":
            return True
    return False


@functools.lru_cache(maxsize=256)
def _component_regex(component: str) -> re.Pattern[str]:
    try:
        return go_match_regex(component)
    except LazybuildError as error:
        raise FileActionError(str(error)) from None


def _glob(root: Path, pattern: str, *, follow_base: bool) -> tuple[str, list[str]]:
    """The wildcard's base directory and the container paths in ``root`` matching it.

    As fsutil: the components before the first wildcard resolve like any path (the last
    of them followed only with ``follow_base``); below, matching walks real directories
    only, so a symlink can match but is never entered. Matches are sorted and named by
    where they are, below the resolved base.
    """
    parts = [part for part in _clean(pattern).split("/") if part]
    # Cleaning can leave no wildcard ("/a*/../b"): then the path matches itself, if it exists.
    first = next((i for i, part in enumerate(parts) if _has_wildcard(part)), len(parts))
    base = _resolve(root, "/" + "/".join(parts[:first]), follow_last=follow_base)
    matches = [base] if os.path.lexists(base) else []
    for component in parts[first:]:
        regex = _component_regex(component)
        matches = [child for parent in matches for child in _matching_children(parent, regex)]
    return _container_path(root, base), [_container_path(root, match) for match in matches]


def _matching_children(directory: Path, regex: re.Pattern[str]) -> list[Path]:
    try:
        if not stat.S_ISDIR(os.lstat(directory).st_mode):
            return []
        names = sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [directory / name for name in names if regex.fullmatch(name)]


# -- chmod -------------------------------------------------------------------------------


class ModeChange(Protocol):
    """What ``--chmod`` makes of an entry's permission bits (``is_dir``: a directory)."""

    def __call__(self, bits: int, *, is_dir: bool) -> int: ...


_OCTAL_MODE = re.compile(r"[0-7]{1,4}")
_SYMBOLIC_CLAUSE = re.compile(r"([ugoa]*)((?:[-+=][rwxXst]*)+)")
_SYMBOLIC_ACTION = re.compile(r"([-+=])([rwxXst]*)")
# Which bits each "who" letter may touch (set-id and sticky bits included).
_WHO_BITS = {"u": 0o4700, "g": 0o2070, "o": 0o1007, "a": 0o7777}
_PERMISSION_BITS = {"r": 0o444, "w": 0o222, "x": 0o111, "s": 0o6000, "t": 0o1000}

_SymbolicClause = tuple[int, tuple[tuple[str, str], ...]]


def _parse_chmod(text: str | None) -> ModeChange | None:
    """``COPY --chmod``: octal (``755``, ``4755``) or symbolic (``u+x,go-w``) as chmod(1).

    A symbolic clause without ``ugoa`` means all of them, without a umask (BuildKit's
    ``ParseWithUmask(mode, 0)``); ``X`` adds execute to directories and to files that
    already have some.
    """
    if text is None:
        return None
    if _OCTAL_MODE.fullmatch(text):
        fixed = int(text, 8)

        def octal(bits: int, *, is_dir: bool) -> int:  # the same for every entry
            return fixed

        return octal
    clauses: list[_SymbolicClause] = []
    for clause in text.split(","):
        match = _SYMBOLIC_CLAUSE.fullmatch(clause)
        if match is None:
            raise FileActionError(
                f"invalid chmod {text!r}: expected an octal mode such as 755 "
                "or a symbolic one such as u+x,go-w"
            )
        who = functools.reduce(lambda acc, letter: acc | _WHO_BITS[letter], match[1] or "a", 0)
        clauses.append((who, tuple(_SYMBOLIC_ACTION.findall(match[2]))))
    return functools.partial(_apply_symbolic_mode, tuple(clauses))


def _apply_symbolic_mode(clauses: tuple[_SymbolicClause, ...], bits: int, *, is_dir: bool) -> int:
    for who, actions in clauses:
        for operator, letters in actions:
            change = _permission_bits(letters, bits, is_dir=is_dir) & who
            if operator == "+":
                bits |= change
            elif operator == "-":
                bits &= ~change
            else:
                bits = (bits & ~who) | change
    return bits


def _permission_bits(letters: str, bits: int, *, is_dir: bool) -> int:
    value = 0
    for letter in letters:
        if letter != "X":
            value |= _PERMISSION_BITS[letter]
        elif is_dir or bits & 0o111:
            value |= 0o111
    return value


# -- include / exclude -------------------------------------------------------------------


class _Verdict(enum.Enum):
    TAKE = "take"  # copy it (a directory: make it, then judge its entries)
    DESCEND = "descend"  # a directory not taken itself, though something below may be
    SKIP = "skip"


@functools.lru_cache(maxsize=256)
def _component_pattern(component: str) -> IgnorePattern:
    return IgnorePattern.compile(component, exception=False)


def _may_match_below(pattern: IgnorePattern, directory: list[str]) -> bool:
    """Whether ``pattern`` may match something below the ``directory`` components."""
    components = pattern.pattern.split("/")
    if any("**" in component for component in components[: len(directory) + 1]):
        return True
    if len(components) <= len(directory):
        return False
    return all(
        _component_pattern(component).matches(name)
        for component, name in zip(components, directory, strict=False)
    )


class _Selection:
    """Which entries below a copied directory are taken: ``include`` and ``exclude``
    patterns (relative to that directory) matched as .dockerignore matches them, so a
    pattern naming a directory covers everything below it and ``!`` makes exceptions."""

    def __init__(self, include: Sequence[str], exclude: Sequence[str]) -> None:
        self._include = DockerIgnore(include) if include else None
        self._exclude = DockerIgnore(exclude) if exclude else None

    def is_excluded(self, path: str) -> bool:
        return self._exclude is not None and self._exclude.is_excluded(path)

    def verdict(self, path: str, *, is_dir: bool) -> _Verdict:
        excluded = self.is_excluded(path)
        included = self._include is None or self._include.is_excluded(path)
        if included and not excluded:
            return _Verdict.TAKE
        if not is_dir:
            return _Verdict.SKIP
        exclusion_may_lift = not excluded or (
            self._exclude is not None and self._exclude.may_include_below(path)
        )
        inclusion_may_come = included or self._include_may_match_below(path)
        return _Verdict.DESCEND if exclusion_may_lift and inclusion_may_come else _Verdict.SKIP

    def _include_may_match_below(self, directory: str) -> bool:
        if self._include is None:
            return True
        parts = directory.split("/")
        return any(
            _may_match_below(pattern, parts)
            for pattern in self._include.patterns
            if not pattern.exception
        )


# -- making directories ------------------------------------------------------------------


def _make_dirs(
    root: Path, path: Path, *, mode: int, owner: Owner | None, mtime_ns: int | None
) -> list[Path]:
    """``mkdir -p`` of host ``path`` inside ``root``; returns the directories made.

    They get exactly ``mode``, ``owner`` (else the worker's own: root) and, when given,
    ``mtime_ns``. An existing non-directory on the way is an error; nothing at or above
    ``root`` is ever made.
    """
    if root not in path.parents:
        return []
    missing: list[Path] = []
    current = path
    while current != root and not os.path.lexists(current):
        missing.append(current)
        current = current.parent
    if not stat.S_ISDIR(os.lstat(current).st_mode):
        raise FileActionError(f"{_container_path(root, current)} exists and is not a directory")
    for directory in reversed(missing):
        directory.mkdir(mode=0o700)
        if owner is not None:
            os.lchown(directory, owner.uid, owner.gid)
        os.chmod(directory, mode)
    _set_times(missing, mtime_ns)
    return missing


def _set_times(paths: Sequence[Path], mtime_ns: int | None) -> None:
    if mtime_ns is None:
        return
    for path in paths:
        os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)


# -- copying trees -----------------------------------------------------------------------


@dataclass(frozen=True)
class _CopySettings:
    owner: Owner | None
    chmod: ModeChange | None
    mtime_ns: int | None
    replace_existing: bool
    selection: _Selection


class _TreeCopier:
    """Copies entries into ``dest_root`` like ``cp -a``, with one Copy's options.

    One per action, so hard links between any of its sources stay links.
    """

    def __init__(self, dest_root: Path, settings: _CopySettings) -> None:
        self._root = dest_root
        self._settings = settings
        self._copies: dict[tuple[int, int], Path] = {}  # source inode -> its first copy
        self._pending: list[Path] = []  # directories to make once something below is taken

    def copy(self, src: Path, dst: Path) -> None:
        """Copy ``src`` (never followed) to ``dst``; a directory merges into an existing
        one, whose mode and owner stay as they were (fsutil's top of a copy)."""
        st = os.lstat(src)
        if not stat.S_ISDIR(st.st_mode):
            self._copy_leaf(src, dst, st)
            return
        created = self._make_dir(dst)
        self._copy_entries(src, dst, "")
        if created:
            self._apply_metadata(src, dst, st)
        else:
            os.utime(dst, ns=self._times(st), follow_symlinks=False)

    def _copy_entries(self, src_dir: Path, dst_dir: Path, rel_dir: str) -> None:
        for name in sorted(os.listdir(src_dir)):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            src, dst = src_dir / name, dst_dir / name
            st = os.lstat(src)
            is_dir = stat.S_ISDIR(st.st_mode)
            verdict = self._settings.selection.verdict(rel, is_dir=is_dir)
            if verdict is _Verdict.SKIP:
                continue
            if is_dir:
                self._copy_subdir(src, dst, rel, st, take=verdict is _Verdict.TAKE)
            else:
                self._make_pending_dirs()
                self._copy_leaf(src, dst, st)

    def _copy_subdir(
        self, src: Path, dst: Path, rel: str, st: os.stat_result, *, take: bool
    ) -> None:
        depth = len(self._pending)
        self._pending.append(dst)
        if take:
            self._make_pending_dirs()
        self._copy_entries(src, dst, rel)
        if len(self._pending) > depth:
            self._pending.pop()  # nothing below was taken: the directory is not wanted
            return
        # Set last: filling a directory changes its mtime, and its mode may forbid writing.
        # Below the top, an existing directory takes the source's metadata too (fsutil).
        self._apply_metadata(src, dst, st)

    def _make_pending_dirs(self) -> None:
        for directory in self._pending:
            self._make_dir(directory)
        self._pending.clear()

    def _make_dir(self, dst: Path) -> bool:
        """Make sure ``dst`` is a real directory; True when it had to be made."""
        try:
            mode = os.lstat(dst).st_mode
        except FileNotFoundError:
            dst.mkdir(mode=0o700)  # its own mode is set once its entries are in
            return True
        if stat.S_ISDIR(mode):
            return False
        if not self._settings.replace_existing:
            raise FileActionError(
                f"cannot copy a directory to {_container_path(self._root, dst)}: "
                "a non-directory is in the way"
            )
        os.unlink(dst)
        dst.mkdir(mode=0o700)
        return True

    def _copy_leaf(self, src: Path, dst: Path, st: os.stat_result) -> None:
        self._clear_for_leaf(dst)
        kind = stat.S_IFMT(st.st_mode)
        if kind == stat.S_IFREG:
            if self._link_to_earlier_copy(dst, st):
                return  # same inode: its metadata is already set
            _copy_file_data(src, dst)
            if st.st_nlink > 1:
                self._copies[(st.st_dev, st.st_ino)] = dst
        elif kind == stat.S_IFLNK:
            os.symlink(os.readlink(src), dst)
        else:  # fifo, socket, character or block device
            os.mknod(dst, kind | 0o600, st.st_rdev)
        self._apply_metadata(src, dst, st)

    def _link_to_earlier_copy(self, dst: Path, st: os.stat_result) -> bool:
        earlier = self._copies.get((st.st_dev, st.st_ino)) if st.st_nlink > 1 else None
        if earlier is None:
            return False
        os.link(earlier, dst, follow_symlinks=False)
        return True

    def _clear_for_leaf(self, dst: Path) -> None:
        """Make room for a non-directory: a file or symlink there is replaced, a directory
        only with ``always_replace_existing`` (BuildKit refuses otherwise)."""
        try:
            mode = os.lstat(dst).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(mode):
            os.unlink(dst)
        elif self._settings.replace_existing:
            shutil.rmtree(dst)
        else:
            raise FileActionError(
                f"cannot replace directory {_container_path(self._root, dst)} with a file"
            )

    def _apply_metadata(self, src: Path, dst: Path, st: os.stat_result) -> None:
        """Owner, mode, xattrs, times, in the order that keeps each: chown clears set-id
        bits and file capabilities, so it goes first; times go last."""
        owner = self._settings.owner
        _lchown(dst, *((owner.uid, owner.gid) if owner else (st.st_uid, st.st_gid)))
        if not stat.S_ISLNK(st.st_mode):  # a symlink has no mode of its own on Linux
            os.chmod(dst, self._mode(st))
        _copy_xattrs(src, dst)
        os.utime(dst, ns=self._times(st), follow_symlinks=False)

    def _mode(self, st: os.stat_result) -> int:
        bits = stat.S_IMODE(st.st_mode)
        chmod = self._settings.chmod
        return bits if chmod is None else chmod(bits, is_dir=stat.S_ISDIR(st.st_mode))

    def _times(self, st: os.stat_result) -> tuple[int, int]:
        mtime = self._settings.mtime_ns
        return (st.st_atime_ns, st.st_mtime_ns) if mtime is None else (mtime, mtime)


def _lchown(path: Path, uid: int, gid: int) -> None:
    # Skipped when already right: chown is then a no-op that an unprivileged worker
    # (and test) may not even be allowed to make.
    current = os.lstat(path)
    if (current.st_uid, current.st_gid) != (uid, gid):
        os.lchown(path, uid, gid)


def _copy_xattrs(src: Path, dst: Path) -> None:
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError as error:
        if error.errno == errno.ENOTSUP:
            return  # the source filesystem has none
        raise
    for name in names:
        try:
            value = os.getxattr(src, name, follow_symlinks=False)
        except OSError as error:
            if error.errno == errno.ENODATA:
                continue  # removed since listed
            raise
        set_xattr(dst, name, value)


@contextlib.contextmanager
def _opened(path: Path, flags: int) -> Iterator[int]:
    fd = os.open(path, flags | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        yield fd
    finally:
        os.close(fd)


def _copy_file_data(src: Path, dst: Path) -> None:
    with (
        _opened(src, os.O_RDONLY) as source,
        _opened(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL) as target,
    ):
        _copy_fd(source, target)


def _copy_fd(source: int, target: int) -> None:
    """All of ``source`` into ``target``: in the kernel (sendfile) where it can be."""
    try:
        while os.sendfile(target, source, None, _SENDFILE_CHUNK) > 0:
            pass
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOSYS):
            raise
        # A filesystem without sendfile: carry on through user space from where it stopped.
        with (
            os.fdopen(source, "rb", closefd=False) as reader,
            os.fdopen(target, "wb", closefd=False) as writer,
        ):
            shutil.copyfileobj(reader, writer, _COPY_BLOCK)


# -- Copy --------------------------------------------------------------------------------


class _CopyRun:
    """One Copy action: which sources, where each goes, and the directories it made."""

    def __init__(self, action: Copy, dest_root: Path, source_root: Path) -> None:
        self._action = action
        self._dest_root = dest_root
        self._source_root = source_root
        owner = resolve_owner(action.chown, dest_root)
        self._settings = _CopySettings(
            owner=owner,
            chmod=_parse_chmod(action.chmod),
            mtime_ns=_nanoseconds(action.timestamp),
            replace_existing=action.always_replace_existing,
            selection=_Selection(action.include_patterns, action.exclude_patterns),
        )
        self._copier = _TreeCopier(dest_root, self._settings)
        self._made: list[Path] = []

    def run(self) -> None:
        if not self._action.create_dest_path:
            self._require_dest_parent()
        self._require_paths()
        sources = self._sources()
        if not sources:
            return  # an allowed empty wildcard: nothing copied, nothing made
        dest = self._action.dest
        if len(sources) > 1 and not _names_directory(dest):
            dest += "/"  # several matches can only go into a directory
        self._make_dirs(self._dest_dir_to_make(dest))
        dest_host = _resolve(self._dest_root, dest, follow_last=True)
        unpack = self._action.attempt_unpack_docker_compatibility
        for src in sources:
            if unpack and self._unpack(src, dest_host):
                continue
            self._copy_source(src, dest_host)
        # Copying into the directories made changed their mtimes after they were set.
        _set_times(self._made, self._settings.mtime_ns)

    def _require_dest_parent(self) -> None:
        dest = _resolve(self._dest_root, self._action.dest, follow_last=True)
        if dest != self._dest_root and not dest.parent.is_dir():
            parent = posixpath.dirname(_clean(self._action.dest))
            raise FileActionError(f"COPY destination directory {parent} does not exist")

    def _require_paths(self) -> None:
        for path in self._action.required_paths:
            if not os.path.lexists(_resolve(self._source_root, path, follow_last=False)):
                raise FileActionError(f"COPY source not found: {_clean(path)}")

    def _sources(self) -> list[str]:
        """The container paths to copy, in order: the literal ``src`` or its matches."""
        action = self._action
        if not (action.allow_wildcard and _has_wildcard(action.src)):
            return [_clean(action.src)]
        _base, matches = _glob(self._source_root, action.src, follow_base=action.follow_symlinks)
        if not matches and not action.allow_empty_wildcard:
            raise FileActionError(f"COPY source not found: nothing matches {action.src}")
        # As fsutil's copy: include/exclude patterns select below each match, relative to
        # it; a match itself is always copied (a directory whose every entry is excluded
        # still makes the destination directory).
        return matches

    def _dest_dir_to_make(self, dest: str) -> Path:
        """fsutil makes ``dest`` itself when it names a directory, else its parent."""
        path = dest if _names_directory(dest) else posixpath.dirname(_clean(dest))
        return _resolve(self._dest_root, path, follow_last=True)

    def _make_dirs(self, path: Path) -> None:
        # Directories the copy creates take --chmod too (BuildKit since fsutil 183e7fb).
        chmod = self._settings.chmod
        mode = chmod(_DEFAULT_DIR_MODE, is_dir=True) if chmod else _DEFAULT_DIR_MODE
        self._made += _make_dirs(
            self._dest_root,
            path,
            mode=mode,
            owner=self._settings.owner,
            mtime_ns=self._settings.mtime_ns,
        )

    def _copy_source(self, src: str, dest_host: Path) -> None:
        src_host = _resolve(self._source_root, src, follow_last=self._action.follow_symlinks)
        try:
            src_st = os.lstat(src_host)
        except (FileNotFoundError, NotADirectoryError):
            raise FileActionError(f"COPY source not found: {src}") from None
        target = self._target(src, src_st, dest_host)
        if stat.S_ISDIR(src_st.st_mode) and _is_within(target, src_host):
            raise FileActionError(f"cannot copy {src} into itself")
        self._copier.copy(src_host, target)

    def _target(self, src: str, src_st: os.stat_result, dest_host: Path) -> Path:
        """Where ``src`` goes (fsutil's ``prepareTargetDir``), its parent made."""
        src_is_dir = stat.S_ISDIR(src_st.st_mode)
        contents = self._action.dir_copy_contents and src_is_dir
        try:
            dest_mode: int | None = os.stat(dest_host).st_mode
        except (FileNotFoundError, NotADirectoryError):
            dest_mode = None
        into = dest_mode is not None and (
            (src_is_dir and not contents) or (not src_is_dir and stat.S_ISDIR(dest_mode))
        )
        target = dest_host / posixpath.basename(src) if into else dest_host
        self._make_dirs(target if contents and dest_mode is None else target.parent)
        return target

    def _unpack(self, src: str, dest_host: Path) -> bool:
        """Extract ``src`` into ``dest`` if it is a tar archive (ADD); False if it is not."""
        archive = _resolve(self._source_root, src, follow_last=True)
        if not is_tar_archive(archive):
            return False
        self._make_dirs(dest_host)
        owner = self._settings.owner
        try:
            extract_tar(archive, dest_host, owner=(owner.uid, owner.gid) if owner else None)
        except ArchiveError as error:
            raise FileActionError(f"ADD {src}: {error}") from None
        return True


def _nanoseconds(timestamp: int | None) -> int | None:
    return None if timestamp is None else timestamp * _NS_PER_SECOND


# -- Mkdir, Mkfile, Rm -------------------------------------------------------------------


def _mkdir(action: Mkdir, dest_root: Path) -> None:
    owner = resolve_owner(action.chown, dest_root)
    path = _resolve(dest_root, action.path, follow_last=True)
    if not action.make_parents:
        try:
            mode: int | None = os.lstat(path).st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None and stat.S_ISDIR(mode):
            return  # BuildKit: an existing directory is fine
        if mode is not None:
            raise FileActionError(f"mkdir {action.path}: a non-directory is in the way")
        if not path.parent.is_dir():
            raise FileActionError(f"mkdir {action.path}: the parent directory does not exist")
    _make_dirs(
        dest_root,
        path,
        mode=action.mode & 0o7777,
        owner=owner,
        mtime_ns=_nanoseconds(action.timestamp),
    )


def _mkfile(action: Mkfile, dest_root: Path) -> None:
    owner = resolve_owner(action.chown, dest_root)
    path = _resolve(dest_root, action.path, follow_last=True)
    _make_room_for_file(path, action.path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    with _opened(path, flags) as fd, os.fdopen(fd, "wb", closefd=False) as out:
        out.write(action.data)
    if owner is not None:
        _lchown(path, owner.uid, owner.gid)
    os.chmod(path, action.mode & 0o7777)  # after chown, which clears set-id bits
    _set_times([path], _nanoseconds(action.timestamp))


def _make_room_for_file(path: Path, shown: str) -> None:
    """An existing regular file is truncated; a directory is an error; anything else
    (a fifo would block the write) is replaced."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        if not path.parent.is_dir():
            raise FileActionError(f"mkfile {shown}: the parent directory does not exist") from None
        return
    if stat.S_ISDIR(mode):
        raise FileActionError(f"mkfile {shown}: a directory is in the way")
    if not stat.S_ISREG(mode):
        os.unlink(path)


def _rm(action: Rm, dest_root: Path) -> None:
    paths = [action.path]
    if action.allow_wildcard and _has_wildcard(action.path):
        _, paths = _glob(dest_root, action.path, follow_base=False)
        if not paths and not action.allow_not_found:
            raise FileActionError(f"rm {action.path}: nothing matches")
    for path in paths:
        _remove(dest_root, path, allow_not_found=action.allow_not_found)


def _remove(root: Path, path: str, *, allow_not_found: bool) -> None:
    if _clean(path) == "/":
        raise FileActionError("rm /: the root directory cannot be removed")
    host = _resolve(root, path, follow_last=False)
    try:
        mode = os.lstat(host).st_mode
    except (FileNotFoundError, NotADirectoryError):
        if allow_not_found:
            return
        raise FileActionError(f"rm {path}: no such file or directory") from None
    if stat.S_ISDIR(mode):
        shutil.rmtree(host)
    else:
        os.unlink(host)


# -- applying ----------------------------------------------------------------------------


class _SourceRoots:
    """The inputs' root directories; an empty one stands in for scratch (``None``)."""

    def __init__(self, sources: Sequence[Path | None], stack: contextlib.ExitStack) -> None:
        self._sources = sources
        self._stack = stack
        self._empty: Path | None = None

    def get(self, index: int) -> Path:
        if not 0 <= index < len(self._sources):
            raise FileActionError(
                f"copy: input {index} does not exist (the op has {len(self._sources)})"
            )
        root = self._sources[index]
        return root if root is not None else self._empty_root()

    def given(self) -> list[Path]:
        return [root for root in self._sources if root is not None]

    def _empty_root(self) -> Path:
        if self._empty is None:
            self._empty = Path(self._stack.enter_context(tempfile.TemporaryDirectory()))
        return self._empty


def apply_actions(
    actions: Sequence[FileAction], *, dest_root: Path, sources: Sequence[Path | None]
) -> None:
    """Apply ``actions`` in order to the root filesystem at ``dest_root``.

    ``sources[i]`` is the root directory of input ``i`` (what ``Copy.src_input``
    indexes); ``None`` is an empty filesystem. Raises ``FileActionError`` with a one-line
    message naming the path for anything that cannot be done.
    """
    with contextlib.ExitStack() as stack:
        roots = _SourceRoots(sources, stack)
        for action in actions:
            try:
                _apply(action, dest_root, roots)
            except OSError as error:
                where = _shown_filename(error.filename, dest_root, roots.given())
                reason = error.strerror or str(error)
                message = f"{_describe(action)}: {reason}" + (f": {where}" if where else "")
                raise FileActionError(message) from error


def _apply(action: FileAction, dest_root: Path, roots: _SourceRoots) -> None:
    match action:
        case Copy():
            _CopyRun(action, dest_root, roots.get(action.src_input)).run()
        case Mkdir():
            _mkdir(action, dest_root)
        case Mkfile():
            _mkfile(action, dest_root)
        case Rm():
            _rm(action, dest_root)


def _describe(action: FileAction) -> str:
    match action:
        case Copy():
            return f"copy {action.src} to {action.dest}"
        case Mkdir():
            return f"mkdir {action.path}"
        case Mkfile():
            return f"mkfile {action.path}"
        case Rm():
            return f"rm {action.path}"


def _shown_filename(filename: object, dest_root: Path, source_roots: list[Path]) -> str:
    """An OSError's file as a container path (host paths mean nothing to the user)."""
    if not isinstance(filename, str):
        return ""
    path = Path(filename)
    for root, suffix in [(dest_root, ""), *((root, " (in the source)") for root in source_roots)]:
        if path == root or root in path.parents:
            return _container_path(root, path) + suffix
    return filename
