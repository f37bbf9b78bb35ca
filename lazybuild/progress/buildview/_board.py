"""What every mode shares: the steps seen, numbered in start order, with their output
lines and statuses, and the renderer interface (whose base shows nothing: quiet)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from lazybuild.progress.lines import human_size, short_digest
from lazybuild.progress.transfer import Transfer, duration
from lazybuild.solver.progress import VertexCompleted, VertexLog, VertexStarted, VertexStatus

# A line longer than this without a newline is cut into lines of this size.
MAX_PARTIAL = 16 * 1024


@dataclass
class Status:
    """One activity of a step (``VertexStatus.id``), as last reported."""

    name: str
    current: int
    total: int | None
    first_seen: float
    completed: bool


@dataclass
class Partial:
    data: bytearray
    started: float


@dataclass(eq=False)
class Vertex:
    digest: str
    number: int
    name: str
    lines: deque[str]
    started_at: float | None = None
    completed_at: float | None = None
    cached: bool = False
    error: str | None = None
    partial: dict[str, Partial] = field(default_factory=dict)
    statuses: dict[str, Status] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.completed_at is None

    def tail(self) -> list[str]:
        """The kept lines, then the unfinished line of each stream."""
        pending = [line_text(p.data) for p in self.partial.values() if p.data]
        keep = self.lines.maxlen or 0
        return [*self.lines, *pending][-keep:] if keep else []


@dataclass
class Fetch:
    image: str
    fetched: int
    total: int | None
    # The image's whole-layer downloads under way (layers that are not eStargz), as one
    # transfer: bytes, rate and ETA. None when there are none.
    download: Transfer | None = None


Line = tuple[str, float]  # an output line and when it began


class Board:
    """Every vertex seen, numbered in start order, with its output lines and statuses."""

    def __init__(self, tail_lines: int, started: float) -> None:
        self.tail_lines = tail_lines
        self.started = started
        self.vertices: dict[str, Vertex] = {}
        self.fetches: dict[str, Fetch] = {}

    def vertex(self, digest: str, name: str | None = None) -> Vertex:
        found = self.vertices.get(digest)
        if found is None:
            number = len(self.vertices) + 1
            found = Vertex(
                digest, number, name or short_digest(digest), deque(maxlen=self.tail_lines)
            )
            self.vertices[digest] = found
        return found

    def running(self) -> list[Vertex]:
        return [v for v in self.vertices.values() if v.started_at is not None and v.running]

    def log(self, vertex: Vertex, event: VertexLog) -> list[Line]:
        partial = vertex.partial.get(event.stream)
        if partial is None:
            partial = vertex.partial[event.stream] = Partial(bytearray(), event.timestamp)
        elif not partial.data:
            partial.started = event.timestamp
        partial.data += event.data
        lines: list[Line] = []
        while (end := partial.data.find(b"\n")) >= 0 or len(partial.data) > MAX_PARTIAL:
            cut = end if end >= 0 else MAX_PARTIAL
            lines.append((line_text(partial.data[:cut]), partial.started))
            del partial.data[: cut + 1 if end >= 0 else cut]
            partial.started = event.timestamp
        vertex.lines.extend(text for text, _ in lines)
        return lines

    def flush(self, vertex: Vertex) -> list[Line]:
        """Ends the unfinished lines of the vertex's streams."""
        lines = [(line_text(p.data), p.started) for p in vertex.partial.values() if p.data]
        vertex.partial.clear()
        vertex.lines.extend(text for text, _ in lines)
        return lines


def line_text(data: bytes | bytearray) -> str:
    """What a terminal would show of one output line: the text after its last ``\\r``."""
    text = bytes(data).decode("utf-8", errors="replace").removesuffix("\r")
    return text.rsplit("\r", 1)[-1]


def amount(current: int, total: int | None) -> str:
    if total is not None:
        return f"{human_size(current)} / {human_size(total)}"
    return human_size(current) if current else ""


def fetch_text(fetch: Fetch) -> str:
    text = f"{human_size(fetch.fetched)}"
    if fetch.total is not None:
        text += f" / {human_size(fetch.total)}"
        if fetch.total:
            text += f" ({100 * fetch.fetched / fetch.total:.1f}%)"
    return text


def download_text(fetch: Fetch, now: float) -> str:
    """``5.0 MB / 40.0 MB, 2.5 MB/s, ETA 14s``: the image's whole-layer downloads under
    way (what is not known yet left out); empty without any."""
    download = fetch.download
    if download is None:
        return ""
    # As of the last report: between two, the bytes would stand still while time runs.
    if download.samples:
        now = download.samples[-1][0]
    parts = [amount(download.done, download.total) or "0 B"]
    rate = download.rate(now)
    if rate is not None:
        parts.append(f"{human_size(int(rate))}/s")
    eta = download.eta(now)
    if eta is not None:
        parts.append(f"ETA {duration(eta)}")
    return ", ".join(parts)


def one_line(text: str) -> str:
    return " ".join(text.splitlines())


class Renderer:
    """Quiet: shows nothing. The other modes override what they show."""

    def __init__(self, stream: TextIO, board: Board, clock: Callable[[], float]) -> None:
        self.stream = stream
        self.board = board
        self.clock = clock

    def write(self, text: str) -> None:
        if text:
            self.stream.write(text)
            self.stream.flush()

    def started(self, vertex: Vertex, event: VertexStarted) -> None:
        pass

    def log(self, vertex: Vertex, event: VertexLog, lines: list[Line]) -> None:
        pass

    def status(self, vertex: Vertex, status: Status, event: VertexStatus) -> None:
        pass

    def completed(self, vertex: Vertex, event: VertexCompleted, lines: list[Line]) -> None:
        pass

    def message(self, text: str, timestamp: float) -> None:
        pass

    def fetch(self, fetch: Fetch) -> None:
        pass

    def tick(self) -> None:
        pass

    def close(self) -> None:
        pass
