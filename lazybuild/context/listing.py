"""The build context as the solver's ``LocalSource`` sees it.

A :class:`BuildContext` is a directory plus its ``.dockerignore`` rules. It lists what a
build may read (:meth:`BuildContext.files`), says what ``COPY <selector>`` would take
(:meth:`BuildContext.copy_sources`) and gives that selection a content key
(:meth:`BuildContext.checksum`) after BuildKit's ``cache/contenthash``:

* every entry hashes its header (type and permission bits, uid, gid, xattrs, link target
  or device numbers) and, for regular files, the sha256 of its content; mtime never counts;
* a directory hashes its own header and every non-ignored entry below it, as
  ``(relative path, entry digest)`` pairs in sorted order; ``dir`` and ``dir/`` both mean
  the directory's tree;
* a wildcard (Go ``filepath.Match`` syntax per path component) hashes every match, as
  ``(path, digest)`` pairs in sorted order;
* symlinks inside a selection hash as links (their target string); a symlink *traversed*
  by a selector is resolved inside the root, and one leading outside it is an error.

Ignored entries never count: a selector cannot name them and trees leave them out. The
``hidden`` directories (lazybuild's state directory, which a CI job may keep inside its
checkout to cache it) are left out the same way, whatever the ignore file says: a
``COPY . .`` would otherwise copy the build's own staging area into itself.
Digests are cached per inode for the life of the object, checked against size, mtime_ns
and ctime_ns (entry headers also against mode, uid and gid), so repeated selectors only
``lstat``; entries changed within 100 ms of being read are not cached, so a change in the
same timestamp tick is never missed. Files are opened with ``O_NOFOLLOW``, so
nothing outside the root is ever read.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lazybuild.context.dockerignore import DockerIgnore
from lazybuild.errors import LazybuildError

__all__ = [
    "BuildContext",
    "ContextEntry",
    "ContextError",
    "ContextEscapeError",
    "ContextNotFoundError",
    "CopyMatch",
    "EntryType",
]

EntryType = Literal["file", "dir", "symlink", "fifo", "socket", "char", "block"]

# Symlinks followed while resolving one selector before it counts as a loop (Linux's limit).
_MAX_SYMLINKS = 40
_READ_SIZE = 1 << 20
# Changes this close to a read are not trusted to show in timestamps (see _settled).
_RACY_MARGIN_NS = 100_000_000
_GLOB_META = re.compile(r"[*?\[\\]")


class ContextError(LazybuildError):
    """A selector that names nothing, escapes the context, or cannot be read."""


class ContextNotFoundError(ContextError):
    """A selector (or a symlink it traverses) names nothing in the context."""


class ContextEscapeError(ContextError):
    """A selector traverses a symlink that leads outside the context."""


@dataclass(frozen=True)
class ContextEntry:
    """One non-ignored entry; ``path`` is ``/``-separated and relative to the root."""

    path: str
    type: EntryType
    mode: int  # file type bits | permission bits (incl. setuid/setgid/sticky)
    uid: int
    gid: int
    size: int
    linkname: str  # symlink target, "" otherwise


@dataclass(frozen=True)
class CopyMatch:
    """One thing ``COPY`` takes: ``name`` as matched (relative, ``/``-separated; the
    destination name comes from it) and ``source``, its resolved absolute path."""

    name: str
    source: Path
    type: EntryType


def _entry_type(mode: int) -> EntryType:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "char"
    return "block"


def _settled(st: os.stat_result, started_ns: int) -> bool:
    """True when ``st`` was last changed clearly before ``started_ns`` (when reading began).

    Only then can a cached digest be trusted: a change made during or after the read
    gets a later ctime. Timestamps have coarse granularity, so a change in the same tick
    as the read would otherwise go unseen (git's "racy clean" problem); such entries are
    simply not cached.
    """
    return st.st_ctime_ns < started_ns - _RACY_MARGIN_NS


def _normal_mode(mode: int) -> int:
    return stat.S_IFMT(mode) | stat.S_IMODE(mode)


class _Hasher:
    """sha256 over length-prefixed fields, so no two field lists encode alike."""

    __slots__ = ("_parts",)

    def __init__(self, kind: str) -> None:
        self._parts: list[bytes] = []
        self.add(kind)

    def add(self, value: str | bytes | int) -> None:
        if isinstance(value, str):
            data = value.encode("utf-8", "surrogateescape")
        elif isinstance(value, int):
            data = b"%d" % value
        else:
            data = value
        self._parts.append(len(data).to_bytes(8, "big"))
        self._parts.append(data)

    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(b"".join(self._parts)).hexdigest()


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None  # not there (yet): nothing to hide
    return st.st_dev, st.st_ino


def _go_match_regex(pattern: str) -> re.Pattern[str]:
    """One path component's pattern in Go ``filepath.Match`` syntax, as a regex."""
    out: list[str] = []
    i = 0
    n = len(pattern)
    while i < n:
        char = pattern[i]
        i += 1
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "\\":
            if i >= n:
                raise ContextError(f"invalid pattern {pattern!r}: trailing backslash")
            out.append(re.escape(pattern[i]))
            i += 1
        elif char == "[":
            end = i
            if end < n and pattern[end] == "^":
                end += 1
            if end < n and pattern[end] == "]":
                raise ContextError(f"invalid pattern {pattern!r}: empty character class")
            body: list[str] = []
            negate = i < n and pattern[i] == "^"
            j = i + 1 if negate else i
            while j < n and pattern[j] != "]":
                if pattern[j] == "\\" and j + 1 < n:
                    body.append(re.escape(pattern[j + 1]))
                    j += 2
                    continue
                if pattern[j] == "-" and body:
                    body.append("-")
                else:
                    body.append(re.escape(pattern[j]))
                j += 1
            if j >= n:
                raise ContextError(f"invalid pattern {pattern!r}: unterminated character class")
            out.append(f"[{'^' if negate else ''}{''.join(body)}]")
            i = j + 1
        else:
            out.append(re.escape(char))
    return re.compile("".join(out), re.DOTALL)


class BuildContext:
    """A context directory and its ignore rules; see the module docstring."""

    def __init__(
        self, root: Path, ignore: DockerIgnore | None, *, hidden: Sequence[Path] = ()
    ) -> None:
        self.root = Path(os.path.abspath(root))
        if not self.root.is_dir():
            raise ContextError(f"build context {str(root)!r} is not a directory")
        # By device and inode: a hidden directory is found under any spelling of its path.
        self._hidden = {found for path in hidden if (found := _identity(path)) is not None}
        self._root_str = str(self.root).rstrip("/") or "/"
        self.ignore = ignore if ignore is not None else DockerIgnore(())
        self._content_cache: dict[tuple[int, int], tuple[tuple[int, int, int], str]] = {}
        self._entry_cache: dict[tuple[int, int], tuple[tuple[int, ...], str]] = {}
        # Every file and symlink a COPY or ADD selected (by its path in the context), as
        # its key was computed: the build's inputs from the context (``--depfile``).
        self.selected: set[str] = set()

    # -- listing -------------------------------------------------------------------------

    def files(self) -> Iterator[ContextEntry]:
        """Every non-ignored entry below the root, depth first, names sorted."""
        for rel, st in self._walk(""):
            yield self._entry(rel, st)

    def _is_hidden(self, st: os.stat_result) -> bool:
        return bool(self._hidden) and (st.st_dev, st.st_ino) in self._hidden

    def _abs(self, rel: str) -> str:
        return f"{self._root_str}/{rel}" if rel else self._root_str

    def _entry(self, rel: str, st: os.stat_result) -> ContextEntry:
        linkname = os.readlink(self._abs(rel)) if stat.S_ISLNK(st.st_mode) else ""
        return ContextEntry(
            path=rel,
            type=_entry_type(st.st_mode),
            mode=_normal_mode(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            size=st.st_size if stat.S_ISREG(st.st_mode) else 0,
            linkname=linkname,
        )

    def _walk(self, rel_dir: str) -> Iterator[tuple[str, os.stat_result]]:
        """Entries below ``rel_dir`` (never following links), sorted, ignored ones left out.

        A directory that is itself ignored is still listed when something below it is
        re-included by an exception, as the context transfer would send it.
        """
        try:
            with os.scandir(self._abs(rel_dir)) as scan:
                listing = sorted(scan, key=lambda entry: entry.name)
        except OSError as error:
            raise ContextError(f"cannot list {rel_dir or '.'!r}: {error.strerror}") from error
        patterns = bool(self.ignore.patterns)
        for item in listing:
            rel = f"{rel_dir}/{item.name}" if rel_dir else item.name
            try:
                st = item.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed while listing
            excluded = patterns and self.ignore.is_excluded(rel)
            if stat.S_ISDIR(st.st_mode):
                if self._is_hidden(st):
                    continue
                if excluded and not self.ignore.may_include_below(rel):
                    continue
                below = self._walk(rel)
                if excluded:
                    first = next(below, None)
                    if first is None:
                        continue
                    yield rel, st
                    yield first
                else:
                    yield rel, st
                yield from below
            elif not excluded:
                yield rel, st

    # -- selectors -----------------------------------------------------------------------

    def copy_sources(
        self,
        selector: str,
        *,
        follow_symlinks: bool = True,
        allow_wildcard: bool = True,
        allow_empty_wildcard: bool = False,
    ) -> list[Path]:
        """What ``COPY <selector>`` would copy, as absolute paths inside the root.

        One path per match, in the order of :meth:`copy_matches` (by matched name); a
        followed symlink gives its target's path.
        """
        matches = self.copy_matches(
            selector,
            follow_symlinks=follow_symlinks,
            allow_wildcard=allow_wildcard,
            allow_empty_wildcard=allow_empty_wildcard,
        )
        return [match.source for match in matches]

    def copy_matches(
        self,
        selector: str,
        *,
        follow_symlinks: bool = True,
        allow_wildcard: bool = True,
        allow_empty_wildcard: bool = False,
    ) -> list[CopyMatch]:
        """Like :meth:`copy_sources`, keeping the name each match is copied under."""
        _, matches = self._select(
            selector,
            follow_symlinks=follow_symlinks,
            allow_wildcard=allow_wildcard,
            allow_empty_wildcard=allow_empty_wildcard,
        )
        return [
            CopyMatch(name, Path(self._abs(rel)), _entry_type(st.st_mode))
            for name, rel, st in matches
        ]

    def checksum(
        self,
        selector: str,
        *,
        follow_symlinks: bool = True,
        allow_wildcard: bool = True,
        allow_empty_wildcard: bool = False,
    ) -> str:
        """The content key of what ``COPY <selector>`` would take (``sha256:<hex>``).

        A literal selector keys the entry (or tree) alone, not its name; a wildcard keys
        every match's name together with its digest, so renaming a match counts.
        """
        wildcard, matches = self._select(
            selector,
            follow_symlinks=follow_symlinks,
            allow_wildcard=allow_wildcard,
            allow_empty_wildcard=allow_empty_wildcard,
        )
        if not wildcard:
            ((_, rel, st),) = matches
            return self._selection_digest(rel, st)
        combined = _Hasher("wildcard")
        for name, rel, st in matches:
            combined.add(name)
            combined.add(self._selection_digest(rel, st))
        return combined.digest()

    def _select(
        self,
        selector: str,
        *,
        follow_symlinks: bool,
        allow_wildcard: bool,
        allow_empty_wildcard: bool,
    ) -> tuple[bool, list[tuple[str, str, os.stat_result]]]:
        """(is a wildcard, matches as (matched name, resolved path, its lstat) by name)."""
        cleaned = posixpath.normpath("/" + selector.replace(os.sep, "/")).lstrip("/")
        cleaned = "" if cleaned == "." else cleaned
        components = [c for c in cleaned.split("/") if c]
        wildcard = allow_wildcard and any(_GLOB_META.search(c) for c in components)
        if not wildcard:
            rel, st = self._resolve(cleaned, follow_final=follow_symlinks, selector=selector)
            if not self._visible(rel, st) or (
                cleaned and cleaned != rel and self.ignore.is_excluded(cleaned)
            ):
                raise ContextNotFoundError(f"{selector!r} not found in build context (excluded)")
            return False, [(cleaned, rel, st)]
        matches: list[tuple[str, str, os.stat_result]] = []
        for name in self._glob(components, selector):
            resolved, st = self._resolve(name, follow_final=follow_symlinks, selector=selector)
            if not self._visible(resolved, st):
                continue
            if name != resolved and not self._visible(name, os.lstat(self._abs(name))):
                continue
            matches.append((name, resolved, st))
        if not matches and not allow_empty_wildcard:
            raise ContextNotFoundError(
                f"{selector!r}: no source files were specified (nothing matches)"
            )
        return True, sorted(matches, key=lambda match: match[0].split("/"))

    def _visible(self, rel: str, st: os.stat_result) -> bool:
        """False for an ignored entry (a directory counts when something below is kept)."""
        if self._is_hidden(st):
            return False
        if not rel or not self.ignore.is_excluded(rel):
            return True
        if not stat.S_ISDIR(st.st_mode) or not self.ignore.may_include_below(rel):
            return False
        return next(self._walk(rel), None) is not None

    def _glob(self, components: list[str], selector: str) -> list[str]:
        """Paths (not yet resolved) matching ``components`` one level at a time."""
        candidates = [""]
        for component in components:
            next_candidates: list[str] = []
            literal = not _GLOB_META.search(component)
            regex = None if literal else _go_match_regex(component)
            for base in candidates:
                try:
                    base_rel, base_st = self._resolve(base, follow_final=True, selector=selector)
                except ContextNotFoundError:
                    continue
                if not stat.S_ISDIR(base_st.st_mode):
                    continue
                if literal:
                    child = f"{base}/{component}" if base else component
                    if os.path.lexists(self._abs(f"{base_rel}/{component}".lstrip("/"))):
                        next_candidates.append(child)
                    continue
                assert regex is not None
                try:
                    with os.scandir(self._abs(base_rel)) as scan:
                        names = sorted(e.name for e in scan)
                except OSError as error:
                    raise ContextError(
                        f"{selector!r}: cannot list {base_rel or '.'!r}: {error.strerror}"
                    ) from error
                for name in names:
                    if regex.fullmatch(name) is None:
                        continue
                    real = f"{base_rel}/{name}" if base_rel else name
                    if self.ignore.is_excluded(real) and not self.ignore.may_include_below(real):
                        continue
                    if self._hidden and self._is_hidden(os.lstat(self._abs(real))):
                        continue
                    next_candidates.append(f"{base}/{name}" if base else name)
            candidates = next_candidates
        return candidates

    def _resolve(
        self, path: str, *, follow_final: bool, selector: str
    ) -> tuple[str, os.stat_result]:
        """``path`` with every traversed symlink resolved inside the root, and its lstat."""
        pending = [c for c in path.split("/") if c and c != "."]
        pending.reverse()
        resolved: list[str] = []
        links = 0
        while pending:
            component = pending.pop()
            if component == "..":
                if not resolved:
                    raise ContextEscapeError(
                        f"{selector!r}: a symlink it traverses points outside the build context"
                    )
                resolved.pop()
                continue
            candidate = "/".join([*resolved, component])
            try:
                st = os.lstat(self._abs(candidate))
            except FileNotFoundError:
                raise ContextNotFoundError(f"{selector!r} not found in build context") from None
            except NotADirectoryError:
                raise ContextNotFoundError(f"{selector!r} not found in build context") from None
            except OSError as error:
                raise ContextError(f"{selector!r}: cannot read {candidate!r}: {error}") from None
            if stat.S_ISLNK(st.st_mode) and (pending or follow_final):
                links += 1
                if links > _MAX_SYMLINKS:
                    raise ContextError(f"{selector!r}: too many levels of symbolic links")
                target = os.readlink(self._abs(candidate))
                if target.startswith("/"):
                    raise ContextEscapeError(
                        f"{selector!r}: symlink {candidate!r} -> {target!r} "
                        "points outside the build context"
                    )
                for part in reversed([p for p in target.split("/") if p and p != "."]):
                    pending.append(part)
                continue
            if (pending and not stat.S_ISDIR(st.st_mode)) or self._is_hidden(st):
                raise ContextNotFoundError(f"{selector!r} not found in build context")
            resolved.append(component)
        rel = "/".join(resolved)
        return rel, os.lstat(self._abs(rel))

    # -- hashing -------------------------------------------------------------------------

    def _selection_digest(self, rel: str, st: os.stat_result) -> str:
        if not stat.S_ISDIR(st.st_mode):
            return self._entry_digest(rel, st)
        tree = _Hasher("tree")
        tree.add(self._entry_digest(rel, st))
        prefix_len = len(rel) + 1 if rel else 0
        for child, child_st in self._walk(rel):
            tree.add(child[prefix_len:])
            tree.add(self._entry_digest(child, child_st))
        return tree.digest()

    def _entry_digest(self, rel: str, st: os.stat_result) -> str:
        """Header (and content) digest of one entry, its name left out.

        Cached by inode and every stat field the digest depends on; ctime moves on any
        change to content, mode, owner, xattrs or link target, so a hit is still current.
        """
        if not stat.S_ISDIR(st.st_mode):
            self.selected.add(rel)
        key = (st.st_dev, st.st_ino)
        stamp = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        cached = self._entry_cache.get(key)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        started = time.time_ns()
        value = self._compute_entry_digest(rel, st)
        if _settled(st, started):
            self._entry_cache[key] = (stamp, value)
        return value

    def _compute_entry_digest(self, rel: str, st: os.stat_result) -> str:
        mode = st.st_mode
        entry = _Hasher(_entry_type(mode))
        entry.add(_normal_mode(mode))
        entry.add(st.st_uid)
        entry.add(st.st_gid)
        for name, value in self._xattrs(rel):
            entry.add(name)
            entry.add(value)
        if stat.S_ISREG(mode):
            entry.add(self._content_digest(rel, st))
        elif stat.S_ISLNK(mode):
            entry.add(os.readlink(self._abs(rel)))
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            entry.add(os.major(st.st_rdev))
            entry.add(os.minor(st.st_rdev))
        return entry.digest()

    def _xattrs(self, rel: str) -> list[tuple[str, bytes]]:
        path = self._abs(rel)
        try:
            names = os.listxattr(path, follow_symlinks=False)
        except OSError:
            return []
        pairs = []
        for name in sorted(names):
            try:
                pairs.append((name, os.getxattr(path, name, follow_symlinks=False)))
            except OSError:
                continue
        return pairs

    def _content_digest(self, rel: str, st: os.stat_result) -> str:
        stamp = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        cached = self._content_cache.get((st.st_dev, st.st_ino))
        if cached is not None and cached[0] == stamp:
            return cached[1]
        started = time.time_ns()
        digest = hashlib.sha256()
        try:
            fd = os.open(self._abs(rel), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as error:
            raise ContextError(f"cannot read {rel!r}: {error.strerror}") from error
        with os.fdopen(fd, "rb") as stream:
            # Key the cache by what was opened, in case the path changed since lstat.
            opened = os.fstat(stream.fileno())
            if not stat.S_ISREG(opened.st_mode):
                raise ContextError(f"{rel!r} changed while the build context was read")
            while chunk := stream.read(_READ_SIZE):
                digest.update(chunk)
        value = "sha256:" + digest.hexdigest()
        if _settled(opened, started):
            self._content_cache[(opened.st_dev, opened.st_ino)] = (
                (opened.st_size, opened.st_mtime_ns, opened.st_ctime_ns),
                value,
            )
        return value
