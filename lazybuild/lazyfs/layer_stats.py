"""Counters of one lazily served layer, reported by status commands and benchmarks."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class LayerStats:
    digest: str
    size: int
    bytes_fetched: int = 0  # compressed bytes received: TOC, prefetch, chunks
    requests: int = 0  # range requests issued (TOC reads included)
    cache_hits: int = 0  # chunks served from memory or the disk cache
    chunks_fetched: int = 0  # chunks fetched, verified and cached
    prefetch_bytes: int = 0
    fetch_seconds: float = 0.0  # wall time spent waiting for range requests

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
