"""Files that appear whole or not at all: write a temporary file, then rename it.

A reader (another lazybuild, a crash-restarted one, the user) sees the old file or the
new one, never half of one. The temporary file lives on the destination's filesystem
(its directory, or a staging directory there, which a cleanup can empty), and is
removed when anything fails.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from lazybuild.state.processes import ProcessId

__all__ = ["write_atomic"]


def write_atomic(
    path: Path, data: bytes, *, durable: bool = False, staging_dir: Path | None = None
) -> None:
    """Replace ``path`` with ``data``. ``durable`` flushes the bytes to disk before the
    rename, for files whose loss after a power cut would be read as valid (cache
    entries); ``staging_dir`` (same filesystem) holds the temporary file."""
    directory = staging_dir if staging_dir is not None else path.parent
    path.parent.mkdir(parents=True, exist_ok=True)
    directory.mkdir(parents=True, exist_ok=True)
    # In a shared staging directory the name says whose it is (a cleanup there removes
    # only what dead processes left); next to its target a dot hides it.
    prefix = f"{ProcessId.current().tag}-{path.name}." if staging_dir else f".{path.name}."
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            if durable:
                out.flush()
                os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
