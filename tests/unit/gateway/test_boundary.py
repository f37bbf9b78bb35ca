"""The gateway's top level is a frontend's whole client: it stands on the graph alone,
and the out-of-tree frontend uses nothing of lazybuild but the two."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import lazybuild.gateway

FRONTENDS = Path(__file__).resolve().parents[3] / "frontends"


def test_importing_the_gateway_contract_loads_only_the_graph() -> None:
    probe = (
        "import sys, lazybuild.gateway\n"
        "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('lazybuild'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout.split()
    outside = [m for m in loaded if not m.startswith(("lazybuild.graph", "lazybuild.gateway"))]
    assert outside == ["lazybuild", "lazybuild.errors"]
    assert sorted(m for m in loaded if m.startswith("lazybuild.gateway")) == [
        "lazybuild.gateway",
        "lazybuild.gateway.contract",
    ]
    assert "trio" not in loaded


def test_the_stdio_client_of_frontend_images_needs_no_more_than_the_contract() -> None:
    # Exactly the files a frontend image carries (tests/e2e/test_frontends.py).
    probe = (
        "import sys, lazybuild.gateway.stdio\n"
        "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('lazybuild'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout.split()
    assert [m for m in loaded if not m.startswith("lazybuild.graph")] == [
        "lazybuild",
        "lazybuild.errors",
        "lazybuild.gateway",
        "lazybuild.gateway.contract",
        "lazybuild.gateway.stdio",
        "lazybuild.gateway.wire",
    ]
    assert "trio" not in loaded


def test_the_gomodule_frontend_imports_only_the_graph_and_the_gateway() -> None:
    sources = sorted((FRONTENDS / "gomodule").rglob("*.py"))
    assert sources
    imported: set[str] = set()
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module)
    ours = {name for name in imported if name.split(".")[0] == "lazybuild"}
    assert ours == {"lazybuild.gateway", "lazybuild.graph"}


def test_every_public_name_exists() -> None:
    for name in lazybuild.gateway.__all__:
        assert hasattr(lazybuild.gateway, name), name
    assert len(set(lazybuild.gateway.__all__)) == len(lazybuild.gateway.__all__)
