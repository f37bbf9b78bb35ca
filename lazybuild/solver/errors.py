"""Errors of a solve."""

from __future__ import annotations

from lazybuild.errors import LazybuildError


class VertexFailedError(LazybuildError):
    """A vertex's op failed; the original error is ``__cause__``.

    ``digest`` and ``description`` (its ``OpMetadata.description``) name the vertex so the
    frontend can point at the step, e.g. the Dockerfile line that produced it.
    """

    def __init__(self, digest: str, description: str, action: str, cause: BaseException) -> None:
        self.digest = digest
        self.description = description
        self.action = action
        self.cause = cause
        name = description or digest
        super().__init__(f"{name}: {action} failed: {cause}")


class CacheStoreError(LazybuildError):
    """The build cache cannot be opened or used (e.g. written by a newer lazybuild)."""
