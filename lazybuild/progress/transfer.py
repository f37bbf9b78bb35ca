"""Progress of long blob transfers (uploads, whole-blob downloads): bytes, rate, ETA.

The registry client reports every transfer to the board in ``ACTIVE`` (a context
variable, so no caller threads a parameter through the image-rewrite code; trio tasks
and worker threads inherit it from where they were started). A command installs a
board with ``reporting(...)``:

- ``TerminalView``: a few lines redrawn in place on a terminal (as ``docker push``),
  each transfer's line printed once when it ends; ``terminal_view()`` makes one only
  when stderr is a terminal and the user did not ask for plain or quiet progress;
- ``LineReport``: occasional one-line messages through a callback, for a display that
  owns the terminal already (the build's).

``Mirror`` puts on a board the transfers another process makes (the filesystem
process's whole-layer downloads, which its ``stats`` lists), as they are polled.

Without a board (not a terminal, ``-q``), the registry client's cost is one
``ACTIVE.get()`` per blob and one ``is None`` per piece downloaded: nothing measurable.
Every board method is synchronous, cheap and thread-safe (a lock), so tasks and
threads may report alike; redraws are throttled to ``interval``.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TextIO

__all__ = [
    "ACTIVE",
    "LineReport",
    "Mirror",
    "TerminalView",
    "Transfer",
    "TransferBoard",
    "active",
    "begin",
    "figures",
    "lines_unless_shown",
    "reporting",
    "terminal_view",
]

# Seconds a transfer must have run before it is shown: blobs done in less (configs,
# manifests' neighbours, blobs the registry had) are not worth a line.
SHOW_AFTER = 0.5
# The rate is measured over this many seconds of the most recent samples.
RATE_WINDOW = 5.0
# Progress modes (``--progress``, ``BUILDKIT_PROGRESS``) in which nothing is redrawn.
_NO_LIVE_VIEW = frozenset({"plain", "rawjson", "quiet"})


def binary_size(size: float) -> str:
    """``12.3 MiB``: binary units, as docker's transfer bars."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def duration(seconds: float) -> str:
    """``5s``, ``2m05s``, ``1h02m``: short enough for an ETA column."""
    whole = int(seconds + 0.5)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def blob_label(digest: str) -> str:
    """``sha256:0123456789ab``: the algorithm and the first 12 hex digits."""
    algorithm, _, hexdigits = digest.partition(":")
    return f"{algorithm}:{hexdigits[:12]}" if hexdigits else digest[:12]


@dataclass(eq=False)
class Transfer:
    """One blob on its way; the registry client calls ``advance`` / ``seek`` / ``end``."""

    board: TransferBoard
    digest: str
    total: int | None
    verb: str  # "pushing", "downloading"
    started: float
    done: int = 0
    shown: bool = False
    ended: bool = False
    # (time, done) at redraws, for the rate; a few dozen at most (RATE_WINDOW / interval).
    samples: deque[tuple[float, int]] = field(default_factory=deque)

    def advance(self, count: int) -> None:
        """``count`` more bytes went through."""
        self.board.moved(self, self.done + count)

    def seek(self, done: int) -> None:
        """Bytes done so far is ``done`` (an upload started over goes back)."""
        self.board.moved(self, done)

    def end(self, *, ok: bool = True) -> None:
        """The transfer is over: done (``ok``) or failed (said elsewhere, by its error)."""
        self.board.finished(self, ok=ok)

    def sample(self, now: float) -> None:
        """Remember how far it was at ``now`` (at a redraw), for the rate."""
        self.samples.append((now, self.done))
        # The newest sample at least RATE_WINDOW old stays: the rate needs a start.
        while len(self.samples) > 1 and now - self.samples[1][0] >= RATE_WINDOW:
            self.samples.popleft()

    def rate(self, now: float) -> float | None:
        """Bytes per second over the last ``RATE_WINDOW`` seconds; None until measurable."""
        then, before = self.samples[0] if self.samples else (self.started, 0)
        if now - then < 0.2:  # too recent to measure by: since the start instead
            then, before = self.started, 0
        span = now - then
        if span < 0.2:
            return None
        return max(self.done - before, 0) / span

    def eta(self, now: float) -> float | None:
        rate = self.rate(now)
        if self.total is None or not rate:
            return None
        return max(self.total - self.done, 0) / rate


class TransferBoard:
    """Every transfer under way; subclasses show them. Thread-safe: one lock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.transfers: list[Transfer] = []
        self._lock = threading.Lock()

    def begin(self, digest: str, total: int | None, verb: str, *, ago: float = 0.0) -> Transfer:
        """A transfer now under way; ``ago``: it started that many seconds ago (one
        another process reports)."""
        transfer = Transfer(self, digest, total, verb, self.clock() - max(ago, 0.0))
        with self._lock:
            self.transfers.append(transfer)
        return transfer

    def moved(self, transfer: Transfer, done: int) -> None:
        with self._lock:
            if transfer.ended:
                return
            if done < transfer.done:
                transfer.samples.clear()  # started over: the old samples would lie
            transfer.done = done
            self._changed(self.clock())

    def finished(self, transfer: Transfer, *, ok: bool) -> None:
        with self._lock:
            if transfer.ended:
                return
            transfer.ended = True
            if transfer in self.transfers:
                self.transfers.remove(transfer)
            self._ended(transfer, self.clock(), ok=ok)

    def message(self, text: str) -> None:
        """A line of the command's own, shown without breaking the view."""
        with self._lock:
            self._message(text)

    def close(self) -> None:
        with self._lock:
            self._close()

    # What subclasses show; called under the lock.
    def _changed(self, now: float) -> None:
        pass

    def _ended(self, transfer: Transfer, now: float, *, ok: bool) -> None:
        pass

    def _message(self, text: str) -> None:
        pass

    def _close(self) -> None:
        pass


def _is_long(transfer: Transfer, now: float) -> bool:
    return transfer.shown or now - transfer.started >= SHOW_AFTER


def figures(transfer: Transfer, now: float) -> str:
    """``12.3 MiB / 40.1 MiB  5.2 MiB/s  ETA 5s`` (what is not known yet left out)."""
    amount = binary_size(transfer.done)
    if transfer.total is not None:
        amount += f" / {binary_size(transfer.total)}"
    rate = transfer.rate(now)
    eta = transfer.eta(now)
    parts = [amount]
    parts.append(f"{binary_size(rate)}/s" if rate is not None else "")
    parts.append(f"ETA {duration(eta)}" if eta is not None else "")
    return "  ".join(part for part in parts if part)


def row(transfer: Transfer, now: float) -> str:
    """``sha256:0123456789ab pushing  12.3 MiB / 40.1 MiB  5.2 MiB/s  ETA 5s``"""
    return f"{blob_label(transfer.digest)} {transfer.verb:<11} {figures(transfer, now)}"


def ended_row(transfer: Transfer, now: float) -> str:
    """``sha256:0123456789ab pushed 40.1 MiB in 7.7s (5.2 MiB/s)``"""
    took = max(now - transfer.started, 1e-9)
    verb = {"pushing": "pushed", "downloading": "downloaded"}.get(transfer.verb, transfer.verb)
    return (
        f"{blob_label(transfer.digest)} {verb} {binary_size(transfer.done)} in {took:.1f}s "
        f"({binary_size(transfer.done / took)}/s)"
    )


class TerminalView(TransferBoard):
    """The transfers as lines redrawn in place at the bottom of a terminal; each printed
    once, above them, when it is done. At most ``max_rows`` lines (the rest counted)."""

    def __init__(
        self,
        stream: TextIO,
        *,
        clock: Callable[[], float] = time.monotonic,
        interval: float = 0.2,
        width: int | None = None,
        max_rows: int = 10,
    ) -> None:
        super().__init__(clock)
        self.stream = stream
        self.interval = interval
        self.max_rows = max_rows
        self._width = width
        self._rows = 0  # rows of the live view now on the screen
        self._drawn_at = float("-inf")
        self._above: list[str] = []

    def _changed(self, now: float) -> None:
        if now - self._drawn_at >= self.interval:
            self._draw(now)

    def _ended(self, transfer: Transfer, now: float, *, ok: bool) -> None:
        if ok and _is_long(transfer, now):  # long, though maybe done between two redraws
            self._above.append(ended_row(transfer, now))
        if self._above or transfer.shown:
            self._draw(now)  # at once: a finished line must not linger as live

    def _message(self, text: str) -> None:
        self._above.append(text.rstrip("\n"))
        self._draw(self.clock())

    def _close(self) -> None:
        self._draw(self.clock(), final=True)

    def tick(self) -> None:
        """Redraws if due (lets times move while no bytes arrive)."""
        with self._lock:
            self._changed(self.clock())

    def _columns(self) -> int:
        if self._width is not None:
            return self._width
        try:
            return os.get_terminal_size(self.stream.fileno()).columns or 80
        except (AttributeError, OSError, ValueError):
            return 80

    def _draw(self, now: float, *, final: bool = False) -> None:
        self._drawn_at = now
        live = [] if final else [t for t in self.transfers if _is_long(t, now)]
        if not live and not self._rows and not self._above:
            return  # nothing shown, nothing to show: not one byte written
        room = max(self._columns() - 1, 10)  # never the last column: terminals differ
        out = [f"\r\x1b[{self._rows}A\x1b[J" if self._rows else "\r\x1b[J"]
        out.extend(f"{line}\n" for line in self._above)
        self._above.clear()
        rows = []
        for transfer in live[: self.max_rows]:
            transfer.shown = True
            rows.append(row(transfer, now)[:room])
            transfer.sample(now)
        if len(live) > self.max_rows:
            rows.append(f"... and {len(live) - self.max_rows} more"[:room])
        out.extend(f"{text}\n" for text in rows)
        self._rows = len(rows)
        try:
            self.stream.write("".join(out))
            self.stream.flush()
        except (OSError, ValueError):  # a closed terminal must not fail the transfer
            self._rows = 0


class LineReport(TransferBoard):
    """Transfers said in whole lines through ``say``: each long one now and then
    (``every`` seconds) and once when done. For displays that own the terminal."""

    def __init__(
        self,
        say: Callable[[str], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        every: float = 10.0,
    ) -> None:
        super().__init__(clock)
        self._say = say
        self.every = every
        self._said: dict[int, float] = {}
        self._looked_at = float("-inf")

    def _changed(self, now: float) -> None:
        if now - self._looked_at < 1.0:
            return  # called per piece received: look at the transfers once a second
        self._looked_at = now
        for transfer in self.transfers:
            said = self._said.get(id(transfer), transfer.started)
            if now - said >= self.every:
                self._said[id(transfer)] = now
                transfer.shown = True
                self._say(row(transfer, now))
                transfer.sample(now)

    def _ended(self, transfer: Transfer, now: float, *, ok: bool) -> None:
        self._said.pop(id(transfer), None)
        if ok and _is_long(transfer, now):
            self._say(ended_row(transfer, now))

    def _message(self, text: str) -> None:
        self._say(text)


class Mirror:
    """Transfers another process makes (the filesystem process's whole-layer downloads),
    as it reports them when asked, shown as transfers of ``board``. Call ``update`` with
    each report (polled); ``close`` when no more reports will come."""

    def __init__(self, board: TransferBoard, verb: str = "downloading") -> None:
        self.board = board
        self.verb = verb
        self._shown: dict[str, Transfer] = {}

    def update(
        self,
        in_flight: Iterable[tuple[str, int, int | None, float]],
        finished: Container[str] = (),
    ) -> None:
        """``in_flight``: (digest, bytes done, total, seconds since it began) of each
        transfer under way; one reported before and gone now ended well if its digest
        is in ``finished`` (then it is shown reaching its total), else it failed."""
        seen = set()
        for digest, done, total, seconds in in_flight:
            seen.add(digest)
            shown = self._shown.get(digest)
            if shown is None:
                shown = self.board.begin(digest, total, self.verb, ago=seconds)
                self._shown[digest] = shown
            shown.seek(done)
        for digest in [digest for digest in self._shown if digest not in seen]:
            self._end(digest, ok=digest in finished)

    def close(self, finished: Container[str] = ()) -> None:
        """No more reports: every transfer still shown ends (well if in ``finished``)."""
        for digest in list(self._shown):
            self._end(digest, ok=digest in finished)

    def _end(self, digest: str, *, ok: bool) -> None:
        shown = self._shown.pop(digest)
        if ok and shown.total is not None:
            shown.seek(shown.total)
        shown.end(ok=ok)


ACTIVE: ContextVar[TransferBoard | None] = ContextVar("lazybuild_transfer_board", default=None)


def active() -> TransferBoard | None:
    return ACTIVE.get()


def begin(digest: str, total: int | None, verb: str) -> Transfer | None:
    """A transfer on the active board, or None (then report nothing: it costs nothing)."""
    board = ACTIVE.get()
    return board.begin(digest, total, verb) if board is not None else None


@contextmanager
def reporting(board: TransferBoard | None) -> Iterator[TransferBoard | None]:
    """``board`` is the active one inside the block (None: none), closed at its end."""
    token = ACTIVE.set(board)
    try:
        yield board
    finally:
        ACTIVE.reset(token)
        if board is not None:
            board.close()


def lines_unless_shown(say: Callable[[str], None]) -> AbstractContextManager[object]:
    """Long transfers said through ``say`` in whole lines (``LineReport``) inside the
    block, unless the command shows transfers already (a board is active). For work
    inside a display that owns the terminal (a build's pushes and cache uploads)."""
    if ACTIVE.get() is not None:
        return nullcontext()
    return reporting(LineReport(say))


def wants_live_view(
    stream: TextIO,
    *,
    quiet: bool = False,
    mode: str | None = None,
    env: Mapping[str, str] | None = None,
) -> bool:
    """Whether to redraw transfer lines on ``stream``: never with ``quiet`` or a
    ``plain``/``rawjson``/``quiet`` mode (``mode``, else ``BUILDKIT_PROGRESS``); always
    with ``tty`` (as buildx: forced); else (``auto``) when ``stream`` is a terminal that
    moves its cursor (not ``TERM=dumb``). No colours are used, so ``NO_COLOR`` holds."""
    environ = os.environ if env is None else env
    if quiet:
        return False
    chosen = mode or environ.get("BUILDKIT_PROGRESS", "") or "auto"
    if chosen in _NO_LIVE_VIEW:
        return False
    if chosen == "tty":
        return True
    if environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def terminal_view(
    stream: TextIO | None = None,
    *,
    quiet: bool = False,
    mode: str | None = None,
    env: Mapping[str, str] | None = None,
) -> TerminalView | None:
    """A ``TerminalView`` on ``stream`` (default stderr) if ``wants_live_view``, else None."""
    target = stream if stream is not None else sys.stderr
    if not wants_live_view(target, quiet=quiet, mode=mode, env=env):
        return None
    return TerminalView(target)
