"""Daemon addresses, as ``--addr``, ``--builder`` and the config spell them.

A module of its own so that a client (``lazybuild build --builder``) parses one
without importing the config's validation machinery: a client's start-up is part of
every build it asks for.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["Address", "parse_address"]

_TCP = re.compile(r"tcp://(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(?P<port>\d+)")


class Address(str):
    """``unix:///ABSOLUTE/PATH`` or ``tcp://HOST:PORT``."""

    __slots__ = ()

    @property
    def is_unix(self) -> bool:
        return self.startswith("unix://")

    @property
    def socket_path(self) -> Path:
        return Path(self.removeprefix("unix://"))

    @property
    def grpc_target(self) -> str:
        """The spelling grpc's ``add_*_port`` and channels take."""
        if self.is_unix:
            return f"unix:{self.socket_path}"
        return self.removeprefix("tcp://")


def parse_address(text: str) -> Address:
    """``text`` as an ``Address``; ``ValueError`` saying what is wrong otherwise."""
    if text.startswith("unix://"):
        path = text.removeprefix("unix://")
        if not path.startswith("/") or path.endswith("/"):
            raise ValueError(f"{text!r}: a unix address names an absolute socket path")
        return Address(text)
    match = _TCP.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not unix:///PATH or tcp://HOST:PORT")
    if not 0 <= int(match.group("port")) < 1 << 16:
        raise ValueError(f"{text!r}: port out of range")
    return Address(text)
