"""Contexts from standard input and git, and -f -, against dockerd's legacy builder
(``DOCKER_BUILDKIT=0 docker build``), which takes them the same way: the files a
``COPY . /ctx/`` of the context makes must agree (names, content, modes, mtimes).

Deliberate differences, checked as such, where lazybuild follows buildx/BuildKit: a
Dockerfile on stdin (``build - < Dockerfile``) is the legacy builder's only context
file, BuildKit's context is then empty; and the docker CLI applies a git context's
``.dockerignore``, which BuildKit does not."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.support.dockerd import DOCKER_CLI, Dockerd
from tests.support.gitserve import git_daemon, make_repository

pytestmark = [pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = b"FROM scratch\nCOPY . /ctx/\n"
EPOCH = 1_600_000_000

Facts = tuple[str, int, bytes | None, int]  # kind, mode, content, mtime


def _facts(tar: bytes, *, mtimes: bool, under: str = "ctx") -> dict[str, Facts]:
    """The entries under ``under`` (the rest is the runtime's, in an export)."""
    found: dict[str, Facts] = {}
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        for member in archive:
            name = member.name.removeprefix("./").rstrip("/")
            if name != under and not name.startswith(f"{under}/"):
                continue
            data = archive.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
            kind = "dir" if member.isdir() else "file" if member.isfile() else "other"
            # /ctx itself is made by the COPY, at build time; docker export writes the
            # type bits into the mode field too.
            mtime = int(member.mtime) if mtimes and name != under else 0
            found[name] = (kind, member.mode & 0o7777, data, mtime)
    return found


def _docker(dockerd: Dockerd, tag: str, args: list[str], stdin: bytes) -> bytes:
    env = {**dockerd.env(), "DOCKER_BUILDKIT": "0"}
    subprocess.run(
        [DOCKER_CLI, "build", "-q", "-t", tag, *args], input=stdin, env=env, check=True,
        capture_output=True, timeout=300,
    )  # fmt: skip
    container = dockerd.docker("create", tag, "/placeholder").stdout.strip()
    try:
        return subprocess.run(
            [DOCKER_CLI, "export", container], env=env, check=True, capture_output=True
        ).stdout
    finally:
        dockerd.docker("rm", container)


def _lazybuild(state: Path, args: list[str], stdin: bytes) -> bytes:
    done = subprocess.run(
        [sys.executable, "-m", "lazybuild", "--state-dir", str(state), "build", "-q",
         "--no-optimize", *args, "-o", "-"],
        input=stdin, cwd=REPO, capture_output=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def _context(root: Path) -> Path:
    context = root / "context"
    (context / "sub").mkdir(parents=True)
    (context / "Dockerfile").write_bytes(DOCKERFILE)
    (context / "sub" / "a.txt").write_bytes(b"a\n")
    (context / "run.sh").write_bytes(b"#!/bin/sh\n")
    (context / "run.sh").chmod(0o755)
    (context / ".dockerignore").write_bytes(b"*.log\n")
    (context / "skip.log").write_bytes(b"ignored\n")
    for path in [*context.rglob("*"), context]:
        os.utime(path, (EPOCH, EPOCH))
    return context


def test_stdin_and_git_contexts_as_dockerd_takes_them(dockerd: Dockerd, tmp_path: Path) -> None:
    state = tmp_path / "state"
    context = _context(tmp_path)
    tarball = io.BytesIO()
    with tarfile.open(fileobj=tarball, mode="w") as archive:
        archive.add(context, arcname=".")
    cases: dict[str, tuple[list[str], bytes, bool]] = {
        "tarball": (["-"], gzip.compress(tarball.getvalue()), True),
        "dockerfile-from-stdin": (["-f", "-", str(context)], DOCKERFILE, True),
    }
    for name, (args, stdin, mtimes) in cases.items():
        docker = _facts(_docker(dockerd, f"lazybuild-sources/{name}", args, stdin), mtimes=mtimes)
        lazy = _facts(_lazybuild(state, args, stdin), mtimes=mtimes)
        if name == "dockerfile-from-stdin":
            # The docker CLI sends the stdin Dockerfile as a random name in the context
            # and appends that name to the context's .dockerignore: its quirk, not the
            # builder's (buildx sends the Dockerfile apart).
            kind, mode, data, mtime = docker["ctx/.dockerignore"]
            kept = [
                line for line in (data or b"").split(b"\n") if not line.startswith(b".dockerfile.")
            ]
            docker["ctx/.dockerignore"] = (
                kind,
                mode,
                b"\n".join(kept).rstrip(b"\n") + b"\n",
                mtime,
            )
        assert lazy == docker, name
        # A tar context has no .dockerignore applied, by either (nor by BuildKit).
        assert ("ctx/skip.log" in lazy) is (name == "tarball") and "ctx/sub/a.txt" in lazy

    make_repository(tmp_path / "repos")
    with git_daemon(tmp_path / "repos") as server:
        url = f"{server}/r.git#v1:app"
        # A fresh checkout's mtimes are the clone's: not comparable. The repository's
        # app/Dockerfile copies its context to /src.
        exported = _docker(dockerd, "lazybuild-sources/git", [url], b"")
        docker = _facts(exported, mtimes=False, under="src")
        lazy = _facts(_lazybuild(state, [url], b""), mtimes=False, under="src")
    # .git dropped by both. The docker CLI clones and sends the checkout as a local
    # directory, .dockerignore applied; BuildKit applies none to a git context.
    assert lazy.pop("src/build.log")[2] == b"log\n"
    assert docker == lazy
    assert lazy["src/f.txt"][2] == b"v1\n" and "src/new.txt" not in lazy

    # A Dockerfile on stdin: the legacy builder's context holds it, buildx's is empty.
    docker = _facts(_docker(dockerd, "lazybuild-sources/df", ["-"], DOCKERFILE), mtimes=False)
    assert set(docker) == {"ctx", "ctx/Dockerfile"}
    lazy = _facts(_lazybuild(state, ["-"], DOCKERFILE), mtimes=False)
    assert set(lazy) == {"ctx"}
