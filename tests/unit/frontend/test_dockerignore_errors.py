"""A broken ``.dockerignore`` is one line naming the file and the line (issue 13, item 5)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lazybuild.context.dockerignore import DockerIgnore, load_dockerignore, parse_dockerignore
from lazybuild.errors import FormatError, LazybuildError


def test_not_utf8_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").write_bytes(b"# fine\nnode_modules\nb\xe4d\n")
    with pytest.raises(LazybuildError) as caught:
        load_dockerignore(tmp_path)
    message = str(caught.value)
    assert message == f"{tmp_path / '.dockerignore'}:3: not valid UTF-8"
    assert "\n" not in message


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("[", "character class"),
        ("a[]b", "character class"),
        ("[a-]", "character class"),
        ("[^]]", "character class"),
        ("x\\", "escape"),
        ("!", "exclusion"),
    ],
)
def test_invalid_patterns_name_the_line(line: str, why: str) -> None:
    with pytest.raises(FormatError, match=rf"^ctx/.dockerignore:2: .*{why}"):
        parse_dockerignore(f"ok\n{line}\n".encode(), "ctx/.dockerignore")


def test_invalid_patterns_given_directly_are_format_errors() -> None:
    with pytest.raises(FormatError, match="invalid pattern"):
        DockerIgnore(["[z"])


def test_class_edge_cases_match_as_go_does() -> None:
    ignore = DockerIgnore(["[z-a]x", "[\\]]y", "[&&]z"])
    assert not ignore.is_excluded("ax")
    assert ignore.is_excluded("]y")
    assert ignore.is_excluded("&z")


def test_patterns_with_many_wildcards_match_in_linear_time() -> None:
    ignore = DockerIgnore(["*a*a*a*a*a*a*a*a*b", "**/" * 40 + "y", "a/**/*/**/*/**/c"])
    started = time.perf_counter()
    assert not ignore.is_excluded("a" * 250)
    assert not ignore.is_excluded("a/" * 200 + "x")
    assert ignore.is_excluded("a" * 20 + "b")
    assert ignore.is_excluded("q/r/y")
    assert ignore.is_excluded("a/1/2/3/c")
    assert not ignore.is_excluded("a/1/c")
    assert time.perf_counter() - started < 2
