"""Errors of the executor (all user-facing, so all `LazybuildError`)."""

from __future__ import annotations

from lazybuild.errors import LazybuildError


class ContainerError(LazybuildError):
    """A container could not be set up or started (not: its process failed)."""


class CommandNotFoundError(ContainerError):
    """The container's program does not exist; exits 127 like a shell and `docker run`."""

    exit_code = 127


class CommandNotExecutableError(ContainerError):
    """The container's program exists but cannot be run; exits 126 like `docker run`."""

    exit_code = 126
