"""The build file: a few TOML keys after the ``# syntax=gomodule`` line.

::

    # syntax=gomodule
    builder = "golang:bookworm"   # the image with the Go toolchain (required)
    package = "."                 # what `go build` builds, in the module (default ".")
    binary = "app"                # the binary's name in the image (default: the
                                  # module path's last element)
    args = ["world"]              # the image's CMD: default arguments (optional)
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass

from lazybuild.gateway import FrontendError

__all__ = ["BuildFile", "binary_name", "module_path", "parse_build_file"]

_KEYS = frozenset({"builder", "package", "binary", "args"})
# A file name, not a path: the binary lands at /<binary> of an empty image.
_BINARY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass(frozen=True)
class BuildFile:
    builder: str
    package: str = "."
    binary: str | None = None
    args: tuple[str, ...] | None = None


def parse_build_file(source: bytes, name: str) -> BuildFile:
    """Raises ``FrontendError`` (one line naming the file) for anything off."""
    try:
        document = tomllib.loads(source.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise FrontendError(f"{name}: not TOML: {error}") from None
    unknown = sorted(set(document) - _KEYS)
    if unknown:
        known = ", ".join(sorted(_KEYS))
        raise FrontendError(f"{name}: unknown key {unknown[0]!r} (known: {known})")
    builder = document.get("builder")
    if not isinstance(builder, str) or not builder:
        raise FrontendError(f"{name}: builder (the golang image) is required, as a string")
    package = document.get("package", ".")
    if not isinstance(package, str) or not package or package.startswith("-"):
        raise FrontendError(f"{name}: package must be a Go package path, such as . or ./cmd/app")
    binary = document.get("binary")
    if binary is not None and (not isinstance(binary, str) or not _BINARY.match(binary)):
        raise FrontendError(f"{name}: binary must be a file name")
    args = document.get("args")
    if args is not None and (
        not isinstance(args, list) or not all(isinstance(arg, str) for arg in args)
    ):
        raise FrontendError(f"{name}: args must be a list of strings")
    return BuildFile(builder, package, binary, None if args is None else tuple(args))


def module_path(go_mod: bytes) -> str | None:
    """The ``module`` directive of a go.mod."""
    for line in go_mod.decode("utf-8", "replace").splitlines():
        words = line.split("//", 1)[0].split()
        if len(words) == 2 and words[0] == "module":
            return words[1].strip('"`')
    return None


def binary_name(module: str) -> str:
    """``go build``'s default name for a module's main package: the path's last
    element, a major-version suffix (``/v2``) skipped."""
    parts = [part for part in module.split("/") if part]
    if len(parts) > 1 and re.fullmatch(r"v[0-9]+", parts[-1]):
        parts.pop()
    name = parts[-1] if parts else "app"
    return name if _BINARY.match(name) else "app"
