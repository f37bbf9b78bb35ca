"""``--progress=rawjson``: one JSON object per event per line."""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable
from typing import TextIO

from lazybuild.progress.buildview._board import Board, Fetch, Line, Renderer, Status, Vertex
from lazybuild.solver.progress import VertexCompleted, VertexLog, VertexStarted, VertexStatus


class RawJson(Renderer):
    """One JSON object per event per line; output bytes as text, decoded per stream."""

    def __init__(self, stream: TextIO, board: Board, clock: Callable[[], float]) -> None:
        super().__init__(stream, board, clock)
        self._decoders: dict[tuple[str, str], codecs.IncrementalDecoder] = {}
        self._fetch_sent: dict[str, tuple[int, int | None, list[int | None] | None]] = {}

    def _emit(self, **fields: object) -> None:
        self.write(json.dumps(fields) + "\n")

    def started(self, vertex: Vertex, event: VertexStarted) -> None:
        self._emit(
            type="started",
            vertex=event.vertex,
            name=event.name,
            inputs=list(event.inputs),
            started=event.started_at,
            progress_group=event.progress_group,
        )

    def log(self, vertex: Vertex, event: VertexLog, lines: list[Line]) -> None:
        key = (event.vertex, event.stream)
        decoder = self._decoders.get(key)
        if decoder is None:
            decoder = self._decoders[key] = codecs.getincrementaldecoder("utf-8")("replace")
        self._log(event.vertex, event.stream, decoder.decode(event.data), event.timestamp)

    def _log(self, vertex: str, stream: str, data: str, timestamp: float) -> None:
        if data:
            self._emit(type="log", vertex=vertex, stream=stream, data=data, timestamp=timestamp)

    def status(self, vertex: Vertex, status: Status, event: VertexStatus) -> None:
        self._emit(
            type="status",
            vertex=event.vertex,
            id=event.id,
            name=event.name,
            current=event.current,
            total=event.total,
            timestamp=event.timestamp,
            completed=event.completed,
        )

    def completed(self, vertex: Vertex, event: VertexCompleted, lines: list[Line]) -> None:
        for (digest, stream), decoder in list(self._decoders.items()):
            if digest == event.vertex:
                # An incomplete UTF-8 sequence left at the end.
                self._log(digest, stream, decoder.decode(b"", final=True), event.completed_at)
                del self._decoders[digest, stream]
        self._emit(
            type="completed",
            vertex=event.vertex,
            name=event.name,
            started=event.started_at,
            completed=event.completed_at,
            cached=event.cached,
            error=event.error,
        )

    def message(self, text: str, timestamp: float) -> None:
        self._emit(type="message", data=text, timestamp=timestamp)

    def fetch(self, fetch: Fetch) -> None:
        download = fetch.download
        downloading = None if download is None else [download.done, download.total]
        values = (fetch.fetched, fetch.total, downloading)
        if self._fetch_sent.get(fetch.image) != values:
            self._fetch_sent[fetch.image] = values
            # ``downloading`` ([bytes done, total] of whole-layer downloads) only when some are.
            extra = {} if downloading is None else {"downloading": downloading}
            self._emit(
                type="fetch",
                image=fetch.image,
                fetched=fetch.fetched,
                total=fetch.total,
                timestamp=self.clock(),
                **extra,
            )
