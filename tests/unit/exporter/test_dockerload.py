"""--load's streaming into the Docker engine, against a fake SDK client."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, BinaryIO, cast

import pytest
import trio

from lazybuild.errors import FormatError
from lazybuild.exporter.dockerload import DockerLoadError, load_into_docker

BIG = 8 << 20  # bigger than a pipe's buffer, so both threads must really stream


@dataclass
class FakeImage:
    tags: list[str]
    id: str = "sha256:feed"


@dataclass
class FakeImages:
    fail_after: int | None = None
    received: bytearray = field(default_factory=bytearray)

    def load(self, data: Iterable[bytes]) -> list[FakeImage]:
        import docker

        for piece in data:
            self.received += piece
            if self.fail_after is not None and len(self.received) >= self.fail_after:
                raise docker.errors.APIError("500 Server Error: invalid tar header")
        return [FakeImage(["app:dev"])]


@dataclass
class FakeClient:
    images: FakeImages
    closed: bool = False

    def close(self) -> None:
        self.closed = True


def _tar(out: BinaryIO) -> None:
    with tarfile.open(fileobj=out, mode="w|") as tar:
        member = tarfile.TarInfo("big")
        member.size = BIG
        tar.addfile(member, io.BytesIO(b"x" * BIG))


def _load(client: FakeClient, write: Any = _tar) -> list[str]:
    async def main() -> list[str]:
        return await load_into_docker(write, lambda: cast(Any, client))

    return trio.run(main)


def test_the_tar_is_streamed_whole_and_the_client_closed() -> None:
    client = FakeClient(FakeImages())
    assert _load(client) == ["app:dev"]
    expected = io.BytesIO()
    _tar(expected)
    assert bytes(client.images.received) == expected.getvalue()
    assert client.closed


def test_an_engine_error_stops_the_writer_and_is_one_line() -> None:
    client = FakeClient(FakeImages(fail_after=1 << 20))
    with pytest.raises(DockerLoadError, match="docker load failed: 500 Server Error") as caught:
        _load(client)
    assert "\n" not in str(caught.value)


def test_a_writer_error_wins_over_the_truncated_upload() -> None:
    def broken(out: BinaryIO) -> None:
        out.write(b"x" * 100_000)
        raise FormatError("blob is corrupt")

    with pytest.raises(FormatError, match="blob is corrupt"):
        _load(FakeClient(FakeImages()), broken)


def test_no_engine_is_a_clear_error() -> None:
    def unreachable() -> Any:
        raise DockerLoadError("cannot reach a Docker engine for --load: boom")

    async def main() -> list[str]:
        return await load_into_docker(_tar, unreachable)

    with pytest.raises(DockerLoadError, match="cannot reach a Docker engine"):
        trio.run(main)
