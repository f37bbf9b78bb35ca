"""Where ``lazybuild build``'s context and Dockerfile come from, as ``docker build`` and
``docker buildx build`` take them: a directory; ``-`` (standard input holding either a
Dockerfile, then there is no context, or a tar, plain or gzip/bzip2/xz/zstd, which is
the context); a git URL (``https://host/repo.git#ref:subdir``, ``git@host:repo``,
``git://``, ``ssh://``, ``github.com/owner/repo``), cloned with the system's git; and
``-f -``, the Dockerfile from standard input.

Whatever is not a directory already is materialised here, in the client, into a private
temporary directory, and from then on the build (local, or through a daemon) sees an
ordinary context directory and Dockerfile. Everything read is bounded and extracted by
:mod:`lazybuild.untar` (nothing lands outside the temporary directory); failures are one
line, and the temporary directory goes with them.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, cast

from lazybuild.errors import LazybuildError, UsageError

__all__ = [
    "STDIN",
    "ContextSourceError",
    "GitRef",
    "OciLayoutContext",
    "cleanup_sources",
    "is_git_url",
    "named_contexts",
    "parse_git_ref",
    "parse_oci_layout",
    "prepare_sources",
]

STDIN = "-"
# What standard input or a git checkout may hold, unpacked: well above any sane context,
# well below filling the disk of the machine the client runs on.
MAX_CONTEXT_BYTES = int(os.environ.get("LAZYBUILD_MAX_CONTEXT_BYTES", str(8 << 30)))
_GIT_TIMEOUT_SECONDS = 600.0
# How often a running git's output directory is measured against the bound.
_GIT_POLL_SECONDS = 0.25

_GZIP_MAGIC = b"\x1f\x8b"
_BZIP2_MAGIC = b"BZh"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class ContextSourceError(LazybuildError):
    """A context or Dockerfile that could not be read from where it was said to be."""


@dataclass(frozen=True)
class GitRef:
    """``remote#ref:subdir`` as BuildKit splits it."""

    remote: str
    ref: str = ""
    subdir: str = ""


# moby's urlutil.IsGitURL, which buildx and BuildKit's Dockerfile frontend follow: an
# http(s) URL whose path ends in .git (a #fragment allowed), or one of these prefixes.
_GIT_PREFIXES = ("git://", "git@", "ssh://", "github.com/")
_GIT_HTTP = re.compile(r"^https?://[^#]*\.git(?:#.*)?$")


def is_git_url(text: str) -> bool:
    return text.startswith(_GIT_PREFIXES) or bool(_GIT_HTTP.match(text))


def parse_git_ref(text: str) -> GitRef:
    remote, _, fragment = text.partition("#")
    ref, _, subdir = fragment.partition(":")
    if remote.startswith("github.com/"):
        remote = f"https://{remote}"
    if remote.startswith("-") or ref.startswith("-"):
        raise UsageError(f"git context {text!r}: a remote or ref cannot start with '-'")
    return GitRef(remote, ref, subdir.strip("/"))


def prepare_sources(args: argparse.Namespace) -> None:
    """Turn ``args.context`` (as given) and ``args.file`` into a context directory and a
    Dockerfile path, materialising stdin and git sources into a temporary directory
    (``args.source_dir``, removed by :func:`cleanup_sources`). Done once per command."""
    if getattr(args, "sources_prepared", False):
        return
    context = str(args.context)
    file = None if args.file is None else str(args.file)
    if context == STDIN and file == STDIN:
        # docker build's words.
        raise UsageError("invalid argument: can't use stdin for both build context and dockerfile")
    args.source_dir = None
    if STDIN not in (context, file) and not is_git_url(context):
        args.context, args.sources_prepared = Path(context), True
        return
    scratch = Path(tempfile.mkdtemp(prefix="lazybuild-context-"))
    try:
        if context == STDIN:
            args.context, args.file = _from_stdin(scratch, file)
        elif is_git_url(context) and not Path(context).is_dir():
            args.context = _clone(context, scratch, keep_git_dir=_keep_git_dir(args.build_arg))
            if file is None:
                args.file = _dockerfile_apart(scratch, args.context / "Dockerfile")
            elif file != STDIN and not Path(file).is_file():
                # buildx: -f names a file of the repository
                args.file = _dockerfile_apart(scratch, args.context / file)
        else:
            args.context = Path(context)
        if file == STDIN:
            args.file = _dockerfile_from_stdin(scratch)
            if is_git_url(context) and not Path(context).is_dir():
                # As for a git context's own Dockerfile (see _dockerfile_apart).
                args.file.with_name(f"{args.file.name}.dockerignore").write_bytes(b"")
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    args.source_dir = scratch
    args.sources_prepared = True


def cleanup_sources(args: argparse.Namespace) -> None:
    scratch = getattr(args, "source_dir", None)
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
        args.source_dir = None


def _keep_git_dir(build_args: list[str]) -> bool:
    # BuildKit's build arg for keeping .git in a git context (dropped by default).
    for item in build_args:
        key, _, value = item.partition("=")
        if key == "BUILDKIT_CONTEXT_KEEP_GIT_DIR":
            return value.lower() in {"1", "true", "t"}
    return False


# -- --build-context --------------------------------------------------------------------

IMAGE_SCHEME = "docker-image://"
OCI_LAYOUT_SCHEME = "oci-layout://"


@dataclass(frozen=True)
class OciLayoutContext:
    """``oci-layout://DIR[:TAG][@DIGEST]``: an image of an OCI layout directory."""

    directory: Path
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        tag = f":{self.tag}" if self.tag else ""
        digest = f"@{self.digest}" if self.digest else ""
        return f"{OCI_LAYOUT_SCHEME}{self.directory}{tag}{digest}"


def parse_oci_layout(value: str) -> OciLayoutContext:
    """buildx's ``oci-layout://`` value: the directory, then ``:TAG`` (the name after the
    last ``:`` that holds no ``/``), then ``@sha256:...``; ``UsageError`` when malformed."""
    from lazybuild.errors import FormatError
    from lazybuild.oci.digest import validate_digest

    rest = value.removeprefix(OCI_LAYOUT_SCHEME)
    digest: str | None = None
    head, at, tail = rest.rpartition("@")
    if at and tail.startswith("sha256:"):
        try:
            digest = validate_digest(tail)
        except FormatError as error:
            raise UsageError(f"{value}: {error}") from None
        rest = head
    tag: str | None = None
    head, colon, tail = rest.rpartition(":")
    if colon and "/" not in tail:
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", tail):
            raise UsageError(f"{value}: {tail!r} is not a tag")
        rest, tag = head, tail
    if not rest:
        raise UsageError(f"{value}: no directory (oci-layout://DIR[:TAG][@sha256:...])")
    return OciLayoutContext(Path(rest).expanduser(), tag, digest)


def named_contexts(items: list[str]) -> dict[str, str]:
    """``--build-context NAME=VALUE`` values: a directory (made absolute),
    ``docker-image://REF`` or ``oci-layout://DIR[:TAG][@DIGEST]`` (its directory made
    absolute), by name; ``UsageError`` (one line) for anything else."""
    from lazybuild.errors import InvalidReferenceError
    from lazybuild.registry.reference import Reference

    found: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name or not value:
            raise UsageError(f"--build-context {item!r}: expected NAME=VALUE")
        if name in found:
            raise UsageError(f"--build-context {name}= is given twice")
        if value.startswith(IMAGE_SCHEME):
            ref = value.removeprefix(IMAGE_SCHEME)
            try:
                Reference.parse(ref)
            except InvalidReferenceError as error:
                raise UsageError(f"--build-context {name}: {error}") from None
            found[name] = value
            continue
        if value.startswith(OCI_LAYOUT_SCHEME):
            try:
                layout = parse_oci_layout(value)
            except UsageError as error:
                raise UsageError(f"--build-context {name}: {error}") from None
            if not (layout.directory / "index.json").is_file():
                raise UsageError(
                    f"--build-context {name}: {layout.directory} is not an OCI layout "
                    "directory (no index.json)"
                )
            found[name] = str(replace(layout, directory=layout.directory.resolve()))
            continue
        if "://" in value or is_git_url(value):
            scheme = value.split("://", 1)[0] if "://" in value else "git"
            raise UsageError(
                f"--build-context {name}: {scheme} sources are not supported (a directory, "
                "docker-image://REF or oci-layout://DIR)"
            )
        directory = Path(value).expanduser()
        if not directory.is_dir():
            raise UsageError(f"--build-context {name}: {value} is not a directory")
        found[name] = str(directory.resolve())
    return found


# -- standard input ----------------------------------------------------------------------


def _read_stdin_to(path: Path) -> bytes:
    """Standard input copied to ``path`` (bounded); its first bytes."""
    stdin = sys.stdin.buffer
    total, head = 0, b""
    with path.open("xb") as out:
        while chunk := stdin.read(1 << 20):
            total += len(chunk)
            if total > MAX_CONTEXT_BYTES:
                raise ContextSourceError(
                    f"standard input holds more than {MAX_CONTEXT_BYTES} bytes "
                    "(LAZYBUILD_MAX_CONTEXT_BYTES)"
                )
            if len(head) < 512:
                head += chunk[: 512 - len(head)]
            out.write(chunk)
    return head


def _dockerfile_from_stdin(scratch: Path) -> Path:
    # Named Dockerfile so that messages say Dockerfile:LINE as for one on disk; in a
    # directory of its own, so that no <name>.dockerignore is found beside it.
    directory = scratch / "dockerfile"
    directory.mkdir()
    dockerfile = directory / "Dockerfile"
    _read_stdin_to(dockerfile)
    return dockerfile


def _from_stdin(scratch: Path, file: str | None) -> tuple[Path, Path]:
    """``build -``: a tar on stdin is the context (``-f`` names its Dockerfile); anything
    else is the Dockerfile, with an empty context (as buildx: the legacy builder puts it
    in the context as its only file)."""
    received = scratch / "stdin"
    head = _read_stdin_to(received)
    context = scratch / "context"
    context.mkdir()
    if not _is_archive(head):
        dockerfile_dir = scratch / "dockerfile"
        dockerfile_dir.mkdir()
        dockerfile = dockerfile_dir / "Dockerfile"
        received.rename(dockerfile)
        return context, dockerfile
    _extract(received, context)
    received.unlink()
    relative = file or "Dockerfile"
    return context, _dockerfile_apart(scratch, context / relative)


def _dockerfile_apart(scratch: Path, dockerfile: Path) -> Path:
    """A tar or git context's Dockerfile, copied out beside an empty ignore file: BuildKit
    applies no .dockerignore to a context it did not read from the client's disk (nor
    does the legacy builder to a tar), and the Dockerfile-specific ignore file, which
    wins over the context's own, says so without touching the context."""
    if not dockerfile.is_file():
        return dockerfile  # the build says it is missing, naming it
    directory = scratch / "dockerfile"
    directory.mkdir()
    apart = directory / dockerfile.name
    shutil.copyfile(dockerfile, apart)
    apart.with_name(f"{apart.name}.dockerignore").write_bytes(b"")
    return apart


def _is_archive(head: bytes) -> bool:
    """moby's archive.IsArchive: a compression magic, or a tar header with a good checksum."""
    if head.startswith((_GZIP_MAGIC, _BZIP2_MAGIC, _XZ_MAGIC, _ZSTD_MAGIC)):
        return True
    from lazybuild.errors import FormatError
    from lazybuild.untar.tarheader import parse_header

    if len(head) < 512:
        return False
    try:
        parse_header(head[:512])
    except FormatError:  # not a header: a Dockerfile
        return False
    return True


class _Bounded:
    """A reader that fails once more than ``limit`` bytes came through (a small archive
    that unpacks to fill the disk)."""

    def __init__(self, stream: BinaryIO, limit: int) -> None:
        self._stream, self._left = stream, limit

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._left -= len(data)
        if self._left < 0:
            raise ContextSourceError(
                f"the context on standard input unpacks to more than {MAX_CONTEXT_BYTES} "
                "bytes (LAZYBUILD_MAX_CONTEXT_BYTES)"
            )
        return data


def _extract(archive: Path, dest: Path) -> None:
    from lazybuild.errors import FormatError
    from lazybuild.untar.compression import decompressed
    from lazybuild.untar.extract import DamagedArchiveError, archive_policy, extract

    with archive.open("rb") as raw, decompressed(raw) as stream:
        bounded = cast(BinaryIO, _Bounded(stream, MAX_CONTEXT_BYTES))
        try:
            extract(bounded, dest, archive_policy(None), "the context on standard input")
        except DamagedArchiveError as error:
            raise ContextSourceError(
                f"the context on standard input is not a readable archive: {error.reason}"
            ) from None
        except FormatError as error:
            raise ContextSourceError(str(error)) from None


# -- git ---------------------------------------------------------------------------------

# No prompts, no helpers from the user's configuration that run programs, no ext:: or
# file transports smuggled in through a redirect or a submodule.
_GIT_CONFIG = (
    "-c",
    "protocol.ext.allow=never",
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "core.fsmonitor=false",
    "-c",
    "advice.detachedHead=false",
)


def _git_environment() -> Mapping[str, str]:
    env = dict(os.environ)
    env.update(GIT_TERMINAL_PROMPT="0", GIT_CONFIG_NOSYSTEM="1", LC_ALL="C")
    env.pop("GIT_DIR", None)
    env.pop("GIT_WORK_TREE", None)
    return env


def _git(
    args: list[str], where: str, cwd: Path | None = None, *, bounded: Path | None = None
) -> str:
    """Runs git; with ``bounded``, a directory git writes into, that directory is kept
    under ``MAX_CONTEXT_BYTES`` while git runs (a repository's packs are compressed: a
    small clone may check out to any size), git stopped as soon as it is over."""
    git = shutil.which("git")
    if git is None:
        raise ContextSourceError(f"{where}: git is not installed")
    deadline = time.monotonic() + _GIT_TIMEOUT_SECONDS
    with subprocess.Popen(
        [git, *_GIT_CONFIG, *args],
        cwd=cwd,
        env=_git_environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        while True:
            try:
                stdout, stderr = process.communicate(timeout=_GIT_POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                problem = None
                if time.monotonic() > deadline:
                    problem = f"{where}: git took over {_GIT_TIMEOUT_SECONDS:.0f} s"
                elif bounded is not None and _tree_bytes(bounded) > MAX_CONTEXT_BYTES:
                    problem = _too_big(where)
                if problem is not None:
                    process.kill()
                    process.communicate()
                    raise ContextSourceError(problem) from None
    if process.returncode != 0:
        lines = stderr.decode(errors="replace").strip().splitlines()
        reason = lines[-1] if lines else f"git exited with {process.returncode}"
        raise ContextSourceError(f"{where}: {reason.removeprefix('fatal: ')}")
    if bounded is not None and _tree_bytes(bounded) > MAX_CONTEXT_BYTES:
        raise ContextSourceError(_too_big(where))
    return stdout.decode(errors="replace").strip()


def _too_big(where: str) -> str:
    return (
        f"{where}: the checkout holds more than {MAX_CONTEXT_BYTES} bytes "
        "(LAZYBUILD_MAX_CONTEXT_BYTES)"
    )


def _clone(url: str, scratch: Path, *, keep_git_dir: bool) -> Path:
    ref = parse_git_ref(url)
    where = f"git context {ref.remote}"
    checkout = scratch / "git"
    _git(
        ["clone", "--quiet", "--no-checkout", "--", ref.remote, str(checkout)],
        where,
        bounded=scratch,
    )
    if ref.ref:
        commit = _resolve(checkout, ref.ref, where)
    else:
        commit = _git(["rev-parse", "--verify", "--quiet", "HEAD^{commit}"], where, checkout)
    _git(["checkout", "--quiet", "--detach", commit], where, checkout, bounded=checkout)
    if not keep_git_dir:
        shutil.rmtree(checkout / ".git")
    if not ref.subdir:
        return checkout
    # The subdirectory must be a directory of the checkout itself, not reached through
    # a symlink pointing elsewhere.
    root = checkout.resolve()
    context = (checkout / ref.subdir).resolve()
    if not context.is_relative_to(root) or not context.is_dir():
        raise ContextSourceError(f"{where}: {ref.subdir!r} is not a directory of the repository")
    return context


def _resolve(checkout: Path, ref: str, where: str) -> str:
    """A branch, a tag, a full ref or a commit, as BuildKit's git source takes them."""
    for candidate in (f"refs/remotes/origin/{ref}", f"refs/tags/{ref}", ref):
        try:
            return _git(
                ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{candidate}^{{commit}}"],
                where,
                checkout,
            )
        except ContextSourceError:
            continue
    if ref.startswith("refs/"):
        # refs/pull/N/head and the like are not cloned: fetched by name.
        _git(["fetch", "--quiet", "origin", "--", ref], where, checkout, bounded=checkout)
        return _git(["rev-parse", "--verify", "--quiet", "FETCH_HEAD^{commit}"], where, checkout)
    raise ContextSourceError(f"{where}: no branch, tag or commit {ref!r}")


def _tree_bytes(root: Path) -> int:
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(directory, name)).st_size
            except OSError:
                continue
    return total
