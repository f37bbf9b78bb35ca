"""``--load``: the docker tarball streamed into a Docker engine through its API.

The engine is the one the Docker SDK finds from the environment (``DOCKER_HOST``,
``DOCKER_TLS_VERIFY``, ``DOCKER_CERT_PATH``; else the local socket). The tarball is
never written to disk: one thread writes it into a pipe while another sends the pipe's
other end as the body of ``POST /images/load``. Whichever side fails first closes its
end, so the other one stops too (a broken pipe, or a truncated upload) instead of
waiting forever.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, BinaryIO

import trio

from lazybuild.errors import LazybuildError

if TYPE_CHECKING:
    from docker import DockerClient

__all__ = ["DockerLoadError", "load_into_docker"]

_PIECE = 1 << 20
# Loading a large image takes the engine a while before it answers; the SDK's default
# of 60 s between bytes would give up on it.
_ENGINE_TIMEOUT = 3600


class DockerLoadError(LazybuildError):
    """The Docker engine could not be reached or refused the image."""


def docker_from_env() -> DockerClient:
    import docker

    try:
        return docker.from_env(timeout=_ENGINE_TIMEOUT)
    except docker.errors.DockerException as error:
        raise DockerLoadError(f"cannot reach a Docker engine for --load: {error}") from None


async def load_into_docker(
    write_tar: Callable[[BinaryIO], None],
    client_factory: Callable[[], DockerClient] = docker_from_env,
) -> list[str]:
    """Stream what ``write_tar`` writes into the engine; the names (or image ids) it loaded."""
    read_fd, write_fd = os.pipe()
    reader = os.fdopen(read_fd, "rb", buffering=0)
    writer = os.fdopen(write_fd, "wb")
    errors: dict[str, BaseException] = {}
    loaded: list[str] = []

    def produce() -> None:
        try:
            with writer:
                write_tar(writer)
        except BaseException as error:
            errors["writer"] = error

    def consume() -> None:
        try:
            with reader:
                loaded.extend(_load(client_factory, reader))
        except BaseException as error:
            errors["loader"] = error

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, produce)
        nursery.start_soon(trio.to_thread.run_sync, consume)
    loader_error = errors.get("loader")
    writer_error = errors.get("writer")
    # The writer's broken pipe only says that the loader stopped reading.
    if writer_error is not None and not isinstance(writer_error, BrokenPipeError):
        raise writer_error
    if loader_error is not None:
        raise loader_error
    if writer_error is not None:
        raise DockerLoadError("the Docker engine stopped reading the image before its end")
    return loaded


def _load(client_factory: Callable[[], DockerClient], body: BinaryIO) -> list[str]:
    import docker

    def pieces() -> Iterator[bytes]:
        while piece := body.read(_PIECE):
            yield piece

    try:
        client = client_factory()
        try:
            # A generator body is sent chunked, so the tar never needs a length up front.
            images = client.images.load(pieces())  # type: ignore[arg-type]
            return [image.tags[0] if image.tags else str(image.id) for image in images]
        finally:
            client.close()
    except docker.errors.DockerException as error:
        raise DockerLoadError(f"docker load failed: {_one_line(error)}") from None
    except OSError as error:
        raise DockerLoadError(f"docker load failed: {error}") from None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())
