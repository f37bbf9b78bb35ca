"""A log of every range request the lazy filesystem makes, for finding slow builds.

With ``LAZYBUILD_FETCH_TRACE=FILE`` in the environment, each request appends one JSON
line to FILE: when it started and ended (monotonic seconds, comparable across the
processes of one machine), the layer, the bytes received, the files whose chunks it
carried and where in its file each of the first chunks starts. A build that spends its
time waiting shows up as a chain of small requests, one after the other; that is what
read-ahead and prefetching are tuned against.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence

ENVIRONMENT_VARIABLE = "LAZYBUILD_FETCH_TRACE"
# What stands for the files of a request that read no file: a layer's TOC.
TOC_LABEL = "<toc>"
_FILES_SHOWN = 8
_CHUNKS_SHOWN = 16


def trace_fetch(
    layer: str,
    started: float,
    files: Sequence[str],
    received: int,
    chunks: Sequence[tuple[str, int]] = (),
) -> None:
    """Append one request to the trace file, if tracing is on."""
    path = os.environ.get(ENVIRONMENT_VARIABLE)
    if not path:
        return
    line = {
        "start": round(started, 4),
        "end": round(time.perf_counter(), 4),
        "layer": layer,
        "bytes": received,
        "files": len(files),
        "some_files": list(files[:_FILES_SHOWN]),
        # Where in its file each chunk starts: which parts of a big file were wanted.
        "some_chunks": [f"{file}@{offset}" for file, offset in chunks[:_CHUNKS_SHOWN]],
    }
    try:
        # One write of one line in append mode: lines of concurrent writers do not mix.
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")
    except OSError:
        pass  # a diagnostic must never fail a read
