"""The README's main job (`just demo`) runs end to end on this machine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]


def test_demo_converts_inspects_and_reads_lazily() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "examples.demo"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    before, _, after = out.partition("$ lazybuild convert")
    assert " gzip\n" in before and "estargz" not in before.split("$ lazybuild inspect")[1]
    converted = after.split("$ lazybuild inspect")[1]
    assert converted.count("  estargz  ") == 3
    assert 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"' in out
    assert "1 range request(s)" in out
    assert "$ lazybuild --state-dir" in out and "fetch report:" in result.stderr
    assert out.rstrip().splitlines()[-1].startswith("12.")  # /etc/debian_version
