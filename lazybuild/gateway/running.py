"""Running the chosen frontend against the build's gateway, and judging what it returns.

Whatever a frontend does wrong ends the build with one line that names it: an
exception of its own (``frontend NAME crashed: …``), a ``FrontendError`` (``frontend
NAME: …``), a result that is not a ``FrontendResult``, a reference no solve of this
build returned, an image config that is not one. A failure of the build itself that
passed through the frontend (a step that failed, a registry that refused) is reported
as it is, since it is about the user's build, not the frontend. The built-in Dockerfile
frontend's own errors (a Dockerfile line, an unknown stage) are the project's errors
already and pass unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from lazybuild.errors import LazybuildError, leaf_errors
from lazybuild.gateway.bridge import BuildGateway
from lazybuild.gateway.contract import Frontend, FrontendError, FrontendResult, GatewayError
from lazybuild.gateway.imageconfig import ImageConfig, InvalidImageConfigError, image_config
from lazybuild.gateway.selection import FrontendFailedError
from lazybuild.worker.layers import Snapshot

__all__ = ["FrontendOutput", "run_frontend"]

# A frontend's message is one line of a build's error output, not a log.
_MAX_MESSAGE = 500


@dataclass(frozen=True)
class FrontendOutput:
    """The checked result: the filesystem to export and its image config."""

    snapshot: Snapshot
    config: ImageConfig


async def run_frontend(
    name: str, frontend: Frontend, gateway: BuildGateway, *, builtin: bool = False
) -> FrontendOutput:
    try:
        result = await frontend(gateway)
    except Exception as error:
        raise _failure(name, error, gateway, builtin=builtin) from None
    if not isinstance(result, FrontendResult):
        raise FrontendFailedError(
            f"frontend {name} returned a {type(result).__name__}, not a FrontendResult"
        )
    try:
        snapshot = gateway.snapshot(result.ref)
    except GatewayError:
        raise FrontendFailedError(
            f"frontend {name} returned a reference that no solve of this build returned"
        ) from None
    try:
        config = image_config(result.config)
    except InvalidImageConfigError as error:
        raise FrontendFailedError(
            f"frontend {name} returned an invalid image config: {error}"
        ) from None
    return FrontendOutput(snapshot, config)


def _failure(name: str, error: Exception, gateway: BuildGateway, *, builtin: bool) -> Exception:
    leaves = [leaf for leaf in leaf_errors(error) if isinstance(leaf, Exception)]
    leaf = leaves[0] if leaves else error
    # The build's own failure first, wherever it sits among concurrent ones; then what
    # a frontend runner said of its frontend already.
    for candidate in leaves:
        if gateway.raised(candidate) and isinstance(candidate, LazybuildError):
            return candidate
    for candidate in leaves:
        if isinstance(candidate, FrontendFailedError):
            return candidate
    if builtin:
        # Its errors are the project's own (a Dockerfile line) or a bug, which keeps
        # its traceback, as before the frontend moved behind the gateway.
        return error
    if isinstance(leaf, (FrontendError, GatewayError)):
        return FrontendFailedError(f"frontend {name}: {_one_line(leaf)}")
    return FrontendFailedError(f"frontend {name} crashed: {type(leaf).__name__}: {_one_line(leaf)}")


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"
