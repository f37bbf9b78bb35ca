"""``--progress=plain``: BuildKit-style numbered blocks, for CI logs."""

from __future__ import annotations

from collections.abc import Callable
from typing import TextIO

from lazybuild.progress.buildview._board import (
    Board,
    Fetch,
    Line,
    Renderer,
    Status,
    Vertex,
    amount,
    download_text,
    fetch_text,
    one_line,
)
from lazybuild.solver.progress import VertexCompleted, VertexLog, VertexStarted, VertexStatus


class Plain(Renderer):
    """Blocks of ``#<number>`` lines; a block restarts with the step's name whenever another
    step's lines came in between, as BuildKit's plain printer does."""

    status_interval = 5.0  # seconds between two lines of one unfinished status
    fetch_interval = 10.0  # seconds between two fetch lines of one image

    def __init__(self, stream: TextIO, board: Board, clock: Callable[[], float]) -> None:
        super().__init__(stream, board, clock)
        self._current: Vertex | None = None
        self._wrote = False
        self._status_printed: dict[tuple[str, str], float] = {}
        self._fetch_printed: dict[str, tuple[tuple[int, int | None], float]] = {}

    def _to(self, vertex: Vertex | None) -> str:
        """What starts the block of ``vertex`` (of standalone lines for ``None``), if needed."""
        if self._wrote and vertex is self._current:
            return ""
        text = "\n" if self._wrote else ""
        self._current, self._wrote = vertex, True
        return text + (f"#{vertex.number} {one_line(vertex.name)}\n" if vertex else "")

    def _lines(self, vertex: Vertex, lines: list[Line]) -> str:
        if not lines:
            return ""
        base = vertex.started_at
        return self._to(vertex) + "".join(
            f"#{vertex.number} {at - (base if base is not None else at):.3f} {text}\n"
            for text, at in lines
        )

    def started(self, vertex: Vertex, event: VertexStarted) -> None:
        self.write(self._to(vertex))

    def log(self, vertex: Vertex, event: VertexLog, lines: list[Line]) -> None:
        self.write(self._lines(vertex, lines))

    def status(self, vertex: Vertex, status: Status, event: VertexStatus) -> None:
        key = (vertex.digest, event.id)
        printed = self._status_printed.setdefault(key, status.first_seen)
        if not status.completed and event.timestamp - printed < self.status_interval:
            return
        self._status_printed[key] = event.timestamp
        figures = amount(status.current, status.total)
        elapsed = event.timestamp - status.first_seen
        done = " done" if status.completed else ""
        text = f"#{vertex.number} {one_line(status.name)}{' ' if figures else ''}{figures}"
        self.write(f"{self._to(vertex)}{text} {elapsed:.1f}s{done}\n")

    def completed(self, vertex: Vertex, event: VertexCompleted, lines: list[Line]) -> None:
        text = self._lines(vertex, lines) + self._to(vertex)
        if event.error is not None:
            first, *rest = event.error.splitlines() or [""]
            text += f"#{vertex.number} ERROR: {first}\n"
            text += "".join(f"#{vertex.number} {line}\n" for line in rest)
        elif event.cached:
            text += f"#{vertex.number} CACHED\n"
        else:
            text += f"#{vertex.number} DONE {event.completed_at - event.started_at:.1f}s\n"
        self.write(text)

    def message(self, text: str, timestamp: float) -> None:
        self.write(self._to(None) + text + "\n")

    def fetch(self, fetch: Fetch, *, force: bool = False) -> None:
        values = (fetch.fetched, fetch.total)
        last = self._fetch_printed.get(fetch.image)
        now = self.clock()
        if last is not None and (
            last[0] == values or (now - last[1] < self.fetch_interval and not force)
        ):
            return
        self._fetch_printed[fetch.image] = (values, now)
        downloading = download_text(fetch, now)
        text = f"lazy {fetch.image}: fetched {fetch_text(fetch)}"
        self.message(text + (f"; downloading {downloading}" if downloading else ""), now)

    def close(self) -> None:
        for vertex in self.board.running():
            text = self._lines(vertex, self.board.flush(vertex)) + self._to(vertex)
            self.write(text + f"#{vertex.number} CANCELED\n")
        for fetch in self.board.fetches.values():
            self.fetch(fetch, force=True)
