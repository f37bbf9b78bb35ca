"""A build's context from standard input or git, its Dockerfile from standard input, its
result as one tar (``type=tar``, ``-o -``): the same through a daemon as without one,
and bad input one line with nothing left behind. FROM scratch builds: no base image,
no container, so each build takes a second or two."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_daemon_build import Daemons
from tests.support.gitserve import git_daemon, make_repository
from tests.support.registry import Registry
from tests.support.trees import directory_tree, tar_tree

pytestmark = [pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = b"FROM scratch\nCOPY . /ctx/\n"


def _lazybuild(
    state: Path, tmp: Path, *args: str, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    tmp.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "lazybuild", "--state-dir", str(state), "build", *args],
        cwd=REPO,
        input=stdin,
        capture_output=True,
        timeout=300,
        check=False,
        env={**os.environ, "TMPDIR": str(tmp)},
    )


def _contents(tar: bytes) -> dict[str, bytes | None]:
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        return {
            member.name: archive.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
            for member in archive
        }


@pytest.fixture(scope="module")
def daemon_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    daemons = Daemons(tmp_path_factory.mktemp("daemon"))
    try:
        daemons.start()
        yield daemons.address
    finally:
        daemons.stop_all()


def test_git_and_stdin_sources_build_alike_with_and_without_a_daemon(
    tmp_path: Path, daemon_address: str
) -> None:
    make_repository(tmp_path / "repos")
    tmp = tmp_path / "tmp"
    with git_daemon(tmp_path / "repos") as server:
        url = f"{server}/r.git#v1:app"
        # -f - and a git context with #ref:subdir, the tar on stdout: progress must
        # stay off stdout for the tar to be whole.
        local = _lazybuild(tmp_path / "state", tmp, "--progress=plain", "-f", "-", url,
                           "-o", "-", stdin=DOCKERFILE)  # fmt: skip
        assert local.returncode == 0, local.stderr.decode()
        remote = _lazybuild(tmp_path / "state", tmp, "--builder", daemon_address,
                            "--progress=plain", "-f", "-", url, "-o", "-",
                            stdin=DOCKERFILE)  # fmt: skip
        assert remote.returncode == 0, remote.stderr.decode()
    expected = {
        "ctx": None,
        "ctx/Dockerfile": b"FROM scratch\nCOPY . /src/\n",
        "ctx/f.txt": b"v1\n",
        "ctx/.dockerignore": b"*.log\n",
        "ctx/build.log": b"log\n",
    }  # fmt: skip (no .dockerignore for git, as BuildKit)
    assert _contents(local.stdout) == expected
    assert _contents(remote.stdout) == expected

    # A gzip tarball on stdin is the context; type=tar and type=local of one build
    # hold the same tree, through the daemon as well.
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as archive:
        for name, data in {"Dockerfile": DOCKERFILE, "dir/a.txt": b"a\n"}.items():
            member = tarfile.TarInfo(name)
            member.size, member.mtime, member.mode = len(data), 1_600_000_000, 0o640
            archive.addfile(member, io.BytesIO(data))
    for builder in ([], ["--builder", daemon_address]):
        out = tmp_path / f"out{len(builder)}"
        done = _lazybuild(tmp_path / "state", tmp, *builder, "-", "-o",
                          f"type=tar,dest={out}.tar", "-o", f"type=local,dest={out}",
                          stdin=gzip.compress(context.getvalue()))  # fmt: skip
        assert done.returncode == 0, done.stderr.decode()
        with (out.with_suffix(".tar")).open("rb") as tar:
            assert tar_tree(tar) == directory_tree(out)
        assert (out / "ctx" / "dir" / "a.txt").read_bytes() == b"a\n"
    assert list(tmp.iterdir()) == []  # the materialised contexts are gone


def test_named_contexts_replace_images_and_stages(
    tmp_path: Path, daemon_address: str, registry: Registry
) -> None:
    """buildx's --build-context: FROM NAME takes a docker-image:// context, COPY
    --from=NAME a directory (its own .dockerignore applied), even where a stage has
    that name."""
    image = f"{registry.host}/named-context/base:1"
    base = tmp_path / "base"
    base.mkdir()
    (base / "Dockerfile").write_bytes(b"FROM scratch\nCOPY img.txt /\n")
    (base / "img.txt").write_bytes(b"from the image\n")
    pushed = _lazybuild(tmp_path / "state", tmp_path / "tmp", "-q", "--push", "-t", image,
                        "--no-optimize", str(base))  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr.decode()
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "a.txt").write_bytes(b"a\n")
    (extra / "skip.log").write_bytes(b"ignored\n")
    (extra / ".dockerignore").write_bytes(b"*.log\n")
    dockerfile = b"FROM scratch AS extra\nCOPY missing /\nFROM base\nCOPY --from=extra . /extra/\n"
    for builder in ([], ["--builder", daemon_address]):
        done = _lazybuild(tmp_path / "state", tmp_path / "tmp", *builder, "-f", "-",
                          "--build-context", f"base=docker-image://{image}",
                          "--build-context", f"extra={extra}", str(base), "-o", "-",
                          stdin=dockerfile)  # fmt: skip
        assert done.returncode == 0, done.stderr.decode()
        assert _contents(done.stdout) == {
            "img.txt": b"from the image\n",
            "extra": None,
            "extra/.dockerignore": b"*.log\n",
            "extra/a.txt": b"a\n",
        }


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["-"], gzip.compress(b"not a tar" * 100)[:50], "the context on standard input"),
        (["git://127.0.0.1:1/nothing.git"], b"", "git context git://127.0.0.1:1/nothing.git"),
        (["-f", "-", "-"], b"FROM scratch\n", "can't use stdin for both"),
        (["-o", "type=tar,dest=x,name=y", "."], b"", "type=tar has no option 'name'"),
        (["--build-context", "extra", "."], b"", "--build-context 'extra': expected NAME=VALUE"),
        (["--build-context", "x=/nonexistent", "."], b"", "/nonexistent is not a directory"),
    ],
    ids=[
        "broken-tarball",
        "unreachable-git",
        "stdin-twice",
        "bad-tar-output",
        "not-name-value",
        "missing-dir",
    ],
)
def test_bad_sources_are_one_line_and_leave_nothing(
    args: list[str], stdin: bytes, message: str, tmp_path: Path
) -> None:
    done = _lazybuild(tmp_path / "state", tmp_path / "tmp", *args, stdin=stdin)
    lines = done.stderr.decode().splitlines()
    assert done.returncode == 1
    assert len(lines) == 1 and lines[0].startswith("lazybuild: error: "), lines
    assert message in lines[0]
    assert list((tmp_path / "tmp").iterdir()) == []
