"""What the lazy filesystem shows, without FUSE: layer trees, overlayfs whiteouts, inode numbers.

A layer's TOC is presented the way kernel overlayfs expects a lower directory
(stargz-snapshotter's ``fs/layer/node.go`` does the same):

- ``.wh.<name>`` becomes a char device 0/0 named ``<name>`` (an overlayfs whiteout),
  unless the same directory has a real ``<name>``; every ``.wh.*`` name is hidden;
- a directory holding ``.wh..wh..opq`` is opaque (``trusted.overlay.opaque=y``);
- the TOC and landmark entries are hidden at the layer root.

Inode numbers are ``slot << 32 | local id``: the slot is the layer's (never reused)
number in this mount, the local id is handed out the first time a node is shown.
Both stay fixed while the layer is mounted, so a kernel's cached inode never points
at another file.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from lazybuild.estargz.index import LayerIndex, Node
from lazybuild.estargz.toc import NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOC_TAR_NAME

ROOT_INODE = 1
WHITEOUT_PREFIX = ".wh."
# ".wh..wh.*" names are whiteout metadata (AUFS), never whiteouts of a ".wh.*" file.
WHITEOUT_META_PREFIX = ".wh..wh."
OPAQUE_MARKER = ".wh..wh..opq"
HIDDEN_AT_LAYER_ROOT = frozenset({TOC_TAR_NAME, PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK})
_LOCAL_BITS = 32
_LOCAL_MASK = (1 << _LOCAL_BITS) - 1


def slot_of(inode: int) -> int:
    return inode >> _LOCAL_BITS


def first_inode(slot: int) -> int:
    """The inode of a slot that holds one thing (see ``InodeTable.reserve_slot``)."""
    return (slot << _LOCAL_BITS) | 1


@dataclass(frozen=True)
class Listing:
    """One directory as presented: entries sorted by name, and whether it is opaque."""

    entries: tuple[tuple[bytes, Node], ...]
    by_name: dict[bytes, Node]
    opaque: bool


def present_directory(directory: Node, *, at_layer_root: bool) -> Listing:
    """The overlayfs view of ``directory``'s children (see the module docstring)."""
    shown: dict[bytes, Node] = {}
    whiteouts: dict[str, Node] = {}
    opaque = False
    for name, child in directory.children.items():
        if name == OPAQUE_MARKER:
            opaque = True
        elif name.startswith(WHITEOUT_META_PREFIX):
            continue
        elif name.startswith(WHITEOUT_PREFIX):
            whiteouts[name[len(WHITEOUT_PREFIX) :]] = child
        elif not (at_layer_root and name in HIDDEN_AT_LAYER_ROOT):
            shown[os.fsencode(name)] = child
    for target, marker in whiteouts.items():
        encoded = os.fsencode(target)
        if target and encoded not in shown:
            shown[encoded] = whiteout_node(marker, target)
    ordered = tuple(sorted(shown.items()))
    return Listing(entries=ordered, by_name=dict(ordered), opaque=opaque)


def whiteout_node(marker: Node, target: str) -> Node:
    """The char device 0/0 overlayfs reads as "``target`` is deleted", owned like the marker."""
    parent = os.path.dirname(marker.name)
    return Node(
        name=os.path.join(parent, target),
        type="char",
        mode=0,
        uid=marker.uid,
        gid=marker.gid,
        mtime=marker.mtime,
    )


class LayerTree:
    """One layer's presented tree with its local inode ids; listings are built on first use."""

    def __init__(self, name: str, slot: int, index: LayerIndex) -> None:
        self.name = name
        self.slot = slot
        self.index = index
        self.lookups = 0  # kernel references to this layer's inodes (lookup counts)
        self.removed = False
        self._listings: dict[Node, Listing] = {}
        self._local_ids: dict[Node, int] = {}
        self._nodes: list[Node] = []
        self.root_inode = self.inode_of(index.root)

    def inode_of(self, node: Node) -> int:
        local = self._local_ids.get(node)
        if local is None:
            self._nodes.append(node)
            local = len(self._nodes)
            self._local_ids[node] = local
        return (self.slot << _LOCAL_BITS) | local

    def shown(self) -> Iterator[tuple[int, Node]]:
        """(inode, node) for every node handed out so far: all the kernel may know."""
        for local, node in enumerate(self._nodes, start=1):
            yield (self.slot << _LOCAL_BITS) | local, node

    def node(self, inode: int) -> Node | None:
        local = inode & _LOCAL_MASK
        return self._nodes[local - 1] if 0 < local <= len(self._nodes) else None

    def listing(self, directory: Node) -> Listing:
        listing = self._listings.get(directory)
        if listing is None:
            root = directory is self.index.root
            listing = present_directory(directory, at_layer_root=root)
            self._listings[directory] = listing
            # Whiteout nodes are made here: give them their ids now, while the same
            # objects are cached, so a whiteout keeps its inode.
            for _, child in listing.entries:
                self.inode_of(child)
        return listing

    def lookup(self, directory: Node, name: bytes) -> Node | None:
        return self.listing(directory).by_name.get(name)

    @functools.cached_property
    def inode_count(self) -> int:
        return sum(1 for _ in self.index.walk())

    @functools.cached_property
    def content_bytes(self) -> int:
        return sum(node.size for node in self.index.walk() if node.type == "reg")


@dataclass
class InodeTable:
    """All mounted layers by slot; the root directory lists them by name."""

    _by_slot: dict[int, LayerTree] = field(default_factory=dict)
    _by_name: dict[str, LayerTree] = field(default_factory=dict)
    _next_slot: int = 1

    def add(self, name: str, index: LayerIndex) -> LayerTree:
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"bad layer name {name!r}")
        if name in self._by_name:
            raise ValueError(f"layer {name!r} is already mounted")
        tree = LayerTree(name, self._next_slot, index)
        self._next_slot += 1
        self._by_slot[tree.slot] = tree
        self._by_name[name] = tree
        return tree

    def reserve_slot(self) -> int:
        """A slot for something else the root shows (an image file, its mount
        directory): never a layer's, never reused."""
        slot = self._next_slot
        self._next_slot += 1
        return slot

    def remove(self, name: str) -> LayerTree:
        """Hide the layer; its inodes stay valid until the kernel forgets them all."""
        tree = self._by_name.pop(name)
        tree.removed = True
        self._drop_if_unused(tree)
        return tree

    def by_name(self, name: str) -> LayerTree | None:
        return self._by_name.get(name)

    def resolve(self, inode: int) -> tuple[LayerTree, Node] | None:
        tree = self._by_slot.get(inode >> _LOCAL_BITS)
        if tree is None:
            return None
        node = tree.node(inode)
        return None if node is None else (tree, node)

    def layers_after(self, offset: int) -> Iterator[LayerTree]:
        """Mounted layers in slot order after readdir offset ``offset`` (a slot): adding
        or removing layers during a listing never skips or repeats another layer."""
        for slot in sorted(self._by_slot):
            tree = self._by_slot[slot]
            if slot > offset and not tree.removed:
                yield tree

    def layers(self) -> list[LayerTree]:
        return list(self._by_name.values())

    def remember(self, tree: LayerTree, count: int = 1) -> None:
        tree.lookups += count

    def forget(self, inode: int, count: int) -> None:
        tree = self._by_slot.get(inode >> _LOCAL_BITS)
        if tree is not None:
            tree.lookups = max(0, tree.lookups - count)
            self._drop_if_unused(tree)

    def _drop_if_unused(self, tree: LayerTree) -> None:
        if tree.removed and tree.lookups == 0:
            self._by_slot.pop(tree.slot, None)
