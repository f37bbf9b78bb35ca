"""``.dockerignore`` parsing and matching, after Docker's documented rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from lazybuild.context.dockerignore import (
    DockerIgnore,
    find_dockerignore,
    load_dockerignore,
    parse_dockerignore,
)

DOCKERFILES = Path(__file__).resolve().parents[2] / "dockerfiles"


def test_parse_cleans_patterns() -> None:
    text = (
        "\ufeff# comment\n"
        "\n"
        "  spaced  \n"
        "/leading/slash\n"
        "trailing/slash/\n"
        "a/./b/../c\n"
        "./here\n"
        "! exception\n"
        "!/abs/exception/\n"
        " # not a comment (the # is not first)\n"
        "/\n"
    )
    assert parse_dockerignore(text.encode()) == [
        "spaced",
        "leading/slash",
        "trailing/slash",
        "a/c",
        "here",
        "!exception",
        "!abs/exception",
        "# not a comment (the # is not first)",
        "/",
    ]


# (patterns, path, excluded)
MATCH_CASES = [
    # plain names and directories
    (["foo"], "foo", True),
    (["foo"], "foo/bar/baz.txt", True),  # a directory excludes its contents
    (["foo"], "foobar", False),
    (["foo"], "sub/foo", False),  # patterns are anchored at the context root
    (["foo/bar"], "foo/bar/x", True),
    (["foo/bar"], "foo", False),
    # single-segment wildcards
    (["*.log"], "app.log", True),
    (["*.log"], "sub/app.log", False),  # "*" never crosses "/"
    (["*/*.log"], "sub/app.log", True),
    (["*/temp*"], "somedir/temporary.txt", True),
    (["*/temp*"], "somedir/sub/temp.txt", False),
    (["*/*/temp*"], "somedir/subdir/temporary.txt", True),
    (["temp?"], "temp1", True),
    (["temp?"], "temp12", False),
    (["temp?"], "temp", False),
    (["[a-c].txt"], "b.txt", True),
    (["[a-c].txt"], "d.txt", False),
    (["[^a-c].txt"], "d.txt", True),
    (["\\*.txt"], "*.txt", True),
    (["\\*.txt"], "a.txt", False),
    # "**" matches any number of directories, including none
    (["**/*.go"], "main.go", True),
    (["**/*.go"], "a/b/c/main.go", True),
    (["**/vendor"], "vendor/x", True),
    (["**/vendor"], "a/vendor/x", True),
    (["a/**/b"], "a/b", True),
    (["a/**/b"], "a/x/y/b", True),
    (["a/**"], "a/x/y", True),
    (["a/**"], "ab", False),
    (["**"], "anything/at/all", True),
    # exceptions: the last matching pattern wins
    (["*.md", "!README.md"], "README.md", False),
    (["*.md", "!README.md"], "CHANGES.md", True),
    (["!README.md", "*.md"], "README.md", True),
    (["docs", "!docs/keep.md"], "docs/keep.md", False),
    (["docs", "!docs/keep.md"], "docs/other.md", True),
    (["docs", "!docs/keep.md", "docs/keep.md"], "docs/keep.md", True),
    (["*", "!src", "src/**/*.o"], "src/a/b.o", True),
    (["*", "!src", "src/**/*.o"], "src/a/b.c", False),
    (["*", "!src"], "other", True),
    (["**/*.tmp", "!keep/**"], "keep/x.tmp", False),
    # cleaning applies to patterns and paths
    (["/build/"], "build/out.o", True),
    (["a/../b"], "b/c", True),
    (["foo"], "./foo/x", True),
    (["foo"], "/foo", True),
    # nothing excludes the context root itself
    (["*"], ".", False),
]


@pytest.mark.parametrize(("patterns", "path", "excluded"), MATCH_CASES)
def test_is_excluded(patterns: list[str], path: str, *, excluded: bool) -> None:
    assert DockerIgnore(parse_dockerignore("\n".join(patterns))).is_excluded(path) is excluded


def test_may_include_below() -> None:
    ignore = DockerIgnore(["vendor", "docs", "!docs/keep.md"])
    assert not ignore.may_include_below("vendor")
    assert ignore.may_include_below("docs")
    assert ignore.may_include_below("src")


def _context_files(context: Path) -> list[str]:
    return sorted(str(p.relative_to(context)) for p in context.rglob("*") if p.is_file())


def test_shared_dockerignore_case() -> None:
    context = DOCKERFILES / "dockerignore"
    ignore = load_dockerignore(context, context / "Dockerfile")
    kept = [path for path in _context_files(context) if not ignore.is_excluded(path)]
    assert kept == [
        ".dockerignore",
        "docs/final.md",
        "keep.txt",
        "secret/public.txt",
        "sub/app.log",
    ]


def test_dockerfile_specific_ignore_file_wins(tmp_path: Path) -> None:
    context = DOCKERFILES / "dockerfile-specific-dockerignore"
    assert find_dockerignore(context, context / "Dockerfile") == (
        context / "Dockerfile.dockerignore"
    )
    ignore = load_dockerignore(context, context / "Dockerfile")
    assert ignore.is_excluded("ignored-by-specific.txt")
    assert not ignore.is_excluded("kept.txt")
    # Without the specific file, the context's .dockerignore ("*") applies.
    assert find_dockerignore(context, tmp_path / "Dockerfile") == context / ".dockerignore"
    assert find_dockerignore(tmp_path, tmp_path / "Dockerfile") is None
    assert load_dockerignore(tmp_path).patterns == ()
