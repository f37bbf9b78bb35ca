"""A build's inputs as the daemon receives them: the header, then the context tar,
written to the build's private directory with bounds, and unpacked there with the one
tar extractor (``untar``, its archive policy: every entry root-owned, symlinks resolved
inside the root, nothing outside it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lazybuild.api.control.v1 import control_pb2
from lazybuild.errors import UsageError

CONTEXT_TAR = "context.tar"


class BuildRequestError(UsageError):
    """A Build call whose messages are not a header and a context within bounds."""


@dataclass(frozen=True)
class ReceivedBuild:
    header: control_pb2.BuildHeader
    context_dir: Path
    dockerfile: Path


def receive(
    requests: Iterator[control_pb2.BuildRequest], workdir: Path, max_context_bytes: int
) -> ReceivedBuild:
    """Reads the call's messages (blocking) into ``workdir``: the context unpacked in
    ``workdir/context``, the Dockerfile (and the ignore file the client applied) in
    ``workdir/dockerfile``."""
    first = next(requests, None)
    if first is None or first.WhichOneof("part") != "header":
        raise BuildRequestError("a build starts with its header")
    header = first.header
    name = header.dockerfile_name or "Dockerfile"
    if "/" in name or name in (".", "..") or "\0" in name:
        raise BuildRequestError(f"dockerfile name {name!r} is not a file name")
    received = 0
    tar_path = workdir / CONTEXT_TAR
    with tar_path.open("wb") as tar:
        for request in requests:
            if request.WhichOneof("part") != "context_chunk":
                raise BuildRequestError("a build sends one header, then its context")
            received += len(request.context_chunk)
            if received > max_context_bytes:
                raise BuildRequestError(
                    f"the build context is larger than the daemon takes ({max_context_bytes} "
                    "bytes; max_context_size in its configuration)"
                )
            tar.write(request.context_chunk)
    context_dir = workdir / "context"
    context_dir.mkdir()
    if received:
        _unpack(tar_path, context_dir)
    with contextlib.suppress(FileNotFoundError):
        tar_path.unlink()
    dockerfile_dir = workdir / "dockerfile"
    dockerfile_dir.mkdir()
    dockerfile = dockerfile_dir / name
    dockerfile.write_bytes(header.dockerfile)
    if header.HasField("dockerignore"):
        # Beside the Dockerfile, where it wins over the context's own (as it did for
        # the client, whichever file it came from).
        dockerfile.with_name(f"{name}.dockerignore").write_bytes(header.dockerignore)
    return ReceivedBuild(header, context_dir, dockerfile)


def _unpack(tar_path: Path, dest: Path) -> None:
    from lazybuild.untar.extract import archive_policy, extract

    with tar_path.open("rb") as stream:
        extract(stream, dest, archive_policy((0, 0)), "the build context")
