"""``--depfile``: a build's inputs in Make's dependency format, as ``gcc -MD -MP`` writes
them, so that a Makefile rebuilds an image exactly when one of them changed.

The inputs: the Dockerfile, the ``.dockerignore`` that applied, every file and symlink
of the context a COPY or ADD selected, and local secret files. Directories are left out:
their mtime moves whenever anything in them is written, the depfile and the iidfile
included, so every ``make`` would rebuild. As with ``gcc -MD`` and a new header, a file
added to a copied directory is not seen until another input changes (``make -B``).

The target is the ``--iidfile`` (else the ``--metadata-file``, else the depfile itself).
Each input also gets an empty rule of its own (``-MP``), so that deleting one makes Make
rebuild instead of failing.
Paths are relative to the working directory when inside it, as the user's Makefile
names them; written whole or not at all.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from lazybuild.state.atomicfile import write_atomic

__all__ = ["depfile_text", "write_depfile"]


def write_depfile(path: Path, target: Path, inputs: Iterable[Path]) -> None:
    write_atomic(path, depfile_text(target, inputs).encode())


def depfile_text(target: Path, inputs: Iterable[Path], cwd: Path | None = None) -> str:
    here = Path(os.path.abspath(cwd or Path.cwd()))
    names = sorted({_shown(path, here) for path in inputs})
    lines = [_escape(_shown(target, here)) + ":" + "".join(f" \\\n  {_escape(n)}" for n in names)]
    lines += [f"{_escape(name)}:" for name in names]
    return "\n".join(lines) + "\n"


def _shown(path: Path, here: Path) -> str:
    absolute = Path(os.path.abspath(path))
    try:
        return str(absolute.relative_to(here)) or "."
    except ValueError:
        return str(absolute)


def _escape(name: str) -> str:
    """A path as a Make word: spaces and ``#`` escaped with a backslash, ``$`` doubled,
    and a ``:`` escaped (Make would read it as a rule separator)."""
    out = []
    for char in name:
        if char == "$":
            out.append("$$")
        elif char in " #:\\\t":
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)
