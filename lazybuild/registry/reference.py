"""Image references (``[registry/]repository[:tag][@digest]``) parsed by Docker's rules.

The grammar follows distribution/reference: the first path component names a
registry only when it looks like a host (contains ``.`` or ``:``, is ``localhost``,
or has upper-case letters); otherwise the reference is on Docker Hub, where
one-component names live under ``library/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from lazybuild.errors import FormatError, InvalidReferenceError
from lazybuild.oci.digest import validate_digest

DOCKER_HUB = "docker.io"
DOCKER_HUB_API_HOST = "registry-1.docker.io"
DEFAULT_TAG = "latest"

# The legacy Docker Hub name that references normalise to DOCKER_HUB (as Docker does).
LEGACY_DOCKER_HUB = "index.docker.io"

# All matched with fullmatch ("$" accepts a trailing newline) and ASCII-only, as Go's
# regexp reads "\w" in distribution/reference.
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_HOST = re.compile(
    r"(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
    r"(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*"
    r"|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
)
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_MAX_NAME_LENGTH = 255
# Name (255), ":" tag (128), "@" sha512 digest (135): anything longer is refused before
# any pattern runs over it.
_MAX_REFERENCE_LENGTH = 600


@dataclass(frozen=True)
class Reference:
    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @classmethod
    def parse(cls, text: str) -> Reference:
        """Parse ``text`` with Docker's defaults: no registry means Docker Hub, no tag
        and no digest means ``latest``."""
        original = text
        if not text or text != text.strip():
            raise InvalidReferenceError(
                f"invalid image reference {original!r:.200}: empty or padded"
            )
        if len(text) > _MAX_REFERENCE_LENGTH:
            raise InvalidReferenceError(
                f"invalid image reference {original[:100]!r}...: longer than "
                f"{_MAX_REFERENCE_LENGTH} characters"
            )
        digest: str | None = None
        name_part, at, digest_text = text.partition("@")
        if at:
            try:
                digest = validate_digest(digest_text)
            except FormatError:
                raise InvalidReferenceError(
                    f"invalid image reference {original!r}: bad digest {digest_text!r}"
                ) from None
        tag: str | None = None
        # A ':' after the last '/' starts the tag; one before it is a registry port.
        colon = name_part.rfind(":")
        if colon > name_part.rfind("/"):
            tag = name_part[colon + 1 :]
            name_part = name_part[:colon]
            if not _TAG.fullmatch(tag):
                raise InvalidReferenceError(
                    f"invalid image reference {original!r}: bad tag {tag!r}"
                )
        registry, repository = _split_registry(name_part, original)
        if tag is None and digest is None:
            tag = DEFAULT_TAG
        return cls(registry=registry, repository=repository, tag=tag, digest=digest)

    def with_digest(self, digest: str) -> Reference:
        try:
            return replace(self, digest=validate_digest(digest))
        except FormatError as exc:
            raise InvalidReferenceError(str(exc)) from None

    def by_digest(self, digest: str) -> Reference:
        """This repository's manifest ``digest``, without the tag (a push by digest)."""
        return replace(self.with_digest(digest), tag=None)

    def with_tag(self, tag: str) -> Reference:
        if not _TAG.fullmatch(tag):
            raise InvalidReferenceError(f"invalid tag {tag!r}")
        return replace(self, tag=tag)

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def api_host(self) -> str:
        """The host[:port] that serves the registry API for this reference."""
        return DOCKER_HUB_API_HOST if self.registry == DOCKER_HUB else self.registry

    @property
    def manifest_key(self) -> str:
        """What goes after ``/manifests/`` when fetching: the digest wins over the tag."""
        key = self.digest or self.tag
        assert key is not None, "parse() always sets a tag or a digest"
        return key

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def _split_registry(name: str, original: str) -> tuple[str, str]:
    first, slash, rest = name.partition("/")
    looks_like_host = "." in first or ":" in first or first == "localhost" or first != first.lower()
    if slash and looks_like_host:
        if not _HOST.fullmatch(first):
            raise InvalidReferenceError(
                f"invalid image reference {original!r}: bad registry {first!r}"
            )
        registry, repository = first, rest
    else:
        registry, repository = DOCKER_HUB, name
    if registry == LEGACY_DOCKER_HUB:
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    if not repository:
        raise InvalidReferenceError(f"invalid image reference {original!r}: no repository name")
    if repository != repository.lower():
        raise InvalidReferenceError(
            f"invalid image reference {original!r}: repository name must be lowercase"
        )
    for component in repository.split("/"):
        if not _PATH_COMPONENT.fullmatch(component):
            raise InvalidReferenceError(
                f"invalid image reference {original!r}: bad path component {component!r}"
            )
    if len(repository) > _MAX_NAME_LENGTH:
        raise InvalidReferenceError(f"invalid image reference {original!r}: name is too long")
    return registry, repository
