"""The client's control requests: a filesystem process that goes away mid-request gives
a clear error, never a broken-socket traceback."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
import trio

from lazybuild.errors import LazybuildError
from lazybuild.lazyfs import control
from lazybuild.lazyfs.client import LazyMountService


@pytest.mark.parametrize("read_first", [False, True])
def test_a_connection_reset_mid_request_is_a_filesystem_error(
    tmp_path: Path, *, read_first: bool
) -> None:
    service = LazyMountService(tmp_path / "state")
    service.control_path = tmp_path / "c.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(service.control_path))
    listener.listen(1)

    def serve_once() -> None:
        connection, _ = listener.accept()
        if read_first:
            connection.recv(1)  # most of the request stays unread: closing resets
        connection.close()

    server = threading.Thread(target=serve_once)
    server.start()
    try:
        with pytest.raises(LazybuildError, match="closed the connection"):
            trio.run(service._request, control.Shutdown())
    finally:
        server.join()
        listener.close()


def test_a_filesystem_process_that_is_gone_is_named_not_a_bare_econnrefused(
    tmp_path: Path,
) -> None:
    service = LazyMountService(tmp_path / "state")
    service.control_path = tmp_path / "gone.sock"  # nobody listens: the process died
    with pytest.raises(LazybuildError, match="the lazy filesystem cannot be reached"):
        trio.run(service._request, control.Shutdown())
