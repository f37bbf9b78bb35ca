"""Package namespaces whose names are imported on first use (PEP 562).

A package that re-exports its parts would otherwise import them all as soon as any one
submodule is imported: a daemon's client that reads ``-o`` through
``exporter.outputs``, or renders progress events of ``solver.progress``, would pay
for the whole exporter or solver at every start.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: each name in ``homes`` comes from the
    submodule named there, imported when the name is first asked for."""

    def get(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{home}"), name)

    return get
