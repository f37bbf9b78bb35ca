"""The README's main job (`just demo`) runs end to end on this machine."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]


def test_demo_builds_the_c_example_lazily_and_runs_it() -> None:
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
    assert "$ lazybuild -q convert" in out
    assert "RUN gcc -O2 -Wall -o hello hello.c" in result.stderr
    assert "fetch report:" in result.stderr
    share = re.search(r"the build fetched .* \((\d+\.\d)%\)", out)
    assert share is not None, out
    # gcc reads a fraction of its image; the rest of the builder is never fetched.
    assert float(share.group(1)) < 50
    assert out.rstrip().splitlines()[-1].startswith("hello from a C program built by lazybuild")
