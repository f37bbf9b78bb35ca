"""An in-memory filesystem view over a TOC: nodes, hardlinks, implicit parents, chunk map.

Follows the reference reader's normalisation (``initFields``): names are cleaned
to slash-separated relative paths (root is ``""``), missing parents become 0755
directories, hardlinks share their target's node, ``chunk`` entries attach to the
preceding ``reg``, and ``chunkSize`` 0 means "to the end of the file".
"""

from __future__ import annotations

import bisect
import functools
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from lazybuild.errors import FormatError
from lazybuild.estargz.gcpause import collector_paused
from lazybuild.estargz.toc import NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOC, TOCEntry

IMPLICIT_DIR_MODE = 0o755
# A chunk is decompressed and verified whole, so its size bounds the memory of a read.
# The reference writer cuts 4 MiB chunks (lazybuild's big files: 64 KiB); a TOC
# naming a bigger chunk than this is refused rather than trusted to inflate that far.
MAX_CHUNK_SIZE = 64 << 20
# innerOffset (min-chunk-size layers) puts a chunk after others in the same member:
# what is inflated to reach a chunk's last byte is bounded too.
MAX_CHUNK_INFLATE = 2 * MAX_CHUNK_SIZE
# The compressed bytes fetched for one chunk: what deflate can need for
# MAX_CHUNK_INFLATE bytes (stored blocks add 5 bytes per 64 KiB) and a few members'
# headers. A member that runs on beyond that (headers of many entries after the
# chunk) is cut here: its chunk is whole well before.
MAX_CHUNK_SPAN = MAX_CHUNK_INFLATE + (MAX_CHUNK_INFLATE >> 10) + (1 << 20)
_PERMISSION_BITS = 0o7777
_MAX_HARDLINK_DEPTH = 64
# Parent directories the TOC does not list are made, each holding its whole path: a
# deep path makes as many, and their names cost the square of its depth. Their names
# together may take this much, as much as the largest TOC's JSON; a hostile
# TOC of deep paths is refused instead of taking minutes and gigabytes.
MAX_IMPLICIT_PATH_BYTES = 64 << 20
_LANDMARKS = frozenset({PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK})


@dataclass(frozen=True)
class ChunkRef:
    """Where one piece of a file lives in the blob and how to check it.

    ``blob[offset:end]`` is the compressed range (``end`` = the next member start
    after ``offset``); inflating it and skipping ``inner_offset`` bytes gives the
    ``size`` bytes of file content that start at ``chunk_offset``.
    """

    offset: int
    end: int
    inner_offset: int
    chunk_offset: int
    size: int
    digest: str


@dataclass(eq=False)
class Node:
    """One inode. Hardlinked names share the same ``Node``; ``name`` is its first path."""

    name: str
    type: str  # dir, reg, symlink, char, block, fifo
    mode: int = 0  # permission bits only; the file type is ``type``
    uid: int = 0
    gid: int = 0
    user_name: str = ""
    group_name: str = ""
    mtime: int | None = None  # seconds since the epoch; None when the TOC has none
    link_name: str = ""
    dev_major: int = 0
    dev_minor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)
    size: int = 0
    digest: str = ""
    chunks: list[ChunkRef] = field(default_factory=list)
    children: dict[str, Node] = field(default_factory=dict)
    nlink: int = 1
    implicit: bool = False  # a parent directory that the TOC does not list


@dataclass(frozen=True)
class IndexStats:
    entries: int
    files: int
    chunks: int
    prioritized_files: int
    landmark: Literal["prefetch", "no-prefetch"] | None


def clean_name(name: str) -> str:
    """``strings.TrimPrefix(path.Clean("/"+name), "/")``: ``./a/b/`` -> ``a/b``, root -> ``""``."""
    # Writers clean their names already: a name with no empty, "." or ".." component
    # (no leading "." or "/", no "//", no "/.", no trailing "/") is its own clean form.
    if name and name[0] not in "./" and name[-1] != "/" and "//" not in name and "/." not in name:
        return name
    return posixpath.normpath("/" + name).lstrip("/")


@functools.lru_cache(maxsize=4096)  # a layer's files share a few modtimes
def _parse_modtime(text: str) -> int | None:
    if not text:
        return None
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())
    except (ValueError, OverflowError):
        return None  # Go yields the zero time for an unparsable modtime


def _parent(path: str) -> str:
    """The parent of a clean path (``posixpath.dirname`` of it)."""
    return path.rpartition("/")[0]


class _OwnerNames:
    """The reference writer names a uid/gid only when the name changes: carry names forward."""

    def __init__(self) -> None:
        self.users: dict[int, str] = {}
        self.groups: dict[int, str] = {}

    def note(self, entry: TOCEntry) -> None:
        if entry.user_name:
            self.users[entry.uid] = entry.user_name
        if entry.group_name:
            self.groups[entry.gid] = entry.group_name


def _node_for(entry: TOCEntry, path: str, owners: _OwnerNames) -> Node:
    kind = entry.type
    uid = entry.uid
    gid = entry.gid
    return Node(
        name=path,
        type=kind,
        mode=entry.mode & _PERMISSION_BITS,
        uid=uid,
        gid=gid,
        user_name=owners.users.get(uid, ""),
        group_name=owners.groups.get(gid, ""),
        mtime=_parse_modtime(entry.modtime),
        link_name=entry.link_name,
        dev_major=entry.dev_major,
        dev_minor=entry.dev_minor,
        xattrs=dict(entry.xattrs) if entry.xattrs else {},
        size=entry.size if kind == "reg" else 0,
        digest=entry.digest,
    )


class LayerIndex:
    """Lookup structure for one layer. ``data_end`` is the TOC offset (end of file data)."""

    def __init__(self, toc: TOC, data_end: int, where: str = "layer") -> None:
        self._where = where
        self._data_end = data_end
        self._paths: dict[str, Node] = {}
        self.prefetch_landmark_offset: int | None = None
        self.no_prefetch = False
        self._entry_count = len(toc.entries)
        self._implicit_budget = MAX_IMPLICIT_PATH_BYTES
        self._prioritized_files = 0
        self.root = Node(name="", type="dir", mode=IMPLICIT_DIR_MODE, implicit=True)
        with collector_paused():
            self._build(toc.entries)

    # -- queries ---------------------------------------------------------------

    def lookup(self, path: str) -> Node | None:
        """The node at ``path`` (any spelling: ``/a``, ``./a``, ``a/``), or None."""
        name = clean_name(path)
        return self.root if name == "" else self._paths.get(name)

    def walk(self) -> Iterator[Node]:
        """Every node once (hardlinked inodes once), parents before children, names sorted."""
        seen: set[int] = set()
        stack = [self.root]
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            yield node
            stack.extend(node.children[k] for k in sorted(node.children, reverse=True))

    def paths(self) -> Iterator[tuple[str, Node]]:
        """Every (path, node) pair, including each name of a hardlinked inode."""
        yield "", self.root
        yield from sorted(self._paths.items())

    def chunk_for_offset(self, node: Node, file_offset: int) -> ChunkRef:
        """The chunk of a regular file that holds byte ``file_offset``."""
        if not 0 <= file_offset < node.size:
            raise ValueError(f"offset {file_offset} outside {node.name!r} (size {node.size})")
        position = bisect.bisect_right(node.chunks, file_offset, key=lambda c: c.chunk_offset)
        return node.chunks[position - 1]

    @property
    def stats(self) -> IndexStats:
        files = [n for n in self.walk() if n.type == "reg" and n.name not in _LANDMARKS]
        landmark: Literal["prefetch", "no-prefetch"] | None = None
        if self.prefetch_landmark_offset is not None:
            landmark = "prefetch"
        elif self.no_prefetch:
            landmark = "no-prefetch"
        return IndexStats(
            entries=self._entry_count,
            files=len(files),
            chunks=sum(len(n.chunks) for n in files),
            prioritized_files=self._prioritized_files if landmark == "prefetch" else 0,
            landmark=landmark,
        )

    # -- construction ----------------------------------------------------------

    def _fail(self, message: str) -> FormatError:
        return FormatError(f"{self._where}: {message}")

    def _build(self, entries: list[TOCEntry]) -> None:
        nodes: dict[str, Node] = {}  # explicit, non-hardlink entries; later ones win
        hardlinks: dict[str, str] = {}  # path -> cleaned link target
        pieces: dict[str, list[TOCEntry]] = {}  # file path -> its reg entry + chunk entries
        owners = _OwnerNames()
        current_file: str | None = None  # the reg entry that chunk entries attach to
        landmark_seen = False
        for index, entry in enumerate(entries):
            kind = entry.type
            if kind == "chunk":
                if current_file is None:
                    raise self._fail(f"TOC entry #{index}: chunk of {entry.name!r} follows no file")
                pieces[current_file].append(entry)
                continue
            path = clean_name(entry.name)
            if path == "" and kind != "dir":
                raise self._fail(f"TOC entry #{index}: the root is a {kind}, not a dir")
            nodes.pop(path, None)
            if hardlinks:
                hardlinks.pop(path, None)
            owners.note(entry)
            current_file = None
            if kind == "hardlink":
                hardlinks[path] = clean_name(entry.link_name)
                continue
            nodes[path] = _node_for(entry, path, owners)
            if kind == "reg":
                current_file = path
                pieces[path] = [entry]
                self._note_landmark(path, entry, landmark_seen=landmark_seen)
                landmark_seen = landmark_seen or path == PREFETCH_LANDMARK
        member_starts = self._member_starts(entries)
        for path, node in nodes.items():
            if node.type == "reg":
                node.chunks = self._chunks(node, pieces[path], member_starts)
        self._link_tree(nodes, hardlinks)

    def _note_landmark(self, path: str, entry: TOCEntry, *, landmark_seen: bool) -> None:
        if path == PREFETCH_LANDMARK:
            self.prefetch_landmark_offset = entry.offset
        elif path == NO_PREFETCH_LANDMARK:
            self.no_prefetch = True
        elif not landmark_seen:
            self._prioritized_files += 1

    def _member_starts(self, entries: list[TOCEntry]) -> list[int]:
        starts = sorted(
            {e.offset for e in entries if e.type in ("reg", "chunk") and e.inner_offset == 0}
        )
        return [*starts, self._data_end]

    def _chunks(
        self, node: Node, entries: list[TOCEntry], member_starts: list[int]
    ) -> list[ChunkRef]:
        file_size = node.size
        if file_size == 0:
            if len(entries) > 1:
                raise self._fail(f"empty file {node.name!r} has chunk entries")
            return []
        data_end = self._data_end
        last = len(entries) - 1
        chunks = []
        expected_offset = 0
        for position, entry in enumerate(entries):
            chunk_offset = entry.chunk_offset
            inner_offset = entry.inner_offset
            offset = entry.offset
            if chunk_offset != expected_offset:
                raise self._fail(
                    f"file {node.name!r}: chunk at {chunk_offset} where {expected_offset} "
                    "was expected"
                )
            size = entry.chunk_size
            if size == 0:
                if position != last:
                    raise self._fail(f"file {node.name!r}: chunk at {chunk_offset} has no size")
                size = file_size - chunk_offset
            if size > MAX_CHUNK_SIZE or inner_offset + size > MAX_CHUNK_INFLATE:
                raise self._fail(
                    f"file {node.name!r}: chunk at {chunk_offset} of {size} bytes "
                    f"(inner offset {inner_offset}) is over the {MAX_CHUNK_SIZE >> 20} MiB "
                    "chunk limit"
                )
            if size <= 0 or chunk_offset + size > file_size:
                raise self._fail(
                    f"file {node.name!r}: chunk [{chunk_offset}, +{size}) beyond size {file_size}"
                )
            if offset >= data_end:
                raise self._fail(
                    f"file {node.name!r}: chunk offset {offset} beyond TOC offset {data_end}"
                )
            # Legacy stargz has no chunkDigest; a one-piece file can use the file digest.
            digest = entry.chunk_digest or (node.digest if last == 0 else "")
            end = member_starts[bisect.bisect_right(member_starts, offset)]
            # Positional: a layer makes one per chunk, and keywords cost a third more.
            chunks.append(
                ChunkRef(
                    offset,
                    min(end, offset + MAX_CHUNK_SPAN),
                    inner_offset,
                    chunk_offset,
                    size,
                    digest,
                )
            )
            expected_offset = chunk_offset + size
        if expected_offset != file_size:
            raise self._fail(
                f"file {node.name!r}: chunks cover {expected_offset} of {file_size} bytes"
            )
        return chunks

    def _link_tree(self, nodes: dict[str, Node], hardlinks: dict[str, str]) -> None:
        root_entry = nodes.pop("", None)
        if root_entry is not None:
            if root_entry.type != "dir":
                raise self._fail("the root entry is not a directory")
            root_entry.name = ""
            self.root = root_entry
        self._paths = {}
        for path, node in nodes.items():
            self._attach(path, node)
        for path in hardlinks:
            target = self._resolve_hardlink(path, nodes, hardlinks)
            target.nlink += 1
            self._attach(path, target)
        for node in self._reachable_directories():
            node.nlink = 2 + sum(1 for c in node.children.values() if c.type == "dir")

    def _reachable_directories(self) -> Iterator[Node]:
        """Every directory ``walk`` reaches, in no particular order (no names sorted)."""
        seen: set[int] = set()
        stack = [self.root]
        while stack:
            node = stack.pop()
            if id(node) not in seen:
                seen.add(id(node))
                yield node
                stack.extend(c for c in node.children.values() if c.type == "dir")

    def _resolve_hardlink(
        self, path: str, nodes: dict[str, Node], hardlinks: dict[str, str]
    ) -> Node:
        target_path = path
        for _ in range(_MAX_HARDLINK_DEPTH):
            target_path = hardlinks[target_path]
            if target_path in nodes:
                target = nodes[target_path]
                if target.type == "dir":
                    raise self._fail(f"hardlink {path!r} points at directory {target_path!r}")
                return target
            if target_path not in hardlinks:
                raise self._fail(f"hardlink {path!r}: target {target_path!r} is not in the TOC")
        raise self._fail(f"hardlink {path!r}: link chain too long or circular")

    def _attach(self, path: str, node: Node) -> None:
        existing = self._paths.get(path)
        if existing is not None and existing.type == "dir" and node.type == "dir":
            node.children.update(existing.children)  # an implicit parent made explicit
        parent_path, _, base = path.rpartition("/")
        parent = self._directory(parent_path)
        parent.children[base] = node
        self._paths[path] = node

    def _directory(self, path: str) -> Node:
        """The directory at ``path``, made (with its missing parents) when the TOC has none.
        Iterative: a hostile TOC may name paths thousands of directories deep."""
        missing: list[str] = []
        parent = self.root
        while path != "":
            existing = self._paths.get(path)
            if existing is not None:
                if existing.type != "dir":
                    raise self._fail(f"{path!r} is used as a directory but is a {existing.type}")
                parent = existing
                break
            missing.append(path)
            self._implicit_budget -= len(path)
            if self._implicit_budget < 0:
                raise self._fail(
                    f"the paths of its unlisted parent directories take more than "
                    f"{MAX_IMPLICIT_PATH_BYTES >> 20} MiB (paths too deep)"
                )
            path = _parent(path)
        for name in reversed(missing):
            implicit = Node(name=name, type="dir", mode=IMPLICIT_DIR_MODE, implicit=True)
            parent.children[name.rpartition("/")[2]] = implicit
            self._paths[name] = implicit
            parent = implicit
        return parent
