"""Word expansion tables, after the Dockerfile reference's "Environment replacement"."""

from __future__ import annotations

import pytest

from lazybuild.frontend.dockerfile.shell import ExpansionError, Lexer

ENV = {"V": "value", "EMPTY": "", "SPACED": "a b  c", "PATH": "/bin", "X_1": "x1"}

WORD_CASES = [
    # plain substitution
    ("$V", "value"),
    ("${V}", "value"),
    ("pre-${V}-post", "pre-value-post"),
    ("$V/x", "value/x"),
    ("${X_1}", "x1"),
    ("$X_1", "x1"),
    ("$UNSET", ""),
    ("${UNSET}", ""),
    ("a$UNSET.b", "a.b"),
    ("$", "$"),
    ("a$", "a$"),
    ("$/", "$/"),
    ("$1", ""),  # positional parameters are never set
    # default / alternative values
    ("${UNSET:-def}", "def"),
    ("${EMPTY:-def}", "def"),
    ("${V:-def}", "value"),
    ("${UNSET-def}", "def"),
    ("${EMPTY-def}", ""),
    ("${V:+alt}", "alt"),
    ("${EMPTY:+alt}", ""),
    ("${UNSET:+alt}", ""),
    ("${EMPTY+alt}", "alt"),
    ("${UNSET+alt}", ""),
    ("${UNSET:-$V}", "value"),
    ("${UNSET:-${V}-x}", "value-x"),
    ("${UNSET:-a b}", "a b"),
    ("${UNSET:-'quoted }'}", "quoted }"),
    ("${V:?must be set}", "value"),
    # quotes
    ("'$V'", "$V"),
    ('"$V"', "value"),
    ("\"${V}\" and '$V'", "value and $V"),
    ('"a b"', "a b"),
    ("''", ""),
    ('a"b"c', "abc"),
    ("'a\\b'", "a\\b"),  # no escapes inside single quotes
    # escapes
    ("\\$V", "$V"),
    ("\\${V}", "${V}"),
    ("a\\ b", "a b"),
    ("\\\\", "\\"),
    ('"\\$V"', "$V"),
    ('"\\""', '"'),
    ('"\\n"', "\\n"),  # other escapes stay literal inside double quotes
    ("\\'", "'"),
    ("abc\\", "abc"),  # a trailing escape character is dropped
    ("$SPACED", "a b  c"),  # one word keeps whitespace
]


@pytest.mark.parametrize(("word", "expected"), WORD_CASES)
def test_process_word(word: str, expected: str) -> None:
    assert Lexer().process_word(word, ENV) == expected


WORDS_CASES = [
    ("a b c", ["a", "b", "c"]),
    ("  a   b  ", ["a", "b"]),
    ("$SPACED", ["a", "b", "c"]),  # unquoted expansions split after substitution
    ('"$SPACED"', ["a b  c"]),
    ("x$SPACED", ["xa", "b", "c"]),
    ("'a b' c", ["a b", "c"]),
    ("a\\ b c", ["a b", "c"]),
    ('""', []),
    ("$UNSET", []),
    ("80 ${UNSET:-443}", ["80", "443"]),
]


@pytest.mark.parametrize(("word", "expected"), WORDS_CASES)
def test_process_words(word: str, expected: list[str]) -> None:
    assert Lexer().process_words(word, ENV) == expected


BACKTICK_CASES = [
    ("`$V", "$V"),
    ("C:\\path\\$V", "C:\\path\\value"),  # backslash is an ordinary character
    ("a` b", "a b"),
    ('"`""', '"'),
]


@pytest.mark.parametrize(("word", "expected"), BACKTICK_CASES)
def test_backtick_escape(word: str, expected: str) -> None:
    assert Lexer("`").process_word(word, ENV) == expected


@pytest.mark.parametrize(
    ("word", "message"),
    [
        ("${UNSET:?must be set}", "UNSET: must be set"),
        ("${EMPTY:?}", "EMPTY: is not allowed to be empty"),
        ("${UNSET:?}", "UNSET: is not allowed to be unset"),
        ("${V:#x}", "unsupported modifier (:#"),
        ("${V:%x}", "unsupported modifier (:%"),
        ("${V/x", "missing '/' in"),
        ("${V#\\a}", "invalid escape"),
        ("${UNSET?gone}", "UNSET: gone"),
        ("${V", "'}'"),
        ("${}", "bad substitution"),
        ("${V!x}", "unsupported modifier"),
        ("'open", "single-quote"),
        ('"open', "double-quote"),
    ],
)
def test_errors(word: str, message: str) -> None:
    with pytest.raises(ExpansionError, match=message.replace("(", r"\(").replace("'", ".")):
        Lexer().process_word(word, ENV)


ENV_PATTERNS = {"F": "foo.tar.gz", "P": "/a/b/c", "STAR": "a*b*c", "N": "x"}

# BuildKit's shell lexer (frontend/dockerfile/shell/lex.go, and its lex tests): `*`/`?`
# are the wildcards, `#`/`%` the shortest match and `##`/`%%` the longest.
PATTERN_CASES = [
    ("${F%.*}", "foo.tar"),
    ("${F%%.*}", "foo"),
    ("${F#*.}", "tar.gz"),
    ("${F##*.}", "gz"),
    ("${F#f?o}", ".tar.gz"),
    ("${F#nomatch}", "foo.tar.gz"),
    ("${F%}", "foo.tar.gz"),
    ("${P#/}", "a/b/c"),
    ("${P##*/}", "c"),
    ("${P%/*}", "/a/b"),
    ("${P%%/*}", ""),
    ("${UNSET#x}", ""),
    ("${STAR#a\\*}", "b*c"),  # an escaped star is literal
    ("${STAR%\\*c}", "a*b"),
    ("${F#$N}", "foo.tar.gz"),  # the pattern is expanded itself
    ("${F#${UNSET:-f}}", "oo.tar.gz"),
    ("${P/b/X}", "/a/X/c"),
    ("${F/o/0}", "f0o.tar.gz"),
    ("${F//o/0}", "f00.tar.gz"),
    ("${P//\\//_}", "_a_b_c"),  # `\/` is a slash in the pattern
    ("${F/*./}", "gz"),  # the longest match
    ("${F/x/y}", "foo.tar.gz"),
    ("${F//[.]/-}", "foo.tar.gz"),  # no bracket expressions: `[.]` is literal text
]


@pytest.mark.parametrize(("word", "expected"), PATTERN_CASES)
def test_pattern_substitutions(word: str, expected: str) -> None:
    assert Lexer().process_word(word, ENV_PATTERNS) == expected


def test_quotes_are_text_expands_inside_quotes() -> None:
    lexer = Lexer(quotes_are_text=True)
    assert lexer.process_word("'${N}' \"$N\" \\$N", ENV_PATTERNS) == "'x' \"x\" $N"


def test_empty_but_set_with_question_mark_without_colon_is_fine() -> None:
    assert Lexer().process_word("${EMPTY?x}", ENV) == ""


def test_raw_mode_keeps_quotes_and_escapes_for_heredocs() -> None:
    lexer = Lexer(raw_quotes=True, raw_escapes=True)
    assert lexer.process_word("echo \"$V\" '$V' \\$V\n", ENV) == "echo \"value\" '$V' \\$V\n"


def test_referenced_names() -> None:
    assert Lexer().referenced_names("$A ${B:-$C} '$D'", {}) == {"A", "B", "C"}


def test_bad_escape_token() -> None:
    with pytest.raises(ValueError, match="escape token"):
        Lexer("x")
