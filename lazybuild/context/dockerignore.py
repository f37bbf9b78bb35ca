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

from lazybuild.errors import FormatError

__all__ = [
    "DockerIgnore",
    "IgnorePattern",
    "bad_pattern_reason",
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
    regex: re.Pattern[str] | None  # None: matched by ``_match_tokens`` instead
    tokens: tuple[_Token, ...] = ()

    @classmethod
    def compile(cls, pattern: str, *, exception: bool) -> IgnorePattern:
        """Raises ``FormatError`` for a pattern Go's ``filepath.Match`` calls malformed."""
        reason = bad_pattern_reason(pattern)
        if reason is not None:
            raise FormatError(f"invalid pattern {pattern!r:.200}: {reason}")
        tokens = tuple(_tokens(pattern))
        # A regex backtracks through every way its quantifiers can split a path: fine for
        # the one or two wildcards of real patterns, exponential for a crafted one.
        if sum(1 for token in tokens if token[0] in _QUANTIFIED) <= _MAX_REGEX_WILDCARDS:
            return cls(pattern, exception, re.compile(_regex(tokens), re.DOTALL))
        return cls(pattern, exception, None, tokens)

    def matches(self, path: str) -> bool:
        if self.regex is not None:
            return self.regex.match(path) is not None
        return _match_tokens(self.tokens, path)


# A pattern as a sequence of tokens:
# ("lit", char) | ("any",) one char but "/" | ("star",) "*" | ("all",) a trailing "**" |
# ("dirs",) "**/": any number of whole directories | ("class", negated, ranges)
_Token = tuple[object, ...]
_QUANTIFIED = frozenset({"star", "all", "dirs"})
_MAX_REGEX_WILDCARDS = 2


def _class_atom(pattern: str, position: int) -> tuple[str, int] | None:
    """One character of a ``[...]`` class (``\\`` escapes the next), or None when Go's
    ``getEsc`` calls it malformed; returns the character and the position after it."""
    if position >= len(pattern) or pattern[position] in "-]":
        return None
    char = pattern[position]
    position += 1
    if char == "\\":
        if position >= len(pattern):
            return None
        char = pattern[position]
        position += 1
    if position >= len(pattern):
        return None  # the class is never closed
    return char, position


def _parse_class(pattern: str, position: int) -> tuple[bool, list[tuple[str, str]], int] | None:
    """``[`` at ``position - 1``: (negated, ranges, position after ``]``), or None."""
    negated = position < len(pattern) and pattern[position] in "^!"
    if negated:
        position += 1
    ranges: list[tuple[str, str]] = []
    while True:
        if position < len(pattern) and pattern[position] == "]" and ranges:
            return negated, ranges, position + 1
        low = _class_atom(pattern, position)
        if low is None:
            return None
        lo, position = low
        hi = lo
        if pattern[position] == "-":
            high = _class_atom(pattern, position + 1)
            if high is None:
                return None
            hi, position = high
        ranges.append((lo, hi))


def bad_pattern_reason(pattern: str) -> str | None:
    """Why Go's ``filepath.Match`` (which Docker checks ``.dockerignore`` patterns with)
    rejects ``pattern``, or None when it is well formed."""
    position = 0
    while position < len(pattern):
        char = pattern[position]
        position += 1
        if char == "\\":
            if position >= len(pattern):
                return "it ends in an escape character"
            position += 1
        elif char == "[":
            parsed = _parse_class(pattern, position)
            if parsed is None:
                return "a [...] character class is empty, unclosed or has a bad range"
            position = parsed[2]
    return None


def _class_regex(ranges: list[tuple[str, str]], *, negated: bool) -> str:
    body = "".join(
        re.escape(lo) if lo == hi else f"{re.escape(lo)}-{re.escape(hi)}"
        for lo, hi in ranges
        if lo <= hi  # Go accepts a range such as z-a, which matches nothing
    )
    if negated:
        return f"[^/{body}]"
    return f"[{body}]" if body else "(?!)"


def _tokens(pattern: str) -> list[_Token]:
    """Tokens of a cleaned, well-formed pattern; ``*`` and ``?`` never cross a ``/``,
    ``**`` may."""
    out: list[_Token] = []
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
                token: _Token = ("all",) if position == length else ("dirs",)
                if not (out and out[-1] == token):  # "**/**/" is "**/"
                    out.append(token)
            else:
                out.append(("star",))
        elif char == "?":
            out.append(("any",))
        elif char == "\\":
            if position < length:
                out.append(("lit", pattern[position]))
                position += 1
            else:
                out.append(("lit", "\\"))
        elif char == "[":
            parsed = _parse_class(pattern, position)
            if parsed is None:
                out.append(("lit", char))
                continue
            negated, ranges, position = parsed
            out.append(("class", negated, tuple(ranges)))
        else:
            out.append(("lit", char))
    return out


def _regex(tokens: Sequence[_Token]) -> str:
    out = ["^"]
    for token in tokens:
        kind = token[0]
        if kind == "lit":
            out.append(re.escape(str(token[1])))
        elif kind == "any":
            out.append("[^/]")
        elif kind == "star":
            out.append("[^/]*")
        elif kind == "all":
            out.append(".*")
        elif kind == "dirs":
            out.append("(.*/)?")
        else:
            negated, ranges = token[1], token[2]
            assert isinstance(ranges, tuple)
            out.append(_class_regex(list(ranges), negated=bool(negated)))
    out.append(r"\Z")
    return "".join(out)


def _class_matches(token: _Token, char: str) -> bool:
    negated, ranges = token[1], token[2]
    assert isinstance(ranges, tuple)
    inside = any(lo <= char <= hi for lo, hi in ranges)
    return char != "/" and not inside if negated else inside


def _closure(tokens: Sequence[_Token], states: set[int]) -> set[int]:
    """States reachable without reading: past a "*", "**" or "**/", or into a "**/"
    (state ``-(i + 1)``: inside the directories of token ``i``)."""
    stack = list(states)
    while stack:
        state = stack.pop()
        if 0 <= state < len(tokens) and tokens[state][0] in _QUANTIFIED:
            reached = [state + 1]
            if tokens[state][0] == "dirs":
                reached.append(-(state + 1))
            for target in reached:
                if target not in states:
                    states.add(target)
                    stack.append(target)
    return states


def _match_tokens(tokens: Sequence[_Token], path: str) -> bool:
    """The pattern against ``path`` by simulating all its states at once: linear in the
    path for any pattern (no backtracking)."""
    states = _closure(tokens, {0})
    for char in path:
        following: set[int] = set()
        for state in states:
            if state < 0:  # inside "**/": any character, and "/" may end it
                following.add(state)
                if char == "/":
                    following.add(-state)
                continue
            if state == len(tokens):
                continue
            token = tokens[state]
            kind = token[0]
            if kind == "all":
                following.add(state)
            elif kind == "star":
                if char != "/":
                    following.add(state)
            elif (
                (kind == "lit" and token[1] == char)
                or (kind == "any" and char != "/")
                or (kind == "class" and _class_matches(token, char))
            ):
                following.add(state + 1)
        if not following:
            return False
        states = _closure(tokens, following)
    return len(tokens) in states


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
            compiled.append(IgnorePattern.compile(_clean(body), exception=exception))
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


def parse_dockerignore(data: bytes | str, filename: str = ".dockerignore") -> list[str]:
    """The patterns of a ``.dockerignore`` file, cleaned, with ``!`` kept in front.

    Raises ``FormatError`` naming ``filename`` and the line for text that is not UTF-8,
    a lone ``!`` and a malformed pattern, as Docker refuses them.
    """
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            line_number = data[: error.start].count(b"\n") + 1
            raise FormatError(f"{filename}:{line_number}: not valid UTF-8") from None
    else:
        text = data
    text = text.removeprefix(_UTF8_BOM)
    patterns = []
    for line_number, raw_line in enumerate(text.splitlines(), 1):
        if raw_line.startswith("#"):
            continue
        line = raw_line.strip()
        if not line:
            continue
        exception = line.startswith("!")
        if exception:
            line = line[1:].strip()
            if not line:
                raise FormatError(f'{filename}:{line_number}: illegal exclusion pattern "!"')
        line = _clean(line)
        reason = bad_pattern_reason(line)
        if reason is not None:
            raise FormatError(f"{filename}:{line_number}: invalid pattern {line!r:.200}: {reason}")
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
    patterns: Sequence[str] = parse_dockerignore(path.read_bytes(), str(path)) if path else ()
    return DockerIgnore(patterns)
