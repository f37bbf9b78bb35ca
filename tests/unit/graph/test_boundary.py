"""The graph package is the frontends' whole contract: it must stand alone."""

from __future__ import annotations

import subprocess
import sys

import lazybuild.graph


def test_importing_the_graph_loads_nothing_else_of_lazybuild() -> None:
    probe = (
        "import sys, lazybuild.graph\n"
        "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('lazybuild'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout.split()
    outside = [m for m in loaded if not m.startswith("lazybuild.graph")]
    assert outside == ["lazybuild", "lazybuild.errors"]
    assert "trio" not in loaded


def test_every_public_name_exists() -> None:
    for name in lazybuild.graph.__all__:
        assert hasattr(lazybuild.graph, name), name
    assert sorted(lazybuild.graph.__all__) == lazybuild.graph.__all__
