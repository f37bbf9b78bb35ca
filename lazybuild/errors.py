"""The exception tree.

Every error a user can cause (bad input, unreachable or refusing registry, corrupt
layer) is a ``LazybuildError``: the CLI prints ``str(error)`` as one line and exits
non-zero. Anything else reaching the CLI is a bug and keeps its traceback.

    LazybuildError
    ├── InvalidReferenceError      an image reference that does not parse
    ├── RegistryError        HTTP-level failure talking to a registry
    │   ├── AuthError        credentials missing or refused
    │   └── NotFoundError    manifest, blob or repository does not exist
    ├── DigestMismatchError  fetched bytes do not hash to the digest that named them
    ├── FormatError          a layer, TOC, footer, manifest or layout that is malformed
    └── UsageError           a command line or option that makes no sense
"""

from __future__ import annotations


class LazybuildError(Exception):
    """Base for every error caused by input rather than by a bug in lazybuild."""

    # The command's exit status when this error ends it.
    exit_code = 1


class InvalidReferenceError(LazybuildError):
    """An image reference that does not parse."""


class RegistryError(LazybuildError):
    """A registry answered with an error or could not be reached."""


class AuthError(RegistryError):
    """Credentials are missing or were refused."""


class NotFoundError(RegistryError):
    """The registry does not have the manifest, blob or repository asked for."""


class DigestMismatchError(LazybuildError):
    """Bytes do not hash to the digest that named them; they must not be used."""


class FormatError(LazybuildError):
    """Malformed layer, TOC, footer, manifest or layout."""


class UsageError(LazybuildError):
    """A command line or option that makes no sense."""
