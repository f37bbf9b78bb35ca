"""A program's loader and libraries, fetched once its dynamic section has been read.

The loader opens them one after the other, a round trip each; their names are in the
program's bytes already at hand (``elfdeps``), and where they are is found over the
layers of the program's images (``layerset``). They are fetched as a prefetch by the
layer holding each, in one request per layer; libraries read later get the same
treatment, so their own dependencies follow.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from lazybuild.estargz.index import Node
from lazybuild.lazyfs.chunk_fetcher import ChunkFetcher
from lazybuild.lazyfs.elfdeps import candidate_paths, elf_dependencies, is_elf
from lazybuild.lazyfs.layerset import LayerSet
from lazybuild.lazyfs.miss_readahead import WHOLE_FILE_MAX_BYTES

if TYPE_CHECKING:
    from lazybuild.lazyfs.layer import LazyLayer


class LibraryPrefetch:
    def __init__(self, fetcher: ChunkFetcher, layers: LayerSet, layer: LazyLayer) -> None:
        self._fetcher = fetcher
        self._layers = layers
        self._layer = layer  # where the search starts: its images' layers
        self._done: set[str] = set()  # files whose libraries were looked for

    def note(self, node: Node) -> None:
        """``node`` was read: if it is a program whose dynamic section is at hand, start
        fetching its loader and libraries (once per file)."""
        if node.name in self._done:
            return
        head = self._fetcher.bytes_in_memory(node, 0, 4)
        if head is None:
            return  # its first chunk is not at hand: maybe on a later read
        if not is_elf(head):
            self._done.add(node.name)
            return
        try:
            dependencies = elf_dependencies(partial(self._fetcher.bytes_in_memory, node))
        except ValueError:
            self._done.add(node.name)
            return
        if dependencies is None:
            return  # the dynamic section is still to come (the loader reads it next)
        self._done.add(node.name)
        wanted: dict[LazyLayer, list[Node]] = {}
        for paths in candidate_paths(node.name, dependencies):
            found = next(
                (hit for path in paths if (hit := self._layers.resolve(path, self._layer))), None
            )
            if found is not None and found[1].size <= WHOLE_FILE_MAX_BYTES:
                wanted.setdefault(found[0], []).append(found[1])
        for layer, libraries in wanted.items():
            layer.fetch_files_soon(libraries)
