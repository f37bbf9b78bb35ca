"""A daemon's client starts light: every build it asks for pays its start-up, so
``build --builder`` imports neither trio nor pydantic (nor the exporter, the solver)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lazybuild.oci.layout import OciLayout

_PROBE = """
import sys
from lazybuild.cli.main import main
builder = "unix:///nonexistent/lazybuild.sock"
code = main(["build", "--builder", builder, *sys.argv[2:], sys.argv[1]])
heavy = sorted(
    name for name in ("trio", "pydantic", "lazybuild.exporter.export", "lazybuild.solver.scheduler")
    if name in sys.modules
)
print(code, ",".join(heavy))
"""


@pytest.mark.parametrize("local_caches", [False, True])
def test_build_through_a_builder_imports_no_trio_no_pydantic(
    tmp_path: Path, *, local_caches: bool
) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    flags = []
    if local_caches:  # read and sent before the call
        OciLayout.create(tmp_path / "cache")
        flags = ["--cache-from", f"type=local,src={tmp_path / 'cache'}"]
        flags += ["--cache-to", f"type=local,dest={tmp_path / 'cache'}"]
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(tmp_path), *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    code, heavy = done.stdout.split(" ", 1)
    assert code == "1"  # no daemon there: one line, exit 1
    assert "lazybuild: error: " in done.stderr and "Traceback" not in done.stderr
    assert heavy.strip() == ""
