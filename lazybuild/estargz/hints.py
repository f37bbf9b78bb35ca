"""lazybuild's layout hints on an eStargz layer's descriptor (see ``oci.mediatypes``).

A hint only says where to read first: what is read is still checked against the TOC
digest and the chunk digests, so a wrong hint costs a request, not correctness. Values
that cannot be right (not a decimal, outside the blob) are ignored.
"""

from __future__ import annotations

from lazybuild.estargz.footer import FOOTER_SIZE
from lazybuild.oci import mediatypes
from lazybuild.oci.descriptor import Descriptor


def toc_offset_hint(descriptor: Descriptor) -> int | None:
    """Where the layer's TOC member starts, if its descriptor says so plausibly."""
    return _offset(descriptor, mediatypes.TOC_OFFSET_ANNOTATION)


def prefetch_region_hint(descriptor: Descriptor) -> int | None:
    """The compressed size of the layer's prefetch region [0, n), if its descriptor says
    so plausibly."""
    return _offset(descriptor, mediatypes.PREFETCH_REGION_ANNOTATION)


def _offset(descriptor: Descriptor, key: str) -> int | None:
    value = descriptor.annotations.get(key, "")
    # A blob offset has at most 19 digits; int() of thousands is a ValueError.
    if not value.isascii() or not value.isdigit() or len(value) > 19:
        return None
    offset = int(value)
    return offset if 0 < offset <= descriptor.size - FOOTER_SIZE else None
