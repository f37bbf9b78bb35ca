"""The daemon's listening addresses, bound on a grpc server.

A unix socket is root-owned, mode 0660, in the configured group: whoever may open it
may build as root, so the group is the whole access control. It is created with a
umask that leaves it 0600 until it has its group, so there is never a moment when
anyone else may connect. A socket left by a killed daemon is replaced; one that
answers belongs to a live daemon and is left alone.

A TCP address is served only with mutual TLS: a client without a certificate signed by
the configured CA fails the handshake.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from lazybuild.daemon.address import Address
from lazybuild.daemon.config import TLSConfig
from lazybuild.errors import UsageError

SOCKET_MODE = 0o660


class AddressError(UsageError):
    """An address the daemon cannot listen on."""


@dataclass(frozen=True)
class Bound:
    """An address being served: as configured, and as clients reach it (a TCP port 0
    replaced by the port the kernel chose)."""

    configured: Address
    reachable: str
    socket_path: Path | None = None


def bind_unix(server: grpc.Server, address: Address, gid: int | None) -> Bound:
    path = address.socket_path
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_socket(address, path)
    old_umask = os.umask(0o177)
    try:
        _add_port(address, lambda: server.add_insecure_port(address.grpc_target))
    finally:
        os.umask(old_umask)
    try:
        os.chown(path, 0, gid if gid is not None else 0)
        os.chmod(path, SOCKET_MODE)
    except OSError as error:
        raise AddressError(
            f"{address}: cannot give the socket its owner and mode: {error}"
        ) from None
    return Bound(address, str(address), path)


def bind_tcp(server: grpc.Server, address: Address, tls: TLSConfig) -> Bound:
    try:
        credentials = grpc.ssl_server_credentials(
            [(tls.key.read_bytes(), tls.cert.read_bytes())],
            root_certificates=tls.ca.read_bytes(),
            require_client_auth=True,
        )
    except OSError as error:
        raise AddressError(f"{address}: cannot read TLS files: {error}") from None
    port = _add_port(address, lambda: server.add_secure_port(address.grpc_target, credentials))
    host = address.removeprefix("tcp://").rsplit(":", 1)[0]
    return Bound(address, f"tcp://{host}:{port}")


def remove_socket(bound: Bound) -> None:
    """Removes a unix socket the daemon served (gone already is fine)."""
    if bound.socket_path is not None:
        with contextlib.suppress(FileNotFoundError):
            bound.socket_path.unlink()


def _add_port(address: Address, add: Callable[[], int]) -> int:
    try:
        port = int(add())
    except RuntimeError as error:
        raise AddressError(f"cannot listen on {address}: {error}") from None
    if port == 0 and not address.is_unix:
        raise AddressError(f"cannot listen on {address}")
    return port


def _remove_stale_socket(address: Address, path: Path) -> None:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise AddressError(f"{address}: {path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as error:
        if error.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise AddressError(
                f"{address}: cannot tell whether {path} is in use: {error}"
            ) from None
    else:
        raise AddressError(f"{address}: another daemon is listening on {path}")
    finally:
        probe.close()
    # Nobody listens: what a killed daemon left.
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
