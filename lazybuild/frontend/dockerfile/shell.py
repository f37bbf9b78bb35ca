"""Docker's word expansion: the job of BuildKit's ``shell/lex.go``.

A *word* is the text of a Dockerfile argument. Expanding it substitutes
``$NAME``/``${NAME}``, the ``${NAME:-word}`` family, the pattern removals
``${NAME#pat}``/``##``/``%``/``%%`` and ``${NAME/pat/repl}`` (``//`` for every match;
``*`` and ``?`` are the only wildcards, as in BuildKit), removes quotes and
escape characters, and (for :meth:`Lexer.process_words`) splits the result
into several words on unquoted whitespace. Splitting happens *after*
substitution, so an unquoted variable holding ``"a b"`` gives two words.

Unlike a POSIX shell there is no globbing, no command substitution and no
arithmetic; unset variables expand to the empty string.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from lazybuild.errors import FormatError

__all__ = ["ExpansionError", "Lexer"]

# Parameters a shell would treat specially; Docker expands ``$@`` etc. to "" (never set).
_SPECIAL_PARAMETERS = frozenset("@*#?-$!0")


class ExpansionError(FormatError):
    """A word cannot be expanded: bad substitution, unmatched quote, or ``${V:?msg}``."""


@dataclass
class _WordSplitter:
    """Collects the words of :meth:`Lexer.process_words`.

    *Raw* text (quoted, escaped) never splits a word; *plain* text splits on whitespace.
    """

    words: list[str] = field(default_factory=list)
    current: str = ""
    in_word: bool = False

    def add_plain(self, text: str) -> None:
        for char in text:
            if char.isspace():
                if self.in_word and self.current:
                    self.words.append(self.current)
                self.current = ""
                self.in_word = False
            else:
                self.add_raw(char)

    def add_raw(self, text: str) -> None:
        self.current += text
        self.in_word = True

    def finish(self) -> list[str]:
        if self.current:
            self.words.append(self.current)
        self.current = ""
        self.in_word = False
        return self.words


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def peek(self) -> str:
        """The next character, or "" at the end."""
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def next(self) -> str:
        char = self.peek()
        if char:
            self.pos += 1
        return char


class Lexer:
    """Expands words the way BuildKit's Dockerfile frontend does.

    ``escape_token`` is ``\\`` or a backtick (``# escape=`` directive). ``raw_quotes``
    and ``raw_escapes`` keep quote and escape characters in the output; the parser
    uses both to find heredoc markers. ``quotes_are_text`` makes quote characters
    ordinary text, so variables between them expand: BuildKit's ``SkipProcessQuotes``,
    used for heredoc bodies.
    """

    def __init__(
        self,
        escape_token: str = "\\",
        *,
        raw_quotes: bool = False,
        raw_escapes: bool = False,
        quotes_are_text: bool = False,
    ) -> None:
        if escape_token not in ("\\", "`"):
            raise ValueError(f"escape token must be \\ or `, not {escape_token!r}")
        self.escape_token = escape_token
        self.raw_quotes = raw_quotes
        self.raw_escapes = raw_escapes
        self.quotes_are_text = quotes_are_text

    def process_word(self, word: str, env: Mapping[str, str]) -> str:
        """Expand ``word`` into one string (whitespace kept as is)."""
        return _Expansion(self, word, env).run()[0]

    def process_words(self, word: str, env: Mapping[str, str]) -> list[str]:
        """Expand ``word`` and split it into words on unquoted whitespace."""
        return _Expansion(self, word, env).run()[1]

    def referenced_names(self, word: str, env: Mapping[str, str]) -> set[str]:
        """Variable names ``word`` refers to (set or not); used to report unused build args."""
        expansion = _Expansion(self, word, env)
        expansion.run()
        return expansion.referenced


class _Expansion:
    """One expansion run over one input string."""

    def __init__(self, lexer: Lexer, text: str, env: Mapping[str, str]) -> None:
        self.lexer = lexer
        self.escape = lexer.escape_token
        self.scanner = _Scanner(text)
        self.env = env
        self.referenced: set[str] = set()

    def run(self) -> tuple[str, list[str]]:
        splitter = _WordSplitter()
        result = self._process_until(splitter, stop="")
        return result, splitter.finish()

    def _process_until(
        self, splitter: _WordSplitter, stop: str, *, raw_escapes: bool | None = None
    ) -> str:
        """Process up to (and consuming) ``stop``; ``stop == ""`` means the end of input.

        ``raw_escapes`` overrides the lexer's setting: patterns keep their escapes, since
        the escape decides there whether ``*`` is a wildcard.
        """
        keep_escapes = self.lexer.raw_escapes if raw_escapes is None else raw_escapes
        quotes = "" if self.lexer.quotes_are_text else "'\""
        result: list[str] = []
        scanner = self.scanner
        while True:
            char = scanner.peek()
            if char == "":
                if stop:
                    raise ExpansionError(f"unexpected end of statement while looking for {stop!r}")
                break
            if stop and char == stop:
                scanner.next()
                break
            if char and char in quotes:
                text = self._single_quoted() if char == "'" else self._double_quoted()
                result.append(text)
                splitter.add_raw(text)
            elif char == "$":
                text = self._dollar()
                result.append(text)
                # Unquoted substitution results split into words (after expansion).
                splitter.add_plain(text)
            else:
                scanner.next()
                if char == self.escape:
                    escaped = scanner.next()
                    if keep_escapes:
                        result.append(char)
                        splitter.add_raw(char)
                    if escaped == "":
                        # A trailing escape character escapes nothing and is dropped.
                        break
                    result.append(escaped)
                    splitter.add_raw(escaped)
                else:
                    result.append(char)
                    splitter.add_plain(char)
        return "".join(result)

    def _single_quoted(self) -> str:
        # Everything up to the next single quote is literal: no escapes, no variables.
        scanner = self.scanner
        scanner.next()
        out: list[str] = ["'"] if self.lexer.raw_quotes else []
        while True:
            char = scanner.next()
            if char == "":
                raise ExpansionError(
                    "unexpected end of statement while looking for matching single-quote"
                )
            if char == "'":
                break
            out.append(char)
        if self.lexer.raw_quotes:
            out.append("'")
        return "".join(out)

    def _double_quoted(self) -> str:
        scanner = self.scanner
        scanner.next()
        out: list[str] = ['"'] if self.lexer.raw_quotes else []
        while True:
            char = scanner.peek()
            if char == "":
                raise ExpansionError(
                    "unexpected end of statement while looking for matching double-quote"
                )
            if char == '"':
                scanner.next()
                break
            if char == "$":
                out.append(self._dollar())
                continue
            scanner.next()
            if char == self.escape:
                following = scanner.peek()
                if following == "":
                    continue
                # Only these can be escaped inside double quotes; other escapes stay literal.
                if following in ('"', "$", self.escape):
                    if self.lexer.raw_escapes:
                        out.append(char)
                    char = scanner.next()
            out.append(char)
        if self.lexer.raw_quotes:
            out.append('"')
        return "".join(out)

    def _name(self) -> str:
        scanner = self.scanner
        first = scanner.peek()
        if first.isdigit():
            # Positional parameters ($1, $23) are never set in a Dockerfile.
            digits = ""
            while scanner.peek().isdigit():
                digits += scanner.next()
            return digits
        if first and first in _SPECIAL_PARAMETERS:
            return scanner.next()
        name = ""
        while True:
            char = scanner.peek()
            if not char or not (char.isalnum() or char == "_"):
                return name
            name += scanner.next()

    def _lookup(self, name: str) -> str | None:
        self.referenced.add(name)
        return self.env.get(name)

    def _dollar(self) -> str:
        scanner = self.scanner
        scanner.next()  # the "$"
        if scanner.peek() != "{":
            name = self._name()
            if not name:
                return "$"
            return self._lookup(name) or ""
        scanner.next()  # the "{"
        if scanner.peek() == "":
            raise ExpansionError("syntax error: missing '}'")
        name = self._name()
        if not name:
            raise ExpansionError("bad substitution: missing variable name after '${'")
        operator = scanner.next()
        if operator == "}":
            return self._lookup(name) or ""
        if operator == "/":
            return self._replace(name)
        colon = operator == ":"
        if colon:
            operator = scanner.next()
        if operator in ("#", "%"):
            if colon:
                raise ExpansionError(f"unsupported modifier (:{operator}) in substitution")
            return self._trim(name, operator)
        if operator not in ("-", "+", "?"):
            if operator == "":
                raise ExpansionError("syntax error: missing '}'")
            raise ExpansionError(f"unsupported modifier ({operator}) in substitution of {name}")
        # The word after the operator is expanded itself (variables, quotes).
        word = self._process_until(_WordSplitter(), stop="}")
        value = self._lookup(name)
        # With a colon, "set but empty" counts as unset (POSIX).
        missing = value is None or (colon and value == "")
        if operator == "-":
            return word if missing else (value or "")
        if operator == "+":
            return "" if missing else word
        if value is None:
            raise ExpansionError(f"{name}: {word or 'is not allowed to be unset'}")
        if missing:
            raise ExpansionError(f"{name}: {word or 'is not allowed to be empty'}")
        return value

    def _pattern_word(self, stop: str, missing: str) -> str:
        try:
            return self._process_until(_WordSplitter(), stop=stop, raw_escapes=True)
        except ExpansionError:
            if self.scanner.peek() == "":
                raise ExpansionError(f"syntax error: missing {missing}") from None
            raise

    def _trim(self, name: str, operator: str) -> str:
        """``${name#pat}`` / ``##`` (prefix) and ``${name%pat}`` / ``%%`` (suffix)."""
        pattern = self._pattern_word("}", "'}'")
        greedy = pattern.startswith(operator)
        if greedy:
            pattern = pattern[1:]
        value = self._lookup(name) or ""
        if operator == "#":
            return _trim_prefix(pattern, value, greedy=greedy)
        # The shortest or longest match at the end is the same search on reversed strings.
        return _trim_prefix(_reverse_pattern(pattern), value[::-1], greedy=greedy)[::-1]

    def _replace(self, name: str) -> str:
        """``${name/pat/repl}`` replaces the first (longest) match; ``${name//pat/repl}`` all."""
        every = self.scanner.peek() == "/"
        if every:
            self.scanner.next()
        pattern = self._pattern_word("/", "'/' in ${}")
        replacement = self._pattern_word("}", "'}'")
        value = self._lookup(name) or ""
        regex = _pattern_regex(pattern, greedy=True, anchored=False)
        return regex.sub(lambda _match: replacement, value, count=0 if every else 1)


def _pattern_regex(pattern: str, *, greedy: bool, anchored: bool) -> re.Pattern[str]:
    """A shell pattern as a regex: ``*`` any text, ``?`` one character, no brackets.

    ``\\`` makes ``*``, ``?`` and ``\\`` literal; before ``}`` or ``/`` it only kept that
    character out of the ``${...}`` syntax and is dropped. Any other escape is an error.
    """
    out = ["^"] if anchored else []
    star = ".*" if greedy else ".*?"
    position = 0
    while position < len(pattern):
        char = pattern[position]
        position += 1
        if char == "*":
            out.append(star)
        elif char == "?":
            out.append(".")
        elif char == "\\":
            following = pattern[position : position + 1]
            position += 1
            if following in ("}", "/") or following in ("*", "?", "\\"):
                out.append(re.escape(following))
            else:
                raise ExpansionError(
                    f"invalid pattern ({pattern}) in substitution: invalid escape '\\{following}'"
                )
        else:
            out.append(re.escape(char))
    return re.compile("".join(out), re.DOTALL)


def _trim_prefix(pattern: str, value: str, *, greedy: bool) -> str:
    match = _pattern_regex(pattern, greedy=greedy, anchored=True).search(value)
    return value[match.end() :] if match else value


def _reverse_pattern(pattern: str) -> str:
    """``pattern`` reversed with each escape kept before the character it escapes."""
    tokens: list[str] = []
    position = 0
    while position < len(pattern):
        if pattern[position] == "\\" and position + 1 < len(pattern):
            tokens.append(pattern[position : position + 2])
            position += 2
        else:
            tokens.append(pattern[position])
            position += 1
    return "".join(reversed(tokens))
