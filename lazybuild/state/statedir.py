"""Where lazybuild keeps state that outlives one command: chunk cache, TOCs, unpacked layers."""

from __future__ import annotations

import os
from pathlib import Path

STATE_DIR_ENV = "LAZYBUILD_STATE_DIR"
_SYSTEM_STATE_DIR = Path("/var/lib/lazybuild")


def default_state_dir() -> Path:
    """``$LAZYBUILD_STATE_DIR``; else ``/var/lib/lazybuild`` for root; else the XDG data dir."""
    configured = os.environ.get(STATE_DIR_ENV)
    if configured:
        return Path(configured)
    if os.geteuid() == 0:
        return _SYSTEM_STATE_DIR
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "share"
    return base / "lazybuild"
