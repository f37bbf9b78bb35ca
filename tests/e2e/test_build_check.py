"""``lazybuild build --check`` as a user runs it, and the same warnings at the end of a
build (a scratch build: no registry, under a second)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.buildsupport import lazybuild, write_context

DOCKERFILE = """\
FROM scratch as base
COPY message.txt /
CMD echo hi
"""


def test_check_reports_without_building(tmp_path: Path) -> None:
    context = write_context(tmp_path / "context", DOCKERFILE, {"message.txt": "hi\n"})
    result = lazybuild(tmp_path / "state", "build", "--check", str(context), check=False)
    assert result.returncode == 1, result.stderr
    assert result.stdout.startswith("Check complete, 2 warnings have been found!\n")
    assert "WARNING: FromAsCasing - " in result.stdout
    assert "WARNING: JSONArgsRecommended - " in result.stdout
    assert not (tmp_path / "state" / "build").exists()  # nothing was built


@pytest.mark.root
def test_build_prints_the_warnings_and_builds(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("building needs root")
    context = write_context(tmp_path / "context", DOCKERFILE, {"message.txt": "hi\n"})
    out = tmp_path / "out"
    result = lazybuild(
        tmp_path / "state",
        "build",
        "--progress=plain",
        "--no-optimize",
        "-o",
        f"type=local,dest={out}",
        str(context),
    )
    assert (out / "message.txt").read_text() == "hi\n"
    assert result.stderr.endswith(
        " 2 warnings found:\n"
        " - FromAsCasing: 'as' and 'FROM' keywords' casing do not match (line 1)\n"
        " - JSONArgsRecommended: JSON arguments recommended for CMD to prevent unintended "
        "behavior related to OS signals (line 3)\n"
    )


def test_check_reads_a_dockerfile_from_stdin(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lazybuild", "build", "--check", "-f", "-", str(tmp_path)],
        input="FROM alpine\nCMD echo hi\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "WARNING: JSONArgsRecommended - " in result.stdout
