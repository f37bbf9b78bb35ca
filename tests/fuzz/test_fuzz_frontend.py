"""Fuzzing the Dockerfile frontend and ``.dockerignore``: build contexts are outside bytes."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from lazybuild.context.dockerignore import (
    DockerIgnore,
    IgnorePattern,
    _match_tokens,
    _tokens,
    bad_pattern_reason,
    parse_dockerignore,
)
from lazybuild.frontend.dockerfile import Lexer, parse, parse_stages, plan_build
from lazybuild.oci.platform import Platform
from tests.fuzz.fuzzkit import TEST_TIMEOUT_SECONDS, bytes_like, holds_invariant, text_like

pytestmark = pytest.mark.timeout(TEST_TIMEOUT_SECONDS)

AMD64 = Platform("linux", "amd64")


@given(bytes_like("dockerfile"))
@example(b"RUN <<EOF\n")
@example(b"# escape=`\nFROM a\nRUN x`\n")
@example(b"FROM a\nCOPY <<'EOF' <<\"E2\" /x\n")
@example(b"FROM a AS b\nFROM b\nCOPY --from=b --chmod=999999999999 x y\n")
@example(b"ARG A=${A:-${A:-${A:+x}}}\nFROM $A\n")
def test_dockerfile_parse_and_plan(data: bytes) -> None:
    dockerfile = holds_invariant(lambda: parse(data))
    if dockerfile is None:
        return
    holds_invariant(lambda: parse_stages(dockerfile))
    holds_invariant(
        lambda: plan_build(
            dockerfile, build_platform=AMD64, target_platform=AMD64, build_args={"X": "1"}
        )
    )


_WORD_PIECES = st.sampled_from(
    ["$", "${", "}", ":-", ":+", "-", "+", "?", ":?", "#", "%", "/", "'", '"', "\\", "`",
     " ", "\t", "A", "B", "x", "$A", "${A}", "${#A}", "${A%x}", "${A/x/y}", "\n"]
)  # fmt: skip


@given(
    word=st.one_of(
        text_like("dockerfile", max_size=300),
        st.lists(_WORD_PIECES, max_size=40).map("".join),
    ),
    escape=st.sampled_from(["\\", "`"]),
    raw=st.booleans(),
)
@example(word="${A:-${A:-${A:-${A}}}}" * 3, escape="\\", raw=False)
@example(word="$" * 1000 + "{", escape="\\", raw=False)
@example(word="${" * 2000, escape="\\", raw=False)
def test_word_expansion(word: str, escape: str, *, raw: bool) -> None:
    lexer = Lexer(escape, raw_quotes=raw, raw_escapes=raw)
    env = {"A": "a b", "B": "", "x": "$A"}
    holds_invariant(lambda: lexer.process_words(word, env))
    holds_invariant(lambda: lexer.process_word(word, env))
    holds_invariant(lambda: lexer.referenced_names(word, env))


@given(bytes_like("dockerignore"))
@example(b"[\n")
@example(b"\xff\n")
@example(b"!\n")
@example(b"*a*a*a*a*a*a*a*a*a*a*b\n")
def test_dockerignore(data: bytes) -> None:
    patterns = holds_invariant(lambda: parse_dockerignore(data, "fuzz/.dockerignore"))
    if patterns is None:
        return
    ignore = DockerIgnore(patterns)  # what parse_dockerignore accepts compiles
    for path in ["a", "a" * 300, "a/b/c/d/e/f/g/h", "x.log", "node_modules/a/b", "[", "a\nb"]:
        holds_invariant(lambda path=path: ignore.is_excluded(path))  # type: ignore[misc]
        holds_invariant(lambda path=path: ignore.may_include_below(path))  # type: ignore[misc]


_PATTERN_PIECES = st.sampled_from(
    ["*", "**", "**/", "?", "[a-c]", "[^a]", "[!/]", "[\\]]", "\\*", "a", "b", "/", ".", "-"]
)
_PATHS = st.lists(st.sampled_from(["a", "b", "c", "/", ".", "-", "]", "*", "ab"]), max_size=12)


@given(st.lists(_PATTERN_PIECES, min_size=1, max_size=6).map("".join), _PATHS.map("".join))
def test_pattern_matchers_agree(pattern: str, path: str) -> None:
    """The backtracking-free matcher that wildcard-heavy patterns use means what the
    regex means."""
    if bad_pattern_reason(pattern) is not None:
        return
    compiled = IgnorePattern.compile(pattern, exception=False)
    tokens = _tokens(pattern)
    if compiled.regex is not None:
        assert (compiled.regex.match(path) is not None) == _match_tokens(tokens, path)
