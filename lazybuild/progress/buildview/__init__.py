"""The progress display of ``lazybuild build``, in the modes of ``docker buildx build
--progress``: the solver's events and the build driver's own phases.

- ``plain``: BuildKit-style numbered blocks for CI logs (``#3 [build 2/4] RUN make``,
  ``#3 0.512 <output line>``, ``#3 DONE 1.2s`` / ``#3 CACHED`` / ``#3 ERROR: ...``);
- ``tty``: a live view redrawn in place (running steps, their last output lines, bytes
  fetched per lazily mounted image), finished steps printed once above it, then a summary;
- ``rawjson``: one JSON object per event per line;
- ``quiet``: nothing (the CLI prints errors);
- ``auto``: ``tty`` when the stream is a terminal, else ``plain``.

Whatever the mode, the last output lines of every step are kept for ``tail()``.

Nothing here waits or needs trio: every method is synchronous and cheap, to be called from
whichever task has news. The live view is redrawn at most once per ``redraw_interval``, so
the driver calls ``fetch_status`` (which redraws when due) or ``tick()`` now and then to
let the elapsed times move and to show what arrived since the last redraw.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TextIO

from lazybuild.progress.buildview._board import Board, Fetch, Renderer, Status
from lazybuild.progress.buildview._plain import Plain
from lazybuild.progress.buildview._rawjson import RawJson
from lazybuild.progress.buildview._tty import Tty
from lazybuild.progress.lines import Progress
from lazybuild.progress.modes import MODES, Mode
from lazybuild.progress.transfer import Transfer, TransferBoard
from lazybuild.solver.progress import (
    ProgressEvent,
    VertexCompleted,
    VertexLog,
    VertexStarted,
    VertexStatus,
)

__all__ = ["MODES", "BuildProgress", "Mode", "Phase"]


class BuildProgress:
    """Shows a build's progress on ``stream`` (default: ``sys.stderr``) in ``mode``.

    Pass it as the solver's ``progress=`` (it is a ``ProgressWriter``: call it with an
    event); wrap the driver's own work in ``phase()``; call ``fetch_status`` (or ``tick``)
    about once a second; ``close()`` (or leave the ``with`` block) when the build ends.
    ``clock`` gives the time in the solver's timebase (``time.time``).
    """

    def __init__(
        self,
        mode: Mode = "auto",
        stream: TextIO | None = None,
        *,
        clock: Callable[[], float] = time.time,
        tail_lines: int = 20,
        redraw_interval: float = 0.1,
        terminal_size: tuple[int, int] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown progress mode {mode!r}, expected one of {', '.join(MODES)}")
        self.stream = stream if stream is not None else sys.stderr
        if mode == "auto":
            mode = "tty" if _isatty(self.stream) else "plain"
        self.mode: Mode = mode
        self.clock = clock
        self._board = Board(tail_lines, clock())
        # Per image, its whole-layer downloads (``fetch_status``): rate and ETA.
        self._download_board = TransferBoard(clock)
        self._downloads: dict[str, Transfer] = {}
        self._phases = 0
        self._renderer: Renderer
        if self.mode == "tty":
            self._renderer = Tty(
                self.stream,
                self._board,
                clock,
                size=terminal_size,
                redraw_interval=redraw_interval,
            )
        elif self.mode == "plain":
            self._renderer = Plain(self.stream, self._board, clock)
        elif self.mode == "rawjson":
            self._renderer = RawJson(self.stream, self._board, clock)
        else:
            self._renderer = Renderer(self.stream, self._board, clock)

    def __call__(self, event: ProgressEvent) -> None:
        """Takes one solver event (this makes the display a ``ProgressWriter``)."""
        board = self._board
        renderer = self._renderer
        if isinstance(event, VertexStarted):
            vertex = board.vertex(event.vertex, event.name)
            vertex.name = event.name
            vertex.started_at, vertex.completed_at = event.started_at, None
            vertex.cached, vertex.error = False, None
            renderer.started(vertex, event)
        elif isinstance(event, VertexLog):
            vertex = board.vertex(event.vertex)
            renderer.log(vertex, event, board.log(vertex, event))
        elif isinstance(event, VertexStatus):
            vertex = board.vertex(event.vertex)
            status = vertex.statuses.get(event.id)
            if status is None:
                status = vertex.statuses[event.id] = Status(
                    "", 0, None, event.timestamp, completed=False
                )
            status.name, status.current, status.total = event.name, event.current, event.total
            status.completed = event.completed
            renderer.status(vertex, status, event)
        else:
            vertex = board.vertex(event.vertex, event.name)
            vertex.started_at, vertex.completed_at = event.started_at, event.completed_at
            vertex.cached, vertex.error = event.cached, event.error
            renderer.completed(vertex, event, board.flush(vertex))

    @contextmanager
    def phase(self, name: str) -> Iterator[Phase]:
        """Shows the driver's own work (``exporting layers``, ``pushing ...``) as a step.

        It ends as done, or with the error of an exception that leaves the block; a
        cancellation leaves it running, to be shown as canceled by ``close()``.
        """
        self._phases += 1
        phase = Phase(self, f"phase:{self._phases}", name)
        started = self.clock()
        self(VertexStarted(phase.vertex, name, (), started))
        try:
            yield phase
        except Exception as error:
            message = str(error) or type(error).__name__
            self(
                VertexCompleted(
                    phase.vertex,
                    name,
                    cached=False,
                    started_at=started,
                    completed_at=self.clock(),
                    error=message,
                )
            )
            raise
        self(
            VertexCompleted(
                phase.vertex, name, cached=False, started_at=started, completed_at=self.clock()
            )
        )

    def line(self, message: str) -> None:
        """Shows a message that belongs to no step (``resolving image ...``)."""
        self._renderer.message(message, self.clock())

    def fetch_status(
        self,
        image: str,
        fetched_bytes: int,
        total_bytes: int | None,
        downloading: tuple[int, int] | None = None,
    ) -> None:
        """Bytes of a lazily mounted image fetched so far, of ``total_bytes`` (its size);
        ``downloading``: bytes done and total of its whole-layer downloads under way
        (layers that are not eStargz; counted in the figures before), shown with their
        rate and ETA. The live view is redrawn if that is due (as ``tick``)."""
        fetch = self._board.fetches[image] = Fetch(
            image, fetched_bytes, total_bytes, self._download(image, downloading)
        )
        self._renderer.fetch(fetch)
        self._renderer.tick()

    def _download(self, image: str, downloading: tuple[int, int] | None) -> Transfer | None:
        """The image's downloads as one transfer, its rate measured over the updates."""
        download = self._downloads.get(image)
        if downloading is None:
            if download is not None:
                del self._downloads[image]
                download.end()
            return None
        done, total = downloading
        if download is None:
            download = self._downloads[image] = self._download_board.begin(
                image, total, "downloading"
            )
        download.total = total
        download.seek(done)
        download.sample(self.clock())
        return download

    def tick(self) -> None:
        """Redraws the live view if it is due (tty); does nothing in the other modes."""
        self._renderer.tick()

    def tail(self, vertex: str) -> list[str]:
        """The last output lines of a vertex (by digest), at most ``tail_lines``."""
        found = self._board.vertices.get(vertex)
        return found.tail() if found is not None else []

    def as_progress(self) -> Progress:
        """A ``lazybuild.progress.lines.Progress`` whose lines go to ``line()``, for the helpers
        that take one (mounting an image, converting)."""
        return _ProgressAdapter(self.line)

    def close(self) -> None:
        """Ends the display: steps still running are shown as canceled, then the summary
        (tty) or the last fetch figures (plain). Idempotent."""
        renderer = self._renderer
        # Whatever comes later only updates what tail() returns.
        self._renderer = Renderer(self.stream, self._board, self.clock)
        renderer.close()

    def __enter__(self) -> BuildProgress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class Phase:
    """A step of the driver's own, from ``BuildProgress.phase()``."""

    def __init__(self, progress: BuildProgress, vertex: str, name: str) -> None:
        self.progress = progress
        self.vertex = vertex
        self.name = name

    def line(self, text: str) -> None:
        """An output line of the step (``writing image sha256:...``)."""
        data = text.encode("utf-8", errors="replace") + b"\n"
        self.progress(VertexLog(self.vertex, "stdout", data, self.progress.clock()))

    def status(
        self, id: str, name: str, current: int, total: int | None = None, *, completed: bool = False
    ) -> None:
        """Progress of one activity of the step, in bytes (e.g. a layer being pushed)."""
        now = self.progress.clock()
        self.progress(VertexStatus(self.vertex, id, name, current, total, now, completed))

    def as_progress(self) -> Progress:
        """A ``lazybuild.progress.lines.Progress`` whose lines are this step's output lines."""
        return _ProgressAdapter(self.line)


class _ProgressAdapter(Progress):
    def __init__(self, line: Callable[[str], None]) -> None:
        super().__init__()
        self._line = line

    def line(self, message: str) -> None:
        self._line(message)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
