"""The wall clock for event and record timestamps, in one place so tests can read it."""

from __future__ import annotations

import time


def now() -> float:
    return time.time()
