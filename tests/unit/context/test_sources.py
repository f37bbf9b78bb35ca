"""Where a build's context and Dockerfile come from: stdin (a Dockerfile or a tar,
plain or compressed), -f -, and git URLs, as docker build / buildx take them."""

from __future__ import annotations

import argparse
import bz2
import gzip
import io
import lzma
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lazybuild.context import sources
from lazybuild.context.sources import (
    ContextSourceError,
    GitRef,
    cleanup_sources,
    is_git_url,
    parse_git_ref,
    prepare_sources,
)
from lazybuild.errors import LazybuildError, UsageError
from tests.support.gitserve import git, git_daemon, make_repository


@pytest.mark.parametrize(
    ("text", "git"),
    [
        ("https://github.com/moby/buildkit.git", True),
        ("https://host/repo.git#main:sub/dir", True),
        ("http://host/repo.git#v1", True),
        ("git@github.com:moby/buildkit.git", True),
        ("git://host/repo", True),
        ("ssh://git@host/repo", True),
        ("github.com/moby/buildkit", True),
        ("https://host/archive.tar.gz", False),  # a remote tarball, not git
        ("https://host/repo.gitx", False),
        (".", False),
        ("-", False),
        ("dir/repo.git", False),
    ],
)
def test_git_urls_as_moby_recognises_them(text: str, *, git: bool) -> None:
    assert is_git_url(text) is git


def test_git_refs_split_into_remote_ref_and_subdir() -> None:
    assert parse_git_ref("https://h/r.git#v1:a/b/") == GitRef("https://h/r.git", "v1", "a/b")
    assert parse_git_ref("https://h/r.git#:sub") == GitRef("https://h/r.git", "", "sub")
    assert parse_git_ref("github.com/o/r") == GitRef("https://github.com/o/r")
    with pytest.raises(UsageError):
        parse_git_ref("git://h/r.git#--upload-pack=x")


@pytest.fixture
def scratch_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The temporary directory sources are materialised in, checked empty at the end."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    yield tmp


def _args(context: str, file: str | None = None, *build_args: str) -> argparse.Namespace:
    return argparse.Namespace(
        context=context, file=None if file is None else Path(file), build_arg=list(build_args)
    )


def _stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))


def _context_tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for name, data in files.items():
            member = tarfile.TarInfo(name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return out.getvalue()


_FILES = {"Dockerfile": b"FROM scratch\nCOPY . /\n", "sub/a.txt": b"a\n", "alt.df": b"FROM x\n"}


@pytest.mark.parametrize(
    "compress",
    [
        lambda data: data,
        gzip.compress,
        bz2.compress,
        lzma.compress,
    ],
    ids=["plain", "gzip", "bzip2", "xz"],
)
def test_a_tar_on_stdin_is_the_context(
    compress: Callable[[bytes], bytes], scratch_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stdin(monkeypatch, compress(_context_tar(_FILES)))
    args = _args("-")
    prepare_sources(args)
    assert (args.context / "sub" / "a.txt").read_bytes() == b"a\n"
    # Copied out, beside an empty ignore file: no .dockerignore applies to a tar
    # context (BuildKit; the legacy builder neither).
    assert args.file.read_bytes() == _FILES["Dockerfile"]
    assert args.file.with_name("Dockerfile.dockerignore").read_bytes() == b""
    assert not args.file.is_relative_to(args.context)
    cleanup_sources(args)
    assert list(scratch_tmp.iterdir()) == []


def test_with_a_tar_on_stdin_f_names_a_file_in_it(
    scratch_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stdin(monkeypatch, _context_tar(_FILES))
    args = _args("-", "alt.df")
    prepare_sources(args)
    assert args.file.read_bytes() == b"FROM x\n"
    cleanup_sources(args)


def test_anything_else_on_stdin_is_the_dockerfile_with_an_empty_context(
    scratch_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stdin(monkeypatch, b"FROM scratch\n")
    args = _args("-")
    prepare_sources(args)
    assert list(args.context.iterdir()) == []
    assert args.file.name == "Dockerfile" and args.file.read_bytes() == b"FROM scratch\n"
    cleanup_sources(args)
    assert list(scratch_tmp.iterdir()) == []


def test_f_dash_reads_the_dockerfile_and_keeps_the_directory(
    scratch_tmp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stdin(monkeypatch, b"FROM scratch\n")
    args = _args(str(tmp_path), "-")
    prepare_sources(args)
    assert args.context == tmp_path
    assert args.file.read_bytes() == b"FROM scratch\n"
    cleanup_sources(args)
    assert list(scratch_tmp.iterdir()) == []


def test_a_plain_directory_needs_no_scratch(scratch_tmp: Path, tmp_path: Path) -> None:
    args = _args(str(tmp_path), "Dockerfile.x")
    prepare_sources(args)
    assert (args.context, args.file, args.source_dir) == (tmp_path, Path("Dockerfile.x"), None)


def _escaping_tar() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        member = tarfile.TarInfo("link")
        member.type, member.linkname = tarfile.SYMTYPE, "/"
        archive.addfile(member)
        member = tarfile.TarInfo("../escaped")
        archive.addfile(member, io.BytesIO(b""))
    return out.getvalue()


@pytest.mark.parametrize(
    ("context", "file", "data", "message"),
    [
        ("-", "-", b"FROM x\n", "can't use stdin for both build context and dockerfile"),
        ("-", None, gzip.compress(b"x" * 600)[:40], "standard input"),
        ("-", None, _context_tar(_FILES)[:700], "standard input"),
        ("-", None, _escaping_tar(), "standard input"),
    ],
    ids=["stdin-twice", "broken-gzip", "truncated-tar", "escaping-tar"],
)
def test_bad_stdin_is_one_line_and_leaves_nothing(
    context: str,
    file: str | None,
    data: bytes,
    message: str,
    scratch_tmp: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _stdin(monkeypatch, data)
    with pytest.raises(LazybuildError, match=message) as caught:
        prepare_sources(_args(context, file))
    assert "\n" not in str(caught.value)
    assert list(scratch_tmp.iterdir()) == []
    assert not (tmp_path / "escaped").exists()


def test_git_contexts_follow_ref_and_subdir(scratch_tmp: Path, tmp_path: Path) -> None:
    make_repository(tmp_path / "repos")
    with git_daemon(tmp_path / "repos") as server:
        tagged = _args(f"{server}/r.git#v1:app")
        prepare_sources(tagged)
        names = sorted(p.name for p in tagged.context.iterdir())
        assert names == [".dockerignore", "Dockerfile", "build.log", "f.txt"]
        # No .dockerignore applies to a git context (BuildKit): an empty one says so.
        assert tagged.file.with_name("Dockerfile.dockerignore").read_bytes() == b""
        assert (tagged.context / "f.txt").read_text() == "v1\n"
        cleanup_sources(tagged)

        head = _args(f"{server}/r.git", None, "BUILDKIT_CONTEXT_KEEP_GIT_DIR=1")
        prepare_sources(head)
        assert (head.context / "app" / "f.txt").read_text() == "v2\n"
        assert (head.context / ".git").is_dir()
        cleanup_sources(head)

        named = _args(f"{server}/r.git#main", "app/Dockerfile")
        prepare_sources(named)
        assert named.file.read_text() == "FROM scratch\nCOPY . /src/\n"
        assert not (named.context / ".git").exists()  # as BuildKit: dropped unless kept
        cleanup_sources(named)

        for url, message in [
            (f"{server}/r.git#nope", "no branch, tag or commit 'nope'"),
            (f"{server}/r.git#main:../..", "is not a directory of the repository"),
            (f"{server}/r.git#main:app/f.txt", "is not a directory of the repository"),
            (f"{server}/missing.git", "git context"),
        ]:
            with pytest.raises(ContextSourceError, match=message) as caught:
                prepare_sources(_args(url))
            assert "\n" not in str(caught.value)
    with pytest.raises(ContextSourceError, match="git context"):
        prepare_sources(_args(f"{server}/r.git"))  # nothing listens there any more
    assert list(scratch_tmp.iterdir()) == []


def test_named_contexts_are_directories_or_images(tmp_path: Path) -> None:
    from lazybuild.context.sources import named_contexts

    assert named_contexts([f"src={tmp_path}", "base=docker-image://alpine:3"]) == {
        "src": str(tmp_path.resolve()),
        "base": "docker-image://alpine:3",
    }
    for item, message in [
        ("src", "expected NAME=VALUE"),
        ("=x", "expected NAME=VALUE"),
        ("src=", "expected NAME=VALUE"),
        (f"src={tmp_path / 'missing'}", "is not a directory"),
        ("base=docker-image://a b", "invalid image reference"),
        ("base=oci-layout:///some/layout:tag", "is not an OCI layout directory"),
        ("base=oci-layout://:tag", "no directory"),
        ("base=oci-layout:///x:a+b", "is not a tag"),
        ("base=oci-layout:///x@sha256:abc", "not a tag|digest"),
        ("src=https://host/repo.git", "https sources are not supported"),
    ]:
        with pytest.raises(UsageError, match=message) as caught:
            named_contexts([item])
        assert "\n" not in str(caught.value)
    with pytest.raises(UsageError, match="given twice"):
        named_contexts([f"a={tmp_path}", "a=docker-image://x"])


def test_an_oci_layout_context_is_buildxs_syntax(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lazybuild.context.sources import OciLayoutContext, named_contexts, parse_oci_layout

    digest = "sha256:" + "a" * 64
    assert parse_oci_layout("oci-layout:///l") == OciLayoutContext(Path("/l"))
    assert parse_oci_layout("oci-layout:///l:v1") == OciLayoutContext(Path("/l"), "v1")
    assert parse_oci_layout(f"oci-layout:///l:v1@{digest}") == OciLayoutContext(
        Path("/l"), "v1", digest
    )
    assert parse_oci_layout(f"oci-layout:///l@{digest}") == OciLayoutContext(
        Path("/l"), None, digest
    )
    # A colon in a directory name is not a tag.
    assert parse_oci_layout("oci-layout:///a:b/l") == OciLayoutContext(Path("/a:b/l"))
    layout = tmp_path / "layout"
    layout.mkdir()
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text('{"schemaVersion": 2, "manifests": []}')
    monkeypatch.chdir(tmp_path)
    assert named_contexts(
        ["base=oci-layout://layout:v1", f"pinned=oci-layout://layout@{digest}"]
    ) == {
        "base": f"oci-layout://{layout.resolve()}:v1",
        "pinned": f"oci-layout://{layout.resolve()}@{digest}",
    }


def test_a_git_context_is_bounded_while_git_writes_it(
    scratch_tmp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pack compresses: 8 MiB of zeros clone small and check out large.
    repo = tmp_path / "repos" / "big.git"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main", ".")
    (repo / "zeros.bin").write_bytes(bytes(8 << 20))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "big")
    monkeypatch.setattr(sources, "MAX_CONTEXT_BYTES", 1 << 20)
    with (
        git_daemon(tmp_path / "repos") as server,
        pytest.raises(ContextSourceError, match="holds more than 1048576 bytes") as caught,
    ):
        prepare_sources(_args(f"{server}/big.git"))
    assert "\n" not in str(caught.value)
    assert list(scratch_tmp.iterdir()) == []
