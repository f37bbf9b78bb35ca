"""Errors of the executor (all user-facing, so all `LazybuildError`)."""

from __future__ import annotations

from lazybuild.errors import LazybuildError


class ContainerError(LazybuildError):
    """A container could not be set up or started (not: its process failed)."""
