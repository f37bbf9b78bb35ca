"""The client side of the daemon's API, for ``--builder ADDR`` (or ``$LAZYBUILD_HOST``).

A unix address is reached as it is (the socket's mode and group decide who may); a TCP
address only with mutual TLS: the CA, client certificate and key are ``ca.pem``,
``cert.pem`` and ``key.pem`` in ``$LAZYBUILD_CERT_PATH`` (as ``$DOCKER_CERT_PATH``
holds them for docker). Every failure of a call is one ``BuilderError`` line.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from lazybuild.errors import LazybuildError

if TYPE_CHECKING:
    import grpc

    from lazybuild.api.control.v1.control_pb2_grpc import ControlStub
    from lazybuild.cli.cache_commands import PruneEntry, UsageEntry

HOST_ENV = "LAZYBUILD_HOST"
CERT_PATH_ENV = "LAZYBUILD_CERT_PATH"

_T = TypeVar("_T")


class BuilderError(LazybuildError):
    """The daemon could not be reached, or refused or failed a call."""


def add_builder_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--builder",
        default=os.environ.get(HOST_ENV) or None,
        metavar="ADDR",
        help="a lazybuild daemon to do it (unix:///PATH or tcp://HOST:PORT; default: "
        f"${HOST_ENV}, else this process does it itself)",
    )


def _address(text: str) -> str:
    from lazybuild.daemon.address import parse_address

    try:
        return parse_address(text)
    except ValueError as error:
        raise BuilderError(f"--builder: {error}") from None


def open_channel(address: str) -> grpc.Channel:
    """A channel to the daemon at ``address`` (``unix://`` or ``tcp://`` with mutual TLS)."""
    import grpc

    from lazybuild.daemon.address import Address

    parsed = Address(_address(address))
    if parsed.is_unix:
        return grpc.insecure_channel(parsed.grpc_target)
    cert_dir = os.environ.get(CERT_PATH_ENV)
    if not cert_dir:
        raise BuilderError(
            f"{address}: a TCP builder needs a client certificate: set {CERT_PATH_ENV} to a "
            "directory holding ca.pem, cert.pem and key.pem"
        )
    try:
        ca, cert, key = (
            (Path(cert_dir) / name).read_bytes() for name in ("ca.pem", "cert.pem", "key.pem")
        )
    except OSError as error:
        raise BuilderError(f"{CERT_PATH_ENV}: {error.strerror}: {error.filename}") from None
    credentials = grpc.ssl_channel_credentials(ca, key, cert)
    return grpc.secure_channel(parsed.grpc_target, credentials)


@contextmanager
def control_stub(address: str) -> Iterator[ControlStub]:
    from lazybuild.api.control.v1.control_pb2_grpc import ControlStub

    with open_channel(address) as channel:
        yield ControlStub(channel)


def call(address: str, rpc: Callable[[ControlStub], _T]) -> _T:
    """``rpc`` on a stub of the daemon at ``address``; a failed call as one line."""
    import grpc

    with control_stub(address) as stub:
        try:
            return rpc(stub)
        except grpc.RpcError as error:
            raise BuilderError(describe_rpc_error(address, error)) from None


def describe_rpc_error(address: str, error: grpc.RpcError) -> str:
    import grpc

    code = error.code() if isinstance(error, grpc.Call) else None
    details = (error.details() if isinstance(error, grpc.Call) else None) or str(error)
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"cannot reach the builder at {address}: {' '.join(details.split())}"
    return " ".join(details.split())


def remote_usage(address: str) -> tuple[str, list[UsageEntry]]:
    """``du`` of the daemon's state directory: (its path, its parts)."""
    from lazybuild.api.control.v1 import control_pb2
    from lazybuild.cli.cache_commands import UsageEntry

    reply = call(address, lambda stub: stub.DiskUsage(control_pb2.DiskUsageRequest()))
    entries = [UsageEntry(e.label, e.count, e.unit, e.size) for e in reply.entries]
    return reply.state_dir, entries


def remote_prune(address: str, keep_bytes: int) -> list[PruneEntry]:
    from lazybuild.api.control.v1 import control_pb2
    from lazybuild.cli.cache_commands import PruneEntry

    request = control_pb2.PruneRequest(keep_bytes=keep_bytes)
    reply = call(address, lambda stub: stub.Prune(request))
    return [PruneEntry(e.label, e.count, e.size, e.kept_because) for e in reply.entries]
