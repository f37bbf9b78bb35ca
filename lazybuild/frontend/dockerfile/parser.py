"""Dockerfile bytes → AST: one :class:`Node` per instruction, with line ranges.

This is the job of BuildKit's ``frontend/dockerfile/parser``: parser directives at the
top, comments, line continuations, the instruction keyword, leading ``--flags`` and
heredoc bodies. What an instruction's arguments *mean* is decided later
(:mod:`.instructions`); this module only cuts the file into nodes.

Written from the Dockerfile reference rather than on top of ``dockerfile-parse``: that
library neither keeps heredocs nor flags apart, nor reports lines the way errors here
need, so it would only have saved the easy part.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from lazybuild.errors import FormatError
from lazybuild.frontend.dockerfile.shell import ExpansionError, Lexer
from lazybuild.frontend.dockerfile.suggest import did_you_mean

__all__ = [
    "HEREDOC_INSTRUCTIONS",
    "INSTRUCTIONS",
    "Directives",
    "Dockerfile",
    "Heredoc",
    "Node",
    "ParseError",
    "parse",
    "parse_heredoc_marker",
]

INSTRUCTIONS = frozenset(
    {
        "ADD",
        "ARG",
        "CMD",
        "COPY",
        "ENTRYPOINT",
        "ENV",
        "EXPOSE",
        "FROM",
        "HEALTHCHECK",
        "LABEL",
        "MAINTAINER",
        "ONBUILD",
        "RUN",
        "SHELL",
        "STOPSIGNAL",
        "USER",
        "VOLUME",
        "WORKDIR",
    }
)
HEREDOC_INSTRUCTIONS = frozenset({"RUN", "COPY", "ADD"})

_KNOWN_DIRECTIVES = frozenset({"syntax", "escape", "check"})
_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
# An optional file descriptor (``3<<IN``) is the shell's business; the body is read the same.
_HEREDOC_WORD = re.compile(r"^\d*<<(-?)\s*([^<]*)$")
_UTF8_BOM = "\ufeff"


class ParseError(FormatError):
    """The Dockerfile does not parse; ``str()`` is ``"FILE:LINE: what is wrong"``."""

    def __init__(self, message: str, line: int, filename: str = "Dockerfile") -> None:
        super().__init__(f"{filename}:{line}: {message}")
        self.message = message
        self.line = line
        self.filename = filename


@dataclass(frozen=True)
class Heredoc:
    """A here-document attached to a RUN/COPY/ADD line.

    ``content`` is the body exactly as written (each line ending in a newline).
    ``expand`` is False when the delimiter was quoted (``<<"EOF"``, ``<<'EOF'``);
    ``chomp`` is True for ``<<-EOF``, whose body lines lose their leading tabs.
    """

    name: str
    content: str
    expand: bool
    chomp: bool

    @property
    def body(self) -> str:
        """The content as a file gets it: with leading tabs removed for ``<<-``."""
        if not self.chomp:
            return self.content
        return "".join(line.lstrip("\t") for line in self.content.splitlines(keepends=True))


@dataclass(frozen=True)
class Node:
    """One instruction.

    ``keyword`` is upper case. ``flags`` are the leading ``--name[=value]`` words
    (quotes removed). ``args`` is the rest of the logical line after the flags,
    with continuations joined (escape characters removed) but otherwise as written.
    """

    keyword: str
    flags: tuple[str, ...]
    args: str
    original: str
    start_line: int
    end_line: int
    heredocs: tuple[Heredoc, ...] = ()


@dataclass(frozen=True)
class Directives:
    escape: str = "\\"
    syntax: str | None = None
    check: str | None = None


@dataclass(frozen=True)
class Dockerfile:
    directives: Directives
    nodes: tuple[Node, ...]
    filename: str = "Dockerfile"

    @property
    def escape(self) -> str:
        return self.directives.escape


def parse(source: bytes | str, *, filename: str = "Dockerfile") -> Dockerfile:
    """Parse Dockerfile text; raises :class:`ParseError` naming the line."""
    text = _decode(source, filename)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [line.removesuffix("\r") for line in lines]
    return _Parser(lines, filename).parse()


def parse_directives(source: bytes | str, *, filename: str = "Dockerfile") -> Directives:
    """Only the parser directives at the top of ``source``: ``syntax`` chooses the
    frontend before the rest is read, and the rest need not be a Dockerfile."""
    parser = _Parser([], filename)
    for number, raw in enumerate(_decode(source, filename).split("\n"), start=1):
        parser._directive(raw.removesuffix("\r"), number)
        if parser.directives_done:
            break
    return Directives(
        escape=parser.escape,
        syntax=parser.directives.get("syntax"),
        check=parser.directives.get("check"),
    )


def parse_heredoc_marker(word: str) -> tuple[str, bool, bool] | None:
    """``(name, expand, chomp)`` when ``word`` (quotes kept) opens a heredoc, else None."""
    match = _HEREDOC_WORD.match(word)
    if match is None:
        return None
    chomp = match.group(1) == "-"
    rest = match.group(2)
    quoted = "'" in rest or '"' in rest
    try:
        name = Lexer("\\").process_word(rest, {})
    except ExpansionError:
        return None
    if not name:
        return None
    return name, not quoted, chomp


def _decode(source: bytes | str, filename: str) -> str:
    if isinstance(source, str):
        text = source
    else:
        try:
            text = source.decode("utf-8")
        except UnicodeDecodeError as error:
            line = source[: error.start].count(b"\n") + 1
            raise ParseError("not valid UTF-8", line, filename) from None
    return text.removeprefix(_UTF8_BOM)


def _is_comment(line: str) -> bool:
    return line.lstrip(" \t").startswith("#")


@dataclass
class _Parser:
    lines: list[str]
    filename: str
    position: int = 0  # index of the next physical line to read
    directives: dict[str, str] = field(default_factory=dict)
    directives_done: bool = False

    def error(self, message: str, line: int) -> ParseError:
        return ParseError(message, line, self.filename)

    @property
    def escape(self) -> str:
        return self.directives.get("escape", "\\")

    def parse(self) -> Dockerfile:
        nodes: list[Node] = []
        while self.position < len(self.lines):
            raw = self.lines[self.position]
            self.position += 1
            line_number = self.position
            if not self.directives_done:
                self._directive(raw, line_number)
            if _is_comment(raw):
                continue
            self.directives_done = True
            line = raw.lstrip(" \t")
            line, continues = self._trim_continuation(line)
            if not continues and not line.strip():
                continue
            while continues and self.position < len(self.lines):
                nxt = self.lines[self.position]
                self.position += 1
                # Comment lines and empty lines inside a continuation are dropped.
                if _is_comment(nxt) or not nxt.strip():
                    continue
                part, continues = self._trim_continuation(nxt)
                line += part
            node = self._node(line, line_number, self.position)
            nodes.append(node)
        directives = Directives(
            escape=self.escape,
            syntax=self.directives.get("syntax"),
            check=self.directives.get("check"),
        )
        return Dockerfile(directives, tuple(nodes), self.filename)

    def _directive(self, raw: str, line_number: int) -> None:
        match = _DIRECTIVE.match(raw)
        if match is None:
            self.directives_done = True
            return
        key = match.group(1).lower()
        value = match.group(2)
        if key not in _KNOWN_DIRECTIVES:
            # An unknown directive is a comment, and ends the directive block.
            self.directives_done = True
            return
        if key in self.directives:
            raise self.error(f"only one {key} parser directive can be used", line_number)
        if key == "escape" and value not in ("\\", "`"):
            raise self.error(f"invalid escape token {value!r} does not match ` or \\", line_number)
        self.directives[key] = value

    def _trim_continuation(self, line: str) -> tuple[str, bool]:
        """Strip a trailing escape character (spaces may follow it); True if one was there."""
        stripped = line.rstrip(" \t")
        if stripped.endswith(self.escape):
            return stripped[: -len(self.escape)], True
        return line, False

    def _node(self, line: str, start: int, end: int) -> Node:
        parts = line.strip().split(None, 1)
        keyword = parts[0].upper()
        rest = parts[1] if len(parts) > 1 else ""
        if keyword not in INSTRUCTIONS:
            message = f"unknown instruction: {parts[0]}"
            raise self.error(did_you_mean(message, keyword, sorted(INSTRUCTIONS)), start)
        flags, args = _split_flags(rest)
        heredocs: tuple[Heredoc, ...] = ()
        heredoc_args = args
        if keyword == "ONBUILD":
            # As BuildKit: a RUN/COPY/ADD trigger may carry heredocs (``ONBUILD RUN <<EOF``);
            # its own flags and arguments are read as the trigger's.
            inner = args.strip().split(None, 1)
            if inner and inner[0].upper() in HEREDOC_INSTRUCTIONS:
                heredoc_args = _split_flags(inner[1] if len(inner) > 1 else "")[1]
            else:
                heredoc_args = ""
        elif keyword not in HEREDOC_INSTRUCTIONS:
            heredoc_args = ""
        if "<<" in heredoc_args and not _is_json_array(heredoc_args):
            heredocs = self._read_heredocs(heredoc_args, start)
            end = self.position
        return Node(keyword, tuple(flags), args.strip(), line.strip(), start, end, heredocs)

    def _read_heredocs(self, args: str, start: int) -> tuple[Heredoc, ...]:
        lexer = Lexer(self.escape, raw_quotes=True, raw_escapes=True)
        try:
            words = lexer.process_words(args, {})
        except ExpansionError:
            return ()
        heredocs: list[Heredoc] = []
        for word in words:
            marker = parse_heredoc_marker(word)
            if marker is None:
                continue
            name, expand, chomp = marker
            body: list[str] = []
            while True:
                if self.position >= len(self.lines):
                    raise self.error(f"unterminated heredoc {name!r}", start)
                raw = self.lines[self.position]
                self.position += 1
                candidate = raw.lstrip("\t") if chomp else raw
                if candidate == name:
                    break
                body.append(raw + "\n")
            heredocs.append(Heredoc(name, "".join(body), expand, chomp))
        return tuple(heredocs)


def _is_json_array(args: str) -> bool:
    return args.lstrip().startswith("[") and args.rstrip().endswith("]")


def _split_flags(rest: str) -> tuple[list[str], str]:
    """Split leading ``--flag`` words (quotes allowed inside) from the arguments.

    A lone ``--`` ends the flags and is dropped.
    """
    flags: list[str] = []
    position = 0
    length = len(rest)
    while True:
        while position < length and rest[position].isspace():
            position += 1
        if not rest.startswith("--", position):
            return flags, rest[position:]
        word, position = _read_word(rest, position)
        if word == "--":
            return flags, rest[position:].lstrip()
        flags.append(word)


def _read_word(text: str, position: int) -> tuple[str, int]:
    """One whitespace-delimited word starting at ``position``; quotes are removed."""
    word: list[str] = []
    quote = ""
    while position < len(text):
        char = text[position]
        if quote:
            if char == quote:
                quote = ""
            else:
                word.append(char)
        elif char in ("'", '"'):
            quote = char
        elif char.isspace():
            break
        else:
            word.append(char)
        position += 1
    return "".join(word), position
