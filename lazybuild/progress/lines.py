"""Human-readable progress lines for long-running commands.

Lines go to stderr so that stdout stays clean for machine output (``--json``).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from lazybuild.progress.transfer import ACTIVE, TerminalView


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(value) < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def short_digest(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]


class Progress:
    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        # Looked up per line, not bound once, so redirections made later are honoured.
        self._stream = stream
        self.quiet = quiet
        self.started = time.monotonic()

    def line(self, message: str) -> None:
        if self.quiet:
            return
        elapsed = time.monotonic() - self.started
        text = f"[{elapsed:6.1f}s] {message}"
        board = ACTIVE.get()
        if self._stream is None and isinstance(board, TerminalView):
            # Above the transfers' live lines, which a plain write would break.
            board.message(text)
            return
        stream = self._stream or sys.stderr
        stream.write(f"{text}\n")
        stream.flush()
