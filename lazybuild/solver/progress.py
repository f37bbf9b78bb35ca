"""Progress events of a solve, keyed by vertex digest, and where they are sent.

The same events serve every renderer (tty, plain, rawjson) and, later, the daemon's
status stream. A ``ProgressWriter`` is either a callback or a trio memory channel; the
solver never closes the channel, its owner does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeAlias

if TYPE_CHECKING:
    import trio


@dataclass(frozen=True)
class VertexStarted:
    """A vertex began: its result is being loaded from the cache or computed."""

    vertex: str
    name: str
    inputs: tuple[str, ...]
    started_at: float
    progress_group: str | None = None


@dataclass(frozen=True)
class VertexCompleted:
    """A vertex is done; ``cached`` when its result came from the cache without running.

    ``error`` is the failure's message when the vertex failed.
    """

    vertex: str
    name: str
    cached: bool
    started_at: float
    completed_at: float
    error: str | None = None


@dataclass(frozen=True)
class VertexLog:
    """Output of a running vertex (a RUN step's stdout or stderr)."""

    vertex: str
    stream: Literal["stdout", "stderr"]
    data: bytes
    timestamp: float


@dataclass(frozen=True)
class VertexStatus:
    """Progress of one named activity inside a vertex (``id``), e.g. bytes fetched of a layer.

    ``total`` is ``None`` when unknown.
    """

    vertex: str
    id: str
    name: str
    current: int
    total: int | None
    timestamp: float
    completed: bool = False


ProgressEvent = VertexStarted | VertexCompleted | VertexLog | VertexStatus
# Light to import without trio (a daemon's client renders these events): trio's
# channel type is named for the type checker only.
ProgressWriter: TypeAlias = (
    "Callable[[ProgressEvent], None] | trio.MemorySendChannel[ProgressEvent]"
)


class ProgressSink:
    """Sends events to an optional writer; a reader that went away does not fail a build."""

    def __init__(self, writer: ProgressWriter | None) -> None:
        self._writer = writer

    async def emit(self, event: ProgressEvent) -> None:
        writer = self._writer
        if writer is None:
            return
        import trio  # the solver's caller runs trio: imported already

        if isinstance(writer, trio.MemorySendChannel):
            try:
                await writer.send(event)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._writer = None
        else:
            writer(event)
