"""``--depfile``: Make's dependency format, as ``gcc -MD -MP`` writes it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from lazybuild.imagebuild.depfile import depfile_text, write_depfile


def test_one_rule_for_the_target_and_an_empty_rule_per_input(tmp_path: Path) -> None:
    text = depfile_text(
        tmp_path / "image.iid",
        [tmp_path / "src/main.go", tmp_path / "Dockerfile", tmp_path / "src/main.go"],
        cwd=tmp_path,
    )
    assert text == "image.iid: \\\n  Dockerfile \\\n  src/main.go\nDockerfile:\nsrc/main.go:\n"


def test_paths_outside_the_working_directory_stay_absolute(tmp_path: Path) -> None:
    text = depfile_text(tmp_path / "a" / "out", [Path("/etc/secret.txt")], cwd=tmp_path / "a")
    assert text.splitlines()[0:2] == ["out: \\", "  /etc/secret.txt"]


def test_make_reads_odd_names_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Spaces, ``#``, ``$`` and ``:`` in names: make itself rebuilds when each changes,
    and only then."""
    monkeypatch.chdir(tmp_path)
    names = ["with space.txt", "hash#.txt", "dollar$x.txt", "colon:x.txt"]
    for name in names:
        (tmp_path / name).write_text(name)
    write_depfile(tmp_path / "out.d", tmp_path / "out", [tmp_path / n for n in names])
    (tmp_path / "Makefile").write_text("out:\n\t@touch out\n-include out.d\n")
    subprocess.run(["make", "-s"], check=True)
    for step, name in enumerate(names, start=1):
        quiet = subprocess.run(["make"], capture_output=True, text=True, check=True)
        assert "is up to date" in quiet.stdout, quiet.stdout
        os.utime(tmp_path / "out", (1000.0 * step, 1000.0 * step))
        os.utime(tmp_path / name, (1000.0 * step + 1, 1000.0 * step + 1))
        subprocess.run(["make", "-s"], check=True)
        assert (tmp_path / "out").stat().st_mtime > 1000.0 * step + 1, name
