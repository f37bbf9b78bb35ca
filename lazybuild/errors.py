"""The exception tree.

Every error a user can cause (bad input, unreachable or refusing registry, corrupt
layer) is a ``LazybuildError``: the CLI prints ``str(error)`` as one line and exits
non-zero. Anything else reaching the CLI is a bug and keeps its traceback.

The top of the tree, defined here; the whole tree, every exception class of the
package under its base with its module and meaning, is docs/errors.md (a unit test
keeps it complete):

    LazybuildError
    ├── InvalidReferenceError      an image reference that does not parse
    ├── RegistryError        HTTP-level failure talking to a registry
    │   ├── AuthError        credentials missing or refused
    │   └── NotFoundError    manifest, blob or repository does not exist
    ├── DigestMismatchError  fetched bytes do not hash to the digest that named them
    ├── FormatError          a layer, TOC, footer, manifest or layout that is malformed
    ├── UsageError           a command line or option that makes no sense
    ├── LazyReadError        a read through the lazy filesystem failed (which file, which
    │                        layer, what went wrong)
    └── ...                  each package's own errors (docs/errors.md)

The gateway contract's errors (``GatewayError``, ``FrontendError``, ``ProtocolError``)
are outside this tree: out-of-tree frontends import only ``lazybuild.graph`` and the
contract, and the build turns those errors into ``FrontendFailedError``.

Concurrent work (trio nurseries) fails as exception groups; ``reported_error`` finds
the one error to report in a group whose failures are all the project's errors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


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


class LazyReadError(LazybuildError):
    """A read through the lazy filesystem failed; the message names the file, its layer
    or mount, and what failed (a chunk that did not verify, a registry that did not
    answer)."""


def leaf_errors(error: BaseException) -> list[BaseException]:
    """The exceptions inside ``error``, exception groups flattened, in order."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in leaf_errors(inner)]
    return [error]


def reported_error(
    error: BaseException, also: tuple[type[Exception], ...] = ()
) -> Exception | None:
    """The one error to report for ``error``: itself when it is a ``LazybuildError`` (or
    one of ``also``); for an exception group whose failures are all such errors (tasks
    cancelled because a sibling failed aside), the first ``LazybuildError`` in it, else
    the first of ``also``. None when a failure is anything else: a bug, to be reported
    with its traceback."""
    leaves = [leaf for leaf in leaf_errors(error) if isinstance(leaf, Exception)]
    if not leaves or not all(isinstance(leaf, (LazybuildError, *also)) for leaf in leaves):
        return None
    ours = [leaf for leaf in leaves if isinstance(leaf, LazybuildError)]
    return (ours or leaves)[0]


@contextlib.contextmanager
def one_error() -> Iterator[None]:
    """Around a nursery: an exception group whose failures are all ``LazybuildError``s
    leaves as the first of them, so callers (and their ``except LazybuildError``) see
    one of the project's errors. Groups holding anything else (a bug, an interrupt)
    pass unchanged."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = leaf_errors(group)
        first = leaves[0]
        if not all(isinstance(leaf, LazybuildError) for leaf in leaves):
            raise
        raise first from group
