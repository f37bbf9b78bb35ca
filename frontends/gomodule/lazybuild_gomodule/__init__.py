"""The Go-module frontend: ``# syntax=gomodule`` (see ``frontends/gomodule/README.md``)."""

from lazybuild_gomodule.frontend import build

__all__ = ["build"]
