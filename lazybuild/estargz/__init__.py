"""eStargz (and legacy stargz) layers without I/O: footer, TOC, index, reader, writer.

Callers do the fetching and pass bytes in; see ``reader.parse_layer`` for opening
a layer and ``writer.write_estargz`` for building one.
"""

from lazybuild.estargz.footer import (
    FOOTER_SIZE,
    LEGACY_FOOTER_SIZE,
    Footer,
    encode_footer,
    encode_legacy_footer,
    parse_footer,
)
from lazybuild.estargz.index import ChunkRef, IndexStats, LayerIndex, Node, clean_name
from lazybuild.estargz.layerformat import LayerFormat, decompressed_stream, detect_format
from lazybuild.estargz.reader import OpenedLayer, decompress_chunk, parse_layer, tail_read_range
from lazybuild.estargz.toc import (
    NO_PREFETCH_LANDMARK,
    PREFETCH_LANDMARK,
    TOC,
    TOC_TAR_NAME,
    TOCEntry,
    decode_toc_json,
    encode_toc_json,
)
from lazybuild.estargz.writer import WriterOptions, WrittenLayer, write_estargz

__all__ = [
    "FOOTER_SIZE",
    "LEGACY_FOOTER_SIZE",
    "NO_PREFETCH_LANDMARK",
    "PREFETCH_LANDMARK",
    "TOC",
    "TOC_TAR_NAME",
    "ChunkRef",
    "Footer",
    "IndexStats",
    "LayerFormat",
    "LayerIndex",
    "Node",
    "OpenedLayer",
    "TOCEntry",
    "WriterOptions",
    "WrittenLayer",
    "clean_name",
    "decode_toc_json",
    "decompress_chunk",
    "decompressed_stream",
    "detect_format",
    "encode_footer",
    "encode_legacy_footer",
    "encode_toc_json",
    "parse_footer",
    "parse_layer",
    "tail_read_range",
    "write_estargz",
]
