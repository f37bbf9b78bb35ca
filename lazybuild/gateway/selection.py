"""Which frontend builds a source: ``# syntax=NAME``, or the ``BUILDKIT_SYNTAX`` build
arg, which overrides it as in BuildKit.

No name, or a ``docker/dockerfile`` image name (any tag or digest, BuildKit's own
frontend images), means the built-in Dockerfile frontend, in process. Any other name
is first looked up among the installed Python entry points of the ``lazybuild.frontends``
group: ``pip install`` a frontend package and its name becomes a ``# syntax=`` value.
A name no entry point has that reads as an image reference (it has a ``/``, a tag or a
digest) is a frontend image, run in a container with the gateway on its stdio
(``imagefrontend``); a bare word no entry point has is an unknown frontend (it is not
looked up on Docker Hub: a typo should not pull an image).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points

from lazybuild.errors import LazybuildError
from lazybuild.frontend.dockerfile.parser import parse_directives
from lazybuild.gateway.contract import Frontend

__all__ = [
    "ENTRY_POINT_GROUP",
    "FrontendFailedError",
    "SelectedFrontend",
    "UnknownFrontendError",
    "is_dockerfile_syntax",
    "select_frontend",
    "syntax_of",
]

ENTRY_POINT_GROUP = "lazybuild.frontends"
SYNTAX_ARG = "BUILDKIT_SYNTAX"
_DOCKERFILE_IMAGES = frozenset({"docker/dockerfile", "docker/dockerfile-upstream"})


class UnknownFrontendError(LazybuildError):
    """``# syntax=`` names no frontend this installation has."""


class FrontendFailedError(LazybuildError):
    """A frontend could not be loaded, crashed, or returned something unusable."""


@dataclass(frozen=True)
class SelectedFrontend:
    """An installed ``frontend``, a frontend ``image``, or (neither) the built-in
    Dockerfile frontend; ``name`` is for messages."""

    name: str
    frontend: Frontend | None = None
    image: str | None = None

    @property
    def builtin(self) -> bool:
        return self.frontend is None and self.image is None


def syntax_of(source: bytes, source_name: str, build_args: Mapping[str, str]) -> str | None:
    """The frontend name the build asks for, if any."""
    override = build_args.get(SYNTAX_ARG, "").strip()
    if override:
        return override
    return parse_directives(source, filename=source_name).syntax


def is_dockerfile_syntax(name: str) -> bool:
    """Whether ``name`` is one of BuildKit's Dockerfile frontend images."""
    repository = name.split("@", 1)[0]
    last = repository.rsplit("/", 1)[-1]
    if ":" in last:  # a tag, not a registry's port
        repository = repository[: len(repository) - len(last)] + last.split(":", 1)[0]
    for prefix in ("docker.io/", "index.docker.io/"):
        repository = repository.removeprefix(prefix)
    return repository in _DOCKERFILE_IMAGES


def select_frontend(syntax: str | None) -> SelectedFrontend:
    if syntax is None or is_dockerfile_syntax(syntax):
        return SelectedFrontend("dockerfile")
    installed = entry_points(group=ENTRY_POINT_GROUP)
    found = [point for point in installed if point.name == syntax]
    if not found and any(mark in syntax for mark in "/:@"):
        return SelectedFrontend(syntax, image=syntax)
    if not found:
        names = ", ".join(sorted({point.name for point in installed})) or "none"
        raise UnknownFrontendError(
            f"frontend {syntax!r} (# syntax=) is not installed: no {ENTRY_POINT_GROUP} "
            f"entry point has this name (installed: {names})"
        )
    try:
        loaded = found[0].load()
    except Exception as error:
        raise FrontendFailedError(
            f"frontend {syntax} cannot be loaded: {type(error).__name__}: {error}"
        ) from None
    if not callable(loaded):
        raise FrontendFailedError(f"frontend {syntax}: its entry point is not a function")
    return SelectedFrontend(syntax, loaded)
