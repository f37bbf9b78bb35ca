"""Parser: directives, comments, continuations, flags, heredocs and error lines."""

from __future__ import annotations

import pytest

from lazybuild.errors import FormatError, LazybuildError
from lazybuild.frontend.dockerfile.parser import Heredoc, ParseError, parse


def _nodes(text: str) -> list[tuple[str, tuple[str, ...], str, int, int]]:
    return [(n.keyword, n.flags, n.args, n.start_line, n.end_line) for n in parse(text).nodes]


# ----------------------------------------------------------------- directives


@pytest.mark.parametrize(
    ("text", "escape", "syntax"),
    [
        ("# syntax=docker/dockerfile:1\nFROM a\n", "\\", "docker/dockerfile:1"),
        ("#SYNTAX = x\n# Escape = `\nFROM a\n", "`", "x"),
        ("# escape=`\n# syntax=y\nFROM a\n", "`", "y"),
        # Directives only count before the first comment, blank line or instruction.
        ("# a comment\n# escape=`\nFROM a\n", "\\", None),
        ("\n# escape=`\nFROM a\n", "\\", None),
        ("FROM a\n# escape=`\n", "\\", None),
        # An unknown directive is a comment and ends the directive block.
        ("# foo=bar\n# escape=`\nFROM a\n", "\\", None),
    ],
)
def test_directives(text: str, escape: str, syntax: str | None) -> None:
    dockerfile = parse(text)
    assert dockerfile.escape == escape
    assert dockerfile.directives.syntax == syntax


def test_duplicate_directive_is_an_error() -> None:
    with pytest.raises(ParseError, match=r"Dockerfile:2: only one escape parser directive"):
        parse("# escape=`\n# escape=\\\nFROM a\n")


def test_bad_escape_token() -> None:
    with pytest.raises(ParseError, match="Dockerfile:1: invalid escape token"):
        parse("# escape=x\nFROM a\n")


def test_check_directive_kept() -> None:
    assert parse("# check=skip=all\nFROM a\n").directives.check == "skip=all"


# ------------------------------------------------------ comments & continuations


def test_keywords_case_insensitive_and_leading_whitespace() -> None:
    assert _nodes("  from a\n\trUn echo x\n") == [
        ("FROM", (), "a", 1, 1),
        ("RUN", (), "echo x", 2, 2),
    ]


def test_continuations_join_lines_and_drop_comments_and_empty_lines() -> None:
    text = "RUN a \\\n# comment\n  b \\\n\n   \\\n  c\nRUN d\n"
    # A line holding only whitespace and the escape is a (blank) continuation, not empty.
    assert _nodes(text) == [("RUN", (), "a   b      c", 1, 6), ("RUN", (), "d", 7, 7)]


def test_continuation_allows_trailing_whitespace_after_escape() -> None:
    assert _nodes("RUN a \\  \n b\n")[0][2] == "a  b"


def test_hash_inside_an_instruction_is_not_a_comment() -> None:
    assert _nodes("RUN echo # hi\n")[0][2] == "echo # hi"


def test_backtick_escape_keeps_backslashes() -> None:
    text = "# escape=`\nFROM a\nRUN dir C:\\ `\n  && echo done\nCOPY x C:\\dest\\\n"
    assert _nodes(text)[1:] == [
        ("RUN", (), "dir C:\\   && echo done", 3, 4),
        ("COPY", (), "x C:\\dest\\", 5, 5),
    ]


def test_crlf_and_bom() -> None:
    assert _nodes("\ufeffFROM a\r\nRUN b \\\r\n c\r\n") == [
        ("FROM", (), "a", 1, 1),
        ("RUN", (), "b  c", 2, 3),
    ]


def test_continuation_at_end_of_file() -> None:
    assert _nodes("FROM a\nRUN b \\\n")[1] == ("RUN", (), "b", 2, 2)


# ----------------------------------------------------------------------- flags


@pytest.mark.parametrize(
    ("line", "flags", "args"),
    [
        ("COPY --from=x a b", ("--from=x",), "a b"),
        ("RUN --mount=type=cache,target=/a --mount=target=/b make", None, "make"),
        ("COPY --chown='a b' x y", ("--chown=a b",), "x y"),
        ("COPY -- --not-a-flag y", (), "--not-a-flag y"),
        ("COPY --link x y", ("--link",), "x y"),
        ("RUN --network=none", ("--network=none",), ""),
    ],
)
def test_flags(line: str, flags: tuple[str, ...] | None, args: str) -> None:
    node = parse(line + "\n").nodes[0]
    if flags is not None:
        assert node.flags == flags
    else:
        assert len(node.flags) == 2
    assert node.args == args


# -------------------------------------------------------------------- heredocs


def _heredocs(text: str) -> tuple[Heredoc, ...]:
    return parse(text).nodes[-1].heredocs


def test_heredoc_basic() -> None:
    node = parse("FROM a\nRUN <<EOF\necho hi\nEOF\nRUN next\n").nodes[1]
    assert (node.args, node.start_line, node.end_line) == ("<<EOF", 2, 4)
    assert node.heredocs == (Heredoc("EOF", "echo hi\n", expand=True, chomp=False),)
    assert parse("FROM a\nRUN <<EOF\necho hi\nEOF\nRUN next\n").nodes[2].start_line == 5


@pytest.mark.parametrize(
    ("marker", "expand"),
    [("<<EOF", True), ('<<"EOF"', False), ("<<'EOF'", False), ("<<-EOF", True)],
)
def test_heredoc_quoting(marker: str, *, expand: bool) -> None:
    (heredoc,) = _heredocs(f"RUN cat {marker}\n$HOME\nEOF\n")
    assert heredoc.name == "EOF"
    assert heredoc.expand is expand
    assert heredoc.content == "$HOME\n"


def test_heredoc_chomp_strips_tabs_from_body_and_terminator() -> None:
    (heredoc,) = _heredocs("RUN <<-EOT\n\t\tindented\n\tline\n\tEOT\n")
    assert heredoc.chomp
    assert heredoc.content == "\t\tindented\n\tline\n"
    assert heredoc.body == "indented\nline\n"


def test_heredoc_without_chomp_needs_exact_terminator() -> None:
    (heredoc,) = _heredocs("RUN <<EOF\n\tEOF\nEOF\n")
    assert heredoc.content == "\tEOF\n"


def test_several_heredocs_on_one_line() -> None:
    docs = _heredocs("COPY <<a <<b /dest/\n1\na\n2\nb\n")
    assert [(d.name, d.content) for d in docs] == [("a", "1\n"), ("b", "2\n")]


def test_empty_heredoc() -> None:
    (heredoc,) = _heredocs("RUN <<EMPTY\nEMPTY\n")
    assert heredoc.content == ""


def test_heredoc_keeps_comment_and_blank_lines_in_body() -> None:
    (heredoc,) = _heredocs("RUN <<EOF\n# not a comment\n\nx \\\nEOF\n")
    assert heredoc.content == "# not a comment\n\nx \\\n"


@pytest.mark.parametrize(
    "line",
    [
        'RUN ["<<EOF"]',  # exec form has no heredocs
        'RUN echo "<<EOF"',  # quoted
        "RUN echo '<<EOF'",
        "RUN cat << EOF",  # a space after << is not a heredoc
        "ENV A=<<EOF",  # only RUN, COPY and ADD take heredocs
    ],
)
def test_not_a_heredoc(line: str) -> None:
    assert _heredocs(line + "\n") == ()


def test_heredoc_after_continuation_line() -> None:
    node = parse("RUN cat \\\n  <<EOF\nbody\nEOF\n").nodes[0]
    assert node.heredocs[0].content == "body\n"
    assert (node.start_line, node.end_line) == (1, 4)


def test_unterminated_heredoc() -> None:
    with pytest.raises(ParseError, match=r"^Dockerfile:2: unterminated heredoc 'EOF'"):
        parse("FROM a\nRUN <<EOF\necho\n")


# ---------------------------------------------------------------------- errors


def test_mistyped_instruction_gets_a_did_you_mean_hint() -> None:
    # BuildKit's testDockerfileInvalidInstruction.
    with pytest.raises(ParseError) as caught:
        parse('FROM a\nFNTRYPOINT ["/bin/true"]\n')
    assert str(caught.value) == (
        "Dockerfile:2: unknown instruction: FNTRYPOINT (did you mean ENTRYPOINT?)"
    )


def test_onbuild_trigger_keeps_its_heredoc() -> None:
    # BuildKit's testOnBuildHeredoc: the body is the trigger's, not instructions of its own.
    dockerfile = parse("FROM a\nONBUILD RUN --network=none <<EOF\necho hi >> /dest\nEOF\nRUN x\n")
    onbuild = dockerfile.nodes[1]
    assert (onbuild.keyword, onbuild.start_line, onbuild.end_line) == ("ONBUILD", 2, 4)
    assert onbuild.heredocs == (Heredoc("EOF", "echo hi >> /dest\n", expand=True, chomp=False),)
    assert [n.keyword for n in dockerfile.nodes] == ["FROM", "ONBUILD", "RUN"]


def test_unknown_instruction_names_the_line() -> None:
    with pytest.raises(ParseError) as caught:
        parse("FROM a\nRUN x \\\n  y\nXYZZY bar\n", filename="app.Dockerfile")
    assert str(caught.value) == "app.Dockerfile:4: unknown instruction: XYZZY"
    assert caught.value.line == 4
    assert isinstance(caught.value, FormatError)
    assert isinstance(caught.value, LazybuildError)


def test_invalid_utf8() -> None:
    with pytest.raises(ParseError, match="Dockerfile:2: not valid UTF-8"):
        parse(b"FROM a\nRUN \xff\n")


def test_empty_file_has_no_nodes() -> None:
    assert parse(b"").nodes == ()
    assert parse(b"# just a comment\n\n").nodes == ()


def test_heredocs_on_other_file_descriptors() -> None:
    # BuildKit's testRunComplexHeredoc: `3<<IN1` is a heredoc for fd 3; the shell reads it.
    text = (
        "RUN <<EOF 3<<IN1 4<<-IN2 awk -f -\nBEGIN {}\nEOF\nhello\nIN1\n\tworld\n\tIN2\nRUN true\n"
    )
    dockerfile = parse(text)
    run, after = dockerfile.nodes
    assert [(h.name, h.content, h.chomp) for h in run.heredocs] == [
        ("EOF", "BEGIN {}\n", False),
        ("IN1", "hello\n", False),
        ("IN2", "\tworld\n", True),
    ]
    assert (run.end_line, after.start_line) == (7, 8)
