"""``.dockerignore`` files and Docker's matching rules.

Patterns follow Go's ``filepath.Match`` syntax (``*``, ``?``, ``[...]``, ``\\`` escapes)
plus ``**`` for any number of directories, as Docker's pattern matcher does:

* lines starting with ``#`` are comments; blank lines are skipped; surrounding
  whitespace is trimmed;
* ``!pattern`` is an exception that re-includes what earlier patterns excluded;
* patterns are cleaned like ``filepath.Clean`` and a leading ``/`` is dropped, so
  ``/foo/../bar/`` means ``bar``;
* the last pattern that matches a path decides, and a pattern matching a directory
  excludes everything below it (a path is tested together with each of its parents).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DockerIgnore",
    "IgnorePattern",
    "find_dockerignore",
    "load_dockerignore",
    "parse_dockerignore",
]

_UTF8_BOM = "\ufeff"


@dataclass(frozen=True)
class IgnorePattern:
    """One cleaned pattern; ``exception`` for ``!`` lines."""

    pattern: str
    exception: bool
    regex: re.Pattern[str]

    @classmethod
    def compile(cls, pattern: str, exception: bool) -> IgnorePattern:
        return cls(pattern, exception, re.compile(_to_regex(pattern)))

    def matches(self, path: str) -> bool:
        return self.regex.match(path) is not None


def _to_regex(pattern: str) -> str:
    """Translate a cleaned pattern; ``*`` and ``?`` never cross a ``/``, ``**`` may."""
    out = ["^"]
    position = 0
    length = len(pattern)
    while position < length:
        char = pattern[position]
        position += 1
        if char == "*":
            if position < length and pattern[position] == "*":
                position += 1
                # "**/" is treated as "**": it may also match zero directories.
                if position < length and pattern[position] == "/":
                    position += 1
                out.append(".*" if position == length else "(.*/)?")
            else:
                out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "\\":
            if position < length:
                out.append(re.escape(pattern[position]))
                position += 1
            else:
                out.append(re.escape("\\"))
        elif char == "[":
            end = pattern.find("]", position + 1)
            if end == -1:
                out.append(re.escape(char))
                continue
            body = pattern[position:end]
            position = end + 1
            # Go's filepath.Match negates a class with "^"; "!" is accepted like gitignore.
            negate = body[:1] in ("^", "!")
            if negate:
                body = body[1:]
            body = body.replace("\\", "\\\\")
            out.append(f"[{'^/' if negate else ''}{body}]")
        else:
            out.append(re.escape(char))
    out.append("$")
    return "".join(out)


def _clean(pattern: str) -> str:
    """``filepath.Clean`` then drop a leading slash (patterns are context-relative)."""
    cleaned = posixpath.normpath(pattern)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    if len(cleaned) > 1 and cleaned.startswith("/"):
        cleaned = cleaned[1:]
    return cleaned


class DockerIgnore:
    """A list of patterns and the decision Docker makes with them."""

    def __init__(self, patterns: Iterable[str]) -> None:
        compiled = []
        for text in patterns:
            exception = text.startswith("!")
            body = text[1:].strip() if exception else text
            if not body:
                continue
            compiled.append(IgnorePattern.compile(_clean(body), exception))
        self.patterns: tuple[IgnorePattern, ...] = tuple(compiled)

    def is_excluded(self, path: str) -> bool:
        """True when ``path`` (relative to the context, ``/``-separated) is left out."""
        path = posixpath.normpath(path.lstrip("/"))
        if path == ".":
            return False
        parts = path.split("/")
        parents = ["/".join(parts[: i + 1]) for i in range(len(parts) - 1)]
        excluded = False
        for pattern in self.patterns:
            # Only a pattern that could flip the current answer needs testing.
            if pattern.exception != excluded:
                continue
            if pattern.matches(path) or any(pattern.matches(parent) for parent in parents):
                excluded = not pattern.exception
        return excluded

    def may_include_below(self, directory: str) -> bool:
        """False when nothing below an excluded ``directory`` can be re-included.

        A walker can then skip the directory; True when some exception might reach inside.
        """
        if not self.is_excluded(directory):
            return True
        prefix = posixpath.normpath(directory.lstrip("/")) + "/"
        return any(
            p.exception and (p.pattern.startswith(prefix) or "*" in p.pattern or "?" in p.pattern)
            for p in self.patterns
        )


def parse_dockerignore(data: bytes | str) -> list[str]:
    """The patterns of a ``.dockerignore`` file, cleaned, with ``!`` kept in front."""
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    text = text.removeprefix(_UTF8_BOM)
    patterns = []
    for raw_line in text.splitlines():
        if raw_line.startswith("#"):
            continue
        line = raw_line.strip()
        if not line:
            continue
        exception = line.startswith("!")
        if exception:
            line = line[1:].strip()
        if line:
            line = _clean(line)
        patterns.append(("!" if exception else "") + line)
    return patterns


def find_dockerignore(context_dir: Path, dockerfile: Path | None = None) -> Path | None:
    """The ignore file for a build: ``<Dockerfile>.dockerignore`` beside the Dockerfile wins
    over ``<context>/.dockerignore``; None when neither exists."""
    if dockerfile is not None:
        specific = dockerfile.with_name(dockerfile.name + ".dockerignore")
        if specific.is_file():
            return specific
    general = context_dir / ".dockerignore"
    return general if general.is_file() else None


def load_dockerignore(context_dir: Path, dockerfile: Path | None = None) -> DockerIgnore:
    """Read the ignore file :func:`find_dockerignore` picks (an empty one when none)."""
    path = find_dockerignore(context_dir, dockerfile)
    patterns: Sequence[str] = parse_dockerignore(path.read_bytes()) if path else ()
    return DockerIgnore(patterns)
