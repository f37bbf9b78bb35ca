"""The build context: listing, COPY selection and BuildKit-like content keys."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from lazybuild.context.dockerignore import DockerIgnore, load_dockerignore
from lazybuild.context.listing import BuildContext, ContextError
from lazybuild.errors import LazybuildError


def _write(root: Path, rel: str, data: str = "x", mode: int = 0o644) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data)
    path.chmod(mode)
    return path


@pytest.fixture
def ctx_dir(tmp_path: Path) -> Path:
    root = tmp_path / "ctx"
    _write(root, "a.txt", "a")
    _write(root, "b.txt", "b")
    _write(root, "c.md", "c")
    _write(root, "src/main.c", "int main;")
    _write(root, "src/util.c", "int util;")
    _write(root, "src/util.h", "#pragma once")
    _write(root, "pkg/one/x", "1")
    _write(root, "pkg/two/x", "2")
    _write(root, "pkg/two/y", "y")
    _write(root, "pkg/three/z", "z")
    (root / "src" / "link").symlink_to("main.c")
    return root


def _ctx(root: Path, *patterns: str) -> BuildContext:
    return BuildContext(root, DockerIgnore(patterns) if patterns else None)


def _sum(root: Path, selector: str, *patterns: str) -> str:
    return _ctx(root, *patterns).checksum(selector)


# -- listing ---------------------------------------------------------------------------


def test_files_sorted_typed_and_ignored(ctx_dir: Path) -> None:
    entries = list(_ctx(ctx_dir, "*.md", "pkg").files())
    paths = [e.path for e in entries]
    assert paths == [
        "a.txt",
        "b.txt",
        "src",
        "src/link",
        "src/main.c",
        "src/util.c",
        "src/util.h",
    ]
    by_path = {e.path: e for e in entries}
    assert by_path["src"].type == "dir"
    assert by_path["src/link"].type == "symlink"
    assert by_path["src/link"].linkname == "main.c"
    assert by_path["a.txt"].type == "file"
    assert by_path["a.txt"].size == 1
    assert by_path["a.txt"].mode == 0o100644
    assert by_path["a.txt"].uid == os.getuid()


def test_files_keeps_reincluded_entries_and_their_dirs(ctx_dir: Path) -> None:
    paths = [e.path for e in _ctx(ctx_dir, "pkg", "!pkg/two/y").files()]
    assert [p for p in paths if p.startswith("pkg")] == ["pkg", "pkg/two", "pkg/two/y"]


def test_files_do_not_follow_links_out_of_root(ctx_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    _write(outside, "secret", "s")
    (ctx_dir / "escape").symlink_to(outside)
    paths = [e.path for e in _ctx(ctx_dir).files()]
    assert "escape" in paths
    assert not any(p.startswith("escape/") for p in paths)


# -- what counts -----------------------------------------------------------------------


def test_unrelated_change_keeps_checksum(ctx_dir: Path) -> None:
    before = {s: _sum(ctx_dir, s) for s in ("a.txt", "pkg/two", "src/*.c", "*.txt")}
    _write(ctx_dir, "c.md", "changed")
    _write(ctx_dir, "src/util.h", "changed")
    _write(ctx_dir, "pkg/one/x", "changed")
    _write(ctx_dir, "new.bin", "new")
    after = {s: _sum(ctx_dir, s) for s in before}
    assert after == before


@pytest.mark.parametrize("selector", ["a.txt", "*.txt", ".", "/"])
def test_content_change_changes_checksum(ctx_dir: Path, selector: str) -> None:
    before = _sum(ctx_dir, selector)
    _write(ctx_dir, "a.txt", "A")
    assert _sum(ctx_dir, selector) != before


def test_mode_change_changes_checksum(ctx_dir: Path) -> None:
    before = (_sum(ctx_dir, "a.txt"), _sum(ctx_dir, "src"))
    (ctx_dir / "a.txt").chmod(0o755)
    (ctx_dir / "src" / "main.c").chmod(0o600)
    after = (_sum(ctx_dir, "a.txt"), _sum(ctx_dir, "src"))
    assert after[0] != before[0]
    assert after[1] != before[1]


def test_directory_mode_counts(ctx_dir: Path) -> None:
    before = _sum(ctx_dir, "src")
    (ctx_dir / "src").chmod(0o700)
    assert _sum(ctx_dir, "src") != before


def test_rename_inside_directory_counts(ctx_dir: Path) -> None:
    before = _sum(ctx_dir, "src")
    (ctx_dir / "src" / "util.h").rename(ctx_dir / "src" / "util2.h")
    assert _sum(ctx_dir, "src") != before


def test_symlink_target_change_counts(ctx_dir: Path) -> None:
    before = _sum(ctx_dir, "src")
    link = ctx_dir / "src" / "link"
    link.unlink()
    link.symlink_to("util.c")
    assert _sum(ctx_dir, "src") != before


def test_mtime_only_change_does_not_count(ctx_dir: Path) -> None:
    selectors = ("a.txt", "src", "*.txt", ".")
    before = {s: _sum(ctx_dir, s) for s in selectors}
    for path in (ctx_dir / "a.txt", ctx_dir / "src", ctx_dir / "src" / "main.c"):
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    assert {s: _sum(ctx_dir, s) for s in selectors} == before


def test_same_content_different_name_differs_in_tree_not_file(ctx_dir: Path) -> None:
    _write(ctx_dir, "copy.txt", "a")
    assert _sum(ctx_dir, "a.txt") == _sum(ctx_dir, "copy.txt")


def test_same_context_sees_changes(ctx_dir: Path) -> None:
    ctx = _ctx(ctx_dir)
    before = ctx.checksum("a.txt")
    path = ctx_dir / "a.txt"
    path.write_text("Z")
    os.utime(path, ns=(5_000_000_000, 5_000_000_000))
    assert ctx.checksum("a.txt") != before


def test_cached_digest_not_reused_when_restored_mtime(ctx_dir: Path) -> None:
    # Same size and a restored mtime (as tar extraction does): ctime still tells.
    path = ctx_dir / "a.txt"
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    time.sleep(0.15)
    ctx = _ctx(ctx_dir)
    before = ctx.checksum("a.txt")
    assert ctx.checksum("a.txt") == before
    path.write_text("Q")
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    assert ctx.checksum("a.txt") != before


def test_same_inode_link_retarget_seen(ctx_dir: Path) -> None:
    time.sleep(0.15)
    ctx = _ctx(ctx_dir)
    before = ctx.checksum("src", follow_symlinks=False)
    link = ctx_dir / "src" / "link"
    link.unlink()
    link.symlink_to("util.c")  # same length, may even reuse the inode
    assert ctx.checksum("src") != before


# -- .dockerignore ---------------------------------------------------------------------


def test_ignored_files_do_not_count(ctx_dir: Path) -> None:
    before = _sum(ctx_dir, ".", "*.md", "src/*.h")
    _write(ctx_dir, "c.md", "changed")
    _write(ctx_dir, "src/util.h", "changed")
    _write(ctx_dir, "more.md", "new")
    assert _sum(ctx_dir, ".", "*.md", "src/*.h") == before
    assert _sum(ctx_dir, ".") != before


def test_exceptions_count(ctx_dir: Path) -> None:
    patterns = ("pkg", "!pkg/two/y")
    before = _sum(ctx_dir, "pkg", *patterns)
    _write(ctx_dir, "pkg/two/x", "other")
    _write(ctx_dir, "pkg/one/x", "other")
    assert _sum(ctx_dir, "pkg", *patterns) == before
    _write(ctx_dir, "pkg/two/y", "other")
    assert _sum(ctx_dir, "pkg", *patterns) != before


def test_dockerignore_file_is_loaded(ctx_dir: Path) -> None:
    (ctx_dir / ".dockerignore").write_text("*.md\n!keep.md\n")
    _write(ctx_dir, "keep.md", "k")
    ctx = BuildContext(ctx_dir, load_dockerignore(ctx_dir))
    paths = [e.path for e in ctx.files()]
    assert "keep.md" in paths
    assert "c.md" not in paths
    assert ctx.copy_sources("*.md") == [ctx_dir / "keep.md"]


def test_ignored_selector_is_not_found(ctx_dir: Path) -> None:
    with pytest.raises(ContextError, match=r"c\.md"):
        _ctx(ctx_dir, "*.md").checksum("c.md")


def test_ignored_wildcard_matches_are_skipped(ctx_dir: Path) -> None:
    ctx = _ctx(ctx_dir, "b.txt")
    assert ctx.copy_sources("*.txt") == [ctx_dir / "a.txt"]
    assert ctx.checksum("*.txt") == _ctx(ctx_dir, "b.txt").checksum("?.txt")


# -- selectors -------------------------------------------------------------------------


def test_wildcards_select_sorted_matches(ctx_dir: Path) -> None:
    ctx = _ctx(ctx_dir)
    assert ctx.copy_sources("*.txt") == [ctx_dir / "a.txt", ctx_dir / "b.txt"]
    assert ctx.copy_sources("pkg/*/x") == [ctx_dir / "pkg/one/x", ctx_dir / "pkg/two/x"]
    assert ctx.copy_sources("src/[mu]*.[ch]") == [
        ctx_dir / "src/main.c",
        ctx_dir / "src/util.c",
        ctx_dir / "src/util.h",
    ]
    assert ctx.copy_sources("src/[^m]*.c") == [ctx_dir / "src/util.c"]


def test_nested_wildcard_checksum(ctx_dir: Path) -> None:
    before = _sum(ctx_dir, "pkg/*/x")
    _write(ctx_dir, "pkg/two/y", "changed")
    _write(ctx_dir, "pkg/three/z", "changed")
    assert _sum(ctx_dir, "pkg/*/x") == before
    _write(ctx_dir, "pkg/three/x", "new match")
    assert _sum(ctx_dir, "pkg/*/x") != before


def test_wildcard_is_not_the_single_match_itself(ctx_dir: Path) -> None:
    # The combined key includes the match's name, so renames are seen.
    ctx = _ctx(ctx_dir)
    assert ctx.checksum("a.*") != ctx.checksum("b.*")


def test_escaped_metacharacters_are_literal(ctx_dir: Path) -> None:
    _write(ctx_dir, "star*.txt", "s")
    ctx = _ctx(ctx_dir)
    assert ctx.copy_sources("star\\*.txt") == [ctx_dir / "star*.txt"]
    assert ctx.copy_sources("star*.txt", allow_wildcard=False) == [ctx_dir / "star*.txt"]
    # A literal selector hashes the entry itself; a wildcard also hashes the match's name.
    _write(ctx_dir, "plain.txt", "s")
    literal = ctx.checksum("star*.txt", allow_wildcard=False)
    assert literal == ctx.checksum("plain.txt")
    assert ctx.checksum("star\\*.txt") != literal
    with pytest.raises(ContextError):
        ctx.checksum("st?r.txt", allow_wildcard=False)


def test_directory_with_and_without_trailing_slash(ctx_dir: Path) -> None:
    ctx = _ctx(ctx_dir)
    assert ctx.checksum("src") == ctx.checksum("src/")
    assert ctx.checksum("src") == ctx.checksum("./src/.")
    assert ctx.copy_sources("src/") == [ctx_dir / "src"]
    before = ctx.checksum("src/")
    _write(ctx_dir, "src/new.c", "n")
    assert ctx.checksum("src/") != before


def test_directory_differs_from_its_only_file(tmp_path: Path) -> None:
    _write(tmp_path, "d/f", "x")
    ctx = _ctx(tmp_path)
    assert ctx.checksum("d") != ctx.checksum("d/f")


def test_missing_selector_is_an_error(ctx_dir: Path) -> None:
    ctx = _ctx(ctx_dir)
    with pytest.raises(LazybuildError, match=r"nope\.txt"):
        ctx.checksum("nope.txt")
    with pytest.raises(ContextError, match=r"a\.txt/x"):
        ctx.checksum("a.txt/x")
    with pytest.raises(ContextError, match=r"\*\.none"):
        ctx.checksum("*.none")
    with pytest.raises(ContextError, match="nope"):
        ctx.copy_sources("nope/*")


def test_empty_wildcard_allowed_on_request(ctx_dir: Path) -> None:
    ctx = _ctx(ctx_dir)
    empty = ctx.checksum("*.none", allow_empty_wildcard=True)
    assert empty == ctx.checksum("*.zip", allow_empty_wildcard=True)
    assert ctx.copy_sources("*.none", allow_empty_wildcard=True) == []
    with pytest.raises(ContextError):
        ctx.checksum("none.txt", allow_empty_wildcard=True)


def test_dotdot_cannot_leave_root(ctx_dir: Path) -> None:
    ctx = _ctx(ctx_dir)
    # Like BuildKit, selectors are rooted: "../a.txt" is cleaned to "a.txt".
    assert ctx.checksum("../a.txt") == ctx.checksum("a.txt")


# -- symlinks --------------------------------------------------------------------------


def test_final_symlink_followed_or_hashed_as_link(ctx_dir: Path) -> None:
    ctx = _ctx(ctx_dir)
    assert ctx.checksum("src/link") == ctx.checksum("src/main.c")
    as_link = ctx.checksum("src/link", follow_symlinks=False)
    assert as_link != ctx.checksum("src/main.c")
    assert ctx.copy_sources("src/link") == [ctx_dir / "src/main.c"]
    assert ctx.copy_sources("src/link", follow_symlinks=False) == [ctx_dir / "src/link"]


def test_traversed_symlink_resolves_inside_root(ctx_dir: Path) -> None:
    (ctx_dir / "alias").symlink_to("pkg/two")
    (ctx_dir / "pkg" / "up").symlink_to("../src")
    ctx = _ctx(ctx_dir)
    assert ctx.copy_sources("alias/x") == [ctx_dir / "pkg/two/x"]
    assert ctx.checksum("alias/x") == ctx.checksum("pkg/two/x")
    assert ctx.checksum("alias") == ctx.checksum("pkg/two")
    assert ctx.copy_sources("pkg/up/*.h") == [ctx_dir / "src/util.h"]


def test_escaping_symlinks_are_errors(ctx_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    _write(outside, "secret", "s")
    (ctx_dir / "abs").symlink_to(outside)
    (ctx_dir / "rel").symlink_to("../outside")
    (ctx_dir / "absfile").symlink_to(outside / "secret")
    ctx = _ctx(ctx_dir)
    for selector in ("abs/secret", "rel/secret", "rel", "absfile", "rel/*"):
        with pytest.raises(ContextError, match="outside the build context"):
            ctx.checksum(selector)
    with pytest.raises(ContextError, match="outside the build context"):
        ctx.copy_sources("rel/secret")
    # Inside a selection, the links are only names: hashed, never followed.
    ctx.checksum(".")
    assert ctx.checksum("rel", follow_symlinks=False).startswith("sha256:")


def test_symlink_loop_is_an_error(ctx_dir: Path) -> None:
    (ctx_dir / "loop1").symlink_to("loop2")
    (ctx_dir / "loop2").symlink_to("loop1")
    with pytest.raises(ContextError, match="symbolic links"):
        _ctx(ctx_dir).checksum("loop1")


def test_symlink_to_ignored_target_is_not_found(ctx_dir: Path) -> None:
    (ctx_dir / "docs").symlink_to("c.md")
    with pytest.raises(ContextError, match="docs"):
        _ctx(ctx_dir, "*.md").checksum("docs")


# -- stability and speed ---------------------------------------------------------------


def test_deterministic_across_fresh_contexts(ctx_dir: Path) -> None:
    selectors = (".", "src", "src/*.c", "a.txt", "pkg/*/x", "src/link")
    first = {s: _ctx(ctx_dir).checksum(s) for s in selectors}
    second = {s: _ctx(ctx_dir).checksum(s) for s in selectors}
    assert first == second
    assert all(v.startswith("sha256:") and len(v) == 71 for v in first.values())


def test_identical_trees_in_different_places_match(tmp_path: Path) -> None:
    for name in ("one", "two"):
        _write(tmp_path / name, "d/f", "same")
        _write(tmp_path / name, "g", "same too", mode=0o755)
    assert _sum(tmp_path / "one", ".") == _sum(tmp_path / "two", ".")


def test_not_a_directory_root(tmp_path: Path) -> None:
    _write(tmp_path, "file")
    with pytest.raises(ContextError):
        BuildContext(tmp_path / "file", None)
    with pytest.raises(ContextError):
        BuildContext(tmp_path / "missing", None)


def test_ten_thousand_files_cached(tmp_path: Path) -> None:
    root = tmp_path / "big"
    for d in range(100):
        directory = root / f"d{d:03}"
        directory.mkdir(parents=True)
        for f in range(100):
            (directory / f"f{f:03}").write_bytes(b"%d-%d" % (d, f))
    time.sleep(0.2)  # entries changed moments before a read are deliberately not cached
    ctx = BuildContext(root, None)
    first = ctx.checksum(".")
    start = time.perf_counter()
    second = ctx.checksum(".")
    elapsed = time.perf_counter() - start
    assert first == second
    print(f"second checksum of 10k files: {elapsed:.3f}s")
    assert elapsed < 0.8, f"second checksum of 10k files took {elapsed:.2f}s"


def test_wildcard_symlink_matches_keep_their_names(ctx_dir: Path) -> None:
    (ctx_dir / "z.txt").symlink_to("a.txt")
    ctx = _ctx(ctx_dir)
    matches = ctx.copy_matches("*.txt")
    assert [(m.name, m.source, m.type) for m in matches] == [
        ("a.txt", ctx_dir / "a.txt", "file"),
        ("b.txt", ctx_dir / "b.txt", "file"),
        ("z.txt", ctx_dir / "a.txt", "file"),
    ]
    as_links = ctx.copy_matches("*.txt", follow_symlinks=False)
    assert as_links[2].type == "symlink"
    assert ctx.checksum("*.txt") != ctx.checksum("*.txt", follow_symlinks=False)
    # An ignored link is not sent, so it matches nothing even if its target is kept.
    assert [m.name for m in _ctx(ctx_dir, "z.txt").copy_matches("*.txt")] == ["a.txt", "b.txt"]
    with pytest.raises(ContextError, match=r"z\.txt"):
        _ctx(ctx_dir, "z.txt").checksum("z.txt")


def test_ignored_directory_with_exception_is_selectable(ctx_dir: Path) -> None:
    ctx = _ctx(ctx_dir, "pkg", "!pkg/two/y")
    assert ctx.copy_sources("pkg") == [ctx_dir / "pkg"]
    assert ctx.copy_sources("pkg/*") == [ctx_dir / "pkg/two"]
    with pytest.raises(ContextError):
        ctx.checksum("pkg/one")


def test_invalid_patterns_are_errors(ctx_dir: Path) -> None:
    ctx = _ctx(ctx_dir)
    for selector in ("src/[", "src/[]", "src/a\\"):
        with pytest.raises(ContextError):
            ctx.checksum(selector)


def test_a_hidden_directory_is_never_part_of_the_context(tmp_path: Path) -> None:
    """The state directory kept inside a checkout (a CI cache) is left out of listings,
    selections and keys, whatever the ignore file says."""
    root = tmp_path / "ctx"
    _write(root, "main.go", "package main")
    state = root / ".lazybuild"
    _write(state, "build/staging/x/upper/file", "moving target")
    context = BuildContext(root, None, hidden=(tmp_path / "ctx/./.lazybuild",))
    assert [entry.path for entry in context.files()] == ["main.go"]
    before = context.checksum(".")
    _write(state, "build/staging/y", "more")
    assert BuildContext(root, None, hidden=(state,)).checksum(".") == before
    for selector in (".lazybuild", ".lazybuild/build", ".laz*"):
        with pytest.raises(LazybuildError, match=r"not found|nothing matches"):
            context.copy_sources(selector, allow_empty_wildcard=False)
    assert context.copy_sources("*") == [root / "main.go"]
