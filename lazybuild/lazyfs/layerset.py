"""The lazy layers one filesystem process serves, for lookups that cross layers.

A program in one layer loads its libraries from another (the compiler from the
toolchain layer, libc from the base). The filesystem does not know how a container
stacks its layers (overlayfs does that above it), but it knows which image each layer
was added for: a path is resolved over the layers of the same images as a union, most
recently added first. Good enough to say where a library probably is, which is all a
prefetch hint needs; whiteouts are not considered. Other images' layers are never
searched: a build's runtime image has a libc of its own, which the compiler in the
builder image does not load.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lazybuild.estargz.index import Node, clean_name

if TYPE_CHECKING:
    from lazybuild.lazyfs.layer import LazyLayer

__all__ = ["LayerSet"]

_MAX_LINKS = 40


class LayerSet:
    def __init__(self) -> None:
        self._layers: list[LazyLayer] = []  # in the order they were added
        self._images: dict[int, set[str]] = {}  # by id(layer): the images it was added for

    def add(self, layer: LazyLayer, image: str) -> None:
        if id(layer) not in self._images:
            self._layers.append(layer)
        self._images.setdefault(id(layer), set()).add(image)

    def discard(self, layer: LazyLayer) -> None:
        if id(layer) in self._images:
            self._layers.remove(layer)
            del self._images[id(layer)]

    def resolve(self, path: str, near: LazyLayer) -> tuple[LazyLayer, Node] | None:
        """The regular file ``path`` leads to in the images ``near`` belongs to, with
        symlinks followed in whichever of their layers has them, and the layer that
        holds it; None when none does."""
        images = self._images.get(id(near), set())
        stack = [layer for layer in self._layers if self._images[id(layer)] & images]
        if not stack:
            stack = [near]
        pending = [part for part in clean_name(path).split("/") if part]
        resolved: list[str] = []
        links = 0
        while pending:
            part = pending.pop(0)
            if part == ".":
                continue
            if part == "..":
                if resolved:
                    resolved.pop()
                continue
            found = _first_with(stack, "/".join([*resolved, part]))
            if found is None:
                return None
            node = found[1]
            if node.type == "symlink":
                links += 1
                if links > _MAX_LINKS:
                    return None
                if node.link_name.startswith("/"):
                    resolved = []
                pending = [p for p in node.link_name.split("/") if p] + pending
                continue
            resolved.append(part)
        found = _first_with(stack, "/".join(resolved)) if resolved else None
        if found is None or found[1].type != "reg":
            return None
        return found


def _first_with(stack: list[LazyLayer], name: str) -> tuple[LazyLayer, Node] | None:
    for layer in reversed(stack):
        node = layer.index.lookup(name)
        if node is not None:
            return layer, node
    return None
