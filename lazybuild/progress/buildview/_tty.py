"""``--progress=tty``: a live view erased and redrawn in place, finished steps printed
once above it, and a summary at the end."""

from __future__ import annotations

import os
import re
import unicodedata
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
)
from lazybuild.solver.progress import VertexCompleted, VertexLog, VertexStarted, VertexStatus

_ESCAPES = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|.?)")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f]")


def _clean(text: str) -> str:
    """Text that moves the cursor exactly its length: no escapes, no control characters."""
    return _CONTROLS.sub(" ", _ESCAPES.sub("", text))


def _cells(char: str) -> int:
    return 2 if unicodedata.east_asian_width(char) in "WF" else 1


def _clip(text: str, cells: int) -> str:
    used = 0
    for index, char in enumerate(text):
        used += _cells(char)
        if used > cells:
            return text[:index]
    return text


def _row(left: str, right: str, width: int) -> str:
    """``left`` and ``right`` on one row of ``width`` cells, clipped to fit and never
    reaching the last column (where terminals differ on wrapping)."""
    room = max(width - 1, 1)
    left = _clean(left)
    if not right:
        return _clip(left, room)
    left = _clip(left, max(room - len(right) - 1, 0))
    pad = max(room - sum(map(_cells, left)) - len(right), 1)
    return left + " " * pad + right


class Tty(Renderer):
    """Finished steps are printed once, above a live view that is erased and redrawn."""

    log_rows = 6  # output lines shown per running step, fewer when the screen is short

    def __init__(
        self,
        stream: TextIO,
        board: Board,
        clock: Callable[[], float],
        *,
        size: tuple[int, int] | None,
        redraw_interval: float,
    ) -> None:
        super().__init__(stream, board, clock)
        self._size = size
        self._interval = redraw_interval
        self._above: list[Vertex | str] = []
        self._rows = 0  # rows of the live view now on the screen
        self._drawn_at = float("-inf")

    def started(self, vertex: Vertex, event: VertexStarted) -> None:
        self.tick()

    def log(self, vertex: Vertex, event: VertexLog, lines: list[Line]) -> None:
        self.tick()

    def status(self, vertex: Vertex, status: Status, event: VertexStatus) -> None:
        self.tick()

    def completed(self, vertex: Vertex, event: VertexCompleted, lines: list[Line]) -> None:
        self._above.append(vertex)
        self.tick()

    def message(self, text: str, timestamp: float) -> None:
        self._above.append(text)
        self.tick()

    def fetch(self, fetch: Fetch) -> None:
        self.tick()

    def tick(self) -> None:
        if self.clock() - self._drawn_at >= self._interval:
            self._draw(final=False)

    def close(self) -> None:
        self._above.extend(self.board.running())
        self._draw(final=True)

    def _screen(self) -> tuple[int, int]:
        if self._size is not None:
            return self._size
        try:
            size = os.get_terminal_size(self.stream.fileno())
        except (AttributeError, OSError, ValueError):
            return 80, 24
        return size.columns or 80, size.lines or 24

    def _draw(self, *, final: bool) -> None:
        now = self._drawn_at = self.clock()
        width, height = self._screen()
        out = [f"\r\x1b[{self._rows}A" if self._rows else "\r", "\x1b[J"]
        for item in self._above:
            out.append(self._done_row(item, width) if isinstance(item, Vertex) else item)
            out.append("\n")
        self._above.clear()
        rows = self._summary(now) if final else self._live(width, max(height - 2, 2), now)
        out.extend(row + "\n" for row in rows)
        self._rows = 0 if final else len(rows)
        self.write("".join(out))

    def _done_row(self, vertex: Vertex, width: int) -> str:
        name = vertex.name
        if vertex.completed_at is None:
            label = "CANCELED "
        elif vertex.error is not None:
            label = "ERROR "
        else:
            label = "CACHED " if vertex.cached else ""
        started = vertex.started_at if vertex.started_at is not None else self.board.started
        end = vertex.completed_at if vertex.completed_at is not None else self.clock()
        return _row(f" => {label}{name}", "" if vertex.cached else f"{end - started:.1f}s", width)

    def _header(self, now: float) -> str:
        done = sum(not v.running for v in self.board.vertices.values())
        total = len(self.board.vertices)
        return f"[+] Building {now - self.board.started:.1f}s ({done}/{total})"

    def _live(self, width: int, max_rows: int, now: float) -> list[str]:
        for logs in (self.log_rows, 2, 0):
            rows = [self._header(now)]
            for vertex in self.board.running():
                started = vertex.started_at if vertex.started_at is not None else now
                rows.append(_row(f" => {vertex.name}", f"{now - started:.1f}s", width))
                for status in vertex.statuses.values():
                    if not status.completed:
                        left = f" => => {status.name} {amount(status.current, status.total)}"
                        rows.append(_row(left, f"{now - status.first_seen:.1f}s", width))
                if logs:
                    rows.extend(
                        _row(f" => => # {line}", "", width) for line in vertex.tail()[-logs:]
                    )
            for fetch in self.board.fetches.values():
                rows.append(_row(f" => lazy {fetch.image}", fetch_text(fetch), width))
                downloading = download_text(fetch, now)
                if downloading:  # layers that are not eStargz, downloaded whole
                    rows.append(_row(" => => downloading whole layers", downloading, width))
            if len(rows) <= max_rows:
                return rows
        return [*rows[: max_rows - 1], _row(f" => ... {len(rows) - max_rows + 1} more", "", width)]

    def _summary(self, now: float) -> list[str]:
        vertices = self.board.vertices.values()
        if any(v.error is not None for v in vertices):
            outcome = "FAILED"
        elif any(v.running for v in vertices):
            outcome = "CANCELED"
        else:
            outcome = "FINISHED"
        rows = [f"{self._header(now)} {outcome}"]
        rows.extend(
            f" => lazy {fetch.image}: fetched {fetch_text(fetch)}"
            for fetch in self.board.fetches.values()
        )
        return rows
